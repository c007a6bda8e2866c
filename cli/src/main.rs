//! `handover`: the Discord adapter for bot operators. See `docs/operations.md`.
//!
//! Thin: parses the command line (bad flags exit with code 2) and hands over to
//! [`handover_cli::main`].

use std::process::ExitCode;

use clap::Parser;
use handover_cli::{Cli, main as run};

fn main() -> ExitCode {
    run(Cli::parse())
}
