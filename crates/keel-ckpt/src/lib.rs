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
//! What a store trusts, and what it deletes:
//!
//! - A manifest (at most 16 MiB, a regular file) carries its own digest (`manifest_blake3`,
//!   [`seal_manifest`]); its kind, step and save time must agree with its folder
//!   `KIND/step-<12 digits>-<13 digits>`, and its file names pass [`check_file_name`] (plain
//!   `<group>.safetensors` names inside their own checkpoint). Data files are opened only when
//!   regular, their size compared with the manifest's before a byte is read, then streamed.
//! - Opening a store for reading ([`CheckpointStore::open_existing`], or listing a local store
//!   that is not there) creates nothing; only a save does.
//! - A prune deletes only checkpoints whose manifest reads (and that retention does not keep),
//!   keel's own temporaries (`KIND/.tmp-step-...` folders), and on object storage writes whose
//!   marker is older than 24 hours. Folders not named as keel names them, manifests it cannot
//!   read (newer format, permissions, I/O errors, a bad digest) and writes that may be in
//!   flight are left and reported in [`Pruned::left`].
//! - Saves and prunes of a local or NFS store exclude each other through `.keel-lock` at its
//!   root (saves share it, a prune holds it alone): `flock` locally; on NFS v4 Linux maps
//!   `flock` to POSIX byte-range locks held by the server, which exclude processes on
//!   different clients but not two stores opened on the same folder in one process (one
//!   store and its clones do exclude each other). NFS v3 without `lockd` has no locks. On
//!   object storage there is no lock: a save's objects sit under its own unique
//!   `KIND/step-...-<ms>/` prefix with a write marker, and a prune never touches a prefix
//!   without a manifest unless its marker is older than the grace period.
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
mod shared;
mod storage;
mod store;
mod writer;

pub use error::CkptError;
pub use model::{
    Dtype, FORMAT_VERSION, FileEntry, Kind, MANIFEST, MAX_MANIFEST_BYTES, MAX_STEP, Manifest,
    Snapshot, Tensor, TensorGroup, check_file_name, parse_folder_name, seal_manifest,
};
pub use policy::{
    AnyOf, AtSteps, EveryNEpochs, EveryNSteps, Exponential, Progress, SavePolicy, WallClock,
    YoungDaly, daly_interval,
};
pub use shared::{
    MAX_WORLD_SIZE, PendingCheckpoint, SharedPart, SharedSave, group_rank, rank_group,
};
pub use store::{
    CheckpointId, CheckpointStore, Goal, Listed, Pruned, Resume, Retention, Status,
    environment_changes,
};
pub use writer::AsyncSaver;
