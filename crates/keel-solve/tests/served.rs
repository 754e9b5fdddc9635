//! `keel_solve::lock` against channels served over HTTP as real channels serve them (issue
//! #15): CEP-16 shards first, then `repodata.json.zst`, then `repodata.json`; a warm cache
//! revalidated with a conditional request; a server that fails, keeps failing, never answers,
//! refuses keel or has no repodata, each named with its URL and status and none of them
//! hanging the lock. Every server is started by its test on loopback and records the requests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_solve::{HttpOptions, LockOptions, SolveError, lock};
use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::http::{Credentials, Fault, Server, Variants, write_variants};
use rattler_conda_types::Subdir;

fn package(name: &'static str, depends: Vec<&'static str>) -> Package {
    Package {
        name,
        version: "1.0",
        depends,
        files: vec![("share/README", Content::Text(format!("{name}\n")))],
        tar_bz2: false,
    }
}

/// A served root with channel `chan` (`app` depending on `lib`, and an unrelated `other`) in
/// this machine's subdir and an empty `noarch`, each with the `variants`.
fn served(variants: Variants) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let channel = build_channel(
        &root.path().join("chan"),
        &[
            package("app", vec!["lib"]),
            package("lib", vec![]),
            package("other", vec![]),
        ],
    );
    for subdir in [Subdir::current().unwrap().as_str(), "noarch"] {
        write_variants(&channel.join(subdir), variants);
    }
    root
}

struct Project {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn project(channel: &str, dependencies: &str) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environment.yml");
    fs_err::write(
        &path,
        format!(
            "channels:\n  - {channel}\n  - nodefaults\ndependencies:\n{dependencies}platforms: [{}]\n",
            Subdir::current().unwrap()
        ),
    )
    .unwrap();
    Project { dir, path }
}

fn options(cache: &Path) -> LockOptions {
    LockOptions {
        cache_dir: cache.to_path_buf(),
        http: HttpOptions {
            timeout: Duration::from_secs(10),
            tries: 3,
            backoff: Duration::from_millis(20),
        },
        ..LockOptions::default()
    }
}

async fn lock_in(
    project: &Project,
    options: &LockOptions,
) -> Result<keel_solve::Locked, SolveError> {
    let spec = keel_spec::read_path(&project.path).unwrap().spec;
    lock(&spec, &project.path, options, None).await
}

fn names(locked: &keel_solve::Locked) -> Vec<String> {
    let environment = locked.lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    let mut names: Vec<String> = environment
        .conda_repodata_records(platform)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.package_record.name.as_normalized().to_owned())
        .collect();
    names.sort();
    names
}

/// The paths of the GETs answered with `status`.
fn gets(server: &Server, status: u16) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.status == status)
        .map(|r| r.path().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_are_used_when_the_channel_has_them_and_no_full_repodata_is_fetched() {
    let root = served(Variants {
        zst: true,
        shards: true,
    });
    let shard_names = write_variants(
        &root
            .path()
            .join("chan")
            .join(Subdir::current().unwrap().as_str()),
        Variants {
            zst: true,
            shards: true,
        },
    );
    let server = Server::start(root.path(), Credentials::default());
    let project = project(&format!("{}/chan", server.base), "  - app\n");
    let locked = lock_in(&project, &options(&project.dir.path().join("cache")))
        .await
        .unwrap();
    assert_eq!(names(&locked), ["app", "lib"]);

    let fetched = gets(&server, 200);
    assert!(
        fetched
            .iter()
            .any(|p| p.ends_with("noarch/repodata_shards.msgpack.zst")),
        "{fetched:?}"
    );
    for name in ["app", "lib"] {
        let shard = &shard_names[name];
        assert!(
            fetched
                .iter()
                .any(|p| p.ends_with(&format!("/shards/{shard}"))),
            "{name}'s shard {shard} in {fetched:?}"
        );
    }
    // Only the shards of what the solve reached: `other` is never asked for.
    assert!(
        !fetched.iter().any(|p| p.ends_with(&shard_names["other"])),
        "{fetched:?}"
    );
    let full: Vec<&String> = fetched
        .iter()
        .filter(|p| p.ends_with("repodata.json") || p.ends_with("repodata.json.zst"))
        .collect();
    assert!(full.is_empty(), "full repodata fetched: {full:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_shards_the_zst_is_fetched_and_without_it_the_plain_json() {
    for (variants, file) in [
        (
            Variants {
                zst: true,
                shards: false,
            },
            "repodata.json.zst",
        ),
        (Variants::default(), "repodata.json"),
    ] {
        let root = served(variants);
        let server = Server::start(root.path(), Credentials::default());
        let project = project(&format!("{}/chan", server.base), "  - app\n");
        let locked = lock_in(&project, &options(&project.dir.path().join("cache")))
            .await
            .unwrap();
        assert_eq!(names(&locked), ["app", "lib"]);
        let mut fetched = gets(&server, 200);
        fetched.retain(|p| p.contains("repodata"));
        fetched.sort();
        let subdir = Subdir::current().unwrap();
        let mut expected = [
            format!("/chan/noarch/{file}"),
            format!("/chan/{subdir}/{file}"),
        ];
        expected.sort();
        assert_eq!(fetched, expected, "{file}");
        // The shard index was asked for first and was not there.
        assert_eq!(
            server
                .requests_for("repodata_shards.msgpack.zst")
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>(),
            [404, 404]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_cache_revalidates_and_downloads_no_repodata_again() {
    for variants in [
        Variants::default(),
        Variants {
            zst: true,
            shards: false,
        },
        Variants {
            zst: true,
            shards: true,
        },
    ] {
        let root = served(variants);
        let server = Server::start(root.path(), Credentials::default());
        let project = project(&format!("{}/chan", server.base), "  - app\n");
        let options = options(&project.dir.path().join("cache"));
        let first = lock_in(&project, &options).await.unwrap();
        let cold = server.requests().len();
        let second = lock_in(&project, &options).await.unwrap();
        assert_eq!(first.text, second.text);

        let warm = &server.requests()[cold..];
        let downloaded: Vec<&str> = warm
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200)
            .map(|r| r.path())
            .collect();
        assert!(
            downloaded.is_empty(),
            "{variants:?}: downloaded again {downloaded:?}"
        );
        // What it asked for, it asked for conditionally, and the server said unchanged.
        let conditional: Vec<_> = warm
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| (r.path(), r.status, r.if_none_match.is_some()))
            .collect();
        assert!(!conditional.is_empty(), "{variants:?}: nothing revalidated");
        assert!(
            conditional
                .iter()
                .all(|(_, status, tagged)| *status == 304 && *tagged),
            "{variants:?}: {conditional:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_is_tried_again_and_the_lock_succeeds() {
    let root = served(Variants::default());
    let server = Server::start(root.path(), Credentials::default());
    server.fail_next(
        "noarch/repodata.json",
        vec![Fault::Status(503), Fault::Status(500)],
    );
    let project = project(&format!("{}/chan", server.base), "  - app\n");
    let locked = lock_in(&project, &options(&project.dir.path().join("cache")))
        .await
        .unwrap();
    assert_eq!(names(&locked), ["app", "lib"]);
    let statuses: Vec<u16> = server
        .requests_for("noarch/repodata.json")
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 500, 200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_keeps_failing_is_tried_a_bounded_number_of_times_and_named() {
    let root = served(Variants::default());
    let server = Server::start(root.path(), Credentials::default());
    server.fail_next("noarch/repodata.json", vec![Fault::Status(503); 10]);
    let project = project(&format!("{}/chan", server.base), "  - app\n");
    let error = lock_in(&project, &options(&project.dir.path().join("cache")))
        .await
        .unwrap_err();
    let url = format!("{}/chan/noarch/repodata.json", server.base);
    assert!(
        matches!(&error, SolveError::HttpStatus { url: u, status: 503, tries: 3 } if *u == url),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "fetching {url} failed: the server answered HTTP 503 Service Unavailable (3 tries)"
        )
    );
    let gets = server
        .requests_for("noarch/repodata.json")
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_times_out_and_is_named() {
    let root = served(Variants::default());
    let server = Server::start(root.path(), Credentials::default());
    server.fail_next("repodata_shards.msgpack.zst", vec![Fault::Hang; 10]);
    let project = project(&format!("{}/chan", server.base), "  - app\n");
    let mut options = options(&project.dir.path().join("cache"));
    options.http.timeout = Duration::from_millis(500);
    options.http.tries = 2;
    let started = Instant::now();
    let error = lock_in(&project, &options).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&error, SolveError::HttpTimeout { url, tries: 2, .. } if url.ends_with("/repodata_shards.msgpack.zst")),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("fetching {}/chan/", server.base))
            && text.contains("the server sent nothing for 0.5 s (2 tries)"),
        "{text}"
    );
    // Two tries of half a second each and the wait between: bounded, far from a hang.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_that_refuses_keel_is_named_without_the_secret() {
    let root = served(Variants::default());
    let server = Server::start(
        root.path(),
        Credentials {
            basic: Some("alice:hunter2".to_owned()),
            token: Some("right-token".to_owned()),
        },
    );
    let host = server.base.trim_start_matches("http://");
    // No password: 401. The password but a wrong token: 403. Either way the channel is
    // named as redact_url shows it, which holds none of the credentials.
    for (channel, status) in [
        (format!("http://{host}/t/right-token/chan"), 401),
        (
            format!("http://alice:hunter2@{host}/t/wrong-token/chan"),
            403,
        ),
    ] {
        let shown = keel_solve::redact_url(&url::Url::parse(&channel).unwrap()).to_string();
        let project = project(&channel, "  - app\n");
        let error = lock_in(&project, &options(&project.dir.path().join("cache")))
            .await
            .unwrap_err();
        let SolveError::Unauthorized {
            channel: named,
            status: got,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(
            (named.trim_end_matches('/'), *got),
            (shown.as_str(), status)
        );
        let text = format!("{error} {error:?}");
        for secret in ["hunter2", "right-token", "wrong-token", "alice"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("RATTLER_AUTH_FILE"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_without_repodata_says_so() {
    let root = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(root.path().join("empty")).unwrap();
    let server = Server::start(root.path(), Credentials::default());
    let project = project(&format!("{}/empty", server.base), "  - app\n");
    let error = lock_in(&project, &options(&project.dir.path().join("cache")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SolveError::NoRepodata { subdir, .. } if subdir == "noarch"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("{}/empty", server.base)) && text.contains("noarch/repodata.json"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repodata_cut_short_or_reset_mid_download_is_fetched_again() {
    for fault in [Fault::ResetAfter(20), Fault::Truncate(20)] {
        let root = served(Variants::default());
        let server = Server::start(root.path(), Credentials::default());
        let file = format!("{}/repodata.json", Subdir::current().unwrap());
        server.fail_next(&file, vec![fault.clone()]);
        let project = project(&format!("{}/chan", server.base), "  - app\n");
        let locked = lock_in(&project, &options(&project.dir.path().join("cache")))
            .await
            .unwrap_or_else(|error| panic!("{fault:?}: {error:?}"));
        assert_eq!(names(&locked), ["app", "lib"], "{fault:?}");
        let faults: Vec<_> = server
            .requests_for(&file)
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.fault.clone())
            .collect();
        assert_eq!(faults, [Some(fault.clone()), None], "{fault:?}");
    }
}
