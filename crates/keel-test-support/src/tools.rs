//! The programs the tests run besides keel: `s3s-fs`, `uv`, a Python with safetensors and
//! numpy, `mpirun`. `.ci/test-tools` installs them under [`tools_dir`] (the README's test
//! command, `.ci/test`, runs it first); a test that cannot find one fails saying which and how
//! to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `.ci/test-tools` installs the tools: `$KEEL_TEST_TOOLS`, else
/// `target/keel-test-tools` in the workspace.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("KEEL_TEST_TOOLS").map_or_else(
        || super::workspace_root().join("target/keel-test-tools"),
        PathBuf::from,
    )
}

/// The environment variable that overrides where `name` is found (`KEEL_S3S_FS` for `s3s-fs`).
fn override_variable(name: &str) -> String {
    format!("KEEL_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Finds `name` as the tests run it, without failing.
fn find(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_variable(name)) {
        return Some(PathBuf::from(path));
    }
    let tools = tools_dir();
    [tools.join("bin"), tools.join("venv/bin")]
        .into_iter()
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The program `name`: `$KEEL_<NAME>`, else `.ci/test-tools`' folders, else `PATH`.
///
/// # Panics
/// When it is nowhere, naming it and the script that installs it.
pub fn tool(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "this test needs `{name}`, which is not installed: run `.ci/test-tools` (the README's \
             test command `.ci/test` does), put it on PATH, or point ${} at it",
            override_variable(name)
        )
    })
}

/// A Python that imports `modules`: the venv `.ci/test-tools` makes, else `python3` on `PATH`.
///
/// # Panics
/// When no such Python exists, naming the modules and the script that installs them.
pub fn python(modules: &[&str]) -> PathBuf {
    let venv = tools_dir().join("venv/bin/python");
    let candidates = [Some(venv), find("python3")];
    let imports = format!("import {}", modules.join(", "));
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", &imports])
            .output()
            .is_ok_and(|output| output.status.success());
        if ok {
            return python;
        }
    }
    panic!(
        "this test needs a Python with {}: run `.ci/test-tools` (the README's test command \
         `.ci/test` does), which makes one under {}",
        modules.join(", "),
        tools_dir().display()
    )
}

/// `mpirun` (Open MPI), which the multi-rank tests launch.
///
/// # Panics
/// When it is not installed, naming the packages that bring it.
pub fn mpirun() -> PathBuf {
    find("mpirun").unwrap_or_else(|| {
        panic!(
            "this test needs `mpirun` (Open MPI): run `.ci/test-tools` (the README's test \
             command `.ci/test` does; on Debian it installs openmpi-bin libopenmpi-dev), or \
             point $KEEL_MPIRUN at one"
        )
    })
}

/// `target/<profile>/examples/<name>` of the running test binary's build, which cargo builds
/// before a crate's tests.
///
/// # Panics
/// When it is missing, naming it and the command that builds it.
pub fn example(name: &str, build: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/<profile>/deps");
    let example = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        example.is_file(),
        "{} is missing: run `{build}`, which builds it",
        example.display()
    );
    example
}

/// `srun` of a configured Slurm cluster (`$SLURM_CONF` set), which the srun tests launch.
///
/// # Panics
/// When there is none, saying how to start a single-host one.
pub fn slurm() -> PathBuf {
    match (find("srun"), std::env::var_os("SLURM_CONF")) {
        (Some(srun), Some(_)) => srun,
        (srun, _) => panic!(
            "this test needs a Slurm cluster ({}): `eval \"$(.ci/slurm up DIR)\"` starts a \
             single-host one (slurmctld, slurmd, munge) and sets SLURM_CONF; `.ci/run` does",
            if srun.is_some() {
                "srun is installed but SLURM_CONF is not set"
            } else {
                "srun is not installed"
            }
        ),
    }
}
