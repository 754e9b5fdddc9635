//! Where the shared real-world data lives: `../shared/data` beside the repository, or
//! `$KEEL_SHARED_DATA`.

use std::path::PathBuf;

pub(crate) fn shared_data() -> PathBuf {
    let path = std::env::var_os("KEEL_SHARED_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    );
    assert!(
        path.is_dir(),
        "shared test data not found at {}; clone the repository beside `shared/` or set KEEL_SHARED_DATA",
        path.display()
    );
    path
}

/// The YAML files of a folder, sorted, so that a test over a folder can say which file failed.
#[allow(dead_code)]
pub(crate) fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs_err::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}
