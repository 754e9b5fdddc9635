//! The `keel` command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    keel_cli::run()
}
