//! Disk full and read-only: checkpoints are saved into a 5 MiB tmpfs (mounted in a user and
//! mount namespace the test makes with `unshare`) until the disk is full, then into the same
//! file system remounted read-only. Each failing save reports why and where, leaves nothing
//! that looks like a checkpoint, and the last good one still loads exactly.

mod common;

use std::path::Path;
use std::process::Command;

use common::snapshot_for;
use keel_ckpt::{CheckpointStore, Kind, Retention};

/// Values in the largest tensor: 1 MiB of f32 per checkpoint.
const SIZE: usize = 256 * 1024;

#[test]
#[ignore = "run by disk_full_is_reported_and_harmless inside its own tmpfs"]
fn disk_full_child() {
    let Some(dir) = std::env::var_os("KEEL_CKPT_FULL_DIR") else {
        return;
    };
    let store = CheckpointStore::local(Path::new(&dir)).unwrap();
    let mut last_good = None;
    let mut failure = None;
    for step in 1..=20 {
        match store.save(Kind::Regular, &snapshot_for(step, SIZE)) {
            Ok(_) => last_good = Some(step),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let error = failure.expect("a 5 MiB file system never filled up");
    let message = format!("{error}");
    assert!(message.contains("No space left on device"), "{message}");
    let last_good = last_good.expect("not even one checkpoint fitted");
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.manifest.step, last_good);
    assert_eq!(resume.snapshot, snapshot_for(last_good, SIZE));
    assert!(resume.skipped.is_empty(), "{:?}", resume.skipped);
    // Pruning makes room again, and saving works.
    store
        .prune(&Retention {
            keep_last: 1,
            ..Retention::default()
        })
        .unwrap();
    store.save(Kind::Regular, &snapshot_for(100, SIZE)).unwrap();
    assert_eq!(store.latest_valid().unwrap().manifest.step, 100);

    // Read-only (as a file system remounted read-only, which even root cannot write): the
    // save fails naming the path, and the newest checkpoint still loads.
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(remount.success());
    let error = store
        .save(Kind::Regular, &snapshot_for(101, SIZE))
        .unwrap_err();
    let message = format!("{error}");
    assert!(message.contains("Read-only file system"), "{message}");
    assert!(
        message.contains(&*Path::new(&dir).to_string_lossy()),
        "{message}"
    );
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.snapshot, snapshot_for(100, SIZE));
}

#[test]
fn disk_full_is_reported_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    fs_err::create_dir_all(&mount).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=5m keel-test {mount} && exec {exe} --exact disk_full_child --ignored --nocapture --test-threads=1",
        mount = mount.display(),
        exe = exe.display()
    );
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env("KEEL_CKPT_FULL_DIR", &mount)
        .output()
        .expect("unshare (util-linux) is needed for this test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child did not run: {stdout}\n{stderr}"
    );
}
