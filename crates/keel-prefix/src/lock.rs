//! What a keel lock pins for one platform.

use std::path::Path;

use rattler_conda_types::{RepoDataRecord, Subdir};
use rattler_lock::LockFile;

use crate::PrefixError;

/// The packages a lock pins for one environment and platform.
#[derive(Debug, Clone)]
pub struct LockedPlatform {
    /// The conda packages, as repodata records (URL, sha256, md5, ...).
    pub conda: Vec<RepoDataRecord>,
    /// The PyPI packages from the `pip:` section: name and version.
    pub pypi: Vec<LockedPypi>,
}

/// A PyPI package the lock pins.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockedPypi {
    /// The package name, normalized as PEP 503 says.
    pub name: String,
    /// The pinned version (`None` for a local source tree).
    pub version: Option<String>,
}

/// Reads the packages `lock` pins for `environment` (pixi's name for the default one is
/// `default`) on `platform`.
pub fn locked_packages(
    lock: &Path,
    environment: &str,
    platform: Subdir,
) -> Result<LockedPlatform, PrefixError> {
    let file = LockFile::from_path(lock).map_err(|source| PrefixError::ReadLock {
        path: lock.to_path_buf(),
        source: Box::new(source),
    })?;
    let env = file
        .environment(environment)
        .ok_or_else(|| PrefixError::NoEnvironment {
            path: lock.to_path_buf(),
            name: environment.to_string(),
        })?;
    let Some(locked_platform) = env.platforms().find(|p| p.subdir() == platform) else {
        let locked: Vec<String> = env.platforms().map(|p| p.subdir().to_string()).collect();
        return Err(PrefixError::PlatformNotLocked {
            path: lock.to_path_buf(),
            platform: platform.to_string(),
            locked: if locked.is_empty() {
                "none".to_string()
            } else {
                locked.join(", ")
            },
        });
    };
    let mut conda = env
        .conda_repodata_records(locked_platform)
        .map_err(|source| PrefixError::LockRecord {
            path: lock.to_path_buf(),
            source,
        })?
        .unwrap_or_default();
    conda.sort_by(|a, b| {
        a.package_record
            .name
            .as_normalized()
            .cmp(b.package_record.name.as_normalized())
    });
    let mut pypi: Vec<LockedPypi> = env
        .pypi_packages(locked_platform)
        .into_iter()
        .flatten()
        .map(|package| LockedPypi {
            name: package.name().to_string(),
            version: package.version().map(ToString::to_string),
        })
        .collect();
    pypi.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(LockedPlatform { conda, pypi })
}
