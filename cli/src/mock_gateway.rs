//! `handover mock-gateway`: the mock gateway on a loopback port, for other people's tests.
//!
//! On start it prints one JSON line on stdout:
//!
//! ```json
//! {"type":"listening","ws_url":"ws://127.0.0.1:PORT","http_base":"http://127.0.0.1:PORT","port":PORT,"tokens":1,"seed":N}
//! ```
//!
//! then reads control commands as JSON lines on stdin (each answered by one line on stdout)
//! and runs until SIGTERM or SIGINT. End of stdin does not stop it. Accepted tokens come from
//! `HANDOVER_MOCK_TOKENS` (comma-separated), default `mock-token`. The full list of commands
//! is [`HELP`] (printed by `--help`) and `docs/operations.md`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::CliError;
use handover_mock::{
    Counters, DEFAULT_TOKEN, Fault, Garbage, MockConfig, MockHandle, MockServer,
    PRIVILEGED_INTENTS, ShardKey, StreamRate, StreamSpec, Target, bot_user_id, os_seed,
};
use handover_protocol::{Intents, SessionStartLimit};

/// The environment variable listing the tokens the mock accepts, comma-separated.
pub const MOCK_TOKENS_ENV: &str = "HANDOVER_MOCK_TOKENS";

/// The text `handover mock-gateway --help` prints after the flags.
pub const HELP: &str = "\
Environment:
  HANDOVER_MOCK_TOKENS  accepted bot tokens, comma-separated (default: mock-token). Token N
                        (from 0) is bot N: READY's user and application id is
                        1000000000000000000 + N.
                        IDENTIFY and RESUME take a token bare or as \"Bot <token>\"; GET
                        /api/v10/gateway/bot wants \"Authorization: Bot <token>\".

Stdout: one {\"type\":\"listening\",\"ws_url\",\"http_base\",\"port\",\"tokens\",\"seed\"} line, then one
answer line per command.

Stdin commands (one JSON object per line):
  {\"op\":\"dispatch\",\"shard\":0,\"event\":\"MESSAGE_CREATE\",\"data\":{..}}
        -> {\"type\":\"dispatched\",\"written\":N}  (shard default 0, event MESSAGE_CREATE)
  {\"op\":\"stream\",\"shard\":0,\"event\":\"..\",\"data\":{..},\"count\":100,\"every_ms\":5}
        -> {\"type\":\"streaming\",\"stream\":ID,\"streams\":[ID,..]}  (no every_ms: as fast as
           the client reads)
  {\"op\":\"fault\",\"shard\":0,\"fault\":\"zombie\"}
        -> {\"type\":\"injected\",\"hit\":N}  (no shard: every socket)
           faults: zombie, stop_acks, drop_tcp, ignore_close_frames, reconnect,
           invalid_session (\"resumable\": bool), close (\"code\": N), delay (\"ms\": N),
           garbage_text, garbage_binary, request_heartbeat
  {\"op\":\"counters\"}
        -> {\"type\":\"counters\",..}  (shards keyed \"token/shard\")
  Which bot: \"token\": N (index in HANDOVER_MOCK_TOKENS) or \"token\": \"<token>\", or
  \"bot\": \"<user or application id>\". Without either, a command goes to every bot.
  A line that cannot be carried out -> {\"type\":\"error\",\"error\":\"..\"}; the mock goes on.

Exit codes:
  0  stopped by SIGTERM or SIGINT (end of stdin does not stop it)
  1  the port could not be bound, or stdout was closed
  2  a usage error (unknown or malformed flag)";

/// Flags of `handover mock-gateway`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = HELP)]
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
    /// Dispatches kept per session for replay on RESUME (a RESUME older than the oldest kept
    /// one gets op 9 d=false).
    #[arg(long, value_name = "N", default_value_t = MockConfig::DEFAULT_REPLAY_BUFFER)]
    pub replay_buffer: usize,
    /// Privileged intents the application has enabled, names joined by `,` or `|`
    /// (GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT) or a decimal bit set. Without it an
    /// IDENTIFY asking for one closes with 4014, as on Discord.
    #[arg(long, value_name = "INTENTS", value_parser = parse_privileged_intents)]
    pub allow_privileged_intents: Option<u64>,
    /// Seed for session ids and garbage frames, for a reproducible run. Default: drawn from the
    /// operating system, so two mocks never hand out the same session ids; the seed in use is
    /// printed in the `listening` line.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_privileged_intents(text: &str) -> Result<u64, String> {
    let intents = Intents::parse(&text.replace(',', "|"))
        .ok_or_else(|| "not a list of intent names or a decimal bit set".to_owned())?;
    let bits = intents.bits();
    if bits & !PRIVILEGED_INTENTS != 0 {
        return Err(
            "only privileged intents can be allowed (GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT)"
                .to_owned(),
        );
    }
    Ok(bits)
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
            session_start: SessionStartLimit {
                max_concurrency: self.max_concurrency.max(1),
                ..SessionStartLimit::default()
            },
            replay_buffer: self.replay_buffer,
            allowed_privileged_intents: self.allow_privileged_intents.unwrap_or(0),
            seed: self.seed.unwrap_or_else(os_seed),
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
    let seed = config.seed;
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
        seed: u64,
    }
    let hello = Listening {
        r#type: "listening",
        ws_url: mock.url(),
        http_base: mock.http_base(),
        port: mock.addr().port(),
        tokens,
        seed,
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
    token: Option<Value>,
    #[serde(default)]
    bot: Option<Value>,
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

/// The bots a control line targets: the token indices it names, or every token.
enum Bots {
    Every(usize),
    One(usize),
}

impl Bots {
    fn indices(&self) -> std::ops::Range<usize> {
        match *self {
            Bots::Every(n) => 0..n,
            Bots::One(i) => i..i + 1,
        }
    }
}

/// Resolves `token` (an index or the token itself) and `bot` (READY's user or application
/// id, a string or a number). Errors never quote the token.
fn bots(mock: &MockHandle, cmd: &ControlLine) -> Result<Bots, String> {
    let tokens = mock.config().tokens;
    let id_of = |v: &Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let by_token = match &cmd.token {
        None => None,
        Some(Value::String(text)) => Some(
            tokens
                .iter()
                .position(|t| t == text)
                .ok_or("`token` is not one of the accepted tokens")?,
        ),
        Some(v) => Some(
            v.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < tokens.len())
                .ok_or_else(|| {
                    format!(
                        "`token` is neither a token nor an index below {}",
                        tokens.len()
                    )
                })?,
        ),
    };
    let by_bot = match &cmd.bot {
        None => None,
        Some(v) => Some(
            id_of(v)
                .and_then(|id| (0..tokens.len()).find(|&i| bot_user_id(i) == id))
                .ok_or("`bot` is not the user or application id of an accepted token")?,
        ),
    };
    match (by_token, by_bot) {
        (None, None) => Ok(Bots::Every(tokens.len())),
        (Some(i), None) | (None, Some(i)) => Ok(Bots::One(i)),
        (Some(i), Some(j)) if i == j => Ok(Bots::One(i)),
        (Some(_), Some(_)) => Err("`token` and `bot` name different bots".into()),
    }
}

/// Carries out one control line and returns the answer line.
///
/// A line names its bot with `"token"` (an index in the accepted tokens, or the token itself)
/// or `"bot"` (READY's user or application id); without either it applies to every bot.
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
    let bots = match bots(mock, &cmd) {
        Ok(b) => b,
        Err(message) => {
            warn!(error = %message, "control line refused");
            return error(message);
        }
    };
    let shard = cmd.shard.unwrap_or(0);
    match cmd.op.as_str() {
        "dispatch" => {
            let event = cmd.event.unwrap_or_else(|| "MESSAGE_CREATE".into());
            let data = cmd.data.unwrap_or_else(|| json!({}));
            let written: usize = bots
                .indices()
                .map(|t| mock.dispatch(ShardKey::new(t, shard), &event, &data))
                .sum();
            json!({ "type": "dispatched", "written": written })
        }
        "stream" => {
            let rate = match cmd.every_ms {
                Some(ms) => StreamRate::Every(Duration::from_millis(ms)),
                None => StreamRate::AsFastAsRead,
            };
            let event = cmd.event.unwrap_or_else(|| "MESSAGE_CREATE".into());
            let data = cmd.data.unwrap_or_else(|| json!({}));
            let ids: Vec<u64> = bots
                .indices()
                .map(|t| {
                    mock.stream(StreamSpec {
                        shard: ShardKey::new(t, shard),
                        event: event.clone(),
                        data: data.clone(),
                        count: cmd.count.unwrap_or(1),
                        rate,
                    })
                    .0
                })
                .collect();
            json!({ "type": "streaming", "stream": ids.first(), "streams": ids })
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
            let hit: usize = match (&bots, cmd.shard) {
                // Every socket, identified or not.
                (Bots::Every(_), None) => mock.inject(Target::All, fault),
                (Bots::One(t), None) => mock.inject(Target::Token(*t), fault),
                (_, Some(shard)) => bots
                    .indices()
                    .map(|t| mock.inject(ShardKey::new(t, shard), fault))
                    .sum(),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: MockArgs,
    }

    fn parse(flags: &[&str]) -> Result<MockArgs, clap::Error> {
        let argv = std::iter::once("mock-gateway").chain(flags.iter().copied());
        Line::try_parse_from(argv).map(|l| l.args)
    }

    #[test]
    fn privileged_intents_flag() {
        assert_eq!(parse(&[]).unwrap().config().allowed_privileged_intents, 0);
        let all = parse(&[
            "--allow-privileged-intents",
            "GUILD_MEMBERS,GUILD_PRESENCES|MESSAGE_CONTENT",
        ])
        .unwrap();
        assert_eq!(all.config().allowed_privileged_intents, PRIVILEGED_INTENTS);
        let one = parse(&["--allow-privileged-intents", "MESSAGE_CONTENT"]).unwrap();
        assert_eq!(one.config().allowed_privileged_intents, 1 << 15);
        let bits = parse(&["--allow-privileged-intents", "258"]).unwrap();
        assert_eq!(
            bits.config().allowed_privileged_intents,
            (1 << 1) | (1 << 8)
        );
        for bad in ["GUILDS", "MESSAGE_CONTENT,GUILDS", "1", "NOPE"] {
            let err = parse(&["--allow-privileged-intents", bad])
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn replay_buffer_and_seed_flags() {
        let defaults = parse(&[]).unwrap();
        assert_eq!(
            defaults.config().replay_buffer,
            MockConfig::DEFAULT_REPLAY_BUFFER
        );
        assert_eq!(defaults.seed, None);
        assert_ne!(
            defaults.config().seed,
            defaults.config().seed,
            "drawn each time"
        );
        let set = parse(&["--replay-buffer", "20000", "--seed", "5"]).unwrap();
        let config = set.config();
        assert_eq!((config.replay_buffer, config.seed), (20_000, 5));
    }
}
