//! The one HTTP client keel fetches channels with: bounded waits, bounded tries with backoff,
//! and the credentials of rattler's authentication file.
//!
//! rattler's gateway retries nothing itself on an HTTP error (it reads a 500 as final), and its
//! default client waits forever for a server that accepted the connection and sends nothing.
//! So every request goes through [`http_client`]: a `reqwest` client with a connect and a read
//! timeout, a middleware that tries a transient failure again (HTTP 5xx, 408, 429, a
//! connection refused or broken off, a timeout) with a doubling wait, and rattler's
//! [`AuthenticationMiddleware`] over the file `RATTLER_AUTH_FILE` names. No keyring, netrc or
//! home-folder store is read: what authenticates a lock is the channel URL (basic
//! authentication, `/t/<token>/`) or that one file, the same on every node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rattler_networking::authentication_storage::backends::file::FileStorage;
use rattler_networking::{AuthenticationMiddleware, AuthenticationStorage};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};

use rattler_conda_types::Subdir;
use rattler_repodata_gateway::GatewayError;
use rattler_repodata_gateway::fetch::FetchRepoDataError;

use crate::SolveError;
use crate::channels::ResolvedChannel;
use crate::error::Redacted;
use crate::redact::redact_url;

/// The variable that sets [`HttpOptions::timeout`] in seconds when no flag does.
pub const TIMEOUT_ENV: &str = "KEEL_HTTP_TIMEOUT";

/// The file of credentials by host, in rattler's format (`{"host": {"BearerToken": ".."}}`,
/// `BasicHTTP`, `CondaToken`), that [`http_client`] authenticates with.
pub const AUTH_FILE_ENV: &str = "RATTLER_AUTH_FILE";

/// How keel talks to a channel server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Give up on a server that sends nothing for this long: while connecting, while waiting
    /// for its answer, and between two pieces of a download (one that keeps arriving is never
    /// cut off).
    pub timeout: Duration,
    /// How many times one request is sent before its failure is final. Only transient failures
    /// are tried again (HTTP 5xx, 408, 429, a connection refused or broken off, a timeout); a
    /// 401, 403, 404 or any other answer is final at once.
    pub tries: u32,
    /// The wait before the second try; it doubles before each later one.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    /// conda's defaults: 60 s without a byte from the server, four tries (three retries).
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(60),
            tries: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

impl HttpOptions {
    /// The defaults with the timeout of [`TIMEOUT_ENV`] when it is set (`value`: its value,
    /// passed in so that callers and tests decide where it comes from).
    pub fn with_timeout_var(value: Option<&str>) -> Result<Self, SolveError> {
        let mut options = HttpOptions::default();
        if let Some(value) = value {
            options.timeout = parse_timeout(value).map_err(|reason| SolveError::TimeoutValue {
                value: format!("{TIMEOUT_ENV}={value}"),
                reason,
            })?;
        }
        Ok(options)
    }
}

/// Seconds as `--timeout` and [`TIMEOUT_ENV`] take them: a positive number, fractions
/// allowed, at most a day.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "`{text}` is not between 0 and 86400 seconds (a day)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The client every channel request of keel goes through (see the module's text).
pub fn http_client(options: &HttpOptions) -> Result<ClientWithMiddleware, SolveError> {
    let client = reqwest::Client::builder()
        .connect_timeout(options.timeout)
        .read_timeout(options.timeout)
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| SolveError::Client(Redacted::urls(&source)))?;
    let mut storage = AuthenticationStorage::empty();
    if let Some(path) = std::env::var_os(AUTH_FILE_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let file = FileStorage::from_path(path.clone()).map_err(|source| SolveError::AuthFile {
            path,
            source: Redacted::urls(&source),
        })?;
        storage.add_backend(Arc::new(file));
    }
    Ok(reqwest_middleware::ClientBuilder::new(client)
        .with(Retry {
            tries: options.tries.max(1),
            backoff: options.backoff,
        })
        .with(AuthenticationMiddleware::from_auth_storage(storage))
        .build())
}

/// Whether an answer with `status` is worth asking for again.
pub fn transient_status(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 429)
}

/// Whether a failure to get an answer is worth another try.
fn transient_error(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(error) => {
            error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
        }
        // The authentication middleware's failures (a token that cannot be a header) are not
        // the network's.
        reqwest_middleware::Error::Middleware(_) => false,
    }
}

/// Sends a request again after a transient failure, `tries` times in all, waiting `backoff`
/// and then twice as long before each later try. The last answer (a 503, say) is passed on as
/// it came, so the caller's error names its status and URL.
struct Retry {
    tries: u32,
    backoff: Duration,
}

#[async_trait::async_trait]
impl Middleware for Retry {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let mut wait = self.backoff;
        for _ in 1..self.tries {
            // A streamed body cannot be sent twice; channel requests have none.
            let Some(attempt) = request.try_clone() else {
                break;
            };
            let result = next.clone().run(attempt, extensions).await;
            let transient = match &result {
                Ok(response) => transient_status(response.status().as_u16()),
                Err(error) => transient_error(error),
            };
            if !transient {
                return result;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        next.run(request, extensions).await
    }
}

/// The error a failed repodata load becomes when the network is what failed: the server's
/// status (401/403 named as the channel refusing keel), a timeout, a connection that could
/// not be made, a channel without repodata. `None`: the failure is not the network's (a
/// broken file, the cache), and the gateway's own error says it.
pub(crate) fn network_failure(
    error: &GatewayError,
    options: &HttpOptions,
    channels: &[ResolvedChannel],
    platform: Subdir,
) -> Option<SolveError> {
    if let GatewayError::SubdirNotFoundError(missing) = error {
        return Some(SolveError::NoRepodata {
            channel: redact_url(missing.channel.base_url.url()).to_string(),
            subdir: missing.subdir.clone(),
        });
    }
    let failure = find_reqwest(error)?;
    let url = failure.url().map(redact_url);
    let url_text = url
        .as_ref()
        .map_or_else(|| "the channel".to_owned(), ToString::to_string);
    let tries = |transient: bool| if transient { options.tries.max(1) } else { 1 };
    if let Some(status) = failure.status() {
        let status = status.as_u16();
        if matches!(status, 401 | 403) {
            return Some(SolveError::Unauthorized {
                channel: url.as_ref().map_or_else(
                    || url_text.clone(),
                    |url| channel_of(url, channels, platform),
                ),
                url: url_text,
                status,
            });
        }
        return Some(SolveError::HttpStatus {
            url: url_text,
            status,
            tries: tries(transient_status(status)),
        });
    }
    if failure.is_timeout() {
        return Some(SolveError::HttpTimeout {
            url: url_text,
            timeout: options.timeout,
            tries: tries(true),
        });
    }
    if failure.is_connect() || failure.is_request() || failure.is_body() {
        return Some(SolveError::Unreachable {
            url: url_text,
            tries: tries(true),
            source: Redacted::urls(failure),
        });
    }
    None
}

/// The channel (credentials removed) that `url` (redacted) is a file of: the resolved channel
/// whose redacted base URL it starts with, else the URL without its last two segments
/// (`<subdir>/<file>`).
fn channel_of(url: &url::Url, channels: &[ResolvedChannel], platform: Subdir) -> String {
    let text = url.as_str();
    channels
        .iter()
        .map(|channel| redact_url(channel.channel.base_url.url()).to_string())
        .find(|base| text.starts_with(base.as_str()))
        .unwrap_or_else(|| {
            let marker = format!("/{}/", platform.as_str());
            let cut = text
                .rfind(&marker)
                .or_else(|| text.rfind("/noarch/"))
                .map_or(text.len(), |at| at + 1);
            text[..cut].to_owned()
        })
}

/// The HTTP client's error inside a gateway error, wherever rattler wrapped it (its wrappers
/// are `#[error(transparent)]`, so the error itself never shows in the source chain).
fn find_reqwest<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a reqwest::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<reqwest::Error>() {
            return Some(found);
        }
        let inner: Option<&(dyn std::error::Error + 'static)> =
            if let Some(gateway) = error.downcast_ref::<GatewayError>() {
                match gateway {
                    GatewayError::ReqwestError(found) => return Some(found),
                    GatewayError::ReqwestMiddlewareError(inner) => {
                        Some(AsRef::<dyn std::error::Error>::as_ref(inner))
                    }
                    GatewayError::FetchRepoDataError(inner) => Some(inner as &_),
                    _ => None,
                }
            } else if let Some(fetch) = error.downcast_ref::<FetchRepoDataError>() {
                match fetch {
                    FetchRepoDataError::HttpError(inner) => Some(inner as &_),
                    _ => None,
                }
            } else if let Some(middleware) = error.downcast_ref::<reqwest_middleware::Error>() {
                match middleware {
                    reqwest_middleware::Error::Reqwest(found) => return Some(found),
                    reqwest_middleware::Error::Middleware(inner) => {
                        Some(AsRef::<dyn std::error::Error>::as_ref(inner))
                    }
                }
            } else {
                None
            };
        next = inner.or_else(|| error.source());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_positive_seconds_up_to_a_day() {
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout(" 60 "), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "NaN", "inf", "1e9", "soon", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_variable_sets_the_timeout_and_a_bad_one_is_named() {
        assert_eq!(
            HttpOptions::with_timeout_var(Some("5")).unwrap().timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            HttpOptions::with_timeout_var(None).unwrap(),
            HttpOptions::default()
        );
        let error = HttpOptions::with_timeout_var(Some("five")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid HTTP timeout KEEL_HTTP_TIMEOUT=five: `five` is not a number of seconds"
        );
    }

    #[test]
    fn only_server_errors_timeouts_and_throttling_are_transient() {
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(transient_status(status), "{status}");
        }
        for status in [200, 304, 400, 401, 403, 404, 410] {
            assert!(!transient_status(status), "{status}");
        }
    }
}
