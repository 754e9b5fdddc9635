//! The lock in the formats other tools read: conda's `@EXPLICIT` lists and conda-lock's
//! `conda-lock.yml`.

use std::collections::BTreeMap;

use rattler_conda_types::{PackageRecord, RepoDataRecord, Subdir};
use rattler_lock::conda_lock::ExportOptions;
use rattler_lock::{DEFAULT_ENVIRONMENT_NAME, LockFile, PlatformData};

use crate::SolveError;
use crate::error::Redacted;
use crate::redact::{redact_conda, redact_pypi, redact_template, redact_url};

/// The `@EXPLICIT` list of one platform of a lock (`conda create --file`), packages in
/// installation order, each URL with its md5 (or sha256 where the lock has no md5) so that
/// conda checks what it downloads. `None` when the lock has no such platform.
pub fn explicit(lock: &LockFile, platform: Subdir) -> Result<Option<String>, SolveError> {
    let Some(environment) = lock.default_environment() else {
        return Ok(None);
    };
    let Some(lock_platform) = environment.platforms().find(|p| p.subdir() == platform) else {
        return Ok(None);
    };
    let records: Vec<RepoDataRecord> = environment
        .conda_repodata_records(lock_platform)
        .map_err(|error| SolveError::LockedRecord(Redacted::urls(&error)))?
        .unwrap_or_default();
    let records = PackageRecord::sort_topologically(records);
    let mut out = format!("# platform: {platform}\n@EXPLICIT\n");
    for record in records {
        // A lock written elsewhere may hold credentials; the list never does.
        let mut url = redact_url(&record.url);
        if let Some(md5) = record.package_record.md5 {
            url.set_fragment(Some(&hex::encode(md5)));
        } else if let Some(sha256) = record.package_record.sha256 {
            url.set_fragment(Some(&format!("sha256:{}", hex::encode(sha256))));
        }
        out.push_str(url.as_str());
        out.push('\n');
    }
    Ok(Some(out))
}

/// The lock as conda-lock's `conda-lock.yml` (CEP 37), for users of conda-lock. `source` is
/// the environment file's name; `inputs_hash` is recorded as each platform's content hash.
/// CEP 37 has no place for virtual packages, so they are left out of the export (they stay in
/// keel's lock).
pub fn conda_lock_yml(
    lock: &LockFile,
    source: &str,
    inputs_hash: &str,
) -> Result<String, SolveError> {
    let lock = without_virtual_packages(lock)?;
    let Some(environment) = lock.default_environment() else {
        return Ok(String::new());
    };
    let content_hash: BTreeMap<String, String> = environment
        .platforms()
        .map(|p| (p.subdir().as_str().to_owned(), inputs_hash.to_owned()))
        .collect();
    let options = ExportOptions {
        sources: vec![source.to_owned()],
        content_hash: Some(content_hash),
    };
    let cep = environment
        .to_conda_lock(&options)
        .map_err(|e| SolveError::CondaLock(Redacted::urls(&e)))?;
    cep.to_yaml()
        .map_err(|e| SolveError::CondaLock(Redacted::urls(&e)))
}

/// The same lock with no virtual packages recorded on its platforms, and every channel and
/// package URL through [`redact_url`] (a lock written elsewhere may hold credentials).
fn without_virtual_packages(lock: &LockFile) -> Result<LockFile, SolveError> {
    let Some(environment) = lock.default_environment() else {
        return Ok(lock.clone());
    };
    let platforms = lock
        .platforms()
        .map(|p| PlatformData {
            name: p.name().clone(),
            subdir: p.subdir(),
            virtual_packages: Vec::new(),
        })
        .collect();
    let mut builder = LockFile::builder()
        .with_platforms(platforms)
        .map_err(SolveError::Lock)?;
    builder.set_channels(
        DEFAULT_ENVIRONMENT_NAME,
        environment
            .channels()
            .iter()
            .map(|channel| rattler_lock::Channel {
                url: redact_template(&channel.url),
                used_env_vars: channel.used_env_vars.clone(),
            }),
    );
    builder.set_options(
        DEFAULT_ENVIRONMENT_NAME,
        environment.solve_options().clone(),
    );
    for (platform, packages) in environment.conda_packages_by_platform() {
        builder
            .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, platform.name())
            .map_err(SolveError::Lock)?;
        for package in packages {
            builder
                .add_conda_package(
                    DEFAULT_ENVIRONMENT_NAME,
                    platform.name(),
                    redact_conda(package.clone()),
                )
                .map_err(SolveError::Lock)?;
        }
    }
    for (platform, packages) in environment.pypi_packages_by_platform() {
        builder
            .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, platform.name())
            .map_err(SolveError::Lock)?;
        for package in packages {
            builder
                .add_pypi_package(
                    DEFAULT_ENVIRONMENT_NAME,
                    platform.name(),
                    redact_pypi(package.clone()),
                )
                .map_err(SolveError::Lock)?;
        }
    }
    if let Some(indexes) = environment.pypi_indexes() {
        let mut indexes = indexes.clone();
        indexes.indexes = indexes.indexes.iter().map(redact_url).collect();
        indexes.find_links = indexes
            .find_links
            .into_iter()
            .map(|link| match link {
                rattler_lock::FindLinksUrlOrPath::Url(url) => {
                    rattler_lock::FindLinksUrlOrPath::Url(redact_url(&url))
                }
                path => path,
            })
            .collect();
        builder.set_pypi_indexes(DEFAULT_ENVIRONMENT_NAME, indexes);
    }
    Ok(builder.finish())
}
