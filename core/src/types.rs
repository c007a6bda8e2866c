//! Small value types shared by inputs, outputs and status.

use std::time::{Duration, Instant};

/// Names one transport (one socket) for its whole life.
///
/// Every [`Output::Open`](crate::Output::Open) carries a fresh id, strictly greater than all
/// earlier ones (the first is 1). Drivers tag every input about that socket with it; inputs
/// naming any other id change nothing, so late frames from a dead socket are harmless. A second
/// end report for a dead socket, or an id never opened, is also refused with an
/// [`Event::InputRejected`](crate::Event::InputRejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportId(pub u64);

impl std::fmt::Display for TransportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// How the handshake on a new connection must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenMode {
    /// Start a new session (Discord: IDENTIFY). Spends from the identify budget.
    Identify,
    /// Continue the session held from an earlier connection (Discord: RESUME).
    Resume,
}

/// What a [`Stop`](crate::Input::Stop) means for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopIntent {
    /// End the session: the peer may forget it (Discord: close with 1000).
    EndSession,
    /// Keep the session resumable so a later start resumes it (Discord: close with 4000).
    KeepResumable,
}

/// Why the caller asked for a [`Restart`](crate::Input::Restart). A restart is always "close
/// keeping the session resumable, then connect again"; the reason decides only whether a
/// transport that is still connecting is restarted too.
///
/// While a fresh connection is being made (`opening`, `awaiting_hello`, `awaiting_permit`,
/// `handshaking`), a restart is absorbed: a new transport is what it asks for, and one is
/// being made. [`TransportFault`](Self::TransportFault) is the exception once the transport
/// is open: that transport itself is broken, so it is closed and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RestartReason {
    /// An operator or the application asked.
    Requested,
    /// A health monitor outside the machine judged the connection unhealthy.
    HealthMonitor,
    /// The protocol layer saw the peer break the protocol while the stream itself still
    /// decodes (for example an unexpected payload). Treated like
    /// [`HealthMonitor`](Self::HealthMonitor).
    ProtocolError,
    /// The transport's byte stream is corrupted: every later frame on it would fail to decode
    /// (for example a broken zlib-stream or zstd-stream context). An open transport is closed
    /// (resumable) and replaced even while it is still connecting (awaiting the hello or the
    /// permit, or handshaking).
    TransportFault,
}

/// How the protocol layer classifies a close of the transport that the machine did not ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseClass {
    /// Reconnect and resume the session if one is held.
    Resume,
    /// Reconnect, but the session is gone: start a new one.
    NewSession,
    /// Do not reconnect: the condition will not go away by retrying (bad token, bad intents...).
    Fatal,
}

/// Close-code rules supplied by the protocol layer. The core contains no gateway numbers.
///
/// A close code listed in neither [`new_session`](Self::new_session) nor
/// [`fatal`](Self::fatal), and a transport that ended without a close frame, are
/// [`CloseClass::Resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseRules {
    /// Peer close codes after which the session is gone and a new one must start.
    pub new_session: &'static [u16],
    /// Peer close codes after which retrying cannot help.
    pub fatal: &'static [u16],
    /// Code the machine sends when it ends the session on purpose.
    pub end_session_code: u16,
    /// Code the machine sends when it closes but wants to resume later.
    pub keep_resumable_code: u16,
}

impl CloseRules {
    /// Rules for a generic gateway: every peer close is resumable, we end sessions with 1000 and
    /// keep them with 4000 (the first application-defined WebSocket code).
    pub const GENERIC: CloseRules = CloseRules {
        new_session: &[],
        fatal: &[],
        end_session_code: 1000,
        keep_resumable_code: 4000,
    };

    /// Classifies the code of a close the peer initiated (`None`: no close frame).
    pub fn classify(&self, code: Option<u16>) -> CloseClass {
        match code {
            Some(c) if self.fatal.contains(&c) => CloseClass::Fatal,
            Some(c) if self.new_session.contains(&c) => CloseClass::NewSession,
            _ => CloseClass::Resume,
        }
    }
}

impl Default for CloseRules {
    fn default() -> Self {
        Self::GENERIC
    }
}

/// Why the machine stopped trying on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The peer closed with a code the protocol layer classifies as fatal.
    FatalClose {
        /// The close code, if a close frame was received.
        code: Option<u16>,
    },
    /// The permit to start a new session was refused.
    PermitDenied,
    /// [`Config::max_attempts`](crate::Config::max_attempts) consecutive attempts failed.
    MaxAttempts {
        /// How many attempts were made.
        attempts: u32,
    },
}

impl std::fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUpReason::FatalClose { code: Some(c) } => write!(f, "fatal close code {c}"),
            GiveUpReason::FatalClose { code: None } => write!(f, "fatal close"),
            GiveUpReason::PermitDenied => write!(f, "permit to start a new session refused"),
            GiveUpReason::MaxAttempts { attempts } => {
                write!(f, "gave up after {attempts} failed attempts")
            }
        }
    }
}

/// The lifecycle state, as the outside world sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// A transport is being opened, or is open and the handshake is under way.
    Connecting(ConnectingPhase),
    /// Handshake accepted; heartbeats flow; events are delivered.
    Identified,
    /// A heartbeat has waited longer than the probe grace for its ACK; a probe is out. Any
    /// ACK returns to [`Identified`](Self::Identified); none by one heartbeat interval after
    /// the unacknowledged heartbeat judges the connection dead.
    Stale,
    /// A close (or abort) was ordered; waiting for the driver to confirm the transport is gone.
    Draining,
    /// No transport exists.
    Closed,
}

impl State {
    /// Whether a transport may be live in this state (everything but [`State::Closed`]).
    pub fn has_transport(&self) -> bool {
        !matches!(self, State::Closed)
    }

    /// Short lowercase name, stable across releases (used by the state diagram and status).
    pub fn name(&self) -> &'static str {
        match self {
            State::Connecting(ConnectingPhase::Opening) => "opening",
            State::Connecting(ConnectingPhase::AwaitingHello) => "awaiting_hello",
            State::Connecting(ConnectingPhase::AwaitingPermit) => "awaiting_permit",
            State::Connecting(ConnectingPhase::Handshaking) => "handshaking",
            State::Identified => "identified",
            State::Stale => "stale",
            State::Draining => "draining",
            State::Closed => "closed",
        }
    }
}

/// The sub-state inside [`State::Connecting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectingPhase {
    /// `Open` was emitted; waiting for the driver's `Opened` or `OpenFailed`.
    Opening,
    /// The transport is open; waiting for the peer's hello.
    AwaitingHello,
    /// Hello received; waiting for the permit to start a new session.
    AwaitingPermit,
    /// Hello received, handshake (identify or resume) sent; waiting for acceptance.
    Handshaking,
}

/// A finer view than [`State`], for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Never started.
    NotConnected,
    /// Opening a transport.
    Connecting,
    /// Transport open, waiting for hello.
    AwaitingHello,
    /// Waiting for the permit to start a new session (identify queue).
    AwaitingPermit,
    /// Handshake sent to start a new session.
    Identifying,
    /// Handshake sent to resume a session.
    Resuming,
    /// Handshake accepted, events flow.
    Receiving,
    /// A heartbeat's ACK is overdue; probing.
    Stale,
    /// Waiting for the transport to be confirmed gone.
    Draining,
    /// Closed, reconnect scheduled.
    BackingOff,
    /// Closed on request; waits for a start.
    Stopped,
    /// Closed and gave up; waits for an explicit start.
    Failed,
}

impl Phase {
    /// Every phase, in the order of [`name`](Self::name)'s match: for status pages and metrics
    /// that list each one (the binary's `handover_shard_phase` gauge).
    pub const ALL: [Phase; 12] = [
        Phase::NotConnected,
        Phase::Connecting,
        Phase::AwaitingHello,
        Phase::AwaitingPermit,
        Phase::Identifying,
        Phase::Resuming,
        Phase::Receiving,
        Phase::Stale,
        Phase::Draining,
        Phase::BackingOff,
        Phase::Stopped,
        Phase::Failed,
    ];

    /// Short lowercase name, e.g. for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::NotConnected => "not_connected",
            Phase::Connecting => "connecting",
            Phase::AwaitingHello => "awaiting_hello",
            Phase::AwaitingPermit => "awaiting_permit",
            Phase::Identifying => "identifying",
            Phase::Resuming => "resuming",
            Phase::Receiving => "receiving",
            Phase::Stale => "stale",
            Phase::Draining => "draining",
            Phase::BackingOff => "backing_off",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// A snapshot of the machine for status pages. Cheap to take; no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// Current lifecycle state.
    pub state: State,
    /// Finer-grained phase.
    pub phase: Phase,
    /// The transport that may be live now, if any.
    pub connection: Option<TransportId>,
    /// Whether a session is held that the next connection would resume.
    pub resumable: bool,
    /// Consecutive failed connections since the last successful session.
    pub attempts: u32,
    /// When the current connection's handshake was accepted.
    pub identified_since: Option<Instant>,
    /// When the last heartbeat ACK arrived.
    pub last_ack_at: Option<Instant>,
    /// Time between the last heartbeat and its ACK.
    pub latency: Option<Duration>,
    /// When the next reconnect is due, while backing off.
    pub reconnect_at: Option<Instant>,
    /// Close code the peer sent when the last transport ended (`None` if it ended without a
    /// close frame). Includes the peer's answer to a close the machine started.
    pub last_close_code: Option<u16>,
    /// Why the machine gave up, when it did.
    pub gave_up: Option<GiveUpReason>,
    /// Transports opened so far.
    pub opens: u64,
    /// Handshakes sent that start a new session.
    pub identifies: u64,
    /// Handshakes sent that resume a session.
    pub resumes: u64,
    /// Connections that reached a new session (ready).
    pub ready: u64,
    /// Connections that resumed a session.
    pub resumed: u64,
    /// Reconnects scheduled (every Closed that leads to a later Open).
    pub reconnects: u64,
}

#[cfg(test)]
mod phase_tests {
    use super::Phase;

    /// Position in `Phase::ALL`, by an exhaustive match: a new variant fails to compile here
    /// until it is placed.
    fn index(p: Phase) -> usize {
        match p {
            Phase::NotConnected => 0,
            Phase::Connecting => 1,
            Phase::AwaitingHello => 2,
            Phase::AwaitingPermit => 3,
            Phase::Identifying => 4,
            Phase::Resuming => 5,
            Phase::Receiving => 6,
            Phase::Stale => 7,
            Phase::Draining => 8,
            Phase::BackingOff => 9,
            Phase::Stopped => 10,
            Phase::Failed => 11,
        }
    }

    #[test]
    fn all_lists_every_phase_once() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(index(*p), i, "{p:?}");
        }
        let mut names: Vec<&str> = Phase::ALL.iter().map(Phase::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
    }
}
