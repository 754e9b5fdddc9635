//! Why a lock could not be made.

use std::path::PathBuf;

use rattler_conda_types::Subdir;

/// A spec line that takes part in an unsatisfiable request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecLine {
    /// The line in the environment file, when known.
    pub line: Option<usize>,
    /// Where the dependency is written, for drawing it.
    #[serde(skip)]
    pub location: Option<keel_spec::Location>,
    /// The dependency as written.
    pub source: String,
}

/// One error enum for keel-solve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    /// The spec names no platform and this machine's platform is not a conda platform.
    #[error(
        "no platform to lock for: pass --platform, or list `platforms:` in the environment file"
    )]
    NoPlatform,
    /// The file lists no channel to solve from.
    #[error(
        "the environment file lists no channels: add `channels:` (for example `conda-forge`); keel does not fall back to a .condarc"
    )]
    NoChannels,
    /// A channel entry could not be turned into a channel.
    #[error("invalid channel `{channel}`")]
    Channel {
        /// The channel as written (variables expanded).
        channel: String,
        /// rattler's reason.
        #[source]
        source: rattler_conda_types::ParseChannelError,
    },
    /// A `--virtual-package` value that is not `__name=version[=build]`.
    #[error("invalid virtual package `{value}`: {reason}")]
    VirtualPackage {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Detecting this machine's virtual packages failed.
    #[error("failed to detect the virtual packages of this machine")]
    DetectVirtualPackages(#[source] rattler_virtual_packages::DetectVirtualPackageError),
    /// Loading repodata failed: a channel without repodata, a broken repodata.json, no network.
    #[error("failed to load repodata for {platform}")]
    Repodata {
        /// The platform being loaded.
        platform: Subdir,
        /// The gateway's reason, which names the channel and file.
        #[source]
        source: Box<rattler_repodata_gateway::GatewayError>,
    },
    /// No set of packages satisfies the spec on a platform.
    #[error("the environment cannot be solved for {platform}:\n{explanation}")]
    Unsolvable {
        /// The platform.
        platform: Subdir,
        /// The solver's explanation of the conflict.
        explanation: String,
        /// The spec lines the explanation names.
        spec_lines: Vec<SpecLine>,
    },
    /// The solver failed for another reason.
    #[error("the solver failed for {platform}")]
    Solver {
        /// The platform.
        platform: Subdir,
        /// rattler's reason.
        #[source]
        source: rattler_solve::SolveError,
    },
    /// A pip line pip would refuse.
    #[error("pip will refuse `{source_line}`{}: {reason}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    PipLine {
        /// The line in the environment file.
        line: Option<usize>,
        /// The pip line as written.
        source_line: String,
        /// Why.
        reason: String,
    },
    /// Without uv, only exact `==` pins can be locked.
    #[error("`{source_line}`{} needs uv to be resolved: install it (`pip install uv`) or pin it exactly with `==`", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    PipNeedsUv {
        /// The line in the environment file.
        line: Option<usize>,
        /// The pip line as written.
        source_line: String,
    },
    /// The pip section needs a Python, and the conda solve has none.
    #[error(
        "the pip section needs `python` in the dependencies, and the solve for {platform} has none"
    )]
    PipWithoutPython {
        /// The platform.
        platform: Subdir,
    },
    /// uv cannot resolve for this platform.
    #[error("keel cannot resolve pip requirements for {platform}")]
    PipPlatform {
        /// The platform.
        platform: Subdir,
    },
    /// Running uv failed.
    #[error("failed to run uv")]
    Pip(#[source] std::io::Error),
    /// uv could not resolve the pip section.
    #[error("uv could not resolve the pip section for {platform}:\n{stderr}")]
    UvFailed {
        /// The platform.
        platform: Subdir,
        /// What uv said.
        stderr: String,
    },
    /// Building the lock failed.
    #[error("failed to build the lock")]
    Lock(#[source] rattler_lock::ParseCondaLockError),
    /// An existing lock could not be read.
    #[error("failed to read the lock {}", path.display())]
    ReadLock {
        /// The lock file.
        path: PathBuf,
        /// rattler_lock's reason.
        #[source]
        source: Box<rattler_lock::ParseCondaLockError>,
    },
    /// An existing lock could not be opened.
    #[error("failed to open the lock")]
    OpenLock(#[source] std::io::Error),
    /// A lock could not be written or rendered.
    #[error("failed to write the lock")]
    WriteLock(#[source] std::io::Error),
    /// A locked record could not be turned back into repodata.
    #[error("the lock holds a package keel cannot read back")]
    LockedRecord(#[source] rattler_lock::ConversionError),
    /// Exporting to conda-lock's format failed.
    #[error("failed to export conda-lock.yml")]
    CondaLock(#[source] Box<rattler_lock::conda_lock::CondaLockError>),
}
