//! The private statig machine. The public wrapper is [`crate::Connection`].
//!
//! Every handler receives facts that concern the current transport only: the wrapper drops
//! (or rejects) inputs tagged with any other connection id before they get here.

#![allow(unreachable_pub)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use statig::prelude::*;

use crate::config::Config;
use crate::io::{Event, Input, Output, Payload, Signal};
use crate::types::{
    CloseClass, ConnectingPhase, GiveUpReason, OpenMode, RestartReason, State as View, StopIntent,
    TransportId,
};

/// What the machine handles: an input, or "time has passed" (checked against deadlines).
pub enum Ev {
    Input(Input),
    Timeout,
}

/// Per-call context: the caller's clock, the output queue and statistics. Owned by the wrapper.
pub struct Ctx<'a> {
    pub now: Instant,
    pub out: &'a mut VecDeque<Output>,
    pub stats: &'a mut Stats,
}

/// Counters and observations that never influence behaviour (kept out of equality and hashing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Send time of the latest heartbeat not yet followed by an ACK, for the latency.
    pub beat_sent_at: Option<Instant>,
    pub last_ack_at: Option<Instant>,
    pub latency: Option<Duration>,
    pub last_close_code: Option<u16>,
    pub gave_up: Option<GiveUpReason>,
    pub opens: u64,
    pub identifies: u64,
    pub resumes: u64,
    pub ready: u64,
    pub resumed: u64,
    pub reconnects: u64,
    /// Inputs refused because the driver broke its contract (`Event::InputRejected`).
    pub rejected_inputs: u64,
}

/// Seeded randomness. Hashes by its current seed so model checking sees it as state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// Uniform duration in `[lo, hi]`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_nanos().min(u64::MAX as u128) as u64;
        lo + Duration::from_nanos(self.0.u64(0..=span))
    }
}

impl std::hash::Hash for Rng {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.get_seed().hash(state);
    }
}

/// Heartbeat bookkeeping of one transport, including whether the driver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    interval: Duration,
    /// How long the oldest counted heartbeat may wait for its ACK before an identified
    /// connection probes: `probe_grace`, clamped to half the interval.
    probe_after: Duration,
    next_beat: Instant,
    /// Send time of the oldest heartbeat that can judge the connection: not followed by any
    /// ACK, sent while reading was not paused, and no pause since. `None` when there is none.
    unacked_since: Option<Instant>,
    /// The driver reported that it stopped reading this transport.
    paused: bool,
}

impl Heartbeat {
    fn new(interval: Duration, probe_grace: Duration, first: Instant, paused: bool) -> Self {
        Heartbeat {
            interval,
            probe_after: probe_grace.min(interval / 2),
            next_beat: first,
            unacked_since: None,
            paused,
        }
    }

    fn beat(&mut self, conn: TransportId, ctx: &mut Ctx<'_>) {
        ctx.out.push_back(Output::Send {
            conn,
            payload: Payload::Heartbeat,
        });
        if !self.paused && self.unacked_since.is_none() {
            self.unacked_since = Some(ctx.now);
        }
        ctx.stats.beat_sent_at = Some(ctx.now);
    }

    fn ack(&mut self, ctx: &mut Ctx<'_>) {
        self.unacked_since = None;
        ctx.stats.last_ack_at = Some(ctx.now);
        if let Some(sent) = ctx.stats.beat_sent_at.take() {
            ctx.stats.latency = Some(ctx.now.saturating_duration_since(sent));
        }
    }

    /// Reading stopped or resumed. An ACK may be sitting unread behind a pause, so every
    /// heartbeat sent before it stops counting; heartbeats sent after reading resumes count
    /// again.
    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if paused {
            self.unacked_since = None;
        }
    }

    /// When the connection is judged dead if no ACK arrives first.
    fn dead_at(&self) -> Option<Instant> {
        self.unacked_since.map(|t| t + self.interval)
    }

    /// When an identified connection sends its probe and shows `stale`.
    fn probe_at(&self) -> Option<Instant> {
        self.unacked_since.map(|t| t + self.probe_after)
    }

    fn schedule_next(&mut self, now: Instant) {
        self.next_beat += self.interval;
        if self.next_beat <= now {
            self.next_beat = now + self.interval;
        }
    }

    /// The next beat or the liveness judgment, whichever comes first.
    pub fn judgment(&self) -> Instant {
        self.dead_at()
            .map_or(self.next_beat, |d| d.min(self.next_beat))
    }
}

/// What to do once a draining transport is confirmed gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum After {
    Reconnect,
    Stop,
    GiveUp(GiveUpReason),
}

/// What Closed is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Next {
    /// Waiting for a start (initial state, or after a stop).
    Idle,
    /// A reconnect is due at this instant.
    Reconnect { at: Instant },
    /// Gave up; only an explicit start leaves.
    Failed(GiveUpReason),
}

/// Behaviour-relevant shared state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Machine {
    pub cfg: Config,
    pub rng: Rng,
    /// The id the next `Open` carries. Ids `1..next_id` were issued, in order, and only
    /// `Machine::open` (called from `closed` alone) takes one, so the live transport, if
    /// any, is always `next_id - 1` and every smaller id has ended.
    pub next_id: u64,
    /// A session is held that the next connection should resume.
    pub session: bool,
    /// Consecutive connections that ended before they were stable.
    pub attempts: u32,
    /// When the current transport's handshake was accepted.
    pub identified_at: Option<Instant>,
    /// After a non-resumable invalidation: no transport opens before this instant.
    pub new_session_at: Option<Instant>,
}

impl Machine {
    pub fn new(cfg: Config, seed: u64) -> Self {
        Machine {
            cfg,
            rng: Rng::new(seed),
            next_id: 1,
            session: false,
            attempts: 0,
            identified_at: None,
            new_session_at: None,
        }
    }
}

#[state_machine(
    initial = "State::closed(Next::Idle)",
    state(derive(Debug, Clone, PartialEq, Eq, Hash)),
    superstate(derive(Debug)),
    after_transition = "Self::after_transition"
)]
impl Machine {
    #[state]
    fn closed(&mut self, context: &mut Ctx<'_>, next: &mut Next, event: &Ev) -> Outcome<State> {
        match (event, *next) {
            (Ev::Input(Input::Start), Next::Idle | Next::Failed(_)) => {
                self.attempts = 0;
                context.stats.gave_up = None;
                self.open(context)
            }
            (Ev::Input(Input::Restart(_)), Next::Idle) => self.open(context),
            (Ev::Input(Input::Stop(intent)), _) => {
                self.apply_stop_intent(*intent);
                match next {
                    Next::Reconnect { .. } => Transition(State::closed(Next::Idle)),
                    _ => Handled,
                }
            }
            // `at` is this state's only deadline, so `Connection::handle_timeout` (which
            // dispatches a timeout only once the earliest deadline is due) already guarantees
            // the guard; it is kept so the handler stays correct on its own. A mutation test
            // that makes it `true` survives: equivalent.
            (Ev::Timeout, Next::Reconnect { at }) if context.now >= at => self.open(context),
            _ => Handled,
        }
    }

    #[state]
    fn opening(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        mode: &mut OpenMode,
        deadline: &mut Instant,
        paused: &mut bool,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            Ev::Input(Input::Opened(_)) => Transition(State::awaiting_hello(
                *conn,
                *mode,
                context.now + self.cfg.hello_timeout,
                *paused,
            )),
            Ev::Input(Input::Backpressure { paused: p, .. }) => {
                *paused = *p;
                Handled
            }
            Ev::Input(Input::OpenFailed(_)) => self.connection_ended(context, After::Reconnect),
            // Out of contract (no `Opened` yet), but the transport is gone all the same and its
            // close code is classified like any other.
            Ev::Input(Input::Closed { code, .. }) => {
                self.transport_gone(context, *code, After::Reconnect)
            }
            Ev::Input(Input::Stop(intent)) => {
                self.apply_stop_intent(*intent);
                self.abort(context, *conn, After::Stop)
            }
            // The only deadline here: the guard repeats `Connection::handle_timeout`'s check (a
            // mutant making it `true` survives, equivalent), kept so the handler stands alone.
            Ev::Timeout if context.now >= *deadline => self.abort(context, *conn, After::Reconnect),
            // Out of contract before `Opened`, but a lost session is a fact wherever it is heard.
            Ev::Input(Input::Signal {
                signal: Signal::SessionInvalidated { resumable: false },
                ..
            }) => {
                self.session_invalidated(context.now);
                Handled
            }
            // Start and Restart are absorbed: a fresh connection is being made right now.
            _ => Handled,
        }
    }

    /// Every state in which an opened transport may carry protocol traffic.
    #[superstate]
    fn live(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        event: &Ev,
    ) -> Outcome<State> {
        let conn = *conn;
        let keep = self.cfg.close_rules.keep_resumable_code;
        match event {
            Ev::Input(Input::Stop(intent)) => {
                self.apply_stop_intent(*intent);
                let code = match intent {
                    StopIntent::EndSession => self.cfg.close_rules.end_session_code,
                    StopIntent::KeepResumable => keep,
                };
                self.drain(context, conn, code, After::Stop)
            }
            Ev::Input(Input::Restart(_)) => self.drain(context, conn, keep, After::Reconnect),
            Ev::Input(Input::Closed { code, .. }) => self.peer_closed(context, *code),
            Ev::Input(Input::OpenFailed(_)) => self.peer_closed(context, None),
            Ev::Input(Input::Signal {
                signal: Signal::ReconnectRequested,
                ..
            }) => self.drain(context, conn, keep, After::Reconnect),
            Ev::Input(Input::Signal {
                signal: Signal::SessionInvalidated { resumable },
                ..
            }) => {
                let code = if *resumable {
                    keep
                } else {
                    self.session_invalidated(context.now);
                    self.cfg.close_rules.end_session_code
                };
                self.drain(context, conn, code, After::Reconnect)
            }
            _ => Handled,
        }
    }

    /// States with a heartbeat running (after hello): ACKs, the peer's requests for a beat,
    /// backpressure, the beat schedule and the liveness judgment are handled here. A counted
    /// heartbeat without any ACK one interval later judges the transport dead: it is aborted
    /// and a reconnect follows. `identified` adds a probe halfway.
    #[superstate(superstate = "live")]
    fn beating(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        hb: &mut Heartbeat,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            // Absorbed. `live` would absorb it too (its catch-all), so deleting this arm changes
            // nothing (an equivalent mutant); it is spelled out because a start must never open.
            Ev::Input(Input::Start) => Handled,
            Ev::Input(Input::Signal {
                signal: Signal::HeartbeatAck,
                ..
            }) => {
                hb.ack(context);
                Handled
            }
            Ev::Input(Input::Signal {
                signal: Signal::HeartbeatRequested,
                ..
            }) => {
                hb.beat(*conn, context);
                Handled
            }
            Ev::Input(Input::Backpressure { paused, .. }) => {
                hb.set_paused(*paused);
                Handled
            }
            Ev::Timeout => {
                if hb.dead_at().is_some_and(|d| context.now >= d) {
                    return self.kill(context, *conn);
                }
                if context.now >= hb.next_beat {
                    hb.beat(*conn, context);
                    hb.schedule_next(context.now);
                }
                Handled
            }
            _ => Super,
        }
    }

    #[state(superstate = "live")]
    fn awaiting_hello(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        mode: &mut OpenMode,
        deadline: &mut Instant,
        paused: &mut bool,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            // Absorbed, like in `beating`: redundant with `live`'s catch-all (equivalent mutant).
            Ev::Input(Input::Start) => Handled,
            Ev::Input(Input::Restart(reason)) if *reason != RestartReason::TransportFault => {
                Handled
            }
            Ev::Input(Input::Backpressure { paused: p, .. }) => {
                *paused = *p;
                Handled
            }
            Ev::Input(Input::Signal {
                signal: Signal::Hello { interval },
                ..
            }) => {
                let interval = (*interval).max(Duration::from_millis(1));
                let first = self.rng.between(Duration::ZERO, interval);
                let hb =
                    Heartbeat::new(interval, self.cfg.probe_grace, context.now + first, *paused);
                if *mode == OpenMode::Identify && self.cfg.gate_new_sessions {
                    context.out.push_back(Output::AcquirePermit { conn: *conn });
                    Transition(State::awaiting_permit(*conn, hb))
                } else {
                    self.handshake(context, *conn, *mode, hb)
                }
            }
            // The hello deadline is this state's only one: the guard repeats
            // `Connection::handle_timeout`'s check (a mutant making it `true` survives,
            // equivalent), and the next arm is redundant with `live`'s catch-all (deleting it
            // survives too); both are kept so the handler reads on its own.
            Ev::Timeout if context.now >= *deadline => {
                let keep = self.cfg.close_rules.keep_resumable_code;
                self.drain(context, *conn, keep, After::Reconnect)
            }
            Ev::Timeout => Handled,
            _ => Super,
        }
    }

    #[state(superstate = "beating")]
    fn awaiting_permit(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        hb: &mut Heartbeat,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            // Absorbed: redundant with `beating` and `live` (equivalent mutant).
            Ev::Input(Input::Start) => Handled,
            Ev::Input(Input::Restart(reason)) if *reason != RestartReason::TransportFault => {
                Handled
            }
            Ev::Input(Input::PermitGranted(_)) => {
                self.handshake(context, *conn, OpenMode::Identify, *hb)
            }
            Ev::Input(Input::PermitDenied(_)) => {
                let code = self.cfg.close_rules.end_session_code;
                self.drain(
                    context,
                    *conn,
                    code,
                    After::GiveUp(GiveUpReason::PermitDenied),
                )
            }
            _ => Super,
        }
    }

    #[state(superstate = "beating")]
    fn handshaking(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        mode: &mut OpenMode,
        deadline: &mut Instant,
        hb: &mut Heartbeat,
        event: &Ev,
    ) -> Outcome<State> {
        // `mode` is state data read by `Connection::phase`; the handshake was already sent.
        let _ = mode;
        let keep = self.cfg.close_rules.keep_resumable_code;
        match event {
            // Absorbed: redundant with `beating` and `live` (equivalent mutant).
            Ev::Input(Input::Start) => Handled,
            Ev::Input(Input::Restart(reason)) if *reason != RestartReason::TransportFault => {
                Handled
            }
            Ev::Input(Input::Signal {
                signal: Signal::HandshakeAccepted { resumed },
                ..
            }) => {
                self.session = true;
                self.identified_at = Some(context.now);
                let ev = if *resumed {
                    context.stats.resumed += 1;
                    Event::Resumed { conn: *conn }
                } else {
                    context.stats.ready += 1;
                    Event::Ready { conn: *conn }
                };
                context.out.push_back(Output::Event(ev));
                Transition(State::identified(*conn, *hb))
            }
            // A connection judged dead at the same instant is aborted by the superstate instead.
            Ev::Timeout
                if context.now >= *deadline && hb.dead_at().is_none_or(|d| context.now < d) =>
            {
                self.drain(context, *conn, keep, After::Reconnect)
            }
            _ => Super,
        }
    }

    #[state(superstate = "beating")]
    fn identified(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        hb: &mut Heartbeat,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            Ev::Timeout => {
                if hb.dead_at().is_some_and(|d| context.now >= d) {
                    return self.kill(context, *conn);
                }
                let mut sent = false;
                if context.now >= hb.next_beat {
                    hb.beat(*conn, context);
                    hb.schedule_next(context.now);
                    sent = true;
                }
                if hb.probe_at().is_some_and(|p| context.now >= p) {
                    // The ACK is overdue: one probe (a beat sent now serves as it), and the
                    // connection shows stale until any ACK or the judgment.
                    if !sent {
                        hb.beat(*conn, context);
                    }
                    return Transition(State::stale(*conn, *hb));
                }
                Handled
            }
            _ => Super,
        }
    }

    /// Liveness judgment and beats are the superstate's; an ACK (or a pause, which forgives the
    /// overdue heartbeat) returns to `identified`.
    #[state(superstate = "beating")]
    fn stale(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        hb: &mut Heartbeat,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            Ev::Input(Input::Signal {
                signal: Signal::HeartbeatAck,
                ..
            }) => {
                hb.ack(context);
                Transition(State::identified(*conn, *hb))
            }
            Ev::Input(Input::Backpressure { paused, .. }) => {
                hb.set_paused(*paused);
                if hb.unacked_since.is_none() {
                    Transition(State::identified(*conn, *hb))
                } else {
                    Handled
                }
            }
            _ => Super,
        }
    }

    /// The only way out is the driver's confirmation that the transport is gone.
    #[state]
    fn draining(
        &mut self,
        context: &mut Ctx<'_>,
        conn: &mut TransportId,
        deadline: &mut Option<Instant>,
        after: &mut After,
        event: &Ev,
    ) -> Outcome<State> {
        match event {
            // The peer's close code still counts: a fatal or new-session code that crossed our
            // close frame must not be retried or resumed.
            Ev::Input(Input::Closed { code, .. }) => self.transport_gone(context, *code, *after),
            Ev::Input(Input::OpenFailed(_)) => self.connection_ended(context, *after),
            Ev::Input(Input::Signal {
                signal: Signal::SessionInvalidated { resumable: false },
                ..
            }) => {
                // The close is already under way; only forget the session (and wait before
                // starting a new one).
                self.session_invalidated(context.now);
                Handled
            }
            Ev::Input(Input::Stop(intent)) => {
                self.apply_stop_intent(*intent);
                *after = After::Stop;
                Handled
            }
            Ev::Input(Input::Start) => {
                *after = After::Reconnect;
                Handled
            }
            Ev::Input(Input::Restart(_)) => {
                if *after == After::Stop {
                    *after = After::Reconnect;
                }
                Handled
            }
            Ev::Timeout if deadline.is_some_and(|d| context.now >= d) => {
                context.out.push_back(Output::Abort { conn: *conn });
                *deadline = None;
                Handled
            }
            _ => Handled,
        }
    }
}

impl Machine {
    fn after_transition(&mut self, source: &State, target: &State, context: &mut Ctx<'_>) {
        let (from, to) = (source.view(), target.view());
        if from != to {
            context
                .out
                .push_back(Output::Event(Event::StateChanged { from, to }));
        }
    }

    fn apply_stop_intent(&mut self, intent: StopIntent) {
        if intent == StopIntent::EndSession {
            self.session = false;
        }
    }

    /// The peer invalidated the session for good: forget it, and open the next transport (which
    /// starts a new session) only after the documented wait, drawn once per invalidation.
    fn session_invalidated(&mut self, now: Instant) {
        self.session = false;
        if self.new_session_at.is_none() {
            let (lo, hi) = (
                self.cfg.invalid_session_wait_min,
                self.cfg.invalid_session_wait_max,
            );
            self.new_session_at = Some(now + self.rng.between(lo.min(hi), hi));
        }
    }

    fn open(&mut self, ctx: &mut Ctx<'_>) -> Outcome<State> {
        let conn = TransportId(self.next_id);
        self.next_id += 1;
        self.new_session_at = None;
        ctx.stats.beat_sent_at = None;
        let mode = if self.session {
            OpenMode::Resume
        } else {
            OpenMode::Identify
        };
        ctx.stats.opens += 1;
        ctx.out.push_back(Output::Open { conn, mode });
        Transition(State::opening(
            conn,
            mode,
            ctx.now + self.cfg.open_timeout,
            false,
        ))
    }

    fn handshake(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: TransportId,
        mode: OpenMode,
        hb: Heartbeat,
    ) -> Outcome<State> {
        ctx.out.push_back(Output::Send {
            conn,
            payload: Payload::Handshake(mode),
        });
        match mode {
            OpenMode::Identify => ctx.stats.identifies += 1,
            OpenMode::Resume => ctx.stats.resumes += 1,
        }
        let deadline = ctx.now + self.cfg.handshake_timeout;
        Transition(State::handshaking(conn, mode, deadline, hb))
    }

    fn drain(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: TransportId,
        code: u16,
        after: After,
    ) -> Outcome<State> {
        ctx.out.push_back(Output::Close { conn, code });
        let deadline = Some(ctx.now + self.cfg.drain_deadline);
        Transition(State::draining(conn, deadline, after))
    }

    /// The connection is judged dead (no ACK within one interval of a counted heartbeat):
    /// nothing will answer a close, so the close frame is only offered to the driver (best
    /// effort, keeping the session resumable) and the transport is aborted at once.
    fn kill(&mut self, ctx: &mut Ctx<'_>, conn: TransportId) -> Outcome<State> {
        let code = self.cfg.close_rules.keep_resumable_code;
        ctx.out.push_back(Output::Close { conn, code });
        self.abort(ctx, conn, After::Reconnect)
    }

    fn abort(&mut self, ctx: &mut Ctx<'_>, conn: TransportId, after: After) -> Outcome<State> {
        ctx.out.push_back(Output::Abort { conn });
        Transition(State::draining(conn, None, after))
    }

    /// The peer (or the network) ended the transport without our asking.
    fn peer_closed(&mut self, ctx: &mut Ctx<'_>, code: Option<u16>) -> Outcome<State> {
        self.transport_gone(ctx, code, After::Reconnect)
    }

    /// The driver reported the transport closed, with the peer's close code if it sent one.
    /// The code's class overrides what was planned: fatal gives up, new-session forgets the
    /// session.
    fn transport_gone(
        &mut self,
        ctx: &mut Ctx<'_>,
        code: Option<u16>,
        after: After,
    ) -> Outcome<State> {
        ctx.stats.last_close_code = code;
        match self.cfg.close_rules.classify(code) {
            CloseClass::Resume => self.connection_ended(ctx, after),
            CloseClass::NewSession => {
                self.session = false;
                self.connection_ended(ctx, after)
            }
            CloseClass::Fatal => {
                self.session = false;
                self.identified_at = None;
                self.give_up(ctx, GiveUpReason::FatalClose { code })
            }
        }
    }

    fn give_up(&mut self, ctx: &mut Ctx<'_>, reason: GiveUpReason) -> Outcome<State> {
        ctx.stats.gave_up = Some(reason);
        ctx.out.push_back(Output::Event(Event::GaveUp(reason)));
        Transition(State::closed(Next::Failed(reason)))
    }

    /// The transport is confirmed gone. Decide what comes next: a connection that ended the
    /// failure streak (accepted, and identified for `stable_after`) reconnects within the
    /// spread; every further consecutive failure backs off.
    fn connection_ended(&mut self, ctx: &mut Ctx<'_>, after: After) -> Outcome<State> {
        let stable = self
            .identified_at
            .take()
            .is_some_and(|at| ctx.now.saturating_duration_since(at) >= self.cfg.stable_after);
        if stable {
            self.attempts = 0;
        } else {
            self.attempts = self.attempts.saturating_add(1);
        }
        match after {
            After::Stop => Transition(State::closed(Next::Idle)),
            After::GiveUp(reason) => self.give_up(ctx, reason),
            After::Reconnect => {
                if let Some(max) = self.cfg.max_attempts
                    && self.attempts >= max
                {
                    let attempts = self.attempts;
                    return self.give_up(ctx, GiveUpReason::MaxAttempts { attempts });
                }
                let delay = if self.attempts == 0 {
                    self.rng.between(Duration::ZERO, self.cfg.reconnect_spread)
                } else {
                    let backoff = self.cfg.backoff;
                    let ceiling = backoff.ceiling(self.attempts);
                    self.rng.between(backoff.floor.min(ceiling), ceiling)
                };
                let at = match self.new_session_at {
                    Some(not_before) => (ctx.now + delay).max(not_before),
                    None => ctx.now + delay,
                };
                let delay = at.saturating_duration_since(ctx.now);
                let mode = if self.session {
                    OpenMode::Resume
                } else {
                    OpenMode::Identify
                };
                ctx.stats.reconnects += 1;
                ctx.out
                    .push_back(Output::Event(Event::ReconnectScheduled { mode, delay }));
                Transition(State::closed(Next::Reconnect { at }))
            }
        }
    }
}

impl State {
    /// The public view of this state.
    pub fn view(&self) -> View {
        match self {
            State::Closed { .. } => View::Closed,
            State::Opening { .. } => View::Connecting(ConnectingPhase::Opening),
            State::AwaitingHello { .. } => View::Connecting(ConnectingPhase::AwaitingHello),
            State::AwaitingPermit { .. } => View::Connecting(ConnectingPhase::AwaitingPermit),
            State::Handshaking { .. } => View::Connecting(ConnectingPhase::Handshaking),
            State::Identified { .. } => View::Identified,
            State::Stale { .. } => View::Stale,
            State::Draining { .. } => View::Draining,
        }
    }

    /// The transport that may be live in this state.
    pub fn conn(&self) -> Option<TransportId> {
        match self {
            State::Closed { .. } => None,
            State::Opening { conn, .. }
            | State::AwaitingHello { conn, .. }
            | State::AwaitingPermit { conn, .. }
            | State::Handshaking { conn, .. }
            | State::Identified { conn, .. }
            | State::Stale { conn, .. }
            | State::Draining { conn, .. } => Some(*conn),
        }
    }

    /// The earliest instant at which a timeout may change something.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            State::Closed {
                next: Next::Reconnect { at },
            } => Some(*at),
            State::Closed { .. } => None,
            State::Opening { deadline, .. } | State::AwaitingHello { deadline, .. } => {
                Some(*deadline)
            }
            State::Handshaking { deadline, hb, .. } => Some((*deadline).min(hb.judgment())),
            State::AwaitingPermit { hb, .. } | State::Stale { hb, .. } => Some(hb.judgment()),
            State::Identified { hb, .. } => {
                Some(hb.probe_at().map_or(hb.next_beat, |p| p.min(hb.next_beat)))
            }
            State::Draining { deadline, .. } => *deadline,
        }
    }
}
