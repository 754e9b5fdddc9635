//! `keel_solve::pypi_location`: where a lock read back from disk says each PyPI package lies.
//! A relative path is joined onto the lock's folder (not the current one), and a path that
//! would climb out of it is refused naming the lock and the package.

use std::path::Path;
use std::str::FromStr as _;

use keel_solve::{SolveError, pypi_location, read_lock};
use rattler_conda_types::Subdir;
use rattler_lock::{
    DEFAULT_ENVIRONMENT_NAME, LockFile, PlatformData, PlatformName, PypiDistributionData,
    PypiPackageData, UrlOrPath, Verbatim,
};

fn wheel(name: &str, location: UrlOrPath) -> PypiPackageData {
    PypiPackageData::Distribution(Box::new(PypiDistributionData {
        name: pep508_rs::PackageName::from_str(name).unwrap(),
        version: pep440_rs::Version::from_str("1.0").unwrap(),
        location: Verbatim::new(location),
        index_url: None,
        hash: None,
        requires_dist: Vec::new(),
        requires_python: None,
    }))
}

/// Writes a lock holding `packages` for linux-64 into `dir/sub/keel.lock` and reads it back
/// through [`read_lock`], as keel-prefix does.
fn written_and_read(dir: &Path, packages: Vec<PypiPackageData>) -> (std::path::PathBuf, LockFile) {
    let mut builder = LockFile::builder()
        .with_platforms(vec![PlatformData {
            name: PlatformName::from(&Subdir::Linux64),
            subdir: Subdir::Linux64,
            virtual_packages: Vec::new(),
        }])
        .unwrap();
    builder
        .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, "linux-64")
        .unwrap();
    for package in packages {
        builder
            .add_pypi_package(DEFAULT_ENVIRONMENT_NAME, "linux-64", package)
            .unwrap();
    }
    let path = dir.join("sub/keel.lock");
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(&path, builder.finish().render_to_string().unwrap()).unwrap();
    let (lock, _) = read_lock(&path).unwrap().unwrap();
    (path, lock)
}

fn packages(lock: &LockFile) -> Vec<PypiPackageData> {
    let environment = lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    environment
        .pypi_packages(platform)
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

#[test]
fn paths_are_joined_onto_the_locks_folder_and_urls_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lock) = written_and_read(
        dir.path(),
        vec![
            wheel(
                "relative",
                UrlOrPath::Path("wheels/relative-1.0-py3-none-any.whl".into()),
            ),
            wheel(
                "absolute",
                UrlOrPath::Path("/opt/wheels/absolute-1.0-py3-none-any.whl".into()),
            ),
            wheel(
                "remote",
                UrlOrPath::Url(
                    url::Url::parse("https://files.example.org/remote-1.0-py3-none-any.whl")
                        .unwrap(),
                ),
            ),
        ],
    );
    let mut found: Vec<(String, String)> = packages(&lock)
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                pypi_location(&path, p).unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let folder = url::Url::from_directory_path(dir.path().join("sub")).unwrap();
    assert_eq!(
        found,
        [
            (
                "absolute".to_owned(),
                "file:///opt/wheels/absolute-1.0-py3-none-any.whl".to_owned()
            ),
            (
                "relative".to_owned(),
                format!("{folder}wheels/relative-1.0-py3-none-any.whl")
            ),
            (
                "remote".to_owned(),
                "https://files.example.org/remote-1.0-py3-none-any.whl".to_owned()
            ),
        ]
    );
}

#[test]
fn a_path_that_climbs_out_of_the_locks_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lock) = written_and_read(
        dir.path(),
        vec![wheel(
            "climber",
            UrlOrPath::Path("../../outside/climber-1.0-py3-none-any.whl".into()),
        )],
    );
    let error = pypi_location(&path, &packages(&lock)[0]).unwrap_err();
    assert!(
        matches!(&error, SolveError::LockedLocation { package, .. } if package == "climber"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(".."), "{message}");
}
