//! `keel install`: the lock's conda packages into a prefix, with rattler's installer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use rattler::install::{Installer, Reporter};
use rattler::package_cache::PackageCache;
use rattler::validation::ValidationMode;
use rattler_conda_types::{PackageName, PrefixRecord, RepoDataRecord, Subdir};

use crate::PrefixError;
use crate::lock::{LockedPlatform, LockedPypi};
use crate::meta::{RecordProblem, parse_records};
use crate::paths::{Enclosure, UnsafePath};
use crate::verify::check_package;

/// The file that marks an install in progress. It lives in `conda-meta/` without a `.json`
/// extension, so conda, pixi and rattler do not read it as a package record.
pub const INSTALL_MARKER: &str = "conda-meta/.keel-install-in-progress";

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The package cache (extracted packages, shared between prefixes; hard links point
    /// into it). rattler's and pixi's default is `~/.cache/rattler/cache/pkgs`.
    pub package_cache: PathBuf,
    /// The platform whose packages are installed (default: this machine's).
    pub platform: Option<Subdir>,
    /// Check every installed package's files (and the package cache) and re-link the packages
    /// whose files were changed or removed, as after an interrupted install.
    pub repair: bool,
    /// The `uv` that installs the lock's PyPI packages into the prefix's Python (`uv pip
    /// install --no-deps`, hashes required when the lock has them). `None`: they are listed in
    /// the report as not installed.
    pub uv: Option<PathBuf>,
}

/// What an install did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstallReport {
    /// The prefix.
    pub prefix: PathBuf,
    /// Packages linked into the prefix (new or replacing another version), `name-version-build`.
    pub installed: Vec<String>,
    /// Packages removed from the prefix.
    pub removed: Vec<String>,
    /// Packages already installed as locked, left alone.
    pub unchanged: usize,
    /// A previous install into this prefix was interrupted; this run repaired it.
    pub repaired_interrupted: bool,
    /// Packages re-linked because their files were incomplete or changed (after an interrupted
    /// install, or when asked to repair).
    pub repaired_packages: Vec<String>,
    /// The lock's PyPI packages installed (or found installed) by uv, `name==version`.
    pub pypi_installed: Vec<String>,
    /// The lock's PyPI packages left out because no uv was given.
    pub pypi_not_installed: Vec<String>,
}

fn identifier(record: &RepoDataRecord) -> String {
    let package = &record.package_record;
    format!(
        "{}-{}-{}",
        package.name.as_normalized(),
        package.version,
        package.build
    )
}

/// Installs what `locked` pins into `prefix`.
///
/// Only the difference is applied: packages already installed as locked stay, others are
/// linked, packages the lock does not pin are removed. Every archive is checked against the
/// lock's sha256 before it is extracted (rattler's package cache refuses a mismatch).
///
/// An install marks the prefix while it runs; a run that finds the mark of an interrupted one
/// (or is asked to repair) re-checks every installed package's files and re-links those that
/// are incomplete or changed.
pub async fn install<R: Reporter + 'static>(
    prefix: &Path,
    locked: &LockedPlatform,
    options: &InstallOptions,
    reporter: Option<R>,
) -> Result<InstallReport, PrefixError> {
    let prefix = std::path::absolute(prefix)?;
    for record in &locked.conda {
        if record.package_record.sha256.is_none() {
            return Err(PrefixError::MissingSha256 {
                name: record.identifier.to_string(),
            });
        }
    }
    let pypi_names: Vec<String> = locked
        .pypi
        .iter()
        .map(|p| match &p.version {
            Some(version) => format!("{}=={version}", p.name),
            None => p.name.clone(),
        })
        .collect();
    let mut report = InstallReport {
        prefix: prefix.clone(),
        ..InstallReport::default()
    };

    let meta = prefix.join("conda-meta");
    fs_err::create_dir_all(&meta)?;
    let marker = prefix.join(INSTALL_MARKER);
    report.repaired_interrupted = marker.exists();

    let repairing = report.repaired_interrupted || options.repair;
    let installed = installed_records(&prefix, report.repaired_interrupted)?;
    let mut reinstall: HashSet<PackageName> = HashSet::new();
    if repairing {
        let enclosure = Enclosure::new(&prefix)?;
        for record in &installed {
            let (problems, _, _) = check_package(&enclosure, record);
            if !problems.is_empty() {
                reinstall.insert(record.repodata_record.package_record.name.clone());
                report
                    .repaired_packages
                    .push(identifier(&record.repodata_record));
            }
        }
    }

    fs_err::write(
        &marker,
        format!(
            "keel install started by process {}; if this file remains, the install was interrupted and the next `keel install` repairs it\n",
            std::process::id()
        ),
    )?;

    // A file edited in place in the prefix is edited in the package cache too (they are hard
    // links to one inode), so a repair checks the cache entries' contents as well and
    // extracts again the ones that no longer match their package.
    let validation = if repairing {
        ValidationMode::Full
    } else {
        ValidationMode::default()
    };
    let cache = PackageCache::new_layered([options.package_cache.clone()], false, validation);
    let mut installer = Installer::new()
        .with_package_cache(cache)
        .with_installed_packages(installed)
        .with_reinstall_packages(reinstall)
        .with_execute_link_scripts(false);
    if let Some(platform) = options.platform {
        installer = installer.with_target_platform(platform);
    }
    if let Some(reporter) = reporter {
        installer = installer.with_reporter(reporter);
    }
    // rattler may panic on input keel did not foresee; that is an error here, and the marker
    // stays so that the next run repairs what was done.
    let result = CatchPanic(Box::pin(
        installer.install(&prefix, locked.conda.iter().cloned()),
    ))
    .await
    .map_err(|message| PrefixError::InstallerPanic {
        prefix: prefix.clone(),
        message,
    })?
    .map_err(|source| PrefixError::Install {
        prefix: prefix.clone(),
        source: Box::new(source),
    })?;

    for operation in &result.transaction.operations {
        if let Some(record) = operation.record_to_install() {
            report.installed.push(identifier(record));
        } else if let Some(record) = operation.record_to_remove() {
            report.removed.push(format!(
                "{}-{}-{}",
                record.name().as_normalized(),
                record.version(),
                record.build()
            ));
        }
    }
    report.installed.sort();
    report.removed.sort();
    report.unchanged = result.transaction.unchanged_packages().len();
    match &options.uv {
        Some(uv) if !locked.pypi.is_empty() => {
            install_pypi(&prefix, &locked.pypi, uv, &pypi_names)?;
            report.pypi_installed = pypi_names;
        }
        _ => report.pypi_not_installed = pypi_names,
    }
    fs_err::remove_file(&marker)?;
    Ok(report)
}

/// The prefix's Python interpreter.
fn prefix_python(prefix: &Path) -> PathBuf {
    if cfg!(windows) {
        prefix.join("python.exe")
    } else {
        prefix.join("bin").join("python")
    }
}

/// `uv pip install --no-deps` of exactly the lock's PyPI packages into the prefix's Python.
/// The lock is already a full resolution, so no dependency is resolved again; hashes are
/// required when every package has one.
fn install_pypi(
    prefix: &Path,
    pypi: &[LockedPypi],
    uv: &Path,
    names: &[String],
) -> Result<(), PrefixError> {
    let python = prefix_python(prefix);
    if !python.exists() {
        return Err(PrefixError::NoPython {
            prefix: prefix.to_path_buf(),
            packages: names.join(", "),
        });
    }
    let mut requirements = String::new();
    let mut indexes: Vec<&str> = Vec::new();
    for package in pypi {
        if let Some(index) = package.index.as_deref()
            && !indexes.contains(&index)
        {
            indexes.push(index);
        }
    }
    for (position, index) in indexes.iter().enumerate() {
        let option = if position == 0 {
            "--index-url"
        } else {
            "--extra-index-url"
        };
        requirements.push_str(&format!("{option} {index}\n"));
    }
    for package in pypi {
        requirements.push_str(&package.requirement);
        requirements.push('\n');
    }
    let mut file = tempfile::Builder::new()
        .prefix("keel-pypi-")
        .suffix(".txt")
        .tempfile()?;
    std::io::Write::write_all(file.as_file_mut(), requirements.as_bytes())?;
    let mut command = Command::new(uv);
    command
        .args(["pip", "install", "--no-deps", "--python"])
        .arg(&python)
        .arg("-r")
        .arg(file.path());
    if pypi.iter().all(|package| package.hashed) {
        command.arg("--require-hashes");
    }
    let output = command.output().map_err(|source| {
        PrefixError::Io(std::io::Error::new(
            source.kind(),
            format!("cannot run {}: {source}", uv.display()),
        ))
    })?;
    if !output.status.success() {
        return Err(PrefixError::Uv {
            prefix: prefix.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The prefix's records, each checked: every path in it relative and inside the prefix, and no
/// symlinked directory on the way leading out (rattler deletes `prefix.join(path)` when it
/// removes or replaces a package). After an interruption a record may be half written: it is
/// removed, so that its package is linked again. Any other bad record is an error naming it,
/// before anything is handed to rattler or the marker is written.
fn installed_records(prefix: &Path, repairing: bool) -> Result<Vec<PrefixRecord>, PrefixError> {
    let mut records = Vec::new();
    for (path, record) in parse_records(prefix)? {
        match record {
            Ok(record) => records.push((path, record)),
            Err(RecordProblem::Malformed(_)) if repairing => {
                fs_err::remove_file(&path).map_err(|source| PrefixError::Repair {
                    path: path.clone(),
                    source,
                })?;
            }
            Err(problem) => return Err(problem.into_error(path)),
        }
    }
    check_symlinked_parents(prefix, &records)?;
    Ok(records.into_iter().map(|(_, record)| record).collect())
}

/// Every existing directory a record's paths go through resolves inside the prefix: a symlink
/// `prefix/lib -> /home/user` would make rattler's unlink of `lib/x` delete `/home/user/x`.
/// Each directory is resolved once.
fn check_symlinked_parents(
    prefix: &Path,
    records: &[(PathBuf, PrefixRecord)],
) -> Result<(), PrefixError> {
    let enclosure = Enclosure::new(prefix)?;
    let mut seen: HashSet<&Path> = HashSet::new();
    for (record_path, record) in records {
        let paths =
            record
                .files
                .iter()
                .chain(record.paths_data.paths.iter().flat_map(|entry| {
                    std::iter::once(&entry.relative_path).chain(&entry.original_path)
                }));
        for path in paths {
            let Some(parent) = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            else {
                continue;
            };
            if !seen.insert(parent) {
                continue;
            }
            // The paths were checked when the record was read; join says so again.
            let joined = enclosure
                .join(path)
                .map_err(|reason| unsafe_path(record_path, path, reason))?;
            if !enclosure.parents_inside(&joined)? {
                return Err(unsafe_path(record_path, path, UnsafePath::ThroughSymlink));
            }
        }
    }
    Ok(())
}

fn unsafe_path(record: &Path, path: &Path, reason: UnsafePath) -> PrefixError {
    PrefixError::UnsafeRecordPath {
        record: record.to_path_buf(),
        path: path.to_string_lossy().into_owned(),
        reason,
    }
}

/// A future whose panics come out as `Err(message)` (the installer's, and those of the tasks
/// it awaits, which tokio passes on).
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_string());
                std::task::Poll::Ready(Err(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    /// Hardening issue #13: a panic inside the installer's future comes out as an error (the
    /// CLI then exits 2 instead of 101, and the marker says the install was interrupted).
    #[test]
    fn installer_panic_is_an_error() {
        let mut future = CatchPanic(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("rattler fell over");
            }
            7
        }));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let poll = std::pin::Pin::new(&mut future).poll(&mut context);
        assert_eq!(
            poll,
            std::task::Poll::Ready(Err("rattler fell over".to_string()))
        );
        let mut fine = CatchPanic(Box::pin(async { 7 }));
        let poll = std::pin::Pin::new(&mut fine).poll(&mut context);
        assert_eq!(poll, std::task::Poll::Ready(Ok(7)));
    }
}
