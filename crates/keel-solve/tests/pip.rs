//! The `pip:` section: resolved by uv against the Python the conda solve picked, from a local
//! `--find-links` folder of wheels this test builds; and, without uv, exact pins as given.

use std::path::{Path, PathBuf};

use keel_test_support::wheel;

use keel_solve::{LockOptions, SolveError, Uv, lock};
use rattler_conda_types::Subdir;
use wheel::build_wheel;

fn py39_channel() -> PathBuf {
    keel_test_support::test_data().join("repodata/conda-forge-py39")
}

fn project(pip_lines: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    fs_err::create_dir_all(&wheels).unwrap();
    build_wheel(&wheels, "alpha", "1.0.0", &["beta>=2"]);
    build_wheel(&wheels, "alpha", "1.1.0", &["beta>=2"]);
    build_wheel(&wheels, "beta", "2.0.0", &[]);
    let env = dir.path().join("environment.yml");
    fs_err::write(
        &env,
        format!(
            "channels: [{}]\ndependencies:\n  - python=3.9\n  - pip\n  - pip:\n{pip_lines}",
            py39_channel().display()
        ),
    )
    .unwrap();
    (dir, env)
}

fn options(dir: &Path, uv: Uv) -> LockOptions {
    LockOptions {
        platforms: vec![Subdir::Linux64],
        cache_dir: dir.join("cache"),
        uv,
        ..LockOptions::default()
    }
}

fn pypi(locked: &keel_solve::Locked) -> Vec<(String, String, bool)> {
    let environment = locked.lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    environment
        .pypi_packages(platform)
        .unwrap()
        .filter_map(|p| p.as_wheel().cloned())
        .map(|p| (p.name.to_string(), p.version.to_string(), p.hash.is_some()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn uv_resolves_the_pip_section_against_the_solved_python() {
    let uv = keel_test_support::tool("uv");
    let (dir, env) =
        project("      - --find-links ./wheels\n      - --no-index\n      - alpha>=1\n");
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let locked = lock(&spec, &env, &options(dir.path(), Uv::Path(uv)), None)
        .await
        .unwrap();
    let mut packages = pypi(&locked);
    packages.sort();
    assert_eq!(
        packages,
        [
            ("alpha".to_owned(), "1.1.0".to_owned(), true),
            ("beta".to_owned(), "2.0.0".to_owned(), true)
        ]
    );
    assert_eq!(locked.platforms[0].pypi_packages, 2);
    // The lock, pip packages included, reads back with rattler_lock.
    let path = dir.path().join("keel.lock");
    fs_err::write(&path, &locked.text).unwrap();
    let (read_back, _) = keel_solve::read_lock(&path).unwrap().unwrap();
    let environment = read_back.default_environment().unwrap();
    assert_eq!(
        environment
            .pypi_packages(environment.platforms().next().unwrap())
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uv_failure_is_reported_with_what_uv_said() {
    let uv = keel_test_support::tool("uv");
    let (dir, env) =
        project("      - --find-links ./wheels\n      - --no-index\n      - alpha>=5\n");
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let error = lock(&spec, &env, &options(dir.path(), Uv::Path(uv)), None)
        .await
        .unwrap_err();
    assert!(matches!(error, SolveError::UvFailed { .. }), "{error}");
    assert!(error.to_string().contains("alpha"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_uv_exact_pins_are_recorded_and_ranges_refused() {
    let (dir, env) = project("      - alpha==1.0.0\n      - beta==2.0.0\n");
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let locked = lock(&spec, &env, &options(dir.path(), Uv::Disabled), None)
        .await
        .unwrap();
    assert_eq!(
        pypi(&locked),
        [
            ("alpha".to_owned(), "1.0.0".to_owned(), false),
            ("beta".to_owned(), "2.0.0".to_owned(), false)
        ]
    );

    let (dir, env) = project("      - alpha==1.0.0\n      - beta>=2\n");
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let error = lock(&spec, &env, &options(dir.path(), Uv::Disabled), None)
        .await
        .unwrap_err();
    let SolveError::PipNeedsUv { line, source_line } = &error else {
        panic!("{error}");
    };
    assert_eq!((*line, source_line.as_str()), (Some(7), "beta>=2"));
    assert!(error.to_string().contains("pip install uv"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pip_line_pip_refuses_stops_the_lock() {
    let (dir, env) = project("      - jupyterlab=1.0.0\n");
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let error = lock(&spec, &env, &options(dir.path(), Uv::Disabled), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SolveError::PipLine { line: Some(6), .. }),
        "{error}"
    );
}
