//! `keel install` from a served channel whose server fails (issue #15): a server that accepts
//! and never answers is given up on after `--timeout` (or `$KEEL_HTTP_TIMEOUT`) seconds per
//! try, with an error naming the URL and exit 2; an archive the channel does not have is named
//! with what that means. Neither leaves a prefix behind.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{keel_in, text};
use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::http::{Credentials, Fault, Server};

/// A served channel with one package, locked from the server into `<dir>/keel.lock`.
fn served_lock() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let package = Package {
        name: "served",
        version: "1.0",
        depends: vec![],
        files: vec![("share/served/README", Content::Text("served\n".into()))],
        tar_bz2: false,
    };
    let file = package.file_name();
    build_channel(&dir.path().join("chan"), &[package]);
    let server = Server::start(dir.path(), Credentials::default());
    fs_err::write(
        dir.path().join("environment.yml"),
        format!(
            "channels:\n  - {}/chan\ndependencies:\n  - served\n",
            server.base
        ),
    )
    .unwrap();
    let output = run(dir.path(), &["lock", "--no-uv"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let subdir = rattler_conda_types::Subdir::current().unwrap();
    let url = format!("{}/chan/{}/{file}", server.base, subdir.as_str());
    (dir, server, url)
}

/// Runs keel in `dir` with `env`, killing it (and failing the test) if it takes over a
/// minute: a hang must fail the test, not stall the suite.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command: Command = keel_in(dir);
    command
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("RATTLER_CACHE_DIR", dir.join("rattler-cache"))
        .env_remove(keel_solve::TIMEOUT_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("keel {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn install_args(dir: &Path) -> Vec<String> {
    ["install", "-p", "env", "--package-cache"]
        .iter()
        .map(ToString::to_string)
        .chain([dir.join("pkgs").display().to_string()])
        .collect()
}

/// A server that never answers: `--timeout 1` (and `KEEL_HTTP_TIMEOUT=1` without the flag)
/// gives up after four tries of a second each, exit 2, naming the URL and the timeout, with
/// the hint; the prefix is not created.
#[test]
fn server_that_never_answers_times_out() {
    let (dir, server, url) = served_lock();
    let dir = dir.path();
    let file = url.rsplit('/').next().unwrap().to_owned();
    let mut args = install_args(dir);
    for (flag, env) in [(true, None), (false, Some("1"))] {
        server.fail_next(&file, vec![Fault::Hang; 4]);
        let mut args = args.clone();
        if flag {
            args.extend(["--timeout".into(), "1".into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env
            .map(|v| (keel_solve::TIMEOUT_ENV, v))
            .into_iter()
            .collect();
        let output = run(dir, &args, &env);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&url), "{stderr}");
        assert!(
            stderr.contains("the server sent nothing for 1 s, 4 tries"),
            "{stderr}"
        );
        assert!(stderr.contains("--timeout"), "{stderr}");
        assert!(stderr.contains("was not created"), "{stderr}");
        assert!(!dir.join("env").exists());
    }
    // A timeout that is not a positive number of seconds is a usage error naming it.
    args.extend(["--timeout".into(), "0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(dir, &args, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert!(stderr.contains("`0`"), "{stderr}");
}

/// An archive the lock names that the server does not have (404): exit 2, the URL and what
/// it means; asked for once (a 404 is not tried again); no prefix.
#[test]
fn archive_the_server_does_not_have() {
    let (dir, server, url) = served_lock();
    let dir = dir.path();
    let file = url.rsplit('/').next().unwrap().to_owned();
    server.fail_next(&file, vec![Fault::Status(404)]);
    let args = install_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(dir, &args, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("the channel has no archive {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("re-lock"), "{stderr}");
    assert_eq!(server.requests_for(&file).len(), 1);
    assert!(!dir.join("env").exists());
    // The same lock installs once the server has it again.
    let output = run(dir, &args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(dir.join("env/share/served/README").is_file());
}
