//! `handover demo`: a bad day on the gateway, replayed against the embedded mock.
//!
//! One shard runs through a tour of faults while the gateway streams events: the incident
//! handover exists for (a zombie socket whose close frames are never answered, restarted by a
//! health monitor from four tasks every few milliseconds), a server RECONNECT, a dropped TCP
//! connection, a connection that ignores close frames, lost heartbeat ACKs, INVALID_SESSION
//! (resumable and not), a session the server times out (4009), and a bot whose token is
//! refused (4004). After each, the mock gateway's own counters are checked: never two sockets,
//! no identify spent where a resume was possible, every event delivered once, lost sessions
//! reported as gaps, a refused token not retried.
//!
//! Needs no token and no network (127.0.0.1 only) and finishes in a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handover_core::{Backoff, Config, Phase, RestartReason, StopIntent};
use tracing::debug;

use super::CliError;
use handover_mock::{
    DEFAULT_TOKEN, Fault, MockConfig, MockHandle, MockServer, StreamId, StreamRate, StreamSpec,
};
use handover_protocol::{CLOSE_RULES, GatewayConfig, IdentifyQueueConfig, Intents, Token};
use handover_runtime::{Shard, ShardConfig, ShardEvent, ShardEventKind};

/// Flags of `handover demo`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct DemoOptions {
    /// Seed for the mock gateway and the shard's jitter: the same seed replays the same day.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fewer events and restarts (for CI); the same faults.
    #[arg(long)]
    pub quick: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 1,
            quick: false,
        }
    }
}

impl DemoOptions {
    /// Options with this seed, full length.
    pub fn new(seed: u64) -> Self {
        DemoOptions { seed, quick: false }
    }

    /// The same, shortened.
    pub fn quick(mut self) -> Self {
        self.quick = true;
        self
    }
}

/// What one scenario did, as measured on the mock gateway's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScenarioOutcome {
    /// What happened to the connection.
    pub name: &'static str,
    /// How the shard came back: `resumed`, `new session` or `gave up`.
    pub outcome: String,
    /// IDENTIFYs the gateway received during the scenario.
    pub identifies: u64,
    /// RESUMEs the gateway accepted during the scenario.
    pub resumes: u64,
    /// The most sockets the gateway ever saw open at once for the shard (whole run so far).
    pub max_sockets: usize,
    /// Events delivered during the scenario.
    pub delivered: u64,
    /// Events written by the gateway and never delivered (outside reported gaps).
    pub lost: u64,
    /// Events delivered twice.
    pub duplicated: u64,
    /// From the fault to the handshake that recovered, if it recovered.
    pub recovery_ms: Option<u64>,
    /// Invariants that broke (empty when the scenario is fine).
    pub broken: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DemoReport {
    /// Each scenario, in order.
    pub scenarios: Vec<ScenarioOutcome>,
    /// The most sockets open at once on the gateway over the whole run (before the last,
    /// separate bot).
    pub max_live_sockets: usize,
    /// Health-monitor restarts requested during the incident.
    pub monitor_restarts: u64,
    /// How long the whole demo took.
    pub elapsed: Duration,
}

impl DemoReport {
    /// Every broken invariant, prefixed with its scenario.
    pub fn broken(&self) -> Vec<String> {
        self.scenarios
            .iter()
            .flat_map(|s| s.broken.iter().map(move |b| format!("{}: {b}", s.name)))
            .collect()
    }
}

/// Upper bound for any one wait of the demo; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(10);

/// Runs the demo, printing the timeline and the table on stdout. `Err` when the demo could not
/// run or an invariant broke.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, CliError> {
    let mut out = std::io::stdout();
    let report = play(&opts, &mut out).await?;
    let broken = report.broken();
    if broken.is_empty() {
        Ok(report)
    } else {
        Err(CliError::InvariantsBroken(broken.len()))
    }
}

/// Runs the demo writing to `out` and returns the report (broken invariants included).
pub async fn play(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport, CliError> {
    play_tour(opts, out, Tour::Full).await
}

/// Plays the incident alone (the zombie socket and the restart storm), then stops the shard
/// and prints the table: what `cargo run -p handover --example incident` shows.
pub async fn play_incident(
    opts: &DemoOptions,
    out: &mut dyn Write,
) -> Result<DemoReport, CliError> {
    play_tour(opts, out, Tour::Incident).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tour {
    Full,
    Incident,
}

async fn play_tour(
    opts: &DemoOptions,
    out: &mut dyn Write,
    tour: Tour,
) -> Result<DemoReport, CliError> {
    let mut day = Day::open(opts, out).await?;
    let sizes = if opts.quick {
        Sizes {
            events: 60,
            restarts_per_monitor: 40,
        }
    } else {
        Sizes {
            events: 200,
            restarts_per_monitor: 150,
        }
    };
    day.wait_ready().await?;

    let mut scenarios = Vec::new();
    let monitor_restarts = Arc::new(AtomicU64::new(0));
    let restarts = monitor_restarts.clone();
    scenarios.push(
        day.resumable(
            "zombie socket + restart storm",
            "the socket goes zombie (no ACKs, nothing sent, close frames ignored); a health monitor restarts the shard from 4 tasks every 2-5 ms",
            sizes.events,
            move |d: &Day<'_>| {
                d.mock.inject(0, Fault::Zombie);
                let per = sizes.restarts_per_monitor;
                for i in 0..4u64 {
                    let h = d.shard.handle();
                    let restarts = restarts.clone();
                    tokio::spawn(async move {
                        for _ in 0..per {
                            if h.restart(RestartReason::HealthMonitor).await.is_err() {
                                return;
                            }
                            restarts.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(2 + i)).await;
                        }
                    });
                }
            },
            Some((monitor_restarts.clone(), 4 * sizes.restarts_per_monitor)),
        )
        .await,
    );
    if tour == Tour::Full {
        day.tour(sizes.events, &mut scenarios).await;
    }
    let max_live_sockets = day.stop().await;
    if tour == Tour::Full {
        scenarios.push(day.bad_token().await?);
    }
    day.close().await;

    let report = DemoReport {
        scenarios,
        max_live_sockets,
        monitor_restarts: monitor_restarts.load(Ordering::Relaxed),
        elapsed: day.start.elapsed(),
    };
    day.table(&report);
    Ok(report)
}

impl Day<'_> {
    /// Every fault after the incident, one after the other on the same shard.
    async fn tour(&mut self, events: u64, scenarios: &mut Vec<ScenarioOutcome>) {
        let day = self;
        scenarios.push(
            day.resumable(
                "server asks to reconnect (op 7)",
                "the gateway sends RECONNECT",
                events,
                |d: &Day<'_>| {
                    d.mock.inject(0, Fault::Reconnect);
                },
                None,
            )
            .await,
        );
        scenarios.push(
            day.resumable(
                "tcp dropped without close",
                "the gateway drops TCP without a close frame",
                events,
                |d: &Day<'_>| {
                    d.mock.inject(0, Fault::DropTcp);
                },
                None,
            )
            .await,
        );
        scenarios.push(
            day.resumable(
                "close frames ignored on restart",
                "the gateway stops answering close frames; the operator restarts the shard",
                events,
                |d: &Day<'_>| {
                    d.mock.inject(0, Fault::IgnoreCloseFrames);
                    let h = d.shard.handle();
                    tokio::spawn(async move { h.restart(RestartReason::Requested).await });
                },
                None,
            )
            .await,
        );
        scenarios.push(
            day.resumable(
                "heartbeat ACKs stop",
                "the gateway stops ACKing heartbeats while events still flow",
                events,
                |d: &Day<'_>| {
                    d.mock.inject(0, Fault::StopAcks);
                },
                None,
            )
            .await,
        );
        scenarios.push(
            day.resumable(
                "invalid session, resumable (op 9 true)",
                "the gateway sends INVALID_SESSION d=true",
                events,
                |d: &Day<'_>| {
                    d.mock.inject(0, Fault::InvalidSession { resumable: true });
                },
                None,
            )
            .await,
        );
        scenarios.push(
            day.new_session(
                "invalid session (op 9 false)",
                "the gateway sends INVALID_SESSION d=false: the session is gone",
                events,
                Fault::InvalidSession { resumable: false },
            )
            .await,
        );
        scenarios.push(
            day.new_session(
                "session timed out (close 4009)",
                "the gateway closes with 4009 (session timed out)",
                events,
                Fault::Close(4009),
            )
            .await,
        );
    }
}

#[derive(Clone, Copy)]
struct Sizes {
    events: u64,
    restarts_per_monitor: u64,
}

/// The gateway, the shard and what the shard delivered.
struct Day<'o> {
    out: &'o mut dyn Write,
    start: Instant,
    mock: MockHandle,
    server: Option<MockServer>,
    shard: Shard,
    seed: u64,
    /// The session each delivered dispatch belonged to, and the seqs delivered in it.
    delivered: BTreeMap<String, Vec<u64>>,
    current: Option<String>,
    /// Handshakes that completed: when, and whether it was a resume.
    recoveries: Vec<(Instant, bool)>,
    gaps: u64,
    last_state: String,
}

impl<'o> Day<'o> {
    async fn open(opts: &DemoOptions, out: &'o mut dyn Write) -> Result<Day<'o>, CliError> {
        let start = Instant::now();
        let server = MockServer::start(MockConfig {
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_grace: Some(Duration::from_millis(500)),
            identify_window: Duration::from_millis(200),
            resume_window: Duration::from_secs(30),
            close_timeout: Duration::from_millis(500),
            seed: opts.seed,
            ..MockConfig::default()
        })
        .await
        .map_err(CliError::Mock)?;
        let shard = Shard::start(shard_config(&server.url(), DEFAULT_TOKEN, opts.seed)?)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let mut day = Day {
            out,
            start,
            mock: server.handle(),
            shard,
            seed: opts.seed,
            delivered: BTreeMap::new(),
            current: None,
            recoveries: Vec::new(),
            gaps: 0,
            last_state: String::new(),
            server: Some(server),
        };
        let url = day.server.as_ref().map(MockServer::url).unwrap_or_default();
        day.say(&format!(
            "mock gateway on {url} (heartbeat 250 ms, seed {})",
            opts.seed
        ));
        Ok(day)
    }

    fn say(&mut self, text: &str) {
        let ms = self.start.elapsed().as_millis();
        let _ = writeln!(self.out, "{ms:>6} ms  {text}");
    }

    fn heading(&mut self, name: &str, what: &str) {
        let _ = writeln!(self.out);
        let _ = writeln!(self.out, "== {name}");
        self.say(&format!("FAULT: {what}"));
    }

    async fn wait_ready(&mut self) -> Result<(), CliError> {
        let ok = self.pump(|d| !d.recoveries.is_empty(), WAIT).await;
        if ok {
            Ok(())
        } else {
            Err(CliError::InvariantsBroken(1))
        }
    }

    /// Reads shard events until `done` holds (checked after each event and every 20 ms), for
    /// at most `within`. Returns whether `done` held.
    async fn pump(&mut self, mut done: impl FnMut(&Day<'o>) -> bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(self) {
                return true;
            }
            let tick = (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline);
            match tokio::time::timeout_at(tick, self.shard.next_event()).await {
                Ok(Some(ev)) => self.record(ev),
                Ok(None) => return done(self),
                Err(_) if tokio::time::Instant::now() >= deadline => return done(self),
                Err(_) => {}
            }
        }
    }

    fn record(&mut self, ev: ShardEvent) {
        match ev.kind {
            ShardEventKind::Dispatch(d) => {
                let session = self.current.clone().unwrap_or_default();
                self.delivered.entry(session).or_default().push(d.seq);
            }
            ShardEventKind::Ready(r) => {
                self.say(&format!(
                    "shard 0 READY: new session {} (an identify was spent)",
                    short(&r.session_id)
                ));
                self.current = Some(r.session_id.clone());
                self.delivered
                    .entry(r.session_id)
                    .or_default()
                    .extend(r.seq);
                self.recoveries.push((Instant::now(), false));
            }
            ShardEventKind::Resumed(r) => {
                self.say(&format!(
                    "shard 0 RESUMED session {}: missed events replayed, no identify",
                    short(&r.session_id)
                ));
                self.current = Some(r.session_id.clone());
                self.delivered
                    .entry(r.session_id)
                    .or_default()
                    .extend(r.seq);
                self.recoveries.push((Instant::now(), true));
            }
            ShardEventKind::Gap(g) => {
                self.gaps += 1;
                self.say(&format!(
                    "shard 0 GAP: session {} lost after seq {} (reported, not hidden)",
                    short(&g.session_id),
                    g.last_seq
                ));
            }
            ShardEventKind::StateChanged { from, to } => {
                let line = format!("{} -> {}", from.name(), to.name());
                if line != self.last_state {
                    self.say(&format!("shard 0 {line}"));
                    self.last_state = line;
                }
            }
            ShardEventKind::SocketOpened => {}
            ShardEventKind::SocketClosed { code: None } => {
                self.say("shard 0 socket gone (aborted or dropped, no close frame)")
            }
            ShardEventKind::SocketClosed { code: Some(c) } => {
                self.say(&format!("shard 0 socket gone (close code {c})"))
            }
            ShardEventKind::Reconnecting { mode, delay } => self.say(&format!(
                "shard 0 reconnect ({}) in {} ms",
                super::ndjson::mode_name(mode),
                delay.as_millis()
            )),
            ShardEventKind::GaveUp { reason } => self.say(&format!(
                "shard 0 gave up: {}",
                handover_runtime::describe_give_up(reason)
            )),
            ShardEventKind::Warning { message } => {
                debug!(%message, "shard warning");
            }
            _ => {}
        }
    }

    /// Seqs the gateway wrote per session, from its own counters.
    fn written(&self) -> BTreeMap<String, BTreeSet<u64>> {
        self.mock
            .counters()
            .shard(0)
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.seqs().into_iter().collect()))
            .collect()
    }

    /// (delivered, lost, duplicated) over the whole run. Sessions that were lost count only
    /// what was written before the loss was reported; the scenarios never write into a dying
    /// session.
    fn tally(&self) -> (u64, u64, u64) {
        let written = self.written();
        let mut delivered = 0u64;
        let mut lost = 0u64;
        let mut dup = 0u64;
        for (id, seqs) in &self.delivered {
            let set: BTreeSet<u64> = seqs.iter().copied().collect();
            delivered += seqs.len() as u64;
            dup += (seqs.len() - set.len()) as u64;
            if let Some(w) = written.get(id) {
                lost += w.difference(&set).count() as u64;
            }
        }
        for (id, w) in &written {
            if !self.delivered.contains_key(id) {
                lost += w.len() as u64;
            }
        }
        (delivered, lost, dup)
    }

    fn in_sync(&self) -> bool {
        let written = self.written();
        written.iter().all(|(id, w)| {
            self.delivered
                .get(id)
                .is_some_and(|d| d.iter().copied().collect::<BTreeSet<_>>() == *w)
        })
    }

    fn stream(&self, events: u64) -> StreamId {
        self.mock.stream(StreamSpec {
            shard: 0.into(),
            event: "MESSAGE_CREATE".into(),
            data: serde_json::json!({ "content": "tick" }),
            count: events,
            rate: StreamRate::Every(Duration::from_millis(2)),
        })
    }

    /// A fault the session survives: events stream across it, the shard must resume.
    async fn resumable(
        &mut self,
        name: &'static str,
        what: &str,
        events: u64,
        fault: impl FnOnce(&Day<'o>),
        monitors: Option<(Arc<AtomicU64>, u64)>,
    ) -> ScenarioOutcome {
        self.heading(name, what);
        // The previous scenario's last events may still be on their way: a baseline taken
        // before they arrive counts them as lost, and the difference would go negative.
        self.pump(|d| d.in_sync(), WAIT).await;
        let before = self.mock.counters().shard(0);
        let (d0, l0, u0) = self.tally();
        let baseline = self.delivered_total();
        let stream = self.stream(events);
        self.say(&format!(
            "gateway streams {events} MESSAGE_CREATE, one every 2 ms"
        ));
        let quarter = baseline + events / 4;
        self.pump(|d| d.delivered_total() >= quarter, WAIT).await;
        let fault_at = Instant::now();
        fault(self);
        let target = baseline + events;
        let recovered = self
            .pump(
                |d| {
                    let monitors_done = monitors
                        .as_ref()
                        .is_none_or(|(n, total)| n.load(Ordering::Relaxed) >= *total);
                    // Settled: the last restart asked for has played out too. The stream
                    // must have written its last event: the count alone is not enough, as
                    // each RESUMED takes a seq of the session too.
                    monitors_done
                        && d.shard.status().phase == Phase::Receiving
                        && d.recoveries.iter().any(|(t, _)| *t > fault_at)
                        && d.mock.stream_remaining(stream) == 0
                        && d.delivered_distinct() >= target
                        && d.in_sync()
                },
                WAIT,
            )
            .await;
        let after = self.mock.counters().shard(0);
        let (d1, l1, u1) = self.tally();
        let recovery = self.recoveries.iter().find(|(t, _)| *t > fault_at).copied();
        let mut broken = Vec::new();
        if !recovered {
            broken.push("did not recover and deliver every event in time".to_owned());
        }
        let identifies = after.identifies - before.identifies;
        let resumes = after.resumes_ok - before.resumes_ok;
        if identifies != 0 {
            broken.push(format!(
                "{identifies} identify(ies) spent where a resume was possible"
            ));
        }
        if resumes == 0 || recovery.is_some_and(|(_, resumed)| !resumed) {
            broken.push("recovery was not a resume".to_owned());
        }
        self.common_checks(
            &after,
            l1.saturating_sub(l0),
            u1.saturating_sub(u0),
            &mut broken,
        );
        self.outcome(
            name,
            "resumed",
            identifies,
            resumes,
            after.max_live_sockets,
            (
                d1.saturating_sub(d0),
                l1.saturating_sub(l0),
                u1.saturating_sub(u0),
            ),
            recovery.map(|(t, _)| t - fault_at),
            broken,
        )
    }

    /// A fault that ends the session: the shard must start a new one and report the gap.
    async fn new_session(
        &mut self,
        name: &'static str,
        what: &str,
        events: u64,
        fault: Fault,
    ) -> ScenarioOutcome {
        self.heading(name, what);
        // Nothing in flight when the session dies, so every written event is accounted for
        // (and the baseline below counts nothing in flight as lost).
        self.pump(|d| d.in_sync(), WAIT).await;
        let before = self.mock.counters().shard(0);
        let (d0, l0, u0) = self.tally();
        let gaps0 = self.gaps;
        let fault_at = Instant::now();
        self.mock.inject(0, fault);
        let mut recovered = self
            .pump(|d| d.recoveries.iter().any(|(t, _)| *t > fault_at), WAIT)
            .await;
        let baseline = self.delivered_distinct();
        let stream = self.stream(events);
        self.say(&format!(
            "gateway streams {events} MESSAGE_CREATE in the new session"
        ));
        recovered &= self
            .pump(
                |d| {
                    d.mock.stream_remaining(stream) == 0
                        && d.delivered_distinct() >= baseline + events
                        && d.in_sync()
                        && d.shard.status().phase == Phase::Receiving
                },
                WAIT,
            )
            .await;
        let after = self.mock.counters().shard(0);
        let (d1, l1, u1) = self.tally();
        let recovery = self.recoveries.iter().find(|(t, _)| *t > fault_at).copied();
        let mut broken = Vec::new();
        if !recovered {
            broken.push("did not start a new session and deliver every event in time".into());
        }
        let identifies = after.identifies - before.identifies;
        let resumes = after.resumes_ok - before.resumes_ok;
        if identifies != 1 {
            broken.push(format!(
                "{identifies} identifies for one lost session (expected 1)"
            ));
        }
        if self.gaps == gaps0 {
            broken.push("the lost session was not reported as a gap".into());
        }
        self.common_checks(
            &after,
            l1.saturating_sub(l0),
            u1.saturating_sub(u0),
            &mut broken,
        );
        self.outcome(
            name,
            "new session + gap",
            identifies,
            resumes,
            after.max_live_sockets,
            (
                d1.saturating_sub(d0),
                l1.saturating_sub(l0),
                u1.saturating_sub(u0),
            ),
            recovery.map(|(t, _)| t - fault_at),
            broken,
        )
    }

    fn common_checks(
        &self,
        after: &handover_mock::ShardCounters,
        lost: u64,
        dup: u64,
        broken: &mut Vec<String>,
    ) {
        if after.max_live_sockets > 1 {
            broken.push(format!(
                "{} sockets were live at once for the shard",
                after.max_live_sockets
            ));
        }
        if lost > 0 {
            broken.push(format!("{lost} event(s) lost"));
        }
        if dup > 0 {
            broken.push(format!("{dup} event(s) delivered twice"));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &mut self,
        name: &'static str,
        outcome: &str,
        identifies: u64,
        resumes: u64,
        max_sockets: usize,
        (delivered, lost, duplicated): (u64, u64, u64),
        recovery: Option<Duration>,
        broken: Vec<String>,
    ) -> ScenarioOutcome {
        for b in &broken {
            self.say(&format!("INVARIANT BROKEN: {b}"));
        }
        let recovery_ms = recovery.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ScenarioOutcome {
            name,
            outcome: if broken.is_empty() {
                outcome.to_owned()
            } else {
                "BROKEN".to_owned()
            },
            identifies,
            resumes,
            max_sockets,
            delivered,
            lost,
            duplicated,
            recovery_ms,
            broken,
        }
    }

    fn delivered_total(&self) -> u64 {
        self.delivered.values().map(|v| v.len() as u64).sum()
    }

    fn delivered_distinct(&self) -> u64 {
        self.delivered
            .values()
            .map(|v| v.iter().collect::<BTreeSet<_>>().len() as u64)
            .sum()
    }

    /// Stops the shard (ending its session) and returns the gateway's maximum of live sockets.
    async fn stop(&mut self) -> usize {
        let _ = writeln!(self.out);
        self.say("operator stops the shard (close 1000)");
        let stopped = tokio::time::timeout(WAIT, self.shard.stop(StopIntent::EndSession)).await;
        let live = self.shard.status().live_sockets;
        // Events still queued (socket gone, state changes) complete the timeline.
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(20), self.shard.next_event()).await
        {
            self.record(ev);
        }
        if stopped.is_ok() && live == 0 {
            self.say("stop returned: the socket is confirmed gone");
        }
        self.mock.counters().max_live_sockets
    }

    /// A second bot with a token the gateway refuses: it must give up once and never retry.
    async fn bad_token(&mut self) -> Result<ScenarioOutcome, CliError> {
        let name = "token refused (close 4004)";
        let _ = writeln!(self.out);
        let _ = writeln!(self.out, "== {name}");
        self.say("FAULT: a second bot connects with a token the gateway refuses");
        let url = self
            .server
            .as_ref()
            .map(MockServer::url)
            .unwrap_or_default();
        let before = self.mock.counters();
        let mut bot = Shard::start(shard_config(&url, "not-the-right-token", self.seed)?)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let fault_at = Instant::now();
        let mut reason = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while reason.is_none() {
            match tokio::time::timeout_at(deadline, bot.next_event()).await {
                Ok(Some(ShardEvent {
                    kind: ShardEventKind::GaveUp { reason: r },
                    ..
                })) => reason = Some(r),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let gave_up_after = fault_at.elapsed();
        let mut broken = Vec::new();
        match &reason {
            Some(r) => self.say(&format!(
                "bot gave up: {}",
                handover_runtime::describe_give_up(*r)
            )),
            None => broken.push("the bot did not give up".to_owned()),
        }
        // A health monitor restarting a shard that gave up must not turn a refused token into
        // a reconnect loop.
        self.say("a health monitor restarts the bot 5 times");
        for _ in 0..5 {
            let _ = bot.restart(RestartReason::HealthMonitor).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = self.mock.counters();
        let connections = after.connections_accepted - before.connections_accepted;
        self.say(&format!(
            "the gateway saw {connections} connection(s) from the bot: no retry"
        ));
        if connections != 1 {
            broken.push(format!(
                "{connections} connections for a refused token (expected 1, no retry)"
            ));
        }
        let status = bot.status();
        if status.live_sockets != 0 || status.phase != Phase::Failed {
            broken.push(format!(
                "the bot is {} with {} socket(s)",
                status.phase.name(),
                status.live_sockets
            ));
        }
        let _ = bot.stop(StopIntent::EndSession).await;
        Ok(self.outcome(
            name,
            "gave up",
            0,
            0,
            usize::try_from(connections).unwrap_or(usize::MAX),
            (0, 0, 0),
            reason.is_some().then_some(gave_up_after),
            broken,
        ))
    }

    /// Shuts the mock gateway down (every socket closed).
    async fn close(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    fn table(&mut self, report: &DemoReport) {
        let w = &mut self.out;
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| {:<40} | {:<17} | {:>10} | {:>7} | {:>11} | {:>9} | {:>4} | {:>10} | {:>11} |",
            "scenario",
            "outcome",
            "identifies",
            "resumes",
            "max sockets",
            "delivered",
            "lost",
            "duplicated",
            "recovery ms"
        );
        let _ = writeln!(
            w,
            "|{:-<42}|{:-<19}|{:->12}|{:->9}|{:->13}|{:->11}|{:->6}|{:->12}|{:->13}|",
            "", "", "", "", "", "", "", "", ""
        );
        for s in &report.scenarios {
            let recovery = s
                .recovery_ms
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
            let _ = writeln!(
                w,
                "| {:<40} | {:<17} | {:>10} | {:>7} | {:>11} | {:>9} | {:>4} | {:>10} | {:>11} |",
                s.name,
                s.outcome,
                s.identifies,
                s.resumes,
                s.max_sockets,
                s.delivered,
                s.lost,
                s.duplicated,
                recovery
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "health-monitor restarts during the incident: {}; most sockets open at once on the gateway: {}; {} ms in all",
            report.monitor_restarts,
            report.max_live_sockets,
            report.elapsed.as_millis()
        );
        let broken = report.broken();
        if broken.is_empty() {
            let _ = writeln!(w, "all invariants held");
        } else {
            for b in &broken {
                let _ = writeln!(w, "INVARIANT BROKEN: {b}");
            }
        }
        let _ = w.flush();
    }
}

fn short(session: &str) -> &str {
    let end = session
        .char_indices()
        .nth(8)
        .map_or(session.len(), |(i, _)| i);
    &session[..end]
}

/// One shard against the demo's mock, with timers shrunk to match its 250 ms heartbeat.
fn shard_config(url: &str, token: &str, seed: u64) -> Result<ShardConfig, CliError> {
    let token = Token::new(token).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut gateway = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    gateway.gateway_url = url.to_owned();
    let mut config = ShardConfig::new(gateway);
    config.seed = Some(seed);
    config.lifecycle = Config {
        probe_grace: Duration::from_millis(100),
        drain_deadline: Duration::from_millis(200),
        backoff: Backoff {
            floor: Duration::from_millis(20),
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        },
        stable_after: Duration::from_secs(1),
        close_rules: CLOSE_RULES,
        ..Config::default()
    };
    config.identify = IdentifyQueueConfig {
        bucket_window: Duration::from_millis(250),
        ..IdentifyQueueConfig::default()
    };
    Ok(config)
}
