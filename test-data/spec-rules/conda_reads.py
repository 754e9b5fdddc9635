"""What conda itself reads from each environment file keel ships.

Run from the repository root with conda's source importable (conda/conda at the commit below
and its Python dependencies), as `python test-data/spec-rules/conda_reads.py`; it writes
test-data/spec-rules/conda-reads.json, which crates/keel-spec/tests/conda_semantics.rs reads.
For each file: whether `conda.env.env.from_file` reads it, the error if not, and what it reads:
the name, the channels, each conda dependency's name, version and build as conda's MatchSpec
holds them, and the pip lines it hands to pip.
"""

import contextlib
import io
import json
import pathlib
import sys

from conda.env import env
from conda.models.match_spec import MatchSpec

CONDA_COMMIT = "0f64223fb8da4328457a69fe6483959dbb783152"
ROOT = pathlib.Path("test-data")
FOLDERS = ["envs", "envs-bad", "peer-fixtures", "spec-rules"]


def read(path):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            environment = env.from_file(str(path))
    except Exception as error:  # conda's own errors and the crashes of its reader alike
        return {"valid": False, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    dependencies = environment.dependencies
    conda = []
    for text in dependencies.get("conda", []):
        spec = MatchSpec(text)
        version = spec.get_raw_value("version")
        build = spec.get_raw_value("build")
        conda.append(
            {
                "name": spec.name,
                "version": None if version is None else str(version),
                "build": None if build is None else str(build),
            }
        )
    return {
        "valid": True,
        "name": environment.name if isinstance(environment.name, str) else None,
        "channels": [str(c) for c in environment.channels],
        "conda": conda,
        "pip": [str(line) for line in dependencies.get("pip") or []],
    }


def main():
    files = sorted(
        p
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".yml", ".yaml") and p.is_file()
    )
    out = {"conda_commit": CONDA_COMMIT, "files": {}}
    for path in files:
        out["files"][str(path.relative_to(ROOT))] = read(path)
    pathlib.Path(ROOT / "spec-rules" / "conda-reads.json").write_text(
        json.dumps(out, indent=1, sort_keys=True) + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
