//! What a broken contract looks like: which rule, on which step, after which history.

use std::fmt;
use std::time::Instant;

use handover_core::{Input, Output, TransportId};

/// The rule a step broke. Variants 1 to 8 are the numbered invariants of
/// `docs/architecture.md`; the others are the checks that keep the observer's picture and the
/// machine's views consistent, and the driver's side of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invariant {
    /// 1: at most one transport is live, from its `Open` until the driver reports it gone;
    /// every `Open` carries a fresh id; a socket exists only for an `Open`.
    OneTransport,
    /// 2: `Draining` leaves only to `Closed`, only on the driver's confirmation.
    DrainOnlyToClosed,
    /// 3: `Connecting` is entered only from `Closed`.
    ConnectOnlyFromClosed,
    /// 4: inputs naming a transport that is not live change nothing; the core rejects those
    /// that break the driver contract (a second end report, an id never opened) with exactly
    /// one `InputRejected` event, and ignores the others silently.
    StaleInputIgnored,
    /// 5: after `Stop`, `Closed` in bounded time, and nothing opens until `Start`.
    StopReachesClosed,
    /// 6: a counted heartbeat unanswered for one interval is judged at once, and nothing else
    /// is judged dead.
    Liveness,
    /// 7: reconnect spacing (spread, backoff, invalid-session wait) and giving up.
    ReconnectSpacing,
    /// 8: a held session is resumed, never ended by our own close.
    Resume,
    /// Not numbered: the machine's outputs and views (state changes, deadlines, phase,
    /// sends on the live transport only) agree with each other and with the observer.
    Consistency,
    /// The driver's side: every `Open` answered once, `Closed` reported only once the
    /// socket is dropped, a socket only for an `Open` the driver took. Also every input the
    /// core rejected ([`Event::InputRejected`](handover_core::Event::InputRejected): a second
    /// `Closed`/`OpenFailed` for a transport already gone, or an id no `Open` carried).
    Driver,
}

impl Invariant {
    /// The invariant's number in `docs/architecture.md`, if it has one.
    pub fn number(self) -> Option<u8> {
        match self {
            Invariant::OneTransport => Some(1),
            Invariant::DrainOnlyToClosed => Some(2),
            Invariant::ConnectOnlyFromClosed => Some(3),
            Invariant::StaleInputIgnored => Some(4),
            Invariant::StopReachesClosed => Some(5),
            Invariant::Liveness => Some(6),
            Invariant::ReconnectSpacing => Some(7),
            Invariant::Resume => Some(8),
            Invariant::Consistency | Invariant::Driver => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Invariant::OneTransport => "one transport",
            Invariant::DrainOnlyToClosed => "draining leaves only to closed",
            Invariant::ConnectOnlyFromClosed => "connecting only from closed",
            Invariant::StaleInputIgnored => "stale inputs ignored",
            Invariant::StopReachesClosed => "stop reaches closed",
            Invariant::Liveness => "liveness",
            Invariant::ReconnectSpacing => "reconnect spacing",
            Invariant::Resume => "resume",
            Invariant::Consistency => "consistency",
            Invariant::Driver => "driver contract",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number() {
            Some(n) => write!(f, "invariant {n} ({})", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// One thing the checker saw: a call into the machine, or a fact about the driver's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// `handle_input(at, input)`.
    Input {
        /// The `now` the driver passed.
        at: Instant,
        /// The input.
        input: Input,
    },
    /// `handle_timeout(at)`.
    Timeout {
        /// The `now` the driver passed.
        at: Instant,
    },
    /// The driver created the socket for transport `conn`.
    SocketOpened(TransportId),
    /// The driver dropped the socket of transport `conn`: nothing of it is left.
    SocketDropped(TransportId),
}

/// A broken rule: which one, what was seen, on which step, the outputs of that step, and the
/// steps before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule broken.
    pub invariant: Invariant,
    /// What was wrong, in words.
    pub message: String,
    /// The offending step.
    pub step: Step,
    /// The outputs the machine produced on that step.
    pub outputs: Vec<Output>,
    /// The steps before it, oldest first (as many as the checker keeps; the observer alone
    /// keeps none).
    pub history: Vec<Step>,
}

impl Violation {
    pub(crate) fn new(invariant: Invariant, message: impl Into<String>, step: Step) -> Self {
        Violation {
            invariant,
            message: message.into(),
            step,
            outputs: Vec::new(),
            history: Vec::new(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} broken: {}", self.invariant, self.message)?;
        if !f.alternate() {
            return Ok(());
        }
        writeln!(f)?;
        let origin = self
            .history
            .iter()
            .chain([&self.step])
            .find_map(|s| match s {
                Step::Input { at, .. } | Step::Timeout { at } => Some(*at),
                _ => None,
            });
        let since = |at: &Instant| origin.map(|o| at.saturating_duration_since(o));
        writeln!(f, "history ({} steps before it):", self.history.len())?;
        for (i, step) in self.history.iter().chain([&self.step]).enumerate() {
            match step {
                Step::Input { at, input } => writeln!(
                    f,
                    "  {i:>3}. +{:?}: input {input:?}",
                    since(at).unwrap_or_default()
                )?,
                Step::Timeout { at } => {
                    writeln!(f, "  {i:>3}. +{:?}: timeout", since(at).unwrap_or_default())?
                }
                other => writeln!(f, "  {i:>3}. {other:?}")?,
            }
        }
        write!(f, "outputs of the offending step: {:?}", self.outputs)
    }
}

impl std::error::Error for Violation {}
