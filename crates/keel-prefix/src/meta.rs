//! Reading a prefix's `conda-meta` records and the pip installs beside them.

use std::path::{Path, PathBuf};

use rattler_conda_types::PrefixRecord;
use rayon::prelude::*;

use crate::PrefixError;

/// Every `conda-meta/*.json` file of a prefix, each parsed (in parallel: a large
/// environment's records run to tens of megabytes of JSON), in file-name order.
pub(crate) fn parse_records(
    prefix: &Path,
) -> Result<Vec<(PathBuf, std::io::Result<PrefixRecord>)>, PrefixError> {
    let meta = prefix.join("conda-meta");
    if !meta.is_dir() {
        return Err(PrefixError::NotAPrefix(prefix.to_path_buf()));
    }
    let mut paths = Vec::new();
    for entry in fs_err::read_dir(&meta)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "json") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths
        .into_par_iter()
        .map(|path| {
            let record = PrefixRecord::from_path(&path);
            (path, record)
        })
        .collect())
}

/// The `conda-meta` records of a prefix, sorted by package name, each with its file. A record
/// that does not parse is an error naming its file.
pub(crate) fn read_records(prefix: &Path) -> Result<Vec<(PathBuf, PrefixRecord)>, PrefixError> {
    let mut records = parse_records(prefix)?
        .into_iter()
        .map(|(path, record)| match record {
            Ok(record) => Ok((path, record)),
            Err(source) => Err(PrefixError::Record { path, source }),
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
}

/// Every `*.dist-info` folder under `lib/python*/site-packages` (Unix) or `Lib/site-packages`
/// (Windows layout), with the files its `RECORD` lists.
pub(crate) fn python_dists(prefix: &Path) -> Result<Vec<PythonDist>, PrefixError> {
    let mut site_dirs = Vec::new();
    let lib = prefix.join("lib");
    if lib.is_dir() {
        for entry in fs_err::read_dir(&lib)? {
            let path = entry?.path();
            let is_python = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("python"));
            if is_python && path.join("site-packages").is_dir() {
                site_dirs.push(path.join("site-packages"));
            }
        }
    }
    let windows_site = prefix.join("Lib").join("site-packages");
    if windows_site.is_dir() {
        site_dirs.push(windows_site);
    }
    site_dirs.sort();
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
            if !is_dist_info || !dist_info.is_dir() {
                continue;
            }
            let metadata_path = dist_info.join("METADATA");
            let Ok(metadata) = fs_err::read_to_string(&metadata_path) else {
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
            let installer = fs_err::read_to_string(dist_info.join("INSTALLER"))
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|text| !text.is_empty());
            let site_relative = relative(prefix, &site);
            let mut files = Vec::new();
            if let Ok(record) = fs_err::read_to_string(dist_info.join("RECORD")) {
                for line in record.lines() {
                    let Some(path) = record_path(line) else {
                        continue;
                    };
                    if let Some(joined) = join_normalized(&site_relative, &path) {
                        files.push(joined);
                    }
                }
            }
            dists.push(PythonDist {
                name,
                version,
                installer,
                dist_info: relative(prefix, &dist_info),
                files,
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

/// `base/path` with `.` and `..` resolved; `None` when it leaves the prefix.
fn join_normalized(base: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        return None;
    } else {
        base.split('/').filter(|part| !part.is_empty()).collect()
    };
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
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
    }
}
