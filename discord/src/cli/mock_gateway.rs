//! `handover mock-gateway`: the mock gateway on a loopback port, for other people's tests.
//!
//! On start it prints one JSON line on stdout:
//!
//! ```json
//! {"type":"listening","ws_url":"ws://127.0.0.1:PORT","http_base":"http://127.0.0.1:PORT","port":PORT}
//! ```
//!
//! then reads control commands as JSON lines on stdin (each answered by one line on stdout)
//! and runs until SIGTERM or SIGINT. End of stdin does not stop it. Accepted tokens come from
//! `HANDOVER_MOCK_TOKENS` (comma-separated), default `mock-token`.
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `{"op":"dispatch","shard":0,"event":"MESSAGE_CREATE","data":{...}}` | one dispatch to the shard's live sessions | `{"type":"dispatched","written":N}` |
//! | `{"op":"stream","shard":0,"event":"...","data":{...},"count":100,"every_ms":5}` | a bounded stream (`every_ms` absent: as fast as read) | `{"type":"streaming","stream":ID}` |
//! | `{"op":"fault","shard":0,"fault":"zombie"}` | a fault on the shard's sockets (`shard` absent: every socket) | `{"type":"injected","hit":N}` |
//! | `{"op":"counters"}` | | `{"type":"counters",...}` |
//!
//! Faults: `zombie`, `stop_acks`, `drop_tcp`, `ignore_close_frames`, `reconnect`,
//! `invalid_session` (with `"resumable": bool`), `close` (with `"code": N`), `delay` (with
//! `"ms": N`), `garbage_text`, `garbage_binary`, `request_heartbeat`. A `"token"` index selects
//! another accepted token's shards (default 0).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::CliError;
use crate::mock::{
    Counters, DEFAULT_TOKEN, Fault, Garbage, MockConfig, MockHandle, MockServer, ShardKey,
    StreamRate, StreamSpec, Target,
};

/// The environment variable listing the tokens the mock accepts, comma-separated.
pub const MOCK_TOKENS_ENV: &str = "HANDOVER_MOCK_TOKENS";

/// Flags of `handover mock-gateway`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct MockArgs {
    /// TCP port on 127.0.0.1 (0: any free port, printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Recommended shard count answered by GET /api/v10/gateway/bot.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Heartbeat interval sent in HELLO, in milliseconds (Discord: 41250).
    #[arg(long, default_value_t = 41_250)]
    pub heartbeat_ms: u64,
    /// Identify window per concurrency bucket, in milliseconds (Discord: 5000).
    #[arg(long, default_value_t = 5_000)]
    pub identify_window_ms: u64,
    /// How long a disconnected session stays resumable, in seconds.
    #[arg(long, default_value_t = 180)]
    pub resume_window_secs: u64,
    /// max_concurrency: identify buckets.
    #[arg(long, default_value_t = 1)]
    pub max_concurrency: u32,
    /// Seed for session ids and garbage frames.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl MockArgs {
    /// The mock configuration these flags describe (tokens from [`MOCK_TOKENS_ENV`]).
    pub fn config(&self) -> MockConfig {
        let tokens = std::env::var(MOCK_TOKENS_ENV)
            .ok()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_TOKEN.to_owned()]);
        MockConfig {
            tokens,
            shards: self.shards.max(1),
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms.max(1)),
            identify_window: Duration::from_millis(self.identify_window_ms),
            resume_window: Duration::from_secs(self.resume_window_secs),
            max_concurrency: self.max_concurrency.max(1),
            seed: self.seed,
            port: self.port,
            ..MockConfig::default()
        }
    }
}

/// Serves the mock until SIGTERM/SIGINT.
pub async fn run(args: MockArgs) -> Result<(), CliError> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| CliError::io(format!("cannot handle {name}"), e))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let config = args.config();
    let tokens = config.tokens.len();
    let mock = MockServer::start(config).await.map_err(CliError::Mock)?;
    let handle = mock.handle();
    let mut stdout = tokio::io::stdout();
    #[derive(serde::Serialize)]
    struct Listening {
        r#type: &'static str,
        ws_url: String,
        http_base: String,
        port: u16,
        tokens: usize,
    }
    let hello = Listening {
        r#type: "listening",
        ws_url: mock.url(),
        http_base: mock.http_base(),
        port: mock.addr().port(),
        tokens,
    };
    write_line(&mut stdout, &hello).await?;
    info!(url = %mock.url(), "mock gateway listening");

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    let answer = control(&handle, &line);
                    write_line(&mut stdout, &answer).await?;
                }
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    info!("mock gateway stopping");
    mock.shutdown().await;
    Ok(())
}

async fn write_line(
    out: &mut tokio::io::Stdout,
    value: &impl serde::Serialize,
) -> Result<(), CliError> {
    let mut line = serde_json::to_string(value).map_err(|_| CliError::StdoutClosed)?;
    line.push('\n');
    out.write_all(line.as_bytes())
        .await
        .and(out.flush().await)
        .map_err(|_| CliError::StdoutClosed)
}

#[derive(Deserialize)]
struct ControlLine {
    op: String,
    #[serde(default)]
    token: usize,
    #[serde(default)]
    shard: Option<u32>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    every_ms: Option<u64>,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    resumable: Option<bool>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    ms: Option<u64>,
}

/// Carries out one control line and returns the answer line.
pub fn control(mock: &MockHandle, line: &str) -> Value {
    let error = |message: String| json!({ "type": "error", "error": message });
    let cmd: ControlLine = match serde_json::from_str(line) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "control line refused");
            return error(format!(
                "malformed control line at column {}: expected {{\"op\": ...}}",
                e.column()
            ));
        }
    };
    let key = ShardKey::new(cmd.token, cmd.shard.unwrap_or(0));
    match cmd.op.as_str() {
        "dispatch" => {
            let event = cmd.event.unwrap_or_else(|| "MESSAGE_CREATE".into());
            let data = cmd.data.unwrap_or_else(|| json!({}));
            let written = mock.dispatch(key, &event, &data);
            json!({ "type": "dispatched", "written": written })
        }
        "stream" => {
            let rate = match cmd.every_ms {
                Some(ms) => StreamRate::Every(Duration::from_millis(ms)),
                None => StreamRate::AsFastAsRead,
            };
            let id = mock.stream(StreamSpec {
                shard: key,
                event: cmd.event.unwrap_or_else(|| "MESSAGE_CREATE".into()),
                data: cmd.data.unwrap_or_else(|| json!({})),
                count: cmd.count.unwrap_or(1),
                rate,
            });
            json!({ "type": "streaming", "stream": id.0 })
        }
        "fault" => {
            let fault = match cmd.fault.as_deref() {
                Some("zombie") => Fault::Zombie,
                Some("stop_acks") => Fault::StopAcks,
                Some("drop_tcp") => Fault::DropTcp,
                Some("ignore_close_frames") => Fault::IgnoreCloseFrames,
                Some("reconnect") => Fault::Reconnect,
                Some("invalid_session") => Fault::InvalidSession {
                    resumable: cmd.resumable.unwrap_or(false),
                },
                Some("close") => Fault::Close(cmd.code.unwrap_or(4000)),
                Some("delay") => Fault::Delay(Duration::from_millis(cmd.ms.unwrap_or(0))),
                Some("garbage_text") => Fault::Garbage(Garbage::Text),
                Some("garbage_binary") => Fault::Garbage(Garbage::Binary),
                Some("request_heartbeat") => Fault::RequestHeartbeat,
                _ => return error("unknown or missing `fault`".into()),
            };
            let target = match cmd.shard {
                Some(_) => Target::Shard(key),
                None => Target::All,
            };
            let hit = mock.inject(target, fault);
            json!({ "type": "injected", "hit": hit })
        }
        "counters" => counters_json(&mock.counters()),
        _ => error("unknown op (expected dispatch, stream, fault or counters)".into()),
    }
}

/// The counters as JSON (shards keyed `"token/shard"`).
pub fn counters_json(c: &Counters) -> Value {
    let shards: serde_json::Map<String, Value> = c
        .shards
        .iter()
        .map(|(key, s)| {
            let sessions: serde_json::Map<String, Value> = s
                .sessions
                .iter()
                .map(|(id, sc)| {
                    (
                        id.clone(),
                        json!({ "sent": sc.sent, "replayed": sc.replayed, "runs": sc.runs() }),
                    )
                })
                .collect();
            (
                format!("{}/{}", key.token, key.shard),
                json!({
                    "live_sockets": s.live_sockets,
                    "max_live_sockets": s.max_live_sockets,
                    "identifies": s.identifies,
                    "sessions_started": s.sessions_started,
                    "resumes_ok": s.resumes_ok,
                    "resumes_failed": s.resumes_failed,
                    "invalid_sessions_sent": s.invalid_sessions_sent,
                    "reconnects_sent": s.reconnects_sent,
                    "heartbeats_received": s.heartbeats_received,
                    "acks_sent": s.acks_sent,
                    "close_frames": s.close_frames,
                    "server_closes": s.server_closes,
                    "sessions": sessions,
                }),
            )
        })
        .collect();
    json!({
        "type": "counters",
        "connections_accepted": c.connections_accepted,
        "live_sockets": c.live_sockets,
        "max_live_sockets": c.max_live_sockets,
        "close_frames": c.close_frames,
        "sessions_expired": c.sessions_expired,
        "resumes_unknown_session": c.resumes_unknown_session,
        "http_requests": c.http_requests,
        "shards": shards,
    })
}
