//! Property test of the path rule (hardening issue #13): a path read from a record, a RECORD,
//! a fingerprint or a package is joined onto the prefix only after `enclosed_path` accepts it.
//!
//! Rule: for any path, made of any pieces (`..`, `.`, empty, roots, drives, backslashes, NUL,
//! any Unicode), that `enclosed_path` accepts, the lexical join onto the prefix (with `\`
//! read as a separator, as Windows does) stays strictly inside the prefix, and so does the
//! join of what it returns.

use std::path::{Component, Path, PathBuf};

use keel_prefix::enclosed_path;
use proptest::prelude::*;

/// `base` joined with `path` and normalised without touching the disk: `..` pops, `.` is
/// dropped, a root or prefix replaces everything before it (as `Path::join` does).
fn lexical_join(base: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("C:".to_string()),
        Just("\\\\?\\".to_string()),
        Just("\0".to_string()),
        Just("~".to_string()),
        "[a-z]{1,8}",
        "\\PC{1,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn accepted_paths_never_leave_the_prefix(
        pieces in proptest::collection::vec(piece(), 0..12),
        separators in proptest::collection::vec(prop_oneof![Just("/"), Just("\\"), Just("")], 12),
    ) {
        let mut text = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            text.push_str(separators[i]);
        }
        let prefix = Path::new("/prefix/env");
        if let Ok(relative) = enclosed_path(Path::new(&text)) {
            for joined in [
                lexical_join(prefix, Path::new(&text)),
                lexical_join(prefix, Path::new(&text.replace('\\', "/"))),
                lexical_join(prefix, &relative),
            ] {
                prop_assert!(
                    joined.starts_with(prefix) && joined.as_path() != prefix,
                    "{text:?} was accepted and joins to {joined:?}"
                );
            }
            prop_assert!(!text.contains('\0'));
        }
    }
}
