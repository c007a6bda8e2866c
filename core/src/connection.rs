//! The public, sans-IO connection lifecycle.

use std::collections::VecDeque;
use std::time::Instant;

use statig::blocking::{IntoStateMachineExt, StateMachine};

use crate::config::Config;
use crate::io::{Event, Input, Output, RejectedInput, Rejection};
use crate::machine::{Ctx, Ev, Machine, Next, State as Inner, Stats};
use crate::types::{ConnectionStatus, OpenMode, Phase, State, TransportId};

/// Room reserved in the output queue at construction so the steady state never allocates.
const OUTPUT_CAPACITY: usize = 16;

/// The lifecycle of one logical gateway connection (one shard), as a pure state machine.
///
/// `Connection` does no I/O and reads no clock. The caller (a driver) owns the socket and time:
///
/// 1. Feed facts with [`handle_input`](Self::handle_input) and the passing of time with
///    [`handle_timeout`](Self::handle_timeout), always with the caller's current `now`.
/// 2. **After every call that mutates the machine, drain [`poll_output`](Self::poll_output)
///    until it returns `None`**, carrying out each output in order.
/// 3. Sleep until [`poll_timeout`](Self::poll_timeout) (or until the next input), then call
///    `handle_timeout`. Calling it early or twice is harmless.
///
/// The machine guarantees that at most one transport is live: a new
/// [`Output::Open`] is emitted only once the driver has confirmed, with `Closed` or
/// `OpenFailed`, that the previous transport is gone. The driver MUST report exactly one of
/// those for every `Open`, and MUST report it after an [`Output::Abort`] at once. A second
/// report, or an input naming an id never opened, is refused with an
/// [`Event::InputRejected`] (see [`handle_input`](Self::handle_input)).
///
/// Two connections compare equal (and hash equal) when every future input would make them
/// behave the same: statistics such as counters and the last latency are not compared. This
/// makes the type usable as a state in a model checker.
///
/// ```
/// use std::time::{Duration, Instant};
/// use handover_core::{Config, Connection, Input, Output, Signal};
///
/// let mut conn = Connection::new(Config::default(), 7);
/// let now = Instant::now();
/// conn.handle_input(now, Input::Start);
/// let Some(Output::Open { conn: id, .. }) = conn.poll_output() else { unreachable!() };
/// conn.handle_input(now, Input::Opened(id));
/// conn.handle_input(now, Input::Signal { conn: id, signal: Signal::Hello { interval: Duration::from_secs(41) } });
/// while let Some(out) = conn.poll_output() {
///     // send the identify, start timers...
///     let _ = out;
/// }
/// assert!(conn.poll_timeout().is_some());
/// ```
#[derive(Clone)]
pub struct Connection {
    sm: StateMachine<Machine>,
    out: VecDeque<Output>,
    stats: Stats,
}

impl Connection {
    /// A new machine in the `Closed` state. `seed` drives all randomness (heartbeat and backoff
    /// jitter): the same seed and the same inputs give the same outputs.
    pub fn new(config: Config, seed: u64) -> Self {
        Connection {
            sm: Machine::new(config, seed).state_machine(),
            out: VecDeque::with_capacity(OUTPUT_CAPACITY),
            stats: Stats::default(),
        }
    }

    /// A new machine that already holds a session, restored from storage (for example a
    /// session file written before a process restart): its first connection resumes instead
    /// of starting a new session. If the peer no longer knows the session, it invalidates it
    /// and the machine starts a new one as usual.
    pub fn with_restored_session(config: Config, seed: u64) -> Self {
        let mut machine = Machine::new(config, seed);
        machine.session = true;
        Connection {
            sm: machine.state_machine(),
            out: VecDeque::with_capacity(OUTPUT_CAPACITY),
            stats: Stats::default(),
        }
    }

    /// Feed one fact.
    ///
    /// An input tagged with the transport that may be live now goes to the machine. Any other
    /// tagged input never reaches it, and falls in one of three cases, decided in O(1) from
    /// the id counter alone (ids are issued in strictly increasing order, one per
    /// [`Output::Open`], and a new one only once the previous transport was reported gone, so
    /// every issued id below the newest one has ended, and the newest has ended unless it is
    /// live):
    ///
    /// - **Stale, ignored.** A `Signal`, `Backpressure`, `Opened`, `PermitGranted` or
    ///   `PermitDenied` for a transport that has ended: a frame decoded, a permit answered or
    ///   a connect completed just before the driver dropped that socket, still in flight in
    ///   the driver's queues. A driver cannot always avoid these and they are harmless, so
    ///   they are dropped silently and not counted.
    /// - **Rejected, [`Rejection::SecondEndReport`].** A `Closed` or `OpenFailed` for a
    ///   transport that has ended: the driver owes exactly one end report per `Open`, and
    ///   the "never two sockets" guarantee rests on those reports, so a second one means the
    ///   driver's bookkeeping of its sockets is wrong.
    /// - **Rejected, [`Rejection::NeverOpened`].** Any input naming an id that no `Open`
    ///   carried (an id above the newest one, or 0): the driver made it up or mixed up two
    ///   connections.
    ///
    /// A rejected input changes nothing in the machine; it queues one
    /// [`Event::InputRejected`] (drain it like any output) and is counted in
    /// [`rejected_inputs`](Self::rejected_inputs). A driver that follows the contract never
    /// causes one.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if let Some(c) = input.conn() {
            let live = self.sm.state().conn();
            if live != Some(c) {
                if let Some(reason) = self.rejection(c, input) {
                    self.stats.rejected_inputs += 1;
                    self.out.push_back(Output::Event(Event::InputRejected {
                        input: RejectedInput {
                            kind: input.kind(),
                            conn: c,
                        },
                        reason,
                    }));
                }
                return;
            }
        }
        self.dispatch(now, Ev::Input(input));
    }

    /// Why an input naming `conn`, which is not live, breaks the driver contract, if it does.
    fn rejection(&self, conn: TransportId, input: Input) -> Option<Rejection> {
        // Issued ids are exactly `1..next_id` (see `Machine::next_id`).
        if conn.0 == 0 || conn.0 >= self.sm.inner().next_id {
            Some(Rejection::NeverOpened)
        } else if input.is_end_report() {
            Some(Rejection::SecondEndReport)
        } else {
            None
        }
    }

    /// How many inputs were rejected since construction because the driver broke its
    /// contract (each one also emitted [`Event::InputRejected`]). Zero for a driver that
    /// follows the contract. Like the other counters, it is not part of equality.
    #[must_use]
    pub fn rejected_inputs(&self) -> u64 {
        self.stats.rejected_inputs
    }

    /// Let time pass up to `now`: fires every deadline at or before it. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        // A beat can be due right after a probe window closes, so loop while deadlines are due.
        // Each pass strictly advances some deadline; bounded defensively.
        for _ in 0..8 {
            // The `at <= now` guard only saves a dispatch: every state's timeout handler checks
            // its own deadline against `now` again, so firing `Ev::Timeout` early changes
            // nothing (a mutation test that makes this guard `true` survives for that reason;
            // it is equivalent). The `continue` check below is not: a deadline of zero that
            // a timeout itself starts (a drain or open timeout) must fire in the same call.
            match self.poll_timeout() {
                Some(at) if at <= now => self.dispatch(now, Ev::Timeout),
                _ => return,
            }
            if self.poll_timeout().is_some_and(|at| at <= now) {
                continue;
            }
            return;
        }
    }

    /// The next thing the caller must do, in order. Drain until `None` after every mutation.
    #[must_use = "every output must be carried out, in order"]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    #[must_use = "`handle_timeout` must be called at this instant"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sm.state().deadline()
    }

    /// The current lifecycle state.
    #[must_use]
    pub fn state(&self) -> State {
        self.sm.state().view()
    }

    /// The transport that may be live now (from its `Open` until its `Closed`).
    #[must_use]
    pub fn live_transport(&self) -> Option<TransportId> {
        self.sm.state().conn()
    }

    /// The transport on which application payloads may be sent now: only once the handshake was
    /// accepted and while the connection is healthy or probing.
    #[must_use]
    pub fn sendable_transport(&self) -> Option<TransportId> {
        match self.sm.state() {
            Inner::Identified { conn, .. } | Inner::Stale { conn, .. } => Some(*conn),
            _ => None,
        }
    }

    /// Whether a session is held that the next connection would resume.
    #[must_use]
    pub fn is_resumable(&self) -> bool {
        self.sm.inner().session
    }

    /// The finer-grained phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        match self.sm.state() {
            Inner::Closed { next: Next::Idle } if self.stats.opens == 0 => Phase::NotConnected,
            Inner::Closed { next: Next::Idle } => Phase::Stopped,
            Inner::Closed {
                next: Next::Reconnect { .. },
            } => Phase::BackingOff,
            Inner::Closed {
                next: Next::Failed(_),
            } => Phase::Failed,
            Inner::Opening { .. } => Phase::Connecting,
            Inner::AwaitingHello { .. } => Phase::AwaitingHello,
            Inner::AwaitingPermit { .. } => Phase::AwaitingPermit,
            Inner::Handshaking {
                mode: OpenMode::Identify,
                ..
            } => Phase::Identifying,
            Inner::Handshaking {
                mode: OpenMode::Resume,
                ..
            } => Phase::Resuming,
            Inner::Identified { .. } => Phase::Receiving,
            Inner::Stale { .. } => Phase::Stale,
            Inner::Draining { .. } => Phase::Draining,
        }
    }

    /// A snapshot for status pages and metrics.
    #[must_use]
    pub fn status(&self) -> ConnectionStatus {
        let m = self.sm.inner();
        let s = &self.stats;
        ConnectionStatus {
            state: self.state(),
            phase: self.phase(),
            connection: self.live_transport(),
            resumable: m.session,
            attempts: m.attempts,
            identified_since: match self.sm.state() {
                Inner::Identified { .. } | Inner::Stale { .. } => m.identified_at,
                _ => None,
            },
            last_ack_at: s.last_ack_at,
            latency: s.latency,
            reconnect_at: match self.sm.state() {
                Inner::Closed {
                    next: Next::Reconnect { at },
                } => Some(*at),
                _ => None,
            },
            last_close_code: s.last_close_code,
            gave_up: s.gave_up,
            opens: s.opens,
            identifies: s.identifies,
            resumes: s.resumes,
            ready: s.ready,
            resumed: s.resumed,
            reconnects: s.reconnects,
        }
    }

    fn dispatch(&mut self, now: Instant, ev: Ev) {
        let mut ctx = Ctx {
            now,
            out: &mut self.out,
            stats: &mut self.stats,
        };
        self.sm.handle_with_context(&ev, &mut ctx);
    }
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        self.sm.state() == other.sm.state()
            && self.sm.inner() == other.sm.inner()
            && self.out == other.out
    }
}

impl Eq for Connection {}

impl std::hash::Hash for Connection {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.sm.state().hash(state);
        self.sm.inner().hash(state);
        self.out.hash(state);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", self.sm.state())
            .field("session", &self.sm.inner().session)
            .field("attempts", &self.sm.inner().attempts)
            .field("pending_outputs", &self.out.len())
            .finish()
    }
}
