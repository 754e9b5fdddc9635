//! `keel verify`: does the prefix hold exactly what the lock pins, byte for byte?

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rattler_conda_types::prefix_record::{PathType, PathsEntry};
use rattler_conda_types::{PrefixRecord, RepoDataRecord};
use rattler_digest::Sha256;
use rayon::prelude::*;
use serde::Serialize;

use crate::PrefixError;
use crate::fingerprint::walk_prefix;
use crate::lock::{LockedPlatform, LockedPypi};
use crate::meta::{PythonDist, python_dists, read_records, slash_path};
use crate::paths::{Enclosure, UnsafePath, open_regular};

/// A package as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Build string.
    pub build: String,
}

impl PackageRef {
    fn of(record: &RepoDataRecord) -> Self {
        let package = &record.package_record;
        PackageRef {
            name: package.name.as_normalized().to_string(),
            version: package.version.to_string(),
            build: package.build.to_string(),
        }
    }
}

impl std::fmt::Display for PackageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.name, self.version, self.build)
    }
}

/// A package installed in another version, build or archive than the lock pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// What the lock pins.
    pub locked: PackageRef,
    /// What the prefix has.
    pub installed: PackageRef,
    /// The archives differ although name, version and build agree (a rebuilt package).
    pub sha256_differs: bool,
}

/// What is wrong with one file of an installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum FileProblem {
    /// The file is gone.
    Missing,
    /// Something else (a directory, a symlink where a file belongs) is at its path.
    WrongType {
        /// What the package installed.
        expected: String,
    },
    /// Its size differs from the recorded one.
    Size {
        /// Recorded size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// Its contents differ from the recorded sha256.
    Content {
        /// Recorded sha256.
        expected: String,
        /// sha256 on disk.
        actual: String,
    },
    /// It could not be read.
    Unreadable {
        /// Why.
        error: String,
    },
    /// It leads outside the prefix through a symlink (the file itself or a directory above
    /// it); nothing there was read.
    OutsidePrefix,
    /// Its recorded path could leave the prefix; it was not looked at.
    UnsafePath {
        /// Why the path is refused.
        reason: UnsafePath,
    },
}

/// One file of an installed package that does not match its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedFile {
    /// The package that installed it.
    pub package: String,
    /// Path relative to the prefix.
    pub path: String,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: FileProblem,
}

/// A `RECORD` entry of a Python distribution that leads outside the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutsideRecordPath {
    /// The `*.dist-info` folder, relative to the prefix.
    pub dist_info: String,
    /// The entry as written in its `RECORD`.
    pub path: String,
}

/// The result of `keel verify`. [`VerifyReport::is_clean`] says whether anything drifted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The prefix checked.
    pub prefix: PathBuf,
    /// The lock it was checked against, if any.
    pub lock: Option<PathBuf>,
    /// Conda packages installed.
    pub packages: usize,
    /// Files whose contents were checked against their package's sha256.
    pub files_checked: usize,
    /// Paths whose contents were not checked: symlinks, and files without a sha256 (or with
    /// only one taken before conda wrote the prefix into the file).
    pub files_unchecked: usize,
    /// Packages the lock pins that are not installed.
    pub missing_packages: Vec<PackageRef>,
    /// Conda packages installed that the lock does not pin.
    pub extra_packages: Vec<PackageRef>,
    /// Packages installed in another version, build or archive.
    pub changed_packages: Vec<PackageChange>,
    /// Files of installed packages that are missing or changed.
    pub changed_files: Vec<ChangedFile>,
    /// Python distributions installed by pip (or another tool) that the lock does not pin.
    pub pip_outside_lock: Vec<PythonDist>,
    /// PyPI packages the lock pins that are not installed.
    pub missing_pypi: Vec<LockedPypi>,
    /// `*.dist-info/RECORD` entries that lead outside the prefix (absolute, or more `..` than
    /// there are folders): never read, listed as drift.
    pub record_paths_outside_prefix: Vec<OutsideRecordPath>,
    /// Files no package installed (Python's `__pycache__` bytecode is counted apart).
    pub unowned_files: Vec<String>,
    /// `__pycache__/*.pyc` files Python wrote at run time: not drift.
    pub bytecode_caches: usize,
}

impl VerifyReport {
    /// Nothing differs from the lock and every file matches its package.
    pub fn is_clean(&self) -> bool {
        self.missing_packages.is_empty()
            && self.extra_packages.is_empty()
            && self.changed_packages.is_empty()
            && self.changed_files.is_empty()
            && self.pip_outside_lock.is_empty()
            && self.missing_pypi.is_empty()
            && self.unowned_files.is_empty()
            && self.record_paths_outside_prefix.is_empty()
    }
}

/// PEP 503 name normalization: lowercase, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalize_pypi_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator && !out.is_empty() {
                out.push('-');
            }
            separator = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Outcome of checking one recorded file.
enum Checked {
    Ok,
    Unchecked,
    Problem(ChangedFile),
}

/// The sha256 of an open regular file.
fn sha256_of(path: &Path) -> std::io::Result<rattler_digest::Sha256Hash> {
    let file = open_regular(path)?;
    let mut writer = rattler_digest::HashingWriter::<_, Sha256>::new(std::io::sink());
    std::io::copy(&mut std::io::BufReader::new(file), &mut writer)?;
    Ok(writer.finalize().1)
}

/// Checks one recorded path of a package.
fn check_entry(enclosure: &Enclosure, entry: &PathsEntry) -> Result<Checked, FileProblem> {
    let path = enclosure
        .join(&entry.relative_path)
        .map_err(|reason| FileProblem::UnsafePath { reason })?;
    let missing = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            FileProblem::Missing
        } else {
            FileProblem::Unreadable {
                error: error.to_string(),
            }
        }
    };
    if entry.path_type == PathType::SoftLink {
        // Packages' symlinks are recreated as symlinks; on file systems without them the
        // installer copies. Either way the path must exist (the link itself: it is not
        // followed, and neither is a symlinked directory above it that leads out).
        if !enclosure.parents_inside(&path).map_err(missing)? {
            return Err(FileProblem::OutsidePrefix);
        }
        fs_err::symlink_metadata(&path).map_err(missing)?;
        return Ok(Checked::Unchecked);
    }
    // Where the path really is, every symlink on the way followed: outside the prefix it is
    // a finding and nothing there is read.
    let Some(real) = enclosure.resolve(&path).map_err(missing)? else {
        return Err(FileProblem::OutsidePrefix);
    };
    let metadata = fs_err::metadata(&real).map_err(missing)?;
    if entry.path_type == PathType::Directory {
        return if metadata.is_dir() {
            Ok(Checked::Ok)
        } else {
            Err(FileProblem::WrongType {
                expected: "directory".into(),
            })
        };
    }
    // Hard links, copies, and the files conda writes for noarch Python.
    if !metadata.is_file() {
        return Err(FileProblem::WrongType {
            expected: "file".into(),
        });
    }
    let expected = match (entry.sha256_in_prefix, entry.sha256) {
        (Some(hash), _) => hash,
        // The prefix was written into the file after `sha256` was taken.
        (None, Some(_)) if entry.prefix_placeholder.is_some() => return Ok(Checked::Unchecked),
        (None, Some(hash)) => hash,
        (None, None) => return Ok(Checked::Unchecked),
    };
    if entry.prefix_placeholder.is_none()
        && let Some(size) = entry.size_in_bytes
        && size != metadata.len()
    {
        return Err(FileProblem::Size {
            expected: size,
            actual: metadata.len(),
        });
    }
    match sha256_of(&real) {
        Ok(actual) if actual == expected => Ok(Checked::Ok),
        Ok(actual) => Err(FileProblem::Content {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        }),
        Err(error) => Err(FileProblem::Unreadable {
            error: error.to_string(),
        }),
    }
}

/// Checks the files of one installed package against its `paths_data`. Every path goes
/// through the prefix's [`Enclosure`]: a path or symlink that leads outside the prefix is a
/// finding, never read.
pub(crate) fn check_package(
    enclosure: &Enclosure,
    record: &PrefixRecord,
) -> (Vec<ChangedFile>, usize, usize) {
    let name = record
        .repodata_record
        .package_record
        .name
        .as_normalized()
        .to_string();
    let results: Vec<Checked> = record
        .paths_data
        .paths
        .par_iter()
        .map(|entry| match check_entry(enclosure, entry) {
            Ok(checked) => checked,
            Err(problem) => Checked::Problem(ChangedFile {
                package: name.clone(),
                path: slash_path(&entry.relative_path),
                problem,
            }),
        })
        .collect();
    let mut problems = Vec::new();
    let (mut checked, mut unchecked) = (0, 0);
    for result in results {
        match result {
            Checked::Ok => checked += 1,
            Checked::Unchecked => unchecked += 1,
            Checked::Problem(problem) => problems.push(problem),
        }
    }
    (problems, checked, unchecked)
}

/// Verifies a prefix: every installed package's files against their recorded sha256, the
/// installed packages against `locked` when given, and the files no package owns.
pub fn verify(
    prefix: &Path,
    locked: Option<(&Path, &LockedPlatform)>,
) -> Result<VerifyReport, PrefixError> {
    let prefix = std::path::absolute(prefix)?;
    let records = read_records(&prefix)?;
    let enclosure = Enclosure::new(&prefix)?;
    let mut report = VerifyReport {
        prefix: prefix.clone(),
        lock: locked.map(|(path, _)| path.to_path_buf()),
        packages: records.len(),
        ..VerifyReport::default()
    };

    let mut owned: HashSet<String> = HashSet::new();
    for (_, record) in &records {
        for file in &record.files {
            owned.insert(slash_path(file));
        }
        let (problems, checked, unchecked) = check_package(&enclosure, record);
        report.changed_files.extend(problems);
        report.files_checked += checked;
        report.files_unchecked += unchecked;
    }

    if let Some((_, locked)) = locked {
        let installed: BTreeMap<&str, &PrefixRecord> = records
            .iter()
            .map(|(_, record)| {
                (
                    record.repodata_record.package_record.name.as_normalized(),
                    record,
                )
            })
            .collect();
        let pinned: BTreeMap<&str, &RepoDataRecord> = locked
            .conda
            .iter()
            .map(|record| (record.package_record.name.as_normalized(), record))
            .collect();
        for (name, lock_record) in &pinned {
            match installed.get(name) {
                None => report.missing_packages.push(PackageRef::of(lock_record)),
                Some(record) => {
                    let have = &record.repodata_record.package_record;
                    let want = &lock_record.package_record;
                    let sha256_differs =
                        matches!((have.sha256, want.sha256), (Some(a), Some(b)) if a != b);
                    if have.version != want.version || have.build != want.build || sha256_differs {
                        report.changed_packages.push(PackageChange {
                            locked: PackageRef::of(lock_record),
                            installed: PackageRef::of(&record.repodata_record),
                            sha256_differs,
                        });
                    }
                }
            }
        }
        for (name, record) in &installed {
            if !pinned.contains_key(name) {
                report
                    .extra_packages
                    .push(PackageRef::of(&record.repodata_record));
            }
        }
    }

    // Python distributions: conda's own (their dist-info is owned), the lock's PyPI packages,
    // and the rest, installed by pip behind the lock's back.
    let lock_pypi: Vec<&LockedPypi> = locked
        .map(|(_, l)| l.pypi.iter().collect())
        .unwrap_or_default();
    let mut found_pypi: HashSet<String> = HashSet::new();
    let mut pip_owned: HashSet<String> = HashSet::new();
    for dist in python_dists(&prefix)? {
        for path in &dist.outside_prefix {
            report.record_paths_outside_prefix.push(OutsideRecordPath {
                dist_info: dist.dist_info.clone(),
                path: path.clone(),
            });
        }
        let metadata_path = format!("{}/METADATA", dist.dist_info);
        if owned.contains(&metadata_path) {
            continue;
        }
        pip_owned.extend(dist.files.iter().cloned());
        let name = normalize_pypi_name(&dist.name);
        let in_lock = lock_pypi.iter().any(|locked| {
            normalize_pypi_name(&locked.name) == name
                && locked
                    .version
                    .as_deref()
                    .is_none_or(|version| version == dist.version)
        });
        if in_lock {
            found_pypi.insert(name);
        } else {
            report.pip_outside_lock.push(dist);
        }
    }
    for locked in lock_pypi {
        if !found_pypi.contains(&normalize_pypi_name(&locked.name)) {
            report.missing_pypi.push(locked.clone());
        }
    }

    for found in walk_prefix(&prefix, &globset::GlobSet::empty())? {
        let relative = found.relative;
        if owned.contains(&relative) || pip_owned.contains(&relative) {
            continue;
        }
        if relative.ends_with(".pyc")
            && (relative.contains("/__pycache__/") || relative.starts_with("__pycache__/"))
        {
            report.bytecode_caches += 1;
            continue;
        }
        report.unowned_files.push(relative);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep503_names() {
        assert_eq!(normalize_pypi_name("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_pypi_name("requests"), "requests");
        assert_eq!(normalize_pypi_name("a--b"), "a-b");
    }
}
