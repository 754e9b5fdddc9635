//! Loading repodata and solving, one platform at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::MultiProgress;
use keel_spec::EnvironmentSpec;
use rattler_conda_types::{GenericVirtualPackage, MatchSpec, RepoDataRecord, Subdir};
use rattler_lock::LockFile;
use rattler_repodata_gateway::{Gateway, IndicatifReporter};
use rattler_solve::{ChannelPriority, ChannelRepoData, SolverImpl, SolverTask};

use crate::SolveError;
use crate::channels::{ResolvedChannel, resolve_channels};
use crate::error::SpecLine;
use crate::lockfile::{self, Locked};
use crate::pypi::{self, Uv};
use crate::virtual_packages::{VirtualPackageOverridesByPlatform, virtual_packages_for};

/// How to lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Platforms to lock for. Empty: the file's `platforms:`, or else this machine's platform.
    pub platforms: Vec<Subdir>,
    /// Virtual packages given on the command line.
    pub virtual_packages: VirtualPackageOverridesByPlatform,
    /// Where the gateway caches remote repodata.
    pub cache_dir: PathBuf,
    /// Packages to move to their newest allowed version; every other package keeps its pin
    /// from the previous lock where the specs still allow it.
    pub update: Vec<String>,
    /// `strict` (conda's `channel_priority: strict`, the default) or `disabled`.
    pub channel_priority: ChannelPriority,
    /// Draw progress bars here while repodata loads.
    pub progress: Option<MultiProgress>,
    /// Which uv resolves pip sections.
    pub uv: Uv,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            platforms: Vec::new(),
            virtual_packages: VirtualPackageOverridesByPlatform::default(),
            cache_dir: std::env::temp_dir().join("keel-repodata-cache"),
            update: Vec::new(),
            channel_priority: ChannelPriority::Strict,
            progress: None,
            uv: Uv::Auto,
        }
    }
}

/// What one platform's solve used and found.
#[derive(Debug, Clone)]
pub(crate) struct PlatformSolve {
    pub(crate) platform: Subdir,
    pub(crate) virtual_packages: Vec<GenericVirtualPackage>,
    pub(crate) records: Vec<RepoDataRecord>,
    pub(crate) pypi: Vec<rattler_lock::PypiDistributionData>,
}

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
/// packages named in [`LockOptions::update`] move.
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
    let gateway = Gateway::builder()
        .with_cache_dir(options.cache_dir.clone())
        .finish();

    let mut solves = Vec::new();
    for platform in &platforms {
        let specs = spec.match_specs_for(Some(*platform));
        let virtual_packages = virtual_packages_for(*platform, &options.virtual_packages)?;
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
        )
        .await?;
        let pypi = pypi::resolve(
            &pypi::entries_for(spec, *platform),
            &base_dir,
            *platform,
            &records,
            &virtual_packages,
            &options.uv,
        )?;
        solves.push(PlatformSolve {
            platform: *platform,
            virtual_packages,
            records,
            pypi,
        });
    }
    lockfile::build(spec, spec_path, &channels, options, solves)
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
        .map_err(SolveError::LockedRecord)?
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
) -> Result<Vec<RepoDataRecord>, SolveError> {
    let mut query = gateway
        .query(
            channels.iter().map(|c| c.channel.clone()),
            [platform, Subdir::NoArch],
            specs.iter().cloned(),
        )
        .recursive(true);
    if let Some(progress) = &options.progress {
        query = query.with_reporter(
            IndicatifReporter::builder()
                .with_multi_progress(progress.clone())
                .clear_when_done(true)
                .finish(),
        );
    }
    let output = query
        .execute()
        .await
        .map_err(|source| SolveError::Repodata {
            platform,
            source: Box::new(source),
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
            let explanation = messages.join("\n");
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
