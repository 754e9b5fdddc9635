//! Regressions of hardening issue #13: what a store trusts from the disk (manifests, file
//! names, folder names, special files) and what prune may delete.

mod common;

use std::path::{Path, PathBuf};

use common::snapshot_for;
use keel_ckpt::{
    AsyncSaver, CheckpointId, CheckpointStore, CkptError, Kind, MANIFEST, MAX_STEP, Retention,
    Snapshot, Status, seal_manifest,
};

fn store() -> (tempfile::TempDir, CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    (dir, store)
}

fn folder(root: &Path, id: &CheckpointId) -> PathBuf {
    root.join(id.kind.as_str()).join(&id.name)
}

fn keep_last(n: usize) -> Retention {
    Retention {
        keep_last: n,
        ..Retention::default()
    }
}

fn manifest_json(root: &Path, id: &CheckpointId) -> serde_json::Value {
    serde_json::from_slice(&fs_err::read(folder(root, id).join(MANIFEST)).unwrap()).unwrap()
}

fn names(root: &Path, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = fs_err::read_dir(root.join(kind))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Hardening issue #13: prune deleted every folder under a kind without a readable manifest:
/// a user's notes, a checkpoint of a newer keel, one whose manifest it could not read.
#[test]
fn prune_leaves_what_it_cannot_prove_keels() {
    let (dir, store) = store();
    let root = dir.path();
    let old = store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let newer_format = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let unreadable = store.save(Kind::Regular, &snapshot_for(3, 16)).unwrap();
    let incomplete = "step-000000000004-0000000000004";
    for step in 5..=7 {
        store.save(Kind::Regular, &snapshot_for(step, 16)).unwrap();
    }
    // A user's folder, a newer keel's checkpoint, an unreadable manifest (a folder where the
    // file should be, as EACCES/EIO would be), and a keel-named folder with no manifest.
    fs_err::create_dir_all(root.join("regular/my-notes")).unwrap();
    fs_err::write(root.join("regular/my-notes/todo.txt"), b"keep me").unwrap();
    let mut manifest = manifest_json(root, &newer_format);
    manifest["format_version"] = 99.into();
    fs_err::write(
        folder(root, &newer_format).join(MANIFEST),
        seal_manifest(manifest),
    )
    .unwrap();
    fs_err::remove_file(folder(root, &unreadable).join(MANIFEST)).unwrap();
    fs_err::create_dir(folder(root, &unreadable).join(MANIFEST)).unwrap();
    fs_err::create_dir_all(root.join("regular").join(incomplete)).unwrap();

    let listed = store.list().unwrap();
    let status = |name: &str| listed.iter().find(|l| l.id.name == name).unwrap().status;
    assert_eq!(status("my-notes"), Status::Foreign);
    assert_eq!(status(&newer_format.name), Status::Unreadable);
    assert_eq!(status(&unreadable.name), Status::Unreadable);
    assert_eq!(status(incomplete), Status::Incomplete);

    let pruned = store.prune(&keep_last(1)).unwrap();
    // Only keel's own, readable and unkept checkpoints go.
    let deleted: Vec<u64> = pruned
        .deleted
        .iter()
        .map(|id| keel_ckpt::parse_folder_name(&id.name).unwrap().0)
        .collect();
    assert_eq!(deleted, [6, 5, 1], "{pruned:?}");
    assert!(!folder(root, &old).exists());
    let left: Vec<&str> = pruned.left.iter().map(|(id, _)| id.name.as_str()).collect();
    assert_eq!(left.len(), 4, "{pruned:?}");
    for name in ["my-notes", &newer_format.name, &unreadable.name, incomplete] {
        assert!(left.contains(&name), "{name} not reported: {pruned:?}");
        assert!(root.join("regular").join(name).exists(), "{name} deleted");
    }
    assert!(root.join("regular/my-notes/todo.txt").exists());
}

/// Hardening issue #13: a stray `.tmp-x` file (not a folder) made prune fail.
#[test]
fn stray_tmp_file_does_not_fail_prune() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    fs_err::write(dir.path().join("regular/.tmp-x"), b"stray").unwrap();
    fs_err::write(
        dir.path()
            .join("regular/.tmp-step-000000000009-0000000000009"),
        b"a file with a temporary's name",
    )
    .unwrap();
    // A temporary keel left (a save killed before its rename) is keel's: it goes.
    fs_err::create_dir(
        dir.path()
            .join("regular/.tmp-step-000000000003-0000000000003"),
    )
    .unwrap();
    let pruned = store.prune(&keep_last(1)).unwrap();
    assert_eq!(pruned.deleted.len(), 1, "{pruned:?}");
    assert_eq!(
        pruned.temporaries,
        ["regular/.tmp-step-000000000003-0000000000003"]
    );
    assert!(dir.path().join("regular/.tmp-x").is_file());
    assert!(
        dir.path()
            .join("regular/.tmp-step-000000000009-0000000000009")
            .is_file()
    );
}

/// Hardening issue #13: a save that committed, followed by a prune that failed, was reported
/// as a failed save (by `save_retaining` and by the background saver).
#[test]
fn committed_save_with_failed_prune_is_not_a_save_failure() {
    let (dir, store) = store();
    let old = store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    // A file where the old checkpoint's removal puts it on its way out: the removal fails.
    let blocker = dir
        .path()
        .join("regular")
        .join(format!(".tmp-{}", old.name));
    fs_err::write(&blocker, b"in the way").unwrap();

    let error = store
        .save_retaining(Kind::Regular, &snapshot_for(2, 16), Some(&keep_last(1)))
        .unwrap_err();
    assert!(
        matches!(error, CkptError::Pruning { .. }),
        "{error}: {error:?}"
    );
    let saved = error.saved().unwrap().clone();
    assert!(error.to_string().contains("is saved"), "{error}");
    assert_eq!(store.load(&saved).unwrap().0.step, 2);

    let mut saver = AsyncSaver::new(store.clone(), Some(keep_last(1))).unwrap();
    saver.save(Kind::Regular, snapshot_for(3, 16)).unwrap();
    let error = saver.finish().unwrap_err();
    assert!(
        matches!(error, CkptError::Pruning { .. }),
        "a committed background save reported as failed: {error}"
    );
    assert_eq!(store.latest_valid().unwrap().manifest.step, 3);
}

/// Hardening issue #13: a concurrent `keel ckpt prune` destroyed a running training's saves in
/// flight. A prune takes the store's lock exclusively, a save shared: here the test holds the
/// shared lock as a save in another process would, and the prune must not delete anything
/// until it is released.
#[test]
fn prune_waits_for_a_save_in_flight() {
    let (dir, store) = store();
    for step in 1..=3 {
        store.save(Kind::Regular, &snapshot_for(step, 16)).unwrap();
    }
    let lock = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join(".keel-lock"))
        .expect("a save creates the lock file at the store's root");
    lock.lock_shared().unwrap();
    let pruner = {
        let store = store.clone();
        std::thread::spawn(move || store.prune(&keep_last(1)).unwrap())
    };
    // Give the prune every chance to run; it must still be waiting.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!pruner.is_finished(), "the prune did not wait for the save");
    assert_eq!(names(dir.path(), "regular").len(), 3);
    lock.unlock().unwrap();
    let pruned = pruner.join().unwrap();
    assert_eq!(pruned.deleted.len(), 2);
    // And the other way: a save waits for a prune.
    lock.lock().unwrap();
    let saver = {
        let store = store.clone();
        std::thread::spawn(move || store.save(Kind::Regular, &snapshot_for(4, 16)).unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!saver.is_finished(), "the save did not wait for the prune");
    assert_eq!(
        names(dir.path(), "regular").len(),
        1,
        "the save wrote during a prune"
    );
    lock.unlock().unwrap();
    saver.join().unwrap();
}

/// Hardening issue #13: `keel ckpt list|verify` on a mistyped path created the folder.
#[test]
fn reading_a_missing_store_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("runs-typo");
    let error = CheckpointStore::open_existing(&missing.to_string_lossy()).unwrap_err();
    assert!(matches!(error, CkptError::NoStore { .. }), "{error}");
    assert!(error.to_string().contains("runs-typo"), "{error}");
    let store = CheckpointStore::local(&missing).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(store.latest_valid().is_err());
    assert!(store.prune(&keep_last(1)).unwrap().deleted.is_empty());
    assert!(!missing.exists(), "reading created the store");
    // Only a save creates it.
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    assert!(missing.is_dir());
    CheckpointStore::open_existing(&missing.to_string_lossy()).unwrap();
}

/// Hardening issue #13: a FIFO as `manifest.json` hung `list`, `verify` and resume; a data
/// file that is a FIFO or a link to `/dev/zero` read without end.
#[test]
fn fifo_and_device_files_are_refused_without_blocking() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let fifo_manifest = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let device_data = store.save(Kind::Regular, &snapshot_for(3, 16)).unwrap();
    let manifest = folder(dir.path(), &fifo_manifest).join(MANIFEST);
    fs_err::remove_file(&manifest).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&manifest)
        .status()
        .unwrap();
    assert!(status.success());
    let data = folder(dir.path(), &device_data).join("model.safetensors");
    fs_err::remove_file(&data).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &data).unwrap();

    let listed = store.list().unwrap();
    assert_eq!(listed[1].status, Status::Unreadable);
    let problem = listed[1].problem.as_deref().unwrap();
    assert!(problem.contains("manifest.json") && problem.contains("not a regular file"));
    let error = store.verify(&device_data).unwrap_err();
    assert!(error.to_string().contains("not a regular file"), "{error}");
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.manifest.step, 1);
    assert_eq!(resume.skipped.len(), 2);
}

/// Hardening issue #13: manifest file names were joined raw: `../../etc/passwd`, absolute
/// names and a name reaching into an older checkpoint were opened (the last even verified).
#[test]
fn manifest_file_names_outside_the_checkpoint_are_refused() {
    let (dir, store) = store();
    let older = store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let original = manifest_json(dir.path(), &newest);
    let older_file = manifest_json(dir.path(), &older)["files"][0].clone();
    for name in [
        "../../etc/passwd".to_string(),
        "/etc/passwd".to_string(),
        "/dev/zero".to_string(),
        format!("../{}/model.safetensors", older.name),
        "..".to_string(),
        MANIFEST.to_string(),
        "model\0.safetensors".to_string(),
        "sub\\model.safetensors".to_string(),
    ] {
        let mut manifest = original.clone();
        let mut entry = older_file.clone();
        entry["name"] = name.clone().into();
        manifest["files"] = serde_json::json!([entry]);
        fs_err::write(
            folder(dir.path(), &newest).join(MANIFEST),
            seal_manifest(manifest),
        )
        .unwrap();
        let error = store.manifest(&newest).unwrap_err();
        assert!(error.to_string().contains("file name"), "{name:?}: {error}");
        assert_eq!(store.latest_valid().unwrap().id, older, "{name:?}");
    }
}

/// Hardening issue #13: verify read a whole file before comparing its size (a 5 GB sparse
/// file cost 5 GB of memory). The size is checked from metadata before anything is read.
#[test]
fn huge_sparse_file_is_refused_by_its_size() {
    let (dir, store) = store();
    let id = store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let data = folder(dir.path(), &id).join("model.safetensors");
    fs_err::File::create(&data)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    let error = store.verify(&id).unwrap_err();
    assert!(
        error.to_string().contains("has 5368709120 bytes"),
        "{error}"
    );
    let error = store.load(&id).unwrap_err();
    assert!(
        error.to_string().contains("has 5368709120 bytes"),
        "{error}"
    );
}

/// Hardening issue #13: a one-bit flip of the step (`2` to `3`) verified and resumed at the
/// wrong step; the manifest now carries its own digest.
#[test]
fn step_bit_flip_in_manifest_is_refused() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let path = folder(dir.path(), &newest).join(MANIFEST);
    let bytes = fs_err::read(&path).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"step\": 2,"));
    fs_err::write(&path, text.replace("\"step\": 2,", "\"step\": 3,")).unwrap();
    let error = store.manifest(&newest).unwrap_err();
    assert!(error.to_string().contains("manifest_blake3"), "{error}");
    assert_eq!(store.latest_valid().unwrap().manifest.step, 1);
}

/// Hardening issue #13: kind, step and time of a manifest must agree with its folder, the
/// step must fit the folder name, and the next step must not overflow.
#[test]
fn manifest_must_agree_with_its_folder_and_steps_are_bounded() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let original = manifest_json(dir.path(), &newest);
    let path = folder(dir.path(), &newest).join(MANIFEST);
    for (field, value) in [
        ("step", serde_json::json!(u64::MAX)),
        ("step", serde_json::json!(3)),
        ("kind", serde_json::json!("best")),
        ("created_unix_ms", serde_json::json!(1)),
    ] {
        let mut manifest = original.clone();
        manifest[field] = value.clone();
        fs_err::write(&path, seal_manifest(manifest)).unwrap();
        let error = store.manifest(&newest).unwrap_err();
        assert!(
            error.to_string().contains("manifest.json says"),
            "{field} = {value}: {error}"
        );
    }
    let error = store
        .save(
            Kind::Regular,
            &Snapshot {
                step: MAX_STEP + 1,
                ..Snapshot::default()
            },
        )
        .unwrap_err();
    assert!(matches!(error, CkptError::Setting(_)), "{error}");
    let id = store
        .save(
            Kind::Regular,
            &Snapshot {
                step: MAX_STEP,
                ..Snapshot::default()
            },
        )
        .unwrap();
    let manifest = store.manifest(&id).unwrap();
    assert_eq!(manifest.next_step(), None);
    assert_eq!(
        store
            .manifest(&store.list().unwrap()[0].id)
            .unwrap()
            .next_step(),
        Some(2)
    );
}

/// Hardening issue #13: a manifest of the previous format (1, no digest) still reads.
#[test]
fn legacy_manifest_without_digest_reads_unverified() {
    let (dir, store) = store();
    let id = store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let mut manifest = manifest_json(dir.path(), &id);
    manifest
        .as_object_mut()
        .unwrap()
        .shift_remove("manifest_blake3");
    manifest["format_version"] = 1.into();
    let path = folder(dir.path(), &id).join(MANIFEST);
    fs_err::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    assert_eq!(store.load(&id).unwrap().1, snapshot_for(1, 16));
    // Format 2 without its digest is not a legacy manifest.
    manifest["format_version"] = 2.into();
    fs_err::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    assert!(store.manifest(&id).is_err());
}

/// Hardening issue #13 (sibling): a shape whose element count overflows is an error, not a
/// panic.
#[test]
fn tensor_shape_overflow_is_an_error() {
    let error = keel_ckpt::Tensor::new("w", keel_ckpt::Dtype::F32, vec![usize::MAX, 2], vec![0; 8])
        .unwrap_err();
    assert!(error.to_string().contains("more than usize"), "{error}");
}
