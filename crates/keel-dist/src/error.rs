//! `DistError`: every way launcher detection, a collective or the environment gate fails.

use crate::launch::Launcher;

/// Why a multi-rank job cannot start or a collective failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A launcher variable holds something that is not what the launcher writes there.
    #[error("the launcher variable `{variable}={value}` is not {expected}")]
    InvalidVariable {
        /// The variable, such as `OMPI_COMM_WORLD_RANK`.
        variable: &'static str,
        /// Its value, as read (lossily decoded when not UTF-8).
        value: String,
        /// What it should be, such as `a rank (a whole number)`.
        expected: &'static str,
    },
    /// A launcher variable is missing although the launcher's other variables are set.
    #[error("the launcher variable `{variable}` is not set although `{because}` is")]
    MissingVariable {
        /// The missing variable.
        variable: &'static str,
        /// The variable (with its value) that says a launcher started this process.
        because: String,
    },
    /// A rank (or local rank) is not below the world size.
    #[error(
        "the launcher variable `{variable}={rank}` is not below the world size `{size_variable}={size}`"
    )]
    RankOutOfRange {
        /// The rank variable.
        variable: &'static str,
        /// Its value.
        rank: usize,
        /// The variable the world size came from.
        size_variable: &'static str,
        /// The world size.
        size: usize,
    },
    /// Two launcher variables that must agree do not.
    #[error("the launcher variables disagree: `{first}` but `{second}`")]
    Inconsistent {
        /// One variable with its value.
        first: String,
        /// The other variable with its value.
        second: String,
    },
    /// A build without the `mpi` feature was started as one of several ranks.
    #[error(
        "keel was started as rank {rank} of {size} by {launcher}, but this build has no multi-rank \
         support (the `mpi` feature): {size} copies would each train alone and write one store; \
         start a single process (one task)"
    )]
    WithoutMpi {
        /// This process's rank.
        rank: usize,
        /// The world size the launcher started.
        size: usize,
        /// The launcher.
        launcher: Launcher,
    },
    /// The launcher started more (or fewer) ranks than the communicator sees: each process
    /// would be a world of its own (MPI started as singletons, as under `srun` without a PMI).
    #[error(
        "{launcher} started {launched} ranks but the communicator has {world}: the processes \
         would train separately (under srun, pass `--mpi=pmix` or `--mpi=pmi2`)"
    )]
    WorldMismatch {
        /// The launcher.
        launcher: Launcher,
        /// The world size the launcher's variables give.
        launched: usize,
        /// The communicator's size.
        world: usize,
    },
    /// A collective was asked for a root that is not a rank.
    #[error("the root rank {root} is not below the world size {size}")]
    Root {
        /// The root asked for.
        root: usize,
        /// The world size.
        size: usize,
    },
    /// A buffer is too large for the MPI call (counts and displacements are C `int`s).
    #[error("{what} of {len} elements is more than one MPI call can move ({limit})")]
    TooLarge {
        /// What was too large, such as `the gathered bytes`.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The largest length allowed.
        limit: u64,
    },
    /// MPI was already initialized in this process (by another `Mpi` or by foreign code).
    #[error("MPI is already initialized in this process; one communicator serves the whole job")]
    AlreadyInitialized,
    /// MPI was finalized in this process; the standard forbids starting it again.
    #[error("MPI was already finalized in this process and cannot be started again")]
    Finalized,
    /// The MPI library cannot give the threading level keel needs.
    #[error(
        "the MPI library offers the threading level {provided}, keel needs at least {required}"
    )]
    Threading {
        /// The level the library provided.
        provided: String,
        /// The level keel asked for.
        required: String,
    },
    /// MPI reported a rank or size that is not a valid index.
    #[error("MPI reported the {what} {value}, which is not a valid rank")]
    MpiValue {
        /// `rank` or `size`.
        what: &'static str,
        /// The value.
        value: i64,
    },
    /// A collective returned a result that does not fit the world (one entry per rank).
    #[error("{what} returned {got} entries for a world of {size}")]
    WrongCount {
        /// The collective.
        what: &'static str,
        /// Entries returned.
        got: usize,
        /// The world size.
        size: usize,
    },
    /// The environment facts another rank sent do not parse.
    #[error("rank {rank} sent environment facts that do not parse (is it another keel version?)")]
    Facts {
        /// The rank that sent them.
        rank: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The environment facts gathered from one rank name another rank.
    #[error("the environment facts gathered from rank {index} say they come from rank {claimed}")]
    FactsRank {
        /// The rank they were gathered from.
        index: usize,
        /// The rank written in them.
        claimed: usize,
    },
}
