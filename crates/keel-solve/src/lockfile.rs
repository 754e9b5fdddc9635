//! The lock on disk: rattler_lock's pixi format with keel's header, its inputs hash, and the
//! one reader every lock goes through.

use std::collections::BTreeMap;
use std::path::Path;

use keel_spec::EnvironmentSpec;
use rattler_conda_types::{GenericVirtualPackage, RepoDataRecord, Subdir};
use rattler_digest::{Sha256, compute_bytes_digest};
use rattler_lock::{
    CondaPackageData, DEFAULT_ENVIRONMENT_NAME, LockFile, PlatformData, PlatformName, SolveOptions,
    UrlOrPath,
};
use serde::Serialize;

use crate::SolveError;
use crate::channels::ResolvedChannel;
use crate::error::Redacted;
use crate::options::LockOptions;
use crate::redact::{redact_pypi, redact_record, redact_template, redact_text};
use crate::virtual_packages::AssumedFrom;

/// What one platform's solve used and found.
#[derive(Debug, Clone)]
pub(crate) struct PlatformSolve {
    pub(crate) platform: Subdir,
    pub(crate) virtual_packages: Vec<GenericVirtualPackage>,
    pub(crate) assumed_from: AssumedFrom,
    pub(crate) records: Vec<RepoDataRecord>,
    pub(crate) pypi: Vec<rattler_lock::PypiPackageData>,
}

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
    /// Per platform, the hash of what that platform's solve was made from (see
    /// [`platform_content_hash`]): the `content_hash` of exports.
    pub content_hashes: BTreeMap<Subdir, String>,
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
    /// The virtual packages its solve assumed (recorded in the lock).
    pub virtual_packages: Vec<String>,
    /// Where they came from: the platform's baseline, `--virtual-package`, `--detect` or the
    /// previous lock.
    pub virtual_packages_from: AssumedFrom,
}

#[derive(Serialize)]
struct Inputs {
    format: u32,
    channels: Vec<String>,
    channel_priority: &'static str,
    platforms: BTreeMap<&'static str, PlatformInputs>,
}

#[derive(Serialize)]
struct PlatformInputs {
    specs: Vec<String>,
    pip: Vec<String>,
}

impl PlatformInputs {
    /// The conda specs and pip lines that apply to `platform` (selectors applied, credentials
    /// left out).
    fn of(spec: &EnvironmentSpec, platform: Subdir) -> Self {
        Self {
            specs: spec
                .match_specs_for(Some(platform))
                .iter()
                .map(ToString::to_string)
                .collect(),
            pip: crate::pypi::entries_for(spec, platform)
                .iter()
                .map(|entry| redact_text(&entry.source))
                .collect(),
        }
    }
}

/// The file's channels as written, credentials left out: a rotated token leaves a lock fresh,
/// and no hash of a password reaches the lock.
fn channels_as_written(spec: &EnvironmentSpec) -> Vec<String> {
    spec.channels
        .iter()
        .map(|c| redact_template(&c.source))
        .collect()
}

fn channel_priority_name(priority: rattler_solve::ChannelPriority) -> &'static str {
    match priority {
        rattler_solve::ChannelPriority::Strict => "strict",
        rattler_solve::ChannelPriority::Disabled => "disabled",
        rattler_solve::ChannelPriority::Flexible => "flexible",
    }
}

#[derive(Serialize)]
struct PlatformContent<'a> {
    format: u32,
    platform: &'static str,
    channels: Vec<String>,
    channel_priority: &'static str,
    inputs: PlatformInputs,
    virtual_packages: &'a [String],
}

/// The hash of what one platform's solve is made from: the channels, the channel priority,
/// the conda specs and pip lines that apply to it and the virtual packages it assumed. It
/// changes only when that platform's result can change, so it is the `content_hash` that
/// conda-lock files carry per platform and the `# input_hash:` of `@EXPLICIT` lists.
/// (conda-lock's own value hashes its parser's Python objects and its virtual-package
/// repodata, which keel does not reproduce; `conda-lock lock` re-solves such a platform,
/// `conda-lock install` and `render` do not read it.)
pub fn platform_content_hash(
    spec: &EnvironmentSpec,
    platform: Subdir,
    options: &LockOptions,
    virtual_packages: &[String],
) -> String {
    let content = PlatformContent {
        format: 1,
        platform: platform.as_str(),
        channels: channels_as_written(spec),
        channel_priority: channel_priority_name(options.channel_priority),
        inputs: PlatformInputs::of(spec, platform),
        virtual_packages,
    };
    let json = serde_json::to_vec(&content).expect("inputs serialize to JSON");
    hex::encode(compute_bytes_digest::<Sha256>(&json))
}

/// The hash of what a lock is made from: the channels as written, the channel priority, and
/// per platform the conda specs and pip lines that apply (selectors applied). Virtual packages
/// are not hashed: they are recorded in the lock per platform, a re-lock without flags keeps
/// them ([`crate::assumed_virtual_packages`]), and `keel lock --check` compares the set the
/// options would assume with the recorded one ([`crate::check_fresh`]), so the answer is the
/// same on every node, whatever its GPU.
pub fn inputs_hash(spec: &EnvironmentSpec, platforms: &[Subdir], options: &LockOptions) -> String {
    let inputs = Inputs {
        format: 1,
        channels: channels_as_written(spec),
        channel_priority: channel_priority_name(options.channel_priority),
        platforms: platforms
            .iter()
            .map(|platform| (platform.as_str(), PlatformInputs::of(spec, *platform)))
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
                .map(crate::virtual_packages::recorded_spelling)
                .collect(),
            virtual_packages_from: solve.assumed_from,
        })
        .collect();
    let content_hashes = solves
        .iter()
        .zip(&summaries)
        .map(|(solve, summary)| {
            (
                solve.platform,
                platform_content_hash(spec, solve.platform, options, &summary.virtual_packages),
            )
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
        channels
            .iter()
            .map(|c| rattler_lock::Channel::from(c.recorded())),
    );
    builder.set_options(
        DEFAULT_ENVIRONMENT_NAME,
        SolveOptions {
            channel_priority: options.channel_priority,
            ..SolveOptions::default()
        },
    );
    // The pip section's indexes, as pixi compares them with its own (credentials removed).
    if let Some(indexes) = crate::pypi::indexes(spec) {
        builder.set_pypi_indexes(DEFAULT_ENVIRONMENT_NAME, indexes);
    }
    for solve in solves {
        builder
            .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, solve.platform.as_str())
            .map_err(SolveError::Lock)?;
        for record in solve.records {
            // A channel token (`/t/<token>/`), a user name, a password or a query string never
            // reaches the lock, in the URL or the channel: the lock is shared, the credentials
            // are not. Installers add them back from their own configuration, as pixi does.
            let record = redact_record(record);
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
                    redact_pypi(package),
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
        content_hashes,
    })
}

/// The largest lock keel reads: a lock of thousands of packages on several platforms is a few
/// MB, and a file larger than this is not one (it would only exhaust memory).
pub const MAX_LOCK_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a lock written by keel (or pixi). `Ok(None)` when the file does not exist.
///
/// Only a regular file is read (a FIFO or a device is refused, never waited on), no larger
/// than [`MAX_LOCK_BYTES`]; every error names the file, and every package's location is
/// checked ([`check_locked_location`]) and read back as a record, so that whatever uses the
/// lock afterwards (a re-lock, an export) meets no package it cannot place.
pub fn read_lock(path: &Path) -> Result<Option<(LockFile, Option<String>)>, SolveError> {
    let Some(text) = read_lock_text(path)? else {
        return Ok(None);
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let lock = LockFile::from_str_with_base_directory(&text, Some(base)).map_err(|source| {
        SolveError::ReadLock {
            path: path.to_path_buf(),
            source: Redacted::urls(&source),
        }
    })?;
    for (_, environment) in lock.environments() {
        for (_, packages) in environment.conda_packages_by_platform() {
            for package in packages {
                let (location, name) = match package {
                    CondaPackageData::Binary(binary) => {
                        (&binary.location, binary.file_name.to_string())
                    }
                    CondaPackageData::Source(source) => {
                        (&source.location, source.location.to_string())
                    }
                };
                let refuse = |reason| SolveError::LockedLocation {
                    path: path.to_path_buf(),
                    package: name.clone(),
                    location: redact_template(&location.to_string()),
                    reason,
                };
                check_locked_location(location, package.as_binary().is_some()).map_err(refuse)?;
                if let Some(binary) = package.as_binary() {
                    RepoDataRecord::try_from(binary).map_err(|_| {
                        refuse("keel cannot turn this location into a download URL")
                    })?;
                }
            }
        }
    }
    Ok(Some((lock, recorded_hash(&text))))
}

/// The lock's text: `None` when there is no file; an error naming the file when it is not a
/// regular file of at most [`MAX_LOCK_BYTES`] of UTF-8. The file is opened without waiting
/// (a FIFO would block a plain open) and checked through the opened handle.
fn read_lock_text(path: &Path) -> Result<Option<String>, SolveError> {
    use std::io::Read as _;

    let not_a_lock = |reason: String| SolveError::NotALock {
        path: path.to_path_buf(),
        reason,
    };
    let kind = |metadata: &std::fs::Metadata| -> Option<&'static str> {
        let file_type = metadata.file_type();
        if file_type.is_file() {
            None
        } else if file_type.is_dir() {
            Some("it is a folder")
        } else {
            Some("it is not a regular file (a FIFO, a socket or a device)")
        }
    };
    // Refuse what is not a regular file before opening it at all.
    match fs_err::metadata(path) {
        Ok(metadata) => {
            if let Some(reason) = kind(&metadata) {
                return Err(not_a_lock(reason.to_owned()));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SolveError::OpenLock(error)),
    }
    let mut options = fs_err::OpenOptions::new();
    options.read(true);
    non_blocking(&mut options);
    let file = match options.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SolveError::OpenLock(error)),
    };
    let metadata = file.metadata().map_err(SolveError::OpenLock)?;
    if let Some(reason) = kind(&metadata) {
        return Err(not_a_lock(reason.to_owned()));
    }
    if metadata.len() > MAX_LOCK_BYTES {
        return Err(not_a_lock(format!(
            "it is {} bytes, more than the {MAX_LOCK_BYTES} a lock may have",
            metadata.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_LOCK_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(SolveError::OpenLock)?;
    if bytes.len() as u64 > MAX_LOCK_BYTES {
        return Err(not_a_lock(format!(
            "it grew past the {MAX_LOCK_BYTES} bytes a lock may have while being read"
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|error| {
        let offset = error.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&error.as_bytes()[..offset]);
        let line = text.matches('\n').count() + 1;
        let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        not_a_lock(format!(
            "it is not UTF-8 text (line {line}, column {column})"
        ))
    })
}

/// Opens without waiting for a writer, where the platform has `O_NONBLOCK` (a regular file
/// reads as usual; it only keeps a FIFO swapped in after the check from blocking).
fn non_blocking(options: &mut fs_err::OpenOptions) {
    #[cfg(any(
        all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ),
        target_os = "macos"
    ))]
    {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        #[cfg(target_os = "linux")]
        const O_NONBLOCK: i32 = 0o4000;
        #[cfg(target_os = "macos")]
        const O_NONBLOCK: i32 = 0x0004;
        options.custom_flags(O_NONBLOCK);
    }
    #[cfg(not(any(
        all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ),
        target_os = "macos"
    )))]
    let _ = options;
}

/// Whether keel follows a package location read from a lock: a URL of a scheme conda
/// downloads from (`http`, `https`, `file`, and the object stores rattler speaks), or a path
/// (rattler records a local channel's packages as absolute paths); a binary package's
/// location names a `.conda` or `.tar.bz2` archive, and a path has no `..` (a relative one
/// stays inside the lock's folder). The one check every package location read from a lock
/// passes, before anything joins, fetches or records it.
pub fn check_locked_location(location: &UrlOrPath, binary: bool) -> Result<(), &'static str> {
    let name = match location {
        UrlOrPath::Url(url) => {
            if !matches!(
                url.scheme(),
                "http" | "https" | "file" | "s3" | "gcs" | "oci"
            ) {
                return Err("not a URL scheme keel downloads from");
            }
            if url.cannot_be_a_base() || (url.host_str().is_none() && url.scheme() != "file") {
                return Err("not a URL of a host");
            }
            url.path_segments()
                .and_then(|mut segments| segments.next_back())
                .unwrap_or_default()
                .to_owned()
        }
        UrlOrPath::Path(path) => {
            let text = path.as_str();
            if text.is_empty() {
                return Err("an empty path");
            }
            let parts: Vec<&str> = text.split(['/', '\\']).collect();
            if parts.contains(&"..") {
                return Err("a path with `..` (it would leave the folder it names)");
            }
            parts.last().copied().unwrap_or_default().to_owned()
        }
    };
    if binary && !(name.ends_with(".conda") || name.ends_with(".tar.bz2")) {
        return Err("it does not name a .conda or .tar.bz2 archive");
    }
    Ok(())
}

/// Where the lock at `lock_path` says a PyPI package lies, as a URL: a URL as the lock records
/// it, or a local path as a `file://` URL (an absolute path as it is, a relative one joined
/// onto the lock's folder). A path passes [`check_locked_location`] first (no `..`, not
/// empty), so a relative one stays inside the lock's folder; an error names the lock, the
/// package and the location. The one way a reader of a lock (keel-prefix's installer) turns
/// a PyPI location into something to fetch.
pub fn pypi_location(
    lock_path: &Path,
    package: &rattler_lock::PypiPackageData,
) -> Result<url::Url, SolveError> {
    let location: &UrlOrPath = package.location();
    let refuse = |reason| SolveError::LockedLocation {
        path: lock_path.to_path_buf(),
        package: package.name().to_string(),
        location: redact_template(&location.to_string()),
        reason,
    };
    let path = match location {
        UrlOrPath::Url(url) => return Ok(url.clone()),
        UrlOrPath::Path(path) => path,
    };
    check_locked_location(location, false).map_err(refuse)?;
    let path = Path::new(path.as_str());
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let folder = lock_path.parent().unwrap_or(Path::new(""));
        std::path::absolute(folder.join(path))
            .map_err(|_| refuse("keel cannot make this path absolute"))?
    };
    url::Url::from_file_path(&absolute).map_err(|()| refuse("not a path a file:// URL can name"))
}

/// The inputs hash recorded in a lock's header, if it has one.
pub fn recorded_hash(text: &str) -> Option<String> {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .find_map(|line| line.strip_prefix(HASH_PREFIX))
        .map(|hash| hash.trim().to_owned())
}
