//! The data-parallel rules without a launcher: rank 0 of a world of two whose other rank is a
//! test double that mirrors rank 0 (it holds the same state and sends the same values), so
//! the trainer's multi-rank path (slices, weighted all-reduce, divergence check, rank 0's
//! save and its broadcast outcome) runs in one process in every build. The real two-process
//! runs are `tests/mpirun.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_ckpt::{CheckpointStore, EveryNEpochs};
use keel_dist::{Collective, DistError};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Mlp, Model, Outcome, StopSignal, TrainError, TrainRng,
    TrainSettings, Trainer,
};
use serde_json::json;

/// Rank 0 of two; rank 1 mirrors it. With `diverge`, rank 1's state digest (the 64 hex
/// digits all-gathered at a save) differs from rank 0's.
#[derive(Debug, Default)]
struct Mirror {
    diverge: bool,
    gathered_digest: AtomicBool,
}

fn is_digest(bytes: &[u8]) -> bool {
    bytes.len() == 64 && bytes.iter().all(u8::is_ascii_hexdigit)
}

impl Collective for Mirror {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast_bytes(&self, _root: usize, _bytes: &mut Vec<u8>) -> Result<(), DistError> {
        Ok(())
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError> {
        values.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        values.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
    fn all_reduce_max_u64(&self, value: u64) -> Result<u64, DistError> {
        Ok(value)
    }
    fn gather_bytes(&self, _root: usize, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        Ok(Some(vec![bytes.to_vec(), bytes.to_vec()]))
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let mut other = bytes.to_vec();
        if is_digest(bytes) {
            self.gathered_digest.store(true, Ordering::SeqCst);
            if self.diverge {
                other[0] = if other[0] == b'0' { b'1' } else { b'0' };
            }
        }
        Ok(vec![bytes.to_vec(), other])
    }
}

fn train(world: Arc<Mirror>, store: &CheckpointStore) -> Result<Outcome, TrainError> {
    let (train, test) = Dataset::digits()?.split(0.2, 0)?;
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(3);
    let model = Mlp::new(&[64, 32, 10], 0.0, &device, &mut rng)?;
    let optimizer = AdamW::named(model.parameters(), AdamWConfig::default())?;
    let settings = TrainSettings {
        epochs: 3,
        policy: Box::new(EveryNEpochs(1)),
        trajectory: json!({"test": "world_double"}),
        ..TrainSettings::new(3, 3e-3)
    };
    Trainer::new(model, optimizer, rng, device, store.clone(), settings)
        .with_world(world)
        .run(&train, &test, &StopSignal::new(), &mut |_| {})
}

/// Ranks whose replicas agree: every save checks the digests, rank 0 saves, the checkpoint
/// records the world size.
#[test]
fn agreeing_replicas_train_and_rank_zero_saves() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let world = Arc::new(Mirror::default());
    let outcome = train(Arc::clone(&world), &store).unwrap();
    assert_eq!((outcome.epoch, outcome.step), (3, 69));
    assert!(outcome.test_accuracy.unwrap() > 0.5, "{outcome:?}");
    assert!(world.gathered_digest.load(Ordering::SeqCst));
    let resume = store.latest_valid().unwrap();
    assert_eq!(Some(&resume.id), outcome.checkpoint.as_ref());
    assert_eq!(resume.snapshot.user["world_size"], 2);
}

/// A rank whose state digest differs from rank 0's at the first checkpoint (the end of
/// epoch 1, step 23) stops the run naming it, and nothing is saved.
#[test]
fn a_diverged_rank_is_named_and_nothing_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let world = Arc::new(Mirror {
        diverge: true,
        ..Mirror::default()
    });
    let error = train(world, &store).unwrap_err();
    assert!(
        matches!(&error, TrainError::Diverged { step: 23, ranks, .. } if ranks == &[1]),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("the replicated state diverged at step 23: rank(s) 1 differ from rank 0"),
        "{error}"
    );
    assert!(store.list().unwrap().is_empty());
}
