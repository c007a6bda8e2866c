//! `handover proxy`: Discord's gateway served locally, in front of the bot's shards. See
//! `docs/proxy.md`.

use std::net::SocketAddr;
use std::time::Duration;

use handover_core::StopIntent;
use handover_protocol::{GatewayConfig, IdentifyQueueConfig};
use handover_proxy::server::Proxy;
use handover_proxy::{CacheKinds, HubConfig, ProxyConfig};
use handover_runtime::{Fleet, FleetConfig, ShardSelection};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use super::CliError;
use super::run::{Upstream, UpstreamArgs, parse_http_bind, read_token};
use super::session_file;

/// Flags of `handover proxy`. The token comes from `HANDOVER_TOKEN`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct ProxyArgs {
    /// Serve the gateway (ws://ADDR:PORT/?v=10&encoding=json) and GET /api/v10/gateway/bot on
    /// `[ADDR:]PORT` (ADDR defaults to 127.0.0.1; port 0 picks a free one, logged).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_http_bind)]
    pub listen: SocketAddr,

    /// Allow --listen on a non-loopback address. Clients authenticate with the bot's token, which
    /// then crosses the network unencrypted (ws://).
    #[arg(long)]
    pub listen_allow_remote: bool,

    /// The upstream shards: the same flags as `handover run` (clients may ask for the
    /// upstream's intents or fewer).
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Dispatches kept per shard for client resumes.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub replay_buffer: usize,

    /// Frame batches queued per client before it is closed with 4000 (it can resume).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub client_queue: usize,

    /// Resource kinds the guild cache keeps, comma-separated: all, none, or channels, threads,
    /// roles, emojis, stickers, members, voice_states, presences, stage_instances,
    /// scheduled_events, soundboard_sounds. The others are sent as empty arrays in the
    /// synthesised GUILD_CREATEs.
    #[arg(long, default_value = "all", value_name = "KINDS", value_parser = parse_cache)]
    pub cache: CacheKinds,
}

fn parse_cache(list: &str) -> Result<CacheKinds, String> {
    CacheKinds::parse(list).map_err(|e| e.to_string())
}

/// Runs the proxy until SIGTERM/SIGINT (then drains the upstream shards, keeping their
/// sessions resumable, and saves them to the session file).
pub async fn run(args: ProxyArgs) -> Result<(), CliError> {
    let token = read_token()?;
    if !args.listen.ip().is_loopback() && !args.listen_allow_remote {
        return Err(CliError::Usage(format!(
            "--listen {} is not a loopback address; clients send the bot token in clear over \
             ws://, pass --listen-allow-remote to expose it anyway",
            args.listen
        )));
    }
    args.upstream.check()?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::io("cannot install the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::io("cannot install the SIGINT handler", e))?;
    // Bound before any shard starts: a busy port spends no identify.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::io(format!("cannot bind the proxy on {}", args.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::io("cannot read the proxy address", e))?;
    let public_url = format!("ws://{local}");

    let Upstream {
        lookup: found,
        ids,
        total,
        sessions,
        drain,
    } = args.upstream.resolve(&token).await?;
    let mut gateway = GatewayConfig::new(token.clone(), args.upstream.intents);
    gateway.gateway_url = found.url;
    gateway.compression = args.upstream.compression.into();
    let mut config = FleetConfig::new(
        gateway,
        ShardSelection::Range {
            ids: ids.clone(),
            total,
        },
    );
    config.lifecycle.drain_deadline = drain;
    config.identify = IdentifyQueueConfig {
        max_concurrency: found.limit.map_or(1, |l| l.max_concurrency.max(1)),
        ..IdentifyQueueConfig::default()
    };
    config.session_start_limit = found.limit;
    config.sessions = sessions;
    let fleet = Fleet::start(config).map_err(|e| match e {
        handover_runtime::FleetError::BadSelection { reason } => CliError::Usage(reason),
        other => CliError::Start(other),
    })?;
    let mut hub = HubConfig::new(
        token,
        args.upstream.intents,
        ids.clone().collect(),
        total,
        public_url,
    );
    hub.replay_capacity = args.replay_buffer.max(1);
    hub.cache = args.cache;
    let mut proxy_config = ProxyConfig::new(hub);
    proxy_config.client_queue = args.client_queue.max(1);
    let proxy = Proxy::start(listener, fleet, proxy_config).map_err(|e| {
        CliError::io(
            "cannot start the proxy",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let shards: Vec<u32> = ids.collect();
    info!(addr = %local, shards = ?shards, total, "proxy listening");
    // One line on stdout, for supervisors and tests that pick a free port with 0.
    let line = serde_json::json!({
        "type": "listening",
        "url": format!("ws://{local}"),
        "shards": shards,
        "total": total,
    });
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }

    let mut ended = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = ended.tick() => if proxy.fleet_ended() { break },
        }
    }
    info!("stopping: draining the upstream shards");
    let Some(fleet) = proxy.stop().await else {
        return Err(CliError::AllShardsGaveUp(Vec::new()));
    };
    let stopped = tokio::time::timeout(
        drain + Duration::from_secs(2),
        fleet.stop_all(StopIntent::KeepResumable),
    )
    .await;
    if stopped.is_err() {
        return Err(CliError::DrainTimedOut(drain));
    }
    if let Some(path) = &args.upstream.session_file {
        let sessions = fleet.sessions();
        if !sessions.is_empty()
            && let Err(e) = session_file::save(path, total, &sessions, session_file::now_ms())
        {
            error!(error = %e, "sessions not saved");
            return Err(CliError::io(
                "session file",
                std::io::Error::other(e.to_string()),
            ));
        }
        info!(path = %path.display(), sessions = sessions.len(), "sessions saved");
    }
    fleet.shutdown(StopIntent::KeepResumable).await;
    Ok(())
}
