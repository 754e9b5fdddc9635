//! The ranks of a multi-rank `keel train` job: who started them, how they talk, and whether
//! they run the same environment.
//!
//! `keel-dist` stands alone (no other keel crate, no candle). It gives the trainer three
//! things:
//!
//! - [`Launch::detect`]: which launcher started this process (Open MPI's `mpirun`, a PMI or
//!   PMIx launcher, Slurm's `srun`) and as which rank of how many, read from the launcher's
//!   variables; a malformed variable is an error naming it. A build without the `mpi`
//!   feature calls [`refuse_without_mpi`], so N copies started by `mpirun -np N` refuse to
//!   train instead of training N times into one store.
//! - [`Collective`]: the collectives the trainer needs (barrier, broadcast, all-reduce of
//!   gradients and stop flags, gathers of bytes), object safe, with [`Single`] (a world of
//!   one, always compiled) and `Mpi` (rsmpi over the system MPI, with the `mpi` feature).
//! - [`gate`]: every rank's [`RankFacts`] (packages, prefix root hash, driver, CUDA, GPUs, keel
//!   version, configuration hash) gathered on every rank, and the same [`GateReport`] on all
//!   of them: uniform, or which ranks and hosts differ from the majority and how.
//!
//! It is not a tensor library: GPU tensors (NCCL) and the data-parallel training loop belong to
//! the trainer; nor does it start processes: a launcher does.
//!
//! ```
//! use keel_dist::{Collective, Launch, RankFacts, Single, gate, refuse_without_mpi};
//!
//! // In a test (or a job without a launcher) this is one process.
//! let launch = Launch::detect_in(|_| None)?;
//! refuse_without_mpi(&launch)?;
//! let world: &dyn Collective = &Single;
//! launch.verify_world(world)?;
//!
//! let mut gradients = [0.5f32, -1.0];
//! world.all_reduce_mean_f32(&mut gradients)?;
//! assert!(!world.all_reduce_or(false)?, "no rank asked to stop");
//!
//! let facts = RankFacts {
//!     rank: world.rank(),
//!     host: "node-a".into(),
//!     fingerprint_root: None,
//!     packages: [("numpy".to_string(), "1.26.4 py312_0".to_string())].into(),
//!     driver: None,
//!     cuda: None,
//!     gpus: Vec::new(),
//!     keel_version: "0.1.0".into(),
//!     config_hash: "c0ffee".into(),
//! };
//! let report = gate(world, &facts)?;
//! assert!(report.is_uniform());
//! # Ok::<(), keel_dist::DistError>(())
//! ```
//!
//! With the `mpi` feature (which needs `mpicc` and libclang to build), the same code runs on
//! `keel_dist::Mpi::init()?` under `mpirun`. Its tests start `mpirun -np 2` on an example
//! program: `cargo test -p keel-dist --features mpi` (they fail, naming it, without `mpirun`).

#![deny(missing_docs)]

mod collective;
mod error;
mod gate;
mod launch;
#[cfg(feature = "mpi")]
mod mpi_world;

pub use collective::{Collective, Single};
pub use error::DistError;
pub use gate::{Fact, FactChange, GateReport, GroupDiff, RankFacts, RankGroup, gate, gate_facts};
pub use launch::{Launch, Launcher, refuse_without_mpi};
#[cfg(feature = "mpi")]
pub use mpi_world::Mpi;
