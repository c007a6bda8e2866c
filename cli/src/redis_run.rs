//! `handover run --redis URL`: identify permits, the session-start budget, shard leases and
//! sessions shared with the bot's other processes; `--sink redis`: dispatches to Redis Streams.
//! See docs/scale-out.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{error, info, warn};

use super::CliError;
use super::control::AdapterCounters;
use super::ndjson;
use crate::sink::StreamSink;
use handover_protocol::{IdentifyBudget, Session, SessionStartLimit, Token};
use handover_runtime::redis::{CoordinationError, RedisConfig, RedisCoordinator, Renewal};
use handover_runtime::{Fleet, ShardEvent, ShardEventKind, ShardHandle};

/// Where `handover run` sends dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[non_exhaustive]
pub enum SinkArg {
    /// NDJSON on stdout (no Redis needed).
    #[default]
    Stdout,
    /// One Redis stream per shard (needs --redis); stdout keeps the other lines.
    Redis,
}

/// The Redis flags of `handover run`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct RedisArgs {
    /// Coordinate with the bot's other processes through this Redis server
    /// (`redis://[user:password@]host:port[/db]`): shared identify permits and daily budget,
    /// one process per shard (leases), sessions handed over through Redis.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// Where dispatches go: `stdout` (NDJSON) or `redis` (one stream per shard, needs
    /// --redis).
    #[arg(long, value_enum, default_value_t = SinkArg::Stdout)]
    pub sink: SinkArg,

    /// Take over shards that another live process runs: it is asked to drain them, stores
    /// their sessions, and this process resumes them (a zero-downtime handoff).
    #[arg(long)]
    pub handoff: bool,

    /// Prefix of every Redis key (default: `handover:{<hash of the token>}:`).
    #[arg(long, value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// Shard lease lifetime: a process killed without draining blocks its shards this long.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub redis_lease_ms: u64,

    /// Approximate length cap of each shard's event stream (`XADD MAXLEN ~`).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub stream_max_len: u64,
}

/// Coordination set up for a run.
pub(super) struct Coordination {
    pub(super) coordinator: RedisCoordinator,
    pub(super) shards: Vec<u32>,
}

/// Connects, applies the budget, takes the leases of `shards` and their stored sessions
/// (which replace the session file's). `Ok(None)` without `--redis`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn setup(
    args: &RedisArgs,
    token: &Token,
    limit: Option<SessionStartLimit>,
    bucket_window: Duration,
    shards: &[u32],
    drain: Duration,
    gateway_url: &str,
    sessions: &mut BTreeMap<u32, Session>,
) -> Result<Option<Coordination>, CliError> {
    let Some(url) = &args.redis else {
        if args.sink == SinkArg::Redis {
            return Err(CliError::Usage("--sink redis needs --redis URL".into()));
        }
        if args.handoff {
            return Err(CliError::Usage("--handoff needs --redis URL".into()));
        }
        return Ok(None);
    };
    let mut config = RedisConfig::new(url.clone(), token);
    if let Some(prefix) = &args.redis_prefix {
        config.prefix = prefix.clone();
    }
    config.bucket_window = bucket_window;
    config.max_concurrency = limit.map_or(1, |l| l.max_concurrency.max(1));
    config.budget = Some(IdentifyBudget::default());
    config.lease = Duration::from_millis(args.redis_lease_ms.max(30));
    let coordinator = RedisCoordinator::connect(config.clone())
        .await
        .map_err(coordination_error)?;
    if let Some(limit) = limit {
        coordinator
            .apply_limit(limit)
            .await
            .map_err(coordination_error)?;
    }
    // A dead holder's lease expires within one lease; a live one drains within its drain
    // deadline once asked.
    let wait = config.lease + drain * 2 + Duration::from_secs(1);
    let mut stored = coordinator
        .claim(shards, args.handoff, wait)
        .await
        .map_err(coordination_error)?;
    for shard in super::session_file::trust_resume_urls(&mut stored, gateway_url) {
        warn!(
            shard,
            "the stored session's resume_gateway_url is neither a discord gateway host nor the \
             configured gateway; resuming through the configured gateway instead"
        );
    }
    for (shard, s) in stored {
        info!(shard, seq = s.seq, "session taken from redis");
        sessions.insert(shard, s);
    }
    Ok(Some(Coordination {
        coordinator,
        shards: shards.to_vec(),
    }))
}

fn coordination_error(e: CoordinationError) -> CliError {
    match e {
        CoordinationError::BadUrl { reason } => {
            CliError::Usage(format!("--redis is not a usable redis url: {reason}"))
        }
        other => CliError::io(
            "redis coordination",
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// Renews the leases and stores the sessions (the sink's sequence numbers) every third of a
/// lease. A handoff request, or a lease lost to another process, drains this process as
/// SIGTERM does (it raises SIGTERM on itself once). Runs until aborted.
pub(super) fn spawn_leases(
    coordination: &Coordination,
    handles: Arc<BTreeMap<u32, ShardHandle>>,
    counters: Arc<AdapterCounters>,
) -> JoinHandle<()> {
    let coordinator = coordination.coordinator.clone();
    let shards = coordination.shards.clone();
    tokio::spawn(async move {
        let mut raised = false;
        // The first renewal at once: the sessions a process resumed are stored before it
        // could be killed.
        let mut tick = tokio::time::interval(coordinator.renew_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            counters.set_redis_reachable(coordinator.is_reachable());
            let sessions: BTreeMap<u32, Session> = handles
                .iter()
                .filter_map(|(id, h)| h.session().map(|s| (*id, s)))
                .collect();
            let renewal = coordinator.renew(&shards, &sessions).await;
            counters.set_redis_reachable(coordinator.is_reachable());
            let why = match renewal {
                Renewal::HandoffAsked => "another process asked to take these shards over",
                Renewal::Lost(_) => "shard leases expired and another process took them",
                _ => continue,
            };
            if !raised {
                info!(reason = why, "draining for a handoff");
                raised = true;
                if let Err(e) = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::TERM,
                ) {
                    error!(error = %e, "cannot raise sigterm; the handoff waits for the lease");
                }
            }
        }
    })
}

/// Stores the final sessions and releases the leases (after the drain).
pub(super) async fn release(
    coordination: &Coordination,
    leases: JoinHandle<()>,
    sessions: &BTreeMap<u32, Session>,
) {
    leases.abort();
    match coordination
        .coordinator
        .release(&coordination.shards, sessions)
        .await
    {
        Ok(n) => info!(sessions = n, "sessions stored in redis; leases released"),
        Err(e) => error!(error = %e, "sessions not stored in redis; leases expire by themselves"),
    }
}

/// What the `--sink redis` loop needs besides the fleet.
pub(super) struct StreamRun<'a> {
    /// Cap of each stream.
    pub(super) max_len: u64,
    /// Session ids of the shards started with a stored session.
    pub(super) resumed: &'a BTreeMap<u32, String>,
    /// The `started` line.
    pub(super) started: Vec<u8>,
    /// Replies to stdin commands, for stdout.
    pub(super) lines: mpsc::Receiver<Vec<u8>>,
    /// Tasks that may restart shards (stdin commands, the control API): ended before the drain.
    pub(super) inputs: Vec<AbortHandle>,
    /// Drain deadline per shard.
    pub(super) drain: Duration,
    /// Bound of each write to stdout.
    pub(super) write_deadline: Duration,
    /// The adapter's counters (Redis reachability is published there for `/metrics`).
    pub(super) counters: Arc<AdapterCounters>,
}

/// The loop of `--sink redis`: dispatches to the shard streams (confirmed once Redis
/// acknowledged the XADDs), every other line (and command replies) to stdout. Ends on
/// SIGTERM/SIGINT (drained, `Ok`) or when every shard gave up or ended.
pub(super) async fn serve_stream_sink(
    mut fleet: Fleet,
    coordination: &Coordination,
    run: StreamRun<'_>,
) -> Result<(), CliError> {
    let StreamRun {
        max_len,
        resumed,
        started: started_line,
        mut lines,
        inputs,
        drain,
        write_deadline,
        counters,
    } = run;
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| CliError::io(format!("cannot handle {name}"), e))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut sink = StreamSink::new(&coordination.coordinator, max_len);
    for (shard, session) in resumed {
        sink.set_session(*shard, session);
    }
    let mut out = tokio::io::stdout();
    write_stdout(&mut out, &started_line, write_deadline).await?;
    let handles: Vec<ShardHandle> = fleet
        .shard_ids()
        .filter_map(|id| fleet.shard(id).cloned())
        .collect();
    let leases = spawn_leases(
        coordination,
        Arc::new(handles.iter().map(|h| (h.id(), h.clone())).collect()),
        counters,
    );
    let mut gave_up = BTreeMap::new();
    let outcome = loop {
        tokio::select! {
            ev = fleet.next_event() => match ev {
                Some(ev) => {
                    let batch = collect(&mut fleet, ev);
                    track(&batch, &mut gave_up);
                    if let Err(e) =
                        take(&mut fleet, &mut sink, &mut out, batch, None, write_deadline).await
                    {
                        break Err(e);
                    }
                    if gave_up.len() == handles.len() {
                        break Err(CliError::AllShardsGaveUp(gave_up.into_iter().collect()));
                    }
                }
                None => break Err(CliError::AllShardsGaveUp(gave_up.into_iter().collect())),
            },
            Some(line) = lines.recv() => {
                if let Err(e) = write_stdout(&mut out, &line, write_deadline).await {
                    break Err(e);
                }
            }
            _ = term.recv() => { info!("sigterm: draining"); break Ok(()) }
            _ = int.recv() => { info!("sigint: draining"); break Ok(()) }
        }
    };
    // Nothing may restart a shard while it drains.
    for input in inputs {
        input.abort();
    }
    // Drain: stop every shard keeping its session, publishing what arrives meanwhile.
    let stopper = {
        let handles = handles.clone();
        tokio::spawn(async move {
            let all = handles
                .iter()
                .map(|h| h.stop(handover_core::StopIntent::KeepResumable));
            futures_util::future::join_all(all).await;
            futures_util::future::join_all(handles.iter().map(ShardHandle::shutdown)).await;
        })
    };
    let bound = tokio::time::Instant::now() + drain + Duration::from_secs(2) + write_deadline;
    loop {
        let stopped = stopper.is_finished();
        let next = tokio::time::timeout(Duration::from_millis(100), fleet.next_event()).await;
        match next {
            Ok(Some(ev)) => {
                let batch = collect(&mut fleet, ev);
                if take(
                    &mut fleet,
                    &mut sink,
                    &mut out,
                    batch,
                    Some(bound),
                    write_deadline,
                )
                .await
                .is_err()
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) if stopped => break,
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= bound {
            error!("the drain did not end in time; what is left is left to the next process");
            break;
        }
    }
    release(coordination, leases, &fleet.sessions()).await;
    outcome
}

fn collect(fleet: &mut Fleet, first: ShardEvent) -> Vec<ShardEvent> {
    let mut batch = vec![first];
    while batch.len() < 512 {
        match fleet.try_next_event() {
            Some(ev) => batch.push(ev),
            None => break,
        }
    }
    batch
}

fn track(batch: &[ShardEvent], gave_up: &mut BTreeMap<u32, String>) {
    for ev in batch {
        match &ev.kind {
            ShardEventKind::GaveUp { reason } => {
                error!(shard = ev.shard, %reason, "shard gave up");
                gave_up.insert(ev.shard, handover_runtime::describe_give_up(*reason));
            }
            ShardEventKind::Ready(_) | ShardEventKind::Resumed(_) => {
                gave_up.remove(&ev.shard);
            }
            _ => {}
        }
    }
}

/// Publishes a batch (retrying while Redis is away, until `bound` if given), writes its other
/// lines to stdout, and only then confirms every receipt, in order.
async fn take(
    fleet: &mut Fleet,
    sink: &mut StreamSink,
    out: &mut tokio::io::Stdout,
    batch: Vec<ShardEvent>,
    bound: Option<tokio::time::Instant>,
    write_deadline: Duration,
) -> Result<(), CliError> {
    let mut pause = Duration::from_millis(50);
    let mut logged = false;
    loop {
        match sink.publish(&batch).await {
            Ok(p) => {
                if p.duplicates > 0 {
                    info!(
                        duplicates = p.duplicates,
                        "events already in their stream were not added again"
                    );
                }
                break;
            }
            Err(e) => {
                if !logged {
                    error!(error = %e, "events not published; retrying (they stay unconfirmed)");
                    logged = true;
                }
                if bound.is_some_and(|b| tokio::time::Instant::now() + pause >= b) {
                    return Err(CliError::io(
                        "redis sink",
                        std::io::Error::other(e.to_string()),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
    let mut lines = Vec::new();
    for ev in &batch {
        if !matches!(ev.kind, ShardEventKind::Dispatch(_)) {
            ndjson::write_event(&mut lines, ev);
        }
    }
    write_stdout(out, &lines, write_deadline).await?;
    for ev in &batch {
        if let Some(receipt) = fleet.receipt(ev) {
            receipt.confirm();
        }
    }
    Ok(())
}

async fn write_stdout(
    out: &mut tokio::io::Stdout,
    bytes: &[u8],
    bound: Duration,
) -> Result<(), CliError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let write = async {
        out.write_all(bytes).await?;
        out.flush().await
    };
    match tokio::time::timeout(bound, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(CliError::StdoutClosed),
        Err(_) => Err(CliError::OutputCutShort(bound)),
    }
}
