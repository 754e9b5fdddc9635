//! The walk: every file and symlink of a prefix, directories read in parallel, each entry
//! `lstat`ed relative to its open directory.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::FileKind;
use super::cache::Stat;
use crate::PrefixError;

pub(super) fn exclude_set(patterns: &[String]) -> Result<GlobSet, PrefixError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|source| PrefixError::Exclude {
            pattern: pattern.clone(),
            source,
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|source| PrefixError::Exclude {
        pattern: patterns.join(", "),
        source,
    })
}

/// What installers keep at the top of a prefix about the prefix (package records, history,
/// rattler's backup-exclusion tag, the empty `.lock` uv takes while it installs the pip
/// section): not environment contents, never fingerprinted.
const INSTALLER_FILES: [&str; 3] = ["conda-meta", "CACHEDIR.TAG", ".lock"];

/// One path found by the walk.
pub(crate) struct Found {
    /// Relative to the prefix, `/`-separated.
    pub(crate) relative: String,
    pub(crate) path: PathBuf,
    pub(crate) kind: FileKind,
    /// The file's `lstat`, taken during the walk (files only).
    pub(super) stat: Option<Stat>,
}

/// Every file and symlink under `prefix` except [`INSTALLER_FILES`] and the excluded, by path.
/// Directories are read in parallel (on the current rayon pool), and each file is `lstat`ed
/// relative to its open directory (`DirEntry::metadata`), which spares the kernel a lookup of
/// the whole path per file.
pub(crate) fn walk_prefix(prefix: &Path, excluded: &GlobSet) -> Result<Vec<Found>, PrefixError> {
    let mut found = walk_dir(prefix.to_path_buf(), String::new(), excluded)?;
    found.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(found)
}

fn walk_dir(dir: PathBuf, relative: String, excluded: &GlobSet) -> Result<Vec<Found>, PrefixError> {
    let mut found = Vec::new();
    let mut subdirs = Vec::new();
    // fs-err's errors name the directory or file.
    for entry in fs_err::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if relative.is_empty() && INSTALLER_FILES.iter().any(|installer| name == *installer) {
            continue;
        }
        let name = name.to_string_lossy();
        let path_in_prefix = if relative.is_empty() {
            name.into_owned()
        } else {
            format!("{relative}/{name}")
        };
        let file_type = entry.file_type()?;
        // FIFOs, sockets and devices are listed as what they are, never opened.
        let Some(kind) = FileKind::of(file_type) else {
            subdirs.push((entry.path(), path_in_prefix));
            continue;
        };
        if excluded.is_match(&path_in_prefix) {
            continue;
        }
        let stat = if file_type.is_file() {
            Some(Stat::of(&entry.metadata()?))
        } else {
            None
        };
        found.push(Found {
            relative: path_in_prefix,
            path: entry.path(),
            kind,
            stat,
        });
    }
    let nested: Vec<Result<Vec<Found>, PrefixError>> = subdirs
        .into_par_iter()
        .map(|(path, relative)| walk_dir(path, relative, excluded))
        .collect();
    for files in nested {
        found.extend(files?);
    }
    Ok(found)
}
