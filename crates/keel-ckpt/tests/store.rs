//! The checkpoint store on local disk: round trips, kinds, corruption of every file,
//! newer formats, lying safetensors headers, retention, async saves and their failures.

mod common;

use std::path::Path;

use common::snapshot_for;
use keel_ckpt::{
    AsyncSaver, CheckpointStore, CkptError, Goal, Kind, MANIFEST, Retention, Snapshot,
};

fn store() -> (tempfile::TempDir, CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    (dir, store)
}

fn checkpoint_dir(root: &Path, id: &keel_ckpt::CheckpointId) -> std::path::PathBuf {
    root.join(id.kind.as_str()).join(&id.name)
}

#[test]
fn round_trip_every_group_dtype_and_field() {
    let (_dir, store) = store();
    let mut saved = snapshot_for(7, 256);
    saved.environment = Some(serde_json::json!({"root": "abc", "label": "node-a"}));
    saved.device = Some(serde_json::json!({"driver_version": 12040, "gpus": [{"name": "H100"}]}));
    let id = store.save(Kind::Regular, &saved).unwrap();
    let (manifest, loaded) = store.load(&id).unwrap();
    assert_eq!(loaded, saved);
    assert_eq!(manifest.files.len(), 2);
    assert_eq!(manifest.step, 7);
    // The environment and device are opaque JSON, kept as they were given.
    assert_eq!(manifest.environment, saved.environment);
    assert_eq!(manifest.device, saved.device);
}

#[test]
fn kinds_are_kept_apart_and_newest_wins() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(10, 64)).unwrap();
    store.save(Kind::Best, &snapshot_for(12, 64)).unwrap();
    store.save(Kind::Emergency, &snapshot_for(15, 64)).unwrap();
    let interrupted = store
        .save(Kind::Interrupted, &snapshot_for(20, 64))
        .unwrap();
    for kind in Kind::ALL {
        assert!(dir.path().join(kind.as_str()).is_dir(), "{kind}");
    }
    let listed = store.list().unwrap();
    let kinds: Vec<Kind> = listed.iter().map(|l| l.id.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Regular,
            Kind::Best,
            Kind::Emergency,
            Kind::Interrupted
        ]
    );
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.id, interrupted);
    assert_eq!(resume.snapshot, snapshot_for(20, 64));
}

/// Truncating or flipping a bit anywhere in any file of the newest checkpoint makes
/// `latest_valid` skip it (saying why) and load the one before, exactly.
#[test]
fn every_corruption_of_every_file_falls_back() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 512)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 512)).unwrap();
    let folder = checkpoint_dir(dir.path(), &newest);
    let files: Vec<String> = fs_err::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        let path = folder.join(file);
        let original = fs_err::read(&path).unwrap();
        let len = original.len();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [0, 1, len / 2, len - 1] {
            cases.push((
                format!("{file} truncated to {cut}"),
                original[..cut].to_vec(),
            ));
        }
        for position in [0, 7, 8, len / 3, len / 2, len - 1] {
            for bit in [0, 7] {
                let mut flipped = original.clone();
                flipped[position] ^= 1 << bit;
                cases.push((format!("{file} bit {bit} of byte {position}"), flipped));
            }
        }
        for (case, bytes) in cases {
            fs_err::write(&path, &bytes).unwrap();
            let resume = store.latest_valid().unwrap();
            // The manifest carries its own digest: no change of any file verifies.
            assert_ne!(resume.id, newest, "{case}: a corrupted {file} verified");
            assert_eq!(resume.snapshot, snapshot_for(1, 512), "{case}");
            assert_eq!(resume.skipped.len(), 1, "{case}");
            assert_eq!(resume.skipped[0].0, newest, "{case}");
        }
        fs_err::write(&path, &original).unwrap();
        assert_eq!(store.latest_valid().unwrap().id, newest);
    }
}

#[test]
fn newer_format_is_skipped_with_a_clear_reason() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 64)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 64)).unwrap();
    let manifest_path = checkpoint_dir(dir.path(), &newest).join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&manifest_path).unwrap()).unwrap();
    manifest["format_version"] = 9.into();
    fs_err::write(&manifest_path, manifest.to_string()).unwrap();
    let error = store.manifest(&newest).unwrap_err();
    assert!(
        matches!(error, CkptError::NewerFormat { found: 9, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade keel"));
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.snapshot.step, 1);
    assert!(resume.skipped[0].1.contains("format 9"));
}

/// A safetensors file whose header claims more data than it has, with a manifest made to
/// match its bytes: size and hash pass, the header check does not.
#[test]
fn a_lying_safetensors_header_is_refused() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 64)).unwrap();
    let newest = store.save(Kind::Regular, &snapshot_for(2, 64)).unwrap();
    let folder = checkpoint_dir(dir.path(), &newest);
    let header = br#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    fs_err::write(folder.join("model.safetensors"), &bytes).unwrap();
    let manifest_path = folder.join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&manifest_path).unwrap()).unwrap();
    for file in manifest["files"].as_array_mut().unwrap() {
        if file["name"] == "model.safetensors" {
            file["size"] = bytes.len().into();
            file["blake3"] = blake3::hash(&bytes).to_hex().to_string().into();
        }
    }
    fs_err::write(&manifest_path, keel_ckpt::seal_manifest(manifest)).unwrap();
    let error = store.load(&newest).unwrap_err();
    assert!(error.to_string().contains("model.safetensors"), "{error}");
    assert_eq!(store.latest_valid().unwrap().snapshot.step, 1);
}

#[test]
fn retention_keeps_what_it_should() {
    let (_dir, store) = store();
    for step in 1..=10 {
        store
            .save(Kind::Regular, &snapshot_for(step * 10, 16))
            .unwrap();
    }
    for (step, loss) in [(15, 0.5), (25, 0.2), (35, 0.9), (45, 0.3)] {
        let mut snapshot = snapshot_for(step, 16);
        snapshot.metrics.insert("val_loss".into(), loss);
        store.save(Kind::Best, &snapshot).unwrap();
    }
    assert_eq!(store.best_value("val_loss", Goal::Min).unwrap(), Some(0.2));
    let retention = Retention {
        keep_last: 3,
        keep_best: 2,
        keep_every: Some(40),
        best_metric: Some(("val_loss".into(), Goal::Min)),
    };
    store.prune(&retention).unwrap();
    let kept: Vec<(Kind, u64)> = store
        .list()
        .unwrap()
        .iter()
        .map(|l| (l.id.kind, l.manifest.as_ref().unwrap().step))
        .collect();
    assert_eq!(
        kept,
        [
            (Kind::Best, 25),
            (Kind::Regular, 40),
            (Kind::Best, 45),
            (Kind::Regular, 80),
            (Kind::Regular, 90),
            (Kind::Regular, 100)
        ]
    );
}

/// The newest valid checkpoint is never pruned, even when retention would.
#[test]
fn prune_never_deletes_the_newest_valid() {
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let good = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap();
    let broken = store.save(Kind::Regular, &snapshot_for(3, 16)).unwrap();
    fs_err::write(
        checkpoint_dir(dir.path(), &broken).join("model.safetensors"),
        b"x",
    )
    .unwrap();
    let retention = Retention {
        keep_last: 1,
        ..Retention::default()
    };
    store.prune(&retention).unwrap();
    assert_eq!(store.latest_valid().unwrap().id, good);
}

#[test]
fn async_saves_land_in_order_and_failures_are_reported() {
    let (dir, store) = store();
    let mut saver = AsyncSaver::new(store.clone(), None).unwrap();
    assert!(
        saver
            .save(Kind::Regular, snapshot_for(1, 128))
            .unwrap()
            .is_none()
    );
    let first = saver
        .save(Kind::Regular, snapshot_for(2, 128))
        .unwrap()
        .unwrap();
    assert_eq!(store.manifest(&first).unwrap().step, 1);
    let second = saver.wait().unwrap().unwrap();
    assert_eq!(store.manifest(&second).unwrap().step, 2);

    // Make the next commit fail: the kind folder becomes a file.
    let regular = dir.path().join("regular");
    let moved = dir.path().join("regular-moved");
    fs_err::rename(&regular, &moved).unwrap();
    fs_err::write(&regular, b"not a folder").unwrap();
    saver.save(Kind::Regular, snapshot_for(3, 128)).unwrap();
    let error = saver.save(Kind::Regular, snapshot_for(4, 128)).unwrap_err();
    assert!(
        matches!(error, CkptError::BackgroundSave { step: 3, .. }),
        "{error}"
    );
    let error = saver.finish().unwrap_err();
    assert!(
        matches!(error, CkptError::BackgroundSave { step: 4, .. }),
        "{error}"
    );
    fs_err::remove_file(&regular).unwrap();
    fs_err::rename(&moved, &regular).unwrap();
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.snapshot, snapshot_for(2, 128));
    assert!(resume.skipped.is_empty());
}

/// A read-only folder: the save fails with the path, the previous checkpoint stays loadable.
#[test]
fn read_only_folder_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, store) = store();
    store.save(Kind::Regular, &snapshot_for(1, 16)).unwrap();
    let regular = dir.path().join("regular");
    fs_err::set_permissions(&regular, std::fs::Permissions::from_mode(0o555)).unwrap();
    if fs_err::write(regular.join("probe"), b"x").is_ok() {
        // Root ignores permissions; nothing to test here.
        fs_err::remove_file(regular.join("probe")).unwrap();
        return;
    }
    let error = store.save(Kind::Regular, &snapshot_for(2, 16)).unwrap_err();
    assert!(error.to_string().contains("regular"), "{error}");
    fs_err::set_permissions(&regular, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(store.latest_valid().unwrap().snapshot.step, 1);
}

#[test]
fn bad_tensors_and_names_are_refused() {
    let error =
        keel_ckpt::Tensor::new("w", keel_ckpt::Dtype::F32, vec![2, 3], vec![0; 20]).unwrap_err();
    assert!(
        error.to_string().contains("needs 24 bytes, got 20"),
        "{error}"
    );
    let (_dir, store) = store();
    let mut snapshot = Snapshot::default();
    snapshot
        .groups
        .insert("../escape".into(), Default::default());
    assert!(matches!(
        store.save(Kind::Regular, &snapshot),
        Err(CkptError::Setting(_))
    ));
    let error = store.latest_valid().unwrap_err();
    assert!(
        matches!(error, CkptError::NoValidCheckpoint { .. }),
        "{error}"
    );
}

/// Regression (found by the crash campaign): serde_json parsed some floats one ULP off
/// (`1/65` came back as 0.015384615384615384), so a loaded metric differed from the saved one.
/// The workspace enables serde_json's `float_roundtrip`.
#[test]
fn metrics_round_trip_bit_for_bit() {
    let (_dir, store) = store();
    let mut snapshot = Snapshot::default();
    let values = [
        1.0 / 65.0,
        0.1 + 0.2,
        f64::MIN_POSITIVE,
        1e300,
        -2.5e-308,
        1.0 / 3.0,
    ];
    for (i, value) in values.iter().enumerate() {
        snapshot.metrics.insert(format!("m{i}"), *value);
    }
    let id = store.save(Kind::Regular, &snapshot).unwrap();
    let (_, loaded) = store.load(&id).unwrap();
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            loaded.metrics[&format!("m{i}")].to_bits(),
            value.to_bits(),
            "{value}"
        );
    }
}

#[test]
fn best_is_saved_only_when_it_improves() {
    let (_dir, store) = store();
    let with = |step: u64, accuracy: f64| {
        let mut snapshot = snapshot_for(step, 16);
        snapshot.metrics.insert("val_accuracy".into(), accuracy);
        snapshot
    };
    let saved: Vec<bool> = [
        (1, 0.5),
        (2, 0.7),
        (3, 0.6),
        (4, 0.7),
        (5, 0.9),
        (6, f64::NAN),
    ]
    .into_iter()
    .map(|(step, accuracy)| {
        store
            .save_if_best("val_accuracy", Goal::Max, &with(step, accuracy))
            .unwrap()
            .is_some()
    })
    .collect();
    assert_eq!(saved, [true, true, false, false, true, false]);
    assert_eq!(
        store.best_value("val_accuracy", Goal::Max).unwrap(),
        Some(0.9)
    );
    let error = store
        .save_if_best("val_loss", Goal::Min, &with(7, 0.1))
        .unwrap_err();
    assert!(error.to_string().contains("val_loss"), "{error}");
}
