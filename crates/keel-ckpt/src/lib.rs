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
//! Several ranks, one checkpoint: keel-ckpt moves no bytes between ranks (it knows nothing of
//! MPI); the trainer drives the protocol with its own collectives.
//!
//! 1. Rank 0 calls [`CheckpointStore::begin_shared`] (kind, step, world size): it picks the
//!    name by the rule of [`CheckpointStore::save`], creates the pending location (local: the
//!    temporary folder `KIND/.tmp-step-...`; objects: the `.keel-writing` marker) and holds
//!    the store's lock shared until the commit or abort. It broadcasts
//!    [`PendingCheckpoint::to_bytes`]; the others read it with [`PendingCheckpoint::from_bytes`].
//! 2. Every rank, 0 too, calls [`CheckpointStore::write_part`] with its groups: shared ones
//!    (`model`) from rank 0 only, a rank's own ones named `<group>-rank<N>` ([`group_rank`],
//!    [`rank_group`]). Each file is fsynced, and the folder; the rank gets a [`SharedPart`]
//!    (names, sizes, BLAKE3 hashed while writing) and gathers [`SharedPart::to_bytes`] to
//!    rank 0.
//! 3. The ranks agree that every write worked (an all-reduce); then rank 0 calls
//!    [`SharedSave::commit`] with the metadata and every rank's part; otherwise
//!    [`SharedSave::abort`]. The commit checks that each rank `0..world_size` reported once,
//!    that every listed file is there with its reported size and every group is written by
//!    its own rank, and writes the sealed manifest (`world_size`, each file's `rank`) last.
//!
//! A multi-rank checkpoint is valid exactly as a single-rank one is: its manifest is there
//! and every file it lists verifies, so a rank's file that is missing or truncated makes it
//! invalid, and [`CheckpointStore::latest_valid`] falls back. [`CheckpointStore::load`] gives
//! every rank's groups (a job of another world size re-splits them);
//! [`CheckpointStore::load_groups`] keeps only some of them in memory.
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
//!   keel's own temporaries (`KIND/.tmp-step-...` folders, also those of a multi-rank save
//!   whose job died before its commit), and on object storage writes whose marker is older
//!   than 24 hours. Folders not named as keel names them, manifests it cannot
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
mod location;
mod model;
mod policy;
mod shared;
mod storage;
mod store;
mod writer;

pub use error::CkptError;
pub use location::Location;
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
pub use store::{CheckpointId, CheckpointStore, Goal, Listed, Pruned, Resume, Retention, Status};
pub use writer::AsyncSaver;
