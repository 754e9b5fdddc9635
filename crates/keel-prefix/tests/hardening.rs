//! Hardening issue #13: records, `RECORD`s, fingerprints and prefixes written to attack keel.
//! Every path read from a file goes through `enclosed_path` before it is joined; symlinks that
//! lead out of the prefix are never followed; only regular files are opened.

use std::future::Future as _;
use std::path::Path;
use std::task::{Context, Poll, Waker};

use keel_prefix::{
    FileKind, FileProblem, Fingerprint, HashOptions, InstallOptions, LockedPlatform, PrefixError,
    UnsafePath, fingerprint, install, verify,
};

const VICTIM: &str = "a file keel must never touch\n";

/// A folder with a victim file beside a prefix (`root/victim.txt`, `root/prefix/conda-meta`).
fn setup() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(root.path().join("prefix/conda-meta")).unwrap();
    fs_err::write(root.path().join("victim.txt"), VICTIM).unwrap();
    root
}

/// A conda-meta record of package `name` that owns `paths` (as `files` and `paths_data`).
fn record(name: &str, paths: &[&str]) -> String {
    let entries: Vec<serde_json::Value> = paths
        .iter()
        .map(|path| {
            serde_json::json!({
                "_path": path,
                "path_type": "hardlink",
                "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                "size_in_bytes": VICTIM.len(),
            })
        })
        .collect();
    serde_json::json!({
        "name": name,
        "version": "1.0",
        "build": "h0_0",
        "build_number": 0,
        "subdir": "linux-64",
        "depends": [],
        "fn": format!("{name}-1.0-h0_0.conda"),
        "url": format!("https://example.invalid/linux-64/{name}-1.0-h0_0.conda"),
        "channel": "https://example.invalid",
        "files": paths,
        "paths_data": { "paths_version": 1, "paths": entries },
    })
    .to_string()
}

fn write_record(prefix: &Path, name: &str, paths: &[&str]) -> std::path::PathBuf {
    let path = prefix
        .join("conda-meta")
        .join(format!("{name}-1.0-h0_0.json"));
    fs_err::write(&path, record(name, paths)).unwrap();
    path
}

/// Polls `install` once. Every check keel makes before handing records to rattler runs before
/// the first await, so a refused record gives `Ready(Err(..))` without a runtime; a record that
/// got through would reach rattler (which needs tokio and would panic or stay pending here).
fn install_first_poll(prefix: &Path, repair: bool) -> Poll<Result<(), PrefixError>> {
    let locked = LockedPlatform {
        conda: vec![],
        pypi: vec![],
    };
    let options = InstallOptions {
        package_cache: prefix.join("../pkgs"),
        platform: None,
        repair,
        uv: None,
        download: keel_solve::HttpOptions::default(),
    };
    let mut future = Box::pin(install::<
        rattler::install::IndicatifReporter<rattler::install::DefaultProgressFormatter>,
    >(prefix, &locked, &options, None));
    let mut context = Context::from_waker(Waker::noop());
    future
        .as_mut()
        .poll(&mut context)
        .map(|result| result.map(|_| ()))
}

fn assert_unsafe(error: &PrefixError, record: &Path, reason: UnsafePath) {
    match error {
        PrefixError::UnsafeRecordPath {
            record: named,
            reason: found,
            ..
        } => {
            assert_eq!(named, record);
            assert_eq!(*found, reason);
        }
        other => panic!("expected an unsafe record path, got {other:?}"),
    }
    assert!(
        error.to_string().contains("remove or fix that record"),
        "{error}"
    );
}

/// Hardening issue #13: a record of a package the lock does not pin, naming `../victim.txt`:
/// a plain install (which removes that package) or a repair refuses it before rattler is handed
/// anything, names the record, writes no in-progress marker, and the victim stays.
#[test]
fn record_path_with_dotdot_is_refused() {
    let root = setup();
    let prefix = root.path().join("prefix");
    let record = write_record(&prefix, "evil", &["../victim.txt"]);
    for repair in [false, true] {
        let Poll::Ready(Err(error)) = install_first_poll(&prefix, repair) else {
            panic!("the record reached the installer (repair: {repair})");
        };
        assert_unsafe(&error, &record, UnsafePath::ParentDir);
        assert!(!prefix.join(keel_prefix::INSTALL_MARKER).exists());
    }
    assert_eq!(
        fs_err::read_to_string(root.path().join("victim.txt")).unwrap(),
        VICTIM
    );
    // Verify and hash refuse the record too.
    let error = verify(&prefix, None).unwrap_err();
    assert_unsafe(&error, &record, UnsafePath::ParentDir);
    let error = fingerprint(&prefix, &HashOptions::default()).unwrap_err();
    assert_unsafe(&error, &record, UnsafePath::ParentDir);
    // Once the record is removed, the prefix is usable again.
    fs_err::remove_file(&record).unwrap();
    verify(&prefix, None).unwrap();
}

/// Hardening issue #13: an absolute `_path` made rattler panic on `--repair` and left the
/// marker behind for every later run. Now it is an error naming the record, also when an
/// earlier run's marker is there (the message says how to recover).
#[test]
fn record_with_absolute_path_is_refused_even_after_an_interruption() {
    let root = setup();
    let prefix = root.path().join("prefix");
    let victim = root.path().join("victim.txt").display().to_string();
    let record = write_record(&prefix, "evil", &[&victim]);
    fs_err::write(prefix.join(keel_prefix::INSTALL_MARKER), "interrupted\n").unwrap();
    for repair in [false, true] {
        let Poll::Ready(Err(error)) = install_first_poll(&prefix, repair) else {
            panic!("the record reached the installer");
        };
        assert_unsafe(&error, &record, UnsafePath::Absolute);
    }
    // The interrupted run's malformed records are still removed; this one is not malformed,
    // so it stays for the user to look at.
    assert!(record.exists());
    assert_eq!(fs_err::read_to_string(&victim).unwrap(), VICTIM);
}

/// Hardening issue #13: NUL bytes and Windows drives in a record's path are refused too.
#[test]
fn record_with_nul_or_drive_is_refused() {
    for (path, reason) in [
        ("lib/x\0y", UnsafePath::Nul),
        ("C:\\Windows\\victim.txt", UnsafePath::Drive),
        ("lib\\..\\..\\victim.txt", UnsafePath::ParentDir),
    ] {
        let root = setup();
        let prefix = root.path().join("prefix");
        let record = write_record(&prefix, "evil", &[path]);
        let error = verify(&prefix, None).unwrap_err();
        assert_unsafe(&error, &record, reason);
    }
}

/// Hardening issue #13: a symlinked directory in the prefix that leads out of it: install
/// refuses to hand rattler a record whose paths go through it (unlink would delete the file
/// outside), and verify reports the file as outside the prefix without reading it (it printed
/// the outside file's sha256 before).
#[cfg(unix)]
#[test]
fn symlink_out_of_the_prefix_is_not_followed() {
    let root = setup();
    let prefix = root.path().join("prefix");
    std::os::unix::fs::symlink(root.path(), prefix.join("lib")).unwrap();
    let record = write_record(&prefix, "evil", &["lib/victim.txt"]);
    let Poll::Ready(Err(error)) = install_first_poll(&prefix, true) else {
        panic!("the record reached the installer");
    };
    assert_unsafe(&error, &record, UnsafePath::ThroughSymlink);

    let report = verify(&prefix, None).unwrap();
    assert_eq!(report.changed_files.len(), 1, "{:?}", report.changed_files);
    assert_eq!(report.changed_files[0].problem, FileProblem::OutsidePrefix);
    assert_eq!(report.files_checked, 0);
    let json = serde_json::to_string(&report).unwrap();
    let victim_sha =
        hex::encode(rattler_digest::compute_bytes_digest::<rattler_digest::Sha256>(VICTIM));
    assert!(!json.contains(&victim_sha), "{json}");

    // A file symlink out of the prefix, where the record says a file is: the same.
    fs_err::remove_file(prefix.join("lib")).unwrap();
    fs_err::create_dir_all(prefix.join("lib")).unwrap();
    std::os::unix::fs::symlink(
        root.path().join("victim.txt"),
        prefix.join("lib/victim.txt"),
    )
    .unwrap();
    let report = verify(&prefix, None).unwrap();
    assert_eq!(report.changed_files[0].problem, FileProblem::OutsidePrefix);
    assert!(
        !serde_json::to_string(&report)
            .unwrap()
            .contains(&victim_sha)
    );
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Hardening issue #13: a FIFO as `*.dist-info/METADATA` hung `keel verify`; now it is an error
/// naming the file. A FIFO as `RECORD` (or anywhere in the prefix) is listed by the walk as a
/// FIFO, never opened, and shows as drift.
#[cfg(unix)]
#[test]
fn fifo_in_the_prefix_never_blocks() {
    let root = setup();
    let prefix = root.path().join("prefix");
    let dist = prefix.join("lib/python3.12/site-packages/evil-1.0.dist-info");
    fs_err::create_dir_all(&dist).unwrap();
    mkfifo(&dist.join("METADATA"));
    let error = verify(&prefix, None).unwrap_err();
    assert!(error.to_string().contains("METADATA"), "{error}");
    let chain = format!("{:?}", std::error::Error::source(&error));
    assert!(chain.contains("FIFO"), "{chain}");

    fs_err::remove_file(dist.join("METADATA")).unwrap();
    fs_err::write(dist.join("METADATA"), "Name: evil\nVersion: 1.0\n").unwrap();
    mkfifo(&dist.join("RECORD"));
    let error = verify(&prefix, None).unwrap_err();
    assert!(error.to_string().contains("RECORD"), "{error}");

    fs_err::remove_file(dist.join("RECORD")).unwrap();
    mkfifo(&prefix.join("pipe"));
    let report = verify(&prefix, None).unwrap();
    assert!(report.unowned_files.contains(&"pipe".to_string()));
    let (print, _) = fingerprint(&prefix, &HashOptions::default()).unwrap();
    let pipe = print.files.iter().find(|file| file.path == "pipe").unwrap();
    assert_eq!(pipe.kind, FileKind::Fifo);
    assert_eq!(pipe.blake3, None);
    assert_eq!(print.summary.special, 1);
}

/// Hardening issue #13: a FIFO named like a record is an error naming it, not a hang.
#[cfg(unix)]
#[test]
fn fifo_record_is_refused() {
    let root = setup();
    let prefix = root.path().join("prefix");
    mkfifo(&prefix.join("conda-meta/evil-1.0-h0_0.json"));
    let error = verify(&prefix, None).unwrap_err();
    let text = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(text.contains("evil-1.0-h0_0.json"), "{text}");
    assert!(text.contains("FIFO"), "{text}");
}

/// Hardening issue #13: `RECORD` entries that leave the prefix (pip allows `../../bin/x` for
/// scripts, which stays inside) are findings, not files keel reads or counts as owned.
#[test]
fn dist_info_record_leaving_the_prefix_is_a_finding() {
    let root = setup();
    let prefix = root.path().join("prefix");
    let site = prefix.join("lib/python3.12/site-packages");
    let dist = site.join("evil-1.0.dist-info");
    fs_err::create_dir_all(&dist).unwrap();
    fs_err::create_dir_all(prefix.join("bin")).unwrap();
    fs_err::write(prefix.join("bin/evil"), "#!/bin/sh\n").unwrap();
    fs_err::write(dist.join("METADATA"), "Name: evil\nVersion: 1.0\n").unwrap();
    fs_err::write(
        dist.join("RECORD"),
        "../../../bin/evil,,\n../../../../victim.txt,,\n/etc/passwd,,\nC:\\x,,\nevil-1.0.dist-info/METADATA,,\nevil-1.0.dist-info/RECORD,,\n",
    )
    .unwrap();
    let report = verify(&prefix, None).unwrap();
    let outside: Vec<&str> = report
        .record_paths_outside_prefix
        .iter()
        .map(|found| found.path.as_str())
        .collect();
    assert_eq!(outside, ["../../../../victim.txt", "/etc/passwd", "C:\\x"]);
    assert!(!report.is_clean());
    // The script pip put in bin/ is the dist's, not unowned.
    assert!(
        report.unowned_files.is_empty(),
        "{:?}",
        report.unowned_files
    );
}

/// Hardening issue #13: a fingerprint listing a path that could leave a prefix is not one keel
/// wrote; `keel diff` refuses it naming the file.
#[test]
fn fingerprint_with_unsafe_path_is_refused() {
    let root = setup();
    let prefix = root.path().join("prefix");
    let (print, _) = fingerprint(&prefix, &HashOptions::default()).unwrap();
    let mut value = serde_json::to_value(&print).unwrap();
    value["files"] =
        serde_json::json!([{"path": "../victim.txt", "kind": "file", "size": 1, "blake3": "00"}]);
    let path = root.path().join("edited.json");
    fs_err::write(&path, value.to_string()).unwrap();
    let error = Fingerprint::from_path(&path).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("edited.json") && text.contains("../victim.txt"),
        "{text}"
    );
}

/// Hardening issue #13 (found by the bad-input suite, `control-chars-in-name.json`): rattler
/// reads a record's package name unchecked; a name with escape codes reached the installer,
/// whose bookkeeping panicked. A name conda would not accept is an error naming the record, for
/// install, verify and hash alike.
#[test]
fn record_with_a_name_conda_refuses_is_an_error() {
    for name in ["evil\u{1b}[31mred", "evil/../x", "evil name", "", "évil"] {
        let root = setup();
        let prefix = root.path().join("prefix");
        let path = prefix.join("conda-meta/evil-1.0-h0_0.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&record("evil", &["share/evil"])).unwrap();
        value["name"] = name.into();
        fs_err::write(&path, value.to_string()).unwrap();
        let Poll::Ready(Err(error)) = install_first_poll(&prefix, false) else {
            panic!("the record named {name:?} reached the installer");
        };
        for error in [
            error,
            verify(&prefix, None).unwrap_err(),
            fingerprint(&prefix, &HashOptions::default()).unwrap_err(),
        ] {
            match &error {
                PrefixError::Record { path: named, .. } => assert_eq!(named, &path, "{name:?}"),
                other => panic!("{name:?}: {other}"),
            }
        }
    }
}
