//! The lock on disk: rattler_lock's pixi format with keel's header, its inputs hash, and the
//! freshness check.

use std::collections::BTreeMap;
use std::path::Path;

use keel_spec::EnvironmentSpec;
use rattler_conda_types::Subdir;
use rattler_digest::{Sha256, compute_bytes_digest};
use rattler_lock::{
    CondaPackageData, DEFAULT_ENVIRONMENT_NAME, LockFile, PlatformData, PlatformName, SolveOptions,
};
use serde::Serialize;

use crate::SolveError;
use crate::channels::ResolvedChannel;
use crate::solve::{LockOptions, PlatformSolve};

/// The header line that carries the inputs hash.
const HASH_PREFIX: &str = "# keel-inputs-sha256: ";

/// A lock made by [`crate::lock`].
#[derive(Debug)]
pub struct Locked {
    /// The lock.
    pub lock: LockFile,
    /// The lock as written to disk: keel's header, then the pixi lock.
    pub text: String,
    /// The hash of the inputs (see [`inputs_hash`]).
    pub inputs_hash: String,
    /// What each platform got.
    pub platforms: Vec<PlatformSummary>,
}

/// One platform of a lock.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformSummary {
    /// The platform.
    pub platform: String,
    /// How many conda packages it pins.
    pub packages: usize,
    /// How many PyPI packages it pins.
    pub pypi_packages: usize,
    /// The virtual packages its solve assumed.
    pub virtual_packages: Vec<String>,
}

#[derive(Serialize)]
struct Inputs<'a> {
    format: u32,
    channels: Vec<&'a str>,
    channel_priority: &'static str,
    platforms: BTreeMap<&'static str, PlatformInputs>,
}

#[derive(Serialize)]
struct PlatformInputs {
    specs: Vec<String>,
    pip: Vec<String>,
}

/// The hash of what a lock is made from: the channels as written, the channel priority, and
/// per platform the conda specs and pip lines that apply (selectors applied). Virtual packages are recorded in the
/// lock per platform rather than hashed, so that `keel lock --check` gives the same answer on
/// every node, whatever its GPU.
pub fn inputs_hash(spec: &EnvironmentSpec, platforms: &[Subdir], options: &LockOptions) -> String {
    let inputs = Inputs {
        format: 1,
        channels: spec.channels.iter().map(|c| c.source.as_str()).collect(),
        channel_priority: match options.channel_priority {
            rattler_solve::ChannelPriority::Strict => "strict",
            rattler_solve::ChannelPriority::Disabled => "disabled",
            rattler_solve::ChannelPriority::Flexible => "flexible",
        },
        platforms: platforms
            .iter()
            .map(|platform| {
                (
                    platform.as_str(),
                    PlatformInputs {
                        specs: spec
                            .match_specs_for(Some(*platform))
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                        pip: crate::pypi::entries_for(spec, *platform)
                            .iter()
                            .map(|entry| entry.source.clone())
                            .collect(),
                    },
                )
            })
            .collect(),
    };
    let json = serde_json::to_vec(&inputs).expect("inputs serialize to JSON");
    hex::encode(compute_bytes_digest::<Sha256>(&json))
}

pub(crate) fn build(
    spec: &EnvironmentSpec,
    spec_path: &Path,
    channels: &[ResolvedChannel],
    options: &LockOptions,
    solves: Vec<PlatformSolve>,
) -> Result<Locked, SolveError> {
    let platforms: Vec<Subdir> = solves.iter().map(|s| s.platform).collect();
    let inputs_hash = inputs_hash(spec, &platforms, options);
    let summaries: Vec<PlatformSummary> = solves
        .iter()
        .map(|solve| PlatformSummary {
            platform: solve.platform.as_str().to_owned(),
            packages: solve.records.len(),
            pypi_packages: solve.pypi.len(),
            virtual_packages: solve
                .virtual_packages
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect();
    let platform_data = solves
        .iter()
        .zip(&summaries)
        .map(|(solve, summary)| PlatformData {
            name: PlatformName::from(&solve.platform),
            subdir: solve.platform,
            virtual_packages: summary.virtual_packages.clone(),
        })
        .collect();
    let mut builder = LockFile::builder()
        .with_platforms(platform_data)
        .map_err(SolveError::Lock)?;
    builder.set_channels(
        DEFAULT_ENVIRONMENT_NAME,
        channels.iter().map(|c| {
            if c.written.contains('$') {
                rattler_lock::Channel::from(c.written.as_str())
            } else {
                let url = rattler_redaction::strip_url_for_serialization(c.channel.base_url.url());
                rattler_lock::Channel::from(url.as_str())
            }
        }),
    );
    builder.set_options(
        DEFAULT_ENVIRONMENT_NAME,
        SolveOptions {
            channel_priority: options.channel_priority,
            ..SolveOptions::default()
        },
    );
    for solve in solves {
        builder
            .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, solve.platform.as_str())
            .map_err(SolveError::Lock)?;
        for mut record in solve.records {
            // A channel token (`/t/<token>/`), a password or a query string never reaches the
            // lock: the lock is shared, the credentials are not. Installers add them back from
            // their own configuration, as pixi does.
            record.url = rattler_redaction::strip_url_for_serialization(&record.url);
            builder
                .add_conda_package(
                    DEFAULT_ENVIRONMENT_NAME,
                    solve.platform.as_str(),
                    CondaPackageData::from(record),
                )
                .map_err(SolveError::Lock)?;
        }
        for package in solve.pypi {
            builder
                .add_pypi_package(
                    DEFAULT_ENVIRONMENT_NAME,
                    solve.platform.as_str(),
                    rattler_lock::PypiPackageData::Distribution(Box::new(package)),
                )
                .map_err(SolveError::Lock)?;
        }
    }
    let lock = builder.finish();
    let body = lock.render_to_string().map_err(SolveError::WriteLock)?;
    let file_name = spec_path.file_name().map_or_else(
        || spec_path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let text = format!(
        "# Written by `keel lock` from {file_name}; pixi and rattler read it as a pixi lock.\n\
         {HASH_PREFIX}{inputs_hash}\n{body}"
    );
    Ok(Locked {
        lock,
        text,
        inputs_hash,
        platforms: summaries,
    })
}

/// Reads a lock written by keel (or pixi). `Ok(None)` when the file does not exist.
pub fn read_lock(path: &Path) -> Result<Option<(LockFile, Option<String>)>, SolveError> {
    let text = match fs_err::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SolveError::OpenLock(error)),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let lock = LockFile::from_str_with_base_directory(&text, Some(base)).map_err(|source| {
        SolveError::ReadLock {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    Ok(Some((lock, recorded_hash(&text))))
}

/// The inputs hash recorded in a lock's header, if it has one.
pub fn recorded_hash(text: &str) -> Option<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .find_map(|line| line.strip_prefix(HASH_PREFIX))
        .map(|hash| hash.trim().to_owned())
}
