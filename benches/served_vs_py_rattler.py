#!/usr/bin/env python3
"""`keel lock` and `keel install` against a served channel, beside py-rattler doing the same.

The channel is the seeds' PyTorch composition (`keel_test_support::seeds`: the real pytorch
channel snapshot, 2,181 records, with nvidia, conda-forge and defaults around it and real
archives for what the solve picks), served on 127.0.0.1 by the tests' own HTTP server (`ETag`,
`Last-Modified`, `304` to a conditional request), which the example `serve_seeds` of
keel-test-support builds and starts. The environment: `python=3.9`, `pip`, `pytorch=2.0.1`,
`torchvision`, `torchaudio`, `pytorch-cuda=11.8` from `pytorch`, `nvidia`, `conda-forge`,
`defaults` (the named channels and `defaults` reach the server through `CONDA_CHANNEL_ALIAS`
and `CONDA_DEFAULT_CHANNELS`, as with a mirror), for linux-64 with `__cuda=12.4`; no pip
section (py-rattler has no PyPI solve).

Per round, alternating which tool goes first, each in a fresh process:
- lock cold: an empty repodata cache; `keel lock --no-uv` against `rattler.solve` with a
  `Gateway` whose cache folder is empty (both solve strict priority);
- lock warm: the cache the cold run filled (both revalidate: the server answers 304), the lock
  removed so that keel solves again;
- install cold: an empty package cache and a new prefix; `keel install` of the lock against
  `rattler.install` of the same lock's records (read with `rattler.LockFile`);
- install warm: the package cache the cold run filled, a new prefix.

Prints machine and load, medians, the ratios keel / py-rattler, and what the server answered
(requests, 200s, 304s) to each.

    cargo build --release -p keel-cli
    cargo build --release -p keel-test-support --example serve_seeds
    target/keel-test-tools/venv/bin/python benches/served_vs_py_rattler.py [--rounds 5]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import ROOT, release_keel, timed

SERVE_SEEDS = ROOT / "target" / "release" / "examples" / "serve_seeds"
WORK = ROOT / "target" / "bench-tmp" / "served"
CHANNELS = ["pytorch", "nvidia", "conda-forge", "defaults"]
SPECS = ["python=3.9", "pip", "pytorch=2.0.1", "torchvision", "torchaudio", "pytorch-cuda=11.8"]
CUDA = "12.4"

PY_RATTLER = """
import asyncio, json, os, sys, time
import rattler

async def solve(base, cache, out):
    channels = [rattler.Channel(f"{base}/{name}")
                for name in ["pytorch", "nvidia", "conda-forge", "pkgs/main", "pkgs/r"]]
    virtual = [p.into_generic() for p in rattler.VirtualPackage.detect()
               if not str(p.into_generic().name.normalized).startswith("__cuda")]
    virtual.append(rattler.GenericVirtualPackage(
        rattler.PackageName("__cuda"), rattler.Version(sys.argv[5]), rattler.BuildString("0")))
    start = time.perf_counter()
    records = await rattler.solve(
        sources=channels,
        specs=json.loads(sys.argv[6]),
        gateway=rattler.Gateway(cache_dir=cache),
        platforms=["linux-64", "noarch"],
        virtual_packages=virtual,
        channel_priority=rattler.ChannelPriority.Strict,
    )
    elapsed = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump(sorted(f"{r.name.normalized} {r.version} {r.build}" for r in records), f)
    print(elapsed, flush=True)

async def install(lock, prefix, cache):
    environment = rattler.LockFile.from_path(lock).default_environment()
    platform = next(p for p in environment.platforms() if "linux-64" in str(p))
    records = environment.conda_repodata_records_for_platform(platform)
    start = time.perf_counter()
    await rattler.install(records, prefix, cache_dir=cache, show_progress=False)
    print(time.perf_counter() - start, flush=True)

if sys.argv[1] == "solve":
    asyncio.run(solve(sys.argv[2], sys.argv[3], sys.argv[4]))
else:
    asyncio.run(install(sys.argv[2], sys.argv[3], sys.argv[4]))
# py-rattler 0.28 can abort while the interpreter finalises (PyGILState_Release); the work is
# done and printed, so leave without finalising.
os._exit(0)
"""


def real_python():
    """The interpreter itself, not a virtual environment: the seeds' python package runs it."""
    return Path(sys.base_prefix) / "bin" / "python3"


class SeedsServer:
    """`serve_seeds ROOT PYTHON` as a context manager: `.base` is its URL, `.answered()` the
    counts of the requests since the previous call."""

    def __init__(self, root: Path):
        if not SERVE_SEEDS.is_file():
            sys.exit(
                "build the server first: cargo build --release -p keel-test-support "
                f"--example serve_seeds ({SERVE_SEEDS} missing)"
            )
        shutil.rmtree(root, ignore_errors=True)
        self.root = root
        self.process = subprocess.Popen(
            [str(SERVE_SEEDS), str(root), str(real_python())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.base = self.process.stdout.readline().strip()
        if not self.base.startswith("http://127.0.0.1:"):
            self.process.kill()
            sys.exit(f"serve_seeds did not start (it printed {self.base!r})")

    def answered(self):
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def env(self, cache: Path):
        return dict(
            os.environ,
            XDG_CACHE_HOME=str(cache),
            CONDA_CHANNEL_ALIAS=self.base,
            CONDA_DEFAULT_CHANNELS=f"{self.base}/pkgs/main,{self.base}/pkgs/r",
            CONDA_OVERRIDE_CUDA="",
        )

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.stdin.close()
        self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def write_project(project: Path):
    project.mkdir(parents=True, exist_ok=True)
    (project / "environment.yml").write_text(
        "name: seeds\n"
        f"channels: [{', '.join(CHANNELS)}]\n"
        f"dependencies: [{', '.join(SPECS)}]\n"
        "platforms: [linux-64]\n"
    )


def keel_lock(keel, server, project, cache):
    return timed(
        [str(keel), "lock", "--no-uv", "--virtual-package", f"__cuda={CUDA}",
         "--cache-dir", str(cache / "repodata")],
        cwd=project, env=server.env(cache),
    )[0]


def keel_install(keel, server, project, prefix, packages):
    return timed(
        [str(keel), "install", "--prefix", str(prefix), "--package-cache", str(packages)],
        cwd=project, env=server.env(project / "install-cache"),
    )[0]


def install_seeds(keel, server, project: Path) -> Path:
    """Locks and installs the seeds' environment from `server` into `project/env`."""
    write_project(project)
    keel_lock(keel, server, project, project / "cache")
    prefix = project / "env"
    keel_install(keel, server, project, prefix, project / "pkgs")
    return prefix


def locked_packages(lock: Path):
    import rattler

    environment = rattler.LockFile.from_path(lock).default_environment()
    platform = next(p for p in environment.platforms() if "linux-64" in str(p))
    records = environment.conda_repodata_records_for_platform(platform)
    return sorted(f"{r.name.normalized} {r.version} {r.build}" for r in records)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    keel = release_keel()
    try:
        import rattler  # noqa: F401
    except ImportError:
        sys.exit("run with the test tools' Python (target/keel-test-tools/venv/bin/python, "
                 "where .ci/test-tools installs py-rattler)")
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    script = WORK / "py_rattler_served.py"
    script.write_text(PY_RATTLER)
    project = WORK / "project"
    write_project(project)
    times = {f"{tool}_{step}": [] for tool in ("keel", "rattler")
             for step in ("lock_cold", "lock_warm", "install_cold", "install_warm")}
    inside = {key: [] for key in times if key.startswith("rattler")}
    answered = {}

    def note(key, counts):
        answered.setdefault(key, counts)

    with SeedsServer(WORK / "served") as server:
        server.answered()

        def keel_round(r):
            cache = WORK / f"keel-cache-{r}"
            shutil.rmtree(cache, ignore_errors=True)
            (project / "keel.lock").unlink(missing_ok=True)
            times["keel_lock_cold"].append(keel_lock(keel, server, project, cache))
            note("keel_lock_cold", server.answered())
            (project / "keel.lock").unlink()
            times["keel_lock_warm"].append(keel_lock(keel, server, project, cache))
            note("keel_lock_warm", server.answered())
            packages = WORK / f"keel-pkgs-{r}"
            for step in ("install_cold", "install_warm"):
                prefix = WORK / f"keel-env-{r}-{step}"
                times[f"keel_{step}"].append(
                    keel_install(keel, server, project, prefix, packages))
                note(f"keel_{step}", server.answered())
                shutil.rmtree(prefix)
            shutil.rmtree(packages)
            shutil.rmtree(cache)

        def rattler_round(r):
            cache = WORK / f"rattler-cache-{r}"
            shutil.rmtree(cache, ignore_errors=True)
            for step in ("lock_cold", "lock_warm"):
                elapsed, out = timed([sys.executable, str(script), "solve", server.base,
                                      str(cache), str(WORK / "rattler-solve.json"), CUDA,
                                      json.dumps(SPECS)])
                times[f"rattler_{step}"].append(elapsed)
                inside[f"rattler_{step}"].append(float(out.split()[0]))
                note(f"rattler_{step}", server.answered())
            packages = WORK / f"rattler-pkgs-{r}"
            for step in ("install_cold", "install_warm"):
                prefix = WORK / f"rattler-env-{r}-{step}"
                elapsed, out = timed([sys.executable, str(script), "install",
                                      str(project / "keel.lock"), str(prefix), str(packages)])
                times[f"rattler_{step}"].append(elapsed)
                inside[f"rattler_{step}"].append(float(out.split()[0]))
                note(f"rattler_{step}", server.answered())
                shutil.rmtree(prefix)
            shutil.rmtree(packages)
            shutil.rmtree(cache)

        for r in range(args.rounds):
            # py-rattler installs from keel's lock: keel's round writes it first in round 0.
            first, second = (keel_round, rattler_round) if r % 2 == 0 else (rattler_round,
                                                                              keel_round)
            first(r)
            second(r)
            if r == 0:
                keel_set = locked_packages(project / "keel.lock")
                rattler_set = json.loads((WORK / "rattler-solve.json").read_text())
                if keel_set != rattler_set:
                    print("note: the solves differ:\n  only keel: "
                          f"{sorted(set(keel_set) - set(rattler_set))}\n  only py-rattler: "
                          f"{sorted(set(rattler_set) - set(keel_set))}")
                print(f"locked {len(keel_set)} packages; py-rattler's solve "
                      f"{'is the same' if keel_set == rattler_set else 'differs'}")

    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}")
    print(f"load before: {load_before}\nload after:  {load_after}")
    print(f"rounds: {args.rounds}, medians of whole processes; server {server.base}")
    for step in ("lock_cold", "lock_warm", "install_cold", "install_warm"):
        k, r = medians[f"keel_{step}"], medians[f"rattler_{step}"]
        ka, ra = answered[f"keel_{step}"], answered[f"rattler_{step}"]
        print(f"  {step:<13} keel {k * 1000:8.1f} ms   py-rattler {r * 1000:8.1f} ms "
              f"(in process {statistics.median(inside[f'rattler_{step}']) * 1000:7.1f} ms)   "
              f"ratio {k / r:.2f}   requests keel {ka['requests']} ({ka['ok']} x 200, "
              f"{ka['not_modified']} x 304), py-rattler {ra['requests']} ({ra['ok']} x 200, "
              f"{ra['not_modified']} x 304)")
    if args.json:
        args.json.write_text(json.dumps({"medians_s": medians, "answered": answered,
                                         "load": [load_before, load_after]}, indent=1))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
