//! The shell simulation: the production [`Shard`] and [`Fleet`] (tokio driver, identify gate,
//! event queue) against the sans-IO mock gateway, in virtual time, under the seeded scenarios
//! of [`crate::sim`].
//!
//! The in-memory simulation ([`crate::sim`]) drives the core and the codec through the
//! synchronous `MemoryDriver`; this one runs the code that ships: every socket is a real
//! WebSocket (tokio-tungstenite on both ends) over an in-memory byte pipe that a
//! [`Connector`] opens, and the tokio runtime runs on a paused clock, so heartbeats, drains,
//! backoffs and the identify queue's windows pass in virtual time.
//!
//! The far end of every pipe is served by the [`PeerHost`]: one WebSocket server task per
//! socket, feeding the [`MockGateway`] (a [`MemoryPeer`]) and carrying out its actions, plus a
//! timer task for the mock's deadlines. The host watches the sockets the way Discord would:
//! a socket is open from its connect until either end lets go of the pipe, and two open
//! sockets for one shard are a violation, whatever the client's driver reports about them.
//!
//! A run is a function of its seed: a current-thread runtime with a paused clock, in-memory
//! pipes only, the mock, the shards and the scenario all seeded. The trace (what the host and
//! the application saw, at virtual instants) is hashed so that replays can be compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handover_core::{Config, Message, RestartReason, StopIntent, TransportId};
use handover_mock::{MockConfig, MockGateway, ShardKey, StreamId, StreamRate, StreamSpec, Target};
use handover_protocol::{
    Command, IdentifyBudget, IdentifyQueueConfig, PresenceStatus, UpdatePresence,
};
use handover_runtime::{
    Fleet, FleetConfig, Shard, ShardConfig, ShardEvent, ShardEventKind, ShardHandle, ShardSelection,
};
use handover_transport_ws::memory::{MemoryPeer, PeerAction};
use handover_transport_ws::{
    BoxByteStream, Connector, ConnectorFuture, SharedConnector, TransportConfig,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::sim::{Action, Scenario, Timers, Trigger};

/// Seeds the shell simulation runs by default (see docs/simulation.md for the measurement).
pub const DEFAULT_SEEDS: u64 = 400;

/// The gateway URL the shards are configured with; the connector never resolves it.
const GATEWAY_URL: &str = "ws://mock-gateway.invalid";

/// The event type of the marker dispatch that ends a run.
const FLUSH_EVENT: &str = "SIM_FLUSH";

/// The pause before each scenario command. Tokio's `select!` picks among ready branches at
/// random, so a command that reaches a driver at the same instant as a frame would make the
/// run depend on that draw; one virtual millisecond (the timer's resolution) lets the runtime
/// go idle first, and the run then replays exactly.
const SETTLE: Duration = Duration::from_millis(1);

/// Violations kept per run.
const MAX_VIOLATIONS: usize = 16;

/// Trace lines kept per run (later ones are still hashed).
const MAX_TRACE: usize = 200_000;

/// Close codes after which Discord forgets the session (the checker's own table).
const NEW_SESSION_CODES: [u16; 2] = [4007, 4009];
/// Close codes after which reconnecting cannot help.
const FATAL_CODES: [u16; 6] = [4004, 4010, 4011, 4012, 4013, 4014];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still safe to read.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- options, results ---------------------------------------------------------------------

/// How to run a seed in the shell simulation.
#[derive(Clone, Default)]
pub struct ShellOptions {
    /// Applied to the transport configuration of every shard after the connector is set
    /// (tests use it to plant a driver bug).
    pub tweak_transport: Option<fn(&mut TransportConfig)>,
}

impl std::fmt::Debug for ShellOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellOptions")
            .field("tweak_transport", &self.tweak_transport.is_some())
            .finish()
    }
}

/// What the shell simulation adds to a [`Scenario`]: the shard count and reader stalls, drawn
/// from the same seed (a separate stream of it, so the scenario itself is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellPlan {
    /// Shards: 1 (a lone [`Shard`]) or 2 to 4 (a [`Fleet`]).
    pub shards: u32,
    /// Windows (offset from the fault phase's start, length) during which the application
    /// reads nothing.
    pub stalls: Vec<(Duration, Duration)>,
}

impl ShellPlan {
    /// The plan of `scenario`'s seed.
    pub fn generate(scenario: &Scenario) -> ShellPlan {
        let mut rng = fastrand::Rng::with_seed(scenario.seed ^ 0x5348_454c_4c00_0000);
        let shards = if rng.u32(0..4) == 0 {
            rng.u32(2..=4)
        } else {
            1
        };
        let phase = u64::try_from(scenario.params.fault_phase.as_millis()).unwrap_or(u64::MAX);
        let stalls = if rng.u32(0..4) == 0 {
            (0..rng.usize(1..=3))
                .map(|_| {
                    let at = ms(rng.u64(0..phase.max(1)));
                    let len = [ms(100), ms(2_000), ms(20_000)][rng.usize(0..3)];
                    (at, len)
                })
                .collect()
        } else {
            Vec::new()
        };
        ShellPlan { shards, stalls }
    }
}

/// A broken promise, with the virtual time it was seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellViolation {
    /// Virtual time since the run started.
    pub at: Duration,
    /// What was broken.
    pub what: String,
}

/// The record of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutcome {
    /// The seed.
    pub seed: u64,
    /// Shards run.
    pub shards: u32,
    /// FNV-1a over every trace line (virtual instants included).
    pub trace_hash: u64,
    /// Virtual time the run covered.
    pub elapsed: Duration,
    /// Sockets the host accepted.
    pub sockets: u64,
    /// The most sockets open at once at the host for one shard.
    pub max_open_per_shard: usize,
    /// IDENTIFYs the host received.
    pub identifies: u64,
    /// RESUMEs the host received.
    pub resumes: u64,
    /// Dispatches the application read.
    pub delivered: u64,
    /// Lost sessions the application was told of.
    pub gaps: u64,
    /// Shards that ended given up.
    pub gave_up: u32,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct ShellResult {
    /// The record.
    pub outcome: ShellOutcome,
    /// Broken promises (at most 16 kept).
    pub violations: Vec<ShellViolation>,
    /// The trace, line by line.
    pub trace: Vec<String>,
}

impl ShellResult {
    /// No promise was broken.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A report naming the seed, the violations and the trace before the first one.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let o = &self.outcome;
        let _ = writeln!(
            s,
            "shell simulation seed {} ({} shard(s)): reproduce with SHELL_SIM_SEED={}",
            o.seed, o.shards, o.seed
        );
        for v in &self.violations {
            let _ = writeln!(s, "  violation at {:.3?}: {}", v.at, v.what);
        }
        let first = self.violations.first().map(|v| format!("{:>10.3?}", v.at));
        let end = first
            .as_ref()
            .and_then(|t| {
                self.trace
                    .iter()
                    .position(|l| l.contains("VIOLATION") && l.contains(t.trim()))
            })
            .map_or(self.trace.len(), |i| i + 1);
        let _ = writeln!(s, "  trace before the first violation (last 60 lines):");
        for line in &self.trace[end.saturating_sub(60)..end] {
            let _ = writeln!(s, "    {line}");
        }
        let _ = writeln!(s, "  outcome: {o:?}");
        s
    }
}

// ---- the shared record --------------------------------------------------------------------

/// Violations and the trace, shared by the host, the readers and the scenario.
struct Record {
    origin: Instant,
    trace: Vec<String>,
    hash: u64,
    violations: Vec<ShellViolation>,
}

impl Record {
    fn new(origin: Instant) -> Record {
        Record {
            origin,
            trace: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            violations: Vec::new(),
        }
    }

    fn at(&self) -> Duration {
        now().saturating_duration_since(self.origin)
    }

    fn line(&mut self, text: String) {
        let line = format!("[{:>10.3?}] {text}", self.at());
        for b in line.bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        if self.trace.len() < MAX_TRACE {
            self.trace.push(line);
        }
    }

    fn violate(&mut self, what: String) {
        let at = self.at();
        self.line(format!("VIOLATION {what}"));
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(ShellViolation { at, what });
        }
    }
}

type Shared<T> = Arc<Mutex<T>>;

// ---- the peer host --------------------------------------------------------------------------

/// One socket as the server side sees it.
#[derive(Debug, Clone)]
struct SocketRec {
    /// Logical order of the connect.
    opened: u64,
    /// Logical order of the moment either end let go of the pipe.
    closed: Option<u64>,
    /// The shard the socket belongs to, once known.
    shard: Option<u32>,
    /// The mock was told of it (`on_connect` returned true) and not yet of its end.
    registered: bool,
}

/// Per-shard oracle of the server side: whether the client has shown that it holds a
/// resumable session.
#[derive(Debug, Default, Clone)]
struct ShardOracle {
    held: bool,
    open: usize,
    max_open: usize,
}

struct Route {
    tx: mpsc::UnboundedSender<PeerAction>,
    mute: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<Notify>,
}

/// The host's state: the mock, the routes to the socket tasks, and the server-side checks.
struct HostState {
    mock: MockGateway,
    routes: BTreeMap<TransportId, Route>,
    sockets: BTreeMap<TransportId, SocketRec>,
    next_conn: u64,
    clock: u64,
    single_shard: bool,
    oracle: BTreeMap<u32, ShardOracle>,
    session_shard: BTreeMap<String, u32>,
    armed: Vec<(Trigger, Action)>,
    restart_on: mpsc::UnboundedSender<u32>,
    identifies: u64,
    resumes: u64,
    stopped: BTreeSet<u32>,
    /// Sockets on which the server wrote a session-ending signal: what the client sends on
    /// them afterwards was sent before it could know.
    lost_conns: BTreeSet<TransportId>,
    record: Shared<Record>,
}

impl HostState {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn line(&self, text: String) {
        lock(&self.record).line(text);
    }

    fn violate(&self, what: String) {
        lock(&self.record).violate(what);
    }

    /// Hand the mock's actions to the sockets, watching what the server says.
    fn pump(&mut self) {
        while let Some((conn, action)) = self.mock.poll_action() {
            self.watch_server(conn, &action);
            if let Some(route) = self.routes.get(&conn) {
                if action == PeerAction::Drop {
                    route.dropped.notify_one();
                }
                // A send error means the socket task already ended.
                let _ = route.tx.send(action);
            }
        }
        for (conn, route) in &self.routes {
            route.mute.store(
                self.mock.socket_muted(*conn),
                std::sync::atomic::Ordering::SeqCst,
            );
        }
        self.attribute();
    }

    /// Sockets the mock has counted for a shard belong to it from their connect on.
    fn attribute(&mut self) {
        for info in self.mock.connections() {
            let (Some(key), Some(rec)) = (info.shard, self.sockets.get(&info.id)) else {
                continue;
            };
            if rec.shard.is_none() {
                self.assign(info.id, key.shard);
            }
            if let Some(sid) = info.session_id {
                self.session_shard.insert(sid, key.shard);
            }
        }
    }

    /// Socket `id` belongs to `shard`: it must not overlap another socket of that shard.
    fn assign(&mut self, id: TransportId, shard: u32) {
        let Some(rec) = self.sockets.get_mut(&id) else {
            return;
        };
        if rec.shard.is_some() {
            return;
        }
        rec.shard = Some(shard);
        let me = rec.clone();
        if self.lost_conns.contains(&id) {
            // The server ended the session on this socket before it knew whose it was.
            self.oracle.entry(shard).or_default().held = false;
        }
        if self.stopped.contains(&shard) {
            self.violate(format!(
                "socket#{} opened for shard {shard} after the application stopped it",
                id.0
            ));
        }
        let overlapping: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(other, r)| {
                **other != id
                    && r.shard == Some(shard)
                    && r.opened < me.closed.unwrap_or(u64::MAX)
                    && me.opened < r.closed.unwrap_or(u64::MAX)
            })
            .map(|(other, _)| other.0)
            .collect();
        let open = self
            .sockets
            .values()
            .filter(|r| r.shard == Some(shard) && r.closed.is_none())
            .count();
        let o = self.oracle.entry(shard).or_default();
        o.open = open;
        o.max_open = o.max_open.max(open).max(1 + overlapping.len().min(1));
        self.line(format!("host: socket#{} is shard {shard}", id.0));
        if !overlapping.is_empty() {
            self.violate(format!(
                "two sockets open at the server for shard {shard}: socket#{} overlaps socket(s) {overlapping:?}",
                id.0
            ));
        }
    }

    fn closed(&mut self, id: TransportId, by: &str) {
        let t = self.tick();
        let Some(rec) = self.sockets.get_mut(&id) else {
            return;
        };
        if rec.closed.is_some() {
            return;
        }
        rec.closed = Some(t);
        if let Some(shard) = rec.shard {
            let o = self.oracle.entry(shard).or_default();
            o.open = o.open.saturating_sub(1);
        }
        self.line(format!("host: socket#{} closed by the {by}", id.0));
    }

    fn shard_of(&self, conn: TransportId) -> Option<u32> {
        self.sockets.get(&conn).and_then(|r| r.shard)
    }

    /// What the server writes: session-ending signals clear the oracle; handshake acceptance
    /// fires armed actions.
    fn watch_server(&mut self, conn: TransportId, action: &PeerAction) {
        let shard = self.shard_of(conn);
        match action {
            PeerAction::Close(code) => {
                self.line(format!("host: server closes socket#{} with {code}", conn.0));
                if NEW_SESSION_CODES.contains(code) || FATAL_CODES.contains(code) {
                    self.lost_conns.insert(conn);
                    if let Some(s) = shard {
                        self.oracle.entry(s).or_default().held = false;
                    }
                }
            }
            PeerAction::Drop => self.line(format!("host: server drops socket#{}", conn.0)),
            PeerAction::Send(Message::Text(b)) => {
                let Ok(v) = serde_json::from_slice::<Value>(b) else {
                    return;
                };
                match v["op"].as_u64() {
                    Some(9) => {
                        let resumable = v["d"].as_bool().unwrap_or(false);
                        self.line(format!(
                            "host: op 9 resumable={resumable} on socket#{}",
                            conn.0
                        ));
                        if !resumable {
                            self.lost_conns.insert(conn);
                        }
                        if !resumable && let Some(s) = shard {
                            self.oracle.entry(s).or_default().held = false;
                        }
                    }
                    Some(7) => self.line(format!("host: op 7 on socket#{}", conn.0)),
                    Some(0) => {
                        let t = v["t"].as_str().unwrap_or("");
                        if t == "READY" || t == "RESUMED" {
                            self.line(format!("host: {t} on socket#{}", conn.0));
                            self.fire(Trigger::Accepted, conn);
                        }
                    }
                    _ => {}
                }
            }
            PeerAction::Send(Message::Binary(_)) => {}
        }
    }

    /// What the client writes: handshakes are checked against the oracle.
    fn watch_client(&mut self, conn: TransportId, text: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            return;
        };
        match v["op"].as_u64() {
            Some(2) => {
                self.identifies += 1;
                let shard = v["d"]["shard"][0].as_u64().map_or(0, |s| s as u32);
                self.assign(conn, shard);
                let held = self.oracle.get(&shard).is_some_and(|o| o.held);
                self.line(format!("host: IDENTIFY shard {shard} on socket#{}", conn.0));
                if held {
                    self.violate(format!(
                        "shard {shard} identified although it held a resumable session (socket#{})",
                        conn.0
                    ));
                }
                self.oracle.entry(shard).or_default().held = false;
                self.fire(Trigger::Handshake, conn);
            }
            Some(6) => {
                self.resumes += 1;
                let sid = v["d"]["session_id"].as_str().unwrap_or("").to_owned();
                let shard = self.session_shard.get(&sid).copied();
                self.line(format!("host: RESUME {sid} on socket#{}", conn.0));
                if let Some(s) = shard {
                    self.assign(conn, s);
                    if !self.lost_conns.contains(&conn) {
                        self.oracle.entry(s).or_default().held = true;
                    }
                }
                self.fire(Trigger::Handshake, conn);
            }
            Some(1) => {
                // A heartbeat carrying a seq on a socket with a session: the client knows it.
                if v["d"].as_u64().is_some_and(|s| s >= 1)
                    && !self.lost_conns.contains(&conn)
                    && let Some(s) = self.shard_of(conn)
                    && self
                        .mock
                        .connections()
                        .iter()
                        .any(|c| c.id == conn && c.session_id.is_some())
                {
                    self.oracle.entry(s).or_default().held = true;
                }
            }
            _ => {}
        }
    }

    /// A client close frame of 1000 or 1001 ends the session (Discord's rule, the mock's too).
    fn watch_client_close(&mut self, conn: TransportId, code: u16) {
        self.line(format!(
            "host: client close frame {code} on socket#{}",
            conn.0
        ));
        if (code == 1000 || code == 1001)
            && let Some(s) = self.shard_of(conn)
        {
            self.oracle.entry(s).or_default().held = false;
        }
    }

    fn fire(&mut self, on: Trigger, conn: TransportId) {
        let mut keep = Vec::new();
        for (t, action) in std::mem::take(&mut self.armed) {
            if t != on {
                keep.push((t, action));
                continue;
            }
            self.line(format!("host: armed {action} fires on socket#{}", conn.0));
            match action {
                Action::FaultOn { fault, .. } => {
                    self.mock.inject(now(), Target::Connection(conn), fault);
                }
                _ => {
                    let _ = self.restart_on.send(self.shard_of(conn).unwrap_or(0));
                }
            }
        }
        self.armed = keep;
    }
}

/// Serves the mock gateway behind a [`Connector`]: every connect is an in-memory pipe whose
/// far end runs a WebSocket server feeding the mock.
#[derive(Clone)]
pub struct PeerHost {
    state: Shared<HostState>,
    timer: Arc<Notify>,
}

impl std::fmt::Debug for PeerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHost").finish_non_exhaustive()
    }
}

impl PeerHost {
    fn new(
        mock: MockGateway,
        single_shard: bool,
        record: Shared<Record>,
        restart_on: mpsc::UnboundedSender<u32>,
    ) -> PeerHost {
        let host = PeerHost {
            state: Arc::new(Mutex::new(HostState {
                mock,
                routes: BTreeMap::new(),
                sockets: BTreeMap::new(),
                next_conn: 0,
                clock: 0,
                single_shard,
                oracle: BTreeMap::new(),
                session_shard: BTreeMap::new(),
                armed: Vec::new(),
                restart_on,
                identifies: 0,
                resumes: 0,
                stopped: BTreeSet::new(),
                lost_conns: BTreeSet::new(),
                record,
            })),
            timer: Arc::new(Notify::new()),
        };
        tokio::spawn(host.clone().run_timer());
        host
    }

    /// Run `f` on the host state at the current virtual time, then carry out the mock's
    /// actions and wake the timer.
    fn with<R>(&self, f: impl FnOnce(&mut HostState, Instant) -> R) -> R {
        let r = {
            let mut s = lock(&self.state);
            let r = f(&mut s, now());
            s.pump();
            r
        };
        self.timer.notify_one();
        r
    }

    async fn run_timer(self) {
        loop {
            let deadline = lock(&self.state).mock.poll_timeout();
            match deadline {
                Some(at) => {
                    tokio::select! {
                        biased;
                        () = self.timer.notified() => continue,
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => {
                    self.timer.notified().await;
                    continue;
                }
            }
            self.with(|s, now| s.mock.handle_timeout(now));
        }
    }

    // tungstenite's header callback returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    async fn serve(self, far: ServerEnd, id: TransportId) {
        let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let io = Arc::new(Mutex::new(far));
        let gate = Gate {
            io: io.clone(),
            mute: mute.clone(),
        };
        let mut path = String::from("/");
        let accepted = tokio_tungstenite::accept_hdr_async(
            gate,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                path = req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
                Ok(resp)
            },
        )
        .await;
        let Ok(ws) = accepted else {
            self.with(|s, _| s.closed(id, "server (upgrade failed)"));
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let dropped = Arc::new(Notify::new());
        let registered = self.with(|s, now| {
            s.routes.insert(
                id,
                Route {
                    tx,
                    mute: mute.clone(),
                    dropped: dropped.clone(),
                },
            );
            if s.mock.on_connect(now, id, &path) {
                if let Some(r) = s.sockets.get_mut(&id) {
                    r.registered = true;
                }
                s.fire(Trigger::Opened, id);
                true
            } else {
                s.routes.remove(&id);
                false
            }
        });
        if !registered {
            drop(ws);
            drop(io);
            return;
        }
        let (mut sink, mut stream) = ws.split();
        let writer_host = self.clone();
        let writer_drop = dropped.clone();
        let writer = tokio::spawn(async move {
            while let Some(action) = rx.recv().await {
                let msg = match action {
                    PeerAction::Drop => break,
                    PeerAction::Send(Message::Text(b)) => match Utf8Bytes::try_from(b.clone()) {
                        Ok(t) => WsMessage::Text(t),
                        Err(_) => WsMessage::Binary(b),
                    },
                    PeerAction::Send(Message::Binary(b)) => WsMessage::Binary(b),
                    PeerAction::Close(1005 | 1006 | 1015) => WsMessage::Close(None),
                    PeerAction::Close(code) => WsMessage::Close(Some(CloseFrame {
                        code: WsCloseCode::from(code),
                        reason: Utf8Bytes::from_static(""),
                    })),
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
                if rx.is_empty() {
                    writer_host.with(|s, now| {
                        s.mock.pull_stream(now, id);
                    });
                }
            }
            writer_drop.notify_one();
            rx
        });
        let mut server_dropped = false;
        loop {
            tokio::select! {
                biased;
                () = dropped.notified() => {
                    server_dropped = true;
                    break;
                }
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        let bytes = bytes::Bytes::from(text);
                        self.with(|s, now| {
                            s.watch_client(id, &bytes);
                            s.mock.on_message(now, id, Message::Text(bytes));
                        });
                    }
                    Some(Ok(WsMessage::Binary(bin))) => {
                        self.with(|s, now| s.mock.on_message(now, id, Message::Binary(bin)));
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        self.with(|s, now| {
                            s.watch_client_close(id, code);
                            s.mock.on_close_frame(now, id, code);
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        drop(stream);
        // Ends the writer: its route goes, so its channel closes.
        let muted = mute.load(std::sync::atomic::Ordering::SeqCst);
        if server_dropped || !muted {
            self.with(|s, _| {
                s.routes.remove(&id);
            });
            writer.abort();
            let _ = writer.await;
        } else {
            // Never answer, never close: hold the pipe until the client lets go (or the mock
            // drops it).
            writer.abort();
            let _ = writer.await;
            hold_open(&io, &dropped).await;
            self.with(|s, _| {
                s.routes.remove(&id);
            });
        }
        drop(io);
        self.with(|s, now| {
            s.closed(id, "server");
            if let Some(r) = s.sockets.get_mut(&id)
                && r.registered
            {
                r.registered = false;
                s.mock.on_disconnect(now, id);
            }
        });
    }
}

/// Read and discard until the client lets go of the pipe or the mock drops it.
async fn hold_open(io: &Arc<Mutex<ServerEnd>>, dropped: &Notify) {
    let mut buf = vec![0u8; 4096];
    loop {
        let read = std::future::poll_fn(|cx| {
            let mut g = lock(io);
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut g.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        });
        tokio::select! {
            biased;
            () = dropped.notified() => return,
            r = read => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

impl Connector for PeerHost {
    fn connect(&self, _conn: TransportId, _host: &str, _port: u16) -> ConnectorFuture {
        let (client, far) = tokio::io::duplex(64 << 10);
        let id = {
            let mut s = lock(&self.state);
            s.next_conn += 1;
            let id = TransportId(s.next_conn);
            let t = s.tick();
            s.sockets.insert(
                id,
                SocketRec {
                    opened: t,
                    closed: None,
                    shard: None,
                    registered: false,
                },
            );
            s.line(format!("host: socket#{} connects", id.0));
            if s.single_shard {
                s.assign(id, 0);
            }
            id
        };
        let far = ServerEnd {
            io: far,
            host: Arc::downgrade(&self.state),
            id,
        };
        let client = ClientEnd {
            io: client,
            host: Arc::downgrade(&self.state),
            id,
        };
        tokio::spawn(self.clone().serve(far, id));
        Box::pin(async move { Ok(Box::new(client) as BoxByteStream) })
    }
}

/// The client's end of a pipe: letting go of it is the client closing TCP, recorded at once.
struct ClientEnd {
    io: DuplexStream,
    host: std::sync::Weak<Mutex<HostState>>,
    id: TransportId,
}

impl Drop for ClientEnd {
    fn drop(&mut self) {
        if let Some(host) = self.host.upgrade() {
            lock(&host).closed(self.id, "client");
        }
    }
}

impl AsyncRead for ClientEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientEnd {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server's end of a pipe: letting go of it is the server closing TCP.
struct ServerEnd {
    io: DuplexStream,
    host: std::sync::Weak<Mutex<HostState>>,
    id: TransportId,
}

impl Drop for ServerEnd {
    fn drop(&mut self) {
        if let Some(host) = self.host.upgrade() {
            lock(&host).closed(self.id, "server");
        }
    }
}

/// The server's end as the WebSocket library sees it: while the mock mutes the socket, every
/// write is swallowed (no pong, no close reply) and shutdown keeps the pipe open.
struct Gate {
    io: Arc<Mutex<ServerEnd>>,
    mute: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    fn muted(&self) -> bool {
        self.mute.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = lock(&self.io);
        Pin::new(&mut g.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.muted() {
            return Poll::Ready(Ok(buf.len()));
        }
        let mut g = lock(&self.io);
        Pin::new(&mut g.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.muted() {
            return Poll::Ready(Ok(()));
        }
        let mut g = lock(&self.io);
        Pin::new(&mut g.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The pipe closes when the socket task lets go of its last reference.
        Poll::Ready(Ok(()))
    }
}

// ---- the application ----------------------------------------------------------------------

/// What the application read from one shard, and the checks on it.
#[derive(Debug, Default, Clone)]
struct AppShard {
    session: Option<String>,
    last: u64,
    in_session: u64,
    gap_reported: bool,
    ready_once: bool,
    expect_give_up: bool,
    gave_up: bool,
    flushed: bool,
    delivered: u64,
    gaps: u64,
}

struct App {
    shards: BTreeMap<u32, AppShard>,
    stall_until: Option<tokio::time::Instant>,
    record: Shared<Record>,
}

impl App {
    fn read(&mut self, ev: &ShardEvent) {
        let id = ev.shard;
        let mut rec = lock(&self.record);
        let a = self.shards.entry(id).or_default();
        match &ev.kind {
            ShardEventKind::Ready(r) => {
                rec.line(format!("app s{id}: READY {} seq {:?}", r.session_id, r.seq));
                if a.session.is_some() && a.in_session > 0 && !a.gap_reported {
                    rec.violate(format!(
                        "shard {id}: a new session started while the previous one, having delivered {} events, was not reported lost",
                        a.in_session
                    ));
                }
                if r.seq != Some(1) {
                    rec.violate(format!("shard {id}: READY carries seq {:?}, not 1", r.seq));
                }
                a.session = Some(r.session_id.clone());
                a.last = r.seq.unwrap_or(0);
                a.in_session = 0;
                a.gap_reported = false;
                a.ready_once = true;
            }
            ShardEventKind::Resumed(r) => {
                rec.line(format!(
                    "app s{id}: RESUMED {} seq {:?}",
                    r.session_id, r.seq
                ));
                if a.session.as_deref() != Some(r.session_id.as_str()) {
                    rec.violate(format!(
                        "shard {id}: RESUMED names {} but the session is {:?}",
                        r.session_id, a.session
                    ));
                }
                if let Some(seq) = r.seq {
                    Self::next_seq(&mut rec, id, a, seq, "RESUMED");
                }
                a.ready_once = true;
            }
            ShardEventKind::Dispatch(d) => {
                rec.line(format!("app s{id}: #{} {}", d.seq, d.event_type));
                Self::next_seq(&mut rec, id, a, d.seq, &d.event_type);
                a.in_session += 1;
                a.delivered += 1;
                if d.event_type == FLUSH_EVENT {
                    a.flushed = true;
                }
            }
            ShardEventKind::Gap(g) => {
                rec.line(format!(
                    "app s{id}: gap {} last {}",
                    g.session_id, g.last_seq
                ));
                a.gaps += 1;
                if a.session.as_deref() != Some(g.session_id.as_str()) || g.last_seq != a.last {
                    rec.violate(format!(
                        "shard {id}: gap names {} last seq {}, but the session read is {:?} last seq {}",
                        g.session_id, g.last_seq, a.session, a.last
                    ));
                }
                if a.gap_reported {
                    rec.violate(format!("shard {id}: a lost session reported twice"));
                }
                a.gap_reported = true;
            }
            ShardEventKind::SocketOpened => {
                rec.line(format!("app s{id}: socket opened"));
                if a.expect_give_up {
                    rec.violate(format!(
                        "shard {id}: a fatal close code did not make the client give up (a socket opened)"
                    ));
                    a.expect_give_up = false;
                }
            }
            ShardEventKind::SocketClosed { code } => {
                rec.line(format!("app s{id}: socket closed {code:?}"));
                if code.is_some_and(|c| FATAL_CODES.contains(&c)) {
                    a.expect_give_up = true;
                }
            }
            ShardEventKind::GaveUp { reason } => {
                rec.line(format!(
                    "app s{id}: gave up: {}",
                    handover_runtime::describe_give_up(*reason)
                ));
                a.expect_give_up = false;
                a.gave_up = true;
            }
            ShardEventKind::StateChanged { from, to } => {
                rec.line(format!("app s{id}: {} -> {}", from.name(), to.name()));
            }
            ShardEventKind::Reconnecting { mode, delay } => {
                let delay_ms = delay.as_millis();
                rec.line(format!("app s{id}: reconnect {mode:?} in {delay_ms} ms"));
            }
            _ => {}
        }
    }

    /// Check that `seq` follows the last one read in the session, then follow it.
    fn next_seq(rec: &mut Record, id: u32, a: &mut AppShard, seq: u64, what: &str) {
        if a.session.is_none() {
            rec.violate(format!("shard {id}: {what} seq {seq} outside any session"));
        } else if seq <= a.last {
            rec.violate(format!(
                "shard {id}: {what} seq {seq} delivered again (last was {})",
                a.last
            ));
        } else if seq > a.last + 1 {
            rec.violate(format!(
                "shard {id}: {what} seq {seq} delivered with seqs {}..{} missing",
                a.last + 1,
                seq - 1
            ));
        }
        // Follow the session from what was read, so one fault is reported once.
        a.last = a.last.max(seq);
    }
}

enum Source {
    Shard(Shard),
    Fleet(Fleet),
}

impl Source {
    async fn next(&mut self) -> Option<ShardEvent> {
        match self {
            Source::Shard(s) => s.next_event().await,
            Source::Fleet(f) => f.next_event().await,
        }
    }
}

async fn read_events(mut source: Source, app: Shared<App>) {
    loop {
        let stall = lock(&app).stall_until;
        if let Some(until) = stall
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep_until(until).await;
            continue;
        }
        let Some(ev) = source.next().await else {
            return;
        };
        lock(&app).read(&ev);
    }
}

// ---- one run ------------------------------------------------------------------------------

/// Run `scenario` through the production shell with default options.
pub fn run(scenario: &Scenario) -> ShellResult {
    run_with(scenario, &ShellOptions::default())
}

/// Run `scenario` through the production shell: a fresh current-thread tokio runtime on a
/// paused clock, the [`PeerHost`] serving the mock, and a [`Shard`] or a [`Fleet`] as
/// [`ShellPlan::generate`] decides.
pub fn run_with(scenario: &Scenario, options: &ShellOptions) -> ShellResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            return ShellResult {
                outcome: empty_outcome(scenario.seed, 0),
                violations: vec![ShellViolation {
                    at: Duration::ZERO,
                    what: format!("cannot build a tokio runtime: {e}"),
                }],
                trace: Vec::new(),
            };
        }
    };
    let plan = ShellPlan::generate(scenario);
    rt.block_on(drive(scenario, &plan, options))
}

fn empty_outcome(seed: u64, shards: u32) -> ShellOutcome {
    ShellOutcome {
        seed,
        shards,
        trace_hash: 0,
        elapsed: Duration::ZERO,
        sockets: 0,
        max_open_per_shard: 0,
        identifies: 0,
        resumes: 0,
        delivered: 0,
        gaps: 0,
        gave_up: 0,
    }
}

struct Driver<'a> {
    scenario: &'a Scenario,
    plan: &'a ShellPlan,
    host: PeerHost,
    app: Shared<App>,
    record: Shared<Record>,
    handles: Vec<ShardHandle>,
    lifecycle: Config,
    rng: fastrand::Rng,
    stopped: BTreeSet<u32>,
    streams: Vec<StreamId>,
    data: u64,
}

async fn drive(scenario: &Scenario, plan: &ShellPlan, options: &ShellOptions) -> ShellResult {
    let p = &scenario.params;
    let tight = p.timers == Timers::Tight;
    let origin = now();
    let record = Arc::new(Mutex::new(Record::new(origin)));
    let mock = MockGateway::new(MockConfig {
        heartbeat_interval: p.heartbeat,
        heartbeat_grace: Some(if tight { ms(500) } else { ms(5_000) }),
        resume_window: p.resume_window,
        identify_window: p.identify_window,
        replay_buffer: p.replay_buffer,
        close_timeout: if tight { ms(500) } else { ms(5_000) },
        send_window: if p.heartbeat < ms(1_000) {
            ms(15_000)
        } else {
            ms(60_000)
        },
        shards: plan.shards,
        seed: scenario.seed.rotate_left(23) ^ 0x0073_6865_6c6c,
        ..MockConfig::default()
    });
    let (restart_tx, mut restart_rx) = mpsc::unbounded_channel();
    let host = PeerHost::new(mock, plan.shards == 1, record.clone(), restart_tx);
    let mut transport = TransportConfig {
        connector: Some(SharedConnector::new(host.clone())),
        ..TransportConfig::default()
    };
    if let Some(tweak) = options.tweak_transport {
        tweak(&mut transport);
    }
    let mut lifecycle = match p.timers {
        Timers::Production => Config {
            close_rules: handover_protocol::CLOSE_RULES,
            ..Config::default()
        },
        Timers::Tight => crate::lifecycle(),
    };
    lifecycle.max_attempts = p.max_attempts;
    let identify = IdentifyQueueConfig {
        bucket_window: p.identify_window,
        budget: p
            .permits
            .and_then(|pp| pp.budget)
            .map(|(max_identifies, per)| IdentifyBudget {
                max_identifies,
                per,
            }),
        ..IdentifyQueueConfig::default()
    };
    let seed = scenario.seed ^ 0x9e37_79b9_7f4a_7c15;
    let (source, handles) = if plan.shards == 1 {
        let mut c = ShardConfig::new(crate::gateway(GATEWAY_URL, 0, 1));
        if tight {
            c.lifecycle = lifecycle;
        } else {
            c.lifecycle.max_attempts = p.max_attempts;
        }
        c.transport = transport;
        c.seed = Some(seed);
        c.identify = identify;
        // The simulation's gateway settings satisfy every rule `start` checks.
        let shard = Shard::start(c).expect("the simulation's shard config is valid");
        let h = shard.handle();
        (Source::Shard(shard), vec![h])
    } else {
        let mut c = FleetConfig::new(
            crate::gateway(GATEWAY_URL, 0, plan.shards),
            ShardSelection::All { total: plan.shards },
        );
        c.lifecycle = lifecycle;
        c.transport = transport;
        c.seed = Some(seed);
        c.identify = identify;
        // The simulation's fleet config satisfies every rule `start` checks.
        let fleet = Fleet::start(c).expect("the simulation's fleet config is valid");
        let hs = fleet
            .shard_ids()
            .filter_map(|id| fleet.shard(id).cloned())
            .collect();
        (Source::Fleet(fleet), hs)
    };
    let app = Arc::new(Mutex::new(App {
        shards: (0..plan.shards).map(|i| (i, AppShard::default())).collect(),
        stall_until: None,
        record: record.clone(),
    }));
    let reader = tokio::spawn(read_events(source, app.clone()));
    let mut d = Driver {
        scenario,
        plan,
        host,
        app,
        record: record.clone(),
        handles,
        lifecycle,
        rng: fastrand::Rng::with_seed(scenario.seed ^ 0x6472_6976_6572),
        stopped: BTreeSet::new(),
        streams: Vec::new(),
        data: 0,
    };
    d.play(&mut restart_rx).await;
    for h in &d.handles {
        h.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    d.finish(origin)
}

impl Driver<'_> {
    fn violate(&self, what: String) {
        lock(&self.record).violate(what);
    }

    fn line(&self, what: String) {
        lock(&self.record).line(what);
    }

    fn all_ready(&self) -> bool {
        lock(&self.app).shards.values().all(|a| a.ready_once)
    }

    fn pick_shard(&mut self) -> u32 {
        self.rng.u32(0..self.plan.shards)
    }

    async fn play(&mut self, restart_rx: &mut mpsc::UnboundedReceiver<u32>) {
        let p = &self.scenario.params;
        let tight = p.timers == Timers::Tight;
        // 1. Until every shard's first READY (at most 120 virtual seconds, plus the identify
        // queue's spacing of the fleet's shards).
        let first = tokio::time::Instant::now()
            + Duration::from_secs(120)
            + p.identify_window * self.plan.shards;
        while !self.all_ready() {
            if tokio::time::Instant::now() > first {
                self.violate("a shard never became ready".to_owned());
                return;
            }
            tokio::time::sleep(ms(50)).await;
        }
        // 2. The fault phase.
        let t0 = tokio::time::Instant::now();
        let stalls: Vec<_> = self.plan.stalls.clone();
        let mut stall_iter = stalls.iter().peekable();
        let mut last = t0;
        for s in &self.scenario.schedule {
            // One action per virtual millisecond at most: the runtime is idle before each one,
            // so no command of the scenario races a frame at the same instant (see `SETTLE`).
            let at = (t0 + s.at).max(last + SETTLE);
            loop {
                while let Some(&&(st, len)) = stall_iter.peek()
                    && t0 + st <= at
                {
                    tokio::time::sleep_until(t0 + st).await;
                    self.line(format!("scenario: the application stalls for {len:?}"));
                    lock(&self.app).stall_until = Some(t0 + st + len);
                    stall_iter.next();
                }
                tokio::select! {
                    biased;
                    Some(shard) = restart_rx.recv() => {
                        tokio::time::sleep(SETTLE).await;
                        self.restart(shard).await;
                    }
                    () = tokio::time::sleep_until(at) => break,
                }
            }
            self.act(s.action).await;
            last = tokio::time::Instant::now();
        }
        tokio::time::sleep_until(t0 + p.fault_phase).await;
        // 3. End of faults.
        self.line("scenario: end of faults".to_owned());
        {
            let mut h = lock(&self.host.state);
            h.armed.clear();
            for id in std::mem::take(&mut self.streams) {
                h.mock.cancel_stream(id);
            }
        }
        lock(&self.app).stall_until = None;
        while restart_rx.try_recv().is_ok() {}
        let ids: Vec<u32> = (0..self.plan.shards).collect();
        for &id in &ids {
            let gave_up = lock(&self.app).shards.get(&id).is_some_and(|a| a.gave_up);
            if self.stopped.contains(&id) || (gave_up && p.end_with_start) {
                self.start(id).await;
            }
        }
        // 4. Quiet phase: a marker per shard, sent again while it is not read.
        let round = if tight { ms(1_000) } else { ms(30_000) };
        let quiet = if tight {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(15 * 60)
        };
        let end = tokio::time::Instant::now() + quiet;
        for a in lock(&self.app).shards.values_mut() {
            a.flushed = false;
        }
        let mut next_marker = tokio::time::Instant::now();
        loop {
            let pending: Vec<u32> = {
                let app = lock(&self.app);
                app.shards
                    .iter()
                    .filter(|(_, a)| !a.flushed)
                    .map(|(id, _)| *id)
                    .collect()
            };
            let send = tokio::time::Instant::now() >= next_marker;
            let mut waiting = false;
            for id in pending {
                let gave_up = lock(&self.app).shards.get(&id).is_some_and(|a| a.gave_up);
                if gave_up && !p.end_with_start {
                    continue;
                }
                waiting = true;
                if !send {
                    continue;
                }
                if gave_up {
                    self.start(id).await;
                }
                self.host.with(|s, now| {
                    s.mock
                        .dispatch(now, ShardKey::new(0, id), FLUSH_EVENT, &json!({}));
                });
            }
            if send {
                next_marker = tokio::time::Instant::now() + round;
            }
            if !waiting {
                break;
            }
            if tokio::time::Instant::now() >= end {
                self.violate("a shard did not recover within the quiet phase".to_owned());
                break;
            }
            tokio::time::sleep(ms(100)).await;
        }
        // 5. Nothing lost in the final session: what the mock wrote for it (a marker sent
        // again may still sit in a delay fault) reaches the application.
        let settle = tokio::time::Instant::now() + 2 * p.heartbeat + ms(10_000);
        loop {
            let lag = self.final_lag();
            if lag.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= settle {
                for what in lag {
                    self.violate(what);
                }
                break;
            }
            tokio::time::sleep(ms(100)).await;
        }
        // 6. A bounded stop of every shard, seen from the server.
        for id in ids {
            self.stop(id, StopIntent::KeepResumable).await;
        }
    }

    /// Shards whose application has not read everything the mock wrote in its final session.
    fn final_lag(&self) -> Vec<String> {
        let counters = lock(&self.host.state).mock.counters();
        let app = lock(&self.app).shards.clone();
        let mut out = Vec::new();
        for (id, a) in &app {
            let (true, Some(sid)) = (a.flushed, &a.session) else {
                continue;
            };
            let written = counters
                .shard(ShardKey::new(0, *id))
                .sessions
                .get(sid)
                .and_then(|s| s.runs().iter().map(|r| r.1).max())
                .unwrap_or(0);
            if written != a.last {
                out.push(format!(
                    "shard {id}: the mock wrote up to seq {written} in the final session {sid}, the application read up to {}",
                    a.last
                ));
            }
        }
        out
    }

    async fn restart(&mut self, shard: u32) {
        lock(&self.host.state).stopped.remove(&shard);
        self.stopped.remove(&shard);
        self.line(format!("scenario: restart shard {shard}"));
        if let Some(h) = self.handles.get(shard as usize) {
            let _ = h.restart(RestartReason::HealthMonitor).await;
        }
    }

    async fn start(&mut self, shard: u32) {
        lock(&self.host.state).stopped.remove(&shard);
        self.stopped.remove(&shard);
        if let Some(a) = lock(&self.app).shards.get_mut(&shard) {
            a.gave_up = false;
        }
        self.line(format!("scenario: start shard {shard}"));
        if let Some(h) = self.handles.get(shard as usize) {
            let _ = h.start().await;
        }
    }

    async fn stop(&mut self, shard: u32, intent: StopIntent) {
        self.line(format!("scenario: stop shard {shard} ({intent:?})"));
        if intent == StopIntent::EndSession {
            lock(&self.host.state).oracle.entry(shard).or_default().held = false;
        }
        let Some(h) = self.handles.get(shard as usize).cloned() else {
            return;
        };
        let began = tokio::time::Instant::now();
        let bound = self.lifecycle.drain_deadline.max(ms(5_000)) + ms(1_000);
        match tokio::time::timeout(bound * 4, h.stop(intent)).await {
            Ok(_) => {
                let took = began.elapsed();
                if took > bound {
                    self.violate(format!(
                        "shard {shard}: stop took {took:?}, more than the drain deadline allows ({bound:?})"
                    ));
                }
            }
            Err(_) => self.violate(format!("shard {shard}: stop did not return")),
        }
        self.stopped.insert(shard);
        let mut host = lock(&self.host.state);
        host.stopped.insert(shard);
        let open: Vec<u64> = host
            .sockets
            .iter()
            .filter(|(_, r)| r.shard == Some(shard) && r.closed.is_none())
            .map(|(id, _)| id.0)
            .collect();
        drop(host);
        if !open.is_empty() {
            self.violate(format!(
                "shard {shard}: socket(s) {open:?} still open at the server after stop returned"
            ));
        }
    }

    async fn act(&mut self, action: Action) {
        self.line(format!("scenario: {action}"));
        match action {
            Action::Fault(f) => {
                self.host.with(|s, now| s.mock.inject(now, Target::All, f));
            }
            Action::ShardFault(f) => {
                self.host
                    .with(|s, now| s.mock.inject(now, Target::Shard(ShardKey::new(0, 0)), f));
            }
            Action::Dispatch(n) => {
                for _ in 0..n {
                    self.data += 1;
                    let data = json!({ "n": self.data });
                    let shards = self.plan.shards;
                    self.host.with(|s, now| {
                        for id in 0..shards {
                            s.mock
                                .dispatch(now, ShardKey::new(0, id), "MESSAGE_CREATE", &data);
                        }
                    });
                }
            }
            Action::Stream { count, every } => {
                let spec = StreamSpec {
                    shard: ShardKey::new(0, 0),
                    event: "TYPING_START".to_owned(),
                    data: json!({ "stream": true }),
                    count,
                    rate: every.map_or(StreamRate::AsFastAsRead, StreamRate::Every),
                };
                let id = self.host.with(|s, now| s.mock.stream(now, spec));
                self.streams.push(id);
            }
            Action::Restart => {
                let shard = self.pick_shard();
                self.restart(shard).await;
            }
            Action::Stop(intent) => {
                let shard = self.pick_shard();
                self.stop(shard, intent).await;
            }
            Action::Start => {
                let shard = self.pick_shard();
                self.start(shard).await;
            }
            Action::Presence => {
                let shard = self.pick_shard();
                if let Some(h) = self.handles.get(shard as usize) {
                    let cmd =
                        Command::UpdatePresence(UpdatePresence::status(PresenceStatus::Online));
                    let _ = h.send(cmd).await;
                }
            }
            Action::FaultOn { on, .. } | Action::RestartOn(on) => {
                lock(&self.host.state).armed.push((on, action));
            }
        }
    }

    fn finish(self, origin: Instant) -> ShellResult {
        let host = lock(&self.host.state);
        let app = lock(&self.app);
        let record = lock(&self.record);
        let outcome = ShellOutcome {
            seed: self.scenario.seed,
            shards: self.plan.shards,
            trace_hash: record.hash,
            elapsed: now().saturating_duration_since(origin),
            sockets: host.next_conn,
            max_open_per_shard: host.oracle.values().map(|o| o.max_open).max().unwrap_or(0),
            identifies: host.identifies,
            resumes: host.resumes,
            delivered: app.shards.values().map(|a| a.delivered).sum(),
            gaps: app.shards.values().map(|a| a.gaps).sum(),
            gave_up: app.shards.values().filter(|a| a.gave_up).count() as u32,
        };
        ShellResult {
            outcome,
            violations: record.violations.clone(),
            trace: record.trace.clone(),
        }
    }
}
