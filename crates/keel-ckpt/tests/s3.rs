//! Checkpoints on S3-compatible object storage: a real S3 server (`s3s-fs`, installed by
//! `.ci/run`) on loopback, no mocks. Data objects go first and the manifest last; an upload cut
//! short (objects without a manifest) and a changed object are skipped on resume.

mod common;
use keel_test_support::s3 as s3_server;

use std::sync::Arc;

use common::snapshot_for;
use keel_ckpt::{AsyncSaver, CheckpointStore, Kind, Retention};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use s3_server::{BUCKET, KEY, SECRET, Server, start};

fn object_store(server: &Server) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEY)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap(),
    )
}

#[test]
fn s3_save_resume_skip_and_prune() {
    let server = start();
    let store = CheckpointStore::object_store(
        object_store(&server),
        ObjectPath::from("runs/exp1"),
        "s3://checkpoints/runs/exp1",
    )
    .unwrap();
    let mut ids = Vec::new();
    for step in 1..=3 {
        ids.push(
            store
                .save(Kind::Regular, &snapshot_for(step, 4096))
                .unwrap(),
        );
    }
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.snapshot, snapshot_for(3, 4096));

    // An upload cut short: data objects of step 4 but no manifest. (Written with a client of
    // its own: an HTTP connection pooled on this test's runtime would stall the store's.)
    let objects = object_store(&server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(objects.put(
            &ObjectPath::from(
                "runs/exp1/regular/step-000000000004-0000000000001/model.safetensors",
            ),
            PutPayload::from(vec![1u8; 100]),
        ))
        .unwrap();
    // And step 3's optimizer object replaced with other bytes.
    let optimizer = ObjectPath::from(format!(
        "runs/exp1/regular/{}/optimizer.safetensors",
        ids[2].name
    ));
    runtime
        .block_on(objects.put(&optimizer, PutPayload::from(vec![0u8; 64])))
        .unwrap();
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.snapshot, snapshot_for(2, 4096));
    let reasons: Vec<&str> = resume.skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("no manifest"), "{reasons:?}");
    assert!(reasons[1].contains("optimizer.safetensors"), "{reasons:?}");

    // Background saves, then retention: the oldest goes; the incomplete one (no write marker:
    // keel cannot prove it abandoned, it may be a save in flight) is left and reported.
    let mut saver = AsyncSaver::new(
        store.clone(),
        Some(Retention {
            keep_last: 2,
            ..Retention::default()
        }),
    )
    .unwrap();
    saver.save(Kind::Regular, snapshot_for(5, 4096)).unwrap();
    saver.finish().unwrap();
    let steps: Vec<u64> = store
        .list()
        .unwrap()
        .iter()
        .filter_map(|l| l.manifest.as_ref().map(|m| m.step))
        .collect();
    assert_eq!(
        steps,
        [3, 5],
        "kept: the newest two (step 3 is listed, though corrupt)"
    );
    assert_eq!(
        store.latest_valid().unwrap().snapshot,
        snapshot_for(5, 4096)
    );
    let incomplete: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .filter(|l| l.status == keel_ckpt::Status::Incomplete)
        .map(|l| l.id.name.clone())
        .collect();
    assert_eq!(incomplete, ["step-000000000004-0000000000001"]);
    let pruned = store
        .prune(&Retention {
            keep_last: 1,
            ..Retention::default()
        })
        .unwrap();
    assert_eq!(pruned.deleted.len(), 1, "{pruned:?}");
    assert_eq!(pruned.left.len(), 1, "{pruned:?}");
    assert!(pruned.left[0].1.contains("in flight"), "{pruned:?}");

    assert!(store.location().starts_with("s3://checkpoints/runs/exp1"));
}

/// Issue #12 on S3: a 2-rank save (ranks as threads, each with a client and store of its own)
/// commits one checkpoint with both ranks' objects; a prune while rank 1 has not written yet
/// leaves the pending prefix alone (its write marker, put at begin, is fresh) and deletes
/// only old checkpoints; a commit that misses a rank's report puts no manifest and removes
/// the pending objects.
#[test]
fn s3_shared_save_commits_every_rank_and_a_prune_leaves_it_in_flight() {
    use keel_ckpt::{PendingCheckpoint, SharedPart, Snapshot, TensorGroup, rank_group};
    use std::collections::BTreeMap;

    let server = start();
    let open = || {
        CheckpointStore::object_store(
            object_store(&server),
            ObjectPath::from("runs/shared"),
            "s3://checkpoints/runs/shared",
        )
        .unwrap()
    };
    let groups = |rank: usize| -> BTreeMap<String, TensorGroup> {
        let state = snapshot_for(100 + rank as u64, 1024);
        let mut groups = BTreeMap::new();
        if rank == 0 {
            groups.insert("model".to_string(), state.groups["model"].clone());
        }
        groups.insert(
            rank_group("optimizer", rank),
            state.groups["optimizer"].clone(),
        );
        groups
    };
    let store = open();
    for step in 1..=2 {
        store.save(Kind::Regular, &snapshot_for(step, 256)).unwrap();
    }
    let save = store.begin_shared(Kind::Regular, 3, 2).unwrap();
    let broadcast = save.pending().to_bytes();
    let part0 = store.write_part(save.pending(), 0, &groups(0)).unwrap();

    // A prune from another client now: rank 1 is still to write.
    let pruned = open()
        .prune(&Retention {
            keep_last: 1,
            ..Retention::default()
        })
        .unwrap();
    let pending_id = save.pending().id();
    assert_eq!(pruned.deleted.len(), 1, "{pruned:?}");
    assert_eq!(pruned.left.len(), 1, "{pruned:?}");
    assert_eq!(pruned.left[0].0, pending_id);
    assert!(pruned.left[0].1.contains("in flight"), "{pruned:?}");

    let part1 = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let pending = PendingCheckpoint::from_bytes(&broadcast).unwrap();
                open()
                    .write_part(&pending, 1, &groups(1))
                    .unwrap()
                    .to_bytes()
            })
            .join()
            .unwrap()
    });
    let part1 = SharedPart::from_bytes(&part1).unwrap();
    let metadata = Snapshot {
        groups: BTreeMap::new(),
        ..snapshot_for(3, 8)
    };
    let id = save.commit(&metadata, &[part0, part1]).unwrap();
    let resume = open().latest_valid().unwrap();
    assert_eq!(resume.id, id);
    assert_eq!(resume.manifest.world_size, Some(2));
    let mut expected = groups(0);
    expected.extend(groups(1));
    assert!(resume.snapshot.groups == expected);
    assert!(
        resume.snapshot
            == Snapshot {
                groups: expected,
                ..metadata.clone()
            }
    );

    // Rank 1 never reports: no manifest, and the pending objects are gone.
    let save = store.begin_shared(Kind::Regular, 4, 2).unwrap();
    let pending = save.pending().clone();
    let part0 = store.write_part(&pending, 0, &groups(0)).unwrap();
    store.write_part(&pending, 1, &groups(1)).unwrap();
    let error = save
        .commit(
            &Snapshot {
                step: 4,
                ..metadata
            },
            &[part0],
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("rank 1 of 2 did not report"),
        "{error}"
    );
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|l| l.id.to_string())
        .collect();
    assert!(!listed.contains(&pending.id().to_string()), "{listed:?}");
    assert_eq!(store.latest_valid().unwrap().id, id);
}
