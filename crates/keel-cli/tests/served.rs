//! `keel lock` (the binary) against channels served over HTTP on loopback (issue #15): a
//! server that never answers ends in a bounded time with exit 2 and the URL; one that keeps
//! failing is named with its status; credentials from rattler's authentication file
//! (`RATTLER_AUTH_FILE`) authenticate, and no secret reaches the lock, an export, the cache's
//! file names or contents, or the output; a warm cache revalidates instead of downloading.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{keel_in, text};
use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::http::{Credentials, Fault, Server, Variants, write_variants};
use rattler_conda_types::Subdir;

const USER: &str = "carol-the-user";
const PASSWORD: &str = "pw-in-the-auth-file";
const TOKEN: &str = "tk-in-the-auth-file";

fn package(name: &'static str, depends: Vec<&'static str>) -> Package {
    Package {
        name,
        version: "1.0",
        depends,
        files: vec![("share/README", Content::Text(format!("{name}\n")))],
        tar_bz2: false,
    }
}

/// A served root with channel `chan` (`app` needing `lib`) with the `variants`.
fn served(variants: Variants) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let channel = build_channel(
        &root.path().join("chan"),
        &[package("app", vec!["lib"]), package("lib", vec![])],
    );
    for subdir in [Subdir::current().unwrap().as_str(), "noarch"] {
        write_variants(&channel.join(subdir), variants);
    }
    root
}

/// `keel lock` of `app` from `channel` in `dir`, with its caches and temporary folder inside
/// `dir` (so the tests can read all that it leaves) and `env`.
fn lock(dir: &Path, channel: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    fs_err::write(
        dir.join("environment.yml"),
        format!(
            "channels:\n  - {channel}\n  - nodefaults\ndependencies:\n  - app\nplatforms: [{}]\n",
            Subdir::current().unwrap()
        ),
    )
    .unwrap();
    fs_err::create_dir_all(dir.join("tmp")).unwrap();
    let mut command = keel_in(dir);
    command
        .arg("lock")
        .args(["--cache-dir", "cache/repodata"])
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("TMPDIR", dir.join("tmp"))
        .env_remove("KEEL_HTTP_TIMEOUT")
        .env_remove("RATTLER_AUTH_FILE");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Every file under `dir`, with its bytes as text.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in fs_err::read_dir(dir).into_iter().flatten().flatten() {
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
    for secret in [USER, PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into {what}:\n{text}"
        );
    }
}

#[test]
fn a_server_that_never_answers_ends_with_exit_2_naming_the_url() {
    let root = served(Variants::default());
    let server = Server::start(root.path(), Credentials::default());
    server.fail_next("repodata_shards.msgpack.zst", vec![Fault::Hang; 20]);
    let channel = format!("{}/chan", server.base);
    for (args, env) in [
        (&["--timeout", "0.5"][..], &[][..]),
        (&[][..], &[("KEEL_HTTP_TIMEOUT", "0.5")][..]),
    ] {
        let project = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let output = lock(project.path(), &channel, env, args);
        let elapsed = started.elapsed();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("fetching {}/chan/", server.base))
                && stderr.contains("repodata_shards.msgpack.zst")
                && stderr.contains("the server sent nothing for 0.5 s (4 tries)")
                && stderr.contains("--timeout"),
            "{stderr}"
        );
        // Four tries of half a second and the waits between them (0.5 + 1 + 2 s).
        assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
        assert!(!project.path().join("keel.lock").exists());
    }
}

#[test]
fn a_timeout_that_is_not_seconds_is_refused() {
    let project = tempfile::tempdir().unwrap();
    let output = lock(
        project.path(),
        "http://127.0.0.1:9/chan",
        &[],
        &["--timeout", "soon"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("`soon` is not a number of seconds"),
        "{}",
        text(&output.stderr)
    );
    let output = lock(
        project.path(),
        "http://127.0.0.1:9/chan",
        &[("KEEL_HTTP_TIMEOUT", "-3")],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("KEEL_HTTP_TIMEOUT=-3"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_server_that_keeps_failing_is_named_with_its_status() {
    let root = served(Variants::default());
    let server = Server::start(root.path(), Credentials::default());
    server.fail_next("noarch/repodata.json", vec![Fault::Status(500); 10]);
    let project = tempfile::tempdir().unwrap();
    let output = lock(project.path(), &format!("{}/chan", server.base), &[], &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "fetching {}/chan/noarch/repodata.json failed: the server answered HTTP 500 Internal Server Error (4 tries)",
            server.base
        )),
        "{stderr}"
    );
    let tries = server
        .requests_for("noarch/repodata.json")
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(tries, 4);
}

/// Basic authentication and a conda token from `RATTLER_AUTH_FILE`, for a channel URL that
/// holds neither: the lock is made, and no secret is in the lock, the exports, the cache (names
/// and contents), the temporary folder or the output. Without the file, 401 names the channel
/// and where its credentials go.
#[test]
fn credentials_from_the_auth_file_authenticate_and_reach_no_file() {
    let root = served(Variants {
        zst: true,
        shards: true,
    });
    let server = Server::start(
        root.path(),
        Credentials {
            basic: Some(format!("{USER}:{PASSWORD}")),
            token: Some(TOKEN.to_owned()),
        },
    );
    let channel = format!("{}/chan", server.base);
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();

    let refused = lock(dir, &channel, &[], &[]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("the channel {channel}"))
            && stderr.contains("HTTP 401 Unauthorized")
            && stderr.contains("RATTLER_AUTH_FILE"),
        "{stderr}"
    );

    // Two hosts' worth: basic authentication for 127.0.0.1 and, as a second file, a token.
    let auth = dir.join("auth.json");
    fs_err::write(
        &auth,
        serde_json::json!({
            "127.0.0.1": { "BasicHTTP": { "username": USER, "password": PASSWORD } }
        })
        .to_string(),
    )
    .unwrap();
    // Basic alone: the token path is still missing, so the server answers 403.
    let forbidden = lock(
        dir,
        &channel,
        &[("RATTLER_AUTH_FILE", auth.to_str().unwrap())],
        &[],
    );
    let stderr = text(&forbidden.stderr);
    assert_eq!(forbidden.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HTTP 403 Forbidden"), "{stderr}");
    assert_no_secret("stderr", &stderr);

    // The token in the channel's URL (a `${VAR}`, so the file keeps it out) and basic
    // authentication from the auth file.
    let tokened = format!("{}/t/${{CHANNEL_TOKEN}}/chan", server.base);
    let env = [
        ("RATTLER_AUTH_FILE", auth.to_str().unwrap()),
        ("CHANNEL_TOKEN", TOKEN),
    ];
    let output = lock(
        dir,
        &tokened,
        &env,
        &["--explicit", "explicit", "--conda-lock", "conda-lock.yml"],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_no_secret("stderr", &stderr);
    assert_no_secret("stdout", &text(&output.stdout));
    let files = files_under(dir);
    for name in ["keel.lock", "conda-lock.yml"] {
        assert!(
            files.iter().any(|(p, _)| p.ends_with(name)),
            "{name} not written"
        );
    }
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("explicit/explicit-")),
        "no explicit list"
    );
    for (path, contents) in &files {
        if path != &auth && !path.ends_with("environment.yml") {
            assert_no_secret(&path.display().to_string(), contents);
            assert_no_secret("a file name", &path.display().to_string());
        }
    }
    // The credentials were sent: shards came through the token path with basic auth.
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.status == 200
            && r.target.starts_with(&format!("/t/{TOKEN}/chan/"))
            && r.target.contains("/shards/")),
        "{requests:?}"
    );

    // A conda token from the file for a channel URL without one: rattler puts it in the path
    // of each request, and the shared repodata cache (the URL holds no secret) has it in no
    // file name and no file.
    let token_only = Server::start(
        root.path(),
        Credentials {
            basic: None,
            token: Some(TOKEN.to_owned()),
        },
    );
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let auth = dir.join("auth.json");
    fs_err::write(
        &auth,
        serde_json::json!({ "127.0.0.1": { "CondaToken": TOKEN } }).to_string(),
    )
    .unwrap();
    let output = lock(
        dir,
        &format!("{}/chan", token_only.base),
        &[("RATTLER_AUTH_FILE", auth.to_str().unwrap())],
        &["--explicit", "explicit", "--conda-lock", "conda-lock.yml"],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_no_secret("stderr", &stderr);
    let cached = files_under(&dir.join("cache/repodata"));
    assert!(!cached.is_empty(), "the shared cache was not used");
    for (path, contents) in files_under(dir) {
        if path != auth {
            assert_no_secret(&path.display().to_string(), &contents);
            assert_no_secret("a file name", &path.display().to_string());
        }
    }
    assert!(
        token_only
            .requests()
            .iter()
            .any(|r| r.status == 200 && r.target.starts_with(&format!("/t/{TOKEN}/chan/"))),
        "{:?}",
        token_only.requests()
    );
}

/// An unchanged lock with a warm cache revalidates what it read (a conditional request
/// answered 304) and downloads no repodata again.
#[test]
fn a_second_lock_revalidates_and_downloads_nothing_again() {
    for variants in [
        Variants::default(),
        Variants {
            zst: true,
            shards: true,
        },
    ] {
        let root = served(variants);
        let server = Server::start(root.path(), Credentials::default());
        let project = tempfile::tempdir().unwrap();
        let channel = format!("{}/chan", server.base);
        let first = lock(project.path(), &channel, &[], &[]);
        assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
        let lock_text = fs_err::read_to_string(project.path().join("keel.lock")).unwrap();
        let cold = server.requests().len();
        let second = lock(project.path(), &channel, &[], &[]);
        assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
        assert_eq!(
            fs_err::read_to_string(project.path().join("keel.lock")).unwrap(),
            lock_text
        );
        let warm = &server.requests()[cold..];
        let gets: Vec<(&str, u16)> = warm
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| (r.path(), r.status))
            .collect();
        assert!(!gets.is_empty(), "{variants:?}: nothing revalidated");
        assert!(
            gets.iter().all(|(_, status)| *status == 304),
            "{variants:?}: {gets:?}"
        );
        assert!(
            warm.iter()
                .filter(|r| r.method == "GET")
                .all(|r| r.if_none_match.is_some()),
            "{variants:?}: {warm:?}"
        );
    }
}
