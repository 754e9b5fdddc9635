//! What keel-train's `mpirun` tests share: `mpirun` itself (a missing one fails the test,
//! naming it) and the example program the tests start under it.

use std::path::PathBuf;

pub(crate) use keel_test_support::mpirun;

/// `target/<profile>/examples/<name>`, which `cargo test --features mpi` builds.
pub(crate) fn example(name: &str) -> PathBuf {
    keel_test_support::example(name, "cargo test -p keel-train --features mpi")
}
