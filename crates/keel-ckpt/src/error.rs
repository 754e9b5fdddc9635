//! Why a checkpoint could not be saved, found or loaded.

use std::path::PathBuf;

use crate::store::CheckpointId;

/// One error enum for keel-ckpt. Every variant about a file or object names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CkptError {
    /// Local file I/O failed (fs-err's message names the path: disk full, read-only, ...).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Object storage failed.
    #[error("object storage: {location}")]
    Object {
        /// The object or prefix.
        location: String,
        /// object_store's reason.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A request to object storage that did not finish within the store's deadline (a
    /// server or network that stopped answering); nothing of the checkpoint being written
    /// loads, since its manifest is put last.
    #[error("object storage: {location} did not answer within {} s", deadline.as_secs_f64())]
    Stalled {
        /// The object.
        location: String,
        /// The deadline of one request.
        deadline: std::time::Duration,
    },
    /// A storage URL keel cannot use.
    #[error("invalid checkpoint location `{location}`: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// Why.
        reason: String,
    },
    /// Two tensors, or a tensor and its data, disagree (a shape that does not fit the bytes).
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor.
        name: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint that does not verify: missing, truncated or changed files, a bad manifest.
    #[error("checkpoint {id} is not valid: {reason}")]
    Invalid {
        /// The checkpoint.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest written by a newer keel (a format this one cannot read).
    #[error(
        "checkpoint {id} has manifest format {found}; this keel reads up to {supported}: upgrade keel to load it"
    )]
    NewerFormat {
        /// The checkpoint.
        id: String,
        /// The manifest's version.
        found: u32,
        /// The newest this keel reads.
        supported: u32,
    },
    /// No checkpoint under the root verifies.
    #[error("no valid checkpoint in {root}")]
    NoValidCheckpoint {
        /// The store's root.
        root: String,
        /// The checkpoints that did not verify, newest first, with the reason (empty when
        /// the store has none).
        skipped: Vec<(CheckpointId, String)>,
    },
    /// A background save failed; reported on the next call.
    #[error("the background save of step {step} failed; the checkpoint before it is intact")]
    BackgroundSave {
        /// The step whose save failed.
        step: u64,
        /// Why.
        #[source]
        source: Box<CkptError>,
    },
    /// The background writer thread is gone (it panicked).
    #[error("the background checkpoint writer stopped unexpectedly")]
    WriterGone,
    /// A policy or retention setting that cannot work.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// Serializing tensors failed.
    #[error("cannot write tensors as safetensors")]
    Safetensors(#[source] safetensors::SafeTensorError),
    /// A file keel will not read: not a regular file (a FIFO, a device, a link).
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file or object larger than its format allows (a manifest over 16 MiB).
    #[error("{location} has {size} bytes, more than the {limit} keel reads")]
    TooLarge {
        /// The file or object.
        location: String,
        /// Its size.
        size: u64,
        /// The most keel reads.
        limit: u64,
    },
    /// A store opened for reading that is not there (only a save creates one).
    #[error("no checkpoint store at {location}")]
    NoStore {
        /// The location as given.
        location: String,
    },
    /// The save committed; the prune after it failed. The checkpoint is valid.
    #[error("checkpoint {saved} is saved; pruning after it failed")]
    Pruning {
        /// The checkpoint that was saved.
        saved: CheckpointId,
        /// Why pruning failed.
        #[source]
        source: Box<CkptError>,
    },
    /// A multi-rank checkpoint that cannot be written or committed (a rank that did not
    /// report, a file missing or of another size, a group of another rank), or a pending
    /// checkpoint or part received from another rank that keel did not write.
    #[error("{what}: {reason}")]
    Shared {
        /// The checkpoint, or what was received.
        what: String,
        /// Why.
        reason: String,
    },
    /// A local path that is not a directory where a store needs one.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

impl CkptError {
    /// The checkpoint that was committed despite this error (a [`CkptError::Pruning`]
    /// failure): the save itself worked, only the prune after it did not.
    pub fn saved(&self) -> Option<&CheckpointId> {
        match self {
            CkptError::Pruning { saved, .. } => Some(saved),
            _ => None,
        }
    }
}
