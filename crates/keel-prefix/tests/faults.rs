//! Issue #15: `install` from a channel served on loopback, through the faults networks and
//! channels have, at each phase (fetching, extracting, linking). Every fault is refused with
//! an error naming the archive; the package cache keeps no entry of a bad archive; a prefix
//! that did not exist is not left behind, and one that existed is exactly as it was (or, after
//! a failure while linking, marked so that the next install repairs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_prefix::{FetchFailure, InstallOptions, InstallReport, LockedPlatform, PrefixError};
use keel_solve::HttpOptions;
use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::http::{Credentials, Fault, Server};
use rattler_conda_types::{RepoDataRecord, Subdir};

type Reporter = rattler::install::IndicatifReporter<rattler::install::DefaultProgressFormatter>;

/// Tries per download in these tests (the default is 4).
const TRIES: u32 = 3;

fn alpha() -> Package {
    Package {
        name: "alpha",
        version: "1.0",
        depends: vec![],
        files: vec![
            ("lib/alpha.txt", Content::Text("alpha 1.0\n".repeat(200))),
            (
                "bin/alpha",
                Content::Executable("#!/bin/sh\necho alpha\n".into()),
            ),
        ],
        tar_bz2: false,
    }
}

/// The package the faults hit: large enough that a fault after 100 bytes is mid-archive.
fn beta(tar_bz2: bool) -> Package {
    let text: String = (0..400).map(|i| format!("beta line {i}\n")).collect();
    Package {
        name: "beta",
        version: "2.0",
        depends: vec![],
        files: vec![("share/beta/README", Content::Text(text))],
        tar_bz2,
    }
}

/// A channel with alpha and beta at `<dir>/chan`, served from `dir`.
struct World {
    dir: tempfile::TempDir,
    server: Server,
}

impl World {
    fn new(beta_tar_bz2: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        build_channel(&dir.path().join("chan"), &[alpha(), beta(beta_tar_bz2)]);
        let server = Server::start(dir.path(), Credentials::default());
        World { dir, server }
    }

    fn subdir_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("chan")
            .join(Subdir::current().unwrap().as_str())
    }

    /// The archive's file name of the package `name`.
    fn file_name(&self, name: &str) -> String {
        let repodata = self.repodata();
        ["packages", "packages.conda"]
            .iter()
            .flat_map(|key| repodata[key].as_object().unwrap().keys())
            .find(|file| file.starts_with(&format!("{name}-")))
            .unwrap_or_else(|| panic!("no {name} in the channel"))
            .clone()
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.subdir_dir().join(self.file_name(name))
    }

    fn repodata(&self) -> serde_json::Value {
        serde_json::from_slice(&fs_err::read(self.subdir_dir().join("repodata.json")).unwrap())
            .unwrap()
    }

    /// The served archive's URL.
    fn url(&self, name: &str) -> String {
        format!(
            "{}/chan/{}/{}",
            self.server.base,
            Subdir::current().unwrap().as_str(),
            self.file_name(name)
        )
    }

    /// The lock of `names`, each from the server (or, `local`, from the channel's folder).
    fn locked(&self, names: &[&str], local: bool) -> LockedPlatform {
        let repodata = self.repodata();
        let conda = names
            .iter()
            .map(|name| {
                let file = self.file_name(name);
                let key = if file.ends_with(".conda") {
                    "packages.conda"
                } else {
                    "packages"
                };
                let url = if local {
                    url::Url::from_file_path(self.subdir_dir().join(&file))
                        .unwrap()
                        .to_string()
                } else {
                    self.url(name)
                };
                record(repodata[key][&file].clone(), &file, &url)
            })
            .collect();
        LockedPlatform {
            conda,
            pypi: vec![],
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("pkgs")
    }

    fn options(&self) -> InstallOptions {
        InstallOptions {
            package_cache: self.cache(),
            platform: None,
            repair: false,
            uv: None,
            download: HttpOptions {
                timeout: Duration::from_secs(1),
                tries: TRIES,
                backoff: Duration::from_millis(10),
            },
        }
    }

    /// GET requests for the archive of `name` so far.
    fn gets(&self, name: &str) -> usize {
        self.server
            .requests_for(&self.file_name(name))
            .iter()
            .filter(|request| request.method == "GET")
            .count()
    }
}

/// A repodata record of the archive `file` at `url`.
fn record(mut entry: serde_json::Value, file: &str, url: &str) -> RepoDataRecord {
    entry["fn"] = file.into();
    entry["url"] = url.into();
    entry["channel"] = "chan".into();
    serde_json::from_value(entry).unwrap()
}

/// Installs `locked` into `prefix`; a run that takes a minute is a hang and fails the test.
fn install(
    prefix: &Path,
    locked: &LockedPlatform,
    options: &InstallOptions,
) -> Result<InstallReport, PrefixError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            keel_prefix::install::<Reporter>(prefix, locked, options, None),
        )
        .await
        .expect("the install hung")
    })
}

/// Every file, symlink and directory under `root` with its contents (the prefix as a user
/// would compare it).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let metadata = fs_err::symlink_metadata(&path).unwrap();
            let value = if metadata.is_symlink() {
                format!("-> {}", fs_err::read_link(&path).unwrap().display())
            } else if metadata.is_dir() {
                stack.push(path);
                "dir".to_owned()
            } else {
                String::from_utf8_lossy(&fs_err::read(&path).unwrap()).into_owned()
            };
            all.insert(relative, value);
        }
    }
    all
}

/// The package cache's entries (extracted packages), by folder name.
fn cache_entries(cache: &Path) -> Vec<String> {
    let Ok(entries) = fs_err::read_dir(cache) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A fetch error for `package`: its failure and tries, checked to name `location`.
fn fetch_failure(error: &PrefixError, package: &str, location: &str) -> (FetchFailure, u32) {
    match error {
        PrefixError::Fetch {
            package: named,
            location: at,
            tries,
            failure,
            ..
        } => {
            assert!(named.starts_with(package), "{error}");
            assert_eq!(at, location);
            let text = error.to_string();
            assert!(text.contains(location), "{text}");
            assert!(text.contains(package), "{text}");
            (failure.clone(), *tries)
        }
        other => panic!("expected a fetch error for {package}, got {other:?}: {other}"),
    }
}

/// An existing prefix with alpha installed, and what it holds.
fn existing_prefix(world: &World) -> (PathBuf, BTreeMap<PathBuf, String>) {
    let prefix = world.dir.path().join("existing");
    install(&prefix, &world.locked(&["alpha"], false), &world.options()).unwrap();
    let before = snapshot(&prefix);
    assert!(before.contains_key(Path::new("lib/alpha.txt")));
    (prefix, before)
}

/// Every fault a download meets, at the fetching phase: refused once its tries are spent (or
/// at once, for a final answer), the error naming the package, the URL and what happened;
/// the server asked exactly that often; no cache entry of beta; a new prefix not created, an
/// existing one exactly as before and not marked.
#[test]
fn download_faults_are_refused_and_nothing_is_left() {
    let tries = TRIES as usize;
    let cases: Vec<(&str, Vec<Fault>, FetchFailure, usize)> = vec![
        (
            "reset mid-archive",
            vec![Fault::ResetAfter(100); tries],
            FetchFailure::Connection,
            tries,
        ),
        (
            "truncated",
            vec![Fault::Truncate(100); tries],
            FetchFailure::Connection,
            tries,
        ),
        (
            "503 every time",
            vec![Fault::Status(503); tries],
            FetchFailure::Status(503),
            tries,
        ),
        ("404", vec![Fault::Status(404)], FetchFailure::NotFound, 1),
        (
            "403",
            vec![Fault::Status(403)],
            FetchFailure::Status(403),
            1,
        ),
        (
            "no answer",
            vec![Fault::Hang; tries],
            FetchFailure::Timeout(Duration::from_secs(1)),
            tries,
        ),
    ];
    for (what, faults, expected, requests) in cases {
        for existing in [false, true] {
            let world = World::new(false);
            let (prefix, before) = if existing {
                existing_prefix(&world)
            } else {
                (world.dir.path().join("new/env"), BTreeMap::new())
            };
            let cache_before = cache_entries(&world.cache());
            world
                .server
                .fail_next(&world.file_name("beta"), faults.clone());
            let error = install(
                &prefix,
                &world.locked(&["alpha", "beta"], false),
                &world.options(),
            )
            .unwrap_err();
            let (failure, tried) = fetch_failure(&error, "beta-2.0-h0_0", &world.url("beta"));
            assert_eq!(failure, expected, "{what}: {error}");
            assert_eq!(tried as usize, requests, "{what}: {error}");
            assert_eq!(world.gets("beta"), requests, "{what}");
            if requests > 1 {
                assert!(
                    error.to_string().contains(&format!("{requests} tries")),
                    "{error}"
                );
            }
            // The cache has alpha (fetched beside beta, or before), and no beta, no partial
            // download, nothing else.
            assert_eq!(
                cache_entries(&world.cache()),
                vec!["alpha-1.0-h0_0".to_owned()],
                "{what}: before: {cache_before:?}"
            );
            if existing {
                assert_eq!(snapshot(&prefix), before, "{what}: the prefix changed");
            } else {
                assert!(
                    !world.dir.path().join("new").exists(),
                    "{what}: prefix left"
                );
            }
        }
    }
}

/// 500 and 503 then an answer, a reset, a cut archive, or no answer then an archive: tried
/// again, and installed (the server asked once per fault, then once more).
#[test]
fn transient_faults_then_success_install() {
    for faults in [
        vec![Fault::Status(503), Fault::Status(500)],
        vec![Fault::ResetAfter(100)],
        vec![Fault::Truncate(100), Fault::ResetAfter(10)],
        vec![Fault::Hang],
    ] {
        let world = World::new(true);
        world
            .server
            .fail_next(&world.file_name("beta"), faults.clone());
        let prefix = world.dir.path().join("env");
        let report = install(
            &prefix,
            &world.locked(&["alpha", "beta"], false),
            &world.options(),
        )
        .unwrap_or_else(|error| panic!("{faults:?}: {error}"));
        assert_eq!(report.installed.len(), 2, "{faults:?}");
        assert_eq!(world.gets("beta"), faults.len() + 1, "{faults:?}");
        assert!(prefix.join("share/beta/README").is_file());
        assert!(!prefix.join(keel_prefix::INSTALL_MARKER).exists());
        keel_prefix::verify(&prefix, None).unwrap();
    }
}

/// The final error of a status that stays: the URL, the status and its meaning, the tries.
#[test]
fn final_error_names_url_and_status() {
    let world = World::new(false);
    world
        .server
        .fail_next(&world.file_name("beta"), vec![Fault::Status(503); 10]);
    let prefix = world.dir.path().join("env");
    let error = install(&prefix, &world.locked(&["beta"], false), &world.options()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "downloading beta-2.0-h0_0.conda from {} failed: the server answered HTTP 503 Service Unavailable, 3 tries",
            world.url("beta")
        )
    );
}

/// An archive that the channel's repodata lists but that is not there: served (404) or in a
/// local channel that has repodata but no archives. The error says so, naming the URL or the
/// file; nothing is created.
#[test]
fn archive_the_channel_does_not_have_is_named() {
    for local in [false, true] {
        let world = World::new(false);
        let archive = world.archive("beta");
        fs_err::remove_file(&archive).unwrap();
        let prefix = world.dir.path().join("env");
        let error = install(
            &prefix,
            &world.locked(&["alpha", "beta"], local),
            &world.options(),
        )
        .unwrap_err();
        let location = if local {
            archive.display().to_string()
        } else {
            world.url("beta")
        };
        let (failure, tries) = fetch_failure(&error, "beta-2.0-h0_0", &location);
        assert_eq!((failure, tries), (FetchFailure::NotFound, 1), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("the channel has no archive {location}, which the lock pins as beta-2.0-h0_0.conda: the channel's repodata lists the package but the file is not there")),
            "{error}"
        );
        assert!(!prefix.exists(), "local: {local}");
        assert!(
            !cache_entries(&world.cache())
                .iter()
                .any(|e| e.starts_with("beta-"))
        );
    }
}

/// An archive whose sha256 is not the lock's: a channel that changed since the lock (another
/// valid archive under the same name, served or local) and a download altered on the way
/// (one byte in the middle). Refused at once, nothing kept, the prefix as it was.
#[test]
fn archive_whose_sha256_is_not_the_locks_is_refused() {
    for (local, altered_on_the_way) in [(false, false), (true, false), (false, true)] {
        for existing in [false, true] {
            let world = World::new(false);
            let locked = world.locked(&["alpha", "beta"], local);
            if altered_on_the_way {
                world
                    .server
                    .fail_next(&world.file_name("beta"), vec![Fault::Corrupt]);
            } else {
                let mut changed = beta(false);
                changed.files[0].1 = Content::Text("changed after the lock\n".into());
                let elsewhere = tempfile::tempdir().unwrap();
                build_channel(elsewhere.path(), &[changed]);
                fs_err::copy(
                    elsewhere
                        .path()
                        .join(Subdir::current().unwrap().as_str())
                        .join(world.file_name("beta")),
                    world.archive("beta"),
                )
                .unwrap();
            }
            let (prefix, before) = if existing {
                existing_prefix(&world)
            } else {
                (world.dir.path().join("env"), BTreeMap::new())
            };
            let error = install(&prefix, &locked, &world.options()).unwrap_err();
            let location = if local {
                world.archive("beta").display().to_string()
            } else {
                world.url("beta")
            };
            let (failure, tries) = fetch_failure(&error, "beta-2.0-h0_0", &location);
            // A byte changed inside the compressed stream may break the archive before its
            // digest is complete: refused as unreadable then, as a mismatch otherwise.
            match failure {
                FetchFailure::Sha256Mismatch { expected, actual } => {
                    assert_ne!(expected, actual);
                    assert!(error.to_string().contains("sha256"), "{error}");
                }
                FetchFailure::Unreadable if altered_on_the_way => {}
                other => panic!("{other:?}: {error}"),
            }
            assert_eq!(tries, 1, "{error}");
            if !local {
                assert_eq!(world.gets("beta"), 1);
            }
            assert!(
                !cache_entries(&world.cache())
                    .iter()
                    .any(|e| e.starts_with("beta-"))
            );
            if existing {
                assert_eq!(snapshot(&prefix), before);
            } else {
                assert!(!prefix.exists());
            }
        }
    }
}

/// The extracting phase: an archive that is not a conda package, with the lock's sha256
/// (the lock was made from the damaged file, so only extraction can tell). Served and local;
/// nothing kept; a new prefix not created, an existing one as it was.
#[test]
fn damaged_archive_with_the_locks_sha256_is_refused() {
    for local in [false, true] {
        for existing in [false, true] {
            let world = World::new(false);
            let archive = world.archive("beta");
            let mut bytes = fs_err::read(&archive).unwrap();
            let cut = bytes.len() / 2;
            bytes.truncate(cut);
            bytes.extend_from_slice(b"not the rest of a conda archive");
            fs_err::write(&archive, &bytes).unwrap();
            let mut locked = world.locked(&["alpha", "beta"], local);
            let beta = &mut locked.conda[1].package_record;
            beta.sha256 =
                Some(rattler_digest::compute_bytes_digest::<rattler_digest::Sha256>(&bytes));
            beta.md5 = Some(rattler_digest::compute_bytes_digest::<rattler_digest::Md5>(
                &bytes,
            ));
            beta.size = Some(bytes.len() as u64);
            let (prefix, before) = if existing {
                existing_prefix(&world)
            } else {
                (world.dir.path().join("env"), BTreeMap::new())
            };
            let error = install(&prefix, &locked, &world.options()).unwrap_err();
            let location = if local {
                archive.display().to_string()
            } else {
                world.url("beta")
            };
            let (failure, _) = fetch_failure(&error, "beta-2.0-h0_0", &location);
            assert_eq!(failure, FetchFailure::Unreadable, "{error}");
            assert!(
                error
                    .to_string()
                    .contains("is not a readable conda package"),
                "{error}"
            );
            assert!(
                !cache_entries(&world.cache())
                    .iter()
                    .any(|e| e.starts_with("beta-"))
            );
            if existing {
                assert_eq!(snapshot(&prefix), before);
            } else {
                assert!(!prefix.exists());
            }
        }
    }
}

/// A package whose `info/paths.json` names a file its archive does not have: it fetches and
/// extracts (the cache checks only that `info/index.json` is there), and linking it fails.
fn unlinkable(world: &World) -> RepoDataRecord {
    let subdir = Subdir::current().unwrap();
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    fs_err::create_dir_all(root.join("info")).unwrap();
    fs_err::create_dir_all(root.join("lib/more")).unwrap();
    fs_err::write(root.join("lib/present.txt"), "present\n").unwrap();
    // Many files around the missing one, so that rattler may still be linking some of them
    // when it returns the failure (an install that then removes its prefix waits for them).
    let more: Vec<String> = (0..300).map(|i| format!("lib/more/f{i:03}.txt")).collect();
    for path in &more {
        fs_err::write(root.join(path), "present\n").unwrap();
    }
    let index = serde_json::json!({
        "name": "gamma", "version": "3.0", "build": "h0_0", "build_number": 0,
        "depends": [], "subdir": subdir.as_str(),
    });
    fs_err::write(root.join("info/index.json"), index.to_string()).unwrap();
    let entry = |path: &str| {
        serde_json::json!({
            "_path": path, "path_type": "hardlink", "size_in_bytes": 8,
            "sha256": hex::encode(rattler_digest::compute_bytes_digest::<rattler_digest::Sha256>(b"present\n")),
        })
    };
    let mut entries = vec![entry("lib/present.txt")];
    entries.extend(more[..150].iter().map(|path| entry(path)));
    entries.push(entry("lib/missing.txt"));
    entries.extend(more[150..].iter().map(|path| entry(path)));
    let paths = serde_json::json!({ "paths": entries, "paths_version": 1 });
    fs_err::write(root.join("info/paths.json"), paths.to_string()).unwrap();
    let file = "gamma-3.0-h0_0.conda";
    let archive = world.subdir_dir().join(file);
    rattler_package_streaming::write::write_conda_package(
        fs_err::File::create(&archive).unwrap(),
        root,
        &[
            root.join("lib/present.txt"),
            root.join("info/index.json"),
            root.join("info/paths.json"),
        ]
        .into_iter()
        .chain(more.iter().map(|path| root.join(path)))
        .collect::<Vec<_>>(),
        rattler_conda_types::compression_level::CompressionLevel::Lowest,
        None,
        "gamma-3.0-h0_0",
        None,
        None,
    )
    .unwrap();
    let mut entry = index;
    entry["sha256"] = hex::encode(
        rattler_digest::compute_file_digest::<rattler_digest::Sha256>(&archive).unwrap(),
    )
    .into();
    entry["md5"] =
        hex::encode(rattler_digest::compute_file_digest::<rattler_digest::Md5>(&archive).unwrap())
            .into();
    entry["size"] = fs_err::metadata(&archive).unwrap().len().into();
    let url = format!("{}/chan/{}/{file}", world.server.base, subdir.as_str());
    record(entry, file, &url)
}

/// The linking phase: a package that cannot be linked. A prefix this install created is
/// removed again; one that existed keeps the in-progress marker, and the next install (of a
/// lock that can be installed) repairs it.
#[test]
fn package_that_cannot_be_linked() {
    for existing in [false, true] {
        let world = World::new(false);
        let mut locked = world.locked(&["alpha"], false);
        locked.conda.push(unlinkable(&world));
        let (prefix, before) = if existing {
            existing_prefix(&world)
        } else {
            (world.dir.path().join("new/env"), BTreeMap::new())
        };
        let error = install(&prefix, &locked, &world.options()).unwrap_err();
        assert!(matches!(error, PrefixError::Install { .. }), "{error:?}");
        let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        assert!(chain.contains("gamma"), "{chain}");
        if !existing {
            assert!(!world.dir.path().join("new").exists(), "{chain}");
            continue;
        }
        assert!(prefix.join(keel_prefix::INSTALL_MARKER).exists(), "{chain}");
        // alpha, already installed and unchanged by the lock, is as it was.
        let after = snapshot(&prefix);
        for (path, content) in &before {
            if path.starts_with("conda-meta") {
                continue;
            }
            assert_eq!(after.get(path), Some(content), "{}", path.display());
        }
        let report = install(&prefix, &world.locked(&["alpha"], false), &world.options()).unwrap();
        assert!(report.repaired_interrupted);
        assert!(!prefix.join(keel_prefix::INSTALL_MARKER).exists());
        assert!(prefix.join("lib/alpha.txt").is_file());
    }
}

/// A lock whose URL carries credentials (a user and password, a conda token in the path):
/// neither the error, nor any cause under it, nor its debug form holds them.
#[test]
fn fetch_errors_hold_no_secret() {
    let world = World::new(false);
    let mut locked = world.locked(&["beta"], false);
    let host = world.server.base.trim_start_matches("http://");
    let file = world.file_name("beta");
    let subdir = Subdir::current().unwrap();
    locked.conda[0].url = format!(
        "http://keeluser:hunter2secret@{host}/t/tk-9f8e7d6c5b4a/chan/{}/{file}",
        subdir.as_str()
    )
    .parse()
    .unwrap();
    let prefix = world.dir.path().join("env");
    let error = install(&prefix, &locked, &world.options()).unwrap_err();
    let (failure, _) = fetch_failure(
        &error,
        "beta-2.0-h0_0",
        &format!("http://{host}/chan/{}/{file}", subdir.as_str()),
    );
    assert_eq!(failure, FetchFailure::NotFound);
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    assert!(chain.len() > 1, "{chain:?}");
    let all = format!("{chain:?} {error:?}");
    for secret in ["keeluser", "hunter2secret", "tk-9f8e7d6c5b4a"] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
}
