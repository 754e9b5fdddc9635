//! The training loop: resume, step, evaluate, save by policy, stop on signals, save the last
//! good state on errors. This module holds the settings, the [`Trainer`] and its loop
//! ([`Trainer::run`]); each part of the loop is a module of its own: `step` (a step and its
//! agreement across ranks, the epoch's end), `save` (snapshots, saves, the run's finish, the
//! emergency checkpoint), `resume`, `state` (the trainer state a checkpoint holds), `signal`
//! and `events`.

mod events;
mod resume;
mod save;
mod signal;
mod state;
mod step;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use keel_ckpt::{
    AsyncSaver, CheckpointId, CheckpointStore, CkptError, Goal, Kind, Manifest, PendingCheckpoint,
    Progress, Resume, Retention, SavePolicy, SharedPart, Snapshot, group_rank, rank_group,
};
use keel_dist::Collective;
use serde_json::{Value, json};

use self::state::{BestRecord, OptimizerRecord, STATE_VERSION, TrainerState};
use crate::TrainError;
use crate::compare::{environment_changes, json_differences};
use crate::convert::{ckpt_dtype, first_non_finite, load_tensor, to_ckpt};
use crate::data::Dataset;
use crate::dist::{
    STEP_FAILED, World, flatten_weighted, gather_parameters, rank_rows, rebuild_mean, state_digest,
};
use crate::metrics::{LogFormat, MetricsLog, Row, plot_loss};
use crate::model::Model;
use crate::optim::OptimizerState;
use crate::rng::TrainRng;
use crate::schedule::Schedule;
use crate::shard::{
    OptimizerSharding, ParamInfo, assemble, partition, partition_record, saved_layout,
};

use self::resume::{agree_on_start, data_record};
use self::save::{Ended, Saver};
use self::step::{EpochEnd, Phases, Stepped};
pub use events::{Event, Outcome, Status};
pub use signal::StopSignal;

/// How the trainer runs.
#[derive(Debug)]
pub struct TrainSettings {
    /// Seed of the shuffles (one stream per epoch); the model's initialisation and dropout use
    /// the [`TrainRng`] given to [`Trainer::new`].
    pub seed: u64,
    /// Epochs to train in all (a resumed run trains the rest).
    pub epochs: u64,
    /// Rows per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Learning-rate schedule over the whole run.
    pub schedule: Schedule,
    /// The optimizer's base learning rate (the schedule scales it).
    pub lr: f64,
    /// When to save regular checkpoints.
    pub policy: Box<dyn SavePolicy>,
    /// Persist checkpoints on a background thread (the loop stalls only for the copy).
    pub save_async: bool,
    /// What to keep after each save.
    pub retention: Option<Retention>,
    /// Save a `best` checkpoint when this metric (`test_accuracy`, `test_loss`) improves.
    pub best_metric: Option<(String, Goal)>,
    /// Ignore existing checkpoints (the store must then be empty).
    pub fresh: bool,
    /// Settings that change the trajectory (model, data, optimizer...): a checkpoint written
    /// with other values is refused on resume.
    pub trajectory: Value,
    /// Metrics log and its format.
    pub metrics: Option<(std::path::PathBuf, LogFormat)>,
    /// Loss plot (SVG), drawn when the run ends or stops.
    pub plot: Option<std::path::PathBuf>,
    /// Recorded in every checkpoint and compared on resume (`keel hash --json`).
    pub environment: Option<Value>,
    /// Recorded in every checkpoint and compared on resume (`keel probe --json`).
    pub device_probe: Option<Value>,
    /// Fault injection for tests and drills: the loss of this step (1-based) becomes NaN.
    pub nan_at_step: Option<u64>,
    /// Whether each rank holds all of the optimizer's state (the default) or its own share
    /// of it (ZeRO-1, [`OptimizerSharding::Sharded`]: the same weights bit for bit, saved
    /// synchronously as one multi-rank checkpoint, `save_async` notwithstanding).
    pub optimizer_sharding: OptimizerSharding,
    /// Write each step's wall time here when the loop ends (rank 0, a completed or stopped
    /// run): CSV with the header `step,seconds,gather,forward,backward,update`, one row per
    /// step this run took, in seconds: the whole step, from just before the batch is
    /// gathered to just after the optimizer's update (no evaluation, save, log or observer
    /// time), then its parts (the batch's rows gathered; the forward pass and the loss read
    /// back; the backward pass; the all-reduce and the update). The times are taken at
    /// every step anyway (a few clock reads), and kept in memory only when this is set.
    /// For benchmarks; [`TrainSettings::new`] takes it from [`STEP_TIMES_ENV`].
    pub step_times: Option<std::path::PathBuf>,
}

/// The environment variable [`TrainSettings::new`] (and `keel train`) read
/// [`TrainSettings::step_times`] from: a file path.
pub const STEP_TIMES_ENV: &str = "KEEL_STEP_TIMES";

/// [`TrainSettings::step_times`] as [`STEP_TIMES_ENV`] gives it (unset or empty: none).
pub fn step_times_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os(STEP_TIMES_ENV)
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from)
}

impl TrainSettings {
    /// Settings for `seed` and base learning rate `lr`: 1 epoch, batches of 64, constant
    /// rate, saving at the end of each epoch (synchronously), no log, no plot.
    pub fn new(seed: u64, lr: f64) -> Self {
        TrainSettings {
            seed,
            epochs: 1,
            batch_size: 64,
            schedule: Schedule::Constant,
            lr,
            policy: Box::new(keel_ckpt::EveryNEpochs(1)),
            save_async: false,
            retention: None,
            best_metric: None,
            fresh: false,
            trajectory: Value::Null,
            metrics: None,
            plot: None,
            environment: None,
            device_probe: None,
            nan_at_step: None,
            optimizer_sharding: OptimizerSharding::Replicated,
            step_times: step_times_from_env(),
        }
    }
}

/// Where the loop is.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    step: u64,
    epoch: u64,
    batch: u64,
    best: Option<f64>,
    /// The last held-out loss and accuracy (from the checkpoint on resume).
    eval: Option<(f64, f64)>,
}

/// A step or evaluation that failed (on some rank): the state to save as the emergency
/// checkpoint (the last good one every rank agrees on) and why.
struct Failure {
    /// The position of the state held.
    held: Position,
    /// The generator of the state held.
    rng: TrainRng,
    /// The step that failed (1-based).
    failed_step: u64,
    /// Why.
    cause: TrainError,
}

impl Position {
    /// The position after one more step in an epoch of `batches` batches.
    fn after_step(self, batches: u64) -> Position {
        let mut next = self;
        next.step += 1;
        next.batch += 1;
        if next.batch == batches {
            next.epoch += 1;
            next.batch = 0;
        }
        next
    }
}

/// Trains a [`Model`] with an optimizer, checkpointing into a [`CheckpointStore`].
#[derive(Debug)]
pub struct Trainer<M, O> {
    model: M,
    optimizer: O,
    rng: TrainRng,
    device: Device,
    store: CheckpointStore,
    settings: TrainSettings,
    /// What the checkpoints record of the data (shape and BLAKE3 of each set).
    data: Value,
    /// The ranks training together (`Single` unless [`Trainer::with_world`] says otherwise).
    world: World,
}

/// The header of [`TrainSettings::step_times`].
const STEP_TIMES_HEADER: &str = "step,seconds,gather,forward,backward,update";

/// Writes [`TrainSettings::step_times`]: a row per step, its time and its parts, in seconds.
fn write_step_times(
    path: &std::path::Path,
    times: &[(u64, Duration, Phases)],
) -> Result<(), TrainError> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64 + times.len() * 64);
    text.push_str(STEP_TIMES_HEADER);
    text.push('\n');
    for (step, took, p) in times {
        let _ = write!(text, "{step}");
        for part in [*took, p.gather, p.forward, p.backward, p.update] {
            let _ = write!(text, ",{:.9}", part.as_secs_f64());
        }
        text.push('\n');
    }
    fs_err::write(path, text)?;
    Ok(())
}

/// An error and its causes, `: ` separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<M: Model, O: OptimizerState> Trainer<M, O> {
    /// A trainer for `model` (its parameters already initialised from `rng`) and `optimizer`
    /// (over the model's parameters), computing on `device`.
    pub fn new(
        model: M,
        optimizer: O,
        rng: TrainRng,
        device: Device,
        store: CheckpointStore,
        settings: TrainSettings,
    ) -> Self {
        Trainer {
            model,
            optimizer,
            rng,
            device,
            store,
            settings,
            data: Value::Null,
            world: World::default(),
        }
    }

    /// Trains data-parallel on `world`: every rank of it builds the same trainer (same
    /// model initialisation, settings and store) and calls [`Trainer::run`]. Each global
    /// batch of `batch_size` rows is split into contiguous slices by rank ([`rank_rows`]);
    /// each rank computes the mean loss and gradients of its slice, and one all-reduce sums
    /// `slice rows x gradient` over the ranks, divided by the batch's rows: the mean over the
    /// global batch, the same update on every rank. Metrics are reduced the same way, so every
    /// rank sees the same numbers; rank 0 alone writes the metrics log, the plot and the
    /// checkpoints (the state is replicated, so its checkpoint is complete), after checking at
    /// each save that every rank's state has the same BLAKE3. A stop (a signal on any rank)
    /// or a failure (a non-finite loss, a candle error on any rank) is agreed on at every
    /// step, so all ranks stop after the same one. In a world of one (the default, `Single`)
    /// training is exactly what it is without a world, bit for bit.
    pub fn with_world(mut self, world: Arc<dyn Collective>) -> Self {
        self.world = World(world);
        self
    }

    /// The model (trained so far).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The checkpoint store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Resumes from the newest valid checkpoint (unless `fresh`), then trains until all epochs
    /// are done or `stop` is raised. On an error in a step it saves the last good state as an
    /// `emergency` checkpoint and returns [`TrainError::StepFailed`].
    pub fn run(
        &mut self,
        train: &Dataset,
        test: &Dataset,
        stop: &StopSignal,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Outcome, TrainError> {
        if train.features != test.features || train.is_empty() || test.is_empty() {
            return Err(TrainError::Setting(format!(
                "training set `{}` ({} rows of {}) and held-out set `{}` ({} rows of {}) do not fit together",
                train.name,
                train.len(),
                train.features,
                test.name,
                test.len(),
                test.features
            )));
        }
        for set in [train, test] {
            set.check().map_err(|reason| TrainError::Data {
                path: set.name.clone().into(),
                reason,
            })?;
        }
        if self.settings.batch_size == 0 {
            return Err(TrainError::Setting("batch_size must be at least 1".into()));
        }
        if !(self.settings.lr.is_finite() && self.settings.lr >= 0.0) {
            return Err(TrainError::Setting(format!(
                "the learning rate must be a finite number >= 0, got {}",
                self.settings.lr
            )));
        }
        let n = train.len();
        let batches = n.div_ceil(self.settings.batch_size) as u64;
        let total_steps = batches.checked_mul(self.settings.epochs).ok_or_else(|| {
            TrainError::Setting(format!(
                "{} epochs of {batches} steps: more steps than a counter holds",
                self.settings.epochs
            ))
        })?;
        self.data = json!({"train": data_record(train), "test": data_record(test)});
        let world = self.world.clone();
        let (rank, size) = (world.rank(), world.size());
        let sharded = self.sharded();
        if sharded {
            let owned = crate::shard::shard_range(self.elements(), rank, size);
            if self.optimizer.owned() != Some(owned.clone()) {
                self.optimizer
                    .shard(owned)
                    .map_err(|e| TrainError::Setting(format!("optimizer sharding: {e}")))?;
            }
        }
        let resumed = self.resume(batches, observer);
        let (mut pos, resumed) = agree_on_start(&world, resumed)?;
        observer(&Event::Plan {
            total_steps,
            steps_per_epoch: batches,
            done: pos.step,
        });
        // Only rank 0 writes files: the metrics log, the plot and the checkpoints.
        let mut log = match &self.settings.metrics {
            Some((path, format)) if world.lead() => {
                Some(MetricsLog::open(path, *format, pos.step)?)
            }
            _ => None,
        };
        // A sharded save is one multi-rank commit: every rank writes, synchronously.
        let mut saver = if self.settings.save_async && world.lead() && !sharded {
            Saver::Background(
                AsyncSaver::new(self.store.clone(), self.settings.retention.clone())?,
                None,
            )
        } else {
            Saver::Sync(self.store.clone(), self.settings.retention.clone())
        };
        let x_train = Tensor::from_slice(&train.inputs, (n, train.features), &self.device)?;
        let y_train = Tensor::from_slice(&train.labels, n, &self.device)?;
        // Each rank evaluates its own slice of the held-out set; the sums are all-reduced.
        let held_out = rank_rows(test.len(), rank, size);
        let x_test = Tensor::from_slice(
            &test.inputs[held_out.start * test.features..held_out.end * test.features],
            (held_out.len(), test.features),
            &self.device,
        )?;
        let y_test =
            Tensor::from_slice(&test.labels[held_out.clone()], held_out.len(), &self.device)?;

        // The step and (when known yet) the id of the newest regular checkpoint: the resumed
        // one, then each policy save (a background save's id comes back from `finish`).
        let mut last_regular: Option<(u64, Option<CheckpointId>)> =
            resumed.map(|id| (pos.step, Some(id)));
        let mut last_eval = pos.eval;
        let mut throughput = 0.0f64;
        let mut step_times: Vec<(u64, Duration, Phases)> = Vec::new();
        let mut status = Status::Completed;
        'epochs: while pos.epoch < self.settings.epochs {
            let order: Vec<u32> = TrainRng::with_stream(self.settings.seed, pos.epoch + 1)
                .permutation(n)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            while pos.batch < batches {
                let started = Instant::now();
                let (loss, lr, rows, phases) =
                    match self.step(&x_train, &y_train, &order, pos, batches, total_steps, stop)? {
                        Stepped::Took {
                            loss,
                            lr,
                            rows,
                            phases,
                        } => (loss, lr, rows, phases),
                        Stepped::Stopped { signal } => {
                            status = Status::Interrupted { signal };
                            break 'epochs;
                        }
                        Stepped::Failed(failure) => {
                            return Err(self.emergency(*failure, saver, observer));
                        }
                    };
                let took = started.elapsed();
                pos = pos.after_step(batches);
                if self.settings.step_times.is_some() {
                    step_times.push((pos.step, took, phases));
                }
                let end_of_epoch = pos.batch == 0;
                let rate = rows as f64 / took.as_secs_f64().max(1e-9);
                throughput = if throughput == 0.0 {
                    rate
                } else {
                    0.9 * throughput + 0.1 * rate
                };
                let mut row = Row {
                    step: pos.step,
                    epoch: if end_of_epoch {
                        pos.epoch - 1
                    } else {
                        pos.epoch
                    },
                    loss: f64::from(loss),
                    lr,
                    samples_per_sec: throughput,
                    test_loss: None,
                    test_accuracy: None,
                };
                observer(&Event::Step(&row));
                let mut metrics = BTreeMap::from([
                    ("loss".to_string(), f64::from(loss)),
                    ("lr".to_string(), lr),
                ]);
                let mut improved = false;
                if end_of_epoch {
                    let evaluated = self.end_epoch(
                        &x_test,
                        &y_test,
                        test.len(),
                        &mut pos,
                        &mut metrics,
                        observer,
                    )?;
                    match evaluated {
                        Ok(EpochEnd {
                            eval,
                            improved: better,
                        }) => {
                            last_eval = Some(eval);
                            (row.test_loss, row.test_accuracy) = (Some(eval.0), Some(eval.1));
                            improved = better;
                        }
                        Err(failure) => {
                            // The step itself is done: log it, then save its state.
                            if let Some(log) = &mut log {
                                log.push(row)?;
                            }
                            return Err(self.emergency(*failure, saver, observer));
                        }
                    }
                }
                // Logged once complete (with the evaluation at an epoch end): append only.
                if let Some(log) = &mut log {
                    log.push(row)?;
                }
                let progress = Progress {
                    step: pos.step,
                    epoch: pos.epoch,
                    end_of_epoch,
                    now: Instant::now(),
                };
                // The best first: at the same step the regular checkpoint is then the newer,
                // and a resume names it.
                if improved {
                    self.save(Kind::Best, &pos, &self.rng, &metrics, &mut saver, observer)?;
                }
                // Rank 0's policy decides for all (a policy may read the clock).
                let policy = &mut self.settings.policy;
                if world.lead_decides(|| policy.should_save(&progress))?
                    && let Some((stall, id)) = self.save(
                        Kind::Regular,
                        &pos,
                        &self.rng,
                        &metrics,
                        &mut saver,
                        observer,
                    )?
                {
                    self.settings.policy.saved(&progress, stall);
                    last_regular = Some((pos.step, id));
                }
                if end_of_epoch {
                    break;
                }
            }
        }
        if let Some(path) = &self.settings.step_times
            && world.lead()
        {
            write_step_times(path, &step_times)?;
        }
        let ended = Ended {
            pos,
            status,
            last_regular,
            last_eval,
        };
        self.finish(ended, saver, log.as_ref(), &train.name, observer)
    }

    /// Whether the optimizer state is sharded.
    fn sharded(&self) -> bool {
        self.settings.optimizer_sharding == OptimizerSharding::Sharded
    }

    /// The elements of the flattened parameter vector.
    fn elements(&self) -> usize {
        self.model
            .parameters()
            .iter()
            .map(|(_, var)| var.elem_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdamW, AdamWConfig, Mlp};

    fn run(step_times: Option<std::path::PathBuf>) -> (Outcome, Vec<f32>) {
        let (train, test) = Dataset::digits().unwrap().split(0.2, 0).unwrap();
        let device = Device::Cpu;
        let mut rng = TrainRng::new(3);
        let model = Mlp::new(&[64, 16, 10], 0.0, &device, &mut rng).unwrap();
        let optimizer = AdamW::named(model.parameters(), AdamWConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(dir.path()).unwrap();
        let settings = TrainSettings {
            step_times,
            ..TrainSettings::new(3, 1e-3)
        };
        let mut trainer = Trainer::new(model, optimizer, rng, device, store, settings);
        let outcome = trainer
            .run(&train, &test, &StopSignal::new(), &mut |_| {})
            .unwrap();
        let (_, weight) = &trainer.model().parameters()[0];
        let weights = weight.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        (outcome, weights)
    }

    /// `step_times` writes one row per step, each step's parts within its time, and
    /// changes nothing of the training.
    #[test]
    fn step_times_has_a_row_per_step_and_leaves_training_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        let (timed, timed_weights) = run(Some(path.clone()));
        let (untimed, untimed_weights) = run(None);
        assert_eq!(timed.step, 23, "1,437 rows in batches of 64");
        assert_eq!(timed_weights, untimed_weights);
        assert_eq!(timed.test_loss, untimed.test_loss);
        let text = fs_err::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(STEP_TIMES_HEADER));
        let rows: Vec<Vec<f64>> = lines
            .map(|line| line.split(',').map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), 23);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), 6, "{row:?}");
            assert_eq!(row[0], (i + 1) as f64);
            let parts: f64 = row[2..].iter().sum();
            assert!(
                row[1] > 0.0 && parts <= row[1] + 1e-8,
                "step {}: {row:?}",
                i + 1
            );
            assert!(row[2..].iter().all(|&part| part >= 0.0), "{row:?}");
        }
    }
}
