//! `keel lock` end to end on the real conda-forge python 3.9 snapshot, offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{keel_in, text};
use http::{Credentials, Server};
use keel_test_support::http;

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap()
}

fn project(dependencies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let channel = keel_test_support::test_data().join("repodata/conda-forge-py39");
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
            .any(|v| v == "__glibc=2.28")
    );
    assert!(project.path().join("out/env.lock").is_file());
}

/// What the lock records for `platform` (the JSON report's `virtual_packages`) and where it
/// came from (`virtual_packages_from`).
fn assumed(output: &Output, platform: &str) -> (Vec<String>, String) {
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let summary = json["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["platform"] == platform)
        .unwrap_or_else(|| panic!("no {platform} in {json}"));
    let packages = summary["virtual_packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (
        packages,
        summary["virtual_packages_from"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// `keel lock` in `dir` with `env` set on the process (another node's detection: every
/// CONDA_OVERRIDE_* of the test's own environment is removed first).
fn keel_on_node(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = keel_in(dir);
    command.args(args).env("XDG_CACHE_HOME", dir.join("cache"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CONDA_OVERRIDE_") {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// A login node: an old glibc, no GPU.
const LOGIN_NODE: &[(&str, &str)] = &[
    ("CONDA_OVERRIDE_GLIBC", "2.17"),
    ("CONDA_OVERRIDE_LINUX", "3.10"),
    ("CONDA_OVERRIDE_CUDA", ""),
    ("CONDA_OVERRIDE_ARCHSPEC", "haswell"),
];
/// A GPU node: a newer glibc and kernel, CUDA 12.4 on compute capability 9.0.
const GPU_NODE: &[(&str, &str)] = &[
    ("CONDA_OVERRIDE_GLIBC", "2.39"),
    ("CONDA_OVERRIDE_LINUX", "6.8"),
    ("CONDA_OVERRIDE_CUDA", "12.4"),
    ("CONDA_OVERRIDE_CUDA_ARCH", "9.0"),
    ("CONDA_OVERRIDE_ARCHSPEC", "zen4"),
];

/// Issue #14: a lock is a function of its declared inputs. The same file locked on a login
/// node and on a GPU node (their detection set apart through CONDA_OVERRIDE_*), and re-locked
/// on the other one, gives the same bytes: each platform's baseline, not either node.
#[test]
fn the_same_file_locks_to_the_same_bytes_on_any_node() {
    let login = project("  - python=3.9\n");
    let gpu = project("  - python=3.9\n");
    let on_login = keel_on_node(login.path(), LOGIN_NODE, &["lock"]);
    assert_eq!(
        on_login.status.code(),
        Some(0),
        "{}",
        text(&on_login.stderr)
    );
    let on_gpu = keel_on_node(gpu.path(), GPU_NODE, &["lock"]);
    assert_eq!(on_gpu.status.code(), Some(0), "{}", text(&on_gpu.stderr));
    let lock = fs_err::read(login.path().join("keel.lock")).unwrap();
    assert_eq!(
        text(&lock),
        text(&fs_err::read(gpu.path().join("keel.lock")).unwrap())
    );
    let written = text(&lock);
    // pixi's spelling of the baselines, the values its satisfiability check leaves out.
    for baseline in [
        "- __glibc=2.28\n",
        "- __linux=4.18\n",
        "- __archspec=0=x86_64\n",
        "- __unix=0=0\n",
        "- __osx=13.0\n",
    ] {
        assert!(written.contains(baseline), "{baseline} not in\n{written}");
    }
    for node_value in [
        "__glibc=2.17",
        "__glibc=2.39",
        "__linux=3.10",
        "__linux=6.8",
        "haswell",
        "zen4",
        "__cuda",
    ] {
        assert!(!written.contains(node_value), "{node_value} in\n{written}");
    }

    // Re-locked on the other node: not a byte changes, and --check agrees there.
    let again = keel_on_node(login.path(), GPU_NODE, &["lock"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(fs_err::read(login.path().join("keel.lock")).unwrap(), lock);
    let check = keel_on_node(gpu.path(), LOGIN_NODE, &["lock", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
}

/// A `--virtual-package` value stays assumed when the file is re-locked without it, on any
/// node; a value given again replaces the platform's set, and `--check` follows the same rule.
#[test]
fn a_relock_keeps_the_virtual_packages_given_before() {
    let project = project("  - python=3.9\n");
    let dir = project.path();
    let given = keel_on_node(
        dir,
        LOGIN_NODE,
        &[
            "lock",
            "--json",
            "--virtual-package",
            "linux-64:__cuda=12.4",
        ],
    );
    let (linux, from) = assumed(&given, "linux-64");
    assert!(linux.contains(&"__cuda=12.4".to_owned()), "{linux:?}");
    assert!(linux.contains(&"__glibc=2.28".to_owned()), "{linux:?}");
    assert_eq!(from, "command_line");
    let (osx, from) = assumed(&given, "osx-arm64");
    assert!(osx.iter().all(|p| !p.starts_with("__cuda")), "{osx:?}");
    assert_eq!(from, "baseline");
    let lock = fs_err::read(dir.join("keel.lock")).unwrap();

    // Without the flag, on another node: the previous lock's set, the same bytes.
    let kept = keel_on_node(dir, GPU_NODE, &["lock", "--json"]);
    let (kept_linux, from) = assumed(&kept, "linux-64");
    assert_eq!(kept_linux, linux);
    assert_eq!(from, "previous_lock");
    assert_eq!(fs_err::read(dir.join("keel.lock")).unwrap(), lock);
    let check = keel_on_node(dir, GPU_NODE, &["lock", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    let check = keel(
        dir,
        &[
            "lock",
            "--check",
            "--virtual-package",
            "linux-64:__cuda=12.4",
        ],
    );
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));

    // Another value: stale before, and the new value replaces the old after.
    let check = keel(
        dir,
        &[
            "lock",
            "--check",
            "--virtual-package",
            "linux-64:__cuda=12.2",
        ],
    );
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    assert!(
        text(&check.stdout)
            .contains("linux-64 was solved without __cuda=12.2 and with __cuda=12.4"),
        "{}",
        text(&check.stdout)
    );
    let replaced = keel_on_node(
        dir,
        LOGIN_NODE,
        &[
            "lock",
            "--json",
            "--virtual-package",
            "linux-64:__cuda=12.2",
        ],
    );
    let (linux, _) = assumed(&replaced, "linux-64");
    assert!(linux.contains(&"__cuda=12.2".to_owned()), "{linux:?}");
    assert!(!linux.contains(&"__cuda=12.4".to_owned()), "{linux:?}");
}

/// A project on this machine's own platform, whose one package has no dependencies.
fn own_platform_project() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let package = keel_test_support::channel::Package {
        name: "hello",
        version: "1.0",
        depends: vec![],
        files: vec![(
            "share/hello/README",
            keel_test_support::channel::Content::Text("hello\n".into()),
        )],
        tar_bz2: false,
    };
    let channel = keel_test_support::channel::build_channel(&dir.path().join("chan"), &[package]);
    let platform = rattler_conda_types::Subdir::current().unwrap().to_string();
    fs_err::write(
        dir.path().join("environment.yml"),
        format!(
            "channels:\n  - {}\n  - nodefaults\ndependencies:\n  - hello\nplatforms: [{platform}]\n",
            channel.display()
        ),
    )
    .unwrap();
    (dir, platform)
}

/// `--detect` locks for this node, CONDA_OVERRIDE_* first, as conda reads them; without it the
/// same overrides reach nothing.
#[test]
fn detect_records_this_nodes_virtual_packages() {
    let (project, platform) = own_platform_project();
    let dir = project.path();
    let node = [
        ("CONDA_OVERRIDE_CUDA", "12.2"),
        ("CONDA_OVERRIDE_GLIBC", "2.31"),
    ];
    let (plain, from) = assumed(&keel_on_node(dir, &node, &["lock", "--json"]), &platform);
    assert_eq!(from, "baseline");
    assert!(plain.iter().all(|p| !p.starts_with("__cuda")), "{plain:?}");

    let detected = keel_on_node(dir, &node, &["lock", "--json", "--detect"]);
    let (packages, from) = assumed(&detected, &platform);
    assert_eq!(from, "detected");
    assert!(
        packages.contains(&"__cuda=12.2=0".to_owned()),
        "{packages:?}"
    );
    if platform.starts_with("linux-") {
        assert!(
            packages.contains(&"__glibc=2.31=0".to_owned()),
            "{packages:?}"
        );
    }
    let written = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    assert!(written.contains("__cuda=12.2=0"), "{written}");
    // --check --detect compares this node with the lock: another CUDA is stale.
    let check = keel_on_node(
        dir,
        &[
            ("CONDA_OVERRIDE_CUDA", "12.4"),
            ("CONDA_OVERRIDE_GLIBC", "2.31"),
        ],
        &["lock", "--check", "--detect"],
    );
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    assert!(
        text(&check.stdout).contains("without __cuda=12.4=0"),
        "{}",
        text(&check.stdout)
    );
}

/// When this node has a GPU the lock does not assume (or a newer CUDA), `keel lock` says so
/// and names the flag that locks for it; a newer glibc or CPU is not worth a word.
#[test]
fn the_report_names_the_flag_that_locks_for_this_nodes_gpu() {
    let (project, platform) = own_platform_project();
    let dir = project.path();
    let gpu = [
        ("CONDA_OVERRIDE_CUDA", "12.4"),
        ("CONDA_OVERRIDE_CUDA_ARCH", "9.0"),
        ("CONDA_OVERRIDE_GLIBC", "2.39"),
    ];
    let output = keel_on_node(dir, &gpu, &["lock"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "note: this node has __cuda=12.4=0 __cuda_arch=9.0=0 that the lock does not assume for {platform}; to lock for it: keel lock --virtual-package {platform}:__cuda=12.4 --virtual-package {platform}:__cuda_arch=9.0 (or keel lock --detect"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("__glibc=2.39"), "{stdout}");
    assert!(
        !fs_err::read_to_string(dir.join("keel.lock"))
            .unwrap()
            .contains("__cuda")
    );
    let json = keel_on_node(dir, &gpu, &["lock", "--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", text(&json.stderr));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["node_has_more"],
        serde_json::json!([{
            "platform": platform,
            "virtual_packages": ["__cuda=12.4=0", "__cuda_arch=9.0=0"],
            "virtual_package_flags": [
                format!("{platform}:__cuda=12.4"),
                format!("{platform}:__cuda_arch=9.0"),
            ],
        }])
    );

    // The flag it names: the lock assumes the GPU, and the note is gone.
    let flagged = keel_on_node(
        dir,
        &gpu,
        &[
            "lock",
            "--virtual-package",
            &format!("{platform}:__cuda=12.4"),
            "--virtual-package",
            &format!("{platform}:__cuda_arch=9.0"),
        ],
    );
    assert_eq!(flagged.status.code(), Some(0), "{}", text(&flagged.stderr));
    assert!(
        !text(&flagged.stdout).contains("note:"),
        "{}",
        text(&flagged.stdout)
    );

    // A newer driver than the lock assumed: the note keeps the lock's other values.
    let newer = keel_on_node(
        dir,
        &[
            ("CONDA_OVERRIDE_CUDA", "12.8"),
            ("CONDA_OVERRIDE_CUDA_ARCH", "9.0"),
        ],
        &["lock"],
    );
    assert_eq!(newer.status.code(), Some(0), "{}", text(&newer.stderr));
    assert!(
        text(&newer.stdout).contains(&format!(
            "keel lock --virtual-package {platform}:__cuda=12.8 --virtual-package {platform}:__cuda_arch=9.0 (or"
        )),
        "{}",
        text(&newer.stdout)
    );
    // No GPU at all: nothing to say.
    let none = keel_on_node(dir, &[("CONDA_OVERRIDE_CUDA", "")], &["lock"]);
    assert_eq!(none.status.code(), Some(0), "{}", text(&none.stderr));
    assert!(
        !text(&none.stdout).contains("note:"),
        "{}",
        text(&none.stdout)
    );
}

/// `keel lock`'s doc promises `__cuda_arch`: the solve sees it (rattler_solve matches a
/// dependency on `__cuda_arch` like any other), with `--detect` from `CONDA_OVERRIDE_CUDA_ARCH`
/// (or the probe's oldest GPU) beside a `__cuda`, from `--virtual-package` above both, and the
/// lock records it per platform.
#[test]
fn cuda_arch_reaches_the_solve_and_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = keel_test_support::channel::Package {
        name: "sm80-kernels",
        version: "1.0",
        depends: vec!["__cuda_arch >=8.0"],
        files: vec![(
            "share/sm80-kernels/README",
            keel_test_support::channel::Content::Text("built for sm_80 and newer\n".into()),
        )],
        tar_bz2: false,
    };
    let channel = keel_test_support::channel::build_channel(&dir.path().join("chan"), &[kernel]);
    let platform = rattler_conda_types::Subdir::current().unwrap();
    fs_err::write(
        dir.path().join("environment.yml"),
        format!(
            "channels:\n  - {}\n  - nodefaults\ndependencies:\n  - sm80-kernels\nplatforms: [{platform}]\n",
            channel.display()
        ),
    )
    .unwrap();
    let lock = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = keel_in(dir.path());
        command
            .args(["lock", "--json", "--detect"])
            .args(args)
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("CONDA_OVERRIDE_CUDA", "12.4")
            .env_remove("CONDA_OVERRIDE_CUDA_ARCH");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let recorded = |output: &Output| -> Vec<String> {
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["platforms"][0]["virtual_packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };

    let ampere = lock(&[("CONDA_OVERRIDE_CUDA_ARCH", "8.6")], &[]);
    let packages = recorded(&ampere);
    assert!(
        packages.contains(&"__cuda_arch=8.6=0".to_owned()),
        "{packages:?}"
    );
    let written = fs_err::read_to_string(dir.path().join("keel.lock")).unwrap();
    assert!(written.contains("__cuda_arch=8.6=0"), "{written}");

    // An older GPU: the package cannot be installed, and the solver says so.
    let turing = lock(&[("CONDA_OVERRIDE_CUDA_ARCH", "7.5")], &[]);
    assert_eq!(turing.status.code(), Some(2), "{}", text(&turing.stderr));
    assert!(
        text(&turing.stderr).contains("__cuda_arch"),
        "{}",
        text(&turing.stderr)
    );

    // The command line beats the environment.
    let hopper = lock(
        &[("CONDA_OVERRIDE_CUDA_ARCH", "7.5")],
        &["--virtual-package", "__cuda_arch=9.0"],
    );
    let packages = recorded(&hopper);
    assert!(
        packages.contains(&"__cuda_arch=9.0".to_owned()),
        "{packages:?}"
    );
    assert!(
        !packages.iter().any(|p| p.starts_with("__cuda_arch=7.5")),
        "{packages:?}"
    );

    // No __cuda, no __cuda_arch (conda's CEP), so the package cannot be installed.
    let no_cuda = lock(
        &[
            ("CONDA_OVERRIDE_CUDA", ""),
            ("CONDA_OVERRIDE_CUDA_ARCH", "8.6"),
        ],
        &[],
    );
    assert_eq!(no_cuda.status.code(), Some(2), "{}", text(&no_cuda.stderr));
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

/// The credentials of the private channel the secret tests serve.
const USER: &str = "alice-the-user";
const PASSWORD: &str = "hunter2-password";
const TOKEN: &str = "s3cr3t-conda-token";
const QUERY: &str = "qs-secret-value";
const SECRETS: &[&str] = &[USER, PASSWORD, TOKEN, QUERY];

/// Every file under `dir` (recursively), with its text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let Ok(entries) = fs_err::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), text(&fs_err::read(&path).unwrap())));
        }
    }
    files
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{secret} leaked into {what}:\n{text}"
        );
    }
}

/// Runs `keel lock` on `channel` with the given environment, its temporary folder inside the
/// project so that what rattler leaves there is checked too.
fn lock_private(dir: &Path, channel: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    fs_err::write(
        dir.join("environment.yml"),
        format!(
            "channels:\n  - {channel}\n  - nodefaults\ndependencies:\n  - python=3.9\nplatforms: [linux-64]\n"
        ),
    )
    .unwrap();
    fs_err::create_dir_all(dir.join("tmp")).unwrap();
    let mut command = keel_in(dir);
    command
        .arg("lock")
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("TMPDIR", dir.join("tmp"));
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Hardening issue #13: a channel behind `user:password@`, a `/t/<token>/` and a `?token=`
/// query locks (the credentials are sent), and no credential reaches the lock, the exports,
/// stdout, stderr, `--json`, the repodata cache or the temporary folder; the same when the
/// credentials come from `${VAR}`.
#[test]
fn channel_credentials_never_reach_a_file_or_the_output() {
    let served = tempfile::tempdir().unwrap();
    keel_test_support::http::serve_py39_copy(served.path());
    let server = Server::start(
        served.path(),
        Credentials {
            basic: Some(format!("{USER}:{PASSWORD}")),
            token: Some(TOKEN.to_owned()),
        },
    );
    let port_base = server.base.trim_start_matches("http://");
    let literal = format!("http://{USER}:{PASSWORD}@{port_base}/t/{TOKEN}/chan?token={QUERY}");
    let from_vars = format!(
        "http://${{KEEL_USER}}:${{KEEL_PASSWORD}}@{port_base}/t/${{KEEL_TOKEN}}/chan?token=${{KEEL_QUERY}}"
    );
    let vars = [
        ("KEEL_USER", USER),
        ("KEEL_PASSWORD", PASSWORD),
        ("KEEL_TOKEN", TOKEN),
        ("KEEL_QUERY", QUERY),
    ];
    for (channel, env) in [
        (literal.as_str(), &vars[..0]),
        (from_vars.as_str(), &vars[..]),
    ] {
        let project = tempfile::tempdir().unwrap();
        let dir = project.path();
        for args in [
            &["--explicit", "explicit", "--conda-lock", "conda-lock.yml"][..],
            &["--json"][..],
            &["--check"][..],
            &["--check", "--json"][..],
        ] {
            let output = lock_private(dir, channel, env, args);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{args:?}: {}",
                text(&output.stderr)
            );
            assert_no_secret("stdout", &text(&output.stdout));
            assert_no_secret("stderr", &text(&output.stderr));
        }
        let files = files_under(dir);
        for name in [
            "keel.lock",
            "conda-lock.yml",
            "explicit/explicit-linux-64.txt",
        ] {
            assert!(
                files.iter().any(|(path, _)| path.ends_with(name)),
                "{name} not written"
            );
        }
        for (path, contents) in &files {
            if !path.ends_with("environment.yml") {
                assert_no_secret(&path.display().to_string(), contents);
            }
        }
        // The lock points at the same server, without credentials.
        let lock = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
        assert!(
            lock.contains(&format!("{}/chan/linux-64/python-3.9", server.base)),
            "{lock}"
        );
        // The private repodata folder is gone.
        assert!(
            files_under(&dir.join("tmp")).is_empty(),
            "{:?}",
            files_under(&dir.join("tmp"))
        );
    }
    // The credentials were sent: repodata came through the token path with basic auth.
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.status == 200
            && r.target
                .starts_with(&format!("/t/{TOKEN}/chan/linux-64/repodata.json"))),
        "{requests:?}"
    );
}

/// Hardening issue #13: "could not find subdir" and other repodata errors printed the
/// channel's query string and user name.
#[test]
fn repodata_errors_show_no_credentials() {
    let served = tempfile::tempdir().unwrap();
    keel_test_support::http::serve_py39_copy(served.path());
    let server = Server::start(
        served.path(),
        Credentials {
            basic: Some(format!("{USER}:{PASSWORD}")),
            token: Some(TOKEN.to_owned()),
        },
    );
    let port_base = server.base.trim_start_matches("http://");
    for channel in [
        // No such channel on the server.
        format!("http://{USER}:{PASSWORD}@{port_base}/t/{TOKEN}/missing?token={QUERY}"),
        // The wrong token: the server refuses.
        format!("http://{USER}:{PASSWORD}@{port_base}/t/{QUERY}/chan?token={TOKEN}"),
    ] {
        let project = tempfile::tempdir().unwrap();
        for args in [&[][..], &["--json"][..]] {
            let output = lock_private(project.path(), &channel, &[], args);
            assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
            let stderr = text(&output.stderr);
            assert!(stderr.contains("repodata"), "{stderr}");
            assert_no_secret("stderr", &stderr);
            assert_no_secret("stdout", &text(&output.stdout));
        }
        for (path, contents) in files_under(project.path()) {
            if !path.ends_with("environment.yml") {
                assert_no_secret(&path.display().to_string(), &contents);
            }
        }
    }
}

/// Hardening issue #13: the repodata cache was world-readable. A channel without credentials
/// is cached in the shared cache: the folders keel creates are 0700 and rattler's files 0600.
#[test]
fn the_repodata_cache_is_private() {
    use std::os::unix::fs::PermissionsExt as _;

    let served = tempfile::tempdir().unwrap();
    keel_test_support::http::serve_py39_copy(served.path());
    let server = Server::start(served.path(), Credentials::default());
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let cache = dir.join("new/cache/repodata");
    let output = lock_private(
        dir,
        &format!("{}/chan", server.base),
        &[],
        &["--cache-dir", cache.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let mode = |path: &Path| fs_err::metadata(path).unwrap().permissions().mode() & 0o777;
    for folder in [dir.join("new"), dir.join("new/cache"), cache.clone()] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    let files = files_under(&cache);
    assert!(
        files.iter().any(
            |(path, contents)| path.to_string_lossy().ends_with(".info.json")
                && contents.contains(&server.base)
        ),
        "rattler cached nothing: {files:?}"
    );
    for (path, _) in &files {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
}
