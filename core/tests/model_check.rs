//! Exhaustive model check of the lifecycle machine through its public API.
//!
//! From the initial state, every input (current, older and future connection ids, duplicate
//! closes, every signal, close codes of each class, permits, start/stop/restart) and every kind
//! of timeout (spurious, early, due, late) is applied in every order, breadth first, within a
//! virtual time horizon and a cap on connection ids. An independent observer tracks what the
//! outside world can see (live transports, whether a session is held, stop and give-up, the
//! attempt count, the oldest unanswered heartbeat) and checks invariants 1-8 of the design on
//! every state and on every (before, input, after, outputs) step. On a violation the shortest
//! input path reaching it is printed.
//!
//! The same checker runs on a deliberately broken wrapper to show it can fail, and the reachable
//! state transitions generate `docs/state-diagram.md`.

mod common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use handover_core::{
    Backoff, CloseClass, Config, Connection, ConnectionId, Event, GiveUpReason, Input, OpenMode,
    Output, Payload, Phase, RestartReason, Signal, State, StopIntent,
};

use common::{FATAL_CODE, NEW_SESSION_CODE, RESUME_CODE, RULES};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Heartbeat interval announced by every hello in the model.
const INTERVAL: Duration = ms(4);

/// Small timers so that interesting interleavings fit in the horizon. With the permit gate off,
/// an accepted handshake ends the failure streak (the default); with it on, only a connection
/// identified for 5 ms does, so both rules are explored.
fn model_config(gate_new_sessions: bool) -> Config {
    Config {
        open_timeout: ms(3),
        hello_timeout: ms(3),
        handshake_timeout: ms(5),
        probe_grace: ms(2),
        drain_deadline: ms(2),
        backoff: Backoff {
            floor: ms(1),
            base: ms(2),
            cap: ms(4),
        },
        reconnect_spread: ms(1),
        stable_after: if gate_new_sessions { ms(5) } else { ms(0) },
        invalid_session_wait_min: ms(1),
        invalid_session_wait_max: ms(2),
        max_attempts: Some(2),
        close_rules: RULES,
        gate_new_sessions,
    }
}

/// Bounds that make the space finite.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Timeouts past this virtual time are not explored.
    horizon: Duration,
    /// States whose latest transport id is above this are checked but not expanded.
    max_conn: u64,
    /// Early or late timeout calls allowed on one path.
    skews: u8,
}

/// Two transports (so an older and a future id are always in play) and 10 ms of virtual time
/// (two and a half heartbeat intervals: enough to go stale, be judged dead, reconnect and be
/// identified again), with punctual timeout calls.
const BOUNDS: Bounds = Bounds {
    horizon: ms(10),
    max_conn: 2,
    skews: 0,
};

/// One transport over 16 ms (four heartbeat intervals), with one early or late timeout call
/// per path (a driver that falls behind; each multiplies the timelines). Together with
/// [`BOUNDS`] this keeps the run to seconds: recovery is fast, so two transports with skews
/// fit far more of their lives into a horizon than they used to.
const SKEWED_BOUNDS: Bounds = Bounds {
    horizon: ms(16),
    max_conn: 1,
    skews: 1,
};

/// With `MODEL_CHECK_DEEP=1`: three transports in 10 ms with skews (millions of states; run
/// it with `--release`). The state counts are then printed but not pinned.
const DEEP_BOUNDS: Bounds = Bounds {
    horizon: ms(10),
    max_conn: 3,
    skews: 1,
};

fn deep() -> bool {
    std::env::var_os("MODEL_CHECK_DEEP").is_some_and(|v| v == "1")
}

/// What the checker drives: the real [`Connection`], or a broken wrapper around it.
trait Sut: Clone + Eq + Hash {
    fn handle_input(&mut self, now: Instant, input: Input);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn state(&self) -> State;
    fn phase(&self) -> Phase;
    fn live_connection(&self) -> Option<ConnectionId>;
    fn is_resumable(&self) -> bool;
}

impl Sut for Connection {
    fn handle_input(&mut self, now: Instant, input: Input) {
        Connection::handle_input(self, now, input)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Connection::handle_timeout(self, now)
    }
    fn poll_output(&mut self) -> Option<Output> {
        Connection::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Connection::poll_timeout(self)
    }
    fn state(&self) -> State {
        Connection::state(self)
    }
    fn phase(&self) -> Phase {
        Connection::phase(self)
    }
    fn live_connection(&self) -> Option<ConnectionId> {
        Connection::live_connection(self)
    }
    fn is_resumable(&self) -> bool {
        Connection::is_resumable(self)
    }
}

/// One step of the driver: an input, or a timeout call at an absolute virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Input(Input),
    Timeout(Duration),
}

/// The specification: what the outside world knows, tracked independently of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Observer {
    /// The transport that is live (from its `Open` until `Closed`/`OpenFailed`).
    live: Option<ConnectionId>,
    /// Highest id ever opened.
    last_id: u64,
    /// Mode of the live transport's `Open`.
    mode: Option<OpenMode>,
    /// The driver reported the live transport opened.
    opened: bool,
    permit_asked: bool,
    permit_granted: bool,
    permit_denied: bool,
    handshake_sent: bool,
    closing: bool,
    aborted: bool,
    /// Send time of the oldest heartbeat on the live transport not followed by an ACK, sent
    /// while reading was not paused and with no pause since: the heartbeat liveness is owed for.
    unacked_since: Option<Duration>,
    /// The driver reported reading of the live transport paused.
    paused: bool,
    /// After a non-resumable invalidation: the window in which the next open may come at the
    /// earliest (from its `min` to its `max` wait after the invalidation).
    new_session_window: Option<(Duration, Duration)>,
    /// How late the driver called `handle_timeout` (after a due deadline) since then: the
    /// detection bound of invariant 6 holds for a punctual driver and moves by its lateness.
    late: Duration,
    /// A session is held (from Ready/Resumed until something ends it).
    session: bool,
    /// `Stop` was the last of Start/Stop/Restart.
    stopped: bool,
    /// `GaveUp` was emitted and no `Start` came since.
    failed: bool,
    /// When the scheduled reconnect is due.
    reconnect_at: Option<Duration>,
    /// Consecutive transports that ended before they were stable.
    attempts: u32,
    /// When the live transport's handshake was accepted.
    identified_at: Option<Duration>,
}

impl Observer {
    /// Once a close or abort is ordered nothing more is sent: heartbeat and handshake tracking
    /// no longer matter (dropping them keeps equal situations equal).
    fn forget_liveness(&mut self) {
        self.unacked_since = None;
        self.late = Duration::ZERO;
        self.handshake_sent = false;
        self.permit_asked = false;
        self.permit_granted = false;
    }

    fn end_transport(&mut self, now: Duration, cfg: &Config) {
        let stable = self
            .identified_at
            .is_some_and(|at| now.saturating_sub(at) >= cfg.stable_after);
        self.attempts = if stable { 0 } else { self.attempts + 1 };
        *self = Observer {
            live: None,
            last_id: self.last_id,
            session: self.session,
            stopped: self.stopped,
            failed: self.failed,
            reconnect_at: self.reconnect_at,
            attempts: self.attempts,
            new_session_window: self.new_session_window,
            ..Observer::default()
        };
    }
}

/// States in which a heartbeat runs and liveness is judged.
fn beating(state: State) -> bool {
    use handover_core::ConnectingPhase::{AwaitingPermit, Handshaking};
    matches!(
        state,
        State::Identified
            | State::Stale
            | State::Connecting(Handshaking)
            | State::Connecting(AwaitingPermit)
    )
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Node<S> {
    sut: S,
    obs: Observer,
    now: Duration,
    /// Early or late timeout calls taken on the way here.
    skews: u8,
}

/// What a full exploration found.
#[derive(Debug, Clone)]
struct Explored {
    states: usize,
    transitions: usize,
    /// Reachable (from, to) pairs of [`State::name`], from `StateChanged` events.
    edges: BTreeSet<(&'static str, &'static str)>,
    /// Names of every reachable state.
    names: BTreeSet<&'static str>,
    /// Kinds of output seen (see [`output_kind`]).
    outputs: BTreeSet<&'static str>,
}

/// A label per kind of output, to show which behaviours the bounds reach.
fn output_kind(out: &Output) -> &'static str {
    match out {
        Output::Open {
            mode: OpenMode::Identify,
            ..
        } => "open identify",
        Output::Open {
            mode: OpenMode::Resume,
            ..
        } => "open resume",
        Output::AcquirePermit { .. } => "acquire permit",
        Output::Send {
            payload: Payload::Handshake(OpenMode::Identify),
            ..
        } => "send identify",
        Output::Send {
            payload: Payload::Handshake(OpenMode::Resume),
            ..
        } => "send resume",
        Output::Send {
            payload: Payload::Heartbeat,
            ..
        } => "send heartbeat",
        Output::Close { code: 1000, .. } => "close end session",
        Output::Close { .. } => "close keep resumable",
        Output::Abort { .. } => "abort",
        Output::Event(Event::StateChanged { .. }) => "state changed",
        Output::Event(Event::Ready { .. }) => "ready",
        Output::Event(Event::Resumed { .. }) => "resumed",
        Output::Event(Event::ReconnectScheduled {
            mode: OpenMode::Identify,
            ..
        }) => "reconnect identify",
        Output::Event(Event::ReconnectScheduled {
            mode: OpenMode::Resume,
            ..
        }) => "reconnect resume",
        Output::Event(Event::GaveUp(GiveUpReason::FatalClose { .. })) => "gave up fatal",
        Output::Event(Event::GaveUp(GiveUpReason::PermitDenied)) => "gave up permit denied",
        Output::Event(Event::GaveUp(GiveUpReason::MaxAttempts { .. })) => "gave up max attempts",
        Output::Event(_) => "other event",
    }
}

/// A property violation with the shortest input path from the initial state.
#[derive(Debug)]
struct Counterexample {
    violation: String,
    path: Vec<Step>,
    outputs: Vec<Output>,
}

impl std::fmt::Display for Counterexample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "violation: {}", self.violation)?;
        writeln!(f, "shortest path ({} steps):", self.path.len())?;
        let mut now = Duration::ZERO;
        for (i, step) in self.path.iter().enumerate() {
            match step {
                Step::Input(input) => writeln!(f, "  {i:>3}. at {now:?}: input {input:?}")?,
                Step::Timeout(t) => {
                    now = now.max(*t);
                    writeln!(f, "  {i:>3}. handle_timeout({t:?})")?
                }
            }
        }
        writeln!(f, "outputs of the last step: {:?}", self.outputs)
    }
}

/// Every step explored from a node.
fn steps<S: Sut>(node: &Node<S>, base: Instant, bounds: Bounds) -> Vec<Step> {
    let mut steps = vec![
        Step::Input(Input::Start),
        Step::Input(Input::Stop(StopIntent::EndSession)),
        Step::Input(Input::Stop(StopIntent::KeepResumable)),
        Step::Input(Input::Restart(RestartReason::HealthMonitor)),
        Step::Input(Input::Restart(RestartReason::TransportFault)),
    ];
    let last = node.obs.last_id;
    let mut ids = vec![ConnectionId(last), ConnectionId(last + 1)];
    if last > 1 {
        ids.push(ConnectionId(last - 1));
    }
    for conn in ids.into_iter().filter(|c| c.0 > 0) {
        steps.extend(
            [
                Input::Opened(conn),
                Input::OpenFailed(conn),
                Input::Closed { conn, code: None },
                Input::Closed {
                    conn,
                    code: Some(RESUME_CODE),
                },
                Input::Closed {
                    conn,
                    code: Some(NEW_SESSION_CODE),
                },
                Input::Closed {
                    conn,
                    code: Some(FATAL_CODE),
                },
                Input::PermitGranted(conn),
                Input::PermitDenied(conn),
                Input::Backpressure { conn, paused: true },
                Input::Backpressure {
                    conn,
                    paused: false,
                },
            ]
            .map(Step::Input),
        );
        for signal in [
            Signal::Hello { interval: INTERVAL },
            Signal::HandshakeAccepted { resumed: false },
            Signal::HandshakeAccepted { resumed: true },
            Signal::HeartbeatAck,
            Signal::HeartbeatRequested,
            Signal::ReconnectRequested,
            Signal::SessionInvalidated { resumable: true },
            Signal::SessionInvalidated { resumable: false },
        ] {
            steps.push(Step::Input(Input::Signal { conn, signal }));
        }
    }
    // Spurious (or exactly due) at the current time.
    steps.push(Step::Timeout(node.now));
    if let Some(at) = node.sut.poll_timeout() {
        let due = at.saturating_duration_since(base);
        // Due; and, once per path, 1 ms early (a no-op that moves time) or 3 ms late (a
        // driver that falls behind and must catch up).
        steps.push(Step::Timeout(due));
        if node.skews < bounds.skews {
            steps.extend([due.saturating_sub(ms(1)), due + ms(3)].map(Step::Timeout));
        }
        steps.retain(|s| !matches!(s, Step::Timeout(t) if *t != node.now && (*t <= node.now || *t > bounds.horizon)));
    }
    steps
}

/// Applies `step` to `before`, checks every property, and returns the successor.
fn check_step<S: Sut>(
    before: &Node<S>,
    step: Step,
    base: Instant,
    cfg: &Config,
    edges: &mut BTreeSet<(&'static str, &'static str)>,
    outputs: &mut Vec<Output>,
) -> Result<Node<S>, String> {
    let mut after = before.clone();
    outputs.clear();
    let before_state = before.sut.state();
    let before_phase = before.sut.phase();
    let obs = &mut after.obs;

    // The input's meaning, before the machine's reaction is looked at.
    let mut fatal_close = None;
    let mut transport_gone = false;
    let mut stale_id = false;
    match step {
        Step::Timeout(t) => {
            if obs.unacked_since.is_some()
                && let Some(due) = before.sut.poll_timeout()
            {
                obs.late += (base + t).saturating_duration_since(due);
            }
            if t > before.now && before.sut.poll_timeout() != Some(base + t) {
                after.skews += 1;
            }
            after.now = after.now.max(t);
            after.sut.handle_timeout(base + t);
        }
        Step::Input(input) => {
            let tagged = match input {
                Input::Start | Input::Stop(_) | Input::Restart(_) => None,
                Input::Opened(c)
                | Input::OpenFailed(c)
                | Input::PermitGranted(c)
                | Input::PermitDenied(c)
                | Input::Closed { conn: c, .. }
                | Input::Signal { conn: c, .. }
                | Input::Backpressure { conn: c, .. } => Some(c),
            };
            if tagged.is_some() && tagged != obs.live {
                stale_id = true;
            }
            after.sut.handle_input(base + after.now, input);
            if !stale_id {
                match input {
                    Input::Start => {
                        obs.stopped = false;
                        obs.failed = false;
                        if before_state == State::Closed
                            && matches!(
                                before_phase,
                                Phase::NotConnected | Phase::Stopped | Phase::Failed
                            )
                        {
                            obs.attempts = 0;
                        }
                    }
                    Input::Stop(intent) => {
                        obs.stopped = true;
                        obs.reconnect_at = None;
                        if intent == StopIntent::EndSession {
                            obs.session = false;
                        }
                    }
                    Input::Restart(_) => obs.stopped = false,
                    Input::Opened(_) => obs.opened = true,
                    Input::OpenFailed(_) => transport_gone = true,
                    Input::Closed { code, .. } => {
                        transport_gone = true;
                        match cfg.close_rules.classify(code) {
                            CloseClass::Resume => {}
                            CloseClass::NewSession => obs.session = false,
                            CloseClass::Fatal => {
                                obs.session = false;
                                fatal_close = Some(code);
                            }
                        }
                    }
                    Input::PermitGranted(_) => {
                        if obs.permit_asked {
                            obs.permit_granted = true;
                        }
                    }
                    Input::PermitDenied(_) => {
                        if obs.permit_asked && !obs.permit_granted {
                            obs.permit_denied = true;
                        }
                    }
                    Input::Backpressure { paused, .. } => {
                        obs.paused = paused;
                        // Liveness is owed only for heartbeats sent after reading resumed.
                        if paused {
                            obs.unacked_since = None;
                            obs.late = Duration::ZERO;
                        }
                    }
                    Input::Signal { signal, .. } => match signal {
                        Signal::HeartbeatAck => {
                            obs.unacked_since = None;
                            obs.late = Duration::ZERO;
                        }
                        Signal::SessionInvalidated { resumable: false } => {
                            obs.session = false;
                            if obs.new_session_window.is_none() {
                                let now = after.now;
                                obs.new_session_window = Some((
                                    now + cfg.invalid_session_wait_min,
                                    now + cfg.invalid_session_wait_max,
                                ));
                            }
                        }
                        _ => {}
                    },
                }
                if transport_gone {
                    obs.end_transport(after.now, cfg);
                }
            }
        }
    }
    while let Some(out) = after.sut.poll_output() {
        outputs.push(out);
    }
    let now = after.now;
    let after_state = after.sut.state();
    let obs = &mut after.obs;

    // Invariant 4: inputs naming any other transport change nothing.
    if stale_id {
        if !outputs.is_empty() || after.sut != before.sut {
            return Err("an input for a transport that is not live changed the machine".into());
        }
        return Ok(after);
    }
    // Spurious timeouts are no-ops.
    if let Step::Timeout(t) = step
        && before
            .sut
            .poll_timeout()
            .is_none_or(|at| at > base + t.max(before.now))
        && (!outputs.is_empty() || after.sut != before.sut)
    {
        return Err("a timeout before any deadline changed the machine".into());
    }

    let mut chain = before_state;
    let mut gave_up_now = None;
    for out in outputs.iter().copied() {
        match out {
            Output::Open { conn, mode } => {
                if let Some(live) = obs.live {
                    return Err(format!("invariant 1: {conn} opened while {live} is live"));
                }
                if conn.0 <= obs.last_id {
                    return Err(format!("invariant 1: {conn} is not a fresh id"));
                }
                if obs.stopped {
                    return Err("invariant 5: open after stop without start".into());
                }
                if obs.failed {
                    return Err("invariant 7: open after giving up without start".into());
                }
                if (mode == OpenMode::Resume) != obs.session {
                    return Err(format!(
                        "invariant 8: open mode {mode:?} but session held = {}",
                        obs.session
                    ));
                }
                if let Some(at) = obs.reconnect_at
                    && now < at
                {
                    return Err(format!("invariant 7: reconnect at {now:?} before {at:?}"));
                }
                if let Some((earliest, _)) = obs.new_session_window
                    && now < earliest
                    && before_state == State::Closed
                    && before_phase == Phase::BackingOff
                {
                    return Err(format!(
                        "new session opened at {now:?}, before the invalid-session wait ends at \
                         {earliest:?}"
                    ));
                }
                *obs = Observer {
                    live: Some(conn),
                    last_id: conn.0,
                    mode: Some(mode),
                    session: obs.session,
                    stopped: obs.stopped,
                    failed: obs.failed,
                    attempts: obs.attempts,
                    ..Observer::default()
                };
            }
            Output::AcquirePermit { conn } => {
                if obs.live != Some(conn) || !obs.opened {
                    return Err(format!("permit asked for {conn} that is not open"));
                }
                if !cfg.gate_new_sessions || obs.mode != Some(OpenMode::Identify) {
                    return Err("permit asked without the gate or for a resume".into());
                }
                if obs.permit_asked {
                    return Err("permit asked twice".into());
                }
                obs.permit_asked = true;
            }
            Output::Send { conn, payload } => {
                if obs.live != Some(conn) || !obs.opened || obs.closing || obs.aborted {
                    return Err(format!("send on {conn} that is not open or is closing"));
                }
                match payload {
                    Payload::Handshake(mode) => {
                        if obs.handshake_sent || obs.mode != Some(mode) {
                            return Err("handshake repeated or of the wrong mode".into());
                        }
                        if cfg.gate_new_sessions
                            && mode == OpenMode::Identify
                            && !obs.permit_granted
                        {
                            return Err("identify sent without a permit".into());
                        }
                        obs.handshake_sent = true;
                    }
                    Payload::Heartbeat => {
                        if obs.unacked_since.is_none() && !obs.paused {
                            obs.unacked_since = Some(now);
                            obs.late = Duration::ZERO;
                        }
                    }
                }
            }
            Output::Close { conn, code } => {
                if obs.live != Some(conn) || !obs.opened || obs.closing || obs.aborted {
                    return Err(format!(
                        "close of {conn} that is not open or already closing"
                    ));
                }
                let rules = cfg.close_rules;
                if code != rules.end_session_code && code != rules.keep_resumable_code {
                    return Err(format!("close with unexpected code {code}"));
                }
                if obs.session && code != rules.keep_resumable_code {
                    return Err("invariant 8: a held session closed with the end code".into());
                }
                obs.closing = true;
                obs.forget_liveness();
            }
            Output::Abort { conn } => {
                if obs.live != Some(conn) || obs.aborted {
                    return Err(format!(
                        "abort of {conn} that is not live or already aborted"
                    ));
                }
                obs.aborted = true;
                obs.forget_liveness();
            }
            Output::Event(Event::StateChanged { from, to }) => {
                if from != chain || from == to {
                    return Err(format!("state change {from:?} -> {to:?} after {chain:?}"));
                }
                if from == State::Draining && to != State::Closed {
                    return Err(format!("invariant 2: draining left to {to:?}"));
                }
                if matches!(to, State::Connecting(_))
                    && !matches!(from, State::Connecting(_) | State::Closed)
                {
                    return Err(format!("invariant 3: connecting entered from {from:?}"));
                }
                edges.insert((from.name(), to.name()));
                chain = to;
            }
            Output::Event(Event::Ready { conn } | Event::Resumed { conn }) => {
                if obs.live != Some(conn) || !obs.handshake_sent {
                    return Err(format!("ready/resumed on {conn} without a handshake"));
                }
                obs.session = true;
                obs.identified_at = Some(now);
            }
            Output::Event(Event::ReconnectScheduled { mode, delay }) => {
                if obs.stopped || obs.failed || obs.live.is_some() {
                    return Err("reconnect scheduled while stopped, failed or live".into());
                }
                if (mode == OpenMode::Resume) != obs.session {
                    return Err(format!("invariant 8: reconnect as {mode:?}"));
                }
                // The first reconnect after a successful session within the spread; from the
                // second consecutive failure on, the backoff; never before the wait after a
                // non-resumable invalidation.
                let b = cfg.backoff;
                let (lo, hi) = if obs.attempts == 0 {
                    (Duration::ZERO, cfg.reconnect_spread)
                } else {
                    let ceiling = b.ceiling(obs.attempts);
                    (b.floor.min(ceiling), ceiling.min(b.cap))
                };
                let (earliest, latest) = match obs.new_session_window {
                    Some((e, l)) => ((now + lo).max(e), (now + hi).max(l)),
                    None => (now + lo, now + hi),
                };
                let at = now + delay;
                if at < earliest || at > latest {
                    return Err(format!(
                        "invariant 7: reconnect at {at:?} outside [{earliest:?}, {latest:?}] \
                         after {} failures",
                        obs.attempts
                    ));
                }
                obs.reconnect_at = Some(at);
            }
            Output::Event(Event::GaveUp(reason)) => {
                if obs.failed || gave_up_now.is_some() {
                    return Err("invariant 7: gave up twice".into());
                }
                let expected = match reason {
                    GiveUpReason::FatalClose { code } => fatal_close == Some(code),
                    GiveUpReason::PermitDenied => obs.permit_denied || transport_gone,
                    GiveUpReason::MaxAttempts { attempts } => {
                        cfg.max_attempts.is_some_and(|m| attempts >= m) && attempts == obs.attempts
                    }
                    _ => false,
                };
                if !expected {
                    return Err(format!("unexpected give-up {reason:?}"));
                }
                gave_up_now = Some(reason);
                obs.failed = true;
                obs.reconnect_at = None;
            }
            Output::Event(_) => {}
        }
    }
    if chain != after_state {
        return Err(format!(
            "state is {after_state:?} but events end at {chain:?}"
        ));
    }

    // Invariant 6, both ways, on the step that judges: a counted heartbeat unanswered for one
    // interval is aborted at once (not drained), and nothing else is judged dead.
    if let Step::Timeout(_) = step
        && beating(before_state)
    {
        let judged = outputs.iter().any(|o| matches!(o, Output::Abort { .. }));
        let owed = before
            .obs
            .unacked_since
            .is_some_and(|since| now >= since + INTERVAL);
        if judged && !owed {
            return Err(format!(
                "invariant 6: judged dead without a counted heartbeat unanswered for an interval \
                 (since {:?}, paused {})",
                before.obs.unacked_since, before.obs.paused
            ));
        }
        if owed && !judged {
            return Err("invariant 6: a dead connection was not aborted at once".into());
        }
        if judged && after_state != State::Draining {
            return Err(format!("judged dead but {after_state:?}"));
        }
    }
    // A transport fault restarts a transport that is open and still connecting.
    if let Step::Input(Input::Restart(RestartReason::TransportFault)) = step
        && matches!(before_state, State::Connecting(p) if p != handover_core::ConnectingPhase::Opening)
        && (after_state != State::Draining
            || !outputs.iter().any(|o| {
                matches!(o, Output::Close { code, .. } if *code == cfg.close_rules.keep_resumable_code)
            }))
    {
        return Err(format!(
            "a transport fault in {before_state:?} did not close the transport resumably"
        ));
    }

    // Transition properties.
    if before_state == State::Draining && after_state != State::Draining {
        let confirmed = matches!(
            step,
            Step::Input(Input::Closed { conn, .. } | Input::OpenFailed(conn))
                if Some(conn) == before.obs.live
        );
        if !confirmed || after_state != State::Closed {
            return Err(format!(
                "invariant 2: draining left to {after_state:?} without the driver's confirmation"
            ));
        }
    }
    if transport_gone && after_state != State::Closed {
        return Err(format!(
            "transport confirmed gone but state is {after_state:?}"
        ));
    }
    if let Some(code) = fatal_close
        && gave_up_now != Some(GiveUpReason::FatalClose { code })
    {
        return Err("invariant 7: fatal close without giving up".into());
    }
    if obs.stopped {
        if !matches!(after_state, State::Closed | State::Draining) {
            return Err(format!("invariant 5: {after_state:?} after stop"));
        }
        if before.obs.stopped && before_state == State::Closed && after_state != State::Closed {
            return Err("invariant 5: left closed after stop without start".into());
        }
    }
    if let Step::Timeout(t) = step
        && after.sut.poll_timeout().is_some_and(|at| at <= base + t)
    {
        return Err("a timeout left a deadline that is already due".into());
    }

    check_state(&after, base, cfg)?;
    Ok(after)
}

/// Properties of a single state.
fn check_state<S: Sut>(node: &Node<S>, base: Instant, _cfg: &Config) -> Result<(), String> {
    let (sut, obs) = (&node.sut, &node.obs);
    let state = sut.state();
    if sut.live_connection() != obs.live || state.has_transport() != obs.live.is_some() {
        return Err(format!(
            "invariant 1: machine says {:?} ({state:?}) is live, observer says {:?}",
            sut.live_connection(),
            obs.live
        ));
    }
    if sut.is_resumable() != obs.session {
        return Err("the machine's session disagrees with the observer's".into());
    }
    let waits_on_driver = state == State::Draining && obs.aborted;
    let idle = state == State::Closed
        && matches!(
            sut.phase(),
            Phase::NotConnected | Phase::Stopped | Phase::Failed
        );
    match sut.poll_timeout() {
        None if !(idle || waits_on_driver) => {
            return Err(format!("{state:?} ({:?}) has no deadline", sut.phase()));
        }
        Some(_) if idle => return Err("an idle machine has a deadline".into()),
        _ => {}
    }
    if (sut.phase() == Phase::Failed) != obs.failed {
        return Err("failed phase disagrees with the give-up seen".into());
    }
    if sut.phase() == Phase::BackingOff
        && sut.poll_timeout() != obs.reconnect_at.map(|at| base + at)
    {
        return Err("backing off without the scheduled reconnect as deadline".into());
    }
    // Invariant 6: a heartbeat sent while reading was not paused (and no pause since) that gets
    // no ACK is judged one interval after it was sent.
    if let Some(since) = obs.unacked_since
        && beating(state)
    {
        let limit = since + INTERVAL + obs.late;
        if node.now > limit || sut.poll_timeout().is_none_or(|at| at > base + limit) {
            return Err(format!(
                "invariant 6: heartbeat unanswered since {since:?} not detected by {limit:?}"
            ));
        }
    }
    Ok(())
}

/// A multiply-rotate hasher: SipHash dominates the run time of a debug build, and nothing
/// here needs protection from adversarial keys.
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// A guard against a change that makes the space explode (memory, not only time).
const MAX_STATES: usize = 1_000_000;

/// Breadth-first exploration of every reachable state from `root`.
fn explore<S: Sut>(root: S, cfg: &Config, bounds: Bounds) -> Result<Explored, Counterexample> {
    let base = Instant::now();
    let root = Node {
        sut: root,
        obs: Observer::default(),
        now: Duration::ZERO,
        skews: 0,
    };
    let mut edges = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut index: FastMap<Node<S>, u32> = FastMap::default();
    // Parent link and the step that led here, per state index.
    let mut links: Vec<(u32, Option<Step>)> = vec![(0, None)];
    let mut queue = VecDeque::new();
    let mut outputs = Vec::new();
    let mut transitions = 0usize;
    let path_to = |links: &Vec<(u32, Option<Step>)>, mut i: u32| {
        let mut path = Vec::new();
        while let (parent, Some(step)) = links[i as usize] {
            path.push(step);
            i = parent;
        }
        path.reverse();
        path
    };
    if let Err(violation) = check_state(&root, base, cfg) {
        return Err(Counterexample {
            violation,
            path: Vec::new(),
            outputs: Vec::new(),
        });
    }
    names.insert(root.sut.state().name());
    index.insert(root.clone(), 0);
    queue.push_back((root, 0u32));
    while let Some((node, id)) = queue.pop_front() {
        if node.obs.last_id > bounds.max_conn || node.now > bounds.horizon {
            continue;
        }
        if index.len() > MAX_STATES {
            panic!("more than {MAX_STATES} states: the bounds no longer keep the space small");
        }
        for step in steps(&node, base, bounds) {
            transitions += 1;
            match check_step(&node, step, base, cfg, &mut edges, &mut outputs) {
                Ok(next) => {
                    kinds.extend(outputs.iter().map(output_kind));
                    if index.contains_key(&next) {
                        continue;
                    }
                    let next_id = u32::try_from(links.len()).expect("state count fits u32");
                    links.push((id, Some(step)));
                    names.insert(next.sut.state().name());
                    index.insert(next.clone(), next_id);
                    queue.push_back((next, next_id));
                }
                Err(violation) => {
                    let mut path = path_to(&links, id);
                    path.push(step);
                    return Err(Counterexample {
                        violation,
                        path,
                        outputs: outputs.clone(),
                    });
                }
            }
        }
    }
    Ok(Explored {
        states: index.len(),
        transitions,
        edges,
        names,
        outputs: kinds,
    })
}

/// Both configurations (permit gate off and on), explored once per test binary under each
/// set of bounds: `[off, on]` for [`BOUNDS`] (or the deep bounds), then `[off, on]` for
/// [`SKEWED_BOUNDS`].
fn explored() -> &'static [Explored; 4] {
    static RESULT: OnceLock<[Explored; 4]> = OnceLock::new();
    RESULT.get_or_init(|| {
        let run = |gate: bool, bounds: Bounds| {
            let cfg = model_config(gate);
            let started = std::time::Instant::now();
            let result = explore(Connection::new(cfg, 0x5eed), &cfg, bounds);
            match result {
                Ok(e) => {
                    println!(
                        "gate_new_sessions={gate}, {bounds:?}: {} states, {} transitions in {:?}",
                        e.states,
                        e.transitions,
                        started.elapsed()
                    );
                    e
                }
                Err(cx) => panic!("gate_new_sessions={gate}, {bounds:?}:\n{cx}"),
            }
        };
        let main = if deep() { DEEP_BOUNDS } else { BOUNDS };
        std::thread::scope(|s| {
            let on = s.spawn(|| (run(true, main), run(true, SKEWED_BOUNDS)));
            let off = (run(false, main), run(false, SKEWED_BOUNDS));
            let on = on.join().expect("gated exploration");
            [off.0, on.0, off.1, on.1]
        })
    })
}

#[test]
fn every_reachable_state_keeps_the_invariants() {
    let [off, on, skewed_off, skewed_on] = explored();
    // Pinned: a change that explodes or collapses the space must be looked at.
    let counts = (off.states, on.states, skewed_off.states, skewed_on.states);
    assert!(
        deep() || counts == (146_013, 176_464, 15_192, 20_524),
        "reachable state counts changed (permit gate off, on; skewed off, on): {counts:?}"
    );
    let all_states = [
        "closed",
        "opening",
        "awaiting_hello",
        "handshaking",
        "identified",
        "stale",
        "draining",
    ];
    let all_outputs = [
        "open identify",
        "open resume",
        "send identify",
        "send resume",
        "send heartbeat",
        "close end session",
        "close keep resumable",
        "abort",
        "state changed",
        "ready",
        "resumed",
        "reconnect identify",
        "reconnect resume",
        "gave up fatal",
        "gave up max attempts",
    ];
    for e in [off, on] {
        for name in all_states {
            assert!(e.names.contains(name), "{name} never reached");
        }
        for kind in all_outputs {
            assert!(
                e.outputs.contains(kind),
                "no {kind} output within the bounds"
            );
        }
    }
    for kind in ["acquire permit", "gave up permit denied"] {
        assert!(on.outputs.contains(kind), "gate on: no {kind}");
        assert!(!off.outputs.contains(kind), "gate off: {kind}");
    }
    assert!(on.names.contains("awaiting_permit"));
    assert!(!off.names.contains("awaiting_permit"));
    // The skewed exploration reaches the liveness judgment with late and early drivers.
    for e in [skewed_off, skewed_on] {
        assert!(e.names.contains("stale") && e.outputs.contains("abort"));
    }
}

/// A machine with a planted bug: when the drain deadline fires it also opens a new transport,
/// as a naive "hot restart" would.
#[derive(Clone, PartialEq, Eq, Hash)]
struct OpensOnDrainDeadline {
    inner: Connection,
    out: VecDeque<Output>,
}

impl OpensOnDrainDeadline {
    fn pull(&mut self) {
        while let Some(out) = self.inner.poll_output() {
            self.out.push_back(out);
        }
    }
}

impl Sut for OpensOnDrainDeadline {
    fn handle_input(&mut self, now: Instant, input: Input) {
        self.inner.handle_input(now, input);
        self.pull();
    }
    fn handle_timeout(&mut self, now: Instant) {
        let draining = self.inner.state() == State::Draining;
        self.inner.handle_timeout(now);
        let before = self.out.len();
        self.pull();
        let aborted = self.out.iter().skip(before).find_map(|o| match o {
            Output::Abort { conn } => Some(*conn),
            _ => None,
        });
        if let (true, Some(conn)) = (draining, aborted) {
            self.out.push_back(Output::Open {
                conn: ConnectionId(conn.0 + 100),
                mode: OpenMode::Identify,
            });
        }
    }
    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn state(&self) -> State {
        self.inner.state()
    }
    fn phase(&self) -> Phase {
        self.inner.phase()
    }
    fn live_connection(&self) -> Option<ConnectionId> {
        self.inner.live_connection()
    }
    fn is_resumable(&self) -> bool {
        self.inner.is_resumable()
    }
}

#[test]
fn the_checker_finds_a_planted_overlap() {
    let cfg = model_config(false);
    let broken = OpensOnDrainDeadline {
        inner: Connection::new(cfg, 0x5eed),
        out: VecDeque::new(),
    };
    let cx = explore(broken, &cfg, BOUNDS).expect_err("the planted bug must be found");
    println!("{cx}");
    assert!(
        cx.violation.starts_with("invariant 1:"),
        "unexpected violation: {}",
        cx.violation
    );
    // Shortest path: start, opened, a drain ordered, the drain deadline.
    assert_eq!(cx.path.len(), 4, "not the shortest path:\n{cx}");
    assert!(matches!(cx.path[3], Step::Timeout(_)));
    assert!(
        cx.outputs.iter().any(|o| matches!(o, Output::Abort { .. }))
            && cx.outputs.iter().any(|o| matches!(o, Output::Open { .. }))
    );
}

/// The mermaid diagram of every reachable state change, sorted so the text is stable.
fn render_diagram(edges: &BTreeSet<(&'static str, &'static str)>) -> String {
    let mut text = String::from(
        "# State diagram\n\n\
         Every state change the model checker (`core/tests/model_check.rs`) reaches from the \
         initial state, with the permit gate off and on, named by `State::name()`. The file is \
         generated; a test fails when it is stale. Regenerate with:\n\n\
         ```sh\n\
         UPDATE_STATE_DIAGRAM=1 cargo test -p handover-core --test model_check\n\
         ```\n\n\
         The four `Connecting` phases are `opening`, `awaiting_hello`, `awaiting_permit` and \
         `handshaking`. See [architecture.md](architecture.md) for what each state means.\n\n\
         ```mermaid\nstateDiagram-v2\n    [*] --> closed\n",
    );
    for (from, to) in edges {
        text.push_str(&format!("    {from} --> {to}\n"));
    }
    text.push_str("```\n");
    text
}

#[test]
fn state_diagram_is_up_to_date() {
    let edges: BTreeSet<_> = explored()
        .iter()
        .flat_map(|e| e.edges.iter().copied())
        .collect();
    // Structural facts the diagram must show.
    for (from, to) in &edges {
        if *from == "draining" {
            assert_eq!(*to, "closed", "draining leaves only to closed");
        }
        if *to == "opening" {
            assert_eq!(*from, "closed", "a transport is opened only from closed");
        }
    }
    let text = render_diagram(&edges);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/state-diagram.md");
    if std::env::var_os("UPDATE_STATE_DIAGRAM").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("write docs/state-diagram.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "docs/state-diagram.md is stale (or missing). Regenerate it with:\n  \
         UPDATE_STATE_DIAGRAM=1 cargo test -p handover-core --test model_check\n\
         expected:\n{text}"
    );
}
