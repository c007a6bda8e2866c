//! `handover run`: one process running a bot's shards, with NDJSON in and out, an HTTP control
//! server, signal handling and a session file.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handover_core::{RestartReason, StopIntent};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::CliError;
use super::control::{self, AdapterCounters, Control};
use super::ndjson::{self, CommandError, MAX_COMMAND_LINE, Route, StdinCommand};
use super::session_file;
use super::writer::{Batch, Writer};
use handover_protocol::{
    Compression, GatewayConfig, IdentifyQueueConfig, Intents, Session, SessionStartLimit, Token,
};
use handover_runtime::http::{DEFAULT_API_BASE, HttpError, HttpOptions, gateway_bot};
use handover_runtime::{
    Delivery, Fleet, FleetConfig, IdentifyCoordinator, SendError, ShardEvent, ShardEventKind,
    ShardHandle, ShardSelection,
};

/// The environment variable holding the bot token. The token is never a flag (flags show up in
/// `ps`, shell history and process listings) and is never printed.
pub const TOKEN_ENV: &str = "HANDOVER_TOKEN";

/// Events written to stdout before a flush, at most, when many are ready at once.
const BATCH: usize = 1024;

/// Flags of `handover run`. The token comes from `HANDOVER_TOKEN`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct RunArgs {
    /// Which shards run, where they connect, and their sessions.
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Serve the HTTP control API on `[ADDR:]PORT` (ADDR defaults to 127.0.0.1; port 0 picks a
    /// free one, announced in the `started` line).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_http_bind)]
    pub http: Option<SocketAddr>,

    /// Allow --http on a non-loopback address. The API has no authentication: anyone who
    /// reaches it can restart shards.
    #[arg(long)]
    pub http_allow_remote: bool,

    /// On SIGTERM/SIGINT, once the shards are drained, how long stdout's reader has to take
    /// the last events. What it has not taken by then is left to the next process (the
    /// session file resumes before it) and the exit code is 3.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub write_timeout_ms: u64,

    /// Spacing of identifies in one concurrency bucket. Discord's is 5000; lower it only
    /// against a mock gateway.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub identify_window_ms: u64,

    /// Coordination with other processes over Redis, and the sink.
    #[cfg(feature = "redis")]
    #[command(flatten)]
    pub redis: super::redis_run::RedisArgs,
}

/// The upstream flags `handover run` and `handover proxy` share: which shards run, where they
/// connect, and the sessions they resume and save.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct UpstreamArgs {
    /// Gateway intents: names joined by `,` or `|` (GUILDS,GUILD_MESSAGES) or a decimal bit set
    /// (`0` for none; an empty list is refused).
    #[arg(long, default_value = "GUILDS,GUILD_MESSAGES", value_parser = parse_intents)]
    pub intents: Intents,
    /// Shards to run: `auto` (the count Discord recommends; one shard with --gateway-url),
    /// `N` (shards 0..N of N) or `A..B/N` (shards A to B-1 of N, for a bot split over
    /// processes).
    #[arg(long, default_value = "auto", value_parser = parse_shards)]
    pub shards: ShardsArg,
    /// Base URL of Discord's HTTP API, asked for `GET /api/v10/gateway/bot`.
    #[arg(long, default_value = DEFAULT_API_BASE, value_name = "URL")]
    pub api_base: String,
    /// Gateway URL (ws:// or wss:// with a host); skips the `GET /gateway/bot` lookup.
    #[arg(long, value_name = "URL")]
    pub gateway_url: Option<String>,
    /// Transport compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// On SIGTERM/SIGINT, save every shard's session here (mode 0600); at start, resume from
    /// it if it is fresh (the file is removed once read). Its directory must exist and be
    /// writable, and the path must not be a symbolic link: checked at start (exit 2).
    #[arg(long, value_name = "PATH")]
    pub session_file: Option<PathBuf>,
    /// A session file older than this is not used (the gateway forgets sessions after a few
    /// minutes).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub session_max_age_secs: u64,
    /// Longest wait for a close handshake before the socket is aborted, per shard (a live
    /// gateway answers in one round trip; the session stays resumable either way). Bounds
    /// shutdown too.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub drain_timeout_ms: u64,
}

/// What the upstream flags resolve to at start: where to connect, the shard range, the
/// sessions saved earlier, the drain deadline.
pub(crate) struct Upstream {
    pub(crate) lookup: Lookup,
    pub(crate) ids: Range<u32>,
    pub(crate) total: u32,
    pub(crate) sessions: BTreeMap<u32, Session>,
    pub(crate) drain: Duration,
}

impl UpstreamArgs {
    /// Checks made before anything starts: a usable `--gateway-url` and `--session-file`
    /// (found now rather than at shutdown, when the sessions would be lost).
    pub(crate) fn check(&self) -> Result<(), CliError> {
        if let Some(url) = &self.gateway_url
            && let Err(e) = super::ws_url::WsEndpoint::parse(url)
        {
            return Err(CliError::Usage(format!(
                "--gateway-url is not a usable gateway url: {e} (for example wss://gateway.discord.gg)"
            )));
        }
        if let Some(path) = &self.session_file {
            session_file::check_usable(path).map_err(CliError::SessionFile)?;
        }
        Ok(())
    }

    /// Asks `GET /gateway/bot` (unless `--gateway-url`), picks the shards and loads the
    /// session file.
    pub(crate) async fn resolve(&self, token: &Token) -> Result<Upstream, CliError> {
        let lookup = match &self.gateway_url {
            Some(url) => Lookup {
                url: url.clone(),
                recommended: None,
                limit: None,
            },
            None => lookup(&self.api_base, token).await?,
        };
        let (ids, total) = resolve_shards(&self.shards, lookup.recommended)?;
        let sessions = match &self.session_file {
            Some(path) => load_sessions(path, total, self.session_max_age_secs, &lookup.url),
            None => BTreeMap::new(),
        };
        Ok(Upstream {
            lookup,
            ids,
            total,
            sessions,
            drain: Duration::from_millis(self.drain_timeout_ms.max(1)),
        })
    }
}

/// Transport compression, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum CompressionArg {
    /// No compression.
    None,
    /// zlib-stream.
    ZlibStream,
    /// zstd-stream.
    ZstdStream,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::ZlibStream => Compression::ZlibStream,
            CompressionArg::ZstdStream => Compression::ZstdStream,
        }
    }
}

/// The `--shards` value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardsArg {
    /// The recommended count (one shard when the lookup is skipped).
    Auto,
    /// Shards `0..n` of `n`.
    All(u32),
    /// Shards `ids` of `total`.
    Range {
        /// The ids.
        ids: Range<u32>,
        /// The bot's total.
        total: u32,
    },
}

pub(crate) fn parse_intents(text: &str) -> Result<Intents, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "no intents given: name at least one (for example GUILDS), or write 0 for none".into(),
        );
    }
    if text.split([',', '|']).any(|name| name.trim().is_empty()) {
        return Err(
            "an intent name is missing between separators (write GUILDS,GUILD_MESSAGES)".into(),
        );
    }
    let normalized = text.replace(',', "|");
    Intents::parse(&normalized).ok_or_else(|| {
        "expected intent names joined by `,` or `|` (for example GUILDS,GUILD_MESSAGES) or a decimal number".to_owned()
    })
}

pub(crate) fn parse_shards(text: &str) -> Result<ShardsArg, String> {
    let text = text.trim();
    if text == "auto" {
        return Ok(ShardsArg::Auto);
    }
    let bad = || "expected `auto`, a shard count `N`, or a range `A..B/N`".to_owned();
    if let Some((range, total)) = text.split_once('/') {
        let (a, b) = range.split_once("..").ok_or_else(bad)?;
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        let total: u32 = total.trim().parse().map_err(|_| bad())?;
        if a >= b || b > total {
            return Err(format!(
                "shards {a}..{b} of {total} is not a non-empty range within the total"
            ));
        }
        return Ok(ShardsArg::Range { ids: a..b, total });
    }
    match text.parse::<u32>() {
        Ok(0) => Err("the shard count must be at least 1".into()),
        Ok(n) => Ok(ShardsArg::All(n)),
        Err(_) => Err(bad()),
    }
}

pub(crate) fn parse_http_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| "expected PORT or ADDR:PORT (for example 127.0.0.1:9090)".to_owned())
}

/// Reads and checks the token from [`TOKEN_ENV`].
pub(crate) fn read_token() -> Result<Token, CliError> {
    let raw = match std::env::var(TOKEN_ENV) {
        Ok(raw) => raw,
        Err(std::env::VarError::NotPresent) => {
            return Err(CliError::MissingToken { var: TOKEN_ENV });
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(CliError::InvalidToken {
                var: TOKEN_ENV,
                reason: "it is not valid utf-8",
            });
        }
    };
    Token::new(raw).map_err(|e| match e {
        handover_protocol::ProtocolError::InvalidToken { reason } => CliError::InvalidToken {
            var: TOKEN_ENV,
            reason,
        },
        _ => CliError::InvalidToken {
            var: TOKEN_ENV,
            reason: "not accepted",
        },
    })
}

/// Runs the adapter until SIGTERM/SIGINT (then `Ok` once drained), or until every shard gave
/// up, stdout closed or startup failed (then the error).
pub async fn run(args: RunArgs) -> Result<(), CliError> {
    let token = read_token()?;
    if let Some(addr) = args.http
        && !addr.ip().is_loopback()
        && !args.http_allow_remote
    {
        return Err(CliError::Usage(format!(
            "--http {addr} is not a loopback address; the control API has no authentication, \
             pass --http-allow-remote to expose it anyway"
        )));
    }
    args.upstream.check()?;
    let mut signals = Signals::install()?;
    // Bound before any shard starts, so a busy port fails the start without spending an
    // identify.
    let listener = match args.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError::io(format!("cannot bind the control server on {addr}"), e)
            })?;
            let local = listener
                .local_addr()
                .map_err(|e| CliError::io("cannot read the control server address", e))?;
            info!(addr = %local, "control server listening");
            Some((listener, local.to_string()))
        }
        None => None,
    };

    #[allow(unused_mut)]
    let Upstream {
        lookup,
        ids,
        total,
        mut sessions,
        drain,
    } = args.upstream.resolve(&token).await?;
    let window = Duration::from_millis(args.identify_window_ms.max(1));
    #[cfg(feature = "redis")]
    let coordination = {
        let shard_list: Vec<u32> = ids.clone().collect();
        super::redis_run::setup(
            &args.redis,
            &token,
            lookup.limit,
            window,
            &shard_list,
            drain,
            &lookup.url,
            &mut sessions,
        )
        .await?
    };
    #[cfg(feature = "redis")]
    let permits = coordination
        .as_ref()
        .map(|c| Arc::new(c.coordinator.clone()) as Arc<dyn IdentifyCoordinator>);
    #[cfg(not(feature = "redis"))]
    let permits: Option<Arc<dyn IdentifyCoordinator>> = None;
    #[cfg(feature = "redis")]
    let redis_sink = args.redis.sink == super::redis_run::SinkArg::Redis;
    #[cfg(feature = "redis")]
    let resumed: BTreeMap<u32, String> = sessions
        .iter()
        .map(|(id, s)| (*id, s.session_id.clone()))
        .collect();

    let mut gateway = GatewayConfig::new(token, args.upstream.intents);
    gateway.gateway_url = lookup.url;
    gateway.compression = args.upstream.compression.into();
    let fleet = start_fleet(
        gateway,
        ids.clone(),
        total,
        lookup.limit,
        (drain, window),
        sessions,
        permits,
    )?;
    let handles = Arc::new(handles(&fleet));
    let counters = Arc::new(AdapterCounters::default());
    let http_addr = listener.as_ref().map(|(_, addr)| addr.clone());
    let http_task = listener.map(|(listener, _)| {
        tokio::spawn(control::serve(
            listener,
            Control {
                shards: handles.clone(),
                counters: counters.clone(),
            },
        ))
    });

    // Commands from stdin, whichever sink carries the events; their replies go to stdout.
    let (lines_tx, lines_rx) = mpsc::channel(256);
    let commands = tokio::spawn(read_commands(
        handles.clone(),
        total,
        counters.clone(),
        lines_tx,
    ));

    #[cfg(feature = "redis")]
    if let Some(coordination) = coordination.as_ref().filter(|_| redis_sink) {
        let ids_vec: Vec<u32> = ids.clone().collect();
        let mut started = Vec::new();
        ndjson::write_started(&mut started, &ids_vec, total, http_addr.as_deref());
        info!(shards = ?ids_vec, total, sink = "redis", "started");
        let mut inputs = vec![commands.abort_handle()];
        inputs.extend(http_task.as_ref().map(|t| t.abort_handle()));
        return super::redis_run::serve_stream_sink(
            fleet,
            coordination,
            super::redis_run::StreamRun {
                max_len: args.redis.stream_max_len,
                resumed: &resumed,
                started,
                lines: lines_rx,
                inputs,
                drain,
                write_deadline: Duration::from_millis(args.write_timeout_ms),
                counters: counters.clone(),
            },
        )
        .await;
    }
    let mut adapter = Adapter::new(fleet, handles.clone(), counters.clone())?;
    let ids_vec: Vec<u32> = ids.collect();
    ndjson::write_started(
        &mut adapter.batch.bytes,
        &ids_vec,
        total,
        http_addr.as_deref(),
    );
    adapter.hand_over();
    info!(shards = ?ids_vec, total, "started");

    #[cfg(feature = "redis")]
    let leases = coordination
        .as_ref()
        .map(|c| super::redis_run::spawn_leases(c, handles.clone(), counters.clone()));
    let outcome = adapter.serve(&mut signals, lines_rx).await;
    // Nothing may restart a shard while it drains: commands and the control API end first.
    commands.abort();
    if let Some(t) = http_task {
        t.abort();
    }
    let write_deadline = Duration::from_millis(args.write_timeout_ms);
    let drained = adapter
        .drain(
            args.upstream.session_file.as_deref(),
            total,
            drain,
            write_deadline,
        )
        .await;
    #[cfg(feature = "redis")]
    if let (Some(c), Some(leases)) = (&coordination, leases) {
        super::redis_run::release(c, leases, &adapter.fleet.sessions()).await;
    }
    outcome?;
    if let Some(e) = drained.save_error {
        return Err(e);
    }
    if let Some(bound) = drained.timed_out {
        return Err(CliError::DrainTimedOut(bound));
    }
    if let Some(bound) = drained.cut_short {
        return Err(CliError::OutputCutShort(bound));
    }
    Ok(())
}

pub(crate) struct Lookup {
    pub(crate) url: String,
    pub(crate) recommended: Option<u32>,
    pub(crate) limit: Option<SessionStartLimit>,
}

pub(crate) async fn lookup(api_base: &str, token: &Token) -> Result<Lookup, CliError> {
    let bot = gateway_bot(api_base, token, &HttpOptions::default())
        .await
        .map_err(|e| match e {
            HttpError::InvalidToken => CliError::AuthenticationFailed {
                detail: "GET /gateway/bot answered 401 unauthorized".into(),
                var: TOKEN_ENV,
            },
            HttpError::InvalidUrl { reason } => {
                CliError::Usage(format!("--api-base is not usable: {reason}"))
            }
            other => CliError::Lookup(other),
        })?;
    info!(
        shards = bot.shards,
        remaining = bot.session_start_limit.remaining,
        max_concurrency = bot.session_start_limit.max_concurrency,
        "gateway lookup"
    );
    if bot.session_start_limit.remaining == 0 {
        warn!(
            reset_after = ?bot.session_start_limit.reset_after,
            "the daily session start budget is spent; identifies will be refused until it resets"
        );
    }
    Ok(Lookup {
        url: bot.url,
        recommended: Some(bot.shards),
        limit: Some(bot.session_start_limit),
    })
}

pub(crate) fn resolve_shards(
    arg: &ShardsArg,
    recommended: Option<u32>,
) -> Result<(Range<u32>, u32), CliError> {
    let (ids, total) = match arg {
        ShardsArg::Auto => {
            let n = recommended.unwrap_or(1).max(1);
            (0..n, n)
        }
        ShardsArg::All(n) => (0..*n, *n),
        ShardsArg::Range { ids, total } => (ids.clone(), *total),
    };
    if ids.is_empty() || ids.end > total {
        return Err(CliError::Usage(format!(
            "shards {ids:?} of {total} is not a non-empty range within the total"
        )));
    }
    Ok((ids, total))
}

/// The sessions of the session file, if it is usable; a `resume_gateway_url` that is neither
/// a Discord gateway host nor the gateway in use (`gateway_url`) is replaced by `gateway_url`,
/// so the RESUME, which carries the token, only goes where the configuration says.
pub(crate) fn load_sessions(
    path: &std::path::Path,
    total: u32,
    max_age_secs: u64,
    gateway_url: &str,
) -> BTreeMap<u32, Session> {
    match session_file::take(
        path,
        total,
        Duration::from_secs(max_age_secs),
        session_file::now_ms(),
    ) {
        Ok(Some(mut sessions)) => {
            for shard in session_file::trust_resume_urls(&mut sessions, gateway_url) {
                warn!(
                    path = %path.display(),
                    shard,
                    "the session file's resume_gateway_url is neither a discord gateway host nor \
                     the configured gateway; resuming through the configured gateway instead"
                );
            }
            info!(path = %path.display(), sessions = sessions.len(), "session file read");
            sessions
        }
        Ok(None) => {
            debug!(path = %path.display(), "no session file; identifying");
            BTreeMap::new()
        }
        Err(error) => {
            warn!(%error, "session file not used; identifying");
            BTreeMap::new()
        }
    }
}

/// Starts the shards as one fleet: one identify queue (paced by the bot's `max_concurrency`
/// and session start limit), saved sessions resumed.
fn start_fleet(
    gateway: GatewayConfig,
    ids: Range<u32>,
    total: u32,
    limit: Option<SessionStartLimit>,
    (drain, window): (Duration, Duration),
    sessions: BTreeMap<u32, Session>,
    permits: Option<Arc<dyn IdentifyCoordinator>>,
) -> Result<Fleet, CliError> {
    let mut config = FleetConfig::new(gateway, ShardSelection::Range { ids, total });
    config.lifecycle.drain_deadline = drain;
    config.identify = IdentifyQueueConfig {
        max_concurrency: limit.map_or(1, |l| l.max_concurrency.max(1)),
        bucket_window: window,
        ..IdentifyQueueConfig::default()
    };
    config.session_start_limit = limit;
    // An event is delivered once the sink has it: its line written to stdout, or (the stream
    // sink) its XADD acknowledged by Redis. Never when the adapter merely takes it.
    config.delivery = Delivery::Confirmed;
    for (shard, s) in &sessions {
        info!(shard, seq = s.seq, "resuming the saved session");
    }
    config.sessions = sessions;
    let started = match permits {
        Some(permits) => Fleet::start_with(config, permits),
        None => Fleet::start(config),
    };
    started.map_err(|e| match e {
        handover_runtime::FleetError::BadSelection { reason } => CliError::Usage(reason),
        other => CliError::Start(other),
    })
}

fn handles(fleet: &Fleet) -> BTreeMap<u32, ShardHandle> {
    fleet
        .shard_ids()
        .filter_map(|id| fleet.shard(id).map(|h| (id, h.clone())))
        .collect()
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| CliError::io(format!("cannot handle {name}"), e))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Bytes of output the adapter holds for the writer before it stops taking events (the rest
/// waits in the shards' queues, and then in their sockets).
const MAX_HELD_OUTPUT: usize = 256 * 1024;

/// How long a stopped writer may take to finish the write it is in (it never blocks inside
/// one: see the `writer` module).
const WRITER_STOP_BOUND: Duration = Duration::from_secs(2);

struct Adapter {
    fleet: Fleet,
    handles: Arc<BTreeMap<u32, ShardHandle>>,
    counters: Arc<AdapterCounters>,
    writer: Writer,
    /// Output built but not yet handed to the writer, with a receipt per event.
    batch: Batch,
    gave_up: BTreeMap<u32, String>,
    events_done: bool,
}

/// How a drain ended.
#[derive(Debug, Default)]
struct Drained {
    /// The shards did not stop within the bound.
    timed_out: Option<Duration>,
    /// Output was still unwritten at the write deadline (stdout's reader stalled).
    cut_short: Option<Duration>,
    /// The session file could not be written.
    save_error: Option<CliError>,
}

impl Adapter {
    fn new(
        fleet: Fleet,
        handles: Arc<BTreeMap<u32, ShardHandle>>,
        counters: Arc<AdapterCounters>,
    ) -> Result<Adapter, CliError> {
        let writer = Writer::stdout(counters.clone())
            .map_err(|e| CliError::io("cannot write to stdout", e))?;
        Ok(Adapter {
            fleet,
            handles,
            counters,
            writer,
            batch: Batch::default(),
            gave_up: BTreeMap::new(),
            events_done: false,
        })
    }

    /// Whether the adapter may take more events (or command replies) now.
    fn has_room(&self) -> bool {
        self.batch.bytes.len() < MAX_HELD_OUTPUT
    }

    /// Pumps events and command replies to stdout until a signal asks to stop (`Ok`) or a
    /// fatal condition ends the run (`Err`). Never blocks on stdout: a stalled reader only
    /// stops the taking of events (backpressure), never the handling of signals.
    async fn serve(
        &mut self,
        signals: &mut Signals,
        mut lines: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), CliError> {
        loop {
            let room = self.has_room();
            tokio::select! {
                ev = self.fleet.next_event(), if !self.events_done && room => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        self.take_ready_events();
                    }
                    None => self.events_done = true,
                },
                Some(line) = lines.recv(), if room => self.batch.bytes.extend_from_slice(&line),
                () = self.writer.changed() => {}
                _ = signals.term.recv() => {
                    info!("sigterm: draining");
                    return Ok(());
                }
                _ = signals.int.recv() => {
                    info!("sigint: draining");
                    return Ok(());
                }
                _ = signals.hup.recv() => {
                    info!("sighup: restarting every shard");
                    let handles = self.handles.clone();
                    self.counters
                        .restarts_requested
                        .fetch_add(handles.len() as u64, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let all = handles.values().map(|h| h.restart(RestartReason::Requested));
                        futures_util::future::join_all(all).await;
                    });
                }
            }
            self.hand_over();
            if self.writer.failed() {
                return Err(CliError::StdoutClosed);
            }
            if self.gave_up.len() == self.handles.len() {
                let reasons = self.gave_up.iter().map(|(k, v)| (*k, v.clone())).collect();
                return Err(CliError::AllShardsGaveUp(reasons));
            }
            if self.events_done {
                let mut reasons: Vec<(u32, String)> =
                    self.gave_up.iter().map(|(k, v)| (*k, v.clone())).collect();
                for id in self.handles.keys() {
                    if !self.gave_up.contains_key(id) {
                        reasons.push((*id, "the shard's task ended".into()));
                    }
                }
                return Err(CliError::AllShardsGaveUp(reasons));
            }
        }
    }

    /// Takes the events already queued, up to the output bound, without waiting.
    fn take_ready_events(&mut self) {
        for _ in 0..BATCH {
            if !self.has_room() {
                return;
            }
            match self.fleet.try_next_event() {
                Some(ev) => self.on_event(ev),
                None => return,
            }
        }
    }

    fn on_event(&mut self, ev: ShardEvent) {
        match &ev.kind {
            ShardEventKind::GaveUp { reason } => {
                error!(shard = ev.shard, %reason, "shard gave up");
                self.gave_up
                    .insert(ev.shard, handover_runtime::describe_give_up(*reason));
            }
            ShardEventKind::Ready(_) | ShardEventKind::Resumed(_) => {
                self.gave_up.remove(&ev.shard);
            }
            _ => {}
        }
        ndjson::write_event(&mut self.batch.bytes, &ev);
        if let Some(receipt) = self.fleet.receipt(&ev) {
            self.batch.marks.push((self.batch.bytes.len(), receipt));
        }
    }

    /// Hands what is built to the writer when it has room: at once when it is idle (so a
    /// lone event goes out immediately), in one batch per write when it is busy.
    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if !self.writer.has_room() {
            return;
        }
        // The next batch is built in a written one's buffers: no allocation per batch.
        let next = self.writer.empty_batch();
        let batch = std::mem::replace(&mut self.batch, next);
        if let Err(back) = self.writer.offer(batch) {
            self.batch = back;
        }
    }

    /// Whether every byte produced so far is written.
    fn is_flushed(&self) -> bool {
        self.batch.is_empty() && self.writer.is_idle()
    }

    /// Runs `fut` while still taking and writing events, for at most `bound`. `None` on
    /// timeout.
    async fn pump_while<F: Future>(&mut self, fut: F, bound: Duration) -> Option<F::Output> {
        let deadline = tokio::time::sleep(bound);
        tokio::pin!(fut, deadline);
        loop {
            let room = self.has_room();
            tokio::select! {
                biased;
                out = &mut fut => {
                    self.hand_over();
                    return Some(out);
                }
                ev = self.fleet.next_event(), if !self.events_done && room => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        self.take_ready_events();
                    }
                    None => self.events_done = true,
                },
                () = self.writer.changed() => {}
                _ = &mut deadline => {
                    self.hand_over();
                    return None;
                }
            }
            self.hand_over();
        }
    }

    /// Writes what is left until everything is out or `bound` passes. Whether it all went out.
    async fn write_out(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::sleep(bound);
        tokio::pin!(deadline);
        loop {
            self.hand_over();
            if self.is_flushed() || self.writer.failed() {
                return self.is_flushed();
            }
            tokio::select! {
                () = self.writer.changed() => {}
                _ = &mut deadline => return false,
            }
        }
    }

    /// Stops every shard keeping its session resumable (every socket confirmed gone or
    /// aborted at the drain deadline), writes what is left until the write deadline, stops
    /// the writer, and only then saves the sessions: the session file resumes right after
    /// the last event actually written.
    async fn drain(
        &mut self,
        session_path: Option<&std::path::Path>,
        total: u32,
        drain: Duration,
        write_deadline: Duration,
    ) -> Drained {
        let mut report = Drained::default();
        // Each shard's stop is bounded by the drain deadline plus the abort; shards stop
        // concurrently.
        let bound = drain + Duration::from_secs(2);
        let handles = self.handles.clone();
        let stop = futures_util::future::join_all(
            handles.values().map(|h| h.stop(StopIntent::KeepResumable)),
        );
        if self.pump_while(stop, bound).await.is_none() {
            error!(?bound, "shards did not stop in time");
            report.timed_out = Some(bound);
        }
        let shutdown = futures_util::future::join_all(handles.values().map(ShardHandle::shutdown));
        let _ = self.pump_while(shutdown, bound).await;
        // The last events (socket closed, state changes) until every shard task has ended.
        let last = async {
            while !self.events_done && self.has_room() {
                match tokio::time::timeout(Duration::from_millis(100), self.fleet.next_event())
                    .await
                {
                    Ok(Some(ev)) => self.on_event(ev),
                    Ok(None) | Err(_) => break,
                }
            }
        };
        last.await;
        if !self.write_out(write_deadline).await && !self.writer.failed() {
            let unwritten = self.batch.marks.iter().filter(|(_, r)| r.counts()).count();
            error!(
                ?write_deadline,
                unwritten_in_adapter = unwritten,
                "stdout did not take the last events in time; they are left for the next process"
            );
            report.cut_short = Some(write_deadline);
        }
        if !self.writer.stop(WRITER_STOP_BOUND).await {
            // Not reachable with a writer that polls before it writes; logged if it ever is.
            error!("the stdout writer did not stop; the session file may be behind stdout");
        }
        if let Some(path) = session_path {
            let sessions = self.fleet.sessions();
            if sessions.is_empty() {
                info!(path = %path.display(), "no resumable session to save");
            } else {
                match session_file::save(path, total, &sessions, session_file::now_ms()) {
                    Ok(()) => {
                        for (shard, s) in &sessions {
                            info!(shard, seq = s.seq, "session saved");
                        }
                        info!(path = %path.display(), sessions = sessions.len(), "sessions saved")
                    }
                    Err(e) => {
                        error!(error = %e, "sessions not saved");
                        report.save_error = Some(CliError::io(
                            "session file",
                            std::io::Error::other(e.to_string()),
                        ));
                    }
                }
            }
        }
        let live: usize = handles.values().map(|h| h.status().live_sockets).sum();
        info!(live_sockets = live, "drained");
        report
    }
}

/// Reads commands from stdin, one per line, and carries them out in order. Replies (errors,
/// `ok` for commands with an `id`, `status`) go to `out`. Ends at end of input: the process
/// keeps running without commands (for example under a supervisor with stdin on /dev/null).
async fn read_commands(
    shards: Arc<BTreeMap<u32, ShardHandle>>,
    total: u32,
    counters: Arc<AdapterCounters>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        let read = read_line_bounded(&mut reader, &mut line, MAX_COMMAND_LINE).await;
        let text = match read {
            Ok(LineRead::Eof) => {
                debug!("stdin closed; no more commands");
                return;
            }
            Err(e) => {
                warn!(error = %e, "stdin unreadable; no more commands");
                return;
            }
            Ok(LineRead::TooLong) => {
                number += 1;
                Err(CommandError::TooLong {
                    limit: MAX_COMMAND_LINE,
                })
            }
            Ok(LineRead::Line) => {
                number += 1;
                std::str::from_utf8(&line).map_err(|_| CommandError::Malformed {
                    reason: "the line is not utf-8".into(),
                })
            }
        };
        let mut reply = Vec::new();
        match text {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => {
                let parsed = ndjson::parse_command(t.trim());
                let id = parsed.id;
                match parsed.command {
                    Ok(cmd) => {
                        let errors = execute(cmd, &shards, total, number, id, &mut reply).await;
                        if errors.is_empty() {
                            counters.commands_ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counters.commands_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        for e in &errors {
                            warn!(line = number, error = %e, "command refused");
                            ndjson::write_error(&mut reply, number, id, e);
                        }
                        if errors.is_empty() && id.is_some() && reply.is_empty() {
                            ndjson::write_ok(&mut reply, number, id);
                        }
                    }
                    Err(e) => {
                        counters.commands_failed.fetch_add(1, Ordering::Relaxed);
                        warn!(line = number, error = %e, "command refused");
                        ndjson::write_error(&mut reply, number, id, &e);
                    }
                }
            }
            Err(e) => {
                counters.commands_failed.fetch_add(1, Ordering::Relaxed);
                warn!(line = number, error = %e, "command refused");
                ndjson::write_error(&mut reply, number, None, &e);
            }
        }
        if !reply.is_empty() && out.send(reply).await.is_err() {
            return;
        }
    }
}

/// Carries out one command; returns the errors (one per shard that refused it).
async fn execute(
    cmd: StdinCommand,
    shards: &BTreeMap<u32, ShardHandle>,
    total: u32,
    line: u64,
    id: Option<&serde_json::value::RawValue>,
    reply: &mut Vec<u8>,
) -> Vec<CommandError> {
    let targets = |route: Route| -> Result<Vec<u32>, CommandError> {
        match route {
            Route::Shard(id) if shards.contains_key(&id) => Ok(vec![id]),
            Route::Shard(id) => Err(CommandError::NoSuchShard { shard: id }),
            Route::All => Ok(shards.keys().copied().collect()),
            Route::Guild(g) => {
                let id = ndjson::guild_shard(g, total);
                if shards.contains_key(&id) {
                    Ok(vec![id])
                } else {
                    Err(CommandError::NoSuchShard { shard: id })
                }
            }
            Route::Single if shards.len() == 1 => Ok(shards.keys().copied().collect()),
            Route::Single => Err(CommandError::ShardRequired),
        }
    };
    let mut errors = Vec::new();
    match cmd {
        StdinCommand::Send { route, command } => match targets(route) {
            Ok(ids) => {
                for shard in ids {
                    let Some(h) = shards.get(&shard) else {
                        continue;
                    };
                    if let Err(e) = h.send(command.clone()).await {
                        errors.push(match e {
                            SendError::DriverGone(_) => CommandError::ShardGone { shard },
                            other => CommandError::Send {
                                shard,
                                reason: error_chain(&other),
                            },
                        });
                    }
                }
            }
            Err(e) => errors.push(e),
        },
        StdinCommand::Restart { route } => match targets(route) {
            Ok(ids) => {
                info!(shards = ?ids, "restart requested on stdin");
                for shard in ids {
                    let Some(h) = shards.get(&shard) else {
                        continue;
                    };
                    if h.restart(RestartReason::Requested).await.is_err() {
                        errors.push(CommandError::ShardGone { shard });
                    }
                }
            }
            Err(e) => errors.push(e),
        },
        StdinCommand::Status => {
            let statuses: Vec<_> = shards.values().map(ShardHandle::status).collect();
            ndjson::write_status(reply, line, id, &statuses);
        }
    }
    errors
}

/// An error and its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What [`read_line_bounded`] read.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line (without its terminator) is in the buffer.
    Line,
    /// A line longer than the limit was skipped (through its terminator).
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), holding at most `limit` bytes:
/// a longer line is consumed and reported as [`LineRead::TooLong`]. A last line without a
/// terminator counts as a line.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > limit {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        reader.consume(if done { take + 1 } else { take });
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_flag() {
        assert_eq!(parse_shards("auto"), Ok(ShardsArg::Auto));
        assert_eq!(parse_shards("4"), Ok(ShardsArg::All(4)));
        assert_eq!(
            parse_shards("2..4/8"),
            Ok(ShardsArg::Range {
                ids: 2..4,
                total: 8
            })
        );
        for bad in ["0", "x", "4..2/8", "0..9/8", "1..2", "-1", "1..2/x"] {
            assert!(parse_shards(bad).is_err(), "{bad}");
        }
        assert_eq!(
            resolve_shards(&ShardsArg::Auto, Some(3)).unwrap(),
            (0..3, 3)
        );
        assert_eq!(resolve_shards(&ShardsArg::Auto, None).unwrap(), (0..1, 1));
    }

    #[test]
    fn intents_flag() {
        assert_eq!(
            parse_intents("GUILDS,GUILD_MESSAGES"),
            Ok(Intents::GUILDS | Intents::GUILD_MESSAGES)
        );
        assert_eq!(
            parse_intents("GUILDS | MESSAGE_CONTENT").unwrap().bits(),
            1 | 32768
        );
        assert_eq!(parse_intents("513").unwrap().bits(), 513);
        assert_eq!(parse_intents(" 0 ").unwrap().bits(), 0, "none, spelled out");
        assert!(parse_intents("GUILDZ").is_err());
        for empty in [
            "",
            " ",
            "GUILDS,",
            ",GUILDS",
            "GUILDS,,GUILD_MESSAGES",
            "GUILDS| |GUILD_MESSAGES",
            "|",
        ] {
            let err = parse_intents(empty).unwrap_err();
            assert!(
                err.contains("no intents") || err.contains("missing"),
                "{empty:?}: {err}"
            );
        }
    }

    #[test]
    fn http_flag_defaults_to_loopback() {
        assert_eq!(
            parse_http_bind("9090").unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            parse_http_bind("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_http_bind("localhost").is_err());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let input: &[u8] = b"short\r\n0123456789abcdef\nok\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let r = read_line_bounded(&mut reader, &mut buf, 8).await.unwrap();
            if r == LineRead::Eof {
                break;
            }
            got.push((r, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (LineRead::Line, "short".into()),
                (LineRead::TooLong, String::new()),
                (LineRead::Line, "ok".into()),
                (LineRead::Line, "last".into()),
            ]
        );
    }
}
