#!/usr/bin/env python3
"""`keel hash` on a synthetic prefix, side by side with `b3sum` over the same files.

Builds a prefix of ~20,000 files and ~1 GiB (many small files as in a Python environment,
a few large shared libraries), reads it once so both tools hash from the page cache, then
alternates, each round in fresh processes with the same thread count:

- `b3sum --num-threads N` over every file (through `xargs -0`, as a shell user would);
- `keel hash --full --threads N` (every file read and hashed; the stat cache is rewritten);
- `keel hash --threads N` on the unchanged prefix (the stat cache answers).

Prints medians, the keel/b3sum ratio (goal: at most 1.2) and the re-hash time (goal: under
100 ms).

    apt-get install b3sum
    cargo build --release -p keel-cli
    python3 benches/prefix_hash_vs_b3sum.py [--rounds 5] [--threads 2] [--dir /tmp/keel-bench]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import release_keel, timed

SMALL_FILES = 19_950
LARGE_FILES = 50
TOTAL_BYTES = 1 << 30


def build_prefix(prefix: Path) -> tuple[int, int]:
    """Writes the synthetic prefix once (kept between runs); returns (files, bytes)."""
    marker = prefix / "conda-meta" / "bench-complete"
    rng = random.Random(20261125)
    if not marker.exists():
        (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
        small_bytes = 0
        for i in range(SMALL_FILES):
            # Log-uniform between 256 B and 64 KiB, like .py/.h/.pyc files.
            size = int(2 ** rng.uniform(8, 16))
            path = prefix / "lib" / "python3.12" / "site-packages" / f"pkg{i % 400}" / f"m{i}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))
            small_bytes += size
        large = (TOTAL_BYTES - small_bytes) // LARGE_FILES
        for i in range(LARGE_FILES):
            path = prefix / "lib" / f"libbig{i}.so"
            path.write_bytes(rng.randbytes(large))
        marker.write_text("done\n")
    files = [p for p in prefix.rglob("*") if p.is_file() and "conda-meta" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dir", type=Path, default=Path("/tmp/keel-bench-prefix"))
    args = parser.parse_args()
    keel = release_keel()
    prefix = args.dir / "prefix"
    cache = args.dir / "stat-cache"
    files, size = build_prefix(prefix)
    list_file = args.dir / "files.list"
    paths = sorted(
        str(p) for p in prefix.rglob("*") if p.is_file() and "conda-meta" not in p.parts
    )
    list_file.write_bytes(b"\0".join(p.encode() for p in paths) + b"\0")
    # Warm the page cache so that both tools measure hashing, not the disk.
    subprocess.run(["xargs", "-0", "cat"], stdin=open(list_file, "rb"), stdout=subprocess.DEVNULL)
    time.sleep(1.0)

    b3 = ["xargs", "-0", "b3sum", "--num-threads", str(args.threads)]
    keel_full = [str(keel), "hash", str(prefix), "--full", "--threads", str(args.threads),
                 "--cache-dir", str(cache)]
    keel_again = [str(keel), "hash", str(prefix), "--threads", str(args.threads),
                  "--cache-dir", str(cache)]
    # One full run first so that the stat cache exists and the files have settled.
    timed(keel_full)
    times = {"b3sum": [], "keel_full": [], "keel_rehash": []}
    for _ in range(args.rounds):
        with open(list_file, "rb") as stdin:
            elapsed, _ = timed(b3, stdin=stdin)
        times["b3sum"].append(elapsed)
        elapsed, _ = timed(keel_full)
        times["keel_full"].append(elapsed)
        elapsed, out = timed(keel_again)
        if "hashed 0 files" not in out:
            sys.exit(f"the re-hash read files again:\n{out}")
        times["keel_rehash"].append(elapsed)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["keel_full"] / medians["b3sum"]
    gib = size / (1 << 30)
    print(f"synthetic prefix: {files} files, {size / (1 << 20):.0f} MiB; {args.threads} threads; "
          f"{args.rounds} rounds, medians")
    print(f"  b3sum (xargs)       {medians['b3sum'] * 1000:8.1f} ms  {gib / medians['b3sum']:.2f} GiB/s")
    print(f"  keel hash --full    {medians['keel_full'] * 1000:8.1f} ms  {gib / medians['keel_full']:.2f} GiB/s")
    print(f"  keel hash (cached)  {medians['keel_rehash'] * 1000:8.1f} ms")
    print(f"  keel/b3sum ratio    {ratio:.2f} (goal <= 1.2); re-hash goal < 100 ms")
    print(json.dumps({"files": files, "bytes": size, "threads": args.threads,
                      "median_s": medians, "ratio_keel_over_b3sum": ratio}))


if __name__ == "__main__":
    main()
