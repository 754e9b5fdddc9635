//! keel-train's one error type.

use std::path::PathBuf;

use keel_ckpt::{CheckpointId, CkptError};

/// What can go wrong while configuring, training, saving or resuming.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written (the error names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A dataset file is not what its format says.
    #[error("{}: {reason}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration file does not parse or holds a bad value.
    #[error("{}{}: {message}", path.display(), position(*line, *column))]
    Config {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A setting that cannot work (named in the message).
    #[error("{0}")]
    Setting(String),
    /// The device asked for is not available in this build or on this machine.
    #[error("device `{device}`: {reason}")]
    Device {
        /// What was asked for (`cuda:0`).
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// candle failed (its own message; a renderer that walks the chain prints it once).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CkptError),
    /// A fresh start was asked for, but the checkpoint store already holds checkpoints: a
    /// fresh run would be mixed with them (and would resume from them after a crash).
    #[error(
        "a fresh start was asked for, but {location} already holds {checkpoints} checkpoint(s); \
         a fresh run would be mixed with them"
    )]
    FreshNotEmpty {
        /// The store.
        location: String,
        /// How many checkpoints (any folder under a kind) it holds.
        checkpoints: usize,
    },
    /// The checkpoint to resume from was written with settings that change the trajectory.
    #[error("checkpoint {checkpoint} was written by a run with other settings ({differences})")]
    Incompatible {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// `setting: saved -> now`, comma separated.
        differences: String,
    },
    /// The checkpoint to resume from was trained on other data (same path, other content or
    /// shape).
    #[error("checkpoint {checkpoint} was trained on other data ({changes})")]
    DataChanged {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// `set: saved -> now` (rows, features, classes, BLAKE3), `; ` separated.
        changes: String,
    },
    /// A state to save holds a NaN or infinite value: it is not saved as a good state.
    #[error(
        "tensor `{tensor}` of the state at step {step} holds {value}: a non-finite state is \
         not saved as a good one"
    )]
    NonFiniteState {
        /// The tensor.
        tensor: String,
        /// The step of the state.
        step: u64,
        /// The first non-finite value.
        value: f64,
    },
    /// The checkpoint to resume from lacks state the trainer needs.
    #[error("checkpoint {checkpoint} cannot be resumed: {reason}")]
    BadCheckpoint {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// What is missing or wrong.
        reason: String,
    },
    /// The loss was not finite.
    #[error("loss is {loss} at step {step} (epoch {epoch}, batch {batch})")]
    NonFinite {
        /// The step that failed (1-based: the step that would have been taken).
        step: u64,
        /// Its epoch (0-based).
        epoch: u64,
        /// Its batch within the epoch (0-based).
        batch: u64,
        /// The loss value.
        loss: f32,
    },
    /// A step failed; the last good state was saved as an emergency checkpoint when possible.
    ///
    /// The cause reads inside the message (before what became of the emergency checkpoint),
    /// so it is a field, not the error's `source`: a renderer walking the chain would print it
    /// twice.
    #[error("training stopped at step {step}: {cause}{}", match emergency {
        Ok(id) => format!("; the last good state (step {saved_step}) is saved as {id}"),
        Err(e) => format!("; the emergency checkpoint could not be saved either: {e}"),
    })]
    StepFailed {
        /// The step that failed (1-based).
        step: u64,
        /// The step of the state saved (the last good one).
        saved_step: u64,
        /// Why.
        cause: Box<TrainError>,
        /// The emergency checkpoint, or why it could not be saved.
        emergency: Result<CheckpointId, Box<TrainError>>,
    },
    /// A collective operation between the ranks failed (the communicator is broken: nothing
    /// further is coordinated, no checkpoint is written).
    #[error("collective operation between the ranks failed")]
    Collective(#[from] keel_dist::DistError),
    /// Another rank failed at this step; every rank stops after it (the one that failed
    /// returns its own error).
    #[error("another rank failed at step {step} ({failures})")]
    RankFailed {
        /// The step (1-based).
        step: u64,
        /// `rank R: why`, `; ` separated.
        failures: String,
    },
    /// The replicated state (weights, optimizer state, trainer state) differs between ranks
    /// at a checkpoint: nothing is saved.
    #[error(
        "the replicated state diverged at step {step}: rank(s) {} differ from rank 0 \
         (BLAKE3 of weights and optimizer state: {digests})",
        ranks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Diverged {
        /// The step of the checkpoint.
        step: u64,
        /// The ranks whose state differs from rank 0's.
        ranks: Vec<usize>,
        /// `rank R: digest`, `, ` separated.
        digests: String,
    },
    /// The ranks do not agree on something every rank must see alike (the checkpoint to
    /// resume from, when the ranks do not share one store).
    #[error("the ranks disagree on {what}: {detail}")]
    RanksDisagree {
        /// What.
        what: &'static str,
        /// `rank R: value`, `; ` separated.
        detail: String,
    },
    /// Rank 0 could not save a checkpoint (as seen by another rank).
    #[error("rank 0 could not save the {kind} checkpoint of step {step}: {reason}")]
    LeadSaveFailed {
        /// The checkpoint's kind.
        kind: keel_ckpt::Kind,
        /// Its step.
        step: u64,
        /// Rank 0's error.
        reason: String,
    },
    /// The loss plot could not be drawn.
    #[error("plot {}: {reason}", path.display())]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}
