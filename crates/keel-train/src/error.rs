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
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
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
    /// candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CkptError),
    /// The checkpoint to resume from was written with settings that change the trajectory.
    #[error(
        "checkpoint {checkpoint} was written by a run with other settings ({differences}); \
         train with --fresh, or under another run name, to start over"
    )]
    Incompatible {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// `setting: saved -> now`, comma separated.
        differences: String,
    },
    /// The checkpoint to resume from was trained on other data (same path, other content or
    /// shape).
    #[error(
        "checkpoint {checkpoint} was trained on other data ({changes}); train with --fresh, or \
         under another run name, to start over"
    )]
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
    #[error("training stopped at step {step}: {source}{}", match emergency {
        Ok(id) => format!("; the last good state (step {saved_step}) is saved as {id}"),
        Err(e) => format!("; the emergency checkpoint could not be saved either: {e}"),
    })]
    StepFailed {
        /// The step that failed (1-based).
        step: u64,
        /// The step of the state saved (the last good one).
        saved_step: u64,
        /// Why.
        #[source]
        source: Box<TrainError>,
        /// The emergency checkpoint, or why it could not be saved.
        emergency: Result<CheckpointId, Box<TrainError>>,
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
