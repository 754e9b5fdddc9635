//! Why a prefix could not be installed, fingerprinted, verified or compared.

use std::path::PathBuf;

/// One error enum for keel-prefix. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// The directory has no `conda-meta` folder, so it is not a conda prefix.
    #[error("{} is not a conda prefix (it has no conda-meta folder)", .0.display())]
    NotAPrefix(PathBuf),
    /// A `conda-meta/*.json` record that cannot be read or parsed.
    #[error("corrupted conda-meta record {}", path.display())]
    Record {
        /// The record's file.
        path: PathBuf,
        /// The parser's reason (line and column for JSON errors).
        #[source]
        source: std::io::Error,
    },
    /// A `conda-meta` record names a path that could leave the prefix. Nothing is handed to
    /// the installer, deleted or read while such a record is there.
    #[error(
        "the conda-meta record {} names the path {path:?}, which keel will not use (nothing was changed): remove or fix that record, then run keel again",
        record.display()
    )]
    UnsafeRecordPath {
        /// The record's file.
        record: PathBuf,
        /// The path as written there.
        path: String,
        /// Why it is refused.
        #[source]
        reason: crate::UnsafePath,
    },
    /// A package the install would link names a path (in `info/paths.json`, `info/files` or
    /// `info/link.json`) that could leave the prefix, or ships a symlink whose target does.
    /// Found before anything is linked or removed: the prefix is as it was.
    #[error(
        "the package {package} would install {path:?}, which keel will not write (nothing was changed in the prefix)"
    )]
    UnsafePackagePath {
        /// The package, `name-version-build` with its archive extension.
        package: String,
        /// The path as the package names it (`link -> target` for a symlink).
        path: String,
        /// Why it is refused.
        #[source]
        reason: crate::UnsafePath,
    },
    /// The files list or a symlink of a package in the package cache could not be read.
    #[error("cannot read the contents of the package {package} in the package cache ({})", path.display())]
    PackageContents {
        /// The package.
        package: String,
        /// Its folder in the package cache.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A wheel from a URL in the lock's conda packages: keel cannot fetch it into the package
    /// cache to check its paths before the installer links it.
    #[error(
        "the lock pins {package}, a wheel from a URL, as a conda package; keel installs only conda archives (or wheels from a local path), whose paths it checks before linking"
    )]
    UncheckedPackage {
        /// The package.
        package: String,
    },
    /// Reading or writing a file failed. The source (from fs-err) names the path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A file of the prefix could not be read while fingerprinting or verifying it.
    #[error("cannot read {}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lock is not one keel reads (keel-solve's reader says why, naming the file).
    #[error(transparent)]
    Lock(Box<keel_solve::SolveError>),
    /// The lock could not be read.
    #[error("cannot read the lock {}", path.display())]
    ReadLock {
        /// The lock file.
        path: PathBuf,
        /// rattler_lock's reason.
        #[source]
        source: Box<rattler_lock::ParseCondaLockError>,
    },
    /// A locked conda package that cannot be turned into a repodata record.
    #[error("the lock {} has a conda package keel cannot read", path.display())]
    LockRecord {
        /// The lock file.
        path: PathBuf,
        /// rattler_lock's reason.
        #[source]
        source: rattler_lock::ConversionError,
    },
    /// The lock has no environment of this name.
    #[error("the lock {} has no environment `{name}`", path.display())]
    NoEnvironment {
        /// The lock file.
        path: PathBuf,
        /// The environment asked for.
        name: String,
    },
    /// The lock has no packages for the platform being installed or verified.
    #[error("the lock {} has no packages for {platform} (it locks: {locked})", path.display())]
    PlatformNotLocked {
        /// The lock file.
        path: PathBuf,
        /// The platform asked for.
        platform: String,
        /// The platforms the lock has.
        locked: String,
    },
    /// A locked package has no sha256, so what gets installed could not be checked.
    #[error("the lock pins {name} without a sha256; keel installs only packages it can check")]
    MissingSha256 {
        /// The package file name.
        name: String,
    },
    /// A locked package's archive could not be put into the package cache (downloaded, or
    /// read from a local channel, and extracted). Nothing of it was kept in the cache, and
    /// nothing in the prefix was changed: every archive is fetched before anything is linked.
    #[error("{}", crate::fetch::fetch_message(package, location, *tries, failure))]
    Fetch {
        /// The package, `name-version-build` with its archive extension.
        package: String,
        /// The archive's URL (without credentials), or its path in a local channel.
        location: String,
        /// How many times it was asked for.
        tries: u32,
        /// What went wrong, on the last try.
        failure: crate::FetchFailure,
        /// What rattler and the HTTP client said, URLs redacted.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP client that downloads archives could not be made.
    #[error("cannot set up the HTTP client that downloads the lock's archives")]
    Client(#[source] Box<keel_solve::SolveError>),
    /// rattler's installer failed (a link error, or a download it made itself).
    #[error("installing into {} failed", prefix.display())]
    Install {
        /// The prefix.
        prefix: PathBuf,
        /// The installer's reason, naming the package.
        #[source]
        source: Box<rattler::install::InstallerError>,
    },
    /// rattler's installer panicked. The prefix keeps its in-progress marker, so the next
    /// `keel install` checks and repairs it.
    #[error("the installer panicked while installing into {} ({message})", prefix.display())]
    InstallerPanic {
        /// The prefix.
        prefix: PathBuf,
        /// The panic's message.
        message: String,
    },
    /// A conda-meta record that the interrupted install left corrupted could not be removed.
    #[error("the record {} of an interrupted install is corrupted and could not be removed", path.display())]
    Repair {
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lock pins PyPI packages but the prefix has no Python to install them for.
    #[error("the lock pins PyPI packages ({packages}) but {} has no Python (bin/python) to install them into", prefix.display())]
    NoPython {
        /// The prefix.
        prefix: PathBuf,
        /// The packages, comma-separated.
        packages: String,
    },
    /// `uv pip install` failed.
    #[error("`uv pip install` of the lock's PyPI packages into {} failed ({status}):\n{stderr}", prefix.display())]
    Uv {
        /// The prefix.
        prefix: PathBuf,
        /// uv's exit status.
        status: String,
        /// What uv said.
        stderr: String,
    },
    /// A fingerprint file that is not a keel fingerprint, or of another schema version.
    #[error("{} is not a keel fingerprint of schema {expected}: {reason}", path.display())]
    FingerprintSchema {
        /// The file.
        path: PathBuf,
        /// The schema this keel reads.
        expected: u32,
        /// What was found instead.
        reason: String,
    },
    /// A fingerprint file that is not valid JSON.
    #[error("cannot parse the fingerprint {}", path.display())]
    FingerprintJson {
        /// The file.
        path: PathBuf,
        /// serde_json's reason, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// An `--exclude` pattern that is not a valid glob.
    #[error("invalid exclude pattern `{pattern}`")]
    Exclude {
        /// The pattern.
        pattern: String,
        /// globset's reason.
        #[source]
        source: globset::Error,
    },
}
