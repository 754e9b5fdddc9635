#!/usr/bin/env python3
"""Checkpoint save, load and verify against state size, with the peak memory the OS saw.

Each operation runs in a process of its own (keel-ckpt's `ckpt_scale` example) under
`/usr/bin/time -v`, whose "Maximum resident set size" is the peak memory. Per size and round,
alternating on the same disk in the same run:

- raw: the state's bytes written to one file and fsynced (the disk's speed for those bytes);
- save: `CheckpointStore::save` of the same state (safetensors, BLAKE3, fsync, manifest,
  rename);
- resume: `latest_valid` (list, verify, load) with the files in the page cache, and again
  after they are evicted from it (posix_fadvise DONTNEED on each file), from the disk;
- verify: `verify` of the checkpoint (streamed, nothing kept), from the page cache;
- async: the background save's stall (snapshot copy + hand-over) against the in-memory copy
  alone, in the same process.

With `--s3-sizes`, the same state goes to a loopback `s3s-fs` (from `.ci/test-tools` or PATH)
as one plain PUT and as a keel save (multipart, parts in parallel), then is resumed.

Prints medians, ratios and peak memory against the state's size, and one JSON line.

    cargo build --release -p keel-ckpt --example ckpt_scale
    python3 benches/ckpt_scale.py [--sizes 256M,1G,4G] [--rounds 3] [--s3-sizes 256M,1G]
        [--dir /var/tmp/keel-bench-ckpt]
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT

MIB = 1 << 20


def size_arg(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return [int(float(t[:-1]) * units[t[-1].upper()]) if t[-1].upper() in units else int(t)
            for t in text.split(",") if t]


def example():
    binary = ROOT / "target" / "release" / "examples" / "ckpt_scale"
    if not binary.is_file():
        sys.exit("build it first: cargo build --release -p keel-ckpt --example ckpt_scale "
                 f"({binary} missing)")
    return binary


def run(binary, *args, env=None):
    """Runs one operation under /usr/bin/time -v; returns (its JSON report, peak RSS bytes)."""
    command = ["/usr/bin/time", "-v", str(binary), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    if not peak:
        sys.exit(f"/usr/bin/time -v gave no peak memory:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1]), int(peak.group(1)) * 1024


def evict(folder):
    """Drops the page cache of every file under `folder` (only those files)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def s3s_fs():
    tools = ROOT / "target" / "keel-test-tools" / "bin" / "s3s-fs"
    found = os.environ.get("KEEL_S3S_FS") or (str(tools) if tools.is_file() else shutil.which("s3s-fs"))
    if not found:
        sys.exit("s3s-fs is not installed: run .ci/test-tools (or cargo install s3s-fs --features binary)")
    return found


def start_s3(root):
    (root / "bench").mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [s3s_fs(), "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench-key",
         "--secret-key", "bench-secret-key", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        server.kill()
        sys.exit("s3s-fs did not start")
    env = dict(os.environ, AWS_ENDPOINT=f"http://127.0.0.1:{port}", AWS_ALLOW_HTTP="true",
               AWS_ACCESS_KEY_ID="bench-key", AWS_SECRET_ACCESS_KEY="bench-secret-key",
               AWS_REGION="us-east-1")
    return server, env


def settle():
    """Lets the disk finish what earlier steps left (writeback, and the discards of deleted
    files on a file system mounted with `discard`) before the next timed write."""
    os.sync()
    time.sleep(2)


def need_disk(folder, size):
    """Stops before a write that would leave less than 2 GiB free (the disk is shared)."""
    free = shutil.disk_usage(folder).free
    if free < size + (2 << 30):
        sys.exit(f"{folder}: {free / (1 << 30):.1f} GiB free, {size / (1 << 30):.1f} GiB needed "
                 "plus 2 GiB to spare; free some space or pass smaller --sizes")


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=size_arg, default=size_arg("256M,1G,4G"),
                        help="state sizes for the local disk (empty: none)")
    parser.add_argument("--s3-sizes", type=size_arg, default=[])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/keel-bench-ckpt"))
    args = parser.parse_args()
    binary = example()
    args.dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    rows = []
    for size in args.sizes:
        times = {k: [] for k in ("raw", "save", "resume_warm", "resume_cold", "verify")}
        peaks = {k: [] for k in times}
        loads = []
        for round_ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            work = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                store = work / "store"
                # Raw first in even rounds, the save (and its reads) first in odd ones: neither
                # always runs behind the other's writeback. The checkpoint is deleted before the
                # raw file is written, so the disk holds one state's bytes at a time.
                for op in (["raw", "save"] if round_ % 2 == 0 else ["save", "raw"]):
                    settle()
                    need_disk(args.dir, size)
                    if op == "raw":
                        report, peak = run(binary, "raw", size, work)
                        times["raw"].append(report["seconds"]); peaks["raw"].append(peak)
                        continue
                    report, peak = run(binary, "save", size, store)
                    times["save"].append(report["seconds"]); peaks["save"].append(peak)
                    settle()
                    report, peak = run(binary, "resume", store)
                    times["resume_warm"].append(report["seconds"]); peaks["resume_warm"].append(peak)
                    report, peak = run(binary, "verify", store)
                    times["verify"].append(report["seconds"]); peaks["verify"].append(peak)
                    evict(store)
                    report, peak = run(binary, "resume", store)
                    times["resume_cold"].append(report["seconds"]); peaks["resume_cold"].append(peak)
                    shutil.rmtree(store)
            finally:
                shutil.rmtree(work)
        stalls, copies, stall_peaks = [], [], []
        for _ in range(args.rounds):
            work = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                report, peak = run(binary, "async", size, work / "store")
                stalls.append(report["stall_seconds"]); copies.append(report["copy_seconds"])
                stall_peaks.append(peak)
            finally:
                shutil.rmtree(work)
        stall = {"stall_seconds": median(stalls), "copy_seconds": median(copies)}
        stall_peak = max(stall_peaks)
        med = {k: median(v) for k, v in times.items()}
        row = {
            "bytes": size, "median_s": med, "all_s": times,
            "peak_rss_bytes": {k: max(v) for k, v in peaks.items()},
            "save_over_raw_speed": med["raw"] / med["save"],
            "async_stall_s": stall["stall_seconds"], "memory_copy_s": stall["copy_seconds"],
            "async_peak_rss_bytes": stall_peak,
        }
        rows.append(row)
        gib = size / (1 << 30)
        row["load"] = loads
        print(f"state {size // MIB} MiB, {args.rounds} rounds (medians), load "
              f"{', '.join(f'{l:.2f}' for l in loads)} at each round's start")
        for name in times:
            rate = f"{gib / med[name]:6.2f} GiB/s" if med[name] > 0 else ""
            spread = f"[{min(times[name]):.3f}-{max(times[name]):.3f}]"
            print(f"  {name:12} {med[name]:8.3f} s {spread:>15} {rate}  peak RSS "
                  f"{max(peaks[name]) / MIB:7.0f} MiB ({max(peaks[name]) / size:.2f}x the state)")
        print(f"  save/raw speed {row['save_over_raw_speed']:.2f} (goal >= 0.80)")
        print(f"  async stall {stall['stall_seconds']:.3f} s against a copy of {stall['copy_seconds']:.3f} s"
              f" (peak RSS {stall_peak / MIB:.0f} MiB)")

    s3_rows = []
    if args.s3_sizes:
        root = Path(tempfile.mkdtemp(dir=args.dir))
        server, env = start_s3(root)
        try:
            for size in args.s3_sizes:
                times = {"plain_put": [], "keel_save": [], "keel_resume": []}
                peaks = {k: [] for k in times}
                for _ in range(args.rounds):
                    need_disk(args.dir, 2 * size)
                    report, peak = run(binary, "s3-put", size, "s3://bench/plain", env=env)
                    times["plain_put"].append(report["seconds"]); peaks["plain_put"].append(peak)
                    report, peak = run(binary, "s3-save", size, "s3://bench/ckpt", env=env)
                    times["keel_save"].append(report["seconds"]); peaks["keel_save"].append(peak)
                    report, peak = run(binary, "s3-resume", "s3://bench/ckpt", env=env)
                    times["keel_resume"].append(report["seconds"]); peaks["keel_resume"].append(peak)
                med = {k: median(v) for k, v in times.items()}
                row = {"bytes": size, "median_s": med, "all_s": times,
                       "peak_rss_bytes": {k: max(v) for k, v in peaks.items()},
                       "save_over_put_speed": med["plain_put"] / med["keel_save"]}
                s3_rows.append(row)
                gib = size / (1 << 30)
                print(f"s3s-fs on loopback, state {size // MIB} MiB, {args.rounds} rounds (medians)")
                for name in times:
                    print(f"  {name:12} {med[name]:8.3f} s  {gib / med[name]:6.2f} GiB/s"
                          f"  peak RSS {max(peaks[name]) / MIB:7.0f} MiB ({max(peaks[name]) / size:.2f}x)")
                print(f"  keel save / plain PUT speed {row['save_over_put_speed']:.2f}")
        finally:
            server.kill()
            server.wait()
            shutil.rmtree(root)
    print(json.dumps({"load_at_start": load, "cpus": os.cpu_count(), "local": rows, "s3": s3_rows}))


if __name__ == "__main__":
    main()
