//! `keel install`: the lock's conda packages into a prefix, with rattler's installer.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rattler::install::{
    ExternalSymlinkPolicy, Installer, InstallerError, PythonInfo, Reporter, Transaction,
};
use rattler::package_cache::{CacheMetadata, PackageCache};
use rattler::validation::ValidationMode;
use rattler_conda_types::package::{
    DistArchiveType, IndexJson, LinkJson, NoArchLinks, PackageFile as _, PathType, PathsJson,
};
use rattler_conda_types::{PackageName, PrefixRecord, RepoDataRecord, Subdir};

use crate::PrefixError;
use crate::fetch;
use crate::lock::{LockedPlatform, LockedPypi};
use crate::meta::{RecordProblem, parse_records};
use crate::paths::{Enclosure, UnsafePath, enclosed_path, enclosed_symlink_target};
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
    /// How archives are downloaded: the timeout, tries and backoff of keel-solve's HTTP
    /// client, the one channels are read with.
    pub download: keel_solve::HttpOptions,
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
/// Every package to be linked is fetched into the package cache and its paths checked first
/// (`info/paths.json` entries, entry points, symlink targets): one that cannot be fetched
/// (missing, a download that fails after its tries, a sha256 that is not the lock's, a damaged
/// archive) or that could write outside the prefix is an error naming it, with nothing changed
/// in the prefix and no marker left. A prefix that did not exist is not created until every
/// archive is in the cache.
///
/// An install marks the prefix while it runs; a run that finds the mark of an interrupted one
/// (or is asked to repair) re-checks every installed package's files and re-links those that
/// are incomplete or changed. An install that fails once it has begun linking leaves the mark
/// in a prefix that existed before (the next run repairs it) and removes a prefix it created.
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
    let marker = prefix.join(INSTALL_MARKER);
    // What this run creates, so that a failure can take it away again.
    let created = Created::before(&meta);
    report.repaired_interrupted = marker.exists();

    let repairing = report.repaired_interrupted || options.repair;
    let installed = if meta.is_dir() {
        installed_records(&prefix, report.repaired_interrupted)?
    } else {
        Vec::new()
    };
    let mut reinstall: HashSet<PackageName> = HashSet::new();
    if repairing && !installed.is_empty() {
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

    // A file edited in place in the prefix is edited in the package cache too (they are hard
    // links to one inode), so a repair checks the cache entries' contents as well and
    // extracts again the ones that no longer match their package.
    let validation = if repairing {
        ValidationMode::Full
    } else {
        ValidationMode::default()
    };
    let cache = PackageCache::new_layered([options.package_cache.clone()], false, validation);
    let client = fetch::client(&options.download)?;

    // Every package the transaction links is fetched into the cache the installer reads and
    // its paths checked first: rattler joins them onto the prefix unchecked, and it removes
    // the packages being replaced before it links the new ones.
    let target_platform =
        options
            .platform
            .or_else(Subdir::current)
            .ok_or_else(|| PrefixError::Install {
                prefix: prefix.clone(),
                source: Box::new(InstallerError::UnknownHostPlatform),
            })?;
    // Fetching changes nothing in the prefix (and does not create it).
    let fetched = fetch_packages(
        &prefix,
        &cache,
        &client,
        options,
        locked,
        &installed,
        &reinstall,
        target_platform,
    )
    .await?;

    let checked = created
        .make(&meta)
        .and_then(|()| check_fetched(&prefix, &fetched));
    drop(fetched);
    if let Err(error) = checked {
        // Nothing was linked: what this run created goes, and no marker was written.
        created.undo_empty();
        return Err(error);
    }

    let linked = async {
        fs_err::write(
            &marker,
            format!(
                "keel install started by process {}; if this file remains, the install was interrupted and the next `keel install` repairs it\n",
                std::process::id()
            ),
        )?;
        let mut installer = Installer::new()
            .with_package_cache(cache)
            .with_download_client(client)
            .with_installed_packages(installed)
            .with_reinstall_packages(reinstall)
            .with_execute_link_scripts(false)
            // Checked before already; rattler's own check stays as a second line.
            .with_external_symlink_policy(ExternalSymlinkPolicy::Deny);
        if let Some(platform) = options.platform {
            installer = installer.with_target_platform(platform);
        }
        if let Some(reporter) = reporter {
            installer = installer.with_reporter(reporter);
        }
        let linked = link_to_the_end(installer, &prefix, locked.conda.clone()).await?;
        report.installed = linked.installed;
        report.removed = linked.removed;
        report.unchanged = linked.unchanged;
        report.installed.sort();
        report.removed.sort();
        match &options.uv {
            Some(uv) if !locked.pypi.is_empty() => {
                install_pypi(&prefix, &locked.pypi, uv, &pypi_names)?;
                report.pypi_installed = pypi_names;
            }
            _ => report.pypi_not_installed = pypi_names,
        }
        fs_err::remove_file(&marker)?;
        Ok(())
    }
    .await;
    match linked {
        Ok(()) => Ok(report),
        Err(error) => {
            // A prefix this run created holds only what this run linked: it goes. One that
            // existed keeps the marker, and the next run repairs it.
            created.undo_all(&prefix);
            Err(error)
        }
    }
}

/// The directories an install creates on the way to `conda-meta` (the prefix, the folders
/// above it that were missing), so that an install that fails can remove them again.
#[derive(Debug)]
struct Created {
    /// The missing directories, outermost first.
    dirs: Vec<PathBuf>,
}

impl Created {
    /// What creating `meta` would create now.
    fn before(meta: &Path) -> Created {
        let mut dirs: Vec<PathBuf> = meta
            .ancestors()
            .take_while(|dir| fs_err::symlink_metadata(dir).is_err())
            .map(Path::to_path_buf)
            .collect();
        dirs.reverse();
        Created { dirs }
    }

    fn make(&self, meta: &Path) -> Result<(), PrefixError> {
        fs_err::create_dir_all(meta)?;
        Ok(())
    }

    /// Removes the created directories, innermost first, each only if it is empty (nothing
    /// was linked, so they are, unless someone else wrote there meanwhile).
    fn undo_empty(&self) {
        for dir in self.dirs.iter().rev() {
            match fs_err::remove_dir(dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => break,
            }
        }
    }

    /// Removes the prefix with everything in it if this run created it, then the created
    /// folders above it that are empty. A prefix that existed is left alone.
    fn undo_all(&self, prefix: &Path) {
        if !self.dirs.iter().any(|dir| dir == prefix) {
            // Only conda-meta was missing (an existing folder made a prefix): its marker
            // stays, as in any prefix that existed.
            return;
        }
        // A failed removal leaves the rest for the user; the install's error says what failed.
        let _ = fs_err::remove_dir_all(prefix);
        self.undo_empty();
    }
}

/// What rattler's transaction did.
struct Linked {
    installed: Vec<String>,
    removed: Vec<String>,
    unchanged: usize,
}

/// How long a failed install waits for the link tasks still running when rattler returned.
const LINK_TASKS_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs rattler's installer on a runtime of its own, on a thread of its own, and returns only
/// once every task it started has ended. When one file of a package fails to link, rattler
/// returns at once while the package's other files are still being linked by blocking tasks;
/// those would write into a prefix that is being removed, or after the marker says where the
/// install stopped. The runtime's shutdown waits for them (at most [`LINK_TASKS_WAIT`]).
///
/// rattler may panic on input keel did not foresee; that is an error here
/// ([`PrefixError::InstallerPanic`]), and the marker stays so that the next run repairs what
/// was done.
async fn link_to_the_end(
    installer: Installer,
    prefix: &Path,
    records: Vec<RepoDataRecord>,
) -> Result<Linked, PrefixError> {
    let (send, receive) = tokio::sync::oneshot::channel();
    let target = prefix.to_path_buf();
    std::thread::Builder::new()
        .name("keel-install".into())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let result =
                        runtime.block_on(CatchPanic(Box::pin(installer.install(&target, records))));
                    runtime.shutdown_timeout(LINK_TASKS_WAIT);
                    Ok(result.map(|result| {
                        result.map(|result| {
                            let mut linked = Linked {
                                installed: Vec::new(),
                                removed: Vec::new(),
                                unchanged: result.transaction.unchanged_packages().len(),
                            };
                            for operation in &result.transaction.operations {
                                if let Some(record) = operation.record_to_install() {
                                    linked.installed.push(identifier(record));
                                } else if let Some(record) = operation.record_to_remove() {
                                    linked.removed.push(format!(
                                        "{}-{}-{}",
                                        record.name().as_normalized(),
                                        record.version(),
                                        record.build()
                                    ));
                                }
                            }
                            linked
                        })
                    }))
                }
                Err(error) => Err(error),
            };
            let _ = send.send(outcome);
        })?;
    let outcome = receive.await.unwrap_or_else(|_| {
        Ok(Err(
            "the installer's thread ended without an answer".to_string()
        ))
    })?;
    outcome
        .map_err(|message| PrefixError::InstallerPanic {
            prefix: prefix.to_path_buf(),
            message,
        })?
        .map_err(|source| PrefixError::Install {
            prefix: prefix.to_path_buf(),
            source: Box::new(source),
        })
}

/// How many packages are fetched into the cache at once before the install.
const CONCURRENT_FETCHES: usize = 16;

/// The packages the transaction will link (new, replacing another version, or re-linked),
/// each fetched into `cache` (the one the installer then finds them in).
struct Fetched {
    python_info: Option<PythonInfo>,
    /// Each package, `name-version-build` with its archive extension, and its cache entry.
    packages: Vec<(String, CacheMetadata)>,
}

/// [`Fetched`]: every package the transaction links into `cache`. Nothing in the prefix is
/// read beyond `installed`, or written.
#[allow(clippy::too_many_arguments)]
async fn fetch_packages(
    prefix: &Path,
    cache: &PackageCache,
    client: &reqwest_middleware::ClientWithMiddleware,
    options: &InstallOptions,
    locked: &LockedPlatform,
    installed: &[PrefixRecord],
    reinstall: &HashSet<PackageName>,
    platform: Subdir,
) -> Result<Fetched, PrefixError> {
    let install_error = |source: InstallerError| PrefixError::Install {
        prefix: prefix.to_path_buf(),
        source: Box::new(source),
    };
    let transaction = Transaction::from_current_and_desired(
        installed.iter(),
        locked.conda.iter(),
        Some(reinstall),
        None,
        platform,
    )
    .map_err(|source| install_error(source.into()))?;
    let python_info = transaction.python_info.clone();
    let records: Vec<&RepoDataRecord> = transaction.installed_packages().copied().collect();
    for record in &records {
        if matches!(record.identifier.archive_type, DistArchiveType::Wheel(_))
            && record.url.scheme() != "file"
        {
            return Err(PrefixError::UncheckedPackage {
                package: record.identifier.to_string(),
            });
        }
    }
    let fetches = records
        .iter()
        .map(|record| fetch::fetch(cache, record, client, &options.download));
    let fetched = run_bounded(fetches.collect(), CONCURRENT_FETCHES).await;
    let mut packages = Vec::with_capacity(records.len());
    for (record, metadata) in records.iter().zip(fetched) {
        packages.push((record.identifier.to_string(), metadata?));
    }
    Ok(Fetched {
        python_info,
        packages,
    })
}

/// Every fetched package's paths, as [`check_package_paths`] says: every path its
/// `info/paths.json` (or, in old packages, `info/files`) and `info/link.json` entry points
/// name, where the installer will put it (noarch Python files under the locked Python's
/// site-packages), passes [`enclosed_path`]; every existing directory on the way resolves
/// inside the prefix; every symlink's target stays inside (absolute targets are refused).
/// A package that fails is [`PrefixError::UnsafePackagePath`], before anything is changed.
fn check_fetched(prefix: &Path, fetched: &Fetched) -> Result<(), PrefixError> {
    if fetched.packages.is_empty() {
        return Ok(());
    }
    let enclosure = Enclosure::new(prefix)?;
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for (package, metadata) in &fetched.packages {
        check_package_paths(
            &enclosure,
            &mut seen,
            package,
            metadata.path(),
            metadata.paths_json(),
            metadata.index_json(),
            fetched.python_info.as_ref(),
        )?;
    }
    Ok(())
}

/// Runs `futures` with at most `limit` in flight; the results in the order given.
async fn run_bounded<F: std::future::Future>(futures: Vec<F>, limit: usize) -> Vec<F::Output> {
    let mut waiting = futures.into_iter().enumerate();
    let mut running: Vec<(usize, std::pin::Pin<Box<F>>)> = Vec::new();
    let mut results: Vec<(usize, F::Output)> = Vec::new();
    std::future::poll_fn(|context| {
        loop {
            while running.len() < limit.max(1) {
                let Some((index, future)) = waiting.next() else {
                    break;
                };
                running.push((index, Box::pin(future)));
            }
            if running.is_empty() {
                return std::task::Poll::Ready(());
            }
            let before = running.len();
            let mut position = 0;
            while position < running.len() {
                if let std::task::Poll::Ready(output) = running[position].1.as_mut().poll(context) {
                    let (index, _) = running.swap_remove(position);
                    results.push((index, output));
                } else {
                    position += 1;
                }
            }
            if running.len() == before {
                return std::task::Poll::Pending;
            }
        }
    })
    .await;
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, output)| output).collect()
}

/// One fetched package's paths, as [`check_packages`] says: the package extracted at `dir`,
/// with the `paths.json` and `index.json` the cache read while validating it, if it kept them
/// (the installer uses those too). `seen` holds the prefix's directories already resolved.
fn check_package_paths(
    enclosure: &Enclosure,
    seen: &mut HashSet<PathBuf>,
    package: &str,
    dir: &Path,
    paths_json: Option<&PathsJson>,
    index_json: Option<&IndexJson>,
    python_info: Option<&PythonInfo>,
) -> Result<(), PrefixError> {
    let unreadable = |source: std::io::Error| PrefixError::PackageContents {
        package: package.to_string(),
        path: dir.to_path_buf(),
        source,
    };
    let refuse = |path: String, reason: UnsafePath| PrefixError::UnsafePackagePath {
        package: package.to_string(),
        path,
        reason,
    };
    // What the installer reads: the cache's validation copies when it kept them.
    let paths_json = match paths_json {
        Some(paths_json) => Cow::Borrowed(paths_json),
        None => Cow::Owned(
            PathsJson::from_package_directory_with_deprecated_fallback(dir).map_err(unreadable)?,
        ),
    };
    let index_json = match index_json {
        Some(index_json) => Cow::Borrowed(index_json),
        None => Cow::Owned(IndexJson::from_package_directory(dir).map_err(unreadable)?),
    };
    let python = index_json
        .noarch
        .is_python()
        .then_some(python_info)
        .flatten();

    // Where each entry goes, checked as written and as placed.
    let mut placed: Vec<(PathBuf, PathBuf, PathType)> = Vec::new();
    for entry in &paths_json.paths {
        let written = &entry.relative_path;
        let relative = enclosed_path(written)
            .map_err(|reason| refuse(written.display().to_string(), reason))?;
        let target = match python {
            Some(python) => python.get_python_noarch_target_path(&relative).into_owned(),
            None => relative.clone(),
        };
        let target = enclosed_path(&target)
            .map_err(|reason| refuse(target.display().to_string(), reason))?;
        placed.push((relative, target, entry.path_type));
    }
    let mut scripts: Vec<PathBuf> = Vec::new();
    if let Some(python) = python {
        let link_json = match LinkJson::from_package_directory(dir) {
            Ok(link_json) => Some(link_json),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(unreadable(error)),
        };
        if let Some(LinkJson {
            noarch: NoArchLinks::Python(entry_points),
            ..
        }) = link_json
        {
            for entry_point in &entry_points.entry_points {
                let script = python.bin_dir.join(&entry_point.command);
                let script = enclosed_path(&script)
                    .map_err(|reason| refuse(script.display().to_string(), reason))?;
                scripts.push(script);
            }
        }
    }

    let mut symlinks: HashMap<PathBuf, PathBuf> = HashMap::new();
    for (relative, target, path_type) in &placed {
        if *path_type == PathType::SoftLink {
            let link = fs_err::read_link(dir.join(relative)).map_err(unreadable)?;
            symlinks.insert(target.clone(), link);
        }
    }
    for (target, link) in &symlinks {
        if enclosed_symlink_target(target, link, &symlinks).is_none() {
            return Err(refuse(
                format!("{} -> {}", target.display(), link.display()),
                UnsafePath::SymlinkTarget,
            ));
        }
    }
    let targets = placed.iter().map(|(_, target, _)| target).chain(&scripts);
    for target in targets {
        let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        if !seen.insert(parent.to_path_buf()) {
            continue;
        }
        let joined = enclosure
            .join(target)
            .map_err(|reason| refuse(target.display().to_string(), reason))?;
        if !enclosure.parents_inside(&joined)? {
            return Err(refuse(
                target.display().to_string(),
                UnsafePath::ThroughSymlink,
            ));
        }
    }
    Ok(())
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
        requirements.push_str(&editable(package).unwrap_or_else(|| package.requirement.clone()));
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

/// A local source tree (`name @ file:///folder`, no version) as an editable requirement,
/// `-e file:///folder`. The lock cannot say which folders the pip section marked `-e`
/// (rattler_lock's source packages have no editable flag; pixi keeps it in its manifest), and
/// a local folder in an environment file is `-e .` as a rule: it is installed as pip installs
/// that line, so that edits to the folder are what the environment imports.
fn editable(package: &LockedPypi) -> Option<String> {
    if package.version.is_some() || package.hashed {
        return None;
    }
    let url = package
        .requirement
        .strip_prefix(&format!("{} @ ", package.name))?;
    (url.starts_with("file:") && !url.contains(char::is_whitespace)).then(|| format!("-e {url}"))
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

    /// An extracted package at `root/pkg` (`info/index.json`, `info/paths.json` listing
    /// `paths`, and `symlinks` made on disk) and an empty prefix at `root/prefix`.
    fn package(
        root: &Path,
        noarch_python: bool,
        paths: &[&str],
        symlinks: &[(&str, &str)],
    ) -> PathBuf {
        let dir = root.join("pkg");
        fs_err::create_dir_all(dir.join("info")).unwrap();
        fs_err::create_dir_all(root.join("prefix/conda-meta")).unwrap();
        let mut index = serde_json::json!({
            "name": "evil", "version": "1.0", "build": "h0_0", "build_number": 0,
            "depends": [], "subdir": "noarch",
        });
        if noarch_python {
            index["noarch"] = "python".into();
        }
        fs_err::write(dir.join("info/index.json"), index.to_string()).unwrap();
        let mut entries: Vec<serde_json::Value> = paths
            .iter()
            .map(|path| serde_json::json!({ "_path": path, "path_type": "hardlink" }))
            .collect();
        for (link, target) in symlinks {
            let at = dir.join(link);
            fs_err::create_dir_all(at.parent().unwrap()).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(target, &at).unwrap();
            entries.push(serde_json::json!({ "_path": link, "path_type": "softlink" }));
        }
        let paths_json = serde_json::json!({ "paths": entries, "paths_version": 1 });
        fs_err::write(dir.join("info/paths.json"), paths_json.to_string()).unwrap();
        dir
    }

    fn check(root: &Path, dir: &Path, python: Option<&PythonInfo>) -> Result<(), PrefixError> {
        let enclosure = Enclosure::new(&root.join("prefix")).unwrap();
        check_package_paths(
            &enclosure,
            &mut HashSet::new(),
            "evil-1.0-h0_0.conda",
            dir,
            None,
            None,
            python,
        )
    }

    fn refused(result: Result<(), PrefixError>) -> (String, UnsafePath) {
        match result {
            Err(PrefixError::UnsafePackagePath {
                package,
                path,
                reason,
            }) => {
                assert_eq!(package, "evil-1.0-h0_0.conda");
                (path, reason)
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Hardening issue #13: a package's paths go through `enclosed_path` as written, and again
    /// where the installer puts them (a noarch Python package's `site-packages/` under the
    /// locked Python's `python_site_packages_path`, its entry points under `bin/`).
    #[test]
    fn package_paths_leaving_the_prefix_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let dir = package(root, false, &["lib/libfine.so", "share/fine/x"], &[]);
        check(root, &dir, None).unwrap();
        for (path, reason) in [
            ("../victim.txt", UnsafePath::ParentDir),
            ("lib/../../victim.txt", UnsafePath::ParentDir),
            ("/etc/victim.txt", UnsafePath::Absolute),
        ] {
            let root = tempfile::tempdir().unwrap();
            let dir = package(root.path(), false, &["lib/ok", path], &[]);
            assert_eq!(
                refused(check(root.path(), &dir, None)),
                (path.into(), reason)
            );
        }

        let version: rattler_conda_types::Version = "3.12".parse().unwrap();
        let evil_site =
            PythonInfo::from_version(&version, Some("../site"), Subdir::Linux64).unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = package(root.path(), true, &["site-packages/evil/__init__.py"], &[]);
        assert_eq!(
            refused(check(root.path(), &dir, Some(&evil_site))),
            ("../site/evil/__init__.py".into(), UnsafePath::ParentDir)
        );
        let python = PythonInfo::from_version(&version, None, Subdir::Linux64).unwrap();
        check(root.path(), &dir, Some(&python)).unwrap();
        fs_err::write(
            dir.join("info/link.json"),
            r#"{"noarch":{"type":"python","entry_points":["../../victim = evil:main"]},"package_metadata_version":1}"#,
        )
        .unwrap();
        // rattler's parser already refuses an entry point with a separator: an error before
        // anything is changed, naming the package.
        let error = check(root.path(), &dir, Some(&python)).unwrap_err();
        assert!(
            matches!(&error, PrefixError::PackageContents { package, .. } if package == "evil-1.0-h0_0.conda"),
            "{error:?}"
        );
    }

    /// Hardening issue #13: a package's symlink whose target leaves the prefix (climbing out,
    /// absolute, or through another of its symlinks) is refused; one that stays is fine.
    #[cfg(unix)]
    #[test]
    fn package_symlinks_leaving_the_prefix_are_refused() {
        for (symlinks, fine) in [
            (&[("lib/libz.so", "libz.so.1")][..], true),
            (&[("bin/tool", "../lib/tool/run")][..], true),
            (&[("lib/up", ".."), ("share/x", "../lib/up/lib")][..], true),
            (&[("lib/libz.so", "../../victim.txt")][..], false),
            (&[("lib/libz.so", "/etc/passwd")][..], false),
            (
                &[("lib/up", ".."), ("share/x", "../lib/up/../victim")][..],
                false,
            ),
            (&[("a", "b"), ("b", "a")][..], false),
        ] {
            let root = tempfile::tempdir().unwrap();
            let dir = package(root.path(), false, &[], symlinks);
            let result = check(root.path(), &dir, None);
            if fine {
                result.unwrap();
            } else {
                assert_eq!(refused(result).1, UnsafePath::SymlinkTarget, "{symlinks:?}");
            }
        }
    }

    /// Hardening issue #13: a directory of the prefix that is a symlink leading out of it is
    /// not written through.
    #[cfg(unix)]
    #[test]
    fn package_path_through_a_symlinked_prefix_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = package(root.path(), false, &["lib/libz.so"], &[]);
        fs_err::create_dir_all(root.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(root.path().join("outside"), root.path().join("prefix/lib"))
            .unwrap();
        assert_eq!(
            refused(check(root.path(), &dir, None)),
            ("lib/libz.so".into(), UnsafePath::ThroughSymlink)
        );
    }

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
