"""What keel's bench scripts share: the release binary and a timed subprocess run."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def release_keel():
    """The release `keel`, or exit saying how to build it."""
    keel = ROOT / "target" / "release" / "keel"
    if not keel.is_file():
        sys.exit(f"build keel first: cargo build --release -p keel-cli ({keel} missing)")
    return keel


def timed(command, **kwargs):
    """Runs `command` (extra arguments go to subprocess.run); returns (seconds, stdout).
    Exits with the command's output when it fails: a failed run is not a timing."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout
