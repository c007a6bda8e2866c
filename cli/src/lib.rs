//! The `handover` command line: the Discord adapter for bot operators.
//!
//! Three subcommands (see `docs/operations.md` for the operator's guide):
//!
//! - `handover run` connects a bot: the token comes from the `HANDOVER_TOKEN` environment
//!   variable (never a flag), events go out as NDJSON on stdout, commands come in as NDJSON on
//!   stdin, logs go to stderr, an optional loopback HTTP server answers health, status,
//!   Prometheus metrics and restarts. SIGTERM/SIGINT drain (keeping the sessions resumable and
//!   saving them to the session file), SIGHUP hot-restarts every shard.
//! - `handover demo` (the default) runs the same runtime against the embedded mock gateway with
//!   faults injected and prints a timeline and a table. No token, no network.
//! - `handover mock-gateway` serves the mock gateway on a loopback port for other test suites.
//!
//! The binary is a thin shell over [`main`]; everything here is usable from a program too.
//! This crate (package `handover`, library `handover_cli`) is the top of the stack: it puts
//! together `handover-runtime` (shards), `handover-mock` (the demo and `mock-gateway`) and,
//! with the `redis` feature, the Redis Streams sink ([`sink`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod control;
pub mod demo;
pub mod mock_gateway;
pub mod ndjson;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis_run;
pub mod run;
pub mod session_file;
#[cfg(feature = "redis")]
pub mod sink;
mod writer;
pub mod ws_url;

pub use control::{health_body, metrics_text};
pub use demo::{DemoOptions, DemoReport};
pub use mock_gateway::MockArgs;
pub use run::{RunArgs, TOKEN_ENV, UpstreamArgs};

/// `handover`: keeps Discord gateway connections healthy without ever overlapping them.
#[derive(Debug, Parser)]
#[command(name = "handover", version)]
pub struct Cli {
    /// Log filter for stderr: a level (error, warn, info, debug, trace) or `tracing` directives
    /// such as `handover_runtime=debug`. Overrides RUST_LOG. Default: info (error for the demo).
    #[arg(long, global = true, value_name = "FILTER", value_parser = parse_log_filter)]
    pub log_level: Option<String>,

    /// What to do. Without a subcommand, `demo` runs.
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CliCommand {
    /// Connect a bot: events out as NDJSON on stdout, commands in on stdin, HTTP control.
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Replay a bad day of gateway faults against the embedded mock and print what happened.
    Demo(DemoOptions),
    /// Serve the mock gateway on 127.0.0.1 for other test suites (one JSON line on stdout).
    MockGateway(MockArgs),
    /// Serve Discord's gateway locally in front of the bot's shards: unmodified bots connect,
    /// restart and resume on loopback (see docs/proxy.md).
    Proxy(proxy::ProxyArgs),
}

/// Printed after the flags by `handover run --help`.
const RUN_AFTER_HELP: &str = "\
The bot token is read from the HANDOVER_TOKEN environment variable (the bare token, without
the `Bot ` prefix). There is no flag for it, and it is never printed.

Exit codes:
  0  drained after SIGTERM/SIGINT
  1  failed at run time: token refused by Discord, every shard gave up, gateway lookup failed,
     control address busy, stdout closed, drain timed out, session file not written
  2  usage or configuration error: a bad flag, HANDOVER_TOKEN missing or malformed, an
     unusable --session-file or --gateway-url; nothing was started

See docs/operations.md for the NDJSON formats, the HTTP API and the session file.";

/// Why a command ended unsuccessfully. Every message is lowercase and never contains the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The token variable is not set (a value that is not UTF-8 is an
    /// [`InvalidToken`](CliError::InvalidToken)).
    #[error(
        "environment variable {var} is not set: put the bot token there (it is never read from a flag)"
    )]
    MissingToken {
        /// The variable's name.
        var: &'static str,
    },
    /// The token variable holds something that cannot be a token.
    #[error("environment variable {var} does not hold a valid token: {reason}")]
    InvalidToken {
        /// The variable's name.
        var: &'static str,
        /// Why (never the token).
        reason: &'static str,
    },
    /// A flag combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// The `--session-file` path could not be written at shutdown, found at start.
    #[error("--session-file cannot be used: {0}")]
    SessionFile(#[source] session_file::SessionFileError),
    /// Discord refused the token (HTTP 401 or close code 4004).
    #[error("authentication failed: {detail} (check {var})")]
    AuthenticationFailed {
        /// What refused it.
        detail: String,
        /// The token variable.
        var: &'static str,
    },
    /// `GET /gateway/bot` failed for another reason.
    #[error("gateway lookup failed: {0}")]
    Lookup(#[source] handover_runtime::http::HttpError),
    /// The shards could not be started.
    #[error("cannot start: {0}")]
    Start(#[source] handover_runtime::FleetError),
    /// Every shard stopped trying on its own (fatal close code, identify budget guard).
    #[error("every shard gave up: {}", describe_gave_up(.0))]
    AllShardsGaveUp(Vec<(u32, String)>),
    /// Stdout was closed by its reader: events can no longer be delivered.
    #[error("stdout was closed; events can no longer be delivered")]
    StdoutClosed,
    /// At shutdown, stdout's reader did not take the last events within the write deadline.
    /// They are not lost: the session file resumes before them.
    #[error(
        "stdout did not take the last events within {0:?}; the session file resumes before them"
    )]
    OutputCutShort(std::time::Duration),
    /// The shards did not drain within the bound.
    #[error("shards did not drain within {0:?}")]
    DrainTimedOut(std::time::Duration),
    /// An I/O operation of the adapter failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The mock gateway could not start.
    #[error("mock gateway: {0}")]
    Mock(#[source] handover_mock::MockError),
    /// The demo saw an invariant break.
    #[error("the demo saw {0} invariant(s) break")]
    InvariantsBroken(usize),
}

impl CliError {
    /// The process exit code: 2 for usage and configuration errors found at start (bad flags,
    /// missing or malformed token, unusable session file path), 3 when a shutdown left output
    /// unwritten (stdout's reader stalled past the write deadline), 1 for everything else that
    /// failed at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::MissingToken { .. }
            | CliError::InvalidToken { .. }
            | CliError::Usage(_)
            | CliError::SessionFile(_) => 2,
            CliError::OutputCutShort(_) => 3,
            _ => 1,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> CliError {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}

fn describe_gave_up(reasons: &[(u32, String)]) -> String {
    let parts: Vec<String> = reasons
        .iter()
        .map(|(shard, reason)| format!("shard {shard}: {reason}"))
        .collect();
    parts.join("; ")
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not a log filter: {e}"))
}

/// Runs a parsed command line to completion and returns the process exit code. Fatal
/// conditions end with one `error: ...` line on stderr and a non-zero code, never a retry loop.
///
/// Installs the stderr log subscriber (once per process) and builds a multi-threaded tokio
/// runtime; call it from a plain `fn main`, not from inside a runtime.
pub fn main(cli: Cli) -> ExitCode {
    let command = cli
        .command
        .unwrap_or_else(|| CliCommand::Demo(DemoOptions::default()));
    let default_level = match command {
        // The demo narrates on stdout; logs would repeat it.
        CliCommand::Demo(_) => "error",
        _ => "info",
    };
    init_logging(cli.log_level.as_deref(), default_level);
    // One worker thread unless `TOKIO_WORKER_THREADS` asks for more (tokio reads it when the
    // count is not set here): a bot's gateway traffic is a small part of one core, and with
    // two workers the hand-offs between a shard's task and its consumer crossed threads
    // (futex wake-ups, context switches): `handover run` measured 2.06-2.18 us of CPU per event
    // on two workers against 1.70-1.78 on one (docs/benchmarks.md).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `run`, `proxy` and `mock-gateway` run as a task on the runtime's worker, not on this
    // thread (`block_on` would poll them here): their hand-offs with the shards' tasks are then
    // wake-ups within a worker, not across threads. The demo narrates from this thread.
    let result = match command {
        CliCommand::Demo(opts) => Ok(runtime.block_on(demo::run(opts)).map(|_| ())),
        CliCommand::Run(args) => runtime.block_on(runtime.spawn(run::run(args))),
        CliCommand::MockGateway(args) => runtime.block_on(runtime.spawn(mock_gateway::run(args))),
        CliCommand::Proxy(args) => runtime.block_on(runtime.spawn(proxy::run(args))),
    };
    // Socket tasks still winding down must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
        // The command's task panicked (the panic was printed) or was cancelled.
        Err(e) => {
            eprintln!("error: the command ended abnormally: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries data). `filter` wins over `RUST_LOG`, which wins over
/// `default_level`.
fn init_logging(filter: Option<&str>, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).unwrap_or_else(|_| EnvFilter::new(default_level)),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    // A second initialisation in the same process (a program calling `main` twice) keeps the
    // first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_help_names_the_token_variable_and_the_exit_codes() {
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        assert!(help.contains("HANDOVER_TOKEN"), "{help}");
        assert!(help.contains("Exit codes"), "{help}");
    }

    #[test]
    fn no_token_flag_exists() {
        let err = Cli::try_parse_from(["handover", "run", "--token", "abc"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::MissingToken { var: TOKEN_ENV }.exit_code(), 2);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let unusable = CliError::SessionFile(session_file::SessionFileError::NotAFile {
            path: "/tmp".into(),
        });
        assert_eq!(unusable.exit_code(), 2);
        assert_eq!(
            unusable.to_string(),
            "--session-file cannot be used: /tmp is not a regular file"
        );
        assert_eq!(CliError::StdoutClosed.exit_code(), 1);
        let e = CliError::AllShardsGaveUp(vec![(0, "authentication failed".into())]);
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "every shard gave up: shard 0: authentication failed"
        );
    }
}
