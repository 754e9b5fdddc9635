//! Issue #18 on S3: large data files go up as multipart uploads (parts in parallel) and come
//! back bit for bit; a server that stops answering fails the save within the store's deadline,
//! naming the object, and leaves nothing that loads. A real S3 server (`s3s-fs`) on loopback;
//! the stall is a TCP relay in front of it that stops passing bytes.

mod common;
use keel_test_support::s3 as s3_server;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::snapshot_for;
use keel_ckpt::{CheckpointStore, CkptError, Dtype, Kind, Snapshot, Status, Tensor};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use s3_server::{BUCKET, KEY, SECRET, start};

fn client(endpoint: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(KEY)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap(),
    )
}

fn store(endpoint: &str, deadline: Duration) -> CheckpointStore {
    CheckpointStore::object_store_with_deadline(
        client(endpoint),
        ObjectPath::from("runs/big"),
        "s3://checkpoints/runs/big",
        deadline,
    )
    .unwrap()
}

/// A state whose `model` group holds a tensor of `bytes` bytes (more than one 16 MiB part),
/// plus the small groups of [`snapshot_for`].
fn large_state(step: u64, bytes: usize) -> Snapshot {
    let mut snapshot = snapshot_for(step, 1024);
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).wrapping_add(step) as u8 ^ (i >> 20) as u8)
        .collect();
    let tensor = Tensor::new("embed", Dtype::U8, vec![bytes], data).unwrap();
    snapshot
        .groups
        .get_mut("model")
        .unwrap()
        .insert("embed.weight".into(), tensor);
    snapshot
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A 40 MiB group goes up in three parts (16 + 16 + 8 MiB) as one multipart upload, and the
/// object holds exactly the bytes `safetensors::serialize` gives for the group (what keel
/// wrote before it streamed, and what PyTorch reads); loading it gives the state back.
#[test]
fn a_large_file_goes_up_in_parts_and_round_trips_bit_for_bit() {
    let server = start();
    let store = store(&server.endpoint(), Duration::from_secs(60));
    let snapshot = large_state(7, 40 << 20);
    let id = store.save(Kind::Regular, &snapshot).unwrap();

    let objects = client(&server.endpoint());
    let runtime = runtime();
    let model = ObjectPath::from(format!("runs/big/{id}/model.safetensors"));
    let bytes = runtime
        .block_on(async { objects.get(&model).await?.bytes().await })
        .unwrap();
    let expected = safetensors::serialize(
        snapshot.groups["model"]
            .iter()
            .map(|(n, t)| (n.as_str(), t)),
        None,
    )
    .unwrap();
    assert!(bytes.len() == expected.len() && bytes[..] == expected[..]);
    // S3 names a multipart object's ETag `<digest>-<parts>`; a single PUT has no suffix.
    let etag = runtime
        .block_on(objects.head(&model))
        .unwrap()
        .e_tag
        .unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "ETag {etag}");
    let optimizer = ObjectPath::from(format!("runs/big/{id}/optimizer.safetensors"));
    let etag = runtime
        .block_on(objects.head(&optimizer))
        .unwrap()
        .e_tag
        .unwrap_or_default();
    assert!(!etag.contains('-'), "a small file is one PUT: ETag {etag}");

    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.id, id);
    assert!(resume.snapshot == snapshot, "the loaded state differs");
}

/// A relay to `upstream` that passes bytes both ways until `stall` is set and `budget`
/// bytes have gone upstream after it; from then on it reads nothing more and answers nothing
/// (connections stay open): a server that stopped answering in the middle of an upload.
struct Relay {
    port: u16,
    stall: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
}

impl Relay {
    fn start(upstream: u16, budget: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stall = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicU64::new(budget));
        let (stall_flag, left) = (Arc::clone(&stall), Arc::clone(&budget));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server);
                let (mut from_server, mut to_client) = (to_server.try_clone().unwrap(), client);
                let (stall, left) = (Arc::clone(&stall_flag), Arc::clone(&left));
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 << 10];
                    loop {
                        if stall.load(Ordering::SeqCst) && left.load(Ordering::SeqCst) == 0 {
                            // Stalled: hold both sockets, pass nothing, never close.
                            let _keep = (&from_client, &to_server);
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                        let Ok(n) = from_client.read(&mut buffer) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let mut pass = n;
                        if stall.load(Ordering::SeqCst) {
                            let had = left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                                    Some(l.saturating_sub(n as u64))
                                })
                                .unwrap();
                            pass = n.min(usize::try_from(had).unwrap_or(usize::MAX));
                        }
                        if to_server.write_all(&buffer[..pass]).is_err() {
                            return;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                });
            }
        });
        Relay {
            port,
            stall,
            budget,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The server stops answering 20 MiB into a 40 MiB upload (inside its second part): the save
/// fails within a few deadlines (one for the stalled part, one for each cleanup request)
/// with [`CkptError::Stalled`] naming the object, and, read back directly from the server,
/// the store's newest loadable checkpoint is still the one before.
#[test]
fn a_stalled_multipart_upload_fails_naming_the_object_and_nothing_loads() {
    let server = start();
    let relay = Relay::start(server.port, 20 << 20);
    let deadline = Duration::from_secs(2);
    let through_relay = store(&relay.endpoint(), deadline);
    let before = through_relay
        .save(Kind::Regular, &snapshot_for(1, 256))
        .unwrap();

    relay.stall.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let error = through_relay
        .save(Kind::Regular, &large_state(2, 40 << 20))
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(relay.budget.load(Ordering::SeqCst), 0, "the relay stalled");
    let CkptError::Stalled { location, .. } = &error else {
        panic!("expected a stall, got {error:?}")
    };
    assert!(
        location.starts_with("s3://checkpoints/runs/big/regular/step-000000000002-")
            && location.ends_with("/model.safetensors"),
        "{location}"
    );
    assert!(error.to_string().contains(location.as_str()), "{error}");
    assert!(
        error.to_string().contains("did not answer within 2 s"),
        "{error}"
    );
    // The part, the abort of the upload and the cleanup's first request each wait one
    // deadline at most: bounded, not object_store's minutes of retries.
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let direct = store(&server.endpoint(), Duration::from_secs(60));
    let resume = direct.latest_valid().unwrap();
    assert_eq!(resume.id, before);
    assert!(
        resume
            .skipped
            .iter()
            .all(|(id, _)| id.name.starts_with("step-000000000002-"))
    );
    for listed in direct.list().unwrap() {
        if listed.id != before {
            assert_eq!(listed.status, Status::Incomplete, "{listed:?}");
        }
    }
}

/// A server that accepts connections and never answers: the save fails at its first request
/// (the write marker) within the deadline, naming that object; a resume fails naming the
/// listing's prefix. Nothing hangs.
#[test]
fn a_server_that_never_answers_fails_within_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let store = store(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(500),
    );
    let started = Instant::now();
    let error = store.save(Kind::Regular, &snapshot_for(3, 64)).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(&error, CkptError::Stalled { location, .. } if location.ends_with("/.keel-writing")),
        "{text}"
    );
    assert!(
        text.contains("s3://checkpoints/runs/big/regular/step-000000000003-"),
        "{text}"
    );
    let error = store.latest_valid().unwrap_err();
    assert!(
        matches!(&error, CkptError::Stalled { location, .. } if location == "s3://checkpoints/runs/big/regular"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
