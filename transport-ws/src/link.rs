//! The sans-IO driver core: everything a driver decides about its one socket, with no I/O, no
//! clock and no runtime. Private to the crate.
//!
//! [`DriverCore`] owns the core [`Connection`], the [`Codec`], the state of the one socket, the
//! events waiting for the application, deferred inputs, the reconnect hold and the permit
//! bookkeeping. A shell (the tokio [`Driver`](crate::Driver) or the in-memory
//! [`MemoryDriver`](crate::memory::MemoryDriver)) owns only I/O: it tells the core what happened
//! (`opened`, `message`, `peer_close`, `socket_gone`, `dropped`, `handle_timeout`, ...) with the
//! time as an argument, and carries out the [`Action`]s the core queues, in order.
//!
//! The end of a socket is reported to the core (one `OpenFailed` or `Closed` input, one
//! [`TransportEvent`]) by this type only, and only in [`DriverCore::dropped`], which the shell
//! calls after it carried out [`Action::Drop`]: a shell can say a socket is finished, but the
//! report is made once, for the socket the core asked to drop, after the drop. Until then the
//! core's later outputs wait, so the report keeps its place in the event order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use handover_core::{
    Codec, Connection, ConnectionStatus, Input, Message, Output, RestartReason, State, StopIntent,
    TransportId,
};
use tracing::{debug, trace, warn};

use crate::error::{PermitDenied, SendError, TransportError};
use crate::event::{DriverEvent, TransportEvent};

/// Something the shell must do, in the order the core queued it.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open a socket to `url` as transport `conn`; then call `opened` or `open_failed`.
    Connect { conn: TransportId, url: String },
    /// Queue a data message on the open socket.
    Write { conn: TransportId, msg: Message },
    /// Queue our close frame with `code` (the core no longer hands over data messages).
    SendClose { conn: TransportId, code: u16 },
    /// The peer's close frame arrived: send the reply (the peer's code, if it gave one) and keep
    /// the socket until EOF or the linger deadline.
    AnswerClose {
        conn: TransportId,
        code: Option<u16>,
    },
    /// Drop the socket (or the connect attempt) now, then call `dropped`.
    Drop { conn: TransportId },
    /// Ask the permit source for a permit; call `permit_result` when it answers.
    AcquirePermit { conn: TransportId },
    /// Forget the permit asked for `conn`: its socket ended first.
    CancelPermit { conn: TransportId },
}

/// How the shell should read the socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// Read and hand over data messages (`message`).
    Data,
    /// Do not read: the application is behind.
    Paused,
    /// A close is under way: read to see the close frame or EOF, discard data messages.
    Discard,
}

/// Where the one socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketState {
    /// Connecting (TCP, TLS, upgrade, or the in-memory connect).
    Opening,
    /// Open, no close frame either way.
    Open,
    /// The peer sent a close frame; our reply is out, waiting for EOF up to `deadline`.
    PeerClosed {
        code: Option<u16>,
        deadline: Instant,
    },
    /// We sent a close frame; waiting for the peer's close frame or EOF.
    ClosedByUs,
}

#[derive(Debug, Clone, Copy)]
struct Socket {
    conn: TransportId,
    state: SocketState,
}

impl Socket {
    fn peer_code(&self) -> Option<u16> {
        match self.state {
            SocketState::PeerClosed { code, .. } => code,
            _ => None,
        }
    }
}

/// A socket the shell was told to drop, with the input that reports its end.
#[derive(Debug, Clone, Copy)]
struct Ending {
    conn: TransportId,
    report: Input,
}

/// Settings of a [`DriverCore`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreSettings {
    /// Events held before reading stops and reconnects wait (`usize::MAX`: never).
    pub(crate) max_pending: usize,
    /// How long a socket the peer closed may linger for its EOF.
    pub(crate) close_timeout: Duration,
    /// Whether permits come from the shell (`AcquirePermit`) or are granted at once.
    pub(crate) external_permits: bool,
}

/// The sans-IO driver core. See the module documentation.
pub(crate) struct DriverCore<C: Codec> {
    core: Connection,
    codec: C,
    settings: CoreSettings,
    /// The one socket that may exist, while the core may still use it.
    socket: Option<Socket>,
    /// The socket the shell was told to drop, until it says it did.
    ending: Option<Ending>,
    actions: VecDeque<Action>,
    /// Inputs produced while applying outputs, fed to the core in order.
    deferred: VecDeque<Input>,
    /// Events waiting for the application.
    pending: VecDeque<DriverEvent<C::Item>>,
    events_open: bool,
    /// The socket whose reading was last reported paused to the core, if any.
    paused: Option<TransportId>,
    /// The socket a permit was asked for and not yet answered.
    permit: Option<TransportId>,
    /// Most sockets that existed at once, counting one asked for while another existed.
    max_live: usize,
}

impl<C: Codec> std::fmt::Debug for DriverCore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverCore")
            .field("core", &self.core)
            .field("socket", &self.socket)
            .field("ending", &self.ending)
            .field("pending", &self.pending.len())
            .field("permit", &self.permit)
            .finish()
    }
}

impl<C: Codec> DriverCore<C> {
    pub(crate) fn new(core: Connection, codec: C, settings: CoreSettings) -> Self {
        DriverCore {
            core,
            codec,
            settings,
            socket: None,
            ending: None,
            actions: VecDeque::new(),
            deferred: VecDeque::new(),
            pending: VecDeque::new(),
            events_open: true,
            paused: None,
            permit: None,
            max_live: 0,
        }
    }

    // ---- queries ----

    pub(crate) fn connection(&self) -> &Connection {
        &self.core
    }

    pub(crate) fn codec(&self) -> &C {
        &self.codec
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        self.core.status()
    }

    pub(crate) fn set_external_permits(&mut self, external: bool) {
        self.settings.external_permits = external;
    }

    /// The most sockets that existed at once (an `Open` while one exists counts as two).
    pub(crate) fn max_live(&self) -> usize {
        self.max_live
    }

    /// Whether the core is closed and no socket exists or waits to be dropped.
    pub(crate) fn is_quiescent(&self) -> bool {
        self.core.state() == State::Closed && self.socket.is_none() && self.ending.is_none()
    }

    /// The next action for the shell.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` is next due: the core's deadline (unless a reconnect is held) or
    /// the linger deadline of a socket the peer closed.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let core = if self.reconnect_held() {
            None
        } else {
            self.core.poll_timeout()
        };
        let linger = self.socket.and_then(|s| match s.state {
            SocketState::PeerClosed { deadline, .. } => Some(deadline),
            _ => None,
        });
        match (core, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether fewer events wait than stop reading.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < self.settings.max_pending
    }

    /// How the shell should read the socket of `conn` now.
    pub(crate) fn read_mode(&self, conn: TransportId) -> ReadMode {
        match self.socket.filter(|s| s.conn == conn).map(|s| s.state) {
            Some(SocketState::Open) if self.has_room() => ReadMode::Data,
            Some(SocketState::Open) => ReadMode::Paused,
            Some(SocketState::Opening) => ReadMode::Paused,
            Some(SocketState::PeerClosed { .. } | SocketState::ClosedByUs) | None => {
                ReadMode::Discard
            }
        }
    }

    // ---- the event queue ----

    pub(crate) fn has_events(&self) -> bool {
        self.events_open && !self.pending.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn pop_event(&mut self) -> Option<DriverEvent<C::Item>> {
        self.pending.pop_front()
    }

    /// The application is gone: discard events from now on.
    pub(crate) fn close_events(&mut self) {
        self.events_open = false;
        self.pending.clear();
    }

    /// The events waiting for the application, oldest first, for the shell to hand over a
    /// burst at once (it takes what fits from the front and leaves the rest).
    pub(crate) fn pending_events(&mut self) -> &mut VecDeque<DriverEvent<C::Item>> {
        &mut self.pending
    }

    /// Whether actions wait for the shell.
    pub(crate) fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    pub(crate) fn take_events(&mut self) -> Vec<DriverEvent<C::Item>> {
        self.pending.drain(..).collect()
    }

    /// Reports an error the shell met that ends nothing (for example a message it could not
    /// queue).
    pub(crate) fn push_error(&mut self, error: TransportError) {
        self.push_event(DriverEvent::Error(error));
    }

    // ---- commands ----

    pub(crate) fn start(&mut self, now: Instant) {
        self.feed(now, Input::Start);
    }

    pub(crate) fn stop(&mut self, now: Instant, intent: StopIntent) {
        self.feed(now, Input::Stop(intent));
    }

    pub(crate) fn restart(&mut self, now: Instant, reason: RestartReason) {
        self.feed(now, Input::Restart(reason));
    }

    /// Encodes an application command for the identified, writable socket. On `Ok` the shell
    /// queues the message on that socket; on any error nothing is to be sent.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        command: C::Command,
    ) -> Result<(TransportId, Message), SendError> {
        let conn = self
            .core
            .sendable_transport()
            .ok_or(SendError::NotIdentified)?;
        if !self.is_open(conn) {
            return Err(SendError::NotIdentified);
        }
        let msg = self
            .codec
            .encode_command(now, command)
            .map_err(|e| SendError::Codec(Box::new(e)))?;
        Ok((conn, msg))
    }

    // ---- what the socket did ----

    /// The socket of `conn` opened.
    pub(crate) fn opened(&mut self, now: Instant, conn: TransportId) {
        let Some(s) = self.socket.as_mut().filter(|s| s.conn == conn) else {
            return;
        };
        if s.state != SocketState::Opening {
            return;
        }
        s.state = SocketState::Open;
        debug!(%conn, "transport opened");
        self.push_event(DriverEvent::Transport(TransportEvent::Opened { conn }));
        self.feed(now, Input::Opened(conn));
    }

    /// The connect attempt of `conn` failed (`error`, if the shell has one to report).
    pub(crate) fn open_failed(
        &mut self,
        now: Instant,
        conn: TransportId,
        error: Option<TransportError>,
    ) {
        if !self
            .socket
            .is_some_and(|s| s.conn == conn && s.state == SocketState::Opening)
        {
            return;
        }
        if let Some(error) = error {
            debug!(%conn, %error, "transport failed to open");
            self.push_event(DriverEvent::Error(error));
        }
        self.end(None);
        self.pump(now);
    }

    /// The socket of `conn` is finished on its own side: EOF, an error, a refused connect.
    pub(crate) fn socket_gone(
        &mut self,
        now: Instant,
        conn: TransportId,
        error: Option<TransportError>,
    ) {
        let Some(s) = self.socket.filter(|s| s.conn == conn) else {
            return;
        };
        if let Some(error) = error {
            debug!(%conn, %error, "socket failed");
            self.push_event(DriverEvent::Error(error));
        }
        self.end(s.peer_code());
        self.pump(now);
    }

    /// The peer's close frame (with its code, if any) arrived on `conn`.
    pub(crate) fn peer_close(&mut self, now: Instant, conn: TransportId, code: Option<u16>) {
        let Some(s) = self.socket.as_mut().filter(|s| s.conn == conn) else {
            return;
        };
        match s.state {
            SocketState::Open => {
                debug!(%conn, ?code, "peer sent close");
                s.state = SocketState::PeerClosed {
                    code,
                    deadline: now + self.settings.close_timeout,
                };
                self.actions.push_back(Action::AnswerClose { conn, code });
            }
            SocketState::ClosedByUs => {
                self.end(code);
                self.pump(now);
            }
            // A second close frame, or one before the socket opened: nothing to do.
            SocketState::PeerClosed { .. } | SocketState::Opening => {}
        }
    }

    /// The shell dropped the socket of `conn` as [`Action::Drop`] asked: the one report of
    /// its end is made now. Any other call is ignored.
    pub(crate) fn dropped(&mut self, now: Instant, conn: TransportId) {
        let Some(ending) = self.ending.filter(|e| e.conn == conn) else {
            trace!(%conn, "drop of a socket that is not ending; ignored");
            return;
        };
        self.ending = None;
        let report = match ending.report {
            Input::Closed { conn, code } => TransportEvent::Closed { conn, code },
            _ => TransportEvent::OpenFailed { conn },
        };
        debug!(%conn, ?report, "transport gone");
        self.push_event(DriverEvent::Transport(report));
        self.deferred.push_back(ending.report);
        self.pump(now);
    }

    /// A data message arrived on `conn`. Discarded unless the socket is open with no close
    /// frame either way.
    pub(crate) fn message(&mut self, now: Instant, conn: TransportId, msg: Message) {
        if !self.is_open(conn) {
            return;
        }
        match self.codec.decode(now, msg) {
            Ok(decoded) => {
                if let Some(signal) = decoded.signal {
                    trace!(%conn, ?signal, "signal");
                    self.feed(now, Input::Signal { conn, signal });
                }
                if let Some(item) = decoded.item {
                    self.push_event(DriverEvent::Item(item));
                }
                self.drain_items();
            }
            Err(e) => {
                debug!(%conn, error = %e, "decode failed");
                self.push_event(DriverEvent::Error(TransportError::Decode {
                    conn,
                    source: Box::new(e),
                }));
                self.drain_items();
                if self.codec.poll_restart() {
                    debug!(%conn, "codec cannot decode this transport any more; restarting");
                    self.feed(now, Input::Restart(RestartReason::TransportFault));
                }
            }
        }
    }

    /// The permit source answered for `conn`. Ignored unless that permit is outstanding.
    pub(crate) fn permit_result(
        &mut self,
        now: Instant,
        conn: TransportId,
        result: Result<(), PermitDenied>,
    ) {
        if self.permit != Some(conn) {
            return;
        }
        self.permit = None;
        let input = match result {
            Ok(()) => Input::PermitGranted(conn),
            Err(denied) => {
                debug!(%conn, reason = denied.reason(), "permit denied");
                Input::PermitDenied(conn)
            }
        };
        self.feed(now, input);
    }

    /// Time passed up to `now`: the linger deadline, then the core's timers (unless a reconnect
    /// is held for the application).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(s) = self.socket
            && let SocketState::PeerClosed { code, deadline } = s.state
            && deadline <= now
        {
            debug!(conn = %s.conn, "close reply linger expired; dropping socket");
            self.end(code);
        }
        if !self.reconnect_held() {
            self.core.handle_timeout(now);
        }
        self.pump(now);
    }

    /// Tells the core when reading the open socket stops (`allowed == false`: the application
    /// is behind) and when it starts again (`Input::Backpressure`), once per change.
    pub(crate) fn set_reading(&mut self, now: Instant, allowed: bool) {
        let open = self
            .socket
            .filter(|s| s.state == SocketState::Open)
            .map(|s| s.conn);
        let want = if allowed { None } else { open };
        if want == self.paused {
            return;
        }
        if let Some(conn) = self.paused.take()
            && open == Some(conn)
        {
            trace!(%conn, "reading resumed");
            self.feed(
                now,
                Input::Backpressure {
                    conn,
                    paused: false,
                },
            );
        }
        if let Some(conn) = want {
            trace!(%conn, "reading paused: the application is behind");
            self.paused = Some(conn);
            self.feed(now, Input::Backpressure { conn, paused: true });
        }
    }

    // ---- inside ----

    fn is_open(&self, conn: TransportId) -> bool {
        self.socket
            .is_some_and(|s| s.conn == conn && s.state == SocketState::Open)
    }

    fn drain_items(&mut self) {
        while let Some(item) = self.codec.poll_item() {
            self.push_event(DriverEvent::Item(item));
        }
    }

    fn push_event(&mut self, event: DriverEvent<C::Item>) {
        if self.events_open {
            self.pending.push_back(event);
        }
    }

    /// Whether a reconnect must wait for the application: it is behind (as many events held
    /// as make the driver stop reading). A new socket could not be read anyway, and lifecycle
    /// events queued past the reading limit stay bounded to one connection's end.
    fn reconnect_held(&self) -> bool {
        self.events_open
            && self.pending.len() >= self.settings.max_pending
            && self.core.state() == State::Closed
    }

    fn feed(&mut self, now: Instant, input: Input) {
        self.core.handle_input(now, input);
        self.pump(now);
    }

    /// Drains the core's outputs, carrying each out, and feeds back the inputs they produce,
    /// until the core has nothing more to say. Waits while a socket is being dropped, so its
    /// report comes before anything the core said after asking for the drop.
    fn pump(&mut self, now: Instant) {
        loop {
            if self.ending.is_some() {
                return;
            }
            if let Some(out) = self.core.poll_output() {
                self.apply(now, out);
                continue;
            }
            match self.deferred.pop_front() {
                Some(input) => self.core.handle_input(now, input),
                None => return,
            }
        }
    }

    fn apply(&mut self, now: Instant, out: Output) {
        match out {
            Output::Open { conn, mode } => {
                let live = usize::from(self.socket.is_some() || self.ending.is_some());
                self.max_live = self.max_live.max(live + 1);
                if let Some(old) = self.socket.map(|s| s.conn) {
                    // The core never asks for this; if it did, the old socket goes first.
                    warn!(%old, %conn, "open requested while a transport exists; aborting it");
                    self.end(None);
                }
                self.codec.reset(conn, mode);
                let url = self.codec.url(mode);
                debug!(%conn, ?mode, "opening transport");
                self.socket = Some(Socket {
                    conn,
                    state: SocketState::Opening,
                });
                self.actions.push_back(Action::Connect { conn, url });
                self.push_event(DriverEvent::Transport(TransportEvent::Opening { conn }));
            }
            Output::Send { conn, payload } => {
                if !self.is_open(conn) {
                    debug!(%conn, ?payload, "payload for a socket that is not writable; dropped");
                    return;
                }
                match self.codec.encode(now, payload) {
                    Ok(msg) => self.actions.push_back(Action::Write { conn, msg }),
                    Err(e) => self.push_event(DriverEvent::Error(TransportError::Encode {
                        conn,
                        source: Box::new(e),
                    })),
                }
            }
            Output::Close { conn, code } => {
                let Some(s) = self.socket.as_mut().filter(|s| s.conn == conn) else {
                    return;
                };
                debug!(%conn, code, "closing transport");
                match s.state {
                    // No handshake to run yet: this is an abort.
                    SocketState::Opening => self.end(None),
                    SocketState::Open => {
                        s.state = SocketState::ClosedByUs;
                        self.actions.push_back(Action::SendClose { conn, code });
                    }
                    SocketState::PeerClosed { .. } | SocketState::ClosedByUs => {}
                }
            }
            Output::Abort { conn } => {
                if let Some(s) = self.socket.filter(|s| s.conn == conn) {
                    debug!(%conn, "aborting transport");
                    self.end(s.peer_code());
                }
            }
            Output::AcquirePermit { conn } => {
                if self.settings.external_permits {
                    debug!(%conn, "acquiring permit");
                    self.permit = Some(conn);
                    self.actions.push_back(Action::AcquirePermit { conn });
                } else {
                    self.deferred.push_back(Input::PermitGranted(conn));
                }
            }
            Output::Event(event) => self.push_event(DriverEvent::Core(event)),
        }
    }

    /// Ends the socket (if any): cancels its permit and asks the shell to drop it. The report
    /// waits for [`dropped`](Self::dropped).
    fn end(&mut self, code: Option<u16>) {
        let Some(s) = self.socket.take() else {
            return;
        };
        let conn = s.conn;
        if self.permit == Some(conn) {
            self.permit = None;
            self.actions.push_back(Action::CancelPermit { conn });
        }
        let report = match s.state {
            SocketState::Opening => Input::OpenFailed(conn),
            _ => Input::Closed { conn, code },
        };
        self.ending = Some(Ending { conn, report });
        self.actions.push_back(Action::Drop { conn });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use handover_core::{Config, Connection, Decoded, Message, OpenMode, Payload, TransportId};
    use handover_core::{Signal, StopIntent};

    use super::{Action, CoreSettings, DriverCore, ReadMode};
    use crate::error::PermitDenied;
    use crate::event::{DriverEvent, TransportEvent};

    /// Server lines: `hello`, `ready`, `event <text>`.
    struct Lines;

    #[derive(Debug, thiserror::Error)]
    #[error("unknown line")]
    struct Unknown;

    impl handover_core::Codec for Lines {
        type Item = String;
        type Command = String;
        type Error = Unknown;

        fn url(&self, _mode: OpenMode) -> String {
            "ws://127.0.0.1:9/".to_owned()
        }

        fn reset(&mut self, _conn: TransportId, _mode: OpenMode) {}

        fn decode(&mut self, _now: Instant, msg: Message) -> Result<Decoded<String>, Unknown> {
            let text = std::str::from_utf8(msg.as_bytes()).map_err(|_| Unknown)?;
            let signal = match text {
                "hello" => Signal::Hello {
                    interval: Duration::from_secs(40),
                },
                "ready" => Signal::HandshakeAccepted { resumed: false },
                _ => {
                    let item = text.strip_prefix("event ").ok_or(Unknown)?.to_owned();
                    return Ok(Decoded {
                        signal: None,
                        item: Some(item),
                    });
                }
            };
            Ok(Decoded {
                signal: Some(signal),
                item: None,
            })
        }

        fn encode(&mut self, _now: Instant, _payload: Payload) -> Result<Message, Unknown> {
            Ok(Message::text("payload"))
        }

        fn encode_command(&mut self, _now: Instant, command: String) -> Result<Message, Unknown> {
            Ok(Message::text(command))
        }
    }

    const LINGER: Duration = Duration::from_secs(2);

    fn driver(config: Config, max_pending: usize, external_permits: bool) -> DriverCore<Lines> {
        let settings = CoreSettings {
            max_pending,
            close_timeout: LINGER,
            external_permits,
        };
        DriverCore::new(Connection::new(config, 7), Lines, settings)
    }

    fn actions(d: &mut DriverCore<Lines>) -> Vec<Action> {
        std::iter::from_fn(|| d.poll_action()).collect()
    }

    /// The connect the core asked for.
    fn connect(d: &mut DriverCore<Lines>, now: Instant) -> TransportId {
        d.start(now);
        match actions(d).as_slice() {
            [Action::Connect { conn, .. }] => *conn,
            other => panic!("expected one connect, got {other:?}"),
        }
    }

    /// A socket that is open and identified.
    fn identified(d: &mut DriverCore<Lines>, now: Instant) -> TransportId {
        let conn = connect(d, now);
        d.opened(now, conn);
        d.message(now, conn, Message::text("hello"));
        d.message(now, conn, Message::text("ready"));
        assert!(d.connection().sendable_transport() == Some(conn));
        actions(d);
        conn
    }

    fn drops(actions: &[Action]) -> Vec<TransportId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Drop { conn } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    /// The end reports (`OpenFailed`, `Closed`) among the events taken now.
    fn ends(d: &mut DriverCore<Lines>) -> Vec<TransportEvent> {
        d.take_events()
            .into_iter()
            .filter_map(|e| match e {
                DriverEvent::Transport(
                    t @ (TransportEvent::OpenFailed { .. } | TransportEvent::Closed { .. }),
                ) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_connect_is_reported_once_and_only_after_the_drop() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = connect(&mut d, now);
        d.open_failed(now, conn, None);
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        assert_eq!(
            ends(&mut d),
            vec![],
            "no report before the socket is dropped"
        );
        // The shell says it is finished again before dropping: still nothing, no second drop.
        d.socket_gone(now, conn, None);
        d.open_failed(now, conn, None);
        assert!(actions(&mut d).is_empty());
        d.dropped(now, conn);
        assert_eq!(ends(&mut d), vec![TransportEvent::OpenFailed { conn }]);
        d.dropped(now, conn);
        assert_eq!(ends(&mut d), vec![], "a second drop makes no second report");
    }

    #[test]
    fn a_drop_the_core_did_not_ask_for_reports_nothing() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = identified(&mut d, now);
        d.dropped(now, conn);
        assert_eq!(ends(&mut d), vec![]);
        assert_eq!(
            d.read_mode(conn),
            ReadMode::Data,
            "the socket is still open"
        );
    }

    #[test]
    fn a_peer_close_lingers_until_eof_and_reports_the_peer_code_once() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = identified(&mut d, now);
        d.peer_close(now, conn, Some(4000));
        assert!(matches!(
            actions(&mut d).as_slice(),
            [Action::AnswerClose {
                code: Some(4000),
                ..
            }]
        ));
        assert_eq!(d.read_mode(conn), ReadMode::Discard);
        assert_eq!(d.poll_timeout(), Some(now + LINGER));
        // Data while lingering is not decoded.
        d.take_events();
        d.message(now, conn, Message::text("event late"));
        assert!(d.take_events().is_empty());
        assert!(d.send(now, "cmd".to_owned()).is_err());
        // A second close frame changes nothing; EOF ends it.
        d.peer_close(now, conn, Some(4001));
        assert!(actions(&mut d).is_empty());
        d.socket_gone(now, conn, None);
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        d.dropped(now, conn);
        d.dropped(now, conn);
        let code = Some(4000);
        assert_eq!(ends(&mut d), vec![TransportEvent::Closed { conn, code }]);
    }

    #[test]
    fn a_peer_close_without_eof_is_dropped_at_the_linger_deadline() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = identified(&mut d, now);
        d.peer_close(now, conn, Some(4000));
        actions(&mut d);
        d.handle_timeout(now + LINGER - Duration::from_millis(1));
        assert!(
            drops(&actions(&mut d)).is_empty(),
            "not before the deadline"
        );
        d.handle_timeout(now + LINGER);
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        d.socket_gone(now + LINGER, conn, None);
        assert!(
            actions(&mut d).is_empty(),
            "EOF after the drop request adds nothing"
        );
        d.dropped(now + LINGER, conn);
        let code = Some(4000);
        assert_eq!(ends(&mut d), vec![TransportEvent::Closed { conn, code }]);
    }

    #[test]
    fn our_close_ends_on_the_peer_reply_and_a_close_while_connecting_is_an_open_failure() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = identified(&mut d, now);
        d.stop(now, StopIntent::EndSession);
        assert!(matches!(
            actions(&mut d).as_slice(),
            [Action::SendClose { .. }]
        ));
        assert_eq!(d.read_mode(conn), ReadMode::Discard);
        d.peer_close(now, conn, Some(1000));
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        d.dropped(now, conn);
        let code = Some(1000);
        assert_eq!(ends(&mut d), vec![TransportEvent::Closed { conn, code }]);
        assert!(d.is_quiescent());

        let conn = connect(&mut d, now);
        d.stop(now, StopIntent::EndSession);
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        d.dropped(now, conn);
        assert_eq!(ends(&mut d), vec![TransportEvent::OpenFailed { conn }]);
    }

    #[test]
    fn outputs_after_a_drop_request_wait_for_the_report() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 32, false);
        let conn = identified(&mut d, now);
        d.take_events();
        d.socket_gone(now, conn, None);
        assert_eq!(drops(&actions(&mut d)), vec![conn]);
        assert!(
            d.take_events().is_empty(),
            "the core's reaction waits for the drop"
        );
        d.dropped(now, conn);
        let events = d.take_events();
        assert!(
            matches!(
                events.first(),
                Some(DriverEvent::Transport(TransportEvent::Closed { .. }))
            ),
            "the report comes first: {events:?}"
        );
    }

    #[test]
    fn reading_pauses_and_resumes_once_each_and_is_reported_to_the_core() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 2, false);
        let conn = identified(&mut d, now);
        d.take_events();
        d.message(now, conn, Message::text("event a"));
        assert!(d.has_room());
        d.message(now, conn, Message::text("event b"));
        assert!(!d.has_room());
        assert_eq!(d.read_mode(conn), ReadMode::Paused);
        d.set_reading(now, false);
        assert_eq!(d.paused, Some(conn));
        d.set_reading(now, false);
        assert_eq!(d.paused, Some(conn));
        assert_eq!(d.pop_event().map(|_| ()), Some(()));
        assert_eq!(d.read_mode(conn), ReadMode::Data);
        d.set_reading(now, true);
        assert_eq!(d.paused, None);
        // A socket that is closing is read (to see its end) whatever the room.
        d.message(now, conn, Message::text("event c"));
        d.stop(now, StopIntent::KeepResumable);
        assert_eq!(d.read_mode(conn), ReadMode::Discard);
    }

    #[test]
    fn a_reconnect_waits_while_the_application_is_behind() {
        let now = Instant::now();
        let mut d = driver(Config::default(), 1, false);
        let conn = connect(&mut d, now);
        d.open_failed(now, conn, None);
        actions(&mut d);
        d.dropped(now, conn);
        assert!(
            d.connection().poll_timeout().is_some(),
            "a reconnect is scheduled"
        );
        assert_eq!(
            d.poll_timeout(),
            None,
            "held: events wait for the application"
        );
        let far = now + Duration::from_secs(3600);
        d.handle_timeout(far);
        assert!(actions(&mut d).is_empty(), "no connect while held");
        d.take_events();
        assert!(d.poll_timeout().is_some());
        d.handle_timeout(far);
        assert!(matches!(
            actions(&mut d).as_slice(),
            [Action::Connect { .. }]
        ));
    }

    #[test]
    fn a_permit_is_cancelled_when_its_socket_ends_and_a_late_answer_is_ignored() {
        let now = Instant::now();
        let config = Config {
            gate_new_sessions: true,
            ..Config::default()
        };
        let mut d = driver(config, 32, true);
        let conn = connect(&mut d, now);
        d.opened(now, conn);
        d.message(now, conn, Message::text("hello"));
        assert!(matches!(
            actions(&mut d).as_slice(),
            [Action::AcquirePermit { conn: c }] if *c == conn
        ));
        d.socket_gone(now, conn, None);
        let ended = actions(&mut d);
        assert!(
            matches!(
                ended.as_slice(),
                [Action::CancelPermit { conn: a }, Action::Drop { conn: b }] if *a == conn && *b == conn
            ),
            "{ended:?}"
        );
        d.dropped(now, conn);
        d.take_events();
        d.permit_result(now, conn, Ok(()));
        d.permit_result(now, conn, Err(PermitDenied::new("late")));
        assert!(actions(&mut d).is_empty());
        assert!(d.take_events().is_empty(), "a late answer changes nothing");
    }
}
