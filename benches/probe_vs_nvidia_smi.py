#!/usr/bin/env python3
"""`keel probe` latency against `nvidia-smi --query-gpu=... --format=csv`, same machine, same run.

Both are run as fresh processes, alternating, and must report the same GPUs. Needs a GPU
node (run it on a lent GPU machine) and a release build:

    cargo build --release -p keel-cli
    python3 benches/probe_vs_nvidia_smi.py [--rounds 30]

Goal: keel probe 10x faster than nvidia-smi (median).
"""

import argparse
import json
import shutil
import statistics
import sys

from benchlib import release_keel, timed
QUERY = "name,uuid,pci.bus_id,compute_cap,memory.total,driver_version"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    keel = release_keel()
    if shutil.which("nvidia-smi") is None:
        sys.exit("nvidia-smi not found: run this on a GPU node")

    _, keel_out = timed([str(keel), "probe", "--json"])
    _, smi_out = timed(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader"])
    keel_uuids = sorted(d["uuid"] for d in json.loads(keel_out)["devices"])
    smi_uuids = sorted(line.split(", ")[1] for line in smi_out.strip().splitlines())
    if keel_uuids != smi_uuids:
        sys.exit(f"keel and nvidia-smi disagree:\n{keel_uuids}\n{smi_uuids}")

    keel_times, smi_times = [], []
    for _ in range(args.rounds):
        keel_times.append(timed([str(keel), "probe", "--json"])[0])
        smi_times.append(timed(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv"])[0])
    keel_median, smi_median = statistics.median(keel_times), statistics.median(smi_times)
    print(f"GPUs: {len(keel_uuids)}, rounds: {args.rounds}")
    print(f"keel probe --json  median {keel_median * 1000:8.1f} ms")
    print(f"nvidia-smi --query median {smi_median * 1000:8.1f} ms")
    print(f"speed-up nvidia-smi / keel: {smi_median / keel_median:.1f}x")


if __name__ == "__main__":
    main()
