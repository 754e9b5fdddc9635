//! What keel-train's `mpirun` tests share: finding `mpirun` (or skipping with a note) and the
//! example program the test starts under it.

use std::path::{Path, PathBuf};

/// `mpirun` found on `PATH`, as the shell would, or `None` with a note saying `what` is
/// skipped; with `KEEL_REQUIRE_MPI` set (as CI does) a missing `mpirun` fails instead.
#[allow(
    clippy::print_stderr,
    reason = "the note that says why a test is skipped"
)]
pub(crate) fn mpirun_or_skip(what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("mpirun"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var_os("KEEL_REQUIRE_MPI").is_some() {
            panic!("KEEL_REQUIRE_MPI is set but `mpirun` is not on PATH");
        }
        eprintln!("note: `mpirun` is not on PATH: {what} skipped");
    }
    found
}

/// `target/<profile>/examples/<name>`, beside `target/<profile>/deps/<this test>`.
pub(crate) fn example(name: &str) -> PathBuf {
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
        "{} is missing: run `cargo test -p keel-train --features mpi`, which builds it",
        example.display()
    );
    example
}
