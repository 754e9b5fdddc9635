//! Reading a prefix's `conda-meta` records and the pip installs beside them.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use rattler_conda_types::PrefixRecord;
use rayon::prelude::*;

use crate::PrefixError;
use crate::paths::{Enclosure, UnsafePath, enclosed_path, enclosed_str, read_regular_text};

/// The most keel reads of one `conda-meta/*.json` record (the largest real ones, of packages
/// with tens of thousands of files, are a few tens of MiB).
const RECORD_LIMIT: u64 = 256 << 20;

/// The most keel reads of a `*.dist-info/METADATA` or `RECORD`.
const DIST_INFO_LIMIT: u64 = 64 << 20;

/// The most keel reads of a `*.dist-info/INSTALLER` (one tool name).
const INSTALLER_LIMIT: u64 = 64 << 10;

/// Why one `conda-meta` record cannot be used.
#[derive(Debug)]
pub(crate) enum RecordProblem {
    /// Not a regular file, too large, or a read error.
    Unreadable(std::io::Error),
    /// Not UTF-8 or not a record (a half-written file after an interruption looks like this).
    Malformed(std::io::Error),
    /// A path in it that could leave the prefix.
    Unsafe {
        /// The path as written.
        path: String,
        /// Why it is refused.
        reason: UnsafePath,
    },
}

impl RecordProblem {
    /// The error that names the record's file.
    pub(crate) fn into_error(self, record: PathBuf) -> PrefixError {
        match self {
            RecordProblem::Unreadable(source) | RecordProblem::Malformed(source) => {
                PrefixError::Record {
                    path: record,
                    source,
                }
            }
            RecordProblem::Unsafe { path, reason } => PrefixError::UnsafeRecordPath {
                record,
                path,
                reason,
            },
        }
    }
}

/// Every path a record names (installed files, their original paths before a clobber), each
/// through [`enclosed_path`]: the first one refused.
fn check_record_paths(record: &PrefixRecord) -> Result<(), RecordProblem> {
    let paths =
        record.files.iter().chain(
            record.paths_data.paths.iter().flat_map(|entry| {
                std::iter::once(&entry.relative_path).chain(&entry.original_path)
            }),
        );
    for path in paths {
        if let Err(reason) = enclosed_path(path) {
            return Err(RecordProblem::Unsafe {
                path: path.to_string_lossy().into_owned(),
                reason,
            });
        }
    }
    Ok(())
}

/// The package name a record gives is one conda accepts (`[A-Za-z0-9_.-]`, not empty): rattler reads it
/// unchecked, and a name with control characters or separators reached the installer's
/// bookkeeping (which panicked) and the terminal.
fn check_record_name(record: &PrefixRecord) -> Result<(), RecordProblem> {
    let name = record.repodata_record.package_record.name.as_source();
    let refuse = |why: String| {
        RecordProblem::Malformed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the package name {name:?} is not a conda package name: {why}"),
        ))
    };
    if name.is_empty() {
        return Err(refuse("it is empty".into()));
    }
    rattler_conda_types::PackageName::try_from(name)
        .map(drop)
        .map_err(|error| refuse(error.to_string()))
}

/// Reads one record: a regular file of bounded size, parsed, every path in it checked.
fn read_record(path: &Path) -> Result<PrefixRecord, RecordProblem> {
    let text = match read_regular_text(path, RECORD_LIMIT, "conda-meta records") {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(RecordProblem::Malformed(error));
        }
        Err(error) => return Err(RecordProblem::Unreadable(error)),
    };
    let record = PrefixRecord::from_str(&text).map_err(RecordProblem::Malformed)?;
    check_record_name(&record)?;
    check_record_paths(&record)?;
    Ok(record)
}

/// One `conda-meta/*.json` file and what reading it gave.
pub(crate) type ParsedRecord = (PathBuf, Result<PrefixRecord, RecordProblem>);

/// Every `conda-meta/*.json` file of a prefix, each read and checked (in parallel: a large
/// environment's records run to tens of megabytes of JSON), in file-name order. Entries that
/// are not directories are all read, so a FIFO or a device named `*.json` is an error, not
/// skipped.
pub(crate) fn parse_records(prefix: &Path) -> Result<Vec<ParsedRecord>, PrefixError> {
    let meta = prefix.join("conda-meta");
    if !meta.is_dir() {
        return Err(PrefixError::NotAPrefix(prefix.to_path_buf()));
    }
    let mut paths = Vec::new();
    for entry in fs_err::read_dir(&meta)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "json") && !path.is_dir() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths
        .into_par_iter()
        .map(|path| {
            let record = read_record(&path);
            (path, record)
        })
        .collect())
}

/// The `conda-meta` records of a prefix, sorted by package name, each with its file. A record
/// that does not parse, or names a path that could leave the prefix, is an error naming its
/// file.
pub(crate) fn read_records(prefix: &Path) -> Result<Vec<(PathBuf, PrefixRecord)>, PrefixError> {
    let mut records = parse_records(prefix)?
        .into_iter()
        .map(|(path, record)| match record {
            Ok(record) => Ok((path, record)),
            Err(problem) => Err(problem.into_error(path)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    records.sort_by(|(_, a), (_, b)| {
        a.repodata_record
            .package_record
            .name
            .as_normalized()
            .cmp(b.repodata_record.package_record.name.as_normalized())
    });
    Ok(records)
}

/// The installed packages of a prefix, from its `conda-meta` records, by name.
pub fn installed_packages(prefix: &Path) -> Result<Vec<PrefixRecord>, PrefixError> {
    Ok(read_records(prefix)?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

/// A Python distribution installed in the prefix (a `*.dist-info` folder), as pip sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PythonDist {
    /// The distribution name from `METADATA` (as written there).
    pub name: String,
    /// The version from `METADATA`.
    pub version: String,
    /// The tool that installed it (`INSTALLER`), when recorded.
    pub installer: Option<String>,
    /// The `*.dist-info` folder, relative to the prefix.
    pub dist_info: String,
    /// The files its `RECORD` lists, relative to the prefix.
    #[serde(skip)]
    pub files: Vec<String>,
    /// `RECORD` entries that lead outside the prefix (absolute, or too many `..`), as written:
    /// findings, never read.
    #[serde(skip)]
    pub outside_prefix: Vec<String>,
}

/// Whether `path` (under the prefix) really is a directory inside it, symlinks followed.
fn inside_dir(enclosure: &Enclosure, path: &Path) -> Result<bool, PrefixError> {
    match enclosure.resolve(path) {
        Ok(Some(real)) => Ok(real.is_dir()),
        Ok(None) => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(PrefixError::Io(error)),
    }
}

/// A dist-info file: `None` when it is not there, an error when it is there but not a
/// readable regular file inside the prefix.
fn dist_info_file(
    enclosure: &Enclosure,
    path: &Path,
    limit: u64,
) -> Result<Option<String>, PrefixError> {
    let unreadable = |source| PrefixError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let real = match enclosure.resolve(path) {
        Ok(Some(real)) => real,
        // A symlink out of the prefix: not this prefix's file, never read.
        Ok(None) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error)),
    };
    read_regular_text(&real, limit, "dist-info files")
        .map(Some)
        .map_err(unreadable)
}

/// Every `*.dist-info` folder under `lib/python*/site-packages` (Unix) or `Lib/site-packages`
/// (Windows layout), with the files its `RECORD` lists. Folders that lead outside the prefix
/// through a symlink are not read.
pub(crate) fn python_dists(prefix: &Path) -> Result<Vec<PythonDist>, PrefixError> {
    let enclosure = Enclosure::new(prefix)?;
    let mut site_dirs = Vec::new();
    let lib = prefix.join("lib");
    if inside_dir(&enclosure, &lib)? {
        for entry in fs_err::read_dir(&lib)? {
            let path = entry?.path();
            let is_python = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("python"));
            if is_python && inside_dir(&enclosure, &path.join("site-packages"))? {
                site_dirs.push(path.join("site-packages"));
            }
        }
    }
    let windows_site = prefix.join("Lib").join("site-packages");
    if inside_dir(&enclosure, &windows_site)? {
        site_dirs.push(windows_site);
    }
    site_dirs.sort();
    site_dirs.dedup();
    let mut dists = Vec::new();
    for site in site_dirs {
        let mut entries: Vec<PathBuf> = fs_err::read_dir(&site)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for dist_info in entries {
            let is_dist_info = dist_info
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(".dist-info"));
            if !is_dist_info || !inside_dir(&enclosure, &dist_info)? {
                continue;
            }
            let Some(metadata) =
                dist_info_file(&enclosure, &dist_info.join("METADATA"), DIST_INFO_LIMIT)?
            else {
                continue;
            };
            let field = |key: &str| {
                metadata
                    .lines()
                    .take_while(|line| !line.is_empty())
                    .find_map(|line| line.strip_prefix(key))
                    .map(|value| value.trim().to_string())
            };
            let (Some(name), Some(version)) = (field("Name:"), field("Version:")) else {
                continue;
            };
            let installer =
                dist_info_file(&enclosure, &dist_info.join("INSTALLER"), INSTALLER_LIMIT)?
                    .map(|text| text.trim().to_string())
                    .filter(|text| !text.is_empty());
            let site_relative = relative(prefix, &site);
            let mut files = Vec::new();
            let mut outside_prefix = Vec::new();
            if let Some(record) =
                dist_info_file(&enclosure, &dist_info.join("RECORD"), DIST_INFO_LIMIT)?
            {
                for line in record.lines() {
                    let Some(path) = record_path(line) else {
                        continue;
                    };
                    match join_normalized(&site_relative, &path) {
                        Some(joined) => files.push(joined),
                        None => outside_prefix.push(path),
                    }
                }
            }
            dists.push(PythonDist {
                name,
                version,
                installer,
                dist_info: relative(prefix, &dist_info),
                files,
                outside_prefix,
            });
        }
    }
    Ok(dists)
}

/// The path field of one `RECORD` line (a CSV row: path, hash, size; the path may be quoted).
fn record_path(line: &str) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let mut path = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    path.push('"');
                } else {
                    return Some(path);
                }
            } else {
                path.push(c);
            }
        }
        return None;
    }
    line.split(',').next().map(str::to_string)
}

/// `base/path` with `.` and `..` resolved (pip writes scripts as `../../../bin/tool`), then
/// through [`enclosed_path`]; `None` when it leaves the prefix or is refused.
fn join_normalized(base: &str, path: &str) -> Option<String> {
    let drive = path.as_bytes().get(1) == Some(&b':');
    if path.starts_with(['/', '\\']) || drive {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|part| !part.is_empty()).collect();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    enclosed_str(&joined).ok()?;
    Some(joined)
}

/// `path` relative to `prefix`, with `/` separators.
pub(crate) fn relative(prefix: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(prefix).unwrap_or(path);
    slash_path(relative)
}

/// A relative path with `/` separators on every platform.
pub(crate) fn slash_path(path: &Path) -> String {
    path.components()
        .map(|component| component.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_quoted_and_relative() {
        assert_eq!(record_path("a/b.py,sha256=x,10").as_deref(), Some("a/b.py"));
        assert_eq!(record_path("\"a,b.py\",,").as_deref(), Some("a,b.py"));
        assert_eq!(record_path(""), None);
        assert_eq!(
            join_normalized("lib/python3.12/site-packages", "../../../bin/tool").as_deref(),
            Some("bin/tool")
        );
        assert_eq!(join_normalized("lib", "../../etc/passwd"), None);
        assert_eq!(join_normalized("lib", "/etc/passwd"), None);
        assert_eq!(join_normalized("lib", "..\\..\\etc\\passwd"), None);
        assert_eq!(join_normalized("lib", "C:/x"), None);
        assert_eq!(join_normalized("lib", "x\0y"), None);
        assert_eq!(join_normalized("lib", ".."), None);
    }
}
