//! Why a lock could not be made.

use std::path::PathBuf;

use rattler_conda_types::Subdir;

use crate::redact::Secrets;

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
        "no platform to lock for: none was given, the environment file lists no `platforms:`, and this machine's platform is not a conda platform"
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
        /// The channel as written (variables expanded), credentials removed.
        channel: String,
        /// rattler's reason.
        #[source]
        source: Redacted,
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
        source: Redacted,
    },
    /// A local channel's repodata file holds a record keel cannot read.
    #[error(
        "{}:{line}:{column}: {} does not read as repodata: {reason}",
        file.display(),
        record.as_deref().map_or_else(|| "the file".to_owned(), |r| format!("the record {r}"))
    )]
    BadRepodata {
        /// The repodata file.
        file: std::path::PathBuf,
        /// The package file name of the record, when the place is inside one.
        record: Option<String>,
        /// 1-based line in the file.
        line: usize,
        /// 1-based column in the file.
        column: usize,
        /// What is wrong there.
        reason: String,
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
    /// A wheel uv picked has core metadata keel cannot read (its requirements would be
    /// missing from the lock).
    #[error("keel cannot read the metadata of `{package}` ({file}) for {platform}: {reason}")]
    PypiMetadata {
        /// The platform.
        platform: Subdir,
        /// The package.
        package: String,
        /// The wheel, credentials removed.
        file: String,
        /// Why.
        reason: String,
    },
    /// A timeout (`--timeout`, `KEEL_HTTP_TIMEOUT`) that is not a number of seconds.
    #[error("invalid HTTP timeout {value}: {reason}")]
    TimeoutValue {
        /// The value as given, with where it came from.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (no TLS roots, say).
    #[error("failed to build the HTTP client")]
    Client(#[source] Redacted),
    /// The authentication file `RATTLER_AUTH_FILE` names could not be read.
    #[error("failed to read the authentication file {} (RATTLER_AUTH_FILE)", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// rattler's reason.
        #[source]
        source: Redacted,
    },
    /// A channel answered 401 or 403: it wants credentials keel did not send, or refused them.
    #[error(
        "the channel {channel} refused keel: HTTP {} for {url}; give the channel's credentials in its URL (https://user:password@host/..., or .../t/<token>/...) or in the file RATTLER_AUTH_FILE names",
        status_text(*status)
    )]
    Unauthorized {
        /// The channel, credentials removed.
        channel: String,
        /// The file asked for, credentials removed.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// A channel server answered an error status (the last try's, for a transient one).
    #[error(
        "fetching {url} failed: the server answered HTTP {}{}",
        status_text(*status),
        tried(*tries)
    )]
    HttpStatus {
        /// The file asked for, credentials removed.
        url: String,
        /// The status of the last answer.
        status: u16,
        /// How many times it was asked for.
        tries: u32,
    },
    /// A channel server sent nothing for the timeout.
    #[error(
        "fetching {url} failed: the server sent nothing for {} s{}; a slow server needs a longer --timeout (or KEEL_HTTP_TIMEOUT)",
        timeout.as_secs_f64(),
        tried(*tries)
    )]
    HttpTimeout {
        /// The file asked for, credentials removed.
        url: String,
        /// The timeout.
        timeout: std::time::Duration,
        /// How many times it was asked for.
        tries: u32,
    },
    /// A channel server could not be reached, or broke the connection off.
    #[error(
        "fetching {url} failed: the connection could not be made or broke off{}",
        tried(*tries)
    )]
    Unreachable {
        /// The file asked for, credentials removed.
        url: String,
        /// How many times it was asked for.
        tries: u32,
        /// The HTTP client's reason.
        #[source]
        source: Redacted,
    },
    /// A channel without `noarch` repodata: not a conda channel, or not at that URL.
    #[error(
        "the channel {channel} has no {subdir} repodata (no repodata.json there): check the URL; every conda channel has a {subdir}/repodata.json"
    )]
    NoRepodata {
        /// The channel, credentials removed.
        channel: String,
        /// The subdir (`noarch`).
        subdir: String,
    },
    /// The repodata cache could not be made or made private.
    #[error("failed to prepare the repodata cache")]
    Cache(#[source] std::io::Error),
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
        source: Redacted,
    },
    /// An existing lock could not be opened.
    #[error("failed to open the lock")]
    OpenLock(#[source] std::io::Error),
    /// An existing lock is not a file keel reads: a folder, a FIFO, a device, or too large.
    #[error("the lock {} is not a lock keel reads: {reason}", path.display())]
    NotALock {
        /// The lock file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// A package in an existing lock points where keel does not follow.
    #[error("the lock {} has package `{package}` at `{location}`: {reason}", path.display())]
    LockedLocation {
        /// The lock file.
        path: PathBuf,
        /// The package's file name.
        package: String,
        /// Where the lock says it is (credentials removed).
        location: String,
        /// Why keel refuses it.
        reason: &'static str,
    },
    /// A lock could not be written or rendered.
    #[error("failed to write the lock")]
    WriteLock(#[source] std::io::Error),
    /// A locked record could not be turned back into repodata.
    #[error("the lock holds a package keel cannot read back")]
    LockedRecord(#[source] Redacted),
    /// Exporting to conda-lock's format failed.
    #[error("failed to export conda-lock.yml")]
    CondaLock(#[source] Redacted),
    /// One package of the lock cannot be written in an export's format.
    #[error("{format} cannot hold {package}: {reason}")]
    Export {
        /// The export (`conda-lock.yml`, `@EXPLICIT`).
        format: &'static str,
        /// The package, `name version (platform)`.
        package: String,
        /// Why, from the format's rules.
        reason: String,
    },
}

/// A status with HTTP's reason phrase where it has one: `503 Service Unavailable`, `599`.
fn status_text(status: u16) -> String {
    match http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// `" (4 tries)"`, or nothing for one.
fn tried(tries: u32) -> String {
    if tries > 1 {
        format!(" ({tries} tries)")
    } else {
        String::new()
    }
}

/// An error from rattler, its message and each of its causes' messages with every URL
/// redacted ([`crate::redact_url`]) and every known secret masked: rattler's own redaction
/// keeps user names and query strings.
#[derive(Debug)]
pub struct Redacted {
    message: String,
    source: Option<Box<Redacted>>,
}

impl Redacted {
    /// `error` and its causes, redacted with the secrets keel knows of. A cause whose text
    /// the message already holds (rattler writes many errors as `failed to ...: {0}` and keeps
    /// the cause as their source too) is left out of the chain, its own causes kept, so that
    /// no cause is printed twice.
    pub(crate) fn new(error: &(dyn std::error::Error + 'static), secrets: &Secrets) -> Self {
        let message = secrets.redact(&error.to_string());
        let mut cause = error.source();
        while let Some(said) = cause.filter(|c| {
            let text = secrets.redact(&c.to_string());
            !text.is_empty() && message.contains(&text)
        }) {
            cause = said.source();
        }
        Redacted {
            source: cause.map(|cause| Box::new(Redacted::new(cause, secrets))),
            message,
        }
    }

    /// `error` with every URL in its messages redacted.
    pub(crate) fn urls(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::new(error, &Secrets::default())
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Redacted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error written `{message}: {source}` with the cause also as its source.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match (&self.1, self.0.ends_with(':')) {
                (Some(cause), true) => write!(f, "{} {cause}", self.0),
                _ => f.write_str(self.0),
            }
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|c| c as &(dyn std::error::Error + 'static))
        }
    }

    fn chain(error: &dyn std::error::Error) -> Vec<String> {
        let mut texts = vec![error.to_string()];
        let mut cause = error.source();
        while let Some(c) = cause {
            texts.push(c.to_string());
            cause = c.source();
        }
        texts
    }

    #[test]
    fn a_cause_the_message_already_holds_is_not_repeated() {
        // "fetch failed: https://alice:pw@host/x not found", whose source is the not-found
        // error, whose source is an I/O error the message does not hold.
        let error = Chain(
            "fetch failed:",
            Some(Box::new(Chain(
                "https://alice:pw@host/x not found",
                Some(Box::new(Chain("connection reset", None))),
            ))),
        );
        let redacted = Redacted::urls(&error);
        assert_eq!(
            chain(&redacted),
            ["fetch failed: https://host/x not found", "connection reset"]
        );
        // A cause the message does not hold stays.
        let error = Chain("fetch failed", Some(Box::new(Chain("not found", None))));
        assert_eq!(
            chain(&Redacted::urls(&error)),
            ["fetch failed", "not found"]
        );
    }
}
