//! Crash-safe checkpoints for any training loop: named tensors in safetensors files plus a
//! manifest written last, on local disk, NFS or S3-compatible object storage.
//!
//! A checkpoint is a folder `KIND/step-<step>-<ms>/` of `<group>.safetensors` files (PyTorch
//! opens them with `safetensors.torch.load_file`) and `manifest.json` (format version, step,
//! epoch, wall time, metrics, the trainer's own state, the size and BLAKE3 of every file, and
//! optionally the environment fingerprint and device probe of the run). The manifest is the
//! commit point: on local disks each file is fsynced in a temporary folder that is renamed into
//! place, so a crash leaves the whole checkpoint or none; on object storage the manifest is put
//! after the data. [`CheckpointStore::latest_valid`] loads the newest checkpoint that verifies
//! and reports the newer ones that do not. Save policies ([`SavePolicy`]) and [`Retention`]
//! decide when to save and what to keep; [`AsyncSaver`] persists in the background.
//!
//! It knows nothing of candle or of any model: keel-train builds on it.
//!
//! ```
//! use keel_ckpt::{CheckpointStore, Kind, Snapshot, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let store = CheckpointStore::local(dir.path())?;
//! let mut snapshot = Snapshot { step: 100, epoch: 1, ..Snapshot::default() };
//! snapshot.groups.entry("model".into()).or_default().insert(
//!     "linear.weight".into(),
//!     Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0])?,
//! );
//! store.save(Kind::Regular, &snapshot)?;
//!
//! let resume = store.latest_valid()?;
//! assert_eq!(resume.manifest.step, 100);
//! assert_eq!(resume.snapshot.groups["model"]["linear.weight"].to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod error;
mod model;
mod policy;
mod storage;
mod store;
mod writer;

pub use error::CkptError;
pub use model::{
    Dtype, FORMAT_VERSION, FileEntry, Kind, MANIFEST, Manifest, Snapshot, Tensor, TensorGroup,
};
pub use policy::{
    AnyOf, AtSteps, EveryNEpochs, EveryNSteps, Exponential, Progress, SavePolicy, WallClock,
    YoungDaly, daly_interval,
};
pub use store::{
    CheckpointId, CheckpointStore, Goal, Listed, Resume, Retention, environment_changes,
};
pub use writer::AsyncSaver;
