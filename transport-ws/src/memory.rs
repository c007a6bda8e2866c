//! An in-memory transport with the same contract as the WebSocket driver, for deterministic
//! simulation in virtual time (no tokio, no sockets, no clock).
//!
//! A [`MemoryPeer`] plays the server side (for example the mock gateway's sans-IO model);
//! a [`MemoryDriver`] plays the client side: it owns a core
//! [`Connection`], a [`Codec`] and the peer, moves messages between
//! them through an in-memory link, and advances a virtual clock straight to the next thing that
//! happens (a core deadline, a peer deadline, a message arriving), never sleeping.
//!
//! # The link
//!
//! Both directions are FIFO queues with a fixed one-way [`latency`](MemoryConfig::latency)
//! (zero by default). The client side honours the same contract as the WebSocket driver:
//!
//! - `Output::Open` resets the codec, asks [`Codec::url`] and sends a connect to the peer;
//!   the peer's accept (or refusal) comes back one latency later as `Opened` (or `OpenFailed`).
//! - `Output::Close` sends a close frame; data messages arriving afterwards are discarded
//!   (not decoded); the peer's close frame ends the transport with `Closed { code: peer's code }`.
//!   If the peer never answers, the core's drain deadline produces `Output::Abort`.
//! - `Output::Abort` ends the transport at once (`Closed { code: None }`, or `OpenFailed` while
//!   connecting); the peer learns of it one latency later.
//! - A close frame from the peer is answered with a close frame; the client keeps the link
//!   (discarding data) until the peer's EOF or [`close_timeout`](MemoryConfig::close_timeout),
//!   then drops it and reports `Closed { code: Some(code) }`. The peer's side behaves like a
//!   WebSocket server library: once the peer has sent its close frame and the client's arrives,
//!   its TCP is closed (`on_disconnect`, and EOF to the client one latency later).
//!   [`PeerAction::Drop`] ends the link with `Closed { code: None }`.
//! - The client side's decisions (socket states, the one end report, permits) are made by the
//!   same driver core as the WebSocket driver's; this type only moves deliveries and time.
//! - A received message larger than [`max_message_size`](MemoryConfig::max_message_size), or a
//!   text message that is not UTF-8, is a [`TransportError`] and ends the transport like an EOF.
//! - Exactly one `OpenFailed` or `Closed` is reported per transport, mirrored as
//!   [`DriverEvent::Transport`] events, and a transport is counted live from `Open` to that
//!   report ([`live_transports`](MemoryDriver::live_transports),
//!   [`max_live_transports`](MemoryDriver::max_live_transports)).
//!
//! # What the peer sees
//!
//! For each connection: [`on_connect`](MemoryPeer::on_connect) first; if it returned `true`,
//! then messages and close frames in the order the client sent them, and finally exactly one
//! [`on_disconnect`](MemoryPeer::on_disconnect) (one latency after the client dropped it, or at
//! once when the peer itself chose [`PeerAction::Drop`]). Actions for a connection the peer
//! refused or that is already disconnected are ignored. Everything is deterministic: the same
//! seed for the core, the same peer and the same calls give the same run.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use handover_core::{
    Codec, Connection, ConnectionStatus, Message, RestartReason, StopIntent, TransportId,
};

use crate::error::{PermitDenied, SendError, TransportError};
use crate::event::DriverEvent;
use crate::link::{Action, CoreSettings, DriverCore, ReadMode};

/// What a simulated server does to one of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Send a data message to the client.
    Send(Message),
    /// Send a close frame with this code (the server then considers the socket closing, and the
    /// client's close reply or EOF ends it).
    Close(u16),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// The server side of an in-memory link.
///
/// The harness calls the `on_*` methods as the client's transport acts, drains
/// [`poll_action`](MemoryPeer::poll_action) after each, and calls
/// [`handle_timeout`](MemoryPeer::handle_timeout) at [`poll_timeout`](MemoryPeer::poll_timeout).
///
/// See the [module documentation](self) for the order of calls a peer can rely on.
pub trait MemoryPeer {
    /// A client connects to `url` with transport `conn`. Return `false` to refuse (the client
    /// sees an open failure).
    fn on_connect(&mut self, now: Instant, conn: TransportId, url: &str) -> bool;
    /// A data message from the client.
    fn on_message(&mut self, now: Instant, conn: TransportId, msg: Message);
    /// The client sent a close frame with `code`. A well-behaved server answers with
    /// [`PeerAction::Close`]; a faulty one may never answer.
    fn on_close_frame(&mut self, now: Instant, conn: TransportId, code: u16);
    /// The client's socket is gone (it aborted, or the close handshake finished).
    ///
    /// The harness calls this exactly once for every connection the peer accepted, including
    /// right after the peer's own [`PeerAction::Drop`], so a peer can keep all its socket
    /// bookkeeping (live counts) here.
    fn on_disconnect(&mut self, now: Instant, conn: TransportId);
    /// The next thing the server does, if any.
    fn poll_action(&mut self) -> Option<(TransportId, PeerAction)>;
    /// When the server next needs [`handle_timeout`](MemoryPeer::handle_timeout).
    fn poll_timeout(&self) -> Option<Instant>;
    /// Let server time pass up to `now`.
    fn handle_timeout(&mut self, now: Instant);
}

/// Settings of a [`MemoryDriver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// One-way delay of every delivery, both directions. Default zero.
    pub latency: Duration,
    /// Largest message the client accepts, in bytes (like
    /// [`TransportConfig::max_message_size`](crate::TransportConfig::max_message_size)).
    /// Default 16 MiB.
    pub max_message_size: usize,
    /// Deliveries and timeouts processed at one virtual instant before the run is declared
    /// stuck (a peer whose deadline never moves). Default 100,000.
    pub max_steps_per_instant: usize,
    /// After the peer's close frame, how long the client keeps the link to get its reply out
    /// and see the peer's EOF before dropping it (like
    /// [`TransportConfig::close_timeout`](crate::TransportConfig::close_timeout)). Default 2 s.
    pub close_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            latency: Duration::ZERO,
            max_message_size: 16 << 20,
            max_steps_per_instant: 100_000,
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// How a simulated permit source answers
/// [`Output::AcquirePermit`](handover_core::Output::AcquirePermit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitDecision {
    /// Grant at once.
    Grant,
    /// Grant after this much virtual time (dropped if the transport ends first).
    GrantAfter(Duration),
    /// Refuse at once.
    Deny,
}

/// Why a simulation run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// Something stayed due at one instant after
    /// [`max_steps_per_instant`](MemoryConfig::max_steps_per_instant) steps: a peer (or codec)
    /// keeps a deadline in the past, or two sides ping-pong forever without time passing.
    #[error("simulation stuck at {elapsed:?} after {steps} steps")]
    Stuck {
        /// Virtual time since the start.
        elapsed: Duration,
        /// Steps taken at that instant.
        steps: usize,
    },
}

#[derive(Debug)]
enum ToPeer {
    Connect(String),
    Message(Message),
    CloseFrame(u16),
    Disconnect,
}

#[derive(Debug)]
enum ToClient {
    Accepted,
    Refused,
    Message(Message),
    CloseFrame(u16),
    Dropped,
}

/// The client's end of the link: the virtual socket of one transport.
#[derive(Debug, Clone, Copy)]
struct Link {
    conn: TransportId,
    /// The peer already knows the socket is gone (it refused or dropped it).
    peer_gone: bool,
}

type PermitPolicy = Box<dyn FnMut(TransportId) -> PermitDecision>;

/// The client side of an in-memory link: a core connection, a codec and a peer in virtual time.
///
/// Drive it with [`start`](Self::start) / [`stop`](Self::stop) / [`restart`](Self::restart) /
/// [`send`](Self::send) and let time pass with [`step`](Self::step),
/// [`run_until`](Self::run_until), [`run_for`](Self::run_for) or
/// [`run_until_condition`](Self::run_until_condition). Read what happened with
/// [`take_events`](Self::take_events).
pub struct MemoryDriver<C: Codec, P: MemoryPeer> {
    /// Decides everything about the socket; this type only moves deliveries and time.
    core: DriverCore<C>,
    peer: P,
    config: MemoryConfig,
    origin: Instant,
    now: Instant,
    link: Option<Link>,
    to_peer: VecDeque<(Instant, TransportId, ToPeer)>,
    to_client: VecDeque<(Instant, TransportId, ToClient)>,
    /// Connections the peer accepted and has not yet been told are gone.
    peer_open: BTreeSet<TransportId>,
    /// Accepted connections on which the peer sent a close frame: its WebSocket layer closes
    /// TCP when the client's close frame arrives.
    peer_closing: BTreeSet<TransportId>,
    permits: Option<PermitPolicy>,
    permit: Option<(TransportId, Instant)>,
    max_peer_open: usize,
}

impl<C: Codec, P: MemoryPeer> std::fmt::Debug for MemoryDriver<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDriver")
            .field("elapsed", &self.elapsed())
            .field("core", &self.core)
            .field("link", &self.link)
            .field("in_flight", &(self.to_peer.len() + self.to_client.len()))
            .field("max_live", &self.core.max_live())
            .finish()
    }
}

impl<C: Codec, P: MemoryPeer> MemoryDriver<C, P> {
    /// A simulation whose virtual clock starts at `origin` (any instant; only differences
    /// matter). The core starts idle: call [`start`](Self::start).
    pub fn new(core: Connection, codec: C, peer: P, config: MemoryConfig, origin: Instant) -> Self {
        let settings = CoreSettings {
            // Events wait in `take_events` without limit: reading never pauses.
            max_pending: usize::MAX,
            close_timeout: config.close_timeout,
            external_permits: false,
        };
        MemoryDriver {
            core: DriverCore::new(core, codec, settings),
            peer,
            config,
            origin,
            now: origin,
            link: None,
            to_peer: VecDeque::new(),
            to_client: VecDeque::new(),
            peer_open: BTreeSet::new(),
            peer_closing: BTreeSet::new(),
            permits: None,
            permit: None,
            max_peer_open: 0,
        }
    }

    /// Decide permits with `policy` instead of granting every one at once.
    pub fn set_permits(&mut self, policy: impl FnMut(TransportId) -> PermitDecision + 'static) {
        self.permits = Some(Box::new(policy));
        self.core.set_external_permits(true);
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the origin.
    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.origin)
    }

    /// The core connection.
    pub fn core(&self) -> &Connection {
        self.core.connection()
    }

    /// The core's status.
    pub fn status(&self) -> ConnectionStatus {
        self.core.status()
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        self.core.codec()
    }

    /// The peer.
    pub fn peer(&self) -> &P {
        &self.peer
    }

    /// The peer, to inject faults. Actions it queues are picked up at the next step.
    pub fn peer_mut(&mut self) -> &mut P {
        &mut self.peer
    }

    /// Transports that exist now on the client side (from `Open` to its report): 0 or 1.
    pub fn live_transports(&self) -> usize {
        usize::from(self.link.is_some())
    }

    /// The largest [`live_transports`](Self::live_transports) ever seen. The contract says 1.
    pub fn max_live_transports(&self) -> usize {
        self.core.max_live()
    }

    /// Connections the peer has accepted and not yet seen disconnected, now.
    pub fn peer_connections(&self) -> usize {
        self.peer_open.len()
    }

    /// The largest [`peer_connections`](Self::peer_connections) ever seen: the server-side view
    /// of "never two sockets at once". The contract says at most 1.
    pub fn max_peer_connections(&self) -> usize {
        self.max_peer_open
    }

    /// Takes every event produced so far, oldest first.
    pub fn take_events(&mut self) -> Vec<DriverEvent<C::Item>> {
        self.core.take_events()
    }

    /// Begins connecting. Processes whatever becomes due at the current instant.
    pub fn start(&mut self) -> Result<(), MemoryError> {
        self.core.start(self.now);
        self.carry_out();
        self.settle()
    }

    /// Closes the connection. Let time pass (for example with
    /// [`run_until_condition`](Self::run_until_condition) and [`is_stopped`](Self::is_stopped))
    /// to see the transport confirmed gone.
    pub fn stop(&mut self, intent: StopIntent) -> Result<(), MemoryError> {
        self.core.stop(self.now, intent);
        self.carry_out();
        self.settle()
    }

    /// Closes the live transport keeping the session resumable, then connects again.
    pub fn restart(&mut self, reason: RestartReason) -> Result<(), MemoryError> {
        self.core.restart(self.now, reason);
        self.carry_out();
        self.settle()
    }

    /// Whether the core is closed with no transport (what the WebSocket driver's `stop` waits
    /// for).
    pub fn is_stopped(&self) -> bool {
        self.core.is_quiescent() && self.link.is_none()
    }

    /// Encodes an application command and sends it, with the WebSocket driver's rules: only on
    /// an identified connection, nothing sent on error.
    pub fn send(&mut self, command: C::Command) -> Result<(), SendError> {
        let (conn, msg) = self.core.send(self.now, command)?;
        self.push_to_peer(conn, ToPeer::Message(msg));
        Ok(())
    }

    /// When something is next due: a core, linger or peer deadline, a delivery or a permit.
    pub fn next_timeout(&self) -> Option<Instant> {
        [
            self.core.poll_timeout(),
            self.peer.poll_timeout(),
            self.to_peer.front().map(|d| d.0),
            self.to_client.front().map(|d| d.0),
            self.permit.map(|p| p.1),
        ]
        .into_iter()
        .flatten()
        .min()
    }
    /// Jumps to the next due instant (never backwards) and processes everything due then.
    /// Returns the instant, or `None` if nothing will ever happen without an input.
    pub fn step(&mut self) -> Result<Option<Instant>, MemoryError> {
        // Actions the peer queued between steps (faults injected through `peer_mut`) are due
        // now, not at the next deadline of the core or the peer.
        self.drain_peer();
        let Some(next) = self.next_timeout() else {
            return Ok(None);
        };
        self.now = self.now.max(next);
        self.settle()?;
        Ok(Some(self.now))
    }

    /// Processes everything due up to `deadline`, then sets the clock to `deadline`.
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), MemoryError> {
        self.drain_peer();
        while let Some(next) = self.next_timeout() {
            if next > deadline {
                break;
            }
            self.step()?;
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// [`run_until`](Self::run_until) `now + duration`.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), MemoryError> {
        self.run_until(self.now + duration)
    }

    /// Steps until `condition` holds (checked before each step) or `limit` of virtual time has
    /// passed. Returns whether the condition held.
    pub fn run_until_condition(
        &mut self,
        limit: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> Result<bool, MemoryError> {
        let end = self.now + limit;
        self.drain_peer();
        loop {
            if condition(self) {
                return Ok(true);
            }
            match self.next_timeout() {
                Some(next) if next <= end => {
                    self.step()?;
                }
                _ => {
                    self.now = self.now.max(end);
                    return Ok(condition(self));
                }
            }
        }
    }

    /// Processes everything due at the current instant, including what that produces.
    fn settle(&mut self) -> Result<(), MemoryError> {
        let now = self.now;
        for _ in 0..self.config.max_steps_per_instant {
            if self.to_peer.front().is_some_and(|d| d.0 <= now) {
                if let Some((_, conn, what)) = self.to_peer.pop_front() {
                    self.deliver_to_peer(conn, what);
                }
                continue;
            }
            if self.to_client.front().is_some_and(|d| d.0 <= now) {
                if let Some((_, conn, what)) = self.to_client.pop_front() {
                    self.deliver_to_client(conn, what);
                }
                continue;
            }
            if let Some((conn, at)) = self.permit
                && at <= now
            {
                self.permit = None;
                self.core.permit_result(now, conn, Ok(()));
                self.carry_out();
                continue;
            }
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
                self.carry_out();
                continue;
            }
            if self.peer.poll_timeout().is_some_and(|t| t <= now) {
                self.peer.handle_timeout(now);
                self.drain_peer();
                continue;
            }
            return Ok(());
        }
        Err(MemoryError::Stuck {
            elapsed: self.elapsed(),
            steps: self.config.max_steps_per_instant,
        })
    }

    /// Carries out what the driver core asked for, in order, over the virtual link.
    fn carry_out(&mut self) {
        let now = self.now;
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect { conn, url } => {
                    self.link = Some(Link {
                        conn,
                        peer_gone: false,
                    });
                    self.push_to_peer(conn, ToPeer::Connect(url));
                }
                Action::Write { conn, msg } => self.push_to_peer(conn, ToPeer::Message(msg)),
                Action::SendClose { conn, code } => {
                    self.push_to_peer(conn, ToPeer::CloseFrame(code));
                }
                // The peer's frames always carry a code here; 1000 covers one that did not.
                Action::AnswerClose { conn, code } => {
                    self.push_to_peer(conn, ToPeer::CloseFrame(code.unwrap_or(1000)));
                }
                Action::Drop { conn } => {
                    if let Some(link) = self.link.take_if(|l| l.conn == conn)
                        && !link.peer_gone
                    {
                        self.push_to_peer(conn, ToPeer::Disconnect);
                    }
                    self.core.dropped(now, conn);
                }
                Action::AcquirePermit { conn } => {
                    let decision = match self.permits.as_mut() {
                        Some(policy) => policy(conn),
                        None => PermitDecision::Grant,
                    };
                    match decision {
                        PermitDecision::Grant => self.core.permit_result(now, conn, Ok(())),
                        PermitDecision::Deny => {
                            let denied = PermitDenied::new("denied by the simulation");
                            self.core.permit_result(now, conn, Err(denied));
                        }
                        PermitDecision::GrantAfter(d) => self.permit = Some((conn, now + d)),
                    }
                }
                Action::CancelPermit { conn } => {
                    if self.permit.is_some_and(|(c, _)| c == conn) {
                        self.permit = None;
                    }
                }
            }
        }
    }

    fn push_to_peer(&mut self, conn: TransportId, what: ToPeer) {
        let at = self.now + self.config.latency;
        self.to_peer.push_back((at, conn, what));
    }

    fn push_to_client(&mut self, conn: TransportId, what: ToClient) {
        let at = self.now + self.config.latency;
        self.to_client.push_back((at, conn, what));
    }

    /// The peer's side of a connection is gone: it hears so once, and the client sees EOF one
    /// latency later.
    fn peer_side_gone(&mut self, conn: TransportId) {
        self.peer_open.remove(&conn);
        self.peer_closing.remove(&conn);
        self.peer.on_disconnect(self.now, conn);
        self.push_to_client(conn, ToClient::Dropped);
    }

    fn deliver_to_peer(&mut self, conn: TransportId, what: ToPeer) {
        let now = self.now;
        match what {
            ToPeer::Connect(url) => {
                if self.peer.on_connect(now, conn, &url) {
                    self.peer_open.insert(conn);
                    self.max_peer_open = self.max_peer_open.max(self.peer_open.len());
                    self.push_to_client(conn, ToClient::Accepted);
                } else {
                    self.push_to_client(conn, ToClient::Refused);
                }
            }
            ToPeer::Message(msg) if self.peer_open.contains(&conn) => {
                self.peer.on_message(now, conn, msg);
            }
            ToPeer::CloseFrame(code) if self.peer_open.contains(&conn) => {
                self.peer.on_close_frame(now, conn, code);
                // The peer sent its close frame first and now has the client's: like any
                // WebSocket server, it closes TCP (RFC 6455, 7.1.1).
                if self.peer_closing.contains(&conn) && self.peer_open.contains(&conn) {
                    self.peer_side_gone(conn);
                }
            }
            ToPeer::Disconnect => {
                if self.peer_open.remove(&conn) {
                    self.peer_closing.remove(&conn);
                    self.peer.on_disconnect(now, conn);
                }
            }
            ToPeer::Message(_) | ToPeer::CloseFrame(_) => {}
        }
        self.drain_peer();
    }

    fn drain_peer(&mut self) {
        while let Some((conn, action)) = self.peer.poll_action() {
            if !self.peer_open.contains(&conn) {
                continue;
            }
            match action {
                PeerAction::Send(msg) => self.push_to_client(conn, ToClient::Message(msg)),
                PeerAction::Close(code) => {
                    self.peer_closing.insert(conn);
                    self.push_to_client(conn, ToClient::CloseFrame(code));
                }
                PeerAction::Drop => self.peer_side_gone(conn),
            }
        }
    }

    fn deliver_to_client(&mut self, conn: TransportId, what: ToClient) {
        let now = self.now;
        let Some(link) = self.link.as_mut().filter(|l| l.conn == conn) else {
            // Late delivery for a transport that is already gone.
            return;
        };
        match what {
            ToClient::Accepted => self.core.opened(now, conn),
            ToClient::Refused => {
                link.peer_gone = true;
                self.core.open_failed(now, conn, None);
            }
            ToClient::Message(msg) => {
                // Data after a close frame either way is discarded undecoded.
                if self.core.read_mode(conn) == ReadMode::Data {
                    match self.check(conn, &msg) {
                        Some(error) => self.core.socket_gone(now, conn, Some(error)),
                        None => self.core.message(now, conn, msg),
                    }
                }
            }
            ToClient::CloseFrame(code) => self.core.peer_close(now, conn, Some(code)),
            ToClient::Dropped => {
                link.peer_gone = true;
                self.core.socket_gone(now, conn, None);
            }
        }
        self.carry_out();
    }

    /// What the WebSocket layer would refuse in a received message.
    fn check(&self, conn: TransportId, msg: &Message) -> Option<TransportError> {
        let size = msg.as_bytes().len();
        if size > self.config.max_message_size {
            Some(TransportError::TooLarge {
                conn,
                size,
                max: self.config.max_message_size,
            })
        } else if matches!(msg, Message::Text(b) if std::str::from_utf8(b).is_err()) {
            Some(TransportError::Protocol {
                conn,
                source: "text message is not utf-8".into(),
            })
        } else {
            None
        }
    }
}
