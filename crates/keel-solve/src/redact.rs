//! The one place a URL loses its credentials before it reaches a file, a message or a log.
//!
//! [`redact_url`] is the rule; everything else here applies it: to text that holds URLs
//! ([`redact_text`], for messages from rattler and uv), to channel entries that may hold
//! `${VAR}` and so are not URLs yet ([`redact_template`]), and to the secrets a channel
//! carries, so that one that turns up outside a URL (a decoded token in a message) is masked
//! too ([`Secrets`]).

use std::borrow::Cow;

use rattler_conda_types::ChannelUrl;
use rattler_lock::{CondaPackageData, PypiPackageData, UrlOrPath, Verbatim};
use url::Url;

/// What a secret is replaced with where one is masked rather than removed.
pub const REDACTED: &str = rattler_redaction::DEFAULT_REDACTION_STR;

/// Secrets shorter than this are only removed from URLs, never searched for in free text
/// (a one-letter user name would otherwise mask every such letter of a message).
const MIN_SECRET_LEN: usize = 4;

/// `url` without its credentials, as it may be written to a lock, an export, a message or a
/// log: no user name or password, no query string, no fragment other than an artifact digest
/// (`md5:`/`sha256:`), and no conda token (a `t/<token>` pair of path segments, wherever in
/// the path it is, as conda finds it). What is left still names the same channel or package:
/// an installer adds the credentials back from its own configuration (rattler's
/// authentication storage), as pixi does. Redacting twice changes nothing.
///
/// Built on rattler_redaction's `strip_url_for_serialization` (its `redact_url_for_display`,
/// formerly `redact_known_secrets_from_url`, keeps user names and query strings).
pub fn redact_url(url: &Url) -> Url {
    let mut url = rattler_redaction::strip_url_for_serialization(url);
    if let Some(segments) = url.path_segments() {
        let segments: Vec<&str> = segments.collect();
        if let Some(at) = token_position(&segments) {
            let path = segments[..at]
                .iter()
                .chain(&segments[at + 2..])
                .copied()
                .collect::<Vec<_>>()
                .join("/");
            url.set_path(&format!("/{path}"));
        }
    }
    url
}

/// Where a `t/<token>` pair starts among path segments (a token is never the last segment:
/// something is always asked for below it).
fn token_position(segments: &[&str]) -> Option<usize> {
    segments
        .windows(3)
        .position(|w| w[0] == "t" && !w[1].is_empty())
}

/// A channel or package URL as text (it may not parse: a channel written with `${VAR}`), with
/// its credentials removed: [`redact_url`] when it parses, else the same rule applied to the
/// text (user info before the host, the query string and fragment, a `/t/<token>` pair).
pub fn redact_template(text: &str) -> String {
    if let Ok(url) = Url::parse(text)
        && !url.cannot_be_a_base()
    {
        let redacted = redact_url(&url);
        // Keep the text as written when there was nothing to remove (no added slash).
        return if redacted == url {
            text.to_owned()
        } else {
            redacted.to_string()
        };
    }
    let (text, _fragment) = text.split_once('#').unwrap_or((text, ""));
    let (text, _query) = text.split_once('?').unwrap_or((text, ""));
    let (scheme, rest) = match text.find("://") {
        Some(at) => (&text[..at + 3], &text[at + 3..]),
        None => ("", text),
    };
    let (host, path) = if scheme.is_empty() {
        ("", rest)
    } else {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        (
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host),
            path,
        )
    };
    let segments: Vec<&str> = path.split('/').collect();
    let path = match token_position(&segments) {
        Some(at) => segments[..at]
            .iter()
            .chain(&segments[at + 2..])
            .copied()
            .collect::<Vec<_>>()
            .join("/"),
        None => path.to_owned(),
    };
    format!("{scheme}{host}{path}")
}

/// The credentials that URLs carry, to mask wherever they turn up in free text: user names,
/// passwords, conda tokens, query strings and their values, each as written and
/// percent-decoded.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    secrets: Vec<String>,
}

impl Secrets {
    /// Adds the credentials of one URL (or URL-like text with `${VAR}` already expanded).
    pub fn add_url_text(&mut self, text: &str) {
        if let Ok(url) = Url::parse(text) {
            self.push(url.username());
            if let Some(password) = url.password() {
                self.push(password);
            }
            if let Some(query) = url.query() {
                self.push(query);
                for (key, value) in url.query_pairs() {
                    self.push(&format!("{key}={value}"));
                    self.push(&value);
                }
            }
            if let Some(fragment) = url.fragment() {
                self.push(fragment);
            }
            if let Some(segments) = url.path_segments() {
                let segments: Vec<&str> = segments.collect();
                if let Some(at) = token_position(&segments) {
                    self.push(segments[at + 1]);
                }
            }
        }
        // The text form catches what a URL parser would have normalised away.
        let redacted = redact_template(text);
        if redacted != text {
            for word in text.split(|c: char| "/:@?&=#".contains(c)) {
                if !redacted.contains(word) {
                    self.push(word);
                }
            }
        }
    }

    /// Adds the URLs found in `text` (a pip line such as `--index-url https://u:p@host/simple`).
    pub fn add_urls_in(&mut self, text: &str) {
        for range in url_ranges(text) {
            self.add_url_text(&text[range]);
        }
    }

    fn push(&mut self, secret: &str) {
        for form in [
            Cow::Borrowed(secret),
            percent_decode(secret),
            Cow::Owned(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect()),
        ] {
            if form.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|s| *s == *form) {
                self.secrets.push(form.into_owned());
            }
        }
        // Longest first, so that a secret that holds another is masked whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every URL in it redacted ([`redact_url`]) and every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_text(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    match percent_decode_bytes(text) {
        Some(decoded) if decoded != text => Cow::Owned(decoded),
        _ => Cow::Borrowed(text),
    }
}

fn percent_decode_bytes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `text` with every URL in it (`scheme://...` up to a space, a quote or a bracket) replaced
/// by its [`redact_url`] form: for messages and output keel did not write itself.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut written = 0;
    for range in url_ranges(text) {
        out.push_str(&text[written..range.start]);
        out.push_str(&redact_template(&text[range.clone()]));
        written = range.end;
    }
    out.push_str(&text[written..]);
    out
}

/// The byte ranges of the URLs in `text`.
fn url_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let at = from + found;
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let rest = &text[at + 3..];
        let len = rest
            .find(|c: char| c.is_whitespace() || "\"'`<>()[]{}|\\^".contains(c))
            .unwrap_or(rest.len());
        let mut end = at + 3 + len;
        while end > at + 3 && text[..end].ends_with(['.', ',', ';', ':', '!']) {
            end -= 1;
        }
        if start < at {
            ranges.push(start..end);
        }
        from = end.max(at + 3);
    }
    ranges
}

/// A solved record as the lock records it: its URL and channel through [`redact_url`].
pub(crate) fn redact_record(
    mut record: rattler_conda_types::RepoDataRecord,
) -> rattler_conda_types::RepoDataRecord {
    record.url = redact_url(&record.url);
    record.channel = record.channel.map(|channel| redact_template(&channel));
    record
}

/// A lock's conda package with its location and channel through [`redact_url`].
pub(crate) fn redact_conda(package: CondaPackageData) -> CondaPackageData {
    match package {
        CondaPackageData::Binary(mut binary) => {
            binary.location = redact_location(binary.location);
            binary.channel = binary
                .channel
                .map(|channel| ChannelUrl::from(redact_url(channel.url())));
            CondaPackageData::Binary(binary)
        }
        CondaPackageData::Source(mut source) => {
            source.location = redact_location(source.location);
            CondaPackageData::Source(source)
        }
    }
}

/// A lock's PyPI package with its location and index through [`redact_url`].
pub(crate) fn redact_pypi(package: PypiPackageData) -> PypiPackageData {
    match package {
        PypiPackageData::Distribution(mut data) => {
            if let UrlOrPath::Url(url) = &*data.location {
                let mut redacted = redact_url(url);
                // A git package's query and fragment are the revision, subdirectory and
                // commit the lock pins (`git+URL?rev=main#COMMIT`, as pixi writes them).
                if url.scheme().starts_with("git+") {
                    redacted.set_query(url.query());
                    redacted.set_fragment(url.fragment());
                }
                data.location = Verbatim::new(UrlOrPath::Url(redacted));
            }
            data.index_url = data.index_url.as_ref().map(redact_url);
            PypiPackageData::Distribution(data)
        }
        PypiPackageData::Source(mut data) => {
            if let UrlOrPath::Url(url) = &*data.location {
                data.location = Verbatim::new(UrlOrPath::Url(redact_url(url)));
            }
            PypiPackageData::Source(data)
        }
    }
}

fn redact_location(location: UrlOrPath) -> UrlOrPath {
    match location {
        UrlOrPath::Url(url) => UrlOrPath::Url(redact_url(&url)),
        path @ UrlOrPath::Path(_) => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: &[&str] = &["alice", "hunter2", "s3cr3t-token", "qs-secret"];

    fn clean(text: &str) {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    /// Hardening issue #13: user name, password, `/t/<token>/` anywhere in the path, query
    /// and fragment are all removed; the rest of the URL stays.
    #[test]
    fn redact_url_removes_every_credential() {
        for (input, expected) in [
            (
                "https://alice:hunter2@conda.example.com/t/s3cr3t-token/private/linux-64/x-1-0.conda?token=qs-secret",
                "https://conda.example.com/private/linux-64/x-1-0.conda",
            ),
            (
                "https://alice@conda.example.com/prefix/t/s3cr3t-token/private/",
                "https://conda.example.com/prefix/private/",
            ),
            (
                "http://127.0.0.1:8080/chan/noarch/repodata.json?x=qs-secret#frag",
                "http://127.0.0.1:8080/chan/noarch/repodata.json",
            ),
            (
                "https://conda.example.com/c/linux-64/x.conda#sha256:ab12",
                "https://conda.example.com/c/linux-64/x.conda#sha256:ab12",
            ),
        ] {
            let url = Url::parse(input).unwrap();
            let redacted = redact_url(&url);
            assert_eq!(redacted.as_str(), expected);
            clean(redacted.as_str());
            assert_eq!(redact_url(&redacted), redacted, "idempotent");
        }
    }

    /// Hardening issue #13: a channel written with `${VAR}` is redacted as text.
    #[test]
    fn redact_template_handles_unexpanded_variables() {
        assert_eq!(
            redact_template("https://alice:${PASS}@host/t/${TOKEN}/chan?token=${Q}"),
            "https://host/chan"
        );
        assert_eq!(
            redact_template("${CHANNEL}/conda-forge"),
            "${CHANNEL}/conda-forge"
        );
        assert_eq!(redact_template("conda-forge"), "conda-forge");
        assert_eq!(
            redact_template("/srv/channels/local"),
            "/srv/channels/local"
        );
        assert_eq!(
            redact_template("https://conda.anaconda.org/conda-forge"),
            "https://conda.anaconda.org/conda-forge"
        );
    }

    /// Hardening issue #13: "could not find subdir" printed the query string.
    #[test]
    fn redact_text_redacts_urls_in_messages() {
        let message = "could not find subdir linux-64 in channel 'http://alice:hunter2@127.0.0.1:1/t/s3cr3t-token/c/?token=qs-secret'.";
        let redacted = redact_text(message);
        clean(&redacted);
        assert_eq!(
            redacted,
            "could not find subdir linux-64 in channel 'http://127.0.0.1:1/c/'."
        );
    }

    /// Hardening issue #13: a secret seen in a URL is masked where it turns up bare.
    #[test]
    fn secrets_are_masked_outside_urls() {
        let mut secrets = Secrets::default();
        secrets.add_url_text("https://alice:hunter2@host/t/s3cr3t-token/c?token=qs-secret&other=x");
        let text = "token s3cr3t-token for alice (hunter2), query qs-secret";
        let redacted = secrets.redact(text);
        clean(&redacted);
        assert!(redacted.contains(REDACTED));
        // Short values are not searched for in prose.
        assert!(secrets.redact("x marks").contains('x'));
    }
}
