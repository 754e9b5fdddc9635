//! Issue #18: saves stream each tensor's bytes straight to the file (the safetensors header
//! computed first, BLAKE3 hashed beside the write) and loads stream them back; the files are
//! the ones keel wrote before it streamed, byte for byte, and checkpoints written that way
//! still load.

mod common;

use common::snapshot_for;
use keel_ckpt::{
    CheckpointStore, FORMAT_VERSION, FileEntry, Kind, MANIFEST, Manifest, Snapshot, seal_manifest,
};

fn serialized(snapshot: &Snapshot, group: &str) -> Vec<u8> {
    safetensors::serialize(
        snapshot.groups[group].iter().map(|(n, t)| (n.as_str(), t)),
        None,
    )
    .unwrap()
}

/// Every file of a streamed save is exactly `safetensors::serialize` of its group (what the
/// save wrote when it serialized each group to memory first), and its BLAKE3 in the manifest
/// is the file's.
#[test]
fn a_streamed_save_writes_exactly_the_serialized_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let snapshot = snapshot_for(12, 3 << 18);
    let id = store.save(Kind::Regular, &snapshot).unwrap();
    let folder = dir.path().join(id.to_string());
    let manifest = store.manifest(&id).unwrap();
    assert_eq!(manifest.files.len(), 2);
    for entry in &manifest.files {
        let group = entry.name.strip_suffix(".safetensors").unwrap();
        let written = fs_err::read(folder.join(&entry.name)).unwrap();
        assert!(
            written == serialized(&snapshot, group),
            "{} differs",
            entry.name
        );
        assert_eq!(entry.size, written.len() as u64);
        assert_eq!(entry.blake3, blake3::hash(&written).to_hex().as_str());
    }
}

/// A checkpoint as keel wrote it before saves streamed (each group serialized to memory,
/// then written; the manifest sealed last) loads as the state it holds, and verifies.
#[test]
fn a_checkpoint_written_before_streaming_loads() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot_for(5, 4096);
    let name = "step-000000000005-1700000000000";
    let folder = dir.path().join("regular").join(name);
    fs_err::create_dir_all(&folder).unwrap();
    let mut files = Vec::new();
    for group in snapshot.groups.keys() {
        let bytes = serialized(&snapshot, group);
        let file = format!("{group}.safetensors");
        fs_err::write(folder.join(&file), &bytes).unwrap();
        files.push(FileEntry {
            name: file,
            size: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            rank: None,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: Kind::Regular,
        step: snapshot.step,
        epoch: snapshot.epoch,
        created_unix_ms: 1_700_000_000_000,
        metrics: snapshot.metrics.clone(),
        user: snapshot.user.clone(),
        environment: None,
        device: None,
        world_size: None,
        files,
    };
    fs_err::write(
        folder.join(MANIFEST),
        seal_manifest(serde_json::to_value(&manifest).unwrap()),
    )
    .unwrap();

    let store = CheckpointStore::local(dir.path()).unwrap();
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.id.name, name);
    assert!(resume.skipped.is_empty(), "{:?}", resume.skipped);
    assert!(resume.snapshot == snapshot, "the loaded state differs");
    assert_eq!(store.verify(&resume.id).unwrap(), manifest);
}
