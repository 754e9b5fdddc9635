#!/usr/bin/env python3
"""`keel probe` against `nvidia-smi --query-gpu` latency: fresh processes, alternating.

"cold" is each command's first run in this process (the first to touch the driver since the
check began, so the driver's state is whatever the node left: with persistence mode off, a
first call also initialises the GPU); "warm" is the median of the next ROUNDS runs. Both
commands must name the same GPUs (by UUID), else the figures mean nothing and it says so.

    python3 latency.py KEEL [--rounds N] [--json OUT]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

QUERY = "name,uuid,pci.bus_id,compute_cap,memory.total,driver_version"


def timed(cmd):
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed, done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keel")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    if shutil.which("nvidia-smi") is None:
        sys.exit("nvidia-smi not found: no GPU node")
    commands = {
        "keel probe --json": [args.keel, "probe", "--json"],
        "keel probe --json --free-memory": [args.keel, "probe", "--json", "--free-memory"],
        "nvidia-smi --query-gpu": ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader"],
    }
    cold, outputs = {}, {}
    for name, cmd in commands.items():
        cold[name], outputs[name] = timed(cmd)
    keel_uuids = sorted(d["uuid"] for d in json.loads(outputs["keel probe --json"])["devices"])
    smi_uuids = sorted(
        line.split(", ")[1] for line in outputs["nvidia-smi --query-gpu"].strip().splitlines()
    )
    warm = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            warm[name].append(timed(cmd)[0])
    figures = {
        "rounds": args.rounds,
        "same_gpus": keel_uuids == smi_uuids,
        "keel_uuids": keel_uuids,
        "nvidia_smi_uuids": smi_uuids,
        "cold_ms": {name: t * 1000 for name, t in cold.items()},
        "warm_median_ms": {name: statistics.median(ts) * 1000 for name, ts in warm.items()},
    }
    smi = figures["warm_median_ms"]["nvidia-smi --query-gpu"]
    keel = figures["warm_median_ms"]["keel probe --json"]
    figures["speedup_warm"] = smi / keel if keel > 0 else None
    figures["speedup_cold"] = (
        cold["nvidia-smi --query-gpu"] / cold["keel probe --json"]
        if cold["keel probe --json"] > 0
        else None
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if not figures["same_gpus"]:
        sys.exit(f"keel and nvidia-smi name different GPUs: {keel_uuids} vs {smi_uuids}")


if __name__ == "__main__":
    main()
