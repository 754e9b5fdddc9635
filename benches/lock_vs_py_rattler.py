#!/usr/bin/env python3
"""`keel lock` end to end against py-rattler solving the same specs on the same files.

Both lock `python=3.9` + `pip` from the conda-forge python 3.9 snapshot in
`test-data/repodata/conda-forge-py39` for linux-64, osx-arm64 and win-64, offline, in the
same run, alternating, each in a fresh process (so both pay their start-up and repodata
loading). py-rattler's in-process solve time is reported too. Prints medians and the ratio.

    pip install py-rattler
    cargo build --release -p keel-cli
    python3 benches/lock_vs_py_rattler.py [--rounds 15]
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, release_keel, timed
DATA = Path(os.environ.get("KEEL_TEST_DATA", ROOT / "test-data"))
CHANNEL = DATA / "repodata" / "conda-forge-py39"
PLATFORMS = ["linux-64", "osx-arm64", "win-64"]

PY_RATTLER = """
import asyncio, os, sys, time
import rattler

async def main():
    start = time.perf_counter()
    total = 0
    for platform in sys.argv[2].split(","):
        records = await rattler.solve(
            sources=[rattler.Channel(sys.argv[1])],
            specs=["python=3.9", "pip"],
            platforms=[platform, "noarch"],
            virtual_packages=[
                p.into_generic() for p in rattler.VirtualPackage.detect()
            ] if platform == "linux-64" else [],
            channel_priority=rattler.ChannelPriority.Strict,
        )
        total += len(records)
    print(total, time.perf_counter() - start, flush=True)

asyncio.run(main())
# py-rattler 0.28 can abort while the interpreter finalises (PyGILState_Release); the work is
# done and printed, so leave without finalising.
os._exit(0)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    keel = release_keel()
    try:
        import rattler  # noqa: F401
    except ImportError:
        sys.exit("install py-rattler first: pip install py-rattler")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "environment.yml").write_text(
            f"channels: [{CHANNEL}, nodefaults]\n"
            "dependencies: [python=3.9, pip]\n"
            f"platforms: [{', '.join(PLATFORMS)}]\n"
        )
        script = work / "py_rattler_solve.py"
        script.write_text(PY_RATTLER)
        keel_times, rattler_times, rattler_solve = [], [], []
        for _ in range(args.rounds):
            (work / "keel.lock").unlink(missing_ok=True)
            elapsed, _ = timed([str(keel), "lock", "--no-uv"], cwd=work)
            keel_times.append(elapsed)
            elapsed, out = timed(
                [sys.executable, str(script), str(CHANNEL), ",".join(PLATFORMS)], cwd=work
            )
            rattler_times.append(elapsed)
            rattler_solve.append(float(out.split()[1]))

    keel_median = statistics.median(keel_times)
    rattler_median = statistics.median(rattler_times)
    print(f"rounds: {args.rounds}, platforms: {', '.join(PLATFORMS)}, channel: {CHANNEL}")
    print(f"keel lock (process, writes keel.lock)      median {keel_median * 1000:8.1f} ms")
    print(f"py-rattler solve (process, import + solve) median {rattler_median * 1000:8.1f} ms")
    print(f"py-rattler solve (in process, solve only)  median {statistics.median(rattler_solve) * 1000:8.1f} ms")
    print(f"ratio keel / py-rattler (process)          {keel_median / rattler_median:.2f}")


if __name__ == "__main__":
    main()
