//! Locked archives into the package cache: bounded waits, bounded tries with backoff, and an
//! error that says which archive failed, where from, and what that means.
//!
//! rattler's package cache extracts every archive into a temporary folder beside its entry and
//! renames it into place only once the archive is complete and its sha256 is the lock's, so a
//! download that fails (cut short, reset, a sha256 mismatch, a damaged archive) leaves no entry.
//!
//! Downloads go through keel-solve's [`http_client`] (timeouts, rattler's authentication
//! file), whose middleware already tries a request again that got no answer or a transient
//! status. A download that broke off after the server had answered (a reset or a cut
//! connection mid-archive, a timeout between two pieces) is past that middleware, so keel
//! fetches it again here, as many times in all.

use std::path::PathBuf;
use std::time::Duration;

use keel_solve::{HttpOptions, http_client, transient_status};
use rattler::package_cache::{CacheMetadata, PackageCache, PackageCacheError};
use rattler_cache::package_cache::PackageCacheLayerError;
use rattler_conda_types::RepoDataRecord;
use rattler_package_streaming::ExtractError;
use reqwest_middleware::ClientWithMiddleware;

use crate::PrefixError;

/// Why a locked package's archive did not get into the package cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchFailure {
    /// The archive is not there: HTTP 404 or 410, or no such file in a local channel.
    NotFound,
    /// The server answered this HTTP status (on the last try, for a transient one).
    Status(u16),
    /// The server sent nothing for this long.
    Timeout(Duration),
    /// The connection could not be made, or broke off before the archive was complete.
    Connection,
    /// The archive's sha256 is not the one the lock pins.
    Sha256Mismatch {
        /// The lock's.
        expected: String,
        /// The archive's.
        actual: String,
    },
    /// The archive came (or was read) whole but is not a readable conda package.
    Unreadable,
}

/// The text of [`PrefixError::Fetch`].
pub(crate) fn fetch_message(
    package: &str,
    location: &str,
    tries: u32,
    failure: &FetchFailure,
) -> String {
    let tried = if tries == 1 {
        String::new()
    } else {
        format!(", {tries} tries")
    };
    match failure {
        FetchFailure::NotFound => format!(
            "the channel has no archive {location}, which the lock pins as {package}: the channel's repodata lists the package but the file is not there (deleted, or a channel with repodata but no archives); re-lock against the channel as it is now, or put the archive back"
        ),
        FetchFailure::Status(status) => format!(
            "downloading {package} from {location} failed: the server answered HTTP {status}{}{tried}",
            reason_phrase(*status).map_or(String::new(), |reason| format!(" {reason}"))
        ),
        FetchFailure::Timeout(after) => format!(
            "downloading {package} from {location} failed: the server sent nothing for {} s{tried}",
            after.as_secs_f64()
        ),
        FetchFailure::Connection => format!(
            "downloading {package} from {location} failed: the connection could not be made or broke off before the archive was complete{tried}"
        ),
        FetchFailure::Sha256Mismatch { expected, actual } => format!(
            "the archive {location} is not the {package} the lock pins: its sha256 is {actual}, the lock's is {expected} (the channel changed since the lock was made, or the download was altered); nothing of it was kept"
        ),
        FetchFailure::Unreadable => format!(
            "the archive {location} ({package}) is not a readable conda package (damaged, or cut short); nothing of it was kept"
        ),
    }
}

/// HTTP's reason phrase for `status` (`Service Unavailable`), when it has one.
fn reason_phrase(status: u16) -> Option<&'static str> {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
}

/// The client archives are downloaded with: keel-solve's, the one channels are read with.
pub(crate) fn client(options: &HttpOptions) -> Result<ClientWithMiddleware, PrefixError> {
    http_client(options).map_err(|source| PrefixError::Client(Box::new(source)))
}

/// The locked package's archive in `cache` (from its path for a `file://` URL, else
/// downloaded with `client`). A download that broke off after the server answered is fetched
/// again, `options.tries` times in all, waiting `options.backoff` and then twice as long before
/// each later try; one that got no answer or a transient status was already tried that often
/// by the client.
pub(crate) async fn fetch(
    cache: &PackageCache,
    record: &RepoDataRecord,
    client: &ClientWithMiddleware,
    options: &HttpOptions,
) -> Result<CacheMetadata, PrefixError> {
    let local = (record.url.scheme() == "file")
        .then(|| record.url.to_file_path().ok())
        .flatten();
    let location = match &local {
        Some(path) => path.display().to_string(),
        None => keel_solve::redact_url(&record.url).to_string(),
    };
    let tries = options.tries.max(1);
    let mut fetched = 0;
    let mut wait = options.backoff;
    loop {
        fetched += 1;
        let result = match &local {
            Some(path) => {
                cache
                    .get_or_fetch_from_path(path, Some(&record.package_record), None)
                    .await
            }
            None => {
                cache
                    .get_or_fetch_from_url(
                        &record.package_record,
                        record.url.clone(),
                        client.clone().into(),
                        None,
                        None,
                    )
                    .await
            }
        };
        let error = match result {
            Ok(metadata) => return Ok(metadata),
            Err(error) => error,
        };
        let (failure, stage) = classify(&error, local.as_ref(), options.timeout);
        let (again, tried) = match stage {
            // A local file is read again only if it changes, which a retry does not wait for.
            Stage::Local => (false, 1),
            Stage::Request => {
                let transient = match &failure {
                    FetchFailure::Status(status) => transient_status(*status),
                    FetchFailure::Timeout(_) | FetchFailure::Connection => true,
                    _ => false,
                };
                (false, if transient { tries } else { 1 })
            }
            Stage::Body => (
                matches!(failure, FetchFailure::Timeout(_) | FetchFailure::Connection)
                    && fetched < tries,
                fetched,
            ),
        };
        if again {
            tokio::time::sleep(wait).await;
            wait = wait
                .saturating_mul(2)
                .min(std::time::Duration::from_secs(30));
            continue;
        }
        return Err(PrefixError::Fetch {
            package: record.identifier.to_string(),
            location,
            tries: tried,
            failure,
            source: Box::new(RedactedCause::of(&error)),
        });
    }
}

/// Where a fetch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading a local channel's file.
    Local,
    /// Before the server's answer was in (the client's middleware retried it).
    Request,
    /// After the server answered, while the archive came in.
    Body,
}

/// The extraction error inside the cache's error, when the fetch itself failed.
fn extract_error(error: &PackageCacheError) -> Option<&ExtractError> {
    match error {
        PackageCacheError::LayerError(layer) => {
            match layer.downcast_ref::<PackageCacheLayerError>() {
                Some(PackageCacheLayerError::FetchError(fetch)) => {
                    fetch.downcast_ref::<ExtractError>()
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// An error's text and its causes' as the source of [`PrefixError::Fetch`]: every URL in them
/// redacted ([`keel_solve::redact_text`]; reqwest's errors print the URL as requested), a cause
/// whose text the one above already holds left out, and the cache's own wrapper ("failed to
/// interact with the package cache layer") skipped for the extraction error it holds.
#[derive(Debug)]
struct RedactedCause {
    message: String,
    source: Option<Box<RedactedCause>>,
}

impl RedactedCause {
    fn of(error: &PackageCacheError) -> RedactedCause {
        match extract_error(error) {
            Some(extract) => RedactedCause::new(extract),
            None => RedactedCause::new(error),
        }
    }

    fn new(error: &(dyn std::error::Error + 'static)) -> RedactedCause {
        let message = keel_solve::redact_text(&error.to_string());
        let mut cause = next_cause(error);
        while let Some(said) = cause.filter(|c| {
            let text = keel_solve::redact_text(&c.to_string());
            text.is_empty() || message.contains(&text)
        }) {
            cause = next_cause(said);
        }
        RedactedCause {
            source: cause.map(|cause| Box::new(RedactedCause::new(cause))),
            message,
        }
    }
}

impl std::fmt::Display for RedactedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RedactedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// What a failed fetch means, from the errors rattler wraps: the cache's layer error holds
/// the extraction error, which holds the HTTP client's or the file system's.
fn classify(
    error: &PackageCacheError,
    local: Option<&PathBuf>,
    timeout: Duration,
) -> (FetchFailure, Stage) {
    let extract = extract_error(error);
    if let Some(path) = local {
        let failure = match extract {
            Some(ExtractError::HashMismatch {
                expected, actual, ..
            }) => FetchFailure::Sha256Mismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            _ if !path.exists() => FetchFailure::NotFound,
            _ => FetchFailure::Unreadable,
        };
        return (failure, Stage::Local);
    }
    let Some(extract) = extract else {
        return (FetchFailure::Unreadable, Stage::Body);
    };
    let stage = if matches!(extract, ExtractError::ReqwestError(_)) {
        Stage::Request
    } else {
        Stage::Body
    };
    if let ExtractError::HashMismatch {
        expected, actual, ..
    } = extract
    {
        let failure = FetchFailure::Sha256Mismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        };
        return (failure, stage);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(extract);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<reqwest::Error>() {
            if let Some(status) = http.status() {
                let failure = match status.as_u16() {
                    404 | 410 => FetchFailure::NotFound,
                    status => FetchFailure::Status(status),
                };
                return (failure, stage);
            }
            if http.is_timeout() {
                return (FetchFailure::Timeout(timeout), stage);
            }
            if http.is_connect() || http.is_body() || http.is_request() {
                return (FetchFailure::Connection, stage);
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, Interrupted, TimedOut,
                UnexpectedEof,
            };
            match io.kind() {
                TimedOut => return (FetchFailure::Timeout(timeout), stage),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | Interrupted => {
                    return (FetchFailure::Connection, stage);
                }
                _ => {}
            }
        }
        cause = next_cause(current);
    }
    (FetchFailure::Unreadable, stage)
}

/// The error under `error`. The wrappers on the way are transparent (`ExtractError`'s and
/// reqwest_middleware's), whose `source` skips the error they wrap, and an `io::Error` made
/// from another error holds it as its inner error, not as its source.
fn next_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(extract) = error.downcast_ref::<ExtractError>() {
        match extract {
            ExtractError::ReqwestError(inner) => return Some(inner),
            ExtractError::IoError(inner) | ExtractError::CouldNotCreateDestination(inner) => {
                return Some(inner);
            }
            _ => {}
        }
    }
    if let Some(reqwest_middleware::Error::Reqwest(inner)) =
        error.downcast_ref::<reqwest_middleware::Error>()
    {
        return Some(inner);
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        return Some(inner);
    }
    error.source()
}
