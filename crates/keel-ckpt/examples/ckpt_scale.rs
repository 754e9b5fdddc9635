//! One checkpoint operation per process, timed, for `benches/ckpt_scale.py`, which runs each
//! under `/usr/bin/time -v` for the peak memory the operating system saw. Prints one JSON line.
//!
//! ```sh
//! cargo build --release -p keel-ckpt --example ckpt_scale
//! ckpt_scale raw    BYTES DIR      # the state's bytes written to DIR/raw.bin and fsynced
//! ckpt_scale save   BYTES DIR      # CheckpointStore::save of a state of BYTES into DIR
//! ckpt_scale async  BYTES DIR      # the background save's stall: copy + hand-over, and the copy alone
//! ckpt_scale resume DIR            # CheckpointStore::latest_valid (list, verify, load)
//! ckpt_scale verify DIR            # CheckpointStore::verify of the newest checkpoint
//! ckpt_scale s3-put  BYTES URL     # one plain PUT of the state's bytes to URL's bucket/prefix
//! ckpt_scale s3-save BYTES URL     # CheckpointStore::save to s3://bucket/prefix (multipart)
//! ckpt_scale s3-resume URL
//! ```
//!
//! The S3 endpoint and credentials come from the `AWS_*` variables, as for `keel train`.
//! The state is weights and two Adam moments in 64 MiB tensors (the last one smaller), filled
//! with a cheap generator: the bytes do not matter to any step, their size does.

use std::io::Write as _;
use std::time::Instant;

use keel_ckpt::{AsyncSaver, CheckpointStore, Dtype, Kind, Snapshot, Tensor};

const TENSOR_BYTES: usize = 64 << 20;

fn state(bytes: usize) -> Snapshot {
    let mut snapshot = Snapshot {
        step: 1000,
        epoch: 3,
        ..Snapshot::default()
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = bytes - bytes % 4;
    let mut index = 0;
    while left > 0 {
        let len = left.min(TENSOR_BYTES);
        let mut data = Vec::with_capacity(len);
        while data.len() + 8 <= len {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            data.extend_from_slice(&(z ^ (z >> 27)).to_le_bytes());
        }
        data.resize(len, 0x5a);
        let group = ["model", "optimizer-m", "optimizer-v"][index % 3];
        let tensor = Tensor::new("state", Dtype::F32, vec![len / 4], data).expect("sized");
        snapshot
            .groups
            .entry(group.into())
            .or_default()
            .insert(format!("layer{index}.weight"), tensor);
        left -= len;
        index += 1;
    }
    snapshot
}

fn object_store_of(url: &str) -> Result<CheckpointStore, String> {
    CheckpointStore::open(url).map_err(|e| format!("{url}: {e}"))
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i}; see the file's doc comment"))
    };
    let bytes = || -> Result<usize, String> {
        arg(1)?
            .parse()
            .map_err(|e| format!("BYTES {:?}: {e}", args[1]))
    };
    let error = |e: keel_ckpt::CkptError| e.to_string();
    match arg(0)? {
        "raw" => {
            let snapshot = state(bytes()?);
            let path = std::path::Path::new(arg(2)?).join("raw.bin");
            let start = Instant::now();
            let mut file = fs_err::File::create(&path).map_err(|e| e.to_string())?;
            for tensor in snapshot.groups.values().flat_map(|g| g.values()) {
                file.write_all(&tensor.data).map_err(|e| e.to_string())?;
            }
            file.sync_all().map_err(|e| e.to_string())?;
            let seconds = start.elapsed().as_secs_f64();
            drop(file);
            fs_err::remove_file(&path).map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "seconds": seconds, "bytes": snapshot.tensor_bytes() }))
        }
        "save" => {
            let snapshot = state(bytes()?);
            let store = CheckpointStore::local(arg(2)?.as_ref()).map_err(error)?;
            let start = Instant::now();
            let id = store.save(Kind::Regular, &snapshot).map_err(error)?;
            let seconds = start.elapsed().as_secs_f64();
            Ok(
                serde_json::json!({ "seconds": seconds, "bytes": snapshot.tensor_bytes(), "id": id.to_string() }),
            )
        }
        "async" => {
            let snapshot = state(bytes()?);
            let store = CheckpointStore::local(arg(2)?.as_ref()).map_err(error)?;
            // The copy alone first (then dropped), then the stall the training loop sees.
            let start = Instant::now();
            let copy = snapshot.clone();
            let copy_seconds = start.elapsed().as_secs_f64();
            drop(copy);
            let mut saver = AsyncSaver::new(store, None).map_err(error)?;
            let start = Instant::now();
            saver.save(Kind::Regular, snapshot.clone()).map_err(error)?;
            let stall = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let id = saver
                .finish()
                .map_err(error)?
                .ok_or("no checkpoint saved")?;
            let write = start.elapsed().as_secs_f64();
            Ok(serde_json::json!({
                "stall_seconds": stall, "copy_seconds": copy_seconds,
                "write_after_stall_seconds": write, "bytes": snapshot.tensor_bytes(),
                "id": id.to_string(),
            }))
        }
        "resume" => {
            let store = CheckpointStore::open_existing(arg(1)?).map_err(error)?;
            let start = Instant::now();
            let resume = store.latest_valid().map_err(error)?;
            let seconds = start.elapsed().as_secs_f64();
            Ok(serde_json::json!({ "seconds": seconds, "bytes": resume.snapshot.tensor_bytes() }))
        }
        "verify" => {
            let store = CheckpointStore::open_existing(arg(1)?).map_err(error)?;
            let start = Instant::now();
            let newest = store
                .list()
                .map_err(error)?
                .pop()
                .ok_or("no checkpoint to verify")?;
            let manifest = store.verify(&newest.id).map_err(error)?;
            let seconds = start.elapsed().as_secs_f64();
            let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
            Ok(serde_json::json!({ "seconds": seconds, "file_bytes": bytes }))
        }
        "s3-put" => {
            use object_store::ObjectStoreExt as _;
            let snapshot = state(bytes()?);
            let url = arg(2)?;
            let options: Vec<(String, String)> = std::env::vars()
                .filter(|(key, _)| key.starts_with("AWS_"))
                .map(|(key, value)| (key.to_ascii_lowercase(), value))
                .collect();
            let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
            let (objects, prefix) =
                object_store::parse_url_opts(&parsed, options).map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            // One PUT of all the bytes: the payload is the tensors' bytes, copied once
            // (object_store needs owned buffers), as a plain upload would have them.
            let payload: object_store::PutPayload = snapshot
                .groups
                .values()
                .flat_map(|g| g.values())
                .map(|t| bytes::Bytes::copy_from_slice(&t.data))
                .collect();
            let path = prefix.clone().join("plain-put.bin");
            runtime
                .block_on(objects.put(&path, payload))
                .map_err(|e| format!("{path}: {e}"))?;
            let seconds = start.elapsed().as_secs_f64();
            runtime
                .block_on(objects.delete(&path))
                .map_err(|e| format!("{path}: {e}"))?;
            Ok(serde_json::json!({ "seconds": seconds, "bytes": snapshot.tensor_bytes() }))
        }
        "s3-save" => {
            let snapshot = state(bytes()?);
            let store = object_store_of(arg(2)?)?;
            let start = Instant::now();
            let id = store.save(Kind::Regular, &snapshot).map_err(error)?;
            let seconds = start.elapsed().as_secs_f64();
            Ok(
                serde_json::json!({ "seconds": seconds, "bytes": snapshot.tensor_bytes(), "id": id.to_string() }),
            )
        }
        "s3-resume" => {
            let store = object_store_of(arg(1)?)?;
            let start = Instant::now();
            let resume = store.latest_valid().map_err(error)?;
            let seconds = start.elapsed().as_secs_f64();
            let pruned = store
                .prune(&keel_ckpt::Retention {
                    keep_last: 1,
                    ..Default::default()
                })
                .map_err(error)?;
            Ok(serde_json::json!({
                "seconds": seconds, "bytes": resume.snapshot.tensor_bytes(),
                "pruned": pruned.deleted.len(),
            }))
        }
        other => Err(format!(
            "unknown operation {other:?}; see the file's doc comment"
        )),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The report on stdout, an error on stderr: written, not printed (the workspace lints
    // keep print macros out of keel's code).
    let (mut out, text, code): (Box<dyn std::io::Write>, String, u8) = match run(&args) {
        Ok(report) => (Box::new(std::io::stdout()), format!("{report}\n"), 0),
        Err(error) => (
            Box::new(std::io::stderr()),
            format!("ckpt_scale: {error}\n"),
            2,
        ),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::from(code)
}
