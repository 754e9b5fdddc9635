//! Data-parallel training of an MLP on `keel_dist::Mpi` with a save every few steps, built to
//! be killed: every rank of `mpirun -np N` trains its slice of every global batch into one
//! shared checkpoint store, tells a watcher where it is, and (when it lives to the end)
//! reports what it did and how long each step and save took. keel-train's SIGKILL campaign
//! (`tests/kill_campaign.rs`) kills its ranks and its `mpirun` at random moments and runs it
//! again on the same store; the benches' `dp-bench` times it at 1 and 2 ranks.
//!
//! ```text
//! mpirun -np 2 target/debug/examples/dp_kill STORE OUT_DIR [epochs=3] [batch=64] [every=3]
//!     [keep=2] [async=0|1] [data=digits|mnist10k] [hidden=32[,32...]] [progress=0|1]
//!     [savebench=PARAMETERS] [repeats=10]
//! ```
//!
//! - `every=N`: a regular checkpoint every N steps (0: at each epoch end); `keep=K` keeps
//!   the newest K (0: all); `async=1` writes them on the background thread.
//! - `data`: the embedded digits set (64 features) or the embedded 10k MNIST rows (784).
//! - `hidden`: the hidden layers' widths.
//! - `progress=1`: `OUT_DIR/step-R` holds the last step rank R finished (rewritten each step).
//! - `savebench=P`: no training; times `repeats=N` (10) saves of a state of P f32 weights and
//!   AdamW's two moments, as rank 0's one-writer `save` of all of it and as the multi-rank
//!   commit (rank 0 `begin_shared`s and broadcasts the pending checkpoint, every rank writes
//!   its part: `model` and its share of the moments on rank 0, `optimizer-rank<R>` on the
//!   others; rank 0 gathers the parts and commits), and writes the times to the report.
//!
//! Before MPI starts, each rank writes its pid to `OUT_DIR/pid-R` (the rank from the
//! launcher's variables). At the end it writes `OUT_DIR/rank-R.json`: the outcome, the steps
//! with their losses, the wall time of each step (from one step's end to the next's: the step
//! and what the loop did after it, a save included), each save's stall, the final weights'
//! BLAKE3. The exit status is 0 when training completed, 128 + the signal when it stopped on
//! one, 1 on an error (the error text is in the rank's JSON).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;
use std::path::Path;

use keel_ckpt::{
    CheckpointStore, EveryNEpochs, EveryNSteps, Kind, PendingCheckpoint, Retention, SavePolicy,
    SharedPart, Snapshot, Tensor, TensorGroup, rank_group,
};
use keel_dist::{Collective, Launch, Mpi};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Event, Mlp, Model, Status, StopSignal, TrainRng, TrainSettings,
    Trainer,
};
use serde_json::json;

const SEED: u64 = 11;

#[derive(Debug)]
struct Options {
    epochs: u64,
    batch: usize,
    every: u64,
    keep: usize,
    background: bool,
    data: String,
    hidden: Vec<usize>,
    progress: bool,
    savebench: Option<usize>,
    repeats: usize,
}

fn flag(arg: &str, value: &str) -> Result<bool, String> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("{arg}: expected 0 or 1")),
    }
}

fn options(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        epochs: 3,
        batch: 64,
        every: 3,
        keep: 2,
        background: false,
        data: "digits".into(),
        hidden: vec![32],
        progress: false,
        savebench: None,
        repeats: 10,
    };
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{arg}: {e}"));
        match key {
            "epochs" => options.epochs = number(value)?,
            "batch" => options.batch = number(value)? as usize,
            "every" => options.every = number(value)?,
            "keep" => options.keep = number(value)? as usize,
            "async" => options.background = flag(&arg, value)?,
            "progress" => options.progress = flag(&arg, value)?,
            "data" => options.data = value.to_string(),
            "savebench" => options.savebench = Some(number(value)? as usize),
            "repeats" => options.repeats = number(value)? as usize,
            "hidden" => {
                options.hidden = value
                    .split(',')
                    .map(|w| number(w).map(|w| w as usize))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dp_kill STORE OUT_DIR [epochs=N] [batch=B] [every=N] [keep=K] \
                 [async=0|1] [data=digits|mnist10k] [hidden=W,...] [progress=0|1] \
                 [savebench=P] [repeats=N]";
    let store_dir = PathBuf::from(args.next().ok_or(usage)?);
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let options = options(args)?;
    let started = Instant::now();

    let launch = Launch::detect()?;
    let pid = std::process::id();
    // Before MPI starts: a watcher can kill this rank at any moment from here on.
    fs_err::write(out.join(format!("pid-{}", launch.rank)), pid.to_string())?;
    // MPI is finalized when the last handle on the world is dropped.
    #[allow(
        clippy::arc_with_non_send_sync,
        reason = "the trainer takes an Arc<dyn Collective>; Mpi stays on this thread"
    )]
    let world: Arc<dyn Collective> = Arc::new(Mpi::init()?);
    launch.verify_world(&*world)?;
    let rank = world.rank();
    if let Some(parameters) = options.savebench {
        let report = save_bench(&*world, &store_dir, parameters, options.repeats)?;
        fs_err::write(
            out.join(format!("rank-{rank}.json")),
            serde_json::to_vec_pretty(&report)?,
        )?;
        world.barrier()?;
        return Ok(());
    }

    let data = match options.data.as_str() {
        "digits" => Dataset::digits()?,
        "mnist10k" => Dataset::mnist10k()?,
        other => return Err(format!("data={other}: expected digits or mnist10k").into()),
    };
    let (train, test) = data.split(0.2, 0)?;
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    let mut widths = vec![train.features];
    widths.extend(&options.hidden);
    widths.push(train.classes);
    // No dropout: every rank draws nothing from its generator but the initialisation.
    let model = Mlp::new(&widths, 0.0, &device, &mut rng)?;
    let optimizer = AdamW::named(model.parameters(), AdamWConfig::default())?;
    let policy: Box<dyn SavePolicy> = match options.every {
        0 => Box::new(EveryNEpochs(1)),
        n => Box::new(EveryNSteps(n)),
    };
    let settings = TrainSettings {
        epochs: options.epochs,
        batch_size: options.batch,
        policy,
        save_async: options.background,
        retention: (options.keep > 0).then(|| Retention {
            keep_last: options.keep,
            ..Retention::default()
        }),
        trajectory: json!({
            "example": "dp_kill",
            "batch": options.batch,
            "data": options.data,
            "hidden": options.hidden,
        }),
        ..TrainSettings::new(SEED, 3e-3)
    };
    let store = CheckpointStore::local(&store_dir)?;
    let stop = StopSignal::install()?;
    let mut trainer =
        Trainer::new(model, optimizer, rng, device, store, settings).with_world(world.clone());

    let progress = out.join(format!("step-{rank}"));
    let mut steps = Vec::new();
    let mut step_ms = Vec::new();
    let mut saves = Vec::new();
    let mut warnings = Vec::new();
    let mut resumed = None;
    let mut progress_error = None;
    let mut last_step_end: Option<Instant> = None;
    let result = trainer.run(&train, &test, &stop, &mut |event| match event {
        Event::Step(row) => {
            let now = Instant::now();
            if let Some(before) = last_step_end {
                step_ms.push(json!({
                    "step": row.step,
                    "ms": (now - before).as_secs_f64() * 1e3,
                }));
            }
            last_step_end = Some(now);
            steps.push(json!({"step": row.step, "loss": row.loss}));
            if options.progress
                && let Err(error) = fs_err::write(&progress, row.step.to_string())
            {
                progress_error = Some(error.to_string());
            }
        }
        Event::Saved {
            kind,
            step,
            stall,
            background,
            ..
        } => saves.push(json!({
            "kind": kind.to_string(),
            "step": step,
            "stall_ms": stall.as_secs_f64() * 1e3,
            "background": background,
        })),
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
        "parameters": weights.len(),
        "outcome": outcome,
        "resumed": resumed,
        "warnings": warnings,
        "steps": steps,
        "step_ms": step_ms,
        "saves": saves,
        "run_ms": started.elapsed().as_secs_f64() * 1e3,
        "weights_blake3": blake3::hash(&bytes).to_hex().to_string(),
        "progress_error": progress_error,
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

/// `n` f32 values of a tensor named `name` (any values: the bytes are what is timed).
fn values(n: usize, salt: f32) -> Result<Tensor, keel_ckpt::CkptError> {
    let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 1e-3 + salt).sin()).collect();
    Tensor::from_f32(vec![n], &v)
}

/// This rank's groups of a state of `parameters` weights and two moments split as ZeRO-1
/// saves them: `model` on rank 0, each rank its contiguous share of the moments.
fn rank_groups(
    parameters: usize,
    rank: usize,
    size: usize,
) -> Result<BTreeMap<String, TensorGroup>, keel_ckpt::CkptError> {
    let mut groups = BTreeMap::new();
    if rank == 0 {
        groups.insert(
            "model".to_string(),
            TensorGroup::from([("weights".to_string(), values(parameters, 0.0)?)]),
        );
    }
    let share = keel_train::rank_rows(parameters, rank, size).len();
    let salt = rank as f32;
    let moments = TensorGroup::from([
        ("m".to_string(), values(share, 1.0 + salt)?),
        ("v".to_string(), values(share, 2.0 + salt)?),
    ]);
    let name = if size == 1 {
        "optimizer".to_string()
    } else {
        rank_group("optimizer", rank)
    };
    groups.insert(name, moments);
    Ok(groups)
}

/// The `savebench` mode: rank 0's one-writer save of the whole state against the multi-rank
/// commit of the same bytes, `repeats` of each, in milliseconds (rank 0's clock, from the
/// start to the commit's return; every rank starts together after a barrier).
fn save_bench(
    world: &dyn Collective,
    store_dir: &Path,
    parameters: usize,
    repeats: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (rank, size) = (world.rank(), world.size());
    let store = CheckpointStore::local(store_dir)?;
    let mine = rank_groups(parameters, rank, size)?;
    let mut whole = Snapshot::default();
    if rank == 0 {
        whole.groups = rank_groups(parameters, 0, 1)?;
    }
    let keep = Retention {
        keep_last: 1,
        ..Retention::default()
    };
    let (mut single_ms, mut shared_ms) = (Vec::new(), Vec::new());
    for repeat in 0..repeats as u64 {
        world.barrier()?;
        if rank == 0 {
            whole.step = 2 * repeat + 1;
            let started = Instant::now();
            store.save(Kind::Regular, &whole)?;
            single_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        world.barrier()?;
        let started = Instant::now();
        let step = 2 * repeat + 2;
        // Rank 0 names the checkpoint; an empty name tells the others that it could not.
        let begun = match rank {
            0 => Some(store.begin_shared(Kind::Regular, step, size)),
            _ => None,
        };
        let mut pending = match &begun {
            Some(Ok(save)) => save.pending().to_bytes(),
            _ => Vec::new(),
        };
        world.broadcast_bytes(0, &mut pending)?;
        let written = PendingCheckpoint::from_bytes(&pending)
            .and_then(|pending| store.write_part(&pending, rank, &mine));
        let part = written
            .as_ref()
            .map(SharedPart::to_bytes)
            .unwrap_or_default();
        let gathered = world.gather_bytes(0, &part)?;
        if let (Some(begun), Some(gathered)) = (begun, gathered) {
            let parts = gathered
                .iter()
                .map(|bytes| SharedPart::from_bytes(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let metadata = Snapshot {
                step,
                ..Snapshot::default()
            };
            begun?.commit(&metadata, &parts)?;
            shared_ms.push(started.elapsed().as_secs_f64() * 1e3);
            // Not timed: keeps the disk's use flat.
            store.prune(&keep)?;
        }
        written?;
    }
    Ok(json!({
        "rank": rank,
        "size": size,
        "save_bench": {
            "parameters": parameters,
            "tensor_bytes": 12 * parameters,
            "single_ms": single_ms,
            "shared_ms": shared_ms,
        },
    }))
}
