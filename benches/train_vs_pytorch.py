#!/usr/bin/env python3
"""keel-train's training step against PyTorch's: the same model, data, batch, optimizer and
thread count, each in a fresh process, alternating, and the per-step medians and the ratio.

Two models:
- `mlp`: `keel train` (784-256-10 MLP, AdamW lr 1e-3 weight decay 0.01, batch 64, the
  10,000 MNIST images keel ships in crates/keel-train/data (IDX, gzip), 80/20 split, a
  background checkpoint and a held-out evaluation every epoch) against the same loop in
  PyTorch (`torch.save` of model and optimizer every epoch).
- `convnet`: examples/digits-convnet (conv 3x3 1->8, ReLU, 2x2 max pool, dropout 0.1,
  linear 128->10; AdamW lr 3e-3, cosine schedule with 20 warm-up steps, batch 32, the
  8x8 digits of crates/keel-train/data/digits.csv.gz, 80/20 split, 20 epochs) against the
  same network in PyTorch.

A step is timed alike on both sides: from just before the batch's rows are gathered to just
after the optimizer's update, the loss read back to the host on the way (keel checks it is
finite, the PyTorch loop calls `.item()`). keel writes its times through KEEL_STEP_TIMES
(keel-train's `TrainSettings::step_times`: the step and its parts); evaluation, saves and
logging are outside the step on both sides. Threads: RAYON_NUM_THREADS for keel (candle's
matmuls and its elementwise pool), torch.set_num_threads and OMP_NUM_THREADS for PyTorch.

PyTorch is installed into target/torch-bench/venv the first time (`pip install torch numpy`
from PyPI: on linux x86_64 that is the CUDA build with its nvidia-* wheels, about 5.4 GB
installed; torch cannot be imported without them, and no CPU-only wheel is on PyPI).

    cargo build --release -p keel-cli -p digits-convnet
    python3 benches/train_vs_pytorch.py [--rounds 5] [--threads 2] [--profile release]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, timed

VENV = ROOT / "target" / "torch-bench" / "venv"
DATA = ROOT / "crates" / "keel-train" / "data"

# The PyTorch side, run by the venv's python: `python - MODEL EPOCHS THREADS WORKDIR`.
# Prints one JSON object: the per-step seconds and the parts keel reports too.
TORCH_LOOP = r'''
import gzip, json, math, sys, time
from pathlib import Path
import numpy as np
import torch

model_name, epochs, threads, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
data = Path(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)

def idx(path, offset):
    return np.frombuffer(gzip.open(path).read(), dtype=np.uint8, offset=offset)

if model_name == "mlp":
    x = idx(data / "npm-mnist10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32) / 255.0
    y = idx(data / "npm-mnist10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    batch, lr, warmup, cosine = 64, 1e-3, 0, False
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
else:
    rows = np.loadtxt(gzip.open(data / "digits.csv.gz"), delimiter=",", dtype=np.float64)
    x = (rows[:, :64] / 16.0).astype(np.float32)
    y = rows[:, 64].astype(np.int64)
    batch, lr, warmup, cosine = 32, 3e-3, 20, True
    model = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10))
# The 80/20 split (keel's is by its own generator; the sizes are the same).
order = np.random.default_rng(0).permutation(len(y))
test_n = round(len(y) * 0.2)
x_test, y_test = torch.from_numpy(x[order[:test_n]]), torch.from_numpy(y[order[:test_n]])
x_train, y_train = torch.from_numpy(x[order[test_n:]]), torch.from_numpy(y[order[test_n:]])
n = len(y_train)
steps_per_epoch = -(-n // batch)
total = steps_per_epoch * epochs
optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
min_lr = 1e-4
def lr_at(step):
    if not cosine:
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))

times = {"seconds": [], "gather": [], "forward": [], "backward": [], "update": []}
step = 0
for epoch in range(epochs):
    model.train()
    perm = torch.randperm(n)
    for b in range(steps_per_epoch):
        t0 = time.perf_counter()
        rows = perm[b * batch:(b + 1) * batch]
        xb, yb = x_train[rows], y_train[rows]
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value):
            sys.exit(f"loss {value} at step {step + 1}")
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.step()
        t4 = time.perf_counter()
        for key, value in zip(times, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(value)
        step += 1
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
        accuracy = (logits.argmax(1) == y_test).float().mean().item()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, work / "ckpt.pt")
times["accuracy"] = accuracy
times["torch"] = torch.__version__
print(json.dumps(times))
'''


def venv_python():
    """The venv's python with torch importable, installing it the first time."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = "import torch; print(torch.__version__, (torch.randn(2, 2) @ torch.randn(2, 2)).shape)"
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        print(f"installing torch into {VENV} (pip install torch numpy, several GB)", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--no-cache-dir", "torch", "numpy"], check=True
        )
        subprocess.run([str(python), "-c", check], check=True)
    return python


def read_keel_times(path):
    """keel's step-times file: {column: [seconds per step]}."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    columns = {name: [] for name in header[1:]}
    for line in lines[1:]:
        for name, value in zip(header[1:], line.split(",")[1:]):
            columns[name].append(float(value))
    return columns


def keel_run(binary, model, epochs, threads, work):
    times = work / "step-times.csv"
    env = dict(os.environ, KEEL_STEP_TIMES=str(times), RAYON_NUM_THREADS=str(threads))
    if model == "mlp":
        command = [str(binary), "train", "--fresh", "--epochs", str(epochs), "--runs-dir", str(work / "runs")]
    else:
        command = [str(binary), str(work / "convnet")]
    elapsed, _ = timed(command, env=env, cwd=work)
    return elapsed, read_keel_times(times)


def torch_run(python, model, epochs, threads, work):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    elapsed, out = timed(
        [str(python), "-", model, str(epochs), str(threads), str(work), str(DATA)],
        input=TORCH_LOOP,
        env=env,
        cwd=work,
    )
    return elapsed, json.loads(out)


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5, help="MLP epochs (the convnet runs its 20)")
    parser.add_argument("--profile", default="release", help="cargo profile of keel's binaries")
    parser.add_argument("--bin-dir", type=Path, help="where keel's binaries are (default target/PROFILE)")
    parser.add_argument("--models", default="mlp,convnet")
    args = parser.parse_args()
    bins = (args.bin_dir or ROOT / "target" / args.profile).resolve()
    binaries = {"mlp": bins / "keel", "convnet": bins / "digits-convnet"}
    models = args.models.split(",")
    for model in models:
        if not binaries[model].is_file():
            sys.exit(
                f"build keel first: cargo build --profile {args.profile} -p keel-cli -p digits-convnet "
                f"({binaries[model]} missing)"
            )
    python = venv_python()
    print(f"threads {args.threads}, rounds {args.rounds}, keel profile {args.profile}, "
          f"{os.cpu_count()} CPUs, load {loadavg()} at start")
    summary = {}
    for model in models:
        keel, torch, process = {}, {}, {"keel": [], "torch": []}
        epochs = args.epochs if model == "mlp" else 20
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as work:
                elapsed, times = keel_run(binaries[model], model, epochs, args.threads, Path(work))
            process["keel"].append(elapsed)
            for key, values in times.items():
                keel.setdefault(key, []).extend(values)
            with tempfile.TemporaryDirectory() as work:
                elapsed, times = torch_run(python, model, epochs, args.threads, Path(work))
            process["torch"].append(elapsed)
            version = times.pop("torch")
            times.pop("accuracy")
            for key, values in times.items():
                torch.setdefault(key, []).extend(values)
        # What the step spent outside its four parts (freeing its tensors, the agreement).
        for times in (keel, torch):
            parts = zip(times["gather"], times["forward"], times["backward"], times["update"])
            times["other"] = [total - sum(p) for total, p in zip(times["seconds"], parts)]
        steps = len(keel["seconds"]) // args.rounds
        print(f"\n{model}: {steps} steps a run, {args.rounds} runs each, torch {version}, "
              f"load {loadavg()} at the end")
        print(f"  {'per-step median (ms)':24} {'keel':>9} {'PyTorch':>9} {'keel/PyTorch':>13}")
        for key in ["seconds", "gather", "forward", "backward", "update", "other"]:
            k, t = statistics.median(keel[key]), statistics.median(torch[key])
            name = "step" if key == "seconds" else f"  {key}"
            ratio = f"{k / t:13.2f}" if t > 0 else f"{'-':>13}"
            print(f"  {name:24} {k * 1e3:9.3f} {t * 1e3:9.3f} {ratio}")
        k, t = statistics.median(process["keel"]), statistics.median(process["torch"])
        print(f"  {'process (s, median)':24} {k:9.2f} {t:9.2f} {k / t:13.2f}")
        summary[model] = {
            key: {"keel_ms": statistics.median(keel[key]) * 1e3,
                  "torch_ms": statistics.median(torch[key]) * 1e3}
            for key in ["seconds", "gather", "forward", "backward", "update", "other"]
        }
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "profile": args.profile,
                      "load_end": loadavg(), "per_step": summary}))


if __name__ == "__main__":
    main()
