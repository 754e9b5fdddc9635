//! Helpers shared by the CLI tests.

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
