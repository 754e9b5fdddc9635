#!/usr/bin/env python3
"""keel's built-in run in PyTorch, for step times side by side on the same GPU.

The same job as `keel train` with no configuration: an MLP 784-256-10 with ReLU, AdamW
(lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01), batch 64, 5 epochs, on the 10,000
MNIST images keel ships (pixels scaled to [0, 1]), 8,000 for training and 2,000 held out. The
split and the shuffles are numpy's (seeded), not keel's ChaCha streams, so accuracies are
comparable but not equal. Each step ends with `loss.item()` (keel reads every step's loss to
check it is finite), so a step's time includes the device's work, not only its launch.

    python3 torch_mlp.py --images IMAGES.gz --labels LABELS.gz [--device cuda:0] [--json OUT]
"""

import argparse
import gzip
import json
import statistics
import struct
import sys
import time


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        sys.exit(f"{path}: not an idx file of magic {magic:#x} (found {found:#x})")
    return data, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.epochs < 1 or args.batch_size < 1:
        sys.exit("--epochs and --batch-size must be at least 1")

    import numpy as np
    import torch

    images, n = read_idx(args.images, 0x803)
    labels, n_labels = read_idx(args.labels, 0x801)
    if n != n_labels:
        sys.exit(f"{args.images} has {n} images but {args.labels} has {n_labels} labels")
    rows, cols = struct.unpack(">II", images[8:16])
    x = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    y = np.frombuffer(labels, dtype=np.uint8, offset=8).astype(np.int64)
    x = x.astype(np.float32) / 255.0

    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    n_test = int(round(n * 0.2))
    test, train = order[:n_test], order[n_test:]

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = torch.nn.Sequential(
        torch.nn.Linear(rows * cols, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    x_train = torch.from_numpy(x[train]).to(device)
    y_train = torch.from_numpy(y[train]).to(device)
    x_test = torch.from_numpy(x[test]).to(device)
    y_test = torch.from_numpy(y[test]).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()

    step_times = []
    shuffle = np.random.default_rng(args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        perm = torch.from_numpy(shuffle.permutation(len(train))).to(device)
        for start in range(0, len(train), args.batch_size):
            t0 = time.perf_counter()
            idx = perm[start : start + args.batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            step_times.append(time.perf_counter() - t0)
            if not np.isfinite(value):
                sys.exit(f"non-finite loss {value} at step {len(step_times)}")
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            test_loss = loss_fn(logits, y_test).item()
            accuracy = (logits.argmax(1) == y_test).float().mean().item()
    seconds = time.perf_counter() - started
    figures = {
        "framework": f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": len(step_times),
        "seconds": seconds,
        "step_ms_median": statistics.median(step_times) * 1000,
        "step_ms_median_after_first_epoch": statistics.median(
            step_times[len(step_times) // args.epochs :]
        )
        * 1000,
        "test_accuracy": accuracy,
        "test_loss": test_loss,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
