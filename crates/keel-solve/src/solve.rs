//! Loading repodata and solving, one platform at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_spec::EnvironmentSpec;
use rattler_conda_types::{GenericVirtualPackage, MatchSpec, RepoDataRecord, Subdir};
use rattler_lock::LockFile;
use rattler_repodata_gateway::{DownloadReporter, Gateway, Reporter};
use rattler_solve::{ChannelRepoData, SolverImpl, SolverTask};

use crate::SolveError;
use crate::channels::{ResolvedChannel, resolve_channels};
use crate::client::{http_client, network_failure};
use crate::error::{Redacted, SpecLine};
use crate::lockfile::{self, Locked, PlatformSolve};
use crate::options::{LockOptions, LockProgress};
use crate::pypi;
use crate::redact::{Secrets, redact_url};
use crate::virtual_packages::assumed_virtual_packages;

/// The platforms a lock is for: the options', else the file's, else this machine's.
pub fn target_platforms(
    spec: &EnvironmentSpec,
    options: &LockOptions,
) -> Result<Vec<Subdir>, SolveError> {
    let mut platforms = if !options.platforms.is_empty() {
        options.platforms.clone()
    } else if !spec.platforms.is_empty() {
        spec.platforms.clone()
    } else {
        vec![Subdir::current().ok_or(SolveError::NoPlatform)?]
    };
    let mut seen = std::collections::HashSet::new();
    platforms.retain(|p| seen.insert(*p));
    Ok(platforms)
}

/// Solves `spec` (read from `spec_path`) for every target platform and builds the lock.
///
/// `previous` is the lock already on disk, if any: its packages are preferred wherever the
/// specs still allow them, so re-locking an unchanged file changes nothing, and only the
/// packages named in [`LockOptions::update`] move. Each platform's virtual packages follow
/// [`assumed_virtual_packages`]: the previous lock's set unless the options give others.
pub async fn lock(
    spec: &EnvironmentSpec,
    spec_path: &Path,
    options: &LockOptions,
    previous: Option<&LockFile>,
) -> Result<Locked, SolveError> {
    let platforms = target_platforms(spec, options)?;
    let base_dir = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base_dir = fs_err::canonicalize(&base_dir).unwrap_or(base_dir);
    let channels = resolve_channels(
        spec,
        &base_dir,
        platforms.iter().any(|p| p.is_windows()),
        |name| std::env::var(name).ok(),
    )?;
    if channels.is_empty() {
        return Err(SolveError::NoChannels);
    }
    let mut secrets = Secrets::default();
    for channel in &channels {
        channel.add_secrets(&mut secrets);
    }
    for entry in spec.pip_entries() {
        secrets.add_urls_in(&entry.source);
    }
    let cache = RepodataCache::for_channels(&channels, &options.cache_dir)?;
    let gateway = Gateway::builder()
        .with_client(http_client(&options.http)?)
        .with_cache_dir(cache.dir().to_path_buf())
        .finish();

    let mut solves = Vec::new();
    for platform in &platforms {
        let specs = spec.match_specs_for(Some(*platform));
        let assumed = assumed_virtual_packages(
            *platform,
            &options.virtual_packages,
            options.detected.as_ref(),
            recorded_virtual_packages(previous, *platform).as_deref(),
        )?;
        let virtual_packages = assumed.packages;
        let locked = previous_records(previous, *platform, &options.update)?;
        let records = solve_platform(
            &gateway,
            &channels,
            *platform,
            &specs,
            &virtual_packages,
            &locked,
            options,
            spec,
            &secrets,
        )
        .await;
        // Whatever the solve gave, what rattler left in a shared cache is made private.
        cache.restrict()?;
        let records = records?;
        let pypi = pypi::resolve(
            &pypi::entries_for(spec, *platform),
            &base_dir,
            *platform,
            &records,
            &virtual_packages,
            &options.uv,
            &options.http,
            &secrets,
            &pypi::previous_pins(previous, *platform, &options.update),
        )
        .await?;
        solves.push(PlatformSolve {
            platform: *platform,
            virtual_packages,
            assumed_from: assumed.from,
            records,
            pypi,
        });
    }
    lockfile::build(spec, spec_path, &channels, options, solves)
}

/// The virtual packages the previous lock recorded for `platform` (`None`: no previous lock, or
/// one without the platform).
pub(crate) fn recorded_virtual_packages(
    previous: Option<&LockFile>,
    platform: Subdir,
) -> Option<Vec<String>> {
    previous?
        .platforms()
        .find(|p| p.subdir() == platform)
        .map(|p| p.virtual_packages().to_vec())
}

/// The previous lock's records for `platform`, minus the packages to update.
fn previous_records(
    previous: Option<&LockFile>,
    platform: Subdir,
    update: &[String],
) -> Result<Vec<RepoDataRecord>, SolveError> {
    let Some(environment) = previous.and_then(LockFile::default_environment) else {
        return Ok(Vec::new());
    };
    let Some(lock_platform) = environment.platforms().find(|p| p.subdir() == platform) else {
        return Ok(Vec::new());
    };
    let records = environment
        .conda_repodata_records(lock_platform)
        .map_err(|error| SolveError::LockedRecord(Redacted::urls(&error)))?
        .unwrap_or_default();
    Ok(records
        .into_iter()
        .filter(|r| {
            !update
                .iter()
                .any(|name| r.package_record.name.as_normalized() == name.to_lowercase())
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
async fn solve_platform(
    gateway: &Gateway,
    channels: &[ResolvedChannel],
    platform: Subdir,
    specs: &[MatchSpec],
    virtual_packages: &[GenericVirtualPackage],
    locked: &[RepoDataRecord],
    options: &LockOptions,
    spec: &EnvironmentSpec,
    secrets: &Secrets,
) -> Result<Vec<RepoDataRecord>, SolveError> {
    let mut query = gateway
        .query(
            channels.iter().map(|c| c.channel.clone()),
            [platform, Subdir::NoArch],
            specs.iter().cloned(),
        )
        .recursive(true);
    if let Some(progress) = &options.progress {
        query = query.with_reporter(RedactingReporter(std::sync::Arc::clone(progress)));
    }
    let output = query.execute().await.map_err(|source| {
        network_failure(&source, &options.http, channels, platform)
            .or_else(|| crate::repodata_error::diagnose(channels, platform))
            .unwrap_or_else(|| SolveError::Repodata {
                platform,
                source: Redacted::new(&source, secrets),
            })
    })?;

    let task = SolverTask {
        locked_packages: locked.iter().collect(),
        virtual_packages: virtual_packages.to_vec(),
        specs: specs.to_vec(),
        channel_priority: options.channel_priority,
        ..SolverTask::from_iter(output.repodata.iter().map(|repodata| ChannelRepoData {
            records: repodata.iter(),
            multi_channel: repodata.multi_channel(),
        }))
    };
    let mut records = match rattler_solve::resolvo::Solver.solve(task) {
        Ok(result) => result.records,
        Err(rattler_solve::SolveError::Unsolvable(messages)) => {
            let explanation = secrets.redact(&messages.join("\n"));
            return Err(SolveError::Unsolvable {
                platform,
                spec_lines: spec_lines_named_in(spec, &explanation),
                explanation,
            });
        }
        Err(source) => return Err(SolveError::Solver { platform, source }),
    };
    records.sort_by(|a, b| {
        a.package_record
            .name
            .as_normalized()
            .cmp(b.package_record.name.as_normalized())
    });
    Ok(records)
}

/// The file's dependency lines whose package the solver's explanation names.
fn spec_lines_named_in(spec: &EnvironmentSpec, explanation: &str) -> Vec<SpecLine> {
    let mut lines: BTreeMap<(usize, String), SpecLine> = BTreeMap::new();
    for dependency in spec.conda_dependencies() {
        let name = dependency.spec.name.to_string();
        let named = explanation
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .any(|token| token.trim_end_matches('.') == name);
        if named {
            let line = dependency.location.map(|l| l.line);
            lines.insert(
                (line.unwrap_or(usize::MAX), dependency.source.clone()),
                SpecLine {
                    line,
                    location: dependency.location,
                    source: dependency.source.clone(),
                },
            );
        }
    }
    lines.into_values().collect()
}

/// Passes rattler's download progress on to the options' [`LockProgress`] with each URL
/// redacted: rattler's own progress bar prints a URL's host and path (a `/t/<token>/` with it),
/// or the whole URL, password included, for a host that is an IP address.
struct RedactingReporter(std::sync::Arc<dyn LockProgress>);

impl Reporter for RedactingReporter {
    fn download_reporter(&self) -> Option<&dyn DownloadReporter> {
        Some(self)
    }
}

impl DownloadReporter for RedactingReporter {
    fn on_download_start(&self, url: &url::Url) -> usize {
        self.0.download_started(redact_url(url).as_str())
    }

    fn on_download_progress(
        &self,
        _url: &url::Url,
        index: usize,
        bytes_downloaded: usize,
        total_bytes: Option<usize>,
    ) {
        self.0.download_progress(
            index,
            bytes_downloaded as u64,
            total_bytes.map(|total| total as u64),
        );
    }

    fn on_download_complete(&self, _url: &url::Url, index: usize) {
        self.0.download_done(index);
    }
}

/// Where the gateway caches repodata for one lock.
///
/// rattler writes each repodata URL it fetches into the cache (`<hash>.info.json`, the file
/// name a hash of the URL), credentials included: it has no other way to send them than the
/// URL keel gives it. So channels whose URLs carry credentials are fetched through a private
/// folder (0700) that is removed when the lock is done, and the shared cache only ever holds
/// URLs without credentials. The shared cache is made private too: folders keel creates are
/// 0700, and every file rattler leaves there is set to 0600 after each solve.
enum RepodataCache {
    Shared(PathBuf),
    Private(tempfile::TempDir),
}

impl RepodataCache {
    fn for_channels(channels: &[ResolvedChannel], shared: &Path) -> Result<Self, SolveError> {
        let credentialed = channels.iter().any(|c| {
            let url = c.channel.base_url.url();
            redact_url(url) != **url
        });
        if credentialed {
            let dir = tempfile::Builder::new()
                .prefix("keel-repodata-")
                .tempdir()
                .map_err(SolveError::Cache)?;
            return Ok(RepodataCache::Private(dir));
        }
        create_private_dir(shared)?;
        Ok(RepodataCache::Shared(shared.to_path_buf()))
    }

    fn dir(&self) -> &Path {
        match self {
            RepodataCache::Shared(dir) => dir,
            RepodataCache::Private(dir) => dir.path(),
        }
    }

    /// Sets every file under the shared cache to 0600 and every folder to 0700.
    fn restrict(&self) -> Result<(), SolveError> {
        match self {
            RepodataCache::Shared(dir) => restrict_tree(dir, 0),
            RepodataCache::Private(_) => Ok(()),
        }
    }
}

/// Creates `dir` and its missing parents as 0700 (the cache may end up holding what a user
/// may read and others may not).
fn create_private_dir(dir: &Path) -> Result<(), SolveError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|error| {
        SolveError::Cache(std::io::Error::new(
            error.kind(),
            format!(
                "failed to create the repodata cache {}: {error}",
                dir.display()
            ),
        ))
    })
}

fn restrict_tree(dir: &Path, depth: usize) -> Result<(), SolveError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // rattler's cache is a flat folder with a few levels of shards below it at most.
        if depth > 8 {
            return Ok(());
        }
        let entries = match fs_err::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(SolveError::Cache(error)),
        };
        for entry in entries {
            let entry = entry.map_err(SolveError::Cache)?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(SolveError::Cache)?;
            let mode = if file_type.is_dir() {
                restrict_tree(&path, depth + 1)?;
                0o700
            } else if file_type.is_file() {
                0o600
            } else {
                continue;
            };
            let metadata = fs_err::symlink_metadata(&path).map_err(SolveError::Cache)?;
            if metadata.permissions().mode() & 0o077 == 0 {
                continue;
            }
            match fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                Ok(()) => {}
                // Another user's file in a shared folder: not keel's to change.
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(error) => return Err(SolveError::Cache(error)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, depth);
    Ok(())
}
