//! The specification: an observer of invariants 1-8 that sees only what a driver sees.

use std::time::{Duration, Instant};

use handover_core::{
    CloseClass, Config, ConnectingPhase, Connection, Event, GiveUpReason, Input, OpenMode, Output,
    Payload, Phase, RejectedInput, Rejection, RestartReason, Signal, State, StopIntent,
    TransportId,
};

use crate::violation::{Invariant, Step, Violation};

/// What the observer needs from the machine under test: the calls and views of
/// [`Connection`]. Implemented for `Connection`; implement it for a wrapper of your own (a
/// deliberately broken one, say) to check that instead.
///
/// Equality must mean "behaves the same from now on": the observer compares the machine
/// before and after an input for a transport that is not live (invariant 4) and around a
/// spurious timeout, which must both leave it equal.
pub trait Machine: Clone + PartialEq {
    /// [`Connection::handle_input`].
    fn handle_input(&mut self, now: Instant, input: Input);
    /// [`Connection::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// [`Connection::poll_output`].
    fn poll_output(&mut self) -> Option<Output>;
    /// [`Connection::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// [`Connection::state`].
    fn state(&self) -> State;
    /// [`Connection::phase`].
    fn phase(&self) -> Phase;
    /// [`Connection::live_transport`].
    fn live_transport(&self) -> Option<TransportId>;
    /// [`Connection::is_resumable`].
    fn is_resumable(&self) -> bool;
    /// [`Connection::rejected_inputs`], if the machine counts them (`None`, the default:
    /// only the [`Event::InputRejected`] outputs are checked).
    fn rejected_inputs(&self) -> Option<u64> {
        None
    }
}

impl Machine for Connection {
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
    fn live_transport(&self) -> Option<TransportId> {
        Connection::live_transport(self)
    }
    fn is_resumable(&self) -> bool {
        Connection::is_resumable(self)
    }
    fn rejected_inputs(&self) -> Option<u64> {
        Some(Connection::rejected_inputs(self))
    }
}

/// The specification of invariants 1-8: what the outside world knows, tracked from the inputs
/// fed to the machine and the outputs taken from it, independently of the machine.
///
/// Feed it every step with [`check_step`](Self::check_step) (the machine before and after,
/// and every output the step produced); it answers with the first [`Violation`] it sees. It
/// keeps no history, so it is small, `Eq` and `Hash`: a model checker can store it next to
/// the machine in each explored state (two observers are equal when they judge every future
/// step alike). For checking a driver, [`Checker`](crate::Checker) wraps machine and observer
/// and keeps the history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Observer {
    /// The transport that is live (from its `Open` until `Closed`/`OpenFailed`).
    live: Option<TransportId>,
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
    /// The heartbeat interval of the live transport's accepted hello, until a close or abort
    /// is ordered (the machine holds it exactly as long).
    interval: Option<Duration>,
    /// Send time of the oldest heartbeat on the live transport not followed by an ACK, sent
    /// while reading was not paused and with no pause since: the heartbeat liveness is owed for.
    unacked_since: Option<Instant>,
    /// The driver reported reading of the live transport paused.
    paused: bool,
    /// After a non-resumable invalidation: the window in which the next open may come at the
    /// earliest (from its `min` to its `max` wait after the invalidation).
    new_session_window: Option<(Instant, Instant)>,
    /// How late the driver called the machine (after a due deadline) since the counted
    /// heartbeat: the detection bound of invariant 6 holds for a punctual driver and moves by
    /// its lateness.
    late: Duration,
    /// A session is held (from Ready/Resumed until something ends it).
    session: bool,
    /// `Stop` was the last of Start/Stop/Restart.
    stopped: bool,
    /// `GaveUp` was emitted and no `Start` came since.
    failed: bool,
    /// When the scheduled reconnect is due.
    reconnect_at: Option<Instant>,
    /// Consecutive transports that ended before they were stable.
    attempts: u32,
    /// When the live transport's handshake was accepted.
    identified_at: Option<Instant>,
}

/// States in which a heartbeat runs and liveness is judged.
fn beating(state: State) -> bool {
    matches!(
        state,
        State::Identified
            | State::Stale
            | State::Connecting(ConnectingPhase::Handshaking)
            | State::Connecting(ConnectingPhase::AwaitingPermit)
    )
}

/// The transport an input names, if it names one.
pub(crate) fn tagged(input: Input) -> Option<TransportId> {
    input.conn()
}

/// Whether the core must reject `input`, which names `conn`, a transport that is not live,
/// given that ids `1..=last_id` were opened: the driver contract, restated independently of
/// the machine. Every opened id but the live one has ended.
fn contract_breach(input: Input, conn: TransportId, last_id: u64) -> Option<Rejection> {
    if conn.0 == 0 || conn.0 > last_id {
        Some(Rejection::NeverOpened)
    } else if matches!(input, Input::Closed { .. } | Input::OpenFailed(_)) {
        Some(Rejection::SecondEndReport)
    } else {
        None
    }
}

impl Observer {
    /// An observer for a machine in its initial state: never started, no session held (for a
    /// machine made with [`Connection::with_restored_session`], use
    /// [`with_session`](Self::with_session)).
    pub fn new() -> Self {
        Observer::default()
    }

    /// An observer for a fresh machine that holds a restored session.
    pub fn with_session() -> Self {
        Observer {
            session: true,
            ..Observer::default()
        }
    }

    /// The transport the observer believes live (from its `Open` until the driver reported it
    /// gone).
    pub fn live(&self) -> Option<TransportId> {
        self.live
    }

    /// The highest transport id opened so far (0 before the first `Open`).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Once a close or abort is ordered nothing more is sent: heartbeat and handshake tracking
    /// no longer matter (dropping them keeps equal situations equal).
    fn forget_liveness(&mut self) {
        self.interval = None;
        self.unacked_since = None;
        self.late = Duration::ZERO;
        self.handshake_sent = false;
        self.permit_asked = false;
        self.permit_granted = false;
    }

    fn end_transport(&mut self, now: Instant, cfg: &Config) {
        let stable = self
            .identified_at
            .is_some_and(|at| now.saturating_duration_since(at) >= cfg.stable_after);
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

    /// Checks one step: `before` is the machine before it, `after` the machine after it with
    /// every output of the step drained into `outputs`, in order. `config` must be the one the
    /// machine was built with. Updates the observer and checks every property of the step and
    /// of the state it leads to. [`Step::SocketOpened`] and [`Step::SocketDropped`] are the
    /// driver's business ([`Checker`](crate::Checker)); here they are accepted as no-ops.
    ///
    /// The returned violation carries the step and its outputs but no history.
    pub fn check_step<M: Machine>(
        &mut self,
        config: &Config,
        step: Step,
        before: &M,
        after: &M,
        outputs: &[Output],
    ) -> Result<(), Violation> {
        self.step(config, step, before, after, outputs)
            .map_err(|(invariant, message)| Violation {
                outputs: outputs.to_vec(),
                ..Violation::new(invariant, message, step)
            })
    }

    /// Checks the properties of a single state, `machine` at time `now` (as
    /// [`check_step`](Self::check_step) does after every step): the machine's views agree
    /// with the observer, every state that waits for time has a deadline, and a counted
    /// heartbeat is judged in time.
    pub fn check_state<M: Machine>(&self, machine: &M, now: Instant) -> Result<(), Violation> {
        self.state_properties(machine, now)
            .map_err(|(invariant, message)| {
                Violation::new(invariant, message, Step::Timeout { at: now })
            })
    }

    fn step<M: Machine>(
        &mut self,
        cfg: &Config,
        step: Step,
        before: &M,
        after: &M,
        outputs: &[Output],
    ) -> Result<(), (Invariant, String)> {
        use Invariant::*;
        let before_obs = self.clone();
        let before_state = before.state();
        let before_phase = before.phase();
        let obs = self;

        // The input's meaning, before the machine's reaction is looked at.
        let mut fatal_close = None;
        let mut transport_gone = false;
        // The transport a stale input names (one that is not live).
        let mut stale = None;
        let now = match step {
            Step::Timeout { at } => {
                if obs.unacked_since.is_some()
                    && let Some(due) = before.poll_timeout()
                {
                    obs.late += at.saturating_duration_since(due);
                }
                at
            }
            Step::Input { at, input } => {
                // A driver that feeds an input after the judgment fell due, before calling
                // `handle_timeout`, is late by as much.
                if let (Some(since), Some(interval)) = (obs.unacked_since, obs.interval) {
                    let limit = since + interval + obs.late;
                    obs.late += at.saturating_duration_since(limit);
                }
                let tag = tagged(input);
                if tag.is_some() && tag != obs.live {
                    stale = tag;
                }
                if stale.is_none() {
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
                            // The machine accepts a hello only while awaiting one.
                            Signal::Hello { interval }
                                if before_state
                                    == State::Connecting(ConnectingPhase::AwaitingHello) =>
                            {
                                obs.interval = Some(interval.max(Duration::from_millis(1)));
                            }
                            Signal::HeartbeatAck => {
                                obs.unacked_since = None;
                                obs.late = Duration::ZERO;
                            }
                            Signal::SessionInvalidated { resumable: false } => {
                                obs.session = false;
                                if obs.new_session_window.is_none() {
                                    obs.new_session_window = Some((
                                        at + cfg.invalid_session_wait_min,
                                        at + cfg.invalid_session_wait_max,
                                    ));
                                }
                            }
                            _ => {}
                        },
                    }
                    if transport_gone {
                        obs.end_transport(at, cfg);
                    }
                }
                at
            }
            Step::SocketOpened(_) | Step::SocketDropped(_) => return Ok(()),
        };
        let after_state = after.state();

        // Invariant 4: inputs naming any other transport change nothing; those that break the
        // driver contract are rejected with exactly one event, and that is the driver's fault.
        let counted = before.rejected_inputs().zip(after.rejected_inputs());
        if let (Some(conn), Step::Input { input, .. }) = (stale, step) {
            let breach = contract_breach(input, conn, before_obs.last_id);
            let expected = breach.map(|reason| {
                Output::Event(Event::InputRejected {
                    input: RejectedInput {
                        kind: input.kind(),
                        conn,
                    },
                    reason,
                })
            });
            if after != before {
                return Err((
                    StaleInputIgnored,
                    "an input for a transport that is not live changed the machine".into(),
                ));
            }
            if outputs != expected.as_slice() {
                return Err((
                    StaleInputIgnored,
                    format!(
                        "an input for {conn}, not live, should emit {expected:?}, emitted \
                         {outputs:?}"
                    ),
                ));
            }
            if let Some((b, a)) = counted
                && a != b + u64::from(breach.is_some())
            {
                return Err((
                    Consistency,
                    format!("rejected inputs counted {b} -> {a} for one input"),
                ));
            }
            return match breach {
                Some(reason) => Err((
                    Driver,
                    format!(
                        "{:?} for {conn} rejected by the core: {reason}",
                        input.kind()
                    ),
                )),
                None => Ok(()),
            };
        }
        if let Some((b, a)) = counted
            && a != b
        {
            return Err((
                Consistency,
                format!("rejected inputs counted {b} -> {a} on a step that rejects nothing"),
            ));
        }
        // Spurious timeouts are no-ops.
        if let Step::Timeout { at } = step
            && before.poll_timeout().is_none_or(|due| due > at)
            && (!outputs.is_empty() || after != before)
        {
            return Err((
                Consistency,
                "a timeout before any deadline changed the machine".into(),
            ));
        }

        let mut chain = before_state;
        let mut gave_up_now = None;
        for out in outputs.iter().copied() {
            match out {
                Output::Open { conn, mode } => {
                    if let Some(live) = obs.live {
                        return Err((OneTransport, format!("{conn} opened while {live} is live")));
                    }
                    if conn.0 <= obs.last_id {
                        return Err((OneTransport, format!("{conn} is not a fresh id")));
                    }
                    if obs.stopped {
                        return Err((StopReachesClosed, "open after stop without start".into()));
                    }
                    if obs.failed {
                        return Err((
                            ReconnectSpacing,
                            "open after giving up without start".into(),
                        ));
                    }
                    if (mode == OpenMode::Resume) != obs.session {
                        return Err((
                            Resume,
                            format!("open mode {mode:?} but session held = {}", obs.session),
                        ));
                    }
                    if let Some(at) = obs.reconnect_at
                        && now < at
                    {
                        return Err((
                            ReconnectSpacing,
                            format!("reconnect at {now:?} before {at:?}"),
                        ));
                    }
                    if let Some((earliest, _)) = obs.new_session_window
                        && now < earliest
                        && before_state == State::Closed
                        && before_phase == Phase::BackingOff
                    {
                        return Err((
                            ReconnectSpacing,
                            format!(
                                "new session opened {:?} before the invalid-session wait ends",
                                earliest.saturating_duration_since(now)
                            ),
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
                        return Err((
                            Consistency,
                            format!("permit asked for {conn} that is not open"),
                        ));
                    }
                    if !cfg.gate_new_sessions || obs.mode != Some(OpenMode::Identify) {
                        return Err((
                            Consistency,
                            "permit asked without the gate or for a resume".into(),
                        ));
                    }
                    if obs.permit_asked {
                        return Err((Consistency, "permit asked twice".into()));
                    }
                    obs.permit_asked = true;
                }
                Output::Send { conn, payload } => {
                    if obs.live != Some(conn) || !obs.opened || obs.closing || obs.aborted {
                        return Err((
                            Consistency,
                            format!("send on {conn} that is not open or is closing"),
                        ));
                    }
                    match payload {
                        Payload::Handshake(mode) => {
                            if obs.handshake_sent || obs.mode != Some(mode) {
                                return Err((
                                    Consistency,
                                    "handshake repeated or of the wrong mode".into(),
                                ));
                            }
                            if cfg.gate_new_sessions
                                && mode == OpenMode::Identify
                                && !obs.permit_granted
                            {
                                return Err((Consistency, "identify sent without a permit".into()));
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
                        return Err((
                            Consistency,
                            format!("close of {conn} that is not open or already closing"),
                        ));
                    }
                    let rules = cfg.close_rules;
                    if code != rules.end_session_code && code != rules.keep_resumable_code {
                        return Err((Consistency, format!("close with unexpected code {code}")));
                    }
                    if obs.session && code != rules.keep_resumable_code {
                        return Err((Resume, "a held session closed with the end code".into()));
                    }
                    obs.closing = true;
                    obs.forget_liveness();
                }
                Output::Abort { conn } => {
                    if obs.live != Some(conn) || obs.aborted {
                        return Err((
                            Consistency,
                            format!("abort of {conn} that is not live or already aborted"),
                        ));
                    }
                    obs.aborted = true;
                    obs.forget_liveness();
                }
                Output::Event(Event::StateChanged { from, to }) => {
                    if from != chain || from == to {
                        return Err((
                            Consistency,
                            format!("state change {from:?} -> {to:?} after {chain:?}"),
                        ));
                    }
                    if from == State::Draining && to != State::Closed {
                        return Err((DrainOnlyToClosed, format!("draining left to {to:?}")));
                    }
                    if matches!(to, State::Connecting(_))
                        && !matches!(from, State::Connecting(_) | State::Closed)
                    {
                        return Err((
                            ConnectOnlyFromClosed,
                            format!("connecting entered from {from:?}"),
                        ));
                    }
                    chain = to;
                }
                Output::Event(Event::Ready { conn } | Event::Resumed { conn }) => {
                    if obs.live != Some(conn) || !obs.handshake_sent {
                        return Err((
                            Consistency,
                            format!("ready/resumed on {conn} without a handshake"),
                        ));
                    }
                    obs.session = true;
                    obs.identified_at = Some(now);
                }
                Output::Event(Event::ReconnectScheduled { mode, delay }) => {
                    if obs.stopped || obs.failed || obs.live.is_some() {
                        return Err((
                            Consistency,
                            "reconnect scheduled while stopped, failed or live".into(),
                        ));
                    }
                    if (mode == OpenMode::Resume) != obs.session {
                        return Err((Resume, format!("reconnect as {mode:?}")));
                    }
                    // The first reconnect after a successful session within the spread; from
                    // the second consecutive failure on, the backoff; never before the wait
                    // after a non-resumable invalidation.
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
                        return Err((
                            ReconnectSpacing,
                            format!(
                                "reconnect after {delay:?} outside [{:?}, {:?}] after {} failures",
                                earliest.saturating_duration_since(now),
                                latest.saturating_duration_since(now),
                                obs.attempts
                            ),
                        ));
                    }
                    obs.reconnect_at = Some(at);
                }
                Output::Event(Event::GaveUp(reason)) => {
                    if obs.failed || gave_up_now.is_some() {
                        return Err((ReconnectSpacing, "gave up twice".into()));
                    }
                    let expected = match reason {
                        GiveUpReason::FatalClose { code } => fatal_close == Some(code),
                        GiveUpReason::PermitDenied => obs.permit_denied || transport_gone,
                        GiveUpReason::MaxAttempts { attempts } => {
                            cfg.max_attempts.is_some_and(|m| attempts >= m)
                                && attempts == obs.attempts
                        }
                        _ => false,
                    };
                    if !expected {
                        return Err((ReconnectSpacing, format!("unexpected give-up {reason:?}")));
                    }
                    gave_up_now = Some(reason);
                    obs.failed = true;
                    obs.reconnect_at = None;
                }
                Output::Event(Event::InputRejected { input, reason }) => {
                    return Err((
                        Consistency,
                        format!(
                            "the core rejected {input:?} ({reason}), which the contract allows"
                        ),
                    ));
                }
                Output::Event(_) => {}
            }
        }
        if chain != after_state {
            return Err((
                Consistency,
                format!("state is {after_state:?} but events end at {chain:?}"),
            ));
        }

        // Invariant 6, both ways, on the step that judges: a counted heartbeat unanswered for
        // one interval is aborted at once (not drained), and nothing else is judged dead.
        if let Step::Timeout { .. } = step
            && beating(before_state)
        {
            let judged = outputs.iter().any(|o| matches!(o, Output::Abort { .. }));
            let owed = before_obs
                .unacked_since
                .zip(before_obs.interval)
                .is_some_and(|(since, interval)| now >= since + interval);
            if judged && !owed {
                return Err((
                    Liveness,
                    format!(
                        "judged dead without a counted heartbeat unanswered for an interval \
                         (paused {})",
                        before_obs.paused
                    ),
                ));
            }
            if owed && !judged {
                return Err((Liveness, "a dead connection was not aborted at once".into()));
            }
            if judged && after_state != State::Draining {
                return Err((Liveness, format!("judged dead but {after_state:?}")));
            }
        }
        // A transport fault restarts a transport that is open and still connecting.
        if let Step::Input {
            input: Input::Restart(RestartReason::TransportFault),
            ..
        } = step
            && matches!(before_state, State::Connecting(p) if p != ConnectingPhase::Opening)
            && (after_state != State::Draining
                || !outputs.iter().any(|o| {
                    matches!(o, Output::Close { code, .. } if *code == cfg.close_rules.keep_resumable_code)
                }))
        {
            return Err((
                Consistency,
                format!("a transport fault in {before_state:?} did not close the transport resumably"),
            ));
        }

        // Transition properties.
        if before_state == State::Draining && after_state != State::Draining {
            let confirmed = matches!(
                step,
                Step::Input { input: Input::Closed { conn, .. } | Input::OpenFailed(conn), .. }
                    if Some(conn) == before_obs.live
            );
            if !confirmed || after_state != State::Closed {
                return Err((
                    DrainOnlyToClosed,
                    format!("draining left to {after_state:?} without the driver's confirmation"),
                ));
            }
        }
        if transport_gone && after_state != State::Closed {
            return Err((
                Consistency,
                format!("transport confirmed gone but state is {after_state:?}"),
            ));
        }
        if let Some(code) = fatal_close
            && gave_up_now != Some(GiveUpReason::FatalClose { code })
        {
            return Err((ReconnectSpacing, "fatal close without giving up".into()));
        }
        if obs.stopped {
            if !matches!(after_state, State::Closed | State::Draining) {
                return Err((StopReachesClosed, format!("{after_state:?} after stop")));
            }
            if before_obs.stopped && before_state == State::Closed && after_state != State::Closed {
                return Err((
                    StopReachesClosed,
                    "left closed after stop without start".into(),
                ));
            }
        }
        if let Step::Timeout { at } = step
            && after.poll_timeout().is_some_and(|due| due <= at)
        {
            return Err((
                Consistency,
                "a timeout left a deadline that is already due".into(),
            ));
        }

        obs.state_properties(after, now)
    }

    fn state_properties<M: Machine>(
        &self,
        sut: &M,
        now: Instant,
    ) -> Result<(), (Invariant, String)> {
        use Invariant::*;
        let obs = self;
        let state = sut.state();
        if sut.live_transport() != obs.live || state.has_transport() != obs.live.is_some() {
            return Err((
                OneTransport,
                format!(
                    "machine says {:?} ({state:?}) is live, observer says {:?}",
                    sut.live_transport(),
                    obs.live
                ),
            ));
        }
        if sut.is_resumable() != obs.session {
            return Err((
                Resume,
                "the machine's session disagrees with the observer's".into(),
            ));
        }
        let waits_on_driver = state == State::Draining && obs.aborted;
        let idle = state == State::Closed
            && matches!(
                sut.phase(),
                Phase::NotConnected | Phase::Stopped | Phase::Failed
            );
        match sut.poll_timeout() {
            None if !(idle || waits_on_driver) => {
                return Err((
                    StopReachesClosed,
                    format!("{state:?} ({:?}) has no deadline", sut.phase()),
                ));
            }
            Some(_) if idle => return Err((Consistency, "an idle machine has a deadline".into())),
            _ => {}
        }
        if (sut.phase() == Phase::Failed) != obs.failed {
            return Err((
                ReconnectSpacing,
                "failed phase disagrees with the give-up seen".into(),
            ));
        }
        if sut.phase() == Phase::BackingOff && sut.poll_timeout() != obs.reconnect_at {
            return Err((
                ReconnectSpacing,
                "backing off without the scheduled reconnect as deadline".into(),
            ));
        }
        // Invariant 6: a heartbeat sent while reading was not paused (and no pause since) that
        // gets no ACK is judged one interval after it was sent.
        if let (Some(since), Some(interval)) = (obs.unacked_since, obs.interval)
            && beating(state)
        {
            let limit = since + interval + obs.late;
            if now > limit || sut.poll_timeout().is_none_or(|at| at > limit) {
                return Err((
                    Liveness,
                    format!(
                        "heartbeat unanswered for {:?} not judged within {:?}",
                        now.saturating_duration_since(since),
                        interval + obs.late
                    ),
                ));
            }
        }
        Ok(())
    }
}
