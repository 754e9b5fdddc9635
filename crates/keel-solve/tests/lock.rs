//! `keel_solve::lock` on the real repodata snapshots in `test-data/repodata`, offline.

use std::path::{Path, PathBuf};

use keel_solve::{LockOptions, SolveError, explicit, inputs_hash, lock, read_lock, recorded_hash};
use rattler_conda_types::Subdir;
use rattler_lock::LockFile;

fn repodata() -> PathBuf {
    keel_test_support::test_data().join("repodata")
}

/// A local channel in `dir` holding `linux-64/repodata.json` from `source` (with the
/// `"depends": null` / `"constrains": null` that rattler refuses normalised to `[]`) and an
/// empty `noarch`, as `conda index` would leave it.
fn channel_from_single_file(dir: &Path, source: &Path) -> PathBuf {
    let mut repodata: serde_json::Value =
        serde_json::from_slice(&fs_err::read(source).unwrap()).unwrap();
    for key in ["packages", "packages.conda"] {
        if let Some(packages) = repodata.get_mut(key).and_then(|p| p.as_object_mut()) {
            for record in packages.values_mut() {
                for list in ["depends", "constrains"] {
                    if record.get(list).is_some_and(serde_json::Value::is_null) {
                        record[list] = serde_json::json!([]);
                    }
                }
            }
        }
    }
    fs_err::create_dir_all(dir.join("linux-64")).unwrap();
    fs_err::create_dir_all(dir.join("noarch")).unwrap();
    fs_err::write(
        dir.join("linux-64/repodata.json"),
        serde_json::to_vec(&repodata).unwrap(),
    )
    .unwrap();
    fs_err::write(
        dir.join("noarch/repodata.json"),
        r#"{"info":{"subdir":"noarch"},"packages":{},"packages.conda":{}}"#,
    )
    .unwrap();
    dir.to_path_buf()
}

/// A copy of the conda-forge python 3.9 subset with its `metadata.base_url` moved to CEP 15's
/// `info.base_url` (where conda-forge's own repodata keeps it), so that records point at
/// conda-forge's real download URLs.
fn py39_channel(dir: &Path) -> PathBuf {
    py39_channel_served_from(dir, None)
}

/// The same, with packages served from `base` instead of conda-forge.
fn py39_channel_served_from(dir: &Path, base: Option<&str>) -> PathBuf {
    let source = repodata().join("conda-forge-py39");
    for subdir in ["linux-64", "noarch", "osx-arm64", "win-64"] {
        let mut repodata: serde_json::Value = serde_json::from_slice(
            &fs_err::read(source.join(subdir).join("repodata.json")).unwrap(),
        )
        .unwrap();
        let base = base.map_or_else(
            || {
                repodata["metadata"]["base_url"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            },
            str::to_owned,
        );
        repodata["info"] = serde_json::json!({
            "subdir": subdir,
            "base_url": format!("{base}/{subdir}/"),
        });
        repodata["repodata_version"] = serde_json::json!(2);
        fs_err::create_dir_all(dir.join(subdir)).unwrap();
        fs_err::write(
            dir.join(subdir).join("repodata.json"),
            serde_json::to_vec(&repodata).unwrap(),
        )
        .unwrap();
    }
    dir.to_path_buf()
}

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    cache: PathBuf,
}

fn env_file(text: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environment.yml");
    fs_err::write(&path, text).unwrap();
    let cache = dir.path().join("cache");
    Env {
        _dir: dir,
        path,
        cache,
    }
}

fn options(env: &Env) -> LockOptions {
    LockOptions {
        cache_dir: env.cache.clone(),
        ..LockOptions::default()
    }
}

fn versions(lock: &LockFile, platform: Subdir) -> Vec<(String, String)> {
    let environment = lock.default_environment().unwrap();
    let platform = environment
        .platforms()
        .find(|p| p.subdir() == platform)
        .unwrap();
    environment
        .conda_repodata_records(platform)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.package_record.name.as_normalized().to_owned(),
                r.package_record.version.to_string(),
            )
        })
        .collect()
}

fn version_of(lock: &LockFile, platform: Subdir, name: &str) -> String {
    versions(lock, platform)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not locked for {platform}"))
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn python39_locks_for_three_platforms_and_relocks_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let channel = py39_channel(&dir.path().join("conda-forge"));
    let env = env_file(&format!(
        "name: py39\nchannels:\n  - {}\n  - nodefaults\ndependencies:\n  - python=3.9\n  - pip\nplatforms: [linux-64, osx-arm64, win-64]\n",
        channel.display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let locked = lock(&spec, &env.path, &options(&env), None).await.unwrap();

    for platform in [Subdir::Linux64, Subdir::OsxArm64, Subdir::Win64] {
        assert!(
            version_of(&locked.lock, platform, "python").starts_with("3.9."),
            "{platform}"
        );
        assert!(
            versions(&locked.lock, platform)
                .iter()
                .any(|(n, _)| n == "pip")
        );
    }
    // Each platform's virtual packages are recorded in the lock: its baseline, whatever this
    // machine has (issue #14: a lock is a function of its declared inputs).
    let environment = locked.lock.default_environment().unwrap();
    for platform in [Subdir::Linux64, Subdir::OsxArm64, Subdir::Win64] {
        let recorded = environment
            .platforms()
            .find(|p| p.subdir() == platform)
            .unwrap()
            .virtual_packages()
            .to_vec();
        let baseline: Vec<String> = keel_solve::baseline_virtual_packages(platform)
            .iter()
            .map(keel_solve::recorded_spelling)
            .collect();
        assert_eq!(recorded, baseline, "{platform}");
        let summary = locked
            .platforms
            .iter()
            .find(|p| p.platform == platform.as_str())
            .unwrap();
        assert_eq!(summary.virtual_packages, baseline);
        assert_eq!(
            summary.virtual_packages_from,
            keel_solve::AssumedFrom::Baseline
        );
    }
    let linux = environment
        .platforms()
        .find(|p| p.subdir() == Subdir::Linux64)
        .unwrap();
    assert!(
        linux
            .virtual_packages()
            .contains(&"__glibc=2.28".to_owned())
    );

    // The written lock reads back with rattler_lock, and re-locking changes no byte.
    let lock_path = env.path.with_file_name("keel.lock");
    fs_err::write(&lock_path, &locked.text).unwrap();
    let (read_back, hash) = read_lock(&lock_path).unwrap().unwrap();
    assert_eq!(hash.as_deref(), Some(locked.inputs_hash.as_str()));
    assert_eq!(
        versions(&read_back, Subdir::Win64),
        versions(&locked.lock, Subdir::Win64)
    );
    let again = lock(&spec, &env.path, &options(&env), Some(&read_back))
        .await
        .unwrap();
    assert_eq!(again.text, locked.text);
    assert!(
        again
            .platforms
            .iter()
            .all(|p| p.virtual_packages_from == keel_solve::AssumedFrom::PreviousLock)
    );

    // The explicit list installs python with its md5 checked.
    let explicit = explicit(
        &read_back,
        Subdir::Linux64,
        env.path.parent().unwrap(),
        None,
    )
    .unwrap()
    .unwrap();
    assert!(
        explicit.contains("\n# platform: linux-64\n@EXPLICIT\n"),
        "{explicit}"
    );
    let python_line = explicit
        .lines()
        .find(|l| l.contains("/python-3.9"))
        .unwrap();
    assert!(
        python_line.starts_with("https://conda.anaconda.org/conda-forge/linux-64/python-3.9"),
        "{python_line}"
    );
    // Installation order: python comes after what it links against.
    let position = |name: &str| {
        explicit
            .lines()
            .position(|l| l.contains(&format!("/{name}-")))
            .unwrap()
    };
    assert!(position("libzlib") < position("python") || position("zlib") < position("python"));
    assert_eq!(
        python_line.split('#').nth(1).unwrap().len(),
        32,
        "{python_line}"
    );
    let conda_lock = keel_solve::conda_lock_yml(
        &read_back,
        env.path.parent().unwrap(),
        "environment.yml",
        &locked.content_hashes,
    )
    .unwrap();
    assert!(conda_lock.contains("python"), "{conda_lock}");
}

/// A channel served with a token in its URL (`/t/<token>/`): the token never reaches the lock
/// or its exports.
#[tokio::test(flavor = "multi_thread")]
async fn channel_tokens_never_reach_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let channel = py39_channel_served_from(
        &dir.path().join("private"),
        Some("https://user:hunter2@conda.example.com/t/s3cr3t-token/private"),
    );
    let env = env_file(&format!(
        "channels: [{}]\ndependencies: [python=3.9]\nplatforms: [linux-64]\n",
        channel.display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let locked = lock(&spec, &env.path, &options(&env), None).await.unwrap();
    for secret in ["s3cr3t-token", "hunter2", "user:"] {
        assert!(
            !locked.text.contains(secret),
            "{secret} leaked into the lock"
        );
        let explicit = explicit(
            &locked.lock,
            Subdir::Linux64,
            env.path.parent().unwrap(),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(
            !explicit.contains(secret),
            "{secret} leaked into the explicit list"
        );
    }
    assert!(
        locked
            .text
            .contains("https://conda.example.com/private/linux-64/python-3.9")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn numpy_solves_from_the_closed_numpy_set() {
    let dir = tempfile::tempdir().unwrap();
    let channel = channel_from_single_file(
        &dir.path().join("channel"),
        &repodata().join("conda-forge-numpy/conda-forge-numpy-linux-64.json"),
    );
    let env = env_file(&format!(
        "channels: [{}]\ndependencies: [numpy]\n",
        channel.display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let options = LockOptions {
        platforms: vec![Subdir::Linux64],
        ..options(&env)
    };
    let locked = lock(&spec, &env.path, &options, None).await.unwrap();
    assert_eq!(version_of(&locked.lock, Subdir::Linux64, "numpy"), "1.26.4");
    assert_eq!(
        version_of(&locked.lock, Subdir::Linux64, "python"),
        "3.12.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relock_keeps_pins_and_update_moves_only_the_named_package() {
    let channel = repodata().join("conda-forge-py39");
    let text = |python: &str| {
        format!(
            "channels: [{}]\ndependencies:\n  - python{python}\n  - pip\n",
            channel.display()
        )
    };
    // Lock with an old pip and python pinned low, then relax the specs.
    let env = env_file(&text("=3.9.0"));
    let options = LockOptions {
        platforms: vec![Subdir::Linux64],
        ..options(&env)
    };
    let old = keel_spec::parse_str(&text("=3.9.0"), &env.path)
        .unwrap()
        .spec;
    let first = lock(&old, &env.path, &options, None).await.unwrap();
    assert_eq!(version_of(&first.lock, Subdir::Linux64, "python"), "3.9.0");
    let first_pip = version_of(&first.lock, Subdir::Linux64, "pip");

    // The spec changes to allow any 3.9: the locked python still fits, so nothing moves.
    let relaxed = keel_spec::parse_str(&text("=3.9"), &env.path).unwrap().spec;
    let second = lock(&relaxed, &env.path, &options, Some(&first.lock))
        .await
        .unwrap();
    assert_eq!(
        versions(&second.lock, Subdir::Linux64),
        versions(&first.lock, Subdir::Linux64)
    );
    assert_ne!(second.inputs_hash, first.inputs_hash, "the spec changed");

    // `--update python` moves python (and what it must drag along), and leaves pip pinned.
    let update = LockOptions {
        update: vec!["python".to_owned()],
        ..options.clone()
    };
    let third = lock(&relaxed, &env.path, &update, Some(&second.lock))
        .await
        .unwrap();
    assert_ne!(version_of(&third.lock, Subdir::Linux64, "python"), "3.9.0");
    assert_eq!(version_of(&third.lock, Subdir::Linux64, "pip"), first_pip);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsatisfiable_names_the_spec_lines() {
    let dir = tempfile::tempdir().unwrap();
    let channel = channel_from_single_file(
        &dir.path().join("pytorch"),
        &repodata().join("pytorch-channel/linux-64/repodata.json"),
    );
    // The pytorch channel alone: pytorch needs python, numpy, mkl... from other channels.
    let env = env_file(&format!(
        "channels: [{}]\ndependencies:\n  - pytorch=2.0.1\n",
        channel.display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let mut options = LockOptions {
        platforms: vec![Subdir::Linux64],
        ..options(&env)
    };
    options.virtual_packages.add("__cuda=11.8").unwrap();
    let error = lock(&spec, &env.path, &options, None).await.unwrap_err();
    let SolveError::Unsolvable {
        explanation,
        spec_lines,
        platform,
    } = error
    else {
        panic!("expected unsolvable, got {error}");
    };
    assert_eq!(platform, Subdir::Linux64);
    assert!(
        explanation.contains("no candidates were found"),
        "{explanation}"
    );
    assert!(
        spec_lines
            .iter()
            .any(|l| l.line == Some(3) && l.source == "pytorch=2.0.1"),
        "{spec_lines:?}\n{explanation}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_without_repodata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(dir.path().join("empty/linux-64")).unwrap();
    let env = env_file(&format!(
        "channels: [{}]\ndependencies: [python]\n",
        dir.path().join("empty").display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let options = LockOptions {
        platforms: vec![Subdir::Linux64],
        ..options(&env)
    };
    let error = lock(&spec, &env.path, &options, None).await.unwrap_err();
    assert!(matches!(error, SolveError::NoRepodata { .. }), "{error}");
    let chain = error_chain(&error);
    assert!(chain.contains("empty"), "{chain}");

    // A broken repodata.json names its file.
    fs_err::create_dir_all(dir.path().join("broken/noarch")).unwrap();
    fs_err::write(
        dir.path().join("broken/noarch/repodata.json"),
        "{\"packages\": [",
    )
    .unwrap();
    let env = env_file(&format!(
        "channels: [{}]\ndependencies: [python]\n",
        dir.path().join("broken").display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let error = lock(&spec, &env.path, &options, None).await.unwrap_err();
    let chain = error_chain(&error);
    assert!(chain.contains("broken/noarch/repodata.json"), "{chain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_without_channels_says_so() {
    for text in [
        "dependencies: [python]\n",
        "channels: [nodefaults]\ndependencies: [python]\n",
    ] {
        let env = env_file(text);
        let spec = keel_spec::read_path(&env.path).unwrap().spec;
        let error = lock(&spec, &env.path, &options(&env), None)
            .await
            .unwrap_err();
        assert!(matches!(error, SolveError::NoChannels), "{error}");
    }
}

#[test]
fn the_hash_follows_the_inputs() {
    let spec = |deps: &str| {
        keel_spec::parse_str(
            &format!("channels: [conda-forge]\ndependencies: [{deps}]"),
            "e.yml",
        )
        .unwrap()
        .spec
    };
    let options = LockOptions::default();
    let platforms = [Subdir::Linux64];
    let a = inputs_hash(&spec("python=3.10"), &platforms, &options);
    assert_eq!(a, inputs_hash(&spec("python=3.10"), &platforms, &options));
    assert_ne!(a, inputs_hash(&spec("python=3.11"), &platforms, &options));
    assert_ne!(
        a,
        inputs_hash(&spec("python=3.10"), &[Subdir::OsxArm64], &options)
    );
    // Virtual packages are recorded in the lock, not hashed: a check on a GPU node and on a
    // login node agree.
    let mut cuda = LockOptions::default();
    cuda.virtual_packages.add("__cuda=12.4").unwrap();
    assert_eq!(a, inputs_hash(&spec("python=3.10"), &platforms, &cuda));
    let flexible = LockOptions {
        channel_priority: keel_solve::ChannelPriority::Disabled,
        ..LockOptions::default()
    };
    assert_ne!(a, inputs_hash(&spec("python=3.10"), &platforms, &flexible));
    assert_eq!(
        recorded_hash(&format!("# x\n# keel-inputs-sha256: {a}\nversion: 6\n")),
        Some(a)
    );
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Regression: the conda-lock export once rebuilt the lock from its conda packages only, so
/// the `pip:` section's packages vanished from `conda-lock.yml`.
#[tokio::test(flavor = "multi_thread")]
async fn conda_lock_export_keeps_pip_packages() {
    let dir = tempfile::tempdir().unwrap();
    let channel = py39_channel(&dir.path().join("conda-forge"));
    let env = env_file(&format!(
        "channels: [{}]\ndependencies:\n  - python=3.9\n  - pip\n  - pip:\n    - alpha==1.0.0\n    - beta==2.0.0\nplatforms: [linux-64]\n",
        channel.display()
    ));
    let spec = keel_spec::read_path(&env.path).unwrap().spec;
    let options = LockOptions {
        uv: keel_solve::Uv::Disabled,
        ..options(&env)
    };
    let locked = lock(&spec, &env.path, &options, None).await.unwrap();
    let yml = keel_solve::conda_lock_yml(
        &locked.lock,
        env.path.parent().unwrap(),
        "environment.yml",
        &locked.content_hashes,
    )
    .unwrap();
    let exported: serde_yaml::Value = serde_yaml::from_str(&yml).unwrap();
    let pip: Vec<(&str, &str)> = exported["package"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|p| p["manager"] == "pip")
        .map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(pip, [("alpha", "1.0.0"), ("beta", "2.0.0")], "{yml}");
}
