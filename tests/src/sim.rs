//! Deterministic simulation of the whole client stack in memory.
//!
//! One run puts the real lifecycle core ([`Connection`](handover_core::Connection)), the real Discord codec
//! ([`DiscordCodec`]) and the sans-IO mock gateway ([`MockGateway`]) together in a
//! [`MemoryDriver`], on a virtual clock, and plays a seeded [`Scenario`] against them: server
//! faults (zombies, dropped TCP, ignored close frames, op 7, op 9, close codes of every class,
//! delays, garbage frames), dispatches and streams, and what an application and its health
//! monitor do (bursts of restarts, stop and start, presence updates). Every step is checked
//! against the invariants listed in `docs/simulation.md`; a violation names the seed, and the
//! same seed replays the same run exactly ([`Outcome::trace_hash`]).
//!
//! ```
//! use handover_tests::sim::{Scenario, run};
//!
//! let scenario = Scenario::generate(7);
//! let result = run(&scenario);
//! assert!(result.passed(), "{}", result.report(&scenario));
//! assert_eq!(result.outcome, run(&scenario).outcome);
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use handover_core::{
    Backoff, Codec, Config, Decoded, Event, GiveUpReason, Message, OpenMode, Payload, Phase,
    RestartReason, Signal, State, StopIntent, TransportId,
};
use handover_mock::{
    Fault, Garbage, MockConfig, MockGateway, ShardKey, StreamId, StreamRate, StreamSpec, Target,
};
use handover_protocol::{
    CLOSE_RULES, Command, Compression, DiscordCodec, GatewayEvent, PresenceStatus, UpdatePresence,
};
use handover_transport_ws::memory::{
    MemoryConfig, MemoryDriver, MemoryPeer, PeerAction, PermitDecision,
};
use handover_transport_ws::{DriverEvent, TransportError, TransportEvent};

/// Seeds the test suite runs by default.
pub const DEFAULT_SEEDS: u64 = 5000;

/// The URL the mock announces and the codec connects to (never resolved: everything is in memory).
const GATEWAY_URL: &str = "ws://mock-gateway.invalid";

/// The event type of the dispatch that ends a run.
const FLUSH_EVENT: &str = "SIM_FLUSH";

/// Steps one run may take before it is declared runaway.
const MAX_STEPS: u64 = 500_000;

/// Violations recorded per run; later ones are counted, not kept.
const MAX_VIOLATIONS: usize = 16;

/// Dispatches one scenario may ask for in total (kept below the smallest default replay buffer
/// so a run without session-losing faults never overflows it).
const DISPATCH_BUDGET: u64 = 600;

/// Close codes after which Discord forgets the session (from Discord's documentation, written
/// out here rather than taken from the protocol layer, so the checker is independent of it).
const NEW_SESSION_CODES: [u16; 2] = [4007, 4009];
/// Close codes after which reconnecting cannot help.
const FATAL_CODES: [u16; 6] = [4004, 4010, 4011, 4012, 4013, 4014];
/// Close codes a server may send that keep the session resumable.
const RESUMABLE_CODES: [u16; 10] = [1000, 1001, 1011, 4000, 4001, 4002, 4003, 4005, 4008, 3000];

/// How the checker classifies a close code the peer sent.
fn loses_session(code: Option<u16>) -> bool {
    code.is_some_and(|c| NEW_SESSION_CODES.contains(&c) || FATAL_CODES.contains(&c))
}

fn is_fatal(code: Option<u16>) -> bool {
    code.is_some_and(|c| FATAL_CODES.contains(&c))
}

// ---- the scenario ----------------------------------------------------------------------------

/// Which lifecycle timers the client runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timers {
    /// The core's documented defaults (Discord-sized: 5 s drain, backoff 250 ms to 60 s).
    Production,
    /// The test timers of [`crate::lifecycle`] (150 ms drain, backoff 10 to 200 ms), against a
    /// fast-beating mock: many more lifecycle turns per virtual minute.
    Tight,
}

/// Identify permits, as a runtime's identify queue would grant them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PermitPlan {
    /// At most one permit per this window (the mock's identify window: the mock should then
    /// never refuse an identify).
    pub window: Duration,
    /// At most this many permits per this long; more are denied (an identify budget guard).
    pub budget: Option<(u32, Duration)>,
}

/// The knobs of one run, drawn from its seed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Params {
    /// Lifecycle timers.
    pub timers: Timers,
    /// The mock's heartbeat interval.
    pub heartbeat: Duration,
    /// One-way latency of the in-memory link.
    pub latency: Duration,
    /// How long the mock keeps a disconnected session resumable.
    pub resume_window: Duration,
    /// The mock's identify window (one identify per window).
    pub identify_window: Duration,
    /// Dispatches the mock keeps per session for replay.
    pub replay_buffer: usize,
    /// Transport compression.
    pub compression: Compression,
    /// Identify permits, when new sessions are gated.
    pub permits: Option<PermitPlan>,
    /// The schedule may contain faults that end the session (op 9 false, 4007/4009 closes,
    /// stops that end the session, outages longer than the resume window, a small replay
    /// buffer). When `false`, the run must spend exactly one identify.
    pub lossy: bool,
    /// The schedule may contain fatal closes (4004, 4010-4014).
    pub fatal: bool,
    /// Virtual time during which actions are scheduled (after the first READY).
    pub fault_phase: Duration,
    /// Whether the operator starts the client once the faults stop, even after it gave up.
    pub end_with_start: bool,
    /// The client gives up after this many consecutive failed attempts.
    pub max_attempts: Option<u32>,
}

/// One thing the scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A fault on every open connection of the mock.
    Fault(Fault),
    /// A fault on the connections the mock counts for shard 0 (identified or resumed ones).
    ShardFault(Fault),
    /// This many dispatches to shard 0 at once.
    Dispatch(u32),
    /// A bounded stream of dispatches (`every: None` runs as fast as the client reads).
    Stream {
        /// Dispatches in total.
        count: u64,
        /// Spacing.
        every: Option<Duration>,
    },
    /// The health monitor restarts the client.
    Restart,
    /// The application stops the client.
    Stop(StopIntent),
    /// The application (or an operator) starts the client.
    Start,
    /// The application sends a presence update.
    Presence,
    /// A fault on every open connection, the next time `on` happens.
    FaultOn {
        /// When.
        on: Trigger,
        /// What.
        fault: Fault,
    },
    /// The health monitor restarts the client the next time `on` happens.
    RestartOn(Trigger),
}

/// A point in the lifecycle an armed action waits for, so faults land inside handshakes and
/// replays rather than only in steady state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A transport opened (HELLO not yet received).
    Opened,
    /// An IDENTIFY or RESUME was sent.
    Handshake,
    /// A handshake was accepted (READY or RESUMED).
    Accepted,
}

impl Trigger {
    fn bit(self) -> u8 {
        match self {
            Trigger::Opened => 1,
            Trigger::Handshake => 2,
            Trigger::Accepted => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Fault(x) => write!(f, "fault {x:?} on every socket"),
            Action::ShardFault(x) => write!(f, "fault {x:?} on shard 0"),
            Action::Dispatch(n) => write!(f, "dispatch x{n}"),
            Action::Stream { count, every } => match every {
                Some(d) => write!(f, "stream x{count} every {d:?}"),
                None => write!(f, "stream x{count} as fast as read"),
            },
            Action::Restart => write!(f, "health monitor restart"),
            Action::Stop(i) => write!(f, "stop ({i:?})"),
            Action::Start => write!(f, "start"),
            Action::Presence => write!(f, "presence update"),
            Action::FaultOn { on, fault } => write!(f, "fault {fault:?} at {on:?}"),
            Action::RestartOn(on) => write!(f, "health monitor restart at {on:?}"),
        }
    }
}

/// An action at an offset from the start of the fault phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scheduled {
    /// Offset from the first READY.
    pub at: Duration,
    /// What happens.
    pub action: Action,
}

/// A seeded run: the knobs and the schedule. Generated, never hand-written, so a seed is all
/// it takes to reproduce one; tests may still edit a generated one (the shrinker does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scenario {
    /// The seed everything was drawn from.
    pub seed: u64,
    /// The knobs.
    pub params: Params,
    /// Actions, in time order.
    pub schedule: Vec<Scheduled>,
}

fn pick<T: Copy>(rng: &mut fastrand::Rng, weighted: &[(u32, T)]) -> T {
    let total: u32 = weighted.iter().map(|w| w.0).sum();
    let mut x = rng.u32(0..total.max(1));
    for &(w, v) in weighted {
        if x < w {
            return v;
        }
        x -= w;
    }
    weighted[weighted.len() - 1].1
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = fastrand::Rng::with_seed(seed);
        let timers = pick(&mut rng, &[(3, Timers::Production), (1, Timers::Tight)]);
        let tight = timers == Timers::Tight;
        let heartbeat = if tight {
            pick(&mut rng, &[(1, ms(250)), (1, ms(1000))])
        } else {
            pick(
                &mut rng,
                &[(2, ms(41_250)), (1, ms(10_000)), (1, ms(3_000))],
            )
        };
        // The round trip stays well inside a heartbeat interval, as on any usable network.
        let latency = pick(
            &mut rng,
            &[(2, ms(0)), (2, ms(1)), (1, ms(25)), (1, ms(150))],
        )
        .min(heartbeat / 8);
        let lossy = rng.u32(0..5) != 0;
        let fatal = lossy && rng.u32(0..6) == 0;
        let resume_window = match (tight, lossy && rng.bool()) {
            (true, _) => ms(10_000),
            (false, true) => ms(60_000),
            (false, false) => ms(180_000),
        };
        let identify_window = if tight && rng.bool() {
            ms(100)
        } else {
            ms(5_000)
        };
        let replay_buffer = if lossy && rng.u32(0..4) == 0 {
            16
        } else {
            1000
        };
        let compression = pick(
            &mut rng,
            &[
                (3, Compression::None),
                (1, Compression::ZlibStream),
                (1, Compression::ZstdStream),
            ],
        );
        let permits = (rng.u32(0..10) < 3).then(|| PermitPlan {
            window: identify_window,
            budget: (rng.u32(0..3) == 0).then(|| (rng.u32(2..6), ms(60_000))),
        });
        let fault_phase = if tight {
            ms(rng.u64(15_000..=40_000))
        } else {
            ms(rng.u64(120_000..=240_000))
        };
        let params = Params {
            timers,
            heartbeat,
            latency,
            resume_window,
            identify_window,
            replay_buffer,
            compression,
            permits,
            lossy,
            fatal,
            fault_phase,
            end_with_start: rng.bool(),
            max_attempts: None,
        };
        let params = Params {
            // Giving up leaves the client down until a start: an outage that may outlive the
            // resume window, so only in lossy schedules.
            max_attempts: (lossy && rng.u32(0..8) == 0).then(|| rng.u32(2..6)),
            ..params
        };
        let schedule = Self::schedule(&mut rng, &params);
        Scenario {
            seed,
            params,
            schedule,
        }
    }

    fn schedule(rng: &mut fastrand::Rng, p: &Params) -> Vec<Scheduled> {
        let phase = u64::try_from(p.fault_phase.as_millis()).unwrap_or(u64::MAX);
        let clusters = if p.timers == Timers::Tight {
            rng.usize(3..=10)
        } else {
            rng.usize(6..=24)
        };
        let mut out = Vec::new();
        let mut dispatch_budget = DISPATCH_BUDGET;
        for _ in 0..clusters {
            let mut t = ms(rng.u64(0..phase.max(1)));
            for _ in 0..rng.usize(1..=5) {
                Self::action(rng, p, t, &mut dispatch_budget, &mut out);
                // Small gaps land faults in transitional states (draining, opening, resuming).
                t += pick(
                    rng,
                    &[
                        (3, ms(0)),
                        (2, ms(1)),
                        (2, ms(10)),
                        (2, ms(100)),
                        (2, ms(400)),
                        (2, ms(1_500)),
                        (1, ms(6_000)),
                    ],
                );
            }
        }
        out.sort_by_key(|s| s.at);
        out
    }

    fn action(
        rng: &mut fastrand::Rng,
        p: &Params,
        at: Duration,
        dispatch_budget: &mut u64,
        out: &mut Vec<Scheduled>,
    ) {
        #[derive(Clone, Copy)]
        enum Kind {
            Zombie,
            StopAcks,
            Drop,
            IgnoreClose,
            Reconnect,
            InvalidTrue,
            InvalidFalse,
            CloseResumable,
            CloseNewSession,
            CloseFatal,
            Delay,
            Garbage,
            RequestBeat,
            Dispatch,
            Stream,
            Restarts,
            StopStart,
            Start,
            Presence,
            Armed,
        }
        let lossy = u32::from(p.lossy);
        let fatal = u32::from(p.fatal);
        let kind = pick(
            rng,
            &[
                (8, Kind::Zombie),
                (5, Kind::StopAcks),
                (9, Kind::Drop),
                (5, Kind::IgnoreClose),
                (9, Kind::Reconnect),
                (5, Kind::InvalidTrue),
                (5 * lossy, Kind::InvalidFalse),
                (8, Kind::CloseResumable),
                (4 * lossy, Kind::CloseNewSession),
                (2 * fatal, Kind::CloseFatal),
                (4, Kind::Delay),
                (4, Kind::Garbage),
                (4, Kind::RequestBeat),
                (14, Kind::Dispatch),
                (4, Kind::Stream),
                (8, Kind::Restarts),
                (4, Kind::StopStart),
                (2, Kind::Start),
                (3, Kind::Presence),
                (10, Kind::Armed),
            ],
        );
        let mut push = |at: Duration, action: Action| out.push(Scheduled { at, action });
        let fault = |rng: &mut fastrand::Rng, f: Fault| {
            if rng.u32(0..4) == 0 {
                Action::ShardFault(f)
            } else {
                Action::Fault(f)
            }
        };
        let code = |rng: &mut fastrand::Rng, codes: &[u16]| codes[rng.usize(0..codes.len())];
        match kind {
            Kind::Zombie => push(at, fault(rng, Fault::Zombie)),
            Kind::StopAcks => push(at, fault(rng, Fault::StopAcks)),
            Kind::Drop => push(at, fault(rng, Fault::DropTcp)),
            Kind::IgnoreClose => push(at, fault(rng, Fault::IgnoreCloseFrames)),
            Kind::Reconnect => push(at, fault(rng, Fault::Reconnect)),
            Kind::InvalidTrue => push(at, fault(rng, Fault::InvalidSession { resumable: true })),
            Kind::InvalidFalse => push(at, fault(rng, Fault::InvalidSession { resumable: false })),
            Kind::CloseResumable => {
                let c = code(rng, &RESUMABLE_CODES);
                push(at, fault(rng, Fault::Close(c)));
            }
            Kind::CloseNewSession => {
                let c = code(rng, &NEW_SESSION_CODES);
                push(at, fault(rng, Fault::Close(c)));
            }
            Kind::CloseFatal => {
                let c = code(rng, &FATAL_CODES);
                push(at, fault(rng, Fault::Close(c)));
            }
            Kind::Delay => {
                let d = pick(
                    rng,
                    &[
                        (2, ms(0)),
                        (2, ms(50)),
                        (2, ms(700)),
                        (1, ms(4_000)),
                        (1, p.heartbeat + ms(2_000)),
                    ],
                );
                push(at, fault(rng, Fault::Delay(d)));
            }
            Kind::Garbage => {
                let g = if rng.bool() {
                    Garbage::Text
                } else {
                    Garbage::Binary
                };
                push(at, fault(rng, Fault::Garbage(g)));
            }
            Kind::RequestBeat => push(at, fault(rng, Fault::RequestHeartbeat)),
            Kind::Dispatch => {
                let n = rng.u64(1..=5).min(*dispatch_budget);
                if n > 0 {
                    *dispatch_budget -= n;
                    // `n` is at most 5.
                    push(at, Action::Dispatch(n as u32));
                }
            }
            Kind::Stream => {
                let count = rng.u64(5..=60).min(*dispatch_budget);
                if count > 0 {
                    *dispatch_budget -= count;
                    let every = pick(
                        rng,
                        &[
                            (1, None),
                            (1, Some(ms(20))),
                            (1, Some(ms(250))),
                            (1, Some(ms(2_000))),
                        ],
                    );
                    push(at, Action::Stream { count, every });
                }
            }
            Kind::Restarts => {
                let spacing = pick(
                    rng,
                    &[
                        (2, ms(0)),
                        (1, ms(1)),
                        (1, ms(50)),
                        (1, ms(400)),
                        (1, ms(3_000)),
                    ],
                );
                let mut t = at;
                for _ in 0..rng.u32(1..=6) {
                    push(t, Action::Restart);
                    t += spacing;
                }
            }
            Kind::StopStart => {
                let intent = if p.lossy && rng.u32(0..3) == 0 {
                    StopIntent::EndSession
                } else {
                    StopIntent::KeepResumable
                };
                push(at, Action::Stop(intent));
                let mut pauses: Vec<(u32, Duration)> = [
                    (2, ms(0)),
                    (2, ms(10)),
                    (2, ms(500)),
                    (2, ms(4_000)),
                    (1, ms(20_000)),
                ]
                .into_iter()
                // Without session-losing faults, an outage stays well inside the resume window.
                .filter(|&(_, d)| p.lossy || d < p.resume_window / 2)
                .collect();
                if p.lossy {
                    pauses.push((1, p.resume_window + ms(30_000)));
                }
                let pause = pick(rng, &pauses);
                // A lossy schedule may leave the client stopped until a later start.
                if !p.lossy || rng.u32(0..5) != 0 {
                    push(at + pause, Action::Start);
                }
            }
            Kind::Start => push(at, Action::Start),
            Kind::Presence => push(at, Action::Presence),
            Kind::Armed => {
                let on = pick(
                    rng,
                    &[
                        (1, Trigger::Opened),
                        (2, Trigger::Handshake),
                        (2, Trigger::Accepted),
                    ],
                );
                let fault = pick(
                    rng,
                    &[
                        (3, Some(Fault::DropTcp)),
                        (2, Some(Fault::Zombie)),
                        (2, Some(Fault::Reconnect)),
                        (2, Some(Fault::InvalidSession { resumable: true })),
                        (lossy, Some(Fault::InvalidSession { resumable: false })),
                        (2, Some(Fault::Close(4000))),
                        (lossy, Some(Fault::Close(4009))),
                        (1, Some(Fault::IgnoreCloseFrames)),
                        (1, Some(Fault::StopAcks)),
                        (1, Some(Fault::Delay(ms(300)))),
                        (3, None),
                    ],
                );
                push(
                    at,
                    match fault {
                        Some(fault) => Action::FaultOn { on, fault },
                        None => Action::RestartOn(on),
                    },
                );
            }
        }
    }

    /// Whether the schedule or the knobs may end the session (see [`Params::lossy`]).
    pub fn may_lose_sessions(&self) -> bool {
        self.params.lossy
            || self.params.fatal
            || self.schedule.iter().any(|s| match s.action {
                Action::Fault(f) | Action::ShardFault(f) | Action::FaultOn { fault: f, .. } => {
                    match f {
                        Fault::InvalidSession { resumable } => !resumable,
                        Fault::Close(c) => loses_session(Some(c)),
                        _ => false,
                    }
                }
                Action::Stop(i) => i == StopIntent::EndSession,
                _ => false,
            })
    }
}

// ---- options and results ---------------------------------------------------------------------

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Close-code rules given to the client's core (the checker keeps its own table, so a
    /// misclassification shows as a violation). Default: the protocol layer's `CLOSE_RULES`.
    pub close_rules: handover_core::CloseRules,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            close_rules: CLOSE_RULES,
        }
    }
}

/// A compact record of one run: equal outcomes mean the runs were identical (the trace hash
/// covers every event, at its virtual instant).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The scenario's seed.
    pub seed: u64,
    /// FNV-1a over every trace entry (virtual instant and record).
    pub trace_hash: u64,
    /// Driver steps taken.
    pub steps: u64,
    /// Virtual time the run covered.
    pub elapsed: Duration,
    /// Scheduled actions played.
    pub actions: usize,
    /// Connections the injected faults hit, in total.
    pub faults_hit: u64,
    /// Transports the client opened.
    pub opens: u64,
    /// IDENTIFY handshakes the client sent.
    pub identifies: u64,
    /// RESUME handshakes the client sent.
    pub resumes: u64,
    /// Dispatches delivered to the application (READY and RESUMED excluded).
    pub delivered: u64,
    /// Lost sessions reported to the application.
    pub gaps: u64,
    /// RESUMED items beyond the handshakes the core accepted: an old RESUMED replayed by the
    /// mock after its connection died before it arrived (see `docs/simulation.md`).
    pub resumed_replayed: u64,
    /// IDENTIFY payloads the mock received.
    pub mock_identifies: u64,
    /// Sessions the mock started (READY sent).
    pub mock_sessions: u64,
    /// RESUMEs the mock accepted.
    pub mock_resumes: u64,
    /// The most transports the client had at once.
    pub max_live_transports: usize,
    /// The most sockets the mock had at once.
    pub max_mock_sockets: usize,
    /// Virtual time from the end of the faults to receiving again, if it got there.
    pub recovery: Option<Duration>,
    /// The client's phase at the end.
    pub final_phase: &'static str,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// When, in virtual time since the start.
    pub at: Duration,
    /// What went wrong.
    pub what: String,
    /// Trace entries recorded before it.
    trace_len: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>10.3}s] {}", self.at.as_secs_f64(), self.what)
    }
}

/// The result of one run: its outcome, the broken invariants (none when it passed) and the trace.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The outcome record.
    pub outcome: Outcome,
    /// Broken invariants, first first.
    pub violations: Vec<Violation>,
    trace: Vec<Entry>,
    sessions: Vec<String>,
}

impl RunResult {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The whole trace, one line per entry.
    pub fn trace(&self) -> String {
        self.trace_lines(0, self.trace.len())
    }

    fn trace_lines(&self, from: usize, to: usize) -> String {
        let mut s = String::new();
        for e in &self.trace[from..to.min(self.trace.len())] {
            s.push_str(&e.line(&self.sessions));
            s.push('\n');
        }
        s
    }

    /// What a failing run prints: how to reproduce it, what broke, the schedule and the trace
    /// leading to the first violation.
    pub fn report(&self, scenario: &Scenario) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "SIM_SEED={} ({} violation(s))",
            scenario.seed,
            self.violations.len()
        );
        for v in &self.violations {
            let _ = writeln!(s, "  {v}");
        }
        let _ = writeln!(s, "params: {:?}", scenario.params);
        let _ = writeln!(s, "schedule ({} actions):", scenario.schedule.len());
        for a in &scenario.schedule {
            let _ = writeln!(s, "  +{:>9.3}s {}", a.at.as_secs_f64(), a.action);
        }
        if let Some(first) = self.violations.first() {
            // The last 60 entries before it, heartbeat ACKs left out (the full trace has them).
            let quiet = |e: &&Entry| !matches!(e.rec, Rec::Obs(Obs::Signal(Signal::HeartbeatAck)));
            let mut tail: Vec<&Entry> = self.trace[..first.trace_len.min(self.trace.len())]
                .iter()
                .rev()
                .filter(quiet)
                .take(60)
                .collect();
            tail.reverse();
            let _ = writeln!(
                s,
                "trace before the first violation (last {} entries, heartbeat ACKs omitted):",
                tail.len()
            );
            for e in tail {
                s.push_str(&e.line(&self.sessions));
                s.push('\n');
            }
        }
        let _ = writeln!(s, "outcome: {:?}", self.outcome);
        s
    }
}

/// Runs `scenario` against the real stack with default options.
pub fn run(scenario: &Scenario) -> RunResult {
    run_with(scenario, &Options::default(), |c| c)
}

/// Runs `scenario` with `options`, the client's codec being `wrap` applied to the real
/// [`DiscordCodec`] (tests wrap it in deliberately broken codecs to show the checker bites).
pub fn run_with<C, F>(scenario: &Scenario, options: &Options, wrap: F) -> RunResult
where
    C: Codec<Item = GatewayEvent, Command = Command>,
    F: FnOnce(DiscordCodec) -> C,
{
    let mut sim = Sim::new(scenario, options, wrap);
    sim.play();
    sim.finish()
}

/// Removes actions from a failing scenario while it keeps failing, at most `max_runs` reruns:
/// a shorter schedule to read. The result reproduces through [`run_with`], not through the
/// seed alone.
pub fn shrink<C, F>(scenario: &Scenario, options: &Options, wrap: F, max_runs: usize) -> Scenario
where
    C: Codec<Item = GatewayEvent, Command = Command>,
    F: Fn(DiscordCodec) -> C,
{
    let mut best = scenario.clone();
    let mut runs = 0;
    let mut i = best.schedule.len();
    while i > 0 && runs < max_runs {
        i -= 1;
        let mut candidate = best.clone();
        candidate.schedule.remove(i);
        runs += 1;
        if !run_with(&candidate, options, &wrap).passed() {
            best = candidate;
        }
    }
    best
}

// ---- the trace -------------------------------------------------------------------------------

/// Facts the observing codec sees, in the order the core sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Obs {
    Reset(TransportId, OpenMode),
    Signal(Signal),
    Handshake(OpenMode),
    StopEndsSession,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rec {
    Act(Action, usize),
    Arm(Action),
    State(State, State),
    Ready(TransportId),
    Resumed(TransportId),
    Reconnect(OpenMode, Duration),
    GaveUp(GiveUpReason),
    CoreOther,
    Opening(TransportId),
    Opened(TransportId),
    OpenFailed(TransportId),
    Closed(TransportId, Option<u16>),
    Error(&'static str),
    ItemReady(usize, Option<u64>),
    ItemResumed(usize, Option<u64>),
    ItemDispatch(u64),
    ItemGap(usize, u64, u64),
    ItemOther,
    Obs(Obs),
    Mark(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Duration,
    rec: Rec,
}

impl Entry {
    fn line(&self, sessions: &[String]) -> String {
        let sid = |i: usize| sessions.get(i).map_or("?", String::as_str);
        let what = match self.rec {
            Rec::Act(a, hits) => match a {
                Action::Fault(_) | Action::ShardFault(_) | Action::FaultOn { .. } => {
                    format!(">> {a} (hit {hits})")
                }
                _ => format!(">> {a}"),
            },
            Rec::Arm(a) => format!(">> arm: {a}"),
            Rec::State(from, to) => format!("state {} -> {}", from.name(), to.name()),
            Rec::Ready(c) => format!("core ready on {c}"),
            Rec::Resumed(c) => format!("core resumed on {c}"),
            Rec::Reconnect(m, d) => format!("core reconnect ({m:?}) in {d:?}"),
            Rec::GaveUp(r) => format!("core gave up: {r}"),
            Rec::CoreOther => "core event".to_owned(),
            Rec::Opening(c) => format!("transport {c} opening"),
            Rec::Opened(c) => format!("transport {c} opened"),
            Rec::OpenFailed(c) => format!("transport {c} failed to open"),
            Rec::Closed(c, code) => format!("transport {c} closed, peer code {code:?}"),
            Rec::Error(kind) => format!("transport error: {kind}"),
            Rec::ItemReady(s, seq) => format!("app READY session {} seq {seq:?}", sid(s)),
            Rec::ItemResumed(s, seq) => format!("app RESUMED session {} seq {seq:?}", sid(s)),
            Rec::ItemDispatch(seq) => format!("app dispatch seq {seq}"),
            Rec::ItemGap(s, last, n) => {
                format!("app GAP session {} last seq {last}, {n} delivered", sid(s))
            }
            Rec::ItemOther => "app item".to_owned(),
            Rec::Obs(Obs::Reset(c, m)) => format!("codec reset for {c} ({m:?})"),
            Rec::Obs(Obs::Signal(s)) => format!("codec signal {s:?}"),
            Rec::Obs(Obs::Handshake(m)) => format!("codec sends {m:?} handshake"),
            Rec::Obs(Obs::StopEndsSession) => "stop ends the session".to_owned(),
            Rec::Mark(m) => format!("-- {m}"),
        };
        format!("[{:>10.3}s] {what}", self.at.as_secs_f64())
    }
}

/// FNV-1a, 64 bits: stable across runs and processes (unlike the std hasher's keys).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

// ---- the pieces around the stack -------------------------------------------------------------

/// Wraps the codec under test and records what the core is told and what it sends, in order.
struct Observed<C> {
    inner: C,
    log: Rc<RefCell<Vec<Obs>>>,
}

impl<C: Codec> Codec for Observed<C> {
    type Item = C::Item;
    type Command = C::Command;
    type Error = C::Error;

    fn url(&self, mode: OpenMode) -> String {
        self.inner.url(mode)
    }

    fn reset(&mut self, conn: TransportId, mode: OpenMode) {
        self.log.borrow_mut().push(Obs::Reset(conn, mode));
        self.inner.reset(conn, mode);
    }

    fn decode(&mut self, now: Instant, msg: Message) -> Result<Decoded<C::Item>, C::Error> {
        let decoded = self.inner.decode(now, msg)?;
        if let Some(s) = decoded.signal {
            self.log.borrow_mut().push(Obs::Signal(s));
        }
        Ok(decoded)
    }

    fn encode(&mut self, now: Instant, payload: Payload) -> Result<Message, C::Error> {
        if let Payload::Handshake(mode) = payload {
            self.log.borrow_mut().push(Obs::Handshake(mode));
        }
        self.inner.encode(now, payload)
    }

    fn encode_command(&mut self, now: Instant, command: C::Command) -> Result<Message, C::Error> {
        self.inner.encode_command(now, command)
    }
}

/// The mock gateway, plus a wake-up: actions the mock queues when the scenario injects a fault
/// or a dispatch between steps are only drained by the driver when the peer has something due,
/// so the scenario marks "now" as due after each such call.
struct SimPeer {
    mock: MockGateway,
    wake: Option<Instant>,
}

impl MemoryPeer for SimPeer {
    fn on_connect(&mut self, now: Instant, conn: TransportId, url: &str) -> bool {
        self.mock.on_connect(now, conn, url)
    }

    fn on_message(&mut self, now: Instant, conn: TransportId, msg: Message) {
        self.mock.on_message(now, conn, msg);
    }

    fn on_close_frame(&mut self, now: Instant, conn: TransportId, code: u16) {
        self.mock.on_close_frame(now, conn, code);
    }

    fn on_disconnect(&mut self, now: Instant, conn: TransportId) {
        self.mock.on_disconnect(now, conn);
    }

    fn poll_action(&mut self) -> Option<(TransportId, PeerAction)> {
        self.mock.poll_action()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.mock.poll_timeout(), self.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.wake.is_some_and(|w| w <= now) {
            self.wake = None;
        }
        self.mock.handle_timeout(now);
    }
}

/// Identify permits paced at one per window, with an optional budget guard, like a runtime's
/// identify queue. The driver drops a delayed grant when its transport ends first; a new
/// request while a grant is still in the future means that grant was dropped, so its slot is
/// given back.
struct Permits {
    plan: PermitPlan,
    clock: Rc<Cell<Instant>>,
    /// Grants handed out (or scheduled), oldest first.
    grants: VecDeque<Instant>,
}

impl Permits {
    fn decide(&mut self) -> PermitDecision {
        let now = self.clock.get();
        while self.grants.back().is_some_and(|&t| t > now) {
            self.grants.pop_back();
        }
        if let Some((max, per)) = self.plan.budget {
            let recent = self.grants.iter().filter(|&&t| t + per > now).count();
            if recent >= max as usize {
                return PermitDecision::Deny;
            }
        }
        let at = match self.grants.back() {
            Some(&l) if l + self.plan.window > now => l + self.plan.window,
            _ => now,
        };
        self.grants.push_back(at);
        if self.grants.len() > 64 {
            self.grants.pop_front();
        }
        if at == now {
            PermitDecision::Grant
        } else {
            PermitDecision::GrantAfter(at - now)
        }
    }
}

/// Delivery to the application within one session.
#[derive(Debug, Clone, Default)]
struct Delivered {
    /// Interned session id.
    sid: usize,
    /// Last seq delivered (seqs are checked to be exactly 1, 2, 3, ...).
    last: u64,
    /// Items delivered (READY, RESUMED, dispatches), as the codec counts for a gap.
    items: u64,
    /// Reported lost with a GAP.
    gap: bool,
}

// ---- the runner ------------------------------------------------------------------------------

struct Sim<'a, C: Codec<Item = GatewayEvent, Command = Command>> {
    scenario: &'a Scenario,
    config: Config,
    driver: MemoryDriver<Observed<C>, SimPeer>,
    log: Rc<RefCell<Vec<Obs>>>,
    clock: Rc<Cell<Instant>>,
    origin: Instant,
    trace: Vec<Entry>,
    hasher: Fnv,
    violations: Vec<Violation>,
    violations_dropped: usize,
    steps: u64,
    runaway: bool,
    faults_hit: u64,
    // transports
    live: Option<TransportId>,
    ends: BTreeMap<TransportId, Option<u16>>,
    stopped: bool,
    stop_deadline: Option<Instant>,
    failed: bool,
    fatal_in_batch: bool,
    gave_up_in_batch: bool,
    zombie_watch: Option<(TransportId, Instant)>,
    conn_delay: Duration,
    injected_closes: BTreeMap<u16, u64>,
    // the session oracle
    held: bool,
    open: Option<(TransportId, OpenMode)>,
    identify_handshakes: u64,
    // delivery
    sessions: Vec<String>,
    session_index: BTreeMap<String, usize>,
    delivered: Vec<Delivered>,
    current: Option<usize>,
    dispatches: u64,
    flushes: u64,
    gaps: u64,
    accepted_events: u64,
    accepted_items: u64,
    resumed_replayed: u64,
    // scripting
    armed: Vec<(Trigger, Action)>,
    triggers: u8,
    data: u64,
    streams: Vec<StreamId>,
    recovery: Option<Duration>,
}

impl<'a, C: Codec<Item = GatewayEvent, Command = Command>> Sim<'a, C> {
    fn new<F: FnOnce(DiscordCodec) -> C>(
        scenario: &'a Scenario,
        options: &Options,
        wrap: F,
    ) -> Self {
        let p = &scenario.params;
        let tight = p.timers == Timers::Tight;
        let mut config = match p.timers {
            Timers::Production => Config::default(),
            Timers::Tight => crate::lifecycle(),
        };
        config.close_rules = options.close_rules;
        config.gate_new_sessions = p.permits.is_some();
        config.max_attempts = p.max_attempts;
        let mock = MockGateway::new(MockConfig {
            heartbeat_interval: p.heartbeat,
            heartbeat_grace: Some(if tight { ms(500) } else { ms(5_000) }),
            resume_window: p.resume_window,
            identify_window: p.identify_window,
            replay_buffer: p.replay_buffer,
            close_timeout: if tight { ms(500) } else { ms(5_000) },
            // Discord's 120 sends a minute leave room for a beat every 41 s; a mock beating 4
            // times a second gets a window shrunk in proportion, so heartbeats alone never
            // exceed it.
            send_window: if p.heartbeat < ms(1_000) {
                ms(15_000)
            } else {
                ms(60_000)
            },
            seed: scenario.seed.rotate_left(17) ^ 0x6d6f_636b,
            ..MockConfig::default()
        });
        let mut gateway = crate::gateway(GATEWAY_URL, 0, 1);
        gateway.compression = p.compression;
        // The gateway settings are built from constants that satisfy every rule `new` checks.
        let codec = DiscordCodec::new(gateway).expect("the simulation's gateway config is valid");
        let log = Rc::new(RefCell::new(Vec::new()));
        let observed = Observed {
            inner: wrap(codec),
            log: Rc::clone(&log),
        };
        let origin = Instant::now();
        let clock = Rc::new(Cell::new(origin));
        let core = handover_core::Connection::new(config, scenario.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut driver = MemoryDriver::new(
            core,
            observed,
            SimPeer { mock, wake: None },
            MemoryConfig {
                latency: p.latency,
                ..MemoryConfig::default()
            },
            origin,
        );
        if let Some(plan) = p.permits {
            let mut permits = Permits {
                plan,
                clock: Rc::clone(&clock),
                grants: VecDeque::new(),
            };
            driver.set_permits(move |_| permits.decide());
        }
        Sim {
            scenario,
            config,
            driver,
            log,
            clock,
            origin,
            trace: Vec::with_capacity(1024),
            hasher: Fnv(0xcbf2_9ce4_8422_2325),
            violations: Vec::new(),
            violations_dropped: 0,
            steps: 0,
            runaway: false,
            faults_hit: 0,
            live: None,
            ends: BTreeMap::new(),
            stopped: false,
            stop_deadline: None,
            failed: false,
            fatal_in_batch: false,
            gave_up_in_batch: false,
            zombie_watch: None,
            conn_delay: Duration::ZERO,
            injected_closes: BTreeMap::new(),
            held: false,
            open: None,
            identify_handshakes: 0,
            sessions: Vec::new(),
            session_index: BTreeMap::new(),
            delivered: Vec::new(),
            current: None,
            dispatches: 0,
            flushes: 0,
            gaps: 0,
            accepted_events: 0,
            accepted_items: 0,
            resumed_replayed: 0,
            armed: Vec::new(),
            triggers: 0,
            data: 0,
            streams: Vec::new(),
            recovery: None,
        }
    }

    fn elapsed(&self) -> Duration {
        self.driver.now().saturating_duration_since(self.origin)
    }

    fn record(&mut self, rec: Rec) {
        let at = self.elapsed();
        u64::try_from(at.as_nanos())
            .unwrap_or(u64::MAX)
            .hash(&mut self.hasher);
        rec.hash(&mut self.hasher);
        self.trace.push(Entry { at, rec });
    }

    fn violate(&mut self, what: String) {
        if self.violations.len() >= MAX_VIOLATIONS {
            self.violations_dropped += 1;
            return;
        }
        self.violations.push(Violation {
            at: self.elapsed(),
            what,
            trace_len: self.trace.len(),
        });
    }

    fn receiving(&self) -> bool {
        self.driver.core().phase() == Phase::Receiving
    }

    /// Handshake done and the connection up: receiving, or probing a late ACK.
    fn connected(&self) -> bool {
        matches!(self.driver.core().phase(), Phase::Receiving | Phase::Stale)
    }

    // ---- driving ----

    /// Steps until `until` (checking after every step) or until `done` holds.
    fn advance(&mut self, until: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if self.runaway {
                return false;
            }
            if done(self) {
                return true;
            }
            let Some(next) = self.driver.next_timeout().filter(|&t| t <= until) else {
                break;
            };
            self.clock.set(self.driver.now().max(next));
            if let Err(e) = self.driver.step() {
                self.violate(format!("the in-memory driver stopped: {e}"));
                self.runaway = true;
                return false;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.violate(format!("more than {MAX_STEPS} steps: runaway run"));
                self.runaway = true;
                return false;
            }
            self.observe();
        }
        if self.driver.run_until(until).is_err() {
            self.runaway = true;
        }
        self.clock.set(self.driver.now());
        done(self)
    }

    fn play(&mut self) {
        let p = self.scenario.params.clone();
        self.record(Rec::Mark("start"));
        self.clock.set(self.driver.now());
        if let Err(e) = self.driver.start() {
            self.violate(format!("start failed: {e}"));
            return;
        }
        self.observe();
        let limit = self.driver.now() + ms(120_000);
        if !self.advance(limit, |s| s.current.is_some()) {
            self.violate("no READY within 120 s of the first start".to_owned());
            return;
        }
        self.record(Rec::Mark("first ready: faults begin"));
        let t0 = self.driver.now();
        let scenario = self.scenario;
        for s in &scenario.schedule {
            self.advance(t0 + s.at, |_| false);
            if self.runaway {
                return;
            }
            self.apply(s.action);
        }
        let last = scenario.schedule.last().map_or(Duration::ZERO, |s| s.at);
        self.advance(t0 + p.fault_phase.max(last), |_| false);
        self.end_of_faults();
    }

    fn end_of_faults(&mut self) {
        self.record(Rec::Mark("faults end"));
        self.armed.clear();
        for id in std::mem::take(&mut self.streams) {
            self.driver.peer_mut().mock.cancel_stream(id);
        }
        // A client the application stopped is started again; one that gave up only if the
        // operator steps in.
        let start = self.stopped || (self.failed && self.scenario.params.end_with_start);
        if start {
            self.apply(Action::Start);
        }
        let c = self.config;
        // Worst case to recover: a zombie judged (a beat, then one interval), a drain, the
        // longest backoff or invalid-session wait, an identify refused by the window and tried
        // again, each handshake at its timeout.
        let round = c.backoff.cap.max(c.invalid_session_wait_max)
            + c.open_timeout
            + c.hello_timeout
            + c.handshake_timeout
            + self.scenario.params.heartbeat * 2
            + c.drain_deadline
            + self.scenario.params.identify_window;
        let quiet_start = self.driver.now();
        let limit = quiet_start + round * 4;
        // Recovered means events flow again: once receiving, one more dispatch must reach the
        // application on a connection that is still up (a zombie fails this and is replaced;
        // the dispatch is then replayed, and a fresh one is sent once receiving again). Frames
        // arrive in order, so everything the mock wrote before it has been delivered too.
        let mut recovered = false;
        // A fatal close may still be in flight (or held by a delay fault): an operator who
        // steps in starts the client again whenever it gives up.
        let operator = self.scenario.params.end_with_start;
        for _ in 0..1_000 {
            let ready = |s: &Self| s.receiving() && s.current.is_some();
            if !self.advance(limit, |s| ready(s) || (operator && s.failed)) {
                break;
            }
            if !ready(self) {
                self.apply(Action::Start);
                continue;
            }
            self.record(Rec::Mark("receiving: flush"));
            let before = self.flushes;
            self.flush_marker();
            let until = limit.min(self.driver.now() + round);
            if self.advance(until, |s| s.flushes > before) && self.connected() {
                recovered = true;
                break;
            }
        }
        if recovered {
            self.recovery = Some(self.driver.now() - quiet_start);
        } else {
            // Let any last close play out so the mock's socket counts settle.
            let settle = self.driver.now() + c.drain_deadline + ms(1_000);
            self.advance(settle, |_| false);
        }
        self.final_checks();
    }

    /// A dispatch of its own type: once the application has it, everything written before it
    /// on the same connection was delivered too.
    fn flush_marker(&mut self) {
        let now = self.driver.now();
        let peer = self.driver.peer_mut();
        let hits = peer.mock.dispatch(
            now,
            ShardKey::new(0, 0),
            FLUSH_EVENT,
            &serde_json::json!({}),
        );
        peer.wake = Some(now);
        self.record(Rec::Act(Action::Dispatch(1), hits));
        self.observe();
    }

    fn apply(&mut self, action: Action) {
        let now = self.driver.now();
        self.clock.set(now);
        let mut hits = 0;
        match action {
            Action::Fault(f) | Action::ShardFault(f) => {
                let target = match action {
                    Action::ShardFault(_) => Target::Shard(ShardKey::new(0, 0)),
                    _ => Target::All,
                };
                let live_hit = self.live_targeted(target);
                let peer = self.driver.peer_mut();
                hits = peer.mock.inject(now, target, f);
                peer.wake = Some(now);
                self.injected(f, hits, live_hit);
            }
            Action::Dispatch(n) => {
                for _ in 0..n {
                    self.data += 1;
                    let data = serde_json::json!({ "n": self.data });
                    let peer = self.driver.peer_mut();
                    hits += peer.mock.dispatch(now, 0, "MESSAGE_CREATE", &data);
                    peer.wake = Some(now);
                }
            }
            Action::Stream { count, every } => {
                let spec = StreamSpec {
                    shard: ShardKey::new(0, 0),
                    event: "TYPING_START".to_owned(),
                    data: serde_json::json!({ "stream": true }),
                    count,
                    rate: every.map_or(StreamRate::AsFastAsRead, StreamRate::Every),
                };
                let peer = self.driver.peer_mut();
                let id = peer.mock.stream(now, spec);
                peer.wake = Some(now);
                self.streams.push(id);
            }
            Action::Restart => {
                // A restart is stop-then-start: it re-enables a stopped client.
                self.stopped = false;
                self.stop_deadline = None;
                if let Err(e) = self.driver.restart(RestartReason::HealthMonitor) {
                    self.violate(format!("restart failed: {e}"));
                }
            }
            Action::Stop(intent) => {
                if intent == StopIntent::EndSession {
                    self.log.borrow_mut().push(Obs::StopEndsSession);
                }
                if let Err(e) = self.driver.stop(intent) {
                    self.violate(format!("stop failed: {e}"));
                }
                self.stopped = true;
                if self.stop_deadline.is_none() && !self.driver.is_stopped() {
                    self.stop_deadline = Some(now + self.config.drain_deadline);
                }
            }
            Action::Start => {
                self.stopped = false;
                self.stop_deadline = None;
                self.failed = false;
                if let Err(e) = self.driver.start() {
                    self.violate(format!("start failed: {e}"));
                }
            }
            Action::Presence => {
                let cmd = Command::UpdatePresence(UpdatePresence::status(PresenceStatus::Online));
                hits = usize::from(self.driver.send(cmd).is_ok());
            }
            Action::FaultOn { on, .. } | Action::RestartOn(on) => {
                self.armed.push((on, action));
                self.record(Rec::Arm(action));
                self.observe();
                return;
            }
        }
        self.record(Rec::Act(action, hits));
        self.observe();
    }

    // ---- checking ----

    fn observe(&mut self) {
        self.triggers = 0;
        self.fatal_in_batch = false;
        self.gave_up_in_batch = false;
        for ev in self.driver.take_events() {
            match ev {
                DriverEvent::Core(e) => self.on_core(e),
                DriverEvent::Item(item) => self.on_item(item),
                DriverEvent::Transport(t) => self.on_transport(t),
                DriverEvent::Error(e) => self.record(Rec::Error(error_kind(&e))),
                _ => self.record(Rec::CoreOther),
            }
        }
        let obs: Vec<Obs> = self.log.borrow_mut().drain(..).collect();
        for o in obs {
            self.on_obs(o);
        }
        if self.fatal_in_batch && !self.gave_up_in_batch {
            self.violate("a fatal close code did not make the client give up".to_owned());
        }
        if let Some(deadline) = self.stop_deadline {
            if self.driver.is_stopped() {
                self.stop_deadline = None;
            } else if self.driver.now() > deadline {
                self.stop_deadline = None;
                self.violate(format!(
                    "stop not complete within the drain deadline ({:?}): phase {}",
                    self.config.drain_deadline,
                    self.driver.core().phase().name()
                ));
            }
        }
        if let Some((conn, deadline)) = self.zombie_watch {
            if self.live != Some(conn) {
                self.zombie_watch = None;
            } else if self.driver.now() > deadline {
                self.zombie_watch = None;
                self.violate(format!(
                    "{conn} stopped answering heartbeats but was not replaced in time (phase {})",
                    self.driver.core().phase().name()
                ));
            }
        }
        let seen = self.triggers;
        if seen != 0 && !self.armed.is_empty() {
            let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.armed)
                .into_iter()
                .partition(|(on, _)| seen & on.bit() != 0);
            self.armed = keep;
            for (_, action) in &fire {
                self.fire(*action);
            }
            if !fire.is_empty() {
                self.observe();
            }
        }
    }

    /// Whether `target` includes the client's live transport on the mock's side (the mock may
    /// still hold the previous one for a latency after the client dropped it).
    fn live_targeted(&self, target: Target) -> bool {
        let Some(live) = self.live else {
            return false;
        };
        self.driver.peer().mock.connections().iter().any(|c| {
            c.id == live
                && match target {
                    Target::Shard(key) => c.shard == Some(key),
                    _ => true,
                }
        })
    }

    /// Bookkeeping after a fault hit `hits` connections, the live one among them or not.
    fn injected(&mut self, fault: Fault, hits: usize, live_hit: bool) {
        self.faults_hit += hits as u64;
        if hits == 0 {
            return;
        }
        match fault {
            Fault::Close(code) => *self.injected_closes.entry(code).or_default() += hits as u64,
            Fault::Delay(d) if live_hit => self.conn_delay = self.conn_delay.max(d),
            // The mock forgets the identification at once; a command already on its way
            // crosses the op 9 and is answered with 4003. A race, not a client error.
            Fault::InvalidSession { .. } => {
                *self.injected_closes.entry(4003).or_default() += hits as u64;
            }
            Fault::Zombie | Fault::StopAcks if live_hit => {
                if let Some(conn) = self.live
                    && self.zombie_watch.is_none_or(|(c, _)| c != conn)
                {
                    let c = &self.config;
                    let p = &self.scenario.params;
                    // Judged dead one interval after the first unanswered beat, itself at most
                    // one interval away; before the handshake completes, its timeouts.
                    let find = (p.heartbeat * 2)
                        .max(c.hello_timeout)
                        .max(c.handshake_timeout);
                    let bound = find + c.drain_deadline + p.latency * 2 + self.conn_delay + ms(1);
                    self.zombie_watch = Some((conn, self.driver.now() + bound));
                }
            }
            _ => {}
        }
    }

    /// Carries out an armed action whose trigger was just seen.
    fn fire(&mut self, action: Action) {
        let now = self.driver.now();
        let mut hits = 0;
        match action {
            Action::FaultOn { fault, .. } => {
                let live_hit = self.live_targeted(Target::All);
                let peer = self.driver.peer_mut();
                hits = peer.mock.inject(now, Target::All, fault);
                peer.wake = Some(now);
                self.injected(fault, hits, live_hit);
            }
            Action::RestartOn(_) => {
                self.stopped = false;
                self.stop_deadline = None;
                if let Err(e) = self.driver.restart(RestartReason::HealthMonitor) {
                    self.violate(format!("restart failed: {e}"));
                }
            }
            _ => {}
        }
        self.record(Rec::Act(action, hits));
    }

    fn on_core(&mut self, e: Event) {
        match e {
            Event::StateChanged { from, to } => {
                self.record(Rec::State(from, to));
                if from == State::Draining && to != State::Closed {
                    self.violate(format!("draining left to {} instead of closed", to.name()));
                }
                if matches!(to, State::Connecting(_))
                    && !matches!(from, State::Connecting(_) | State::Closed)
                {
                    self.violate(format!("connecting entered from {}", from.name()));
                }
            }
            Event::Ready { conn } => {
                self.accepted_events += 1;
                self.triggers |= Trigger::Accepted.bit();
                self.record(Rec::Ready(conn));
            }
            Event::Resumed { conn } => {
                self.accepted_events += 1;
                self.triggers |= Trigger::Accepted.bit();
                self.record(Rec::Resumed(conn));
            }
            Event::ReconnectScheduled { mode, delay } => {
                self.record(Rec::Reconnect(mode, delay));
                // Within the spread (first reconnect after a good session), the backoff, or the
                // wait after a non-resumable invalid session; never longer than the longest.
                let c = &self.config;
                let b: Backoff = c.backoff;
                if delay
                    > b.cap
                        .max(c.invalid_session_wait_max)
                        .max(c.reconnect_spread)
                {
                    self.violate(format!(
                        "reconnect delay {delay:?} outside the backoff bounds"
                    ));
                }
            }
            Event::GaveUp(reason) => {
                self.record(Rec::GaveUp(reason));
                self.failed = true;
                self.gave_up_in_batch = true;
                let legit = match reason {
                    GiveUpReason::FatalClose { code } => is_fatal(code),
                    GiveUpReason::PermitDenied => self
                        .scenario
                        .params
                        .permits
                        .is_some_and(|p| p.budget.is_some()),
                    GiveUpReason::MaxAttempts { attempts } => self
                        .scenario
                        .params
                        .max_attempts
                        .is_some_and(|max| attempts >= max),
                    _ => false,
                };
                if !legit {
                    self.violate(format!("gave up without a reason to: {reason}"));
                }
            }
            _ => self.record(Rec::CoreOther),
        }
    }

    fn on_transport(&mut self, t: TransportEvent) {
        match t {
            TransportEvent::Opening { conn } => {
                self.record(Rec::Opening(conn));
                if let Some(old) = self.live {
                    self.violate(format!("{conn} opening while {old} is still live"));
                }
                if self.stopped {
                    self.violate(format!("{conn} opened after a stop, without a start"));
                }
                if self.failed {
                    self.violate(format!("{conn} opened after giving up, without a start"));
                }
                self.live = Some(conn);
                self.conn_delay = Duration::ZERO;
            }
            TransportEvent::Opened { conn } => {
                self.triggers |= Trigger::Opened.bit();
                self.record(Rec::Opened(conn));
                if self.live != Some(conn) {
                    self.violate(format!("{conn} reported opened but is not the live one"));
                }
            }
            TransportEvent::OpenFailed { conn } => {
                self.record(Rec::OpenFailed(conn));
                self.transport_gone(conn, None);
            }
            TransportEvent::Closed { conn, code } => {
                self.record(Rec::Closed(conn, code));
                self.transport_gone(conn, code);
                if is_fatal(code) {
                    self.fatal_in_batch = true;
                }
            }
            _ => self.record(Rec::CoreOther),
        }
    }

    fn transport_gone(&mut self, conn: TransportId, code: Option<u16>) {
        if self.live != Some(conn) {
            self.violate(format!("{conn} reported gone but is not the live one"));
        }
        if self.ends.insert(conn, code).is_some() {
            self.violate(format!("{conn} reported gone twice"));
        }
        self.live = None;
    }

    fn on_obs(&mut self, o: Obs) {
        self.record(Rec::Obs(o));
        match o {
            Obs::Reset(conn, mode) => {
                // The previous transport ended before this one was asked for: its close code
                // may have ended the session.
                if let Some((prev, _)) = self.open {
                    match self.ends.get(&prev) {
                        Some(&code) => {
                            if loses_session(code) {
                                self.held = false;
                            }
                        }
                        None => self.violate(format!("{conn} reset before {prev} was gone")),
                    }
                }
                self.open = Some((conn, mode));
                match (mode, self.held) {
                    (OpenMode::Identify, true) => self.violate(format!(
                        "{conn} identifies although the session is still resumable: an identify spent for nothing"
                    )),
                    (OpenMode::Resume, false) => self.violate(format!(
                        "{conn} resumes although the session was lost"
                    )),
                    _ => {}
                }
            }
            Obs::Signal(Signal::HandshakeAccepted { .. }) => self.held = true,
            Obs::Signal(Signal::SessionInvalidated { resumable: false }) => self.held = false,
            Obs::Signal(_) => {}
            Obs::Handshake(mode) => {
                self.triggers |= Trigger::Handshake.bit();
                if mode == OpenMode::Identify {
                    self.identify_handshakes += 1;
                }
                if self.open.map(|o| o.1) != Some(mode) {
                    self.violate(format!(
                        "{mode:?} handshake sent on a connection opened for {:?}",
                        self.open.map(|o| o.1)
                    ));
                }
            }
            Obs::StopEndsSession => self.held = false,
        }
    }

    fn intern(&mut self, sid: &str) -> (usize, bool) {
        if let Some(&i) = self.session_index.get(sid) {
            return (i, false);
        }
        let i = self.sessions.len();
        self.sessions.push(sid.to_owned());
        self.session_index.insert(sid.to_owned(), i);
        (i, true)
    }

    /// The next seq of the current session: exactly one more than the last one.
    fn deliver_seq(&mut self, seq: Option<u64>, what: &str) {
        let Some(cur) = self.current else {
            self.violate(format!("{what} seq {seq:?} delivered with no session"));
            return;
        };
        let d = &mut self.delivered[cur];
        d.items += 1;
        let Some(seq) = seq else {
            return;
        };
        let expected = d.last + 1;
        d.last = d.last.max(seq);
        let sid = self.sessions[d.sid].clone();
        if seq < expected {
            self.violate(format!(
                "{what} seq {seq} of session {sid} delivered again (expected {expected})"
            ));
        } else if seq > expected {
            self.violate(format!(
                "{what} seq {seq} of session {sid} delivered with seqs {expected}..{} missing",
                seq - 1
            ));
        }
    }

    fn on_item(&mut self, item: GatewayEvent) {
        match item {
            GatewayEvent::Ready(r) => {
                let (sid, fresh) = self.intern(&r.session_id);
                self.record(Rec::ItemReady(sid, r.seq));
                self.accepted_items += 1;
                if !fresh {
                    self.violate(format!("READY for session {} seen twice", r.session_id));
                }
                if let Some(prev) = self.current {
                    let p = &self.delivered[prev];
                    if p.items > 0 && !p.gap {
                        let name = self.sessions[p.sid].clone();
                        self.violate(format!(
                            "new session started without reporting the lost session {name}"
                        ));
                    }
                }
                self.delivered.push(Delivered {
                    sid,
                    ..Delivered::default()
                });
                self.current = Some(self.delivered.len() - 1);
                if r.seq != Some(1) {
                    self.violate(format!("READY carries seq {:?}, not 1", r.seq));
                }
                self.deliver_seq(r.seq, "READY");
            }
            GatewayEvent::Resumed(r) => {
                let (sid, _) = self.intern(&r.session_id);
                self.record(Rec::ItemResumed(sid, r.seq));
                self.accepted_items += 1;
                // The mock keeps its RESUMED frames in the replay buffer, so a RESUMED lost with
                // its connection is replayed on the next resume. The codec must deliver that one
                // as a plain dispatch: the application hears of one resume per resume.
                if self.accepted_items > self.accepted_events {
                    self.resumed_replayed += 1;
                    self.accepted_events = self.accepted_items;
                    self.violate("two RESUMED items for one resume".to_string());
                }
                if self.current.map(|c| self.delivered[c].sid) != Some(sid) {
                    self.violate(format!(
                        "RESUMED for session {} which is not the current one",
                        r.session_id
                    ));
                }
                self.deliver_seq(r.seq, "RESUMED");
            }
            GatewayEvent::Dispatch(d) => {
                self.record(Rec::ItemDispatch(d.seq));
                self.dispatches += 1;
                if d.event_type == FLUSH_EVENT {
                    self.flushes += 1;
                }
                self.deliver_seq(Some(d.seq), "dispatch");
            }
            GatewayEvent::Gap(g) => {
                let (sid, _) = self.intern(&g.session_id);
                self.record(Rec::ItemGap(sid, g.last_seq, g.delivered));
                self.gaps += 1;
                match self.current.filter(|&c| self.delivered[c].sid == sid) {
                    Some(c) => {
                        let d = self.delivered[c].clone();
                        if d.gap {
                            self.violate(format!("session {} reported lost twice", g.session_id));
                        }
                        if (d.last, d.items) != (g.last_seq, g.delivered) {
                            self.violate(format!(
                                "GAP for {} says last seq {} and {} delivered; the application saw {} and {}",
                                g.session_id, g.last_seq, g.delivered, d.last, d.items
                            ));
                        }
                        self.delivered[c].gap = true;
                    }
                    None => self.violate(format!(
                        "GAP for session {} which is not the current one",
                        g.session_id
                    )),
                }
            }
            _ => self.record(Rec::ItemOther),
        }
    }

    fn final_checks(&mut self) {
        self.record(Rec::Mark("end"));
        let phase = self.driver.core().phase();
        let counters = self.driver.peer().mock.counters();
        let shard = counters.shard(0);
        if self.driver.max_live_transports() != 1 {
            self.violate(format!(
                "the client had {} transports at once",
                self.driver.max_live_transports()
            ));
        }
        if self.driver.max_peer_connections() != 1 {
            self.violate(format!(
                "the peer saw {} connections at once",
                self.driver.max_peer_connections()
            ));
        }
        if counters.max_live_sockets != 1 || shard.max_live_sockets != 1 {
            self.violate(format!(
                "the mock counted {} sockets at once ({} for shard 0)",
                counters.max_live_sockets, shard.max_live_sockets
            ));
        }

        // Closes the mock made on its own because of something the client sent (or failed to
        // send): more of a code than the scenario injected.
        for (code, why) in [
            (4000, "heartbeats stopped"),
            (4001, "unknown opcode"),
            (4002, "decode error or payload too large"),
            (4003, "payload before identifying"),
            (4005, "identified twice on one connection"),
            (4007, "resumed with a seq the session never reached"),
            (4008, "send rate limit"),
        ] {
            let sent = shard.server_closes.iter().filter(|&&c| c == code).count() as u64;
            let injected = self.injected_closes.get(&code).copied().unwrap_or(0);
            if sent > injected {
                self.violate(format!(
                    "the client made the gateway close with {code} ({why}) {} time(s)",
                    sent - injected
                ));
            }
        }

        // How the run ended.
        let connected = self.connected();
        match phase {
            Phase::Receiving | Phase::Stale => {}
            Phase::Failed => match self.driver.core().status().gave_up {
                None => self.violate("failed without a give-up reason".to_owned()),
                // Started again once the faults stopped: only the permit guard can still refuse.
                Some(reason)
                    if self.scenario.params.end_with_start
                        && reason != GiveUpReason::PermitDenied =>
                {
                    self.violate(format!("gave up ({reason}) after the faults stopped"));
                }
                Some(_) => {}
            },
            other => self.violate(format!(
                "not recovered once the faults stopped: phase {} after the quiet period",
                other.name()
            )),
        }
        let expected_sockets = usize::from(connected);
        if counters.live_sockets != expected_sockets
            || self.driver.live_transports() != expected_sockets
        {
            self.violate(format!(
                "at the end the mock has {} sockets and the client {} transports; expected {}",
                counters.live_sockets,
                self.driver.live_transports(),
                expected_sockets
            ));
        }

        // Identifies: the client's count, what reached the codec, what the mock saw.
        let status = self.driver.core().status();
        if status.identifies != self.identify_handshakes {
            self.violate(format!(
                "the core counts {} identifies but the codec built {}",
                status.identifies, self.identify_handshakes
            ));
        }
        if shard.identifies > status.identifies {
            self.violate(format!(
                "the mock received {} identifies, the client sent {}",
                shard.identifies, status.identifies
            ));
        }
        if shard.sessions_started > shard.identifies {
            self.violate(format!(
                "the mock started {} sessions from {} identifies",
                shard.sessions_started, shard.identifies
            ));
        }
        if self.scenario.params.permits.is_some() && shard.identifies != shard.sessions_started {
            self.violate(format!(
                "identifies were paced by permits yet the mock refused {} of {}",
                shard.identifies - shard.sessions_started,
                shard.identifies
            ));
        }
        // Without session-ending faults, a session is only lost by outliving its resume window
        // (failed attempts back off up to the cap, each failed handshake costs its timeout):
        // one identify to start, one per session the mock let expire.
        let expected = 1 + counters.sessions_expired;
        if !self.scenario.may_lose_sessions()
            && (status.identifies != expected || shard.sessions_started != expected)
        {
            self.violate(format!(
                "no fault could end the session and {} expired, yet {} identifies were sent and {} sessions started",
                counters.sessions_expired, status.identifies, shard.sessions_started
            ));
        }

        // Delivery against what the mock wrote, per session.
        let deliveries = self.delivered.clone();
        for (i, d) in deliveries.iter().enumerate() {
            let sid = self.sessions[d.sid].clone();
            let Some(written) = shard.sessions.get(&sid) else {
                self.violate(format!(
                    "session {sid} delivered but never started by the mock"
                ));
                continue;
            };
            let mut runs: Vec<(u64, u64)> = written.runs().to_vec();
            runs.sort_unstable();
            let mut covered = 0u64;
            for (a, b) in runs {
                if a <= covered + 1 {
                    covered = covered.max(b);
                }
            }
            let max_written = written.runs().iter().map(|r| r.1).max().unwrap_or(0);
            if d.last > covered {
                self.violate(format!(
                    "session {sid}: delivered up to seq {} but the mock wrote 1..={covered} only",
                    d.last
                ));
            }
            let is_final = Some(i) == self.current && connected;
            if is_final && (d.last != max_written || covered != max_written) {
                self.violate(format!(
                    "session {sid}: the mock wrote up to seq {max_written} (contiguous to {covered}) but the application got up to {}",
                    d.last
                ));
            }
        }
        if self.violations_dropped > 0 {
            let n = self.violations_dropped;
            self.violations_dropped = 0;
            self.violate(format!("... and {n} more violations"));
        }
    }

    fn finish(self) -> RunResult {
        let status = self.driver.core().status();
        let counters = self.driver.peer().mock.counters();
        let shard = counters.shard(0);
        let outcome = Outcome {
            seed: self.scenario.seed,
            trace_hash: self.hasher.finish(),
            steps: self.steps,
            elapsed: self.elapsed(),
            actions: self.scenario.schedule.len(),
            faults_hit: self.faults_hit,
            opens: status.opens,
            identifies: status.identifies,
            resumes: status.resumes,
            delivered: self.dispatches,
            gaps: self.gaps,
            resumed_replayed: self.resumed_replayed,
            mock_identifies: shard.identifies,
            mock_sessions: shard.sessions_started,
            mock_resumes: shard.resumes_ok,
            max_live_transports: self.driver.max_live_transports(),
            max_mock_sockets: counters.max_live_sockets,
            recovery: self.recovery,
            final_phase: self.driver.core().phase().name(),
        };
        RunResult {
            outcome,
            violations: self.violations,
            trace: self.trace,
            sessions: self.sessions,
        }
    }
}

fn error_kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::Decode { .. } => "decode",
        TransportError::Encode { .. } => "encode",
        TransportError::TooLarge { .. } => "too large",
        TransportError::Protocol { .. } => "protocol",
        _ => "other",
    }
}
