//! The raw arguments as clap reads them; each command turns them into checked settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keel makes GPU training reproducible and crash-proof across a cluster.
///
/// Environments: it reads conda environment files as conda does (`spec check`), solves them
/// into an exact multi-platform lock (`lock`), installs the lock (`install`), fingerprints,
/// verifies and compares installed prefixes (`hash`, `verify`, `diff`, `fleet`) and checks
/// each node's GPUs and driver against the lock (`probe`, `doctor`). Training: `train` runs
/// candle with crash-safe checkpoints it resumes from bit for bit, on one rank or many under
/// mpirun/srun; `ckpt` lists, verifies and prunes checkpoint stores (local, NFS, S3).
#[derive(Debug, Parser)]
#[command(name = "keel", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Work with conda environment files (environment.yml).
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Solve an environment file into an exact lock for every platform (pixi's lock format),
    /// keeping existing pins unless the file changed. Exit 0 on success, 1 when `--check`
    /// finds the lock stale, 2 on bad input or an unsolvable environment.
    Lock(LockArgs),
    /// Ask the CUDA driver what this node has: driver, CUDA version, every visible GPU.
    /// Without a driver it says "no CUDA driver found" and exits 0.
    Probe(ProbeArgs),
    /// Check the lock (or an installed prefix) against this node: driver new enough for the
    /// CUDA pinned, GPUs' compute capability, free memory, glibc and kernel. Each finding says
    /// what to do. Exit 1 when anything will not work.
    Doctor(DoctorArgs),
    /// Install the lock's conda packages for this platform into a prefix (rattler's installer:
    /// package cache, hard links, conda-meta records conda and pixi read). Only the difference
    /// is applied; an interrupted install is repaired by the next run.
    Install(InstallArgs),
    /// Fingerprint an installed prefix: every package and every file (BLAKE3), one root hash
    /// that is the same for the same install on any path of any machine.
    Hash(HashArgs),
    /// Check an installed prefix against its packages' recorded sha256 and the lock: changed
    /// files, pip installs outside the lock, files no package owns. Exit 1 on drift.
    Verify(VerifyArgs),
    /// Compare fingerprints (`keel hash --json`) of many nodes: group identical ones, list
    /// what differs in the others, package versions first. Exit 1 when they differ.
    Diff(DiffArgs),
    /// Inspect a checkpoint store (a folder, or `s3://bucket/prefix`): list, verify, prune.
    #[command(subcommand)]
    Ckpt(CkptCommand),
    /// Train with candle and checkpoints that survive crashes: resumes from the newest valid
    /// checkpoint by itself, saves by policy, on Ctrl-C/SIGTERM (then exits 130/143) and on a
    /// failed step (exit 1). Without CONFIG: the 784-256-10 MLP on the MNIST images keel
    /// ships, under ./runs/mnist-mlp.
    Train(TrainArgs),
    /// Hash or verify the prefix of every rank of an `mpirun`/`srun` job and print one grouped
    /// report on rank 0, as `keel diff` does (no shared file system needed). Exit 0 when all
    /// ranks agree, 1 when any differs or drifted, 2 on an error; every rank exits alike.
    /// Without a launcher it is a world of one.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Every rank fingerprints its prefix (`keel hash`, with the stat cache); rank 0 groups the
    /// ranks by root hash and lists what differs, package versions first.
    Hash(FleetHashArgs),
    /// Every rank verifies its prefix (`keel verify`); rank 0 groups the ranks by findings and
    /// installed packages and lists what differs.
    Verify(FleetVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FleetHashArgs {
    /// The installed prefix on every rank [default: $CONDA_PREFIX].
    #[arg(value_name = "PREFIX")]
    pub(crate) prefix: Option<PathBuf>,
    /// Print the grouped report as JSON (on rank 0).
    #[arg(long)]
    pub(crate) json: bool,
    /// Hash every file, ignoring the stat cache.
    #[arg(long)]
    pub(crate) full: bool,
    /// Leave out files matching this glob, relative to the prefix (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    /// Where the stat cache lives [default: $XDG_CACHE_HOME/keel/fingerprints].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Do not read or write the stat cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FleetVerifyArgs {
    /// The installed prefix on every rank [default: $CONDA_PREFIX].
    #[arg(value_name = "PREFIX")]
    pub(crate) prefix: Option<PathBuf>,
    /// The lock to compare with, read by every rank [default: keel.lock, when there is one].
    #[arg(short, long, value_name = "LOCK")]
    pub(crate) lock: Option<PathBuf>,
    /// The lock's environment.
    #[arg(short, long, default_value = "default", value_name = "NAME")]
    pub(crate) environment: String,
    /// The platform whose packages the prefix should hold (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub(crate) platform: Option<String>,
    /// Print the grouped report as JSON (on rank 0).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// The run's configuration (TOML); every field has a default.
    #[arg(value_name = "CONFIG.toml")]
    pub(crate) config: Option<PathBuf>,
    /// Start over: the run's folder is moved aside to `NAME.<time>` (nothing is deleted).
    #[arg(long)]
    pub(crate) fresh: bool,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs keel built with `--features cuda`).
    #[arg(long, value_name = "DEVICE")]
    pub(crate) device: Option<String>,
    /// Train this many epochs in all (overrides the file).
    #[arg(long, value_name = "N")]
    pub(crate) epochs: Option<u64>,
    /// The folder runs go under (overrides the file; default `runs`).
    #[arg(long, value_name = "DIR")]
    pub(crate) runs_dir: Option<PathBuf>,
    /// Record this environment fingerprint (`keel hash --json`) in every checkpoint; a resume
    /// on a node whose fingerprint differs says so.
    #[arg(long, value_name = "FINGERPRINT.json", conflicts_with = "prefix")]
    pub(crate) environment: Option<PathBuf>,
    /// The environment this run uses: fingerprinted at start (with the stat cache) and
    /// recorded in every checkpoint. Under a launcher every rank fingerprints its own, and
    /// the job refuses to start (exit 2) when the ranks differ [default under a launcher:
    /// $CONDA_PREFIX].
    #[arg(long, value_name = "PREFIX")]
    pub(crate) prefix: Option<PathBuf>,
    /// Train although the ranks' environments (packages, driver, GPUs, keel, configuration)
    /// differ: rank 0 prints what differs as a warning.
    #[arg(long)]
    pub(crate) allow_env_drift: bool,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Fault drill: make the loss of step N NaN (the run saves an emergency checkpoint of
    /// step N-1 and exits 1).
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) inject_nan_at: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CkptCommand {
    /// Every checkpoint, oldest first: kind, step, epoch, time, metrics, and whether its
    /// manifest reads.
    List(CkptListArgs),
    /// Verify every checkpoint's files against its manifest (sizes, BLAKE3, safetensors
    /// headers). Exit 1 when any is corrupt or incomplete.
    Verify(CkptListArgs),
    /// Delete what a retention rule does not keep (after the newest checkpoint is committed;
    /// never the newest valid one), and leftovers of interrupted writes.
    Prune(CkptPruneArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CkptListArgs {
    /// The store: a folder, or `s3://bucket/prefix` (credentials and endpoint from `AWS_*`).
    #[arg(value_name = "DIR|URL")]
    pub(crate) store: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CkptPruneArgs {
    /// The store: a folder, or `s3://bucket/prefix`.
    #[arg(value_name = "DIR|URL")]
    pub(crate) store: String,
    /// Keep the newest K regular (and K interrupted, K emergency) checkpoints.
    #[arg(long, value_name = "K")]
    pub(crate) keep_last: usize,
    /// Keep the best K `best` checkpoints (by --metric) [default: all].
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) keep_best: usize,
    /// Also keep every regular checkpoint whose step is a multiple of N.
    #[arg(long, value_name = "N")]
    pub(crate) keep_every: Option<u64>,
    /// The metric that ranks `best` checkpoints; lower is better unless --maximize.
    #[arg(long, value_name = "NAME")]
    pub(crate) metric: Option<String>,
    /// Higher --metric is better.
    #[arg(long)]
    pub(crate) maximize: bool,
    /// Print what was deleted as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// The lock to install.
    #[arg(short, long, default_value = "keel.lock", value_name = "LOCK")]
    pub(crate) lock: PathBuf,
    /// The prefix to install into [default: .keel/envs/<environment> beside the lock].
    #[arg(short, long, value_name = "PREFIX")]
    pub(crate) prefix: Option<PathBuf>,
    /// The lock's environment to install.
    #[arg(short, long, default_value = "default", value_name = "NAME")]
    pub(crate) environment: String,
    /// Install another platform's packages (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub(crate) platform: Option<String>,
    /// Check every installed file against its package and re-link the packages whose files
    /// were changed or removed (what `keel verify` reports as changed files).
    #[arg(long)]
    pub(crate) repair: bool,
    /// Install the conda packages only, not the lock's PyPI packages (which need uv: `uv` on
    /// PATH, or $KEEL_UV).
    #[arg(long)]
    pub(crate) no_pypi: bool,
    /// The package cache [default: rattler's, shared with pixi: $RATTLER_CACHE_DIR or
    /// ~/.cache/rattler/cache/pkgs].
    #[arg(long, value_name = "DIR")]
    pub(crate) package_cache: Option<PathBuf>,
    /// Give up on a channel server that sends nothing for this many seconds (connecting,
    /// answering, or mid-archive); a download is tried up to 4 times [default: 60, or
    /// $KEEL_HTTP_TIMEOUT].
    #[arg(long, value_name = "SECS", value_parser = keel_solve::parse_timeout)]
    pub(crate) timeout: Option<std::time::Duration>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// The installed prefix.
    #[arg(value_name = "PREFIX")]
    pub(crate) prefix: PathBuf,
    /// Print the whole fingerprint as JSON (what `keel diff` reads).
    #[arg(long)]
    pub(crate) json: bool,
    /// Write the JSON fingerprint to this file (and the summary to stdout).
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Hash every file, ignoring the stat cache.
    #[arg(long)]
    pub(crate) full: bool,
    /// Leave out files matching this glob, relative to the prefix (repeatable), for example
    /// `**/__pycache__/**`.
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    /// Name this node in the fingerprint [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub(crate) label: Option<String>,
    /// Hashing threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Where the stat cache lives [default: $XDG_CACHE_HOME/keel/fingerprints].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Do not read or write the stat cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The installed prefix.
    #[arg(value_name = "PREFIX")]
    pub(crate) prefix: PathBuf,
    /// The lock to compare with [default: keel.lock, when there is one; without a lock only
    /// the files are checked].
    #[arg(short, long, value_name = "LOCK")]
    pub(crate) lock: Option<PathBuf>,
    /// The lock's environment.
    #[arg(short, long, default_value = "default", value_name = "NAME")]
    pub(crate) environment: String,
    /// The platform whose packages the prefix should hold (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub(crate) platform: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// Fingerprints written by `keel hash --json`, one per node.
    #[arg(required = true, num_args = 2.., value_name = "FINGERPRINT.json")]
    pub(crate) files: Vec<PathBuf>,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The lock to check [default: keel.lock, when there is one].
    #[arg(short, long, value_name = "LOCK")]
    pub(crate) lock: Option<PathBuf>,
    /// An installed prefix to check instead of the lock (reads its conda-meta).
    #[arg(short, long, value_name = "PREFIX")]
    pub(crate) prefix: Option<PathBuf>,
    /// Use a recorded `keel probe --json` report instead of probing this node.
    #[arg(long, value_name = "FILE")]
    pub(crate) probe_json: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also report each GPU's free memory (creates a CUDA context per GPU).
    #[arg(long)]
    pub(crate) free_memory: bool,
    /// Give up on a driver that does not answer within this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub(crate) timeout: f64,
}

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// The environment file.
    #[arg(default_value = "environment.yml", value_name = "ENV.yml")]
    pub(crate) file: PathBuf,
    /// Where to write the lock [default: keel.lock beside the environment file].
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// A platform to lock for (repeatable) [default: the file's `platforms:`, else this
    /// machine's].
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub(crate) platforms: Vec<String>,
    /// A virtual package the solve assumes, `__cuda=12.4` for every platform or
    /// `linux-64:__cuda=12.4` for one (repeatable). Replaces the platform's baseline value of
    /// the same name; the platforms it applies to forget what the previous lock assumed.
    /// Without it (and without --detect) a re-lock keeps the previous lock's virtual packages.
    #[arg(long = "virtual-package", value_name = "[PLATFORM:]__NAME=VERSION")]
    pub(crate) virtual_packages: Vec<String>,
    /// Lock this node's platform for this node's own virtual packages (glibc, kernel, CPU,
    /// the driver's __cuda and the GPUs' __cuda_arch, CONDA_OVERRIDE_* first) instead of the
    /// platform's baseline. The lock then holds only on nodes like this one.
    #[arg(long)]
    pub(crate) detect: bool,
    /// Move this package to its newest allowed version; all others keep their pins
    /// (repeatable).
    #[arg(long = "update", value_name = "NAME")]
    pub(crate) update: Vec<String>,
    /// Do not solve: say whether the lock is up to date with the file (exit 1 when stale).
    #[arg(long)]
    pub(crate) check: bool,
    /// Also write one `@EXPLICIT` list per platform into this folder
    /// (`conda create --file explicit-linux-64.txt`).
    #[arg(long, value_name = "DIR")]
    pub(crate) explicit: Option<PathBuf>,
    /// Also write the lock as conda-lock's `conda-lock.yml` to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) conda_lock: Option<PathBuf>,
    /// Channel priority: `strict` (conda's default), `flexible` or `disabled`.
    #[arg(long, default_value = "strict", value_name = "PRIORITY")]
    pub(crate) channel_priority: String,
    /// Do not run uv for the pip section: record exact `==` pins as given, refuse other lines.
    #[arg(long)]
    pub(crate) no_uv: bool,
    /// Where remote repodata is cached [default: the user cache folder].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Give up on a channel server that sends nothing for this many seconds (connecting,
    /// answering, or mid-download); a request is tried up to 4 times [default: KEEL_HTTP_TIMEOUT,
    /// else 60].
    #[arg(long, value_name = "SECS", value_parser = keel_solve::parse_timeout)]
    pub(crate) timeout: Option<std::time::Duration>,
    /// Print one JSON document to stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SpecCommand {
    /// Check environment files as conda reads them: every error and warning with its line and
    /// column. Exit 0 when all are valid, 2 when any is not.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The environment files to check.
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    /// Print one JSON document (the typed spec and every problem of each file) to stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Count warnings as errors (for CI): a file with warnings is invalid.
    #[arg(long)]
    pub(crate) strict: bool,
}
