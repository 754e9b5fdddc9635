//! From the spec's channel entries to rattler channels, in priority order.

use std::path::Path;
use std::str::FromStr;

use keel_spec::{ChannelKind, EnvironmentSpec};
use rattler_conda_types::{Channel, ChannelConfig, NamedChannelOrUrl};

use crate::SolveError;
use crate::error::Redacted;
use crate::redact::{Secrets, redact_template, redact_url};

/// Anaconda's `defaults`: the channels conda's `default_channels` lists.
const DEFAULTS_UNIX: &[&str] = &[
    "https://repo.anaconda.com/pkgs/main",
    "https://repo.anaconda.com/pkgs/r",
];
const DEFAULTS_WINDOWS: &str = "https://repo.anaconda.com/pkgs/msys2";

/// A channel to solve against, with the text it was written as.
#[derive(Clone)]
pub struct ResolvedChannel {
    /// The channel, credentials included (it is what the gateway fetches).
    pub channel: Channel,
    /// The entry as written in the file, `${VAR}` unexpanded.
    pub written: String,
}

impl ResolvedChannel {
    /// The channel as the lock records it: the entry as written when it uses `${VAR}` (so
    /// that every reader expands its own), else the channel's URL; credentials removed
    /// either way ([`crate::redact_url`]).
    pub fn recorded(&self) -> String {
        if self.written.contains('$') {
            redact_template(&self.written)
        } else {
            redact_url(self.channel.base_url.url()).to_string()
        }
    }

    /// The credentials this channel's URL carries.
    pub(crate) fn add_secrets(&self, secrets: &mut Secrets) {
        secrets.add_url_text(self.channel.base_url.url().as_str());
    }
}

/// Shows the channel without its credentials: a `Debug` print reaches logs and panics.
impl std::fmt::Debug for ResolvedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedChannel")
            .field("channel", &redact_url(self.channel.base_url.url()).as_str())
            .field("written", &redact_template(&self.written))
            .finish()
    }
}

/// The spec's channels as rattler channels, highest priority first.
///
/// Environment variables in channels are expanded with `lookup` (conda expands them from the
/// environment). Relative paths are relative to `base_dir`, the environment file's folder.
/// `nodefaults` is dropped; `defaults` becomes Anaconda's `main` and `r` channels, in that
/// priority order (plus `msys2` when any target is Windows). keel never adds `defaults` on its own: a lock lists
/// exactly the channels its file names.
///
/// As conda does, `lookup("CONDA_CHANNEL_ALIAS")` replaces the alias that named channels
/// (`conda-forge`) are joined onto (`https://conda.anaconda.org/`), and
/// `lookup("CONDA_DEFAULT_CHANNELS")`, comma-separated, replaces the channels `defaults`
/// stands for (a mirror, or a server on loopback in keel's tests).
pub fn resolve_channels(
    spec: &EnvironmentSpec,
    base_dir: &Path,
    any_windows: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedChannel>, SolveError> {
    let mut config = ChannelConfig::default_with_root_dir(base_dir.to_path_buf());
    if let Some(alias) = lookup("CONDA_CHANNEL_ALIAS").filter(|a| !a.trim().is_empty()) {
        let alias = alias.trim();
        // Without a trailing slash: rattler pushes the name as path segments, and
        // `https://host/conda/` would give `https://host/conda//pytorch`.
        config.channel_alias = url::Url::parse(alias.trim_end_matches('/')).map_err(|source| {
            let mut secrets = Secrets::default();
            secrets.add_url_text(alias);
            SolveError::Channel {
                channel: format!("CONDA_CHANNEL_ALIAS={}", secrets.redact(alias)),
                source: Redacted::new(
                    &rattler_conda_types::ParseChannelError::ParseUrlError(source),
                    &secrets,
                ),
            }
        })?;
    }
    let default_channels: Option<Vec<String>> = lookup("CONDA_DEFAULT_CHANNELS").map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let mut channels = Vec::new();
    for entry in &spec.channels {
        match entry.kind {
            ChannelKind::NoDefaults => {}
            ChannelKind::Defaults => {
                let urls: Vec<String> = match &default_channels {
                    Some(urls) if !urls.is_empty() => urls.clone(),
                    _ => {
                        let mut urls: Vec<String> =
                            DEFAULTS_UNIX.iter().map(|u| (*u).to_owned()).collect();
                        if any_windows {
                            urls.push(DEFAULTS_WINDOWS.to_owned());
                        }
                        urls
                    }
                };
                for url in urls {
                    channels.push(ResolvedChannel {
                        channel: parse(&url, &config)?,
                        written: url,
                    });
                }
            }
            _ => {
                let text = entry.expand_vars(&lookup);
                channels.push(ResolvedChannel {
                    channel: parse(&text, &config)?,
                    written: entry.source.clone(),
                });
            }
        }
    }
    Ok(channels)
}

fn parse(text: &str, config: &ChannelConfig) -> Result<Channel, SolveError> {
    NamedChannelOrUrl::from_str(text)
        .map_err(rattler_conda_types::ParseChannelError::from)
        .and_then(|channel| channel.into_channel(config))
        .map_err(|source| {
            let mut secrets = Secrets::default();
            secrets.add_url_text(text);
            SolveError::Channel {
                channel: secrets.redact(&redact_template(text)),
                source: Redacted::new(&source, &secrets),
            }
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::resolve_channels;

    fn urls(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let spec = keel_spec::parse_str(text, "environment.yml").unwrap().spec;
        resolve_channels(&spec, Path::new("/"), false, lookup)
            .unwrap()
            .iter()
            .map(|c| c.channel.base_url.url().to_string())
            .collect()
    }

    const FILE: &str = "channels:\n  - pytorch\n  - defaults\ndependencies:\n  - python\n";

    #[test]
    fn without_conda_variables_names_go_to_anaconda() {
        assert_eq!(
            urls(FILE, |_| None),
            [
                "https://conda.anaconda.org/pytorch/",
                "https://repo.anaconda.com/pkgs/main/",
                "https://repo.anaconda.com/pkgs/r/",
            ]
        );
    }

    /// conda's `CONDA_CHANNEL_ALIAS` and `CONDA_DEFAULT_CHANNELS`: a mirror for both.
    #[test]
    fn conda_channel_alias_and_default_channels_replace_anaconda() {
        let lookup = |name: &str| match name {
            "CONDA_CHANNEL_ALIAS" => Some("http://127.0.0.1:8080/conda/".to_owned()),
            "CONDA_DEFAULT_CHANNELS" => {
                Some("http://127.0.0.1:8080/main, http://127.0.0.1:8080/free,".to_owned())
            }
            _ => None,
        };
        assert_eq!(
            urls(FILE, lookup),
            [
                "http://127.0.0.1:8080/conda/pytorch/",
                "http://127.0.0.1:8080/main/",
                "http://127.0.0.1:8080/free/",
            ]
        );
    }

    #[test]
    fn a_bad_channel_alias_is_an_error_naming_the_variable_without_its_secret() {
        let spec = keel_spec::parse_str(FILE, "environment.yml").unwrap().spec;
        let error = resolve_channels(&spec, Path::new("/"), false, |name| {
            (name == "CONDA_CHANNEL_ALIAS").then(|| "https://user:s3cret@[bad".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("CONDA_CHANNEL_ALIAS"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
