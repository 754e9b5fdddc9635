//! Data-parallel training of the digits MLP on `keel_dist::Mpi`: every rank of
//! `mpirun -np N` runs this program, trains its slice of every global batch into one shared
//! checkpoint store (rank 0 writes it), and writes what it saw to `OUT_DIR/rank-R.json`.
//! keel-train's `mpirun` test (`tests/mpirun.rs`) starts it and checks the files and the
//! store; it is also a quick drill of a cluster's MPI:
//!
//! ```text
//! mpirun -np 2 target/debug/examples/dp_digits STORE OUT_DIR [epochs=3] [batch=64]
//!     [stop=RANK:STEP] [pause=RANK:STEP] [nan=RANK:STEP] [skew=RANK] [zero=1]
//! ```
//!
//! - `stop=R:S`: rank R asks to stop (as SIGTERM would) once step S is done.
//! - `pause=R:S`: rank R, once step S is done, writes `OUT_DIR/paused-R` (its pid) and waits
//!   for a real SIGINT/SIGTERM before going on: a test sends it one with `kill`.
//! - `nan=R:S`: the loss of step S becomes NaN on rank R only.
//! - `skew=R`: rank R starts from other weights (one weight moved by 1e-3): the replicas
//!   then differ, which the first checkpoint's divergence check must catch.
//! - `zero=1`: the optimizer state is sharded (ZeRO-1, `OptimizerSharding::Sharded`);
//!   `zero=0` (the default) keeps it replicated.
//!
//! The exit status is 0 when training completed, 128 + the signal when it stopped on one
//! (as `keel train`), 1 on an error (the error text is in the rank's JSON).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_ckpt::{CheckpointStore, EveryNEpochs};
use keel_dist::{Collective, Launch, Mpi};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Event, Mlp, Model, OptimizerSharding, Status, StopSignal,
    TrainRng, TrainSettings, Trainer,
};
use serde_json::json;

const SEED: u64 = 5;

/// `RANK:STEP`.
fn rank_step(text: &str) -> Result<(usize, u64), String> {
    let (rank, step) = text
        .split_once(':')
        .ok_or_else(|| format!("expected RANK:STEP, got {text:?}"))?;
    Ok((
        rank.parse().map_err(|e| format!("rank {rank:?}: {e}"))?,
        step.parse().map_err(|e| format!("step {step:?}: {e}"))?,
    ))
}

#[derive(Debug, Default)]
struct Options {
    epochs: u64,
    batch: usize,
    stop: Option<(usize, u64)>,
    pause: Option<(usize, u64)>,
    nan: Option<(usize, u64)>,
    skew: Option<usize>,
    zero: bool,
}

fn options(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        epochs: 3,
        batch: 64,
        ..Options::default()
    };
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))?;
        match key {
            "epochs" => options.epochs = value.parse().map_err(|e| format!("{arg}: {e}"))?,
            "batch" => options.batch = value.parse().map_err(|e| format!("{arg}: {e}"))?,
            "stop" => options.stop = Some(rank_step(value)?),
            "pause" => options.pause = Some(rank_step(value)?),
            "nan" => options.nan = Some(rank_step(value)?),
            "skew" => options.skew = Some(value.parse().map_err(|e| format!("{arg}: {e}"))?),
            "zero" => {
                options.zero = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("{arg}: expected zero=0 or zero=1")),
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dp_digits STORE OUT_DIR [epochs=N] [batch=B] [stop|pause|nan=RANK:STEP] \
                 [skew=RANK] [zero=0|1]";
    let store_dir = PathBuf::from(args.next().ok_or(usage)?);
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let options = options(args)?;

    let launch = Launch::detect()?;
    // MPI is finalized when the last handle on the world is dropped.
    #[allow(
        clippy::arc_with_non_send_sync,
        reason = "the trainer takes an Arc<dyn Collective>; Mpi stays on this thread"
    )]
    let world: Arc<dyn Collective> = Arc::new(Mpi::init()?);
    launch.verify_world(&*world)?;
    let rank = world.rank();
    let pid = std::process::id();

    let (train, test) = Dataset::digits()?.split(0.2, 0)?;
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    // No dropout: the 1-rank and 2-rank runs then differ only in the order of summation.
    let model = Mlp::new(&[64, 32, 10], 0.0, &device, &mut rng)?;
    if options.skew == Some(rank)
        && let Some((_, weight)) = model.parameters().first()
    {
        weight.set(&(weight.as_tensor() + 1e-3)?)?;
    }
    let optimizer = AdamW::named(model.parameters(), AdamWConfig::default())?;
    let settings = TrainSettings {
        epochs: options.epochs,
        batch_size: options.batch,
        policy: Box::new(EveryNEpochs(1)),
        trajectory: json!({"example": "dp_digits", "batch": options.batch}),
        nan_at_step: options.nan.filter(|(r, _)| *r == rank).map(|(_, s)| s),
        optimizer_sharding: if options.zero {
            OptimizerSharding::Sharded
        } else {
            OptimizerSharding::Replicated
        },
        ..TrainSettings::new(SEED, 3e-3)
    };
    let store = CheckpointStore::local(&store_dir)?;
    let stop = StopSignal::install()?;
    let mut trainer =
        Trainer::new(model, optimizer, rng, device, store, settings).with_world(world.clone());

    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    let mut resumed = None;
    let mut pause_error = None;
    let result = trainer.run(&train, &test, &stop, &mut |event| match event {
        Event::Step(row) => {
            steps.push(json!({"step": row.step, "loss": row.loss}));
            if options.stop == Some((rank, row.step)) {
                stop.request(15);
            }
            if options.pause == Some((rank, row.step)) {
                let marker = out.join(format!("paused-{rank}"));
                if let Err(error) = fs_err::write(&marker, pid.to_string()) {
                    pause_error = Some(error.to_string());
                    return;
                }
                // Waits for the test's `kill`: the other ranks wait in the next collective.
                while stop.requested().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Event::Resumed { id, step, .. } => {
            resumed = Some(json!({"id": id.to_string(), "step": step}))
        }
        Event::Warning(why) => warnings.push(why.clone()),
        _ => {}
    });
    let (code, outcome) = match &result {
        Ok(outcome) => (
            match outcome.status {
                Status::Completed => 0,
                Status::Interrupted { signal } => 128 + signal,
            },
            json!({
                "status": match outcome.status {
                    Status::Completed => "completed".to_string(),
                    Status::Interrupted { signal } => format!("interrupted {signal}"),
                },
                "step": outcome.step,
                "epoch": outcome.epoch,
                "checkpoint": outcome.checkpoint.as_ref().map(ToString::to_string),
                "test_accuracy": outcome.test_accuracy,
                "test_loss": outcome.test_loss,
            }),
        ),
        Err(error) => (1, json!({"status": "error", "error": error.to_string()})),
    };
    let weights: Vec<f32> = trainer
        .model()
        .parameters()
        .iter()
        .map(|(_, var)| var.as_tensor().flatten_all()?.to_vec1::<f32>())
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let report = json!({
        "rank": rank,
        "size": world.size(),
        "pid": pid,
        "outcome": outcome,
        "resumed": resumed,
        "warnings": warnings,
        "steps": steps,
        "weights_blake3": blake3::hash(&bytes).to_hex().to_string(),
        "pause_error": pause_error,
    });
    fs_err::write(
        out.join(format!("rank-{rank}.json")),
        serde_json::to_vec_pretty(&report)?,
    )?;
    // Every rank has written its report (and rank 0 its checkpoints) before any exits: a
    // launcher may end the job when one rank exits with a non-zero status.
    world.barrier()?;
    drop(trainer);
    drop(world);
    std::process::exit(code);
}
