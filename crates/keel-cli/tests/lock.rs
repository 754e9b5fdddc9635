//! `keel lock` end to end on the real conda-forge python 3.9 snapshot, offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{keel_in, text};

fn shared_data() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    )
}

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap()
}

fn project(dependencies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let channel = shared_data().join("repodata/conda-forge-py39");
    assert!(channel.is_dir(), "{}", channel.display());
    fs_err::write(
        dir.path().join("environment.yml"),
        format!(
            "name: py39\nchannels:\n  - {}\n  - nodefaults\ndependencies:\n{dependencies}platforms: [linux-64, osx-arm64]\n",
            channel.display()
        ),
    )
    .unwrap();
    dir
}

#[test]
fn lock_writes_the_lock_and_explicit_lists_then_check_tracks_the_file() {
    let project = project("  - python=3.9\n  - pip\n");
    let dir = project.path();
    let output = keel(dir, &["lock", "--explicit", "explicit"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("PLATFORM") && stdout.contains("CONDA  PYPI"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote keel.lock"), "{stdout}");
    let lock = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    assert!(lock.contains("# keel-inputs-sha256: "));
    assert!(rattler_lock::LockFile::from_path(&dir.join("keel.lock")).is_ok());
    let explicit = fs_err::read_to_string(dir.join("explicit/explicit-osx-arm64.txt")).unwrap();
    assert!(explicit.contains("@EXPLICIT") && explicit.contains("/osx-arm64/python-3.9"));

    // Unchanged: up to date, and re-locking rewrites the same bytes.
    assert_eq!(keel(dir, &["lock", "--check"]).status.code(), Some(0));
    assert_eq!(keel(dir, &["lock"]).status.code(), Some(0));
    assert_eq!(fs_err::read_to_string(dir.join("keel.lock")).unwrap(), lock);

    // A virtual package the lock was not solved with makes it stale.
    let check = keel(
        dir,
        &[
            "lock",
            "--check",
            "--virtual-package",
            "linux-64:__cuda=12.4",
        ],
    );
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("__cuda=12.4"));

    // The file changes: stale, exit 1, and JSON says why.
    let env = dir.join("environment.yml");
    let changed = fs_err::read_to_string(&env)
        .unwrap()
        .replace("python=3.9", "python=3.9.18");
    fs_err::write(&env, changed).unwrap();
    let check = keel(dir, &["lock", "--check", "--json"]);
    assert_eq!(check.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(json["fresh"], false);
}

#[test]
fn lock_json_reports_platforms_and_virtual_packages() {
    let project = project("  - python=3.9\n");
    let output = keel(
        project.path(),
        &[
            "lock",
            "--json",
            "--virtual-package",
            "linux-64:__glibc=2.28",
            "-o",
            "out/env.lock",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["lock"], "out/env.lock");
    let linux = &json["platforms"][0];
    assert_eq!(linux["platform"], "linux-64");
    assert!(
        linux["virtual_packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "__glibc=2.28=0")
    );
    assert!(project.path().join("out/env.lock").is_file());
}

#[test]
fn conda_override_cuda_reaches_the_lock() {
    let project = project("  - python=3.9\n");
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["lock", "--json", "--platform", "linux-64"])
        .current_dir(project.path())
        .env("NO_COLOR", "1")
        .env("XDG_CACHE_HOME", project.path().join("cache"))
        .env("CONDA_OVERRIDE_CUDA", "12.2")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let virtual_packages = json["platforms"][0]["virtual_packages"].as_array().unwrap();
    assert!(
        virtual_packages.iter().any(|v| v == "__cuda=12.2=0"),
        "{virtual_packages:?}"
    );
}

#[test]
fn unsolvable_points_at_the_spec_line() {
    let project = project("  - python=3.9\n  - numpy\n");
    let output = keel(project.path(), &["lock"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot be solved for linux-64"), "{stderr}");
    assert!(stderr.contains("requested here"), "{stderr}");
    assert!(stderr.contains("- numpy"), "{stderr}");
    assert!(!project.path().join("keel.lock").exists());
}

#[test]
fn a_failed_export_writes_nothing() {
    let project = project("  - python=3.9\n");
    // The snapshot's records are local paths, which conda-lock.yml cannot hold.
    let output = keel(project.path(), &["lock", "--conda-lock", "conda-lock.yml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("conda-lock"),
        "{}",
        text(&output.stderr)
    );
    assert!(!project.path().join("keel.lock").exists());
    assert!(!project.path().join("conda-lock.yml").exists());
}

#[test]
fn bad_arguments_and_a_missing_lock_are_input_errors() {
    let project = project("  - python=3.9\n");
    let output = keel(project.path(), &["lock", "--platform", "linux-65"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("linux-65"));
    let output = keel(project.path(), &["lock", "--virtual-package", "cuda=12"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("`__`"),
        "{}",
        text(&output.stderr)
    );
    let output = keel(project.path(), &["lock", "--check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("no lock at"),
        "{}",
        text(&output.stderr)
    );
}
