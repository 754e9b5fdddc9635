//! Checkpoint saving: a 256 MiB and a 1 GiB training state, saved synchronously (safetensors,
//! BLAKE3, fsync, manifest, rename) side by side with the raw write + fsync of the same bytes
//! to the same disk, and the training-loop stall of an async save (snapshot copy + hand-over)
//! side by side with the in-memory copy alone.
//!
//! `KEEL_BENCH_DIR` chooses the disk (default: the system temporary folder).

use std::io::Write as _;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use keel_ckpt::{AsyncSaver, CheckpointStore, Kind, Snapshot, Tensor};

const MIB: usize = 1024 * 1024;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("KEEL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// A state of `bytes` bytes: weights and two Adam moments in 64 MiB tensors.
fn state(bytes: usize) -> Snapshot {
    let mut snapshot = Snapshot {
        step: 1000,
        epoch: 3,
        ..Snapshot::default()
    };
    let per_tensor = 64 * MIB;
    for index in 0..bytes / per_tensor {
        let group = match index % 3 {
            0 => "model",
            _ => "optimizer",
        };
        let values: Vec<f32> = (0..per_tensor / 4)
            .map(|i| (i as f32 * 1e-3).sin())
            .collect();
        snapshot.groups.entry(group.into()).or_default().insert(
            format!("layer{index}.weight"),
            Tensor::from_f32(vec![per_tensor / 4], &values).unwrap(),
        );
    }
    snapshot
}

fn raw_write(dir: &std::path::Path, bytes: &[u8]) {
    let path = dir.join("raw.bin");
    let mut file = fs_err::File::create(&path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs_err::remove_file(&path).unwrap();
}

fn save(c: &mut Criterion) {
    let mut group = c.benchmark_group("ckpt_save");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for size in [256 * MIB, 1024 * MIB] {
        let snapshot = state(size);
        let raw: Vec<u8> = vec![0x5a; size];
        let dir = bench_dir();
        let store = CheckpointStore::local(dir.path()).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        let label = format!("{}MiB", size / MIB);

        group.bench_with_input(
            BenchmarkId::new("raw_write_fsync", &label),
            &raw,
            |b, raw| {
                b.iter(|| raw_write(dir.path(), raw));
            },
        );
        group.bench_with_input(BenchmarkId::new("sync_save", &label), &snapshot, |b, s| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    let id = store.save(Kind::Regular, s).unwrap();
                    total += start.elapsed();
                    fs_err::remove_dir_all(dir.path().join("regular").join(&id.name)).unwrap();
                }
                total
            });
        });
        // What the training loop waits for: copying its state and handing it over; the
        // write happens on the writer thread (waited for outside the timing).
        group.bench_with_input(
            BenchmarkId::new("async_stall", &label),
            &snapshot,
            |b, s| {
                let mut saver = AsyncSaver::new(store.clone(), None).unwrap();
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let start = Instant::now();
                        saver.save(Kind::Regular, s.clone()).unwrap();
                        total += start.elapsed();
                        let id = saver.wait().unwrap().unwrap();
                        fs_err::remove_dir_all(dir.path().join("regular").join(&id.name)).unwrap();
                    }
                    total
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("memory_copy", &label),
            &snapshot,
            |b, s| {
                b.iter(|| s.clone());
            },
        );
    }
    group.finish();
}

criterion_group!(benches, save);
