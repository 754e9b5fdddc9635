//! The training loop: resume, step, evaluate, save by policy, stop on signals, save the last
//! good state on errors.

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
use crate::state::{BestRecord, OptimizerRecord, STATE_VERSION, TrainerState};

/// A request to stop after the current step: set by SIGINT/SIGTERM when installed, or by hand.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    signal: Arc<AtomicUsize>,
}

impl StopSignal {
    /// A signal nobody has raised yet; [`StopSignal::request`] raises it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Catches SIGINT and SIGTERM (on Unix): the first one asks the loop to stop after the
    /// current step and save; a second one ends the process at once (exit status 128 + signal).
    pub fn install() -> Result<Self, TrainError> {
        let stop = Self::new();
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let again = Arc::new(AtomicBool::new(false));
            for signal in [SIGINT, SIGTERM] {
                signal_hook::flag::register_conditional_shutdown(
                    signal,
                    128 + signal,
                    Arc::clone(&again),
                )?;
                signal_hook::flag::register(signal, Arc::clone(&again))?;
                signal_hook::flag::register_usize(
                    signal,
                    Arc::clone(&stop.signal),
                    signal as usize,
                )?;
            }
        }
        Ok(stop)
    }

    /// Asks the loop to stop, as if `signal` had arrived.
    pub fn request(&self, signal: i32) {
        self.signal.store(signal.max(1) as usize, Ordering::SeqCst);
    }

    /// The signal that asked to stop, if any.
    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

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
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Training starts from scratch; `why` says why (no checkpoint, `--fresh`, ...).
    Fresh {
        /// Why.
        why: String,
    },
    /// Training resumes from a checkpoint.
    Resumed {
        /// The checkpoint.
        id: &'a CheckpointId,
        /// Its step, epoch and batch within the epoch.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// Batch within the epoch.
        batch: u64,
        /// Newer checkpoints that did not verify, with the reason.
        skipped: &'a [(CheckpointId, String)],
        /// What differs in the environment or device since the checkpoint was saved.
        environment_changes: &'a [String],
    },
    /// The plan: steps in all and per epoch.
    Plan {
        /// Steps in the whole run.
        total_steps: u64,
        /// Steps per epoch.
        steps_per_epoch: u64,
        /// Steps already done (on resume).
        done: u64,
    },
    /// A step finished.
    Step(&'a Row),
    /// An epoch ended and was evaluated on the held-out set.
    Evaluated {
        /// Epochs completed.
        epoch: u64,
        /// Held-out loss.
        test_loss: f64,
        /// Held-out accuracy.
        test_accuracy: f64,
    },
    /// A checkpoint was saved (or, in the background, handed over).
    Saved {
        /// Its kind.
        kind: Kind,
        /// Its step.
        step: u64,
        /// What the loop spent on it.
        stall: Duration,
        /// Still being written in the background.
        background: bool,
        /// Asked for by the save policy (not a `best`, final or interrupted save).
        by_policy: bool,
    },
    /// A save failed; training goes on (the previous checkpoints are intact).
    SaveFailed(String),
    /// Something to know that does not stop training: a checkpoint saved whose pruning of
    /// older ones failed, a resumed checkpoint too old to record its data's digest.
    Warning(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// All epochs done.
    Completed,
    /// Stopped by a signal (or [`StopSignal::request`]) after saving.
    Interrupted {
        /// The signal number.
        signal: i32,
    },
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Steps done.
    pub step: u64,
    /// Epochs done.
    pub epoch: u64,
    /// The checkpoint that holds the final state.
    pub checkpoint: Option<CheckpointId>,
    /// The last held-out accuracy.
    pub test_accuracy: Option<f64>,
    /// The last held-out loss.
    pub test_loss: Option<f64>,
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

/// One rank's part of a step: its slice's mean loss and gradients, and (in a world of
/// several) the weighted, flattened gradients to all-reduce.
struct LocalStep {
    loss: f32,
    grads: GradStore,
    flat: Option<Vec<f32>>,
}

/// Every rank's starting point (a checkpoint, a fresh start, or an error), compared: the
/// ranks must start from the same one (they read one shared store).
fn agree_on_start<T>(
    world: &World,
    start: Result<(T, Option<CheckpointId>), TrainError>,
) -> Result<(T, Option<CheckpointId>), TrainError> {
    if world.size() == 1 {
        return start;
    }
    let mine = match &start {
        Ok((_, Some(id))) => format!("resume from {id}"),
        Ok((_, None)) => "start fresh".to_string(),
        Err(error) => format!("error: {}", error_chain(error)),
    };
    let all = world.0.all_gather_bytes(mine.as_bytes())?;
    if all.iter().all(|other| *other == all[0]) {
        return start;
    }
    Err(TrainError::RanksDisagree {
        what: "where to start (do all ranks see the same checkpoint store?)",
        detail: all
            .iter()
            .enumerate()
            .map(|(rank, text)| format!("rank {rank}: {}", String::from_utf8_lossy(text)))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// `kind/name` back into a checkpoint id (`None` for an empty or unknown text).
fn parse_id(text: &str) -> Option<CheckpointId> {
    let (kind, name) = text.split_once('/')?;
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some(CheckpointId {
        kind,
        name: name.to_string(),
    })
}

enum Saver {
    Sync(CheckpointStore, Option<Retention>),
    /// The writer, and the kind and step of the save handed to it last.
    Background(AsyncSaver, Option<(Kind, u64)>),
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

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Saver::Sync(..) => "Saver::Sync",
            Saver::Background(..) => "Saver::Background",
        })
    }
}

/// Saves, then prunes by `retention`. A prune that fails after the save committed is a
/// warning, not a failed save: the checkpoint is there.
fn save_and_prune(
    store: &CheckpointStore,
    kind: Kind,
    snapshot: &Snapshot,
    retention: Option<&Retention>,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Result<CheckpointId, TrainError> {
    let id = store.save(kind, snapshot)?;
    if let Some(retention) = retention
        && let Err(error) = store.prune_after(retention, &id)
    {
        observer(&Event::Warning(format!(
            "checkpoint {id} is saved, but pruning older checkpoints failed: {}",
            error_chain(&error)
        )));
    }
    Ok(id)
}

/// Reports a failed background save: when the checkpoint it was writing did commit (the
/// error came after, from pruning older ones), a warning and the checkpoint; otherwise a
/// failed save.
fn background_failed(
    store: &CheckpointStore,
    error: CkptError,
    in_flight: Option<(Kind, u64)>,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Option<CheckpointId> {
    let committed = in_flight.and_then(|(kind, step)| {
        store.list().ok()?.into_iter().find_map(|listed| {
            (listed.id.kind == kind && listed.manifest.as_ref()?.step == step).then_some(listed.id)
        })
    });
    match committed {
        Some(id) => {
            observer(&Event::Warning(format!(
                "checkpoint {id} is saved, but what came after failed: {}",
                error_chain(&error)
            )));
            Some(id)
        }
        None => {
            observer(&Event::SaveFailed(error_chain(&error)));
            None
        }
    }
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

/// What a checkpoint records of a dataset: its name, shape and content digest.
fn data_record(set: &Dataset) -> Value {
    json!({
        "name": set.name,
        "rows": set.len(),
        "features": set.features,
        "classes": set.classes,
        "blake3": set.digest(),
    })
}

/// `rows x features, classes, blake3 …` of a recorded set, for messages.
fn describe(record: &Value) -> String {
    let get = |k: &str| record.get(k).map_or("?".to_string(), |v| v.to_string());
    format!(
        "{} rows x {} features, {} classes, blake3 {}",
        get("rows"),
        get("features"),
        get("classes"),
        record.get("blake3").and_then(Value::as_str).unwrap_or("?")
    )
}

/// The changes between the data a checkpoint recorded and the data now: one line per set.
fn data_changes(saved: &Value, now: &Value) -> Vec<String> {
    ["train", "test"]
        .into_iter()
        .filter(|set| saved.get(set) != now.get(set))
        .map(|set| {
            let (old, new) = (&saved[set], &now[set]);
            let name = new.get("name").and_then(Value::as_str).unwrap_or(set);
            format!("`{name}`: {} -> {}", describe(old), describe(new))
        })
        .collect()
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
        let mut status = Status::Completed;
        'epochs: while pos.epoch < self.settings.epochs {
            let order: Vec<u32> = TrainRng::with_stream(self.settings.seed, pos.epoch + 1)
                .permutation(n)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            while pos.batch < batches {
                let signal = stop.requested();
                let started = Instant::now();
                let rng_before = self.rng.clone();
                let lr = self
                    .settings
                    .schedule
                    .lr_at(self.settings.lr, pos.step, total_steps);
                // pos.batch < batches (checked on resume), so the product is below n.
                let from = (pos.batch as usize).saturating_mul(self.settings.batch_size);
                let to = from.saturating_add(self.settings.batch_size).min(n);
                let rows = order.get(from..to).unwrap_or_default();
                // This rank's part of the step, caught: no rank leaves before the agreement.
                let local = match signal {
                    Some(_) => Ok(None),
                    None if lr.is_finite() && lr >= 0.0 => {
                        self.local_step(&x_train, &y_train, rows, &pos).map(Some)
                    }
                    None => Err(TrainError::Setting(format!(
                        "the schedule gives learning rate {lr} at step {}",
                        pos.step + 1
                    ))),
                };
                // The stop agreement: an error anywhere beats a signal anywhere; every rank
                // stops after the same step.
                let code = match (&local, signal) {
                    (Err(_), _) => STEP_FAILED,
                    (Ok(_), Some(signal)) => (signal.max(1) as u64).min(STEP_FAILED - 1),
                    (Ok(_), None) => 0,
                };
                let agreed = world.0.all_reduce_max_u64(code)?;
                let local = match local {
                    Ok(Some(local)) if agreed == 0 => local,
                    local if agreed >= STEP_FAILED => {
                        let cause = world.failure(local, pos.step + 1)?;
                        return Err(self.emergency(
                            pos,
                            &rng_before,
                            pos.step + 1,
                            cause,
                            saver,
                            observer,
                        ));
                    }
                    _ => {
                        // The step another rank did not take is not taken here either.
                        self.rng = rng_before;
                        status = Status::Interrupted {
                            signal: i32::try_from(agreed).unwrap_or(i32::MAX),
                        };
                        break 'epochs;
                    }
                };
                let update = self.global_update(local, rows.len(), lr, pos.step + 1)?;
                let updated_here = update.is_ok();
                let loss = match world.agree(update, pos.step + 1)? {
                    Ok(loss) => loss,
                    Err(cause) => {
                        // A rank whose update went through holds the agreed state after the
                        // step (the same update every rank computed); the others the state
                        // before it. Rank 0 saves what it holds.
                        let (held, rng) = if updated_here {
                            (pos.after_step(batches), self.rng.clone())
                        } else {
                            (pos, rng_before)
                        };
                        return Err(self.emergency(
                            held,
                            &rng,
                            pos.step + 1,
                            cause,
                            saver,
                            observer,
                        ));
                    }
                };
                pos = pos.after_step(batches);
                let end_of_epoch = pos.batch == 0;
                let rows = (to - from) as f64;
                let rate = rows / started.elapsed().as_secs_f64().max(1e-9);
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
                    let (test_loss, test_accuracy) =
                        match self.evaluate(&x_test, &y_test, test.len(), pos.step)? {
                            Ok(v) => v,
                            Err(cause) => {
                                // The step itself is done: log it, then save its state.
                                if let Some(log) = &mut log {
                                    log.push(row)?;
                                }
                                let rng = self.rng.clone();
                                return Err(self.emergency(
                                    pos,
                                    &rng,
                                    pos.step + 1,
                                    cause,
                                    saver,
                                    observer,
                                ));
                            }
                        };
                    last_eval = Some((test_loss, test_accuracy));
                    metrics.insert("test_loss".into(), test_loss);
                    metrics.insert("test_accuracy".into(), test_accuracy);
                    observer(&Event::Evaluated {
                        epoch: pos.epoch,
                        test_loss,
                        test_accuracy,
                    });
                    row.test_loss = Some(test_loss);
                    row.test_accuracy = Some(test_accuracy);
                    if let Some((metric, goal)) = &self.settings.best_metric
                        && let Some(&value) = metrics.get(metric)
                        && !value.is_nan()
                        && pos.best.is_none_or(|b| goal.better(value, b))
                    {
                        pos.best = Some(value);
                        improved = true;
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
        // The final (or interrupted) state; saved synchronously after the one in flight.
        let kind = match status {
            Status::Completed => Kind::Regular,
            Status::Interrupted { .. } => Kind::Interrupted,
        };
        // The last background save is the policy's regular one when it saved at this step (a
        // `best` one goes first); when it failed, the state is saved again below.
        let background_last = match saver {
            Saver::Background(saver, in_flight) => match saver.finish() {
                Ok(id) => Ok(id),
                Err(error) => background_failed(&self.store, error, in_flight, observer)
                    .map(Some)
                    .ok_or(()),
            },
            Saver::Sync(..) => Ok(None),
        };
        let saved_here = match (last_regular, background_last) {
            (Some((step, id)), Ok(background)) if step == pos.step => id.or(background),
            _ => None,
        };
        // Rank 0 knows whether the final state is saved already (a background save's id
        // comes back to it alone): every rank goes by its answer.
        let saved_here = if size == 1 {
            saved_here
        } else {
            let mut name = saved_here
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
                .into_bytes();
            world.0.broadcast_bytes(0, &mut name)?;
            parse_id(&String::from_utf8_lossy(&name))
        };
        let checkpoint = if let (Some(id), Kind::Regular) = (&saved_here, kind) {
            Some(id.clone())
        } else {
            let mut metrics = BTreeMap::new();
            if let Some((l, a)) = last_eval {
                metrics.insert("test_loss".to_string(), l);
                metrics.insert("test_accuracy".to_string(), a);
            }
            let started = Instant::now();
            let id = if size == 1 && !sharded {
                let snapshot = self.snapshot(&pos, &self.rng, metrics)?;
                save_and_prune(
                    &self.store,
                    kind,
                    &snapshot,
                    self.settings.retention.as_ref(),
                    observer,
                )?
            } else {
                let mut saver = Saver::Sync(self.store.clone(), self.settings.retention.clone());
                self.save_agreed(kind, &pos, &self.rng, metrics, &mut saver, observer)??
                    .ok_or_else(|| TrainError::LeadSaveFailed {
                        kind,
                        step: pos.step,
                        reason: "no checkpoint was named".into(),
                    })?
            };
            observer(&Event::Saved {
                kind,
                step: pos.step,
                stall: started.elapsed(),
                background: false,
                by_policy: false,
            });
            Some(id)
        };
        if let (Some(plot), Some(log)) = (&self.settings.plot, &log) {
            plot_loss(
                log.rows(),
                plot,
                &format!("{} ({})", train.name, self.optimizer.kind()),
            )?;
        }
        Ok(Outcome {
            status,
            step: pos.step,
            epoch: pos.epoch,
            checkpoint,
            test_accuracy: last_eval.map(|e| e.1),
            test_loss: last_eval.map(|e| e.0),
        })
    }

    /// This rank's forward and backward pass over its slice of the global batch `rows`. In a
    /// world of one, the whole batch with the trainer's generator (as a single process always
    /// trained); in a larger one, the rank's slice ([`rank_rows`]) with a generator of its own
    /// for the step (drawn from the trainer's, which so advances alike on every rank), and the
    /// gradients flattened and weighted for the all-reduce.
    fn local_step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        rows: &[u32],
        pos: &Position,
    ) -> Result<LocalStep, TrainError> {
        let (rank, size) = (self.world.rank(), self.world.size());
        if size == 1 {
            let mut rng = std::mem::replace(&mut self.rng, TrainRng::new(0));
            let result = self.forward_backward(x, y, rows, &mut rng, pos);
            self.rng = rng;
            let (loss, grads) = result?;
            return Ok(LocalStep {
                loss,
                grads,
                flat: None,
            });
        }
        let mut rng = TrainRng::with_stream(self.rng.next_u64(), rank as u64 + 1);
        let mine = &rows[rank_rows(rows.len(), rank, size)];
        let (loss, grads) = if mine.is_empty() {
            // A batch with fewer rows than ranks: this rank adds nothing, with weight 0.
            (0.0, GradStore::default())
        } else {
            self.forward_backward(x, y, mine, &mut rng, pos)?
        };
        let flat = flatten_weighted(&self.model.parameters(), &grads, mine.len(), loss)?;
        Ok(LocalStep {
            loss,
            grads,
            flat: Some(flat),
        })
    }

    /// The mean loss over `rows` and its gradients.
    fn forward_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        rows: &[u32],
        rng: &mut TrainRng,
        pos: &Position,
    ) -> Result<(f32, GradStore), TrainError> {
        let index = Tensor::from_slice(rows, rows.len(), &self.device)?;
        let xs = x.index_select(&index, 0)?;
        let ys = y.index_select(&index, 0)?;
        let logits = self.model.forward(&xs, true, rng)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
        if self.settings.nan_at_step == Some(pos.step + 1) {
            loss = (loss * f64::NAN)?;
        }
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: pos.step + 1,
                epoch: pos.epoch,
                batch: pos.batch,
                loss: value,
            });
        }
        Ok((value, loss.backward()?))
    }

    /// The update every rank applies: in a larger world the ranks' weighted gradients summed
    /// in one all-reduce and divided by the global batch's `rows` (the mean over the batch),
    /// then the optimizer step. Returns the batch's mean loss. The outer error is the
    /// communicator's; the inner one this rank's (agreed on by the caller).
    fn global_update(
        &mut self,
        local: LocalStep,
        rows: usize,
        lr: f64,
        step: u64,
    ) -> Result<Result<f32, TrainError>, TrainError> {
        let LocalStep {
            loss,
            mut grads,
            flat,
        } = local;
        let loss = match flat {
            None => loss,
            Some(mut flat) => {
                self.world.0.all_reduce_sum_f32(&mut flat)?;
                match rebuild_mean(&self.model.parameters(), &flat, rows, &mut grads) {
                    Ok(loss) => loss,
                    Err(error) => return Ok(Err(error.into())),
                }
            }
        };
        self.optimizer.set_lr(lr);
        if !self.sharded() {
            return Ok(self
                .optimizer
                .update(&grads)
                .map(|()| loss)
                .map_err(TrainError::from));
        }
        // Sharded: each rank computes its share; only when every share is good does any rank
        // assign its state, so a failure anywhere leaves every rank with the state before
        // the step. Then every rank's updated share is all-gathered into the parameters.
        let computed = self
            .optimizer
            .shard_update(&grads)
            .map_err(TrainError::from);
        let values = match self.world.agree(computed, step)? {
            Ok(values) => values,
            Err(cause) => {
                self.optimizer.finish_shard_update(false);
                return Ok(Err(cause));
            }
        };
        self.optimizer.finish_shard_update(true);
        let ranges = partition(self.elements(), self.world.size());
        gather_parameters(&self.world, &self.model.parameters(), &ranges, &values)?;
        Ok(Ok(loss))
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

    /// Held-out loss and accuracy over the `n` rows of all ranks: each rank its slice `x`,
    /// `y` in batches of 1,000 rows, the sums all-reduced. The outer error is the
    /// communicator's; the inner one is agreed (every rank has it or none).
    fn evaluate(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        n: usize,
        step: u64,
    ) -> Result<Result<(f64, f64), TrainError>, TrainError> {
        let local = if self.world.size() == 1 {
            let mut rng = std::mem::replace(&mut self.rng, TrainRng::new(0));
            let sums = self.evaluate_slice(x, y, &mut rng);
            self.rng = rng;
            sums
        } else {
            // The replicated generator stays as it is on every rank.
            self.evaluate_slice(x, y, &mut self.rng.clone())
        };
        let (loss_sum, correct) = match self.world.agree(local, step)? {
            Ok(sums) => sums,
            Err(cause) => return Ok(Err(cause)),
        };
        let mut sums = [loss_sum, correct as f64];
        self.world.0.all_reduce_sum_f64(&mut sums)?;
        Ok(Ok((sums[0] / n as f64, sums[1] / n as f64)))
    }

    /// The summed loss (mean per batch times its rows) and the correct predictions over
    /// this rank's held-out slice.
    fn evaluate_slice(
        &self,
        x: &Tensor,
        y: &Tensor,
        rng: &mut TrainRng,
    ) -> Result<(f64, u64), TrainError> {
        let n = x.dim(0)?;
        let mut loss_sum = 0.0f64;
        let mut correct = 0u64;
        let mut from = 0;
        while from < n {
            let len = 1000.min(n - from);
            let xs = x.narrow(0, from, len)?;
            let ys = y.narrow(0, from, len)?;
            let logits = self.model.forward(&xs, false, rng)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?.to_scalar::<f32>()?;
            loss_sum += f64::from(loss) * len as f64;
            let predicted = logits.argmax(1)?;
            correct += predicted
                .eq(&ys)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as u64;
            from += len;
        }
        Ok((loss_sum, correct))
    }
    fn snapshot(
        &self,
        pos: &Position,
        rng: &TrainRng,
        metrics: BTreeMap<String, f64>,
    ) -> Result<Snapshot, TrainError> {
        // No checkpoint records non-finite weights or optimizer state as a good state.
        let finite = |name: &str, t: keel_ckpt::Tensor| match first_non_finite(&t) {
            None => Ok(t),
            Some(value) => Err(TrainError::NonFiniteState {
                tensor: name.to_string(),
                step: pos.step,
                value,
            }),
        };
        let mut model = BTreeMap::new();
        for (name, var) in self.model.parameters() {
            let tensor = finite(&name, to_ckpt(&name, var.as_tensor())?)?;
            model.insert(name, tensor);
        }
        let mut optimizer = BTreeMap::new();
        for (name, tensor) in self.optimizer.state_tensors()? {
            let tensor = finite(&name, to_ckpt(&name, &tensor)?)?;
            optimizer.insert(name, tensor);
        }
        let mut groups = BTreeMap::from([("model".to_string(), model)]);
        // Sharded, each rank's share is its own group, and the partition is recorded so
        // that a run of another world size can put the moments together again.
        let sharding = self.sharded().then(|| {
            partition_record(
                self.elements(),
                &partition(self.elements(), self.world.size()),
            )
        });
        if !optimizer.is_empty() {
            let group = match &sharding {
                Some(_) => rank_group("optimizer", self.world.rank()),
                None => "optimizer".to_string(),
            };
            groups.insert(group, optimizer);
        }
        let user = TrainerState {
            keel_train: STATE_VERSION,
            world_size: self.world.size() as u64,
            trajectory: self.settings.trajectory.clone(),
            data: Some(self.data.clone()),
            batch: pos.batch,
            rng: rng.state(),
            optimizer: OptimizerRecord {
                kind: self.optimizer.kind().to_string(),
                steps: self.optimizer.steps(),
                lr: self.optimizer.lr(),
                sharding,
            },
            best: self
                .settings
                .best_metric
                .as_ref()
                .map(|(metric, _)| BestRecord {
                    metric: metric.clone(),
                    value: pos.best,
                }),
        }
        .to_user()?;
        Ok(Snapshot {
            step: pos.step,
            epoch: pos.epoch,
            metrics,
            user,
            environment: self.settings.environment.clone(),
            device: self.settings.device_probe.clone(),
            groups,
        })
    }

    /// Saves; returns the loop's stall and, for a synchronous save, the checkpoint; `None`
    /// when the save failed (reported, not fatal: the previous checkpoints are intact). In a
    /// larger world every rank calls it: the divergence check, rank 0's save, its outcome on
    /// every rank. The error is fatal: diverged ranks or a broken communicator.
    fn save(
        &self,
        kind: Kind,
        pos: &Position,
        rng: &TrainRng,
        metrics: &BTreeMap<String, f64>,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Option<(Duration, Option<CheckpointId>)>, TrainError> {
        let started = Instant::now();
        let result = if self.world.size() == 1 && !self.sharded() {
            self.snapshot(pos, rng, metrics.clone())
                .and_then(|snapshot| self.save_here(kind, snapshot, saver, observer))
        } else {
            self.save_agreed(kind, pos, rng, metrics.clone(), saver, observer)?
        };
        Ok(match result {
            Ok(id) => {
                let stall = started.elapsed();
                observer(&Event::Saved {
                    kind,
                    step: pos.step,
                    stall,
                    background: matches!(saver, Saver::Background(..)),
                    by_policy: kind == Kind::Regular,
                });
                Some((stall, id))
            }
            Err(error) => {
                observer(&Event::SaveFailed(error.to_string()));
                None
            }
        })
    }

    /// This process saves `snapshot`: synchronously (the checkpoint), or handed to the
    /// background writer (`None`).
    fn save_here(
        &self,
        kind: Kind,
        snapshot: Snapshot,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Option<CheckpointId>, TrainError> {
        match saver {
            Saver::Sync(store, retention) => Ok(Some(save_and_prune(
                store,
                kind,
                &snapshot,
                retention.as_ref(),
                observer,
            )?)),
            Saver::Background(saver, in_flight) => {
                // The previous background save's outcome comes back here.
                let previous = in_flight.replace((kind, snapshot.step));
                if let Err(error) = saver.save(kind, snapshot) {
                    background_failed(&self.store, error, previous, observer);
                }
                Ok(None)
            }
        }
    }

    /// A save in a world of several ranks. Every rank builds its snapshot and all-gathers its
    /// [`state_digest`]; a rank whose state differs from rank 0's stops every rank
    /// ([`TrainError::Diverged`], the outer error). Rank 0 then saves the replicated state
    /// (a complete checkpoint) and broadcasts the outcome, so every rank returns the same
    /// checkpoint, or the same failure (the inner error), before anyone goes on.
    fn save_agreed(
        &self,
        kind: Kind,
        pos: &Position,
        rng: &TrainRng,
        metrics: BTreeMap<String, f64>,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let world = &self.world;
        let snapshot = self.snapshot(pos, rng, metrics);
        let mine = match &snapshot {
            Ok(snapshot) => state_digest(snapshot),
            Err(error) => format!("error: {}", error_chain(error)),
        };
        let all: Vec<String> = world
            .0
            .all_gather_bytes(mine.as_bytes())?
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect();
        let failures: Vec<String> = all
            .iter()
            .enumerate()
            .filter_map(|(rank, text)| {
                text.strip_prefix("error: ")
                    .map(|why| format!("rank {rank}: {why}"))
            })
            .collect();
        let snapshot = match snapshot {
            Err(own) => return Ok(Err(own)),
            Ok(_) if !failures.is_empty() => {
                return Ok(Err(TrainError::RankFailed {
                    step: pos.step,
                    failures: failures.join("; "),
                }));
            }
            Ok(snapshot) => snapshot,
        };
        let differ: Vec<usize> = (1..all.len()).filter(|&r| all[r] != all[0]).collect();
        if !differ.is_empty() {
            return Err(TrainError::Diverged {
                step: pos.step,
                ranks: differ,
                digests: all
                    .iter()
                    .enumerate()
                    .map(|(rank, digest)| format!("rank {rank}: {digest}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if self.sharded() {
            let retention = match saver {
                Saver::Sync(_, retention) => retention.clone(),
                Saver::Background(..) => self.settings.retention.clone(),
            };
            return self.save_shared(kind, snapshot, retention.as_ref(), observer);
        }
        let own = world
            .lead()
            .then(|| self.save_here(kind, snapshot, saver, observer));
        self.lead_outcome(kind, pos.step, own)
    }

    /// A sharded save, one commit across the ranks (keel-ckpt's multi-writer protocol): rank
    /// 0 begins the checkpoint and broadcasts it; every rank writes and fsyncs its own
    /// groups into it (rank 0 the model and its share `optimizer-rank0`, rank `R` its
    /// `optimizer-rank<R>`); a failure on any rank is agreed, and rank 0 then aborts (the
    /// checkpoints before it stay as they are); otherwise every rank's list of files goes to
    /// rank 0, which writes the manifest last, prunes, and broadcasts the outcome.
    fn save_shared(
        &self,
        kind: Kind,
        mut snapshot: Snapshot,
        retention: Option<&Retention>,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let world = &self.world;
        let (rank, step) = (world.rank(), snapshot.step);
        let groups: BTreeMap<String, keel_ckpt::TensorGroup> = std::mem::take(&mut snapshot.groups)
            .into_iter()
            .filter(|(group, _)| world.lead() || group_rank(group) == Some(rank))
            .collect();
        let (save, begin_error) = if world.lead() {
            match self.store.begin_shared(kind, step, world.size()) {
                Ok(save) => (Some(save), None),
                Err(error) => (None, Some(error)),
            }
        } else {
            (None, None)
        };
        let mut pending = save
            .as_ref()
            .map(|save| save.pending().to_bytes())
            .unwrap_or_default();
        world.0.broadcast_bytes(0, &mut pending)?;
        let part = if let Some(error) = begin_error {
            Err(TrainError::from(error))
        } else if pending.is_empty() {
            // Rank 0 could not begin: its error comes through the agreement.
            Ok(None)
        } else {
            PendingCheckpoint::from_bytes(&pending)
                .and_then(|pending| self.store.write_part(&pending, rank, &groups))
                .map(Some)
                .map_err(TrainError::from)
        };
        // Dropping `save` on rank 0 (the early return) aborts the pending checkpoint.
        let part = match world.agree(part, step)? {
            Ok(part) => part,
            Err(error) => return Ok(Err(error)),
        };
        let mine = part.map(|part| part.to_bytes()).unwrap_or_default();
        let gathered = world.0.gather_bytes(0, &mine)?;
        let own = world.lead().then(|| {
            let (Some(save), Some(gathered)) = (save, gathered) else {
                return Err(TrainError::LeadSaveFailed {
                    kind,
                    step,
                    reason: "no pending checkpoint to commit".into(),
                });
            };
            let parts = gathered
                .iter()
                .map(|bytes| SharedPart::from_bytes(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            match save.commit_retaining(&snapshot, &parts, retention) {
                Ok(id) => Ok(Some(id)),
                Err(CkptError::Pruning { saved, source }) => {
                    observer(&Event::Warning(format!(
                        "checkpoint {saved} is saved, but pruning older checkpoints failed: {}",
                        error_chain(&*source)
                    )));
                    Ok(Some(saved))
                }
                Err(error) => Err(error.into()),
            }
        });
        self.lead_outcome(kind, step, own)
    }

    /// Rank 0's save outcome (`own` on rank 0, `None` elsewhere) broadcast: every rank
    /// returns rank 0's checkpoint, or its failure as [`TrainError::LeadSaveFailed`].
    fn lead_outcome(
        &self,
        kind: Kind,
        step: u64,
        own: Option<Result<Option<CheckpointId>, TrainError>>,
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let mut outcome = match &own {
            Some(Ok(Some(id))) => format!("saved {}", id.name),
            Some(Ok(None)) => "handed over".to_string(),
            Some(Err(error)) => format!("failed {}", error_chain(error)),
            None => String::new(),
        }
        .into_bytes();
        self.world.0.broadcast_bytes(0, &mut outcome)?;
        if let Some(own) = own {
            return Ok(own);
        }
        let outcome = String::from_utf8_lossy(&outcome);
        let failed = |reason: &str| TrainError::LeadSaveFailed {
            kind,
            step,
            reason: reason.to_string(),
        };
        Ok(if let Some(name) = outcome.strip_prefix("saved ") {
            Ok(Some(CheckpointId {
                kind,
                name: name.to_string(),
            }))
        } else if outcome == "handed over" {
            Ok(None)
        } else if let Some(reason) = outcome.strip_prefix("failed ") {
            Err(failed(reason))
        } else {
            Err(failed(&format!("an unreadable outcome {outcome:?}")))
        })
    }

    /// Saves the last good state as an `emergency` checkpoint (rank 0 alone, its outcome on
    /// every rank) and wraps `cause`: `failed_step` failed, `pos` is the state held.
    fn emergency(
        &self,
        pos: Position,
        rng: &TrainRng,
        failed_step: u64,
        cause: TrainError,
        saver: Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> TrainError {
        if let Saver::Background(saver, in_flight) = saver
            && let Err(error) = saver.finish()
        {
            background_failed(&self.store, error, in_flight, observer);
        }
        // `snapshot` refuses non-finite weights: an emergency checkpoint holds the last state
        // whose loss and weights were finite, or nothing.
        let here = || {
            self.snapshot(&pos, rng, BTreeMap::new())
                .and_then(|snapshot| Ok(self.store.save(Kind::Emergency, &snapshot)?))
        };
        let saved = if self.sharded() {
            // Every rank writes its share of the last good state (the same on every rank: a
            // failed sharded update is undone everywhere).
            let mut saver = Saver::Sync(self.store.clone(), None);
            match self.save_agreed(
                Kind::Emergency,
                &pos,
                rng,
                BTreeMap::new(),
                &mut saver,
                observer,
            ) {
                Ok(Ok(Some(id))) => Ok(id),
                Ok(Ok(None)) => Err(TrainError::LeadSaveFailed {
                    kind: Kind::Emergency,
                    step: pos.step,
                    reason: "no checkpoint was named".into(),
                }),
                Ok(Err(error)) | Err(error) => Err(error),
            }
        } else if self.world.size() == 1 {
            here()
        } else {
            let own = self.world.lead().then(|| here().map(Some));
            match self.lead_outcome(Kind::Emergency, pos.step, own) {
                Ok(Ok(Some(id))) => Ok(id),
                Ok(Ok(None)) => Err(TrainError::LeadSaveFailed {
                    kind: Kind::Emergency,
                    step: pos.step,
                    reason: "no checkpoint was named".into(),
                }),
                Ok(Err(error)) | Err(error) => Err(error),
            }
        };
        TrainError::StepFailed {
            step: failed_step,
            saved_step: pos.step,
            source: Box::new(cause),
            emergency: saved.map_err(Box::new),
        }
    }

    /// Each parameter's name, shape and checkpoint dtype, in order.
    fn parameter_info(&self) -> Vec<ParamInfo> {
        self.model
            .parameters()
            .iter()
            .filter_map(|(name, var)| {
                Some(ParamInfo {
                    name: name.clone(),
                    shape: var.dims().to_vec(),
                    dtype: ckpt_dtype(var.dtype())?,
                })
            })
            .collect()
    }

    /// The groups this rank reads of a checkpoint: the model and the optimizer state its
    /// elements need (all of it when replicated); `None` (all groups) when the manifest's
    /// layout does not read, which the resume then reports.
    fn wanted_groups(&self, manifest: &Manifest) -> Option<std::collections::BTreeSet<String>> {
        let state = TrainerState::from_user(&manifest.user).ok()?;
        let total = self.elements();
        let layout = saved_layout(
            state.optimizer.sharding.as_ref(),
            manifest.world_size,
            total,
        )
        .ok()?;
        let mut groups = layout.groups_for(total, self.optimizer.owned().as_ref());
        groups.insert("model".to_string());
        Some(groups)
    }

    /// The newest checkpoint that verifies, as [`CheckpointStore::latest_valid`] finds it,
    /// keeping only the groups this rank needs ([`CheckpointStore::load_groups`]: every file
    /// is still verified).
    fn latest_valid(&self) -> Result<Resume, CkptError> {
        let listed = self.store.list()?;
        let mut skipped = Vec::new();
        for listed in listed.iter().rev() {
            match listed.status {
                // Not keel's: not a checkpoint at all.
                keel_ckpt::Status::Foreign => continue,
                keel_ckpt::Status::Readable => {}
                _ => {
                    let problem = listed.problem.clone().unwrap_or_default();
                    skipped.push((listed.id.clone(), problem));
                    continue;
                }
            }
            let wanted = listed.manifest.as_ref().and_then(|m| self.wanted_groups(m));
            let loaded = match &wanted {
                Some(wanted) => self.store.load_groups(&listed.id, |g| wanted.contains(g)),
                None => self.store.load(&listed.id),
            };
            match loaded {
                Ok((manifest, snapshot)) => {
                    return Ok(Resume {
                        id: listed.id.clone(),
                        manifest,
                        snapshot,
                        skipped,
                    });
                }
                Err(error) => skipped.push((listed.id.clone(), error.to_string())),
            }
        }
        Err(CkptError::NoValidCheckpoint {
            root: self.store.location(),
            skipped,
        })
    }

    /// The position to start from, and the checkpoint resumed (none for a fresh start).
    fn resume(
        &mut self,
        batches: u64,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<(Position, Option<CheckpointId>), TrainError> {
        if self.settings.fresh {
            let listed = self.store.list()?;
            if !listed.is_empty() {
                return Err(TrainError::FreshNotEmpty {
                    location: self.store.location(),
                    checkpoints: listed.len(),
                });
            }
            observer(&Event::Fresh {
                why: "a fresh start was asked for".into(),
            });
            return Ok((Position::default(), None));
        }
        let resume = match self.latest_valid() {
            Ok(resume) => resume,
            Err(CkptError::NoValidCheckpoint { skipped, .. }) => {
                let listed = self.store.list()?;
                observer(&Event::Fresh {
                    why: if listed.is_empty() && skipped.is_empty() {
                        format!("no checkpoint in {}", self.store.location())
                    } else {
                        // Every one that was tried is named with its reason: a fresh start
                        // over damaged checkpoints must say which and why.
                        let reasons: Vec<String> = skipped
                            .iter()
                            .map(|(id, why)| format!("{id}: {why}"))
                            .collect();
                        format!(
                            "none of the {} checkpoint(s) in {} verifies ({})",
                            listed.len().max(skipped.len()),
                            self.store.location(),
                            reasons.join("; ")
                        )
                    },
                });
                return Ok((Position::default(), None));
            }
            Err(error) => return Err(error.into()),
        };
        let id = resume.id.clone();
        let bad = |reason: String| TrainError::BadCheckpoint {
            checkpoint: id.clone(),
            reason,
        };
        let state = TrainerState::from_user(&resume.snapshot.user).map_err(&bad)?;
        let differences =
            json_differences(&state.trajectory, &self.settings.trajectory, &|_| false);
        if !differences.is_empty() {
            return Err(TrainError::Incompatible {
                checkpoint: id,
                differences: differences
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        match &state.data {
            Some(saved) => {
                let changes = data_changes(saved, &self.data);
                if !changes.is_empty() {
                    return Err(TrainError::DataChanged {
                        checkpoint: id,
                        changes: changes.join("; "),
                    });
                }
            }
            None => observer(&Event::Warning(format!(
                "checkpoint {id} records no digest of its data (written by an older keel): \
                 resuming without checking that the data is the same"
            ))),
        }
        let rng_state = &state.rng;
        let rng = TrainRng::from_state(rng_state).map_err(bad)?;
        let ours = self.rng.state();
        if (&rng_state.seed, rng_state.stream) != (&ours.seed, ours.stream) {
            return Err(bad(
                "its random generator was seeded differently from this run's".into(),
            ));
        }
        let batch = state.batch;
        let (step, epoch) = (resume.manifest.step, resume.manifest.epoch);
        if resume.snapshot.step != step || resume.snapshot.epoch != epoch {
            return Err(bad(format!(
                "its snapshot (step {}, epoch {}) and manifest (step {step}, epoch {epoch}) disagree",
                resume.snapshot.step, resume.snapshot.epoch
            )));
        }
        if batch >= batches {
            return Err(bad(format!(
                "its data position (batch {batch} of epoch {epoch}) is outside an epoch of \
                 {batches} batches ({} rows in batches of {})",
                self.data["train"]["rows"], self.settings.batch_size
            )));
        }
        if epoch
            .checked_mul(batches)
            .and_then(|s| s.checked_add(batch))
            != Some(step)
        {
            return Err(bad(format!(
                "its step {step} is not epoch {epoch} x {batches} batches + batch {batch}"
            )));
        }
        let optimizer = &state.optimizer;
        if optimizer.kind != self.optimizer.kind() {
            return Err(bad(format!(
                "its optimizer is \"{}\", this run's {}",
                optimizer.kind,
                self.optimizer.kind()
            )));
        }
        let steps = optimizer.steps;
        if steps != step {
            return Err(bad(format!(
                "its optimizer took {steps} steps, its manifest says step {step}"
            )));
        }
        let saved_world = state.world_size;
        if saved_world != self.world.size() as u64 {
            // The data position is global and the state replicated: training goes on where it
            // stopped, with no sample skipped or repeated (not bit for bit: the gradients
            // are summed in another order).
            observer(&Event::Warning(format!(
                "checkpoint {id} was written by {saved_world} rank(s), this run has {}: resuming \
                 at its global data position (step {step}), not bit for bit",
                self.world.size()
            )));
        }
        let best = state.best.as_ref().and_then(|b| b.value);

        // Load everything before changing anything.
        let model_group = resume
            .snapshot
            .groups
            .get("model")
            .ok_or_else(|| bad("no `model` tensors".into()))?;
        let mut values = Vec::new();
        for (name, var) in self.model.parameters() {
            let saved = model_group
                .get(&name)
                .ok_or_else(|| bad(format!("parameter `{name}` is missing")))?;
            if saved.shape != var.dims() || Some(saved.dtype) != ckpt_dtype(var.dtype()) {
                return Err(bad(format!(
                    "parameter `{name}` is {:?} {:?}, the model's {:?} {:?}",
                    saved.dtype,
                    saved.shape,
                    var.dtype(),
                    var.dims()
                )));
            }
            let value = load_tensor(&name, saved, &self.device).map_err(&bad)?;
            values.push((var, value));
        }
        // The moments of whatever layout was saved (replicated, or shards of any world
        // size), put together for the elements this rank holds now.
        let layout = saved_layout(
            optimizer.sharding.as_ref(),
            resume.manifest.world_size,
            self.elements(),
        )
        .map_err(&bad)?;
        let owned = self.optimizer.owned();
        let tensors = assemble(
            &self.parameter_info(),
            &layout,
            &resume.snapshot.groups,
            owned.as_ref(),
        )
        .map_err(&bad)?;
        let mut state = BTreeMap::new();
        for (name, tensor) in &tensors {
            state.insert(
                name.clone(),
                load_tensor(name, tensor, &self.device).map_err(&bad)?,
            );
        }
        self.optimizer.load_state(steps, &state).map_err(bad)?;
        for (var, value) in values {
            var.set(&value)?;
        }
        self.rng = rng;
        let changes = environment_changes(
            resume.manifest.environment.as_ref(),
            resume.manifest.device.as_ref(),
            self.settings.environment.as_ref(),
            self.settings.device_probe.as_ref(),
        );
        let pos = Position {
            step,
            epoch,
            batch,
            best,
            eval: resume
                .manifest
                .metrics
                .get("test_loss")
                .copied()
                .zip(resume.manifest.metrics.get("test_accuracy").copied()),
        };
        observer(&Event::Resumed {
            id: &resume.id,
            step: pos.step,
            epoch: pos.epoch,
            batch: pos.batch,
            skipped: &resume.skipped,
            environment_changes: &changes,
        });
        Ok((pos, Some(resume.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening issue #13: an error from the store after a save committed (pruning older
    /// checkpoints) was reported as "a checkpoint save failed"; it is a warning naming the
    /// checkpoint, which counts as saved. An error for a save that did not commit stays a
    /// failed save.
    #[test]
    fn prune_failure_after_a_committed_save_is_not_a_failed_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(dir.path()).unwrap();
        let snapshot = Snapshot {
            step: 7,
            epoch: 0,
            metrics: BTreeMap::new(),
            user: json!({}),
            environment: None,
            device: None,
            groups: BTreeMap::new(),
        };
        let id = store.save(Kind::Regular, &snapshot).unwrap();
        let mut events = Vec::new();
        let mut observer = |event: &Event<'_>| events.push(format!("{event:?}"));
        let error = || CkptError::Setting("prune exploded".into());
        let found = background_failed(&store, error(), Some((Kind::Regular, 7)), &mut observer);
        assert_eq!(found, Some(id.clone()));
        let missing = background_failed(&store, error(), Some((Kind::Regular, 8)), &mut observer);
        assert_eq!(missing, None);
        assert!(
            events[0].starts_with(&format!("Warning(\"checkpoint {id} is saved, but"))
                && events[0].contains("prune exploded"),
            "{events:?}"
        );
        assert!(events[1].starts_with("SaveFailed("), "{events:?}");
    }
}
