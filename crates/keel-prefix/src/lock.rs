//! What a keel lock pins for one platform.

use std::path::Path;

use rattler_conda_types::{RepoDataRecord, Subdir};
use rattler_lock::{PypiPackageData, UrlOrPath};

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
    /// The requirement line that installs exactly this package: `name @ URL` for a file (a
    /// local path as a `file://` URL) or `name==version` for an index pin, with
    /// `--hash=sha256:...` when the lock has the file's hash.
    #[serde(skip)]
    pub requirement: String,
    /// The lock has the file's sha256.
    #[serde(skip)]
    pub hashed: bool,
    /// The index the package comes from, when the lock records one.
    #[serde(skip)]
    pub index: Option<String>,
}

/// Whether a URL names a distribution file (not an index page).
fn is_distribution(path: &str) -> bool {
    [".whl", ".tar.gz", ".zip", ".tar.bz2"]
        .iter()
        .any(|extension| path.ends_with(extension))
}

/// What `lock` pins of one PyPI package; its file or source tree is placed by keel-solve's
/// reader ([`keel_solve::pypi_location`]), which checks a path before joining it.
fn locked_pypi(package: &PypiPackageData, lock: &Path) -> Result<LockedPypi, PrefixError> {
    let name = package.name().to_string();
    let version = package.version().map(ToString::to_string);
    let location = || {
        keel_solve::pypi_location(lock, package)
            .map_err(|source| PrefixError::Lock(Box::new(source)))
    };
    let (target, hash, index) = match package {
        PypiPackageData::Distribution(data) => {
            let target = match &*data.location {
                UrlOrPath::Url(url) if is_distribution(url.path()) => Some(url.to_string()),
                // A git package: the commit the lock pins (`git+URL@COMMIT`).
                UrlOrPath::Url(url) if url.scheme().starts_with("git+") => {
                    Some(keel_solve::pip_url(url))
                }
                UrlOrPath::Url(_) => None,
                UrlOrPath::Path(_) => Some(location()?.to_string()),
            };
            (
                target,
                data.hash.as_ref().and_then(|h| h.sha256()).map(hex::encode),
                data.index_url.as_ref().map(ToString::to_string),
            )
        }
        PypiPackageData::Source(_) => (Some(location()?.to_string()), None, None),
    };
    let mut requirement = match (&target, &version) {
        (Some(url), _) => format!("{name} @ {url}"),
        (None, Some(version)) => format!("{name}=={version}"),
        (None, None) => name.clone(),
    };
    if let Some(hash) = &hash {
        requirement.push_str(&format!(" --hash=sha256:{hash}"));
    }
    Ok(LockedPypi {
        name,
        version,
        requirement,
        hashed: hash.is_some(),
        index: index.filter(|_| target.is_none()),
    })
}

/// Reads the packages `lock` pins for `environment` (pixi's name for the default one is
/// `default`) on `platform`.
pub fn locked_packages(
    lock: &Path,
    environment: &str,
    platform: Subdir,
) -> Result<LockedPlatform, PrefixError> {
    // keel-solve's reader is the one every lock goes through: a regular file of bounded size,
    // and every package location checked before anything fetches, joins or records it.
    let file = match keel_solve::read_lock(lock) {
        Ok(Some((file, _))) => file,
        Ok(None) => {
            return Err(PrefixError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the lock {} does not exist", lock.display()),
            )));
        }
        Err(source) => return Err(PrefixError::Lock(Box::new(source))),
    };
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
        .map(|package| locked_pypi(package, lock))
        .collect::<Result<_, _>>()?;
    pypi.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(LockedPlatform { conda, pypi })
}
