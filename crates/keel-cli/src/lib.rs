//! The `keel` command line: argument parsing, then one module per command.
//!
//! Exit codes (one enum, `exit::Exit`): 0 ok, 1 a problem was found (drift, a failed
//! verification, a failed training step), 2 bad usage or input; `keel train` stopped by
//! SIGINT/SIGTERM exits 130/143 after saving.

mod args;
mod ckpt;
mod doctor;
mod exit;
mod fleet;
mod gate;
mod lock;
mod prefix;
mod probe;
mod render;
mod spec;
mod train;
mod world;

use std::process::ExitCode;

use clap::Parser as _;

/// Runs `keel` with the process's arguments and returns its exit code.
pub fn run() -> ExitCode {
    let args = args::Cli::parse();
    render::install_hook();
    let result = match args.command {
        args::Command::Spec(args::SpecCommand::Check(check)) => spec::check(check.into()),
        args::Command::Lock(args) => lock::run(args),
        args::Command::Probe(args) => probe::run(&args),
        args::Command::Doctor(args) => doctor::run(&args),
        args::Command::Install(args) => prefix::install(args),
        args::Command::Hash(args) => prefix::hash(args),
        args::Command::Verify(args) => prefix::verify(args),
        args::Command::Diff(args) => prefix::diff(&args),
        args::Command::Ckpt(args::CkptCommand::List(args)) => ckpt::list(&args),
        args::Command::Ckpt(args::CkptCommand::Verify(args)) => ckpt::verify(&args),
        args::Command::Ckpt(args::CkptCommand::Prune(args)) => ckpt::prune(&args),
        args::Command::Train(args) => train::run(&args),
        args::Command::Fleet(args::FleetCommand::Hash(args)) => fleet::hash(&args),
        args::Command::Fleet(args::FleetCommand::Verify(args)) => fleet::verify(&args),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            render::error(&error);
            exit::Exit::BadInput.into()
        }
    }
}
