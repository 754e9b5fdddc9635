//! candle training that survives crashes: every checkpoint holds the full state (weights,
//! optimizer moments, learning-rate schedule position, step, epoch, position inside the epoch,
//! best metric, and the state of the trainer's own seeded generator), a run resumes from the
//! newest valid checkpoint by itself, and a resumed run ends with the same weights, bit for
//! bit, as one never interrupted (on the CPU).
//!
//! The [`Trainer`] trains any [`Model`] (named candle [`Var`](candle_core::Var)s and a forward
//! pass) on a classification [`Dataset`] with an optimizer whose state can be saved
//! ([`AdamW`], [`SgdMomentum`]; both implement `candle_nn::Optimizer`). It saves through
//! keel-ckpt by a [`SavePolicy`](keel_ckpt::SavePolicy), in the background if asked, stops
//! after the current step on SIGINT/SIGTERM ([`StopSignal::install`]) with an `interrupted`
//! checkpoint, and on a failed step (a NaN loss, a candle error, out of device memory) saves
//! the last good state as an `emergency` checkpoint before returning the error.
//! [`TrainConfig`] is `keel train`'s TOML file and runs the MNIST MLP. It is not a model zoo
//! or a data-loading library.
//!
//! Data parallel: [`Trainer::with_world`] (or [`TrainConfig::run_on`]) trains as one rank of
//! a `keel_dist::Collective` (MPI under `mpirun`, with the `mpi` feature): each rank its
//! slice of every global batch ([`rank_rows`]), gradients weighted by slice size and summed
//! in one all-reduce, the same update on every rank, metrics reduced, stops and failures
//! agreed at every step, and rank 0 alone writing the log and the checkpoints (the state is
//! replicated) after a BLAKE3 check that every rank holds the same state. In a world of one
//! (the default) nothing changes, bit for bit.
//!
//! Optimizer-state sharding (ZeRO-1, [`OptimizerSharding::Sharded`], `optimizer_sharding =
//! "sharded"` in the TOML): each rank owns the moments of one contiguous range of the
//! flattened parameter vector ([`shard_range`]: the parameters in order, row-major, ranges
//! within one element of each other), updates only that range after the gradient
//! all-reduce, and the updated ranges are all-gathered, so every rank again holds the same
//! weights: bit for bit those of replicated training at the same world size (AdamW and SGD
//! are elementwise). Every rank writes its `optimizer-rank<R>` share into one multi-rank
//! checkpoint (rank 0 the model too, and the partition in the trainer state); a resume on
//! any world size, sharded or not, puts the saved moments together again and takes its own
//! range.
//!
//! ```
//! use keel_train::{AdamW, AdamWConfig, Dataset, Mlp, Model, StopSignal, TrainRng, TrainSettings, Trainer};
//! use keel_ckpt::{CheckpointStore, EveryNEpochs};
//!
//! let (train, test) = Dataset::digits()?.split(0.2, 0)?;
//! let device = candle_core::Device::Cpu;
//! let mut rng = TrainRng::new(7);
//! let model = Mlp::new(&[64, 32, 10], 0.0, &device, &mut rng)?;
//! let optimizer = AdamW::named(model.parameters(), AdamWConfig::default())?;
//! let dir = tempfile::tempdir()?;
//! let settings = TrainSettings {
//!     epochs: 2,
//!     policy: Box::new(EveryNEpochs(1)),
//!     ..TrainSettings::new(7, 1e-3)
//! };
//! let store = CheckpointStore::local(dir.path())?;
//! let mut trainer = Trainer::new(model, optimizer, rng, device, store, settings);
//! let outcome = trainer.run(&train, &test, &StopSignal::new(), &mut |_| {})?;
//! assert_eq!(outcome.epoch, 2);
//! assert!(outcome.test_accuracy.unwrap() > 0.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod compare;
mod config;
mod convert;
mod data;
mod dist;
mod error;
mod metrics;
mod model;
mod optim;
mod rng;
mod schedule;
mod shard;
mod trainer;

pub use config::{
    BestMetric, CheckpointConfig, DataConfig, DatasetName, LogConfig, MAX_CONFIG_BYTES,
    ModelConfig, OptimizerConfig, RunOptions, RunPaths, TrainConfig, parse_device,
};
pub use data::{Dataset, MAX_CLASSES, MAX_FILE_BYTES, MAX_VALUES};
pub use dist::rank_rows;
pub use error::TrainError;
pub use metrics::{LogFormat, MetricsLog, Row, plot_loss};
pub use model::{
    MAX_LAYERS, MAX_PARAMETERS, Mlp, Model, check_mlp_size, dropout, linear_init, mlp_parameters,
};
pub use optim::{AdamW, AdamWConfig, OptimizerState, SgdConfig, SgdMomentum};
pub use rng::{RngState, TrainRng};
pub use schedule::Schedule;
pub use shard::{OptimizerSharding, shard_range};
pub use trainer::{
    Event, Outcome, STEP_TIMES_ENV, Status, StopSignal, TrainSettings, Trainer, step_times_from_env,
};
