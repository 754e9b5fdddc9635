//! Checkpoints on S3-compatible object storage: a real S3 server (`s3s-fs`, installed by
//! `.ci/run`) on loopback, no mocks. Data objects go first and the manifest last; an upload cut
//! short (objects without a manifest) and a changed object are skipped on resume.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

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
