//! Where the test data lives: `test-data/` at the top of the workspace (every file with its
//! source, commit and licence beside it), or `$KEEL_TEST_DATA`.

use std::path::{Path, PathBuf};

/// The workspace's top folder (the one holding `Cargo.lock`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("keel-test-support lies at crates/keel-test-support")
        .to_path_buf()
}

/// The test data's root: `$KEEL_TEST_DATA`, else `test-data/` in the workspace.
///
/// # Panics
/// When the folder does not exist, naming it.
pub fn test_data() -> PathBuf {
    let path = std::env::var_os("KEEL_TEST_DATA")
        .map_or_else(|| workspace_root().join("test-data"), PathBuf::from);
    assert!(
        path.join("README.md").is_file(),
        "the test data is not at {} (it ships in the repository as test-data/; \
         KEEL_TEST_DATA overrides where it is read from)",
        path.display()
    );
    path
}

/// The YAML files of a folder (`.yml`, `.yaml`), sorted, so that a test over a folder can say
/// which file failed.
///
/// # Panics
/// When the folder cannot be read or holds none.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
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
