//! Which file and record a repodata error is about. The gateway reads repodata lazily, record
//! by record, so its errors give a line and column inside one record and no file; keel reads
//! the local channels' files again, whole, to name the file, the record and its place.

use std::path::{Path, PathBuf};

use rattler_conda_types::{RepoData, Subdir};

use crate::SolveError;
use crate::channels::ResolvedChannel;

/// For a repodata error of `platform`'s query, the first local channel file that does not
/// read as repodata, with the record and the line and column in the file. `None` when every
/// local file reads (the error is about a remote channel, or not about a file's content).
pub(crate) fn diagnose(channels: &[ResolvedChannel], platform: Subdir) -> Option<SolveError> {
    for channel in channels {
        let Ok(root) = channel.channel.base_url.url().to_file_path() else {
            continue;
        };
        for subdir in [platform, Subdir::NoArch] {
            let file = root.join(subdir.as_str()).join("repodata.json");
            if let Some(error) = check_file(&file) {
                return Some(error);
            }
        }
    }
    None
}

fn check_file(file: &Path) -> Option<SolveError> {
    let text = fs_err::read_to_string(file).ok()?;
    let error = serde_json::from_str::<RepoData>(&text).err()?;
    let offset = offset_of(&text, error.line(), error.column());
    Some(SolveError::BadRepodata {
        file: PathBuf::from(file),
        record: record_before(&text, offset),
        line: error.line(),
        column: error.column(),
        reason: without_position(&error),
    })
}

/// serde_json's message without the ` at line L column C` it ends with (the error names them).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// The byte offset of a 1-based line and column (serde_json counts columns in bytes).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

/// The package file name whose record holds `offset`: the last `"<name>.conda":` or
/// `"<name>.tar.bz2":` key before it (records are the values of those keys).
fn record_before(text: &str, offset: usize) -> Option<String> {
    let before = &text[..text.floor_char_boundary(offset)];
    [".conda\"", ".tar.bz2\""]
        .iter()
        .filter_map(|suffix| {
            let mut search = before;
            loop {
                let end = search.rfind(suffix)?;
                let key_end = end + suffix.len();
                let is_key = before[key_end..].trim_start().starts_with(':');
                if is_key && let Some(start) = before[..end].rfind('"') {
                    return Some((end, before[start + 1..key_end - 1].to_owned()));
                }
                search = &search[..end];
            }
        })
        .max_by_key(|(end, _)| *end)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &str = r#"{
  "info": {"subdir": "linux-64"},
  "packages": {
    "bar-2.0-0.tar.bz2": {"name": "bar", "version": "2.0", "build": "0", "build_number": 0,
      "depends": [], "subdir": "linux-64"},
    "foo-1.0-0.tar.bz2": {"name": "foo", "version": "1.0", "build": "0", "build_number": 0,
      "depends": null, "subdir": "linux-64"}
  },
  "packages.conda": {}
}"#;

    #[test]
    fn a_bad_record_is_named_with_its_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("repodata.json");
        fs_err::write(&file, BAD).unwrap();
        let Some(SolveError::BadRepodata {
            file: named,
            record,
            line,
            column,
            reason,
        }) = check_file(&file)
        else {
            panic!("the file reads as repodata");
        };
        assert_eq!(named, file);
        assert_eq!(record.as_deref(), Some("foo-1.0-0.tar.bz2"));
        assert_eq!(line, 7);
        assert_eq!(reason, "invalid type: null, expected a sequence");
        assert!(column > 0);
    }

    #[test]
    fn a_minified_file_names_the_record_by_column() {
        let minified: String = BAD.lines().map(str::trim).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("repodata.json");
        fs_err::write(&file, &minified).unwrap();
        let Some(SolveError::BadRepodata { record, line, .. }) = check_file(&file) else {
            panic!("the file reads as repodata");
        };
        assert_eq!((record.as_deref(), line), (Some("foo-1.0-0.tar.bz2"), 1));
    }

    #[test]
    fn a_good_file_is_not_blamed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("repodata.json");
        fs_err::write(&file, BAD.replace("null", "[]")).unwrap();
        assert!(check_file(&file).is_none());
    }
}
