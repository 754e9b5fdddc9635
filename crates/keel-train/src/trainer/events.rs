//! What the loop reports as it goes, and how a run ended.

use super::*;

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
