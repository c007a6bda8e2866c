//! Replays the incident handover exists for, against the embedded mock gateway on loopback:
//! a socket goes zombie (no heartbeat ACKs, close frames never answered) while a health monitor
//! in four tasks restarts the shard every few milliseconds.
//!
//! Needs no token and no network. Prints what the shard does as it happens, then a table, and
//! exits non-zero if an invariant broke (two sockets, an identify spent, an event lost or
//! delivered twice). The scenario lives in `handover_cli::demo`, where `handover demo`
//! plays it first in a longer tour of faults.
//!
//! ```sh
//! cargo run -p handover --example incident
//! ```

use std::process::ExitCode;

use handover_cli::demo::{DemoOptions, play_incident};

#[tokio::main]
async fn main() -> ExitCode {
    let mut out = std::io::stdout();
    match play_incident(&DemoOptions::default(), &mut out).await {
        Ok(report) if report.broken().is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
