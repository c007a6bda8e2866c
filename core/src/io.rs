//! The machine's input and output vocabulary.

use std::time::Duration;

use crate::types::{GiveUpReason, OpenMode, RestartReason, State, StopIntent, TransportId};

/// A fact fed to [`Connection::handle_input`](crate::Connection::handle_input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Begin connecting (from the initial state, after a stop, or after giving up).
    Start,
    /// Close the transport and stay closed until the next `Start` or `Restart`.
    ///
    /// Safe in every state, any number of times: the machine reaches `Closed` within the drain
    /// deadline (plus the driver's confirmation of an abort) and opens nothing meanwhile.
    Stop(StopIntent),
    /// Close the live transport keeping the session resumable, then connect again.
    ///
    /// Safe at any moment, any number of times: while a fresh connection is already being made
    /// or the old one is draining, it is absorbed into the step under way. The exception is
    /// [`RestartReason::TransportFault`], which also replaces a transport that is open but
    /// still connecting.
    Restart(RestartReason),
    /// The driver opened the transport it was asked to open.
    Opened(TransportId),
    /// The driver could not open the transport. The transport is not live any more.
    OpenFailed(TransportId),
    /// The transport is gone: the close handshake finished, the peer dropped it, or it was
    /// aborted. `code` is the peer's close code, if it sent a close frame.
    Closed {
        /// Which transport.
        conn: TransportId,
        /// The peer's close code, if any.
        code: Option<u16>,
    },
    /// The permit asked for with [`Output::AcquirePermit`] was granted: send the handshake.
    PermitGranted(TransportId),
    /// The permit was refused (for example an identify budget guard tripped). The machine
    /// closes the transport and gives up until the next `Start`.
    PermitDenied(TransportId),
    /// The driver stopped (`paused: true`) or resumed (`paused: false`) reading transport
    /// `conn` because the application is behind on events.
    ///
    /// While reading is paused, heartbeat ACKs may sit unread in the socket, so a missing ACK
    /// is not held against the connection: heartbeats keep being sent on schedule, but only a
    /// heartbeat sent while reading was not paused, with no pause since, can judge the
    /// connection dead. Repeating the current value changes nothing.
    Backpressure {
        /// Which transport.
        conn: TransportId,
        /// Whether reading is paused from now on.
        paused: bool,
    },
    /// A protocol-level fact derived by the protocol layer from a received frame.
    Signal {
        /// The transport the frame came from.
        conn: TransportId,
        /// What it meant.
        signal: Signal,
    },
}

impl Input {
    /// The transport this input names, if it names one (`Start`, `Stop` and `Restart` do not).
    #[must_use]
    pub fn conn(&self) -> Option<TransportId> {
        match *self {
            Input::Start | Input::Stop(_) | Input::Restart(_) => None,
            Input::Opened(c)
            | Input::OpenFailed(c)
            | Input::PermitGranted(c)
            | Input::PermitDenied(c)
            | Input::Closed { conn: c, .. }
            | Input::Signal { conn: c, .. }
            | Input::Backpressure { conn: c, .. } => Some(c),
        }
    }

    /// Which variant this input is, without its data.
    #[must_use]
    pub fn kind(&self) -> InputKind {
        match self {
            Input::Start => InputKind::Start,
            Input::Stop(_) => InputKind::Stop,
            Input::Restart(_) => InputKind::Restart,
            Input::Opened(_) => InputKind::Opened,
            Input::OpenFailed(_) => InputKind::OpenFailed,
            Input::Closed { .. } => InputKind::Closed,
            Input::PermitGranted(_) => InputKind::PermitGranted,
            Input::PermitDenied(_) => InputKind::PermitDenied,
            Input::Backpressure { .. } => InputKind::Backpressure,
            Input::Signal { .. } => InputKind::Signal,
        }
    }

    /// Whether this input reports the transport gone (`Closed` or `OpenFailed`).
    #[must_use]
    pub fn is_end_report(&self) -> bool {
        matches!(self, Input::Closed { .. } | Input::OpenFailed(_))
    }
}

/// The variant of an [`Input`], without its data (see [`Input::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputKind {
    /// [`Input::Start`].
    Start,
    /// [`Input::Stop`].
    Stop,
    /// [`Input::Restart`].
    Restart,
    /// [`Input::Opened`].
    Opened,
    /// [`Input::OpenFailed`].
    OpenFailed,
    /// [`Input::Closed`].
    Closed,
    /// [`Input::PermitGranted`].
    PermitGranted,
    /// [`Input::PermitDenied`].
    PermitDenied,
    /// [`Input::Backpressure`].
    Backpressure,
    /// [`Input::Signal`].
    Signal,
}

/// What a rejected input was: enough to find the driver's mistake, small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RejectedInput {
    /// Which kind of input.
    pub kind: InputKind,
    /// The transport it named.
    pub conn: TransportId,
}

/// Why [`Connection::handle_input`](crate::Connection::handle_input) rejected an input: the
/// driver broke its side of the contract. A rejected input has no effect on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// A second `Closed` or `OpenFailed` for a transport that was already reported gone: the
    /// driver answers each `Open` with exactly one end report.
    SecondEndReport,
    /// The input names a transport id that no [`Output::Open`] ever carried (including id 0,
    /// which is never issued).
    NeverOpened,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejection::SecondEndReport => "second end report for a transport already gone",
            Rejection::NeverOpened => "names a transport that was never opened",
        })
    }
}

/// Protocol-level facts. The protocol layer derives them from frames; the core knows no wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// The peer greeted us and told us how often to heartbeat.
    Hello {
        /// Heartbeat interval.
        interval: Duration,
    },
    /// The handshake was accepted.
    HandshakeAccepted {
        /// `true` if an existing session was resumed, `false` if a new one started.
        resumed: bool,
    },
    /// The peer acknowledged a heartbeat.
    HeartbeatAck,
    /// The peer asked for a heartbeat now.
    HeartbeatRequested,
    /// The peer asked us to reconnect (and resume).
    ReconnectRequested,
    /// The peer invalidated the session.
    SessionInvalidated {
        /// Whether the session may still be resumed.
        resumable: bool,
    },
}

/// Work for the caller, drained with [`Connection::poll_output`](crate::Connection::poll_output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// Open a new transport. The caller MUST later report `Opened` or `OpenFailed`, and after
    /// `Opened`, exactly one `Closed`, all tagged with `conn`.
    Open {
        /// Fresh id for this transport.
        conn: TransportId,
        /// What the handshake on it must do.
        mode: OpenMode,
    },
    /// Only with [`Config::gate_new_sessions`](crate::Config::gate_new_sessions): before a
    /// handshake that starts a new session, acquire a permit (Discord: the identify
    /// concurrency queue) and answer with `PermitGranted` or `PermitDenied`. Heartbeats keep
    /// flowing meanwhile; the handshake timeout starts when the permit is granted.
    AcquirePermit {
        /// The transport waiting for the permit.
        conn: TransportId,
    },
    /// Send a payload on the transport.
    Send {
        /// The transport.
        conn: TransportId,
        /// What to send; the protocol layer builds the bytes.
        payload: Payload,
    },
    /// Start the close handshake with this code; keep reading until the peer's close or EOF,
    /// then report `Closed`.
    Close {
        /// The transport.
        conn: TransportId,
        /// WebSocket close code to send.
        code: u16,
    },
    /// Drop the transport at once (no close handshake) and report `Closed` (or `OpenFailed` if it
    /// was still opening).
    ///
    /// When the machine judges a connection dead it emits [`Close`](Output::Close) followed at
    /// once by `Abort`: the driver may write the close frame if it can without waiting (best
    /// effort), and must not wait for any answer.
    Abort {
        /// The transport.
        conn: TransportId,
    },
    /// Something the application may want to know.
    Event(Event),
}

/// A payload the core asks the protocol layer to build and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    /// The handshake: identify (new session) or resume.
    Handshake(OpenMode),
    /// A heartbeat.
    Heartbeat,
}

/// Events for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// The lifecycle state changed.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
    /// A new session started on `conn`.
    Ready {
        /// The transport.
        conn: TransportId,
    },
    /// The held session was resumed on `conn`.
    Resumed {
        /// The transport.
        conn: TransportId,
    },
    /// A reconnect is scheduled.
    ReconnectScheduled {
        /// How the next connection will start.
        mode: OpenMode,
        /// After how long.
        delay: Duration,
    },
    /// The machine stopped trying; it waits for an explicit `Start`. Emitted once.
    GaveUp(GiveUpReason),
    /// The driver broke its contract: the input was refused and changed nothing else. A
    /// driver that follows the contract never sees this event; treat it as a bug in the
    /// driver (log it, fail a test), not as a condition to recover from. See
    /// [`Connection::handle_input`](crate::Connection::handle_input).
    InputRejected {
        /// The input refused.
        input: RejectedInput,
        /// Why.
        reason: Rejection,
    },
}
