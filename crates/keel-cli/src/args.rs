//! The raw arguments as clap reads them; each command turns them into checked settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keel makes GPU training environments reproducible: it reads conda environment files
/// exactly as conda does and says what is wrong with them, line and column.
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
