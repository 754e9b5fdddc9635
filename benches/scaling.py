#!/usr/bin/env python3
"""How keel's costs grow: `keel lock` against repodata records, `keel hash` against files and
bytes, `keel diff` against nodes; each row measured here, with the growth exponent.

- lock: channels composed from the real snapshots in `test-data/repodata` (conda-forge-py39
  linux-64 and noarch, pytorch-channel linux-64, conda-forge-numpy): copy k of every record is
  renamed (`name` -> `name-k<k>`, and so are the names in its `depends` and `constrains`;
  virtual packages `__*` are not), so that 1x, 2x, 4x, 8x hold 1, 2, 4, 8 distinct solvable
  copies of the snapshots in one local channel. The file asks for `python=3.9` and `pip` of
  every copy (the solve grows with the channel, as a larger environment from a larger channel
  does). `keel lock --no-uv` for linux-64, a fresh cache folder every run (cache cold), the
  repodata in the page cache.
- hash: synthetic prefixes as `prefix_hash_vs_b3sum.py` builds them (small files log-uniform
  between 256 B and 64 KiB in 400 package folders, plus large shared libraries); by files
  (5k, 20k, 80k small files, no large ones) and by bytes (5k small files and 50 large ones,
  256 MiB, 1 GiB, 4 GiB in all). Cold: an empty stat cache (every file read and hashed, from
  the page cache); warm: the stat cache that run wrote (nothing read). `--threads 2`.
- diff: a real fingerprint (`keel hash --json` of the seeds' PyTorch environment installed by
  `keel install` from the served composition that `served_vs_py_rattler.py` starts, with the
  test tools' Python site-packages copied in as a pip section puts files there), and N = 2, 16,
  64, 256 nodes: every eighth node (node 1 of 2) differs, each in its own way (one package's
  version, one file's contents, one file added), each difference planted in the prefix and
  fingerprinted by `keel hash` again; the others are the unchanged fingerprint under their own
  label. `keel diff --json` of the N files; the report is checked (groups, changes).

Rows alternate between sizes round by round; medians of `--rounds` runs. The exponent is the
least-squares slope of log(time) over log(size) (1 = linear); the slope between the two
largest rows is printed too (start-up costs make the small rows flatter).

    cargo build --release -p keel-cli
    cargo build --release -p keel-test-support --example serve_seeds   (for the diff rows)
    python3 benches/scaling.py [--rounds 5] [--only lock,hash,diff] [--json FILE]
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, release_keel, timed

DATA = Path(os.environ.get("KEEL_TEST_DATA", ROOT / "test-data")) / "repodata"
WORK = ROOT / "target" / "bench-tmp" / "scaling"
THREADS = 2

# (source file, subdir in the composed channel)
SNAPSHOTS = [
    ("conda-forge-py39/linux-64/repodata.json", "linux-64"),
    ("conda-forge-py39/noarch/repodata.json", "noarch"),
    ("pytorch-channel/linux-64/repodata.json", "linux-64"),
    ("conda-forge-numpy/conda-forge-numpy-linux-64.json", "linux-64"),
]
NAME = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.\-]*)(.*)$", re.S)


def exponent(sizes, times):
    """Least-squares slope of log(time) over log(size)."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def last_slope(sizes, times):
    return math.log(times[-1] / times[-2]) / math.log(sizes[-1] / sizes[-2])


def run(command, ok=(0,), **kwargs):
    """Like benchlib.timed, but the exit codes in `ok` count as success (keel diff exits 1 when
    the nodes differ)."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if result.returncode not in ok:
        sys.exit(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


# ---------------------------------------------------------------- lock


def rename_spec(spec, suffix):
    match = NAME.match(spec)
    if not match or spec.startswith("__"):
        return spec
    return f"{match.group(1)}{suffix}{match.group(2)}"


def compose_channel(channel: Path, copies: int) -> int:
    """Writes `copies` renamed copies of the snapshots into `channel`; returns the records."""
    subdirs = {}
    for source, subdir in SNAPSHOTS:
        snapshot = json.loads((DATA / source).read_text())
        out = subdirs.setdefault(subdir, {"info": {"subdir": subdir}, "packages": {},
                                          "packages.conda": {}, "repodata_version": 1})
        for copy in range(copies):
            suffix = "" if copy == 0 else f"-k{copy}"
            for key in ("packages", "packages.conda"):
                for file_name, record in snapshot.get(key, {}).items():
                    record = dict(record)
                    name = record["name"]
                    record["name"] = name + suffix
                    record["depends"] = [rename_spec(d, suffix) for d in record.get("depends") or []]
                    record["constrains"] = [
                        rename_spec(c, suffix) for c in record.get("constrains") or []
                    ]
                    record["subdir"] = subdir
                    # The file lives in this channel, not where the snapshot was taken.
                    record.pop("url", None)
                    record.pop("channel", None)
                    new_name = name + suffix + file_name[len(name):] if file_name.startswith(
                        name) else f"{name}{suffix}-{file_name}"
                    record["fn"] = new_name
                    out[key][new_name] = record
    records = 0
    for subdir, repodata in subdirs.items():
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        (channel / subdir / "repodata.json").write_text(json.dumps(repodata))
        records += len(repodata["packages"]) + len(repodata["packages.conda"])
    return records


def lock_rows(keel, rounds, factors):
    rows = []
    projects = []
    for copies in factors:
        channel = WORK / f"channel-{copies}x"
        records = compose_channel(channel, copies)
        project = WORK / f"lock-{copies}x"
        project.mkdir(parents=True, exist_ok=True)
        specs = []
        for copy in range(copies):
            suffix = "" if copy == 0 else f"-k{copy}"
            specs += [f"python{suffix}=3.9", f"pip{suffix}"]
        (project / "environment.yml").write_text(
            f"channels: [{channel}, nodefaults]\n"
            f"dependencies: [{', '.join(specs)}]\n"
            "platforms: [linux-64]\n"
        )
        projects.append((copies, records, project))
    times = {copies: [] for copies in factors}
    picked = {}
    for _ in range(rounds):
        for copies, _records, project in projects:
            (project / "keel.lock").unlink(missing_ok=True)
            cache = project / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(os.environ, XDG_CACHE_HOME=str(cache))
            elapsed, _ = timed(
                [str(keel), "lock", "--no-uv", "--cache-dir", str(cache / "repodata")],
                cwd=project, env=env,
            )
            times[copies].append(elapsed)
            lock = (project / "keel.lock").read_text()
            # Each package is listed under its environment and again with its record.
            picked[copies] = len({line.strip() for line in lock.splitlines()
                                  if line.strip().startswith("- conda: ")})
    for copies, records, _project in projects:
        rows.append({"size": records, "copies": copies, "packages_locked": picked[copies],
                     "median_s": statistics.median(times[copies])})
    return rows


# ---------------------------------------------------------------- hash


def build_prefix(prefix: Path, small_files: int, large_files: int, total_bytes: int, seed: int):
    """The prefix of prefix_hash_vs_b3sum.build_prefix, with its sizes as arguments (that one
    has them as constants): small files log-uniform between 256 B and 64 KiB in 400 package
    folders, then `large_files` shared libraries sharing what is left of `total_bytes`."""
    rng = random.Random(seed)
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    small_bytes = 0
    for i in range(small_files):
        size = int(2 ** rng.uniform(8, 16))
        path = prefix / "lib" / "python3.12" / "site-packages" / f"pkg{i % 400}" / f"m{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        small_bytes += size
    if large_files:
        large = max(0, total_bytes - small_bytes) // large_files
        chunk = 64 << 20
        for i in range(large_files):
            with open(prefix / "lib" / f"libbig{i}.so", "wb") as out:
                left = large
                while left:
                    n = min(chunk, left)
                    out.write(rng.randbytes(n))
                    left -= n
    files = [p for p in prefix.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def hash_series(keel, rounds, name, shapes):
    """shapes: (label, small files, large files, total bytes). One prefix at a time (disk)."""
    rows = []
    for label, small, large, total in shapes:
        prefix = WORK / f"hash-{name}-{label}"
        shutil.rmtree(prefix, ignore_errors=True)
        files, size = build_prefix(prefix, small, large, total, seed=20261201)
        # Into the page cache, so that the rows measure keel, not the disk.
        subprocess.run(
            f"find {prefix} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
        )
        cold, warm = [], []
        for round_ in range(rounds):
            cache = WORK / f"hash-cache-{round_}"
            shutil.rmtree(cache, ignore_errors=True)
            command = [str(keel), "hash", str(prefix), "--threads", str(THREADS),
                       "--cache-dir", str(cache)]
            elapsed, out = timed(command)
            if "hashed 0 files" in out:
                sys.exit(f"the cold run found a stat cache:\n{out}")
            cold.append(elapsed)
            elapsed, out = timed(command)
            if "hashed 0 files" not in out:
                sys.exit(f"the warm run read files again:\n{out}")
            warm.append(elapsed)
            shutil.rmtree(cache, ignore_errors=True)
        rows.append({"label": label, "files": files, "bytes": size,
                     "cold_s": statistics.median(cold), "warm_s": statistics.median(warm)})
        shutil.rmtree(prefix, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- diff


def diff_rows(keel, rounds, node_counts):
    from served_vs_py_rattler import SeedsServer, install_seeds

    base = WORK / "diff"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    with SeedsServer(base / "served") as server:
        prefix = install_seeds(keel, server, base / "project")
    site = prefix / "lib" / "python3.9" / "site-packages"
    tools_site = next((ROOT / "target/keel-test-tools/venv/lib").glob("python3*/site-packages"))
    shutil.copytree(tools_site, site, dirs_exist_ok=True, symlinks=True)
    cache = base / "hash-cache"
    fingerprints = base / "fingerprints"
    fingerprints.mkdir()

    def fingerprint(label):
        out = fingerprints / f"{label}.json"
        timed([str(keel), "hash", str(prefix), "--json", "--output", str(out), "--label",
               label, "--threads", str(THREADS), "--cache-dir", str(cache)])
        return json.loads(out.read_text())

    reference = fingerprint("reference")
    conda_meta = sorted((prefix / "conda-meta").glob("*.json"))
    files = [f["path"] for f in reference["files"] if f["kind"] == "file"]
    most = max(node_counts)
    variants = max(1, most // 8)
    rng = random.Random(7)
    planted = []
    for v in range(1, variants + 1):
        meta = conda_meta[v % len(conda_meta)]
        meta_text = meta.read_text()
        record = json.loads(meta_text)
        record["version"] = f"{record['version']}.post{v}"
        meta.write_text(json.dumps(record))
        changed = prefix / files[rng.randrange(len(files))]
        changed_bytes = changed.read_bytes()
        changed.write_bytes(changed_bytes + f"\n# planted {v}\n".encode())
        added = prefix / "share" / f"planted-{v}.txt"
        added.parent.mkdir(exist_ok=True)
        added.write_text(f"node variant {v}\n")
        planted.append((fingerprint(f"variant-{v}"), record["name"]))
        meta.write_text(meta_text)
        changed.write_bytes(changed_bytes)
        added.unlink()
    rows = []
    node_files = {}
    for n in node_counts:
        folder = fingerprints / f"nodes-{n}"
        folder.mkdir()
        paths = []
        expect_groups = 1
        for node in range(n):
            if n == 2 and node == 1:
                v = 1
            elif node % 8 == 7:
                v = node // 8 + 1
            else:
                v = 0
            doc = dict(reference if v == 0 else planted[v - 1][0])
            expect_groups += v != 0
            doc["label"] = f"node{node:03d}"
            path = folder / f"node{node:03d}.json"
            path.write_text(json.dumps(doc))
            paths.append(str(path))
        node_files[n] = (paths, expect_groups)
    times = {n: [] for n in node_counts}
    for _ in range(rounds):
        for n in node_counts:
            paths, expect_groups = node_files[n]
            elapsed, out = run([str(keel), "diff", "--json", *paths], ok=(1,))
            times[n].append(elapsed)
            report = json.loads(out)
            if len(report["groups"]) != expect_groups:
                sys.exit(f"{n} nodes: {len(report['groups'])} groups, not {expect_groups}")
            for difference in report["differences"]:
                kinds = {c["change"] for c in difference["changes"]}
                if not {"package_version", "file_added"} <= kinds:
                    sys.exit(f"{n} nodes: a planted difference is missing: {difference}")
    summary = reference["summary"]
    for n in node_counts:
        rows.append({"size": n, "groups": node_files[n][1], "files_per_node": summary["files"],
                     "packages_per_node": summary["packages"],
                     "median_s": statistics.median(times[n])})
    return rows


# ---------------------------------------------------------------- report


def print_series(title, unit, rows, key="median_s", size="size"):
    print(f"\n{title}")
    for row in rows:
        extra = ", ".join(f"{k}={v}" for k, v in row.items() if not k.endswith("_s") and k != size)
        print(f"  {row[size]:>12,} {unit}  {row[key] * 1000:9.1f} ms   ({extra})")
    sizes = [row[size] for row in rows]
    times = [row[key] for row in rows]
    print(f"  growth exponent {exponent(sizes, times):.2f} (all rows), "
          f"{last_slope(sizes, times):.2f} (two largest rows)")
    return {"exponent": exponent(sizes, times), "last_slope": last_slope(sizes, times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="lock,hash,diff")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    keel = release_keel()
    only = set(args.only.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; "
          f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"rounds: {args.rounds}, medians; hash and diff with --threads {THREADS}")
    results = {}
    try:
        if "lock" in only:
            rows = lock_rows(keel, args.rounds, [1, 2, 4, 8])
            results["lock"] = {"rows": rows, **print_series(
                "keel lock (process, cache cold) by repodata records", "records", rows)}
        if "hash" in only:
            small = 5_000
            rows = hash_series(keel, args.rounds, "files", [
                ("5k", 5_000, 0, 0), ("20k", 20_000, 0, 0), ("80k", 80_000, 0, 0)])
            for key, what in (("cold_s", "cold (empty stat cache)"),
                              ("warm_s", "warm (stat cache)")):
                results[f"hash_files_{key}"] = {"rows": rows, **print_series(
                    f"keel hash {what} by files", "files", rows, key=key, size="files")}
            rows = hash_series(keel, args.rounds, "bytes", [
                ("256MiB", small, 50, 256 << 20), ("1GiB", small, 50, 1 << 30),
                ("4GiB", small, 50, 4 << 30)])
            for key, what in (("cold_s", "cold (empty stat cache)"),
                              ("warm_s", "warm (stat cache)")):
                results[f"hash_bytes_{key}"] = {"rows": rows, **print_series(
                    f"keel hash {what} by bytes ({small} small files + 50 large)", "bytes",
                    rows, key=key, size="bytes")}
        if "diff" in only:
            rows = diff_rows(keel, args.rounds, [2, 16, 64, 256])
            results["diff"] = {"rows": rows, **print_series(
                "keel diff --json by nodes", "nodes", rows)}
    finally:
        print(f"\nload after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
