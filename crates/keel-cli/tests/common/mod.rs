//! Helpers shared by the CLI tests (each test binary uses its share).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// `keel` to run in `dir`, colours off; a test adds the arguments and any environment it needs.
pub(crate) fn keel_in(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.current_dir(dir).env("NO_COLOR", "1");
    command
}

/// Captured output as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether this machine has the CUDA driver library where drivers install it, so that tests
/// know which answer `keel probe` and `keel doctor` must give here.
pub(crate) fn has_cuda_driver() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/run/opengl-driver/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}
