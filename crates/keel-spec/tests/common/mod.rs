//! The real-world data in the repository's `test-data/` (or `$KEEL_TEST_DATA`).

#[allow(unused_imports, reason = "each test binary uses its share")]
pub(crate) use keel_test_support::{test_data, yaml_files};
