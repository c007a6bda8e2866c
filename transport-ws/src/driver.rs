//! The tokio driver: one task owns a core [`Connection`], a codec and at most one socket.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Instant;

use handover_core::{
    Codec, Connection, ConnectionId, Input, Output, RestartReason, State, Status, StopIntent,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, trace, warn};

use crate::config::TransportConfig;
use crate::error::{DriverGone, PermitDenied, SendError, TransportError};
use crate::event::{DriverEvent, TransportEvent};
use crate::socket::{
    self, ConnectSettings, QueueError, SocketEvent, TlsSetup, Transport, TransportWake,
};

/// The future a [`PermitSource`] hands out.
pub type PermitFuture = Pin<Box<dyn Future<Output = Result<(), PermitDenied>> + Send>>;

/// Grants permits to start new sessions (Discord: the shared identify queue and budget).
///
/// The driver calls [`acquire`](Self::acquire) when the core emits
/// [`Output::AcquirePermit`] (only with [`Config::gate_new_sessions`](handover_core::Config)).
/// The returned future is polled inside the driver task, next to the socket and the timers, so
/// heartbeats keep flowing while it waits. It is dropped unfinished if that transport ends first:
/// an implementation MUST treat a dropped future as "not taken" (for example by reserving the
/// slot only when the future completes).
pub trait PermitSource: Send + Sync + 'static {
    /// Wait for a permit. `Ok` lets the handshake go; `Err` makes the core give up.
    fn acquire(&self) -> PermitFuture;
}

/// Runs a core [`Connection`] over WebSockets.
///
/// See the crate documentation for the contract between the core and this driver.
#[derive(Debug)]
pub struct Driver;

impl Driver {
    /// Spawns the driver task on the current tokio runtime and returns the handle to command it
    /// and the receiver of its events.
    ///
    /// The connection starts idle: call [`DriverHandle::start`]. The task ends when every
    /// handle has been dropped (after stopping the connection, keeping the session resumable,
    /// bounded by the core's drain deadline) or after [`DriverHandle::shutdown`].
    ///
    /// Must be called from within a tokio runtime (it uses `tokio::spawn`), like any tokio
    /// spawn.
    pub fn spawn<C>(
        connection: Connection,
        codec: C,
        config: TransportConfig,
        permits: Option<Arc<dyn PermitSource>>,
    ) -> (DriverHandle<C>, DriverEvents<C>)
    where
        C: Codec + Send + 'static,
        C::Item: Send + 'static,
        C::Command: Send + 'static,
    {
        let config = config.normalized();
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity);
        let (status_tx, status_rx) = watch::channel(connection.status());
        let live = Arc::new(AtomicUsize::new(0));
        let task = Task {
            settings: ConnectSettings::new(&config),
            tls: TlsSetup::new(&config),
            max_pending: config.max_pending_events,
            max_write_queue: config.max_write_queue,
            core: connection,
            codec,
            permits,
            transport: None,
            permit: None,
            deferred: VecDeque::new(),
            pending: VecDeque::new(),
            paused: None,
            events: ev_tx,
            events_open: true,
            status: status_tx,
            stop_waiters: Vec::new(),
            exiting: false,
            live: live.clone(),
            #[cfg(feature = "planted-faults")]
            planted: config.planted_fault,
            #[cfg(feature = "planted-faults")]
            leaked: Vec::new(),
        };
        tokio::spawn(task.run(cmd_rx));
        (
            DriverHandle {
                commands: cmd_tx,
                status: status_rx,
                live,
            },
            DriverEvents { events: ev_rx },
        )
    }
}

enum Command<C: Codec> {
    Start(oneshot::Sender<()>),
    Stop(StopIntent, oneshot::Sender<()>),
    Restart(RestartReason, oneshot::Sender<()>),
    Send(C::Command, oneshot::Sender<Result<(), SendError>>),
    Shutdown,
}

/// Commands a running driver. Cheap to clone; every clone talks to the same task.
///
/// Every method sends one command to the task over a bounded channel and waits for its reply,
/// so the API is cancellation-safe: dropping a call's future before it completes either leaves
/// the command unsent or lets the task finish applying it, never half of it.
pub struct DriverHandle<C: Codec> {
    commands: mpsc::Sender<Command<C>>,
    status: watch::Receiver<Status>,
    live: Arc<AtomicUsize>,
}

impl<C: Codec> Clone for DriverHandle<C> {
    fn clone(&self) -> Self {
        DriverHandle {
            commands: self.commands.clone(),
            status: self.status.clone(),
            live: self.live.clone(),
        }
    }
}

impl<C: Codec> std::fmt::Debug for DriverHandle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverHandle")
            .field("phase", &self.status.borrow().phase)
            .field("live_transports", &self.live_transports())
            .finish()
    }
}

impl<C: Codec> DriverHandle<C> {
    /// Begins connecting (a no-op while a connection is already being made or is up). Returns
    /// once the core has applied it.
    pub async fn start(&self) -> Result<(), DriverGone> {
        self.call(Command::Start).await
    }

    /// Closes the connection and returns only once the core is `Closed` with no live socket:
    /// after the peer's close reply, or after the core's drain deadline aborted the socket.
    ///
    /// If another handle starts or restarts the connection meanwhile, this still returns at the
    /// first moment no socket is live.
    pub async fn stop(&self, intent: StopIntent) -> Result<(), DriverGone> {
        self.call(|tx| Command::Stop(intent, tx)).await
    }

    /// Closes the live socket keeping the session resumable, then connects again. Returns once
    /// the core applied it (not once reconnected). Safe at any moment and any number of times,
    /// concurrently: the core absorbs restarts into the step under way, and never opens a
    /// second socket.
    pub async fn restart(&self, reason: RestartReason) -> Result<(), DriverGone> {
        self.call(|tx| Command::Restart(reason, tx)).await
    }

    /// Encodes `command` with the codec and queues it on the identified socket.
    ///
    /// `Ok` means the message is queued in order on the live socket; it may still be lost if
    /// that socket dies before writing it. On any error nothing was queued.
    pub async fn send(&self, command: C::Command) -> Result<(), SendError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(command, tx))
            .await
            .map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)?
    }

    /// The core's status, as of the driver's last step. Never blocks.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that is notified after every status change (for health pages or waits).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Sockets that exist right now in this driver, connecting or open: 0 or 1.
    pub fn live_transports(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether the driver task has exited.
    pub fn is_finished(&self) -> bool {
        self.commands.is_closed()
    }

    /// Stops the connection (keeping the session resumable; the socket is aborted if the close
    /// handshake outlives the core's drain deadline) and ends the task. Returns once the task
    /// has exited. Other handles then get [`DriverGone`].
    pub async fn shutdown(&self) {
        // A full command channel only delays this; a closed one means the task already left.
        let _ = self.commands.send(Command::Shutdown).await;
        let mut status = self.status.clone();
        while status.changed().await.is_ok() {}
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<()>) -> Command<C>,
    ) -> Result<(), DriverGone> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)
    }
}

/// The events of one driver, in order. Not cloneable: one consumer.
///
/// The channel is bounded. When the application does not read, the driver keeps up to
/// [`max_pending_events`](TransportConfig::max_pending_events) events locally and then stops
/// reading the socket (the peer's sends back up in TCP); timers keep running, so heartbeats are
/// still sent. A stall longer than the heartbeat interval plus the probe grace therefore makes
/// the core judge the connection a zombie and reconnect (resuming the session).
pub struct DriverEvents<C: Codec> {
    events: mpsc::Receiver<DriverEvent<C::Item>>,
}

impl<C: Codec> std::fmt::Debug for DriverEvents<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverEvents")
            .field("queued", &self.events.len())
            .finish()
    }
}

impl<C: Codec> DriverEvents<C> {
    /// The next event, or `None` once the driver task has exited and every event was read.
    pub async fn next_event(&mut self) -> Option<DriverEvent<C::Item>> {
        self.events.recv().await
    }

    /// The next event if one is ready now.
    pub fn try_next_event(&mut self) -> Option<DriverEvent<C::Item>> {
        self.events.try_recv().ok()
    }

    /// Polls for the next event (for a stream or a hand-written future): `Ready(None)` once the
    /// driver task has exited and every event was read.
    pub fn poll_next_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<DriverEvent<C::Item>>> {
        self.events.poll_recv(cx)
    }
}

struct PendingPermit {
    conn: ConnectionId,
    future: PermitFuture,
}

enum Wake<C: Codec> {
    Command(Option<Command<C>>),
    Transport(TransportWake),
    Timer,
    Permit(ConnectionId, Result<(), PermitDenied>),
    EventSent,
}

struct Task<C: Codec> {
    core: Connection,
    codec: C,
    settings: ConnectSettings,
    tls: TlsSetup,
    max_pending: usize,
    max_write_queue: usize,
    permits: Option<Arc<dyn PermitSource>>,
    /// The one transport that may exist. Ended only through `Transport::finish`.
    transport: Option<Transport>,
    permit: Option<PendingPermit>,
    /// Inputs produced while applying outputs, fed to the core in order.
    deferred: VecDeque<Input>,
    /// Events waiting for room in the event channel.
    pending: VecDeque<DriverEvent<C::Item>>,
    /// The transport whose reading was last reported paused to the core, if any.
    paused: Option<ConnectionId>,
    events: mpsc::Sender<DriverEvent<C::Item>>,
    events_open: bool,
    status: watch::Sender<Status>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    exiting: bool,
    live: Arc<AtomicUsize>,
    #[cfg(feature = "planted-faults")]
    planted: Option<crate::config::PlantedFault>,
    /// Sockets a planted fault keeps alive after reporting them gone.
    #[cfg(feature = "planted-faults")]
    leaked: Vec<Transport>,
}

impl<C> Task<C>
where
    C: Codec + Send + 'static,
    C::Item: Send + 'static,
    C::Command: Send + 'static,
{
    async fn run(mut self, mut commands: mpsc::Receiver<Command<C>>) {
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut commands_open = true;
        loop {
            // Status first: an application that reads an event and then asks for the status
            // sees at least the state that produced the event.
            self.publish_status();
            self.flush_events();
            if self.is_quiescent() {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                if self.exiting {
                    break;
                }
            }
            let deadline = self.next_deadline();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
            let read = self.pending.len() < self.max_pending;
            self.report_reading(read);
            let read = self.pending.len() < self.max_pending;
            let wake = {
                let transport = &mut self.transport;
                let permit = &mut self.permit;
                let events = &self.events;
                let pending = &mut self.pending;
                let want_slot = !pending.is_empty() && self.events_open;
                tokio::select! {
                    cmd = commands.recv(), if commands_open => Wake::Command(cmd),
                    w = poll_fn(|cx| match transport.as_mut() {
                        Some(t) => t.poll(cx, read),
                        None => Poll::Pending,
                    }) => Wake::Transport(w),
                    () = &mut sleep, if armed.is_some() => Wake::Timer,
                    (conn, result) = poll_fn(|cx| match permit.as_mut() {
                        Some(p) => p.future.as_mut().poll(cx).map(|r| (p.conn, r)),
                        None => Poll::Pending,
                    }) => Wake::Permit(conn, result),
                    slot = events.reserve(), if want_slot => {
                        match slot {
                            Ok(slot) => {
                                if let Some(ev) = pending.pop_front() {
                                    slot.send(ev);
                                }
                            }
                            Err(_) => {
                                self.events_open = false;
                                pending.clear();
                            }
                        }
                        Wake::EventSent
                    }
                }
            };
            match wake {
                Wake::Command(Some(cmd)) => self.command(cmd),
                Wake::Command(None) => {
                    commands_open = false;
                    debug!("all handles dropped; stopping");
                    self.begin_exit();
                }
                Wake::Transport(w) => self.transport_wake(w),
                Wake::Timer => {
                    armed = None;
                    self.timer();
                }
                Wake::Permit(conn, result) => {
                    self.permit = None;
                    let input = match result {
                        Ok(()) => Input::PermitGranted(conn),
                        Err(denied) => {
                            debug!(%conn, reason = denied.reason(), "permit denied");
                            Input::PermitDenied(conn)
                        }
                    };
                    self.feed(input);
                }
                Wake::EventSent => {}
            }
        }
        // Leave what fits for the reader; the rest is dropped with the task.
        self.flush_events();
        self.publish_status();
        debug!("driver task exits");
    }

    fn command(&mut self, cmd: Command<C>) {
        match cmd {
            Command::Start(reply) => {
                self.feed(Input::Start);
                let _ = reply.send(());
            }
            Command::Stop(intent, reply) => {
                self.feed(Input::Stop(intent));
                self.stop_waiters.push(reply);
            }
            Command::Restart(reason, reply) => {
                self.feed(Input::Restart(reason));
                let _ = reply.send(());
            }
            Command::Send(command, reply) => {
                let result = self.send_command(command);
                let _ = reply.send(result);
            }
            Command::Shutdown => self.begin_exit(),
        }
    }

    fn begin_exit(&mut self) {
        self.exiting = true;
        self.feed(Input::Stop(StopIntent::KeepResumable));
    }

    fn send_command(&mut self, command: C::Command) -> Result<(), SendError> {
        let conn = self
            .core
            .sendable_connection()
            .ok_or(SendError::NotIdentified)?;
        let transport = match self.transport.as_mut() {
            Some(t) if t.conn() == conn && t.is_writable() => t,
            _ => return Err(SendError::NotIdentified),
        };
        let msg = self
            .codec
            .encode_command(crate::clock::now(), command)
            .map_err(|e| SendError::Codec(Box::new(e)))?;
        match transport.queue(msg, false) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(SendError::QueueFull),
            Err(QueueError::NotWritable) => Err(SendError::NotIdentified),
            Err(QueueError::InvalidText) => Err(SendError::Codec(
                "codec produced a text message that is not utf-8".into(),
            )),
        }
    }

    fn transport_wake(&mut self, wake: TransportWake) {
        let Some(conn) = self.transport.as_ref().map(Transport::conn) else {
            return;
        };
        match wake {
            TransportWake::Opened => {
                debug!(%conn, "transport opened");
                self.push_event(DriverEvent::Transport(TransportEvent::Opened { conn }));
                self.feed(Input::Opened(conn));
            }
            TransportWake::OpenFailed(error) => {
                debug!(%conn, %error, "transport failed to open");
                self.push_event(DriverEvent::Error(error));
                self.end_transport(None);
                self.pump();
            }
            TransportWake::Socket(SocketEvent::Message(msg)) => self.decode(conn, msg),
            // Nothing to do but loop: the linger deadline is armed from `next_deadline`.
            TransportWake::Socket(SocketEvent::PeerClosing) => {}
            TransportWake::Socket(SocketEvent::Gone { code, error }) => {
                if let Some(error) = error {
                    debug!(%conn, %error, "socket failed");
                    self.push_event(DriverEvent::Error(error));
                }
                self.end_transport(code);
                self.pump();
            }
        }
    }

    fn decode(&mut self, conn: ConnectionId, msg: handover_core::Message) {
        let now = crate::clock::now();
        match self.codec.decode(now, msg) {
            Ok(decoded) => {
                if let Some(signal) = decoded.signal {
                    trace!(%conn, ?signal, "signal");
                    self.core.handle_input(now, Input::Signal { conn, signal });
                    self.pump();
                }
                if let Some(item) = decoded.item {
                    self.push_event(DriverEvent::Item(item));
                }
                while let Some(item) = self.codec.poll_item() {
                    self.push_event(DriverEvent::Item(item));
                }
            }
            Err(e) => {
                debug!(%conn, error = %e, "decode failed");
                self.push_event(DriverEvent::Error(TransportError::Decode {
                    conn,
                    source: Box::new(e),
                }));
                while let Some(item) = self.codec.poll_item() {
                    self.push_event(DriverEvent::Item(item));
                }
                if self.codec.poll_restart() {
                    debug!(%conn, "codec cannot decode this transport any more; restarting");
                    self.feed(Input::Restart(RestartReason::TransportFault));
                }
            }
        }
    }

    fn timer(&mut self) {
        let now = crate::clock::now();
        if self
            .transport
            .as_ref()
            .and_then(Transport::deadline)
            .is_some_and(|d| d <= now)
        {
            debug!("close reply linger expired; dropping socket");
            let code = self.transport.as_ref().and_then(Transport::peer_code);
            self.end_transport(code);
        }
        if self.reconnect_held() {
            return;
        }
        self.core.handle_timeout(now);
        self.pump();
    }

    /// Feeds one input and carries out everything that follows.
    fn feed(&mut self, input: Input) {
        self.core.handle_input(crate::clock::now(), input);
        self.pump();
    }

    /// Drains the core's outputs, carrying each out, and feeds back the inputs they produce,
    /// until the core has nothing more to say.
    fn pump(&mut self) {
        loop {
            while let Some(out) = self.core.poll_output() {
                self.apply(out);
            }
            match self.deferred.pop_front() {
                Some(input) => self.core.handle_input(crate::clock::now(), input),
                None => break,
            }
        }
    }

    fn apply(&mut self, out: Output) {
        match out {
            Output::Open { conn, mode } => {
                if let Some(old) = self.transport.as_ref().map(Transport::conn) {
                    // The core never asks for this; if it did, the old socket goes first.
                    warn!(%old, %conn, "open requested while a transport exists; aborting it");
                    self.end_transport(None);
                }
                self.codec.reset(conn, mode);
                let url = self.codec.url(mode);
                debug!(%conn, ?mode, "opening transport");
                let future = socket::connect(conn, url, &self.settings, &mut self.tls);
                self.transport = Some(Transport::connecting(
                    conn,
                    future,
                    &self.settings,
                    self.max_write_queue,
                    &self.live,
                ));
                self.push_event(DriverEvent::Transport(TransportEvent::Opening { conn }));
            }
            Output::Send { conn, payload } => {
                let Some(t) = self.transport.as_mut().filter(|t| t.conn() == conn) else {
                    return;
                };
                if !t.is_writable() {
                    debug!(%conn, ?payload, "payload for a socket that is not writable; dropped");
                    return;
                }
                match self.codec.encode(crate::clock::now(), payload) {
                    Ok(msg) => {
                        if t.queue(msg, true).is_err() {
                            self.push_event(DriverEvent::Error(TransportError::Encode {
                                conn,
                                source: "codec produced a text message that is not utf-8".into(),
                            }));
                        }
                    }
                    Err(e) => self.push_event(DriverEvent::Error(TransportError::Encode {
                        conn,
                        source: Box::new(e),
                    })),
                }
            }
            Output::Close { conn, code } => {
                let Some(t) = self.transport.as_mut().filter(|t| t.conn() == conn) else {
                    return;
                };
                debug!(%conn, code, "closing transport");
                if !t.close(code) {
                    // Still connecting: there is no handshake to run, so this is an abort.
                    self.end_transport(None);
                }
            }
            Output::Abort { conn } => {
                if self.transport.as_ref().is_some_and(|t| t.conn() == conn) {
                    debug!(%conn, "aborting transport");
                    let code = self.transport.as_ref().and_then(Transport::peer_code);
                    self.end_transport(code);
                }
            }
            Output::AcquirePermit { conn } => match &self.permits {
                Some(source) => {
                    debug!(%conn, "acquiring permit");
                    self.permit = Some(PendingPermit {
                        conn,
                        future: source.acquire(),
                    });
                }
                None => self.deferred.push_back(Input::PermitGranted(conn)),
            },
            Output::Event(event) => self.push_event(DriverEvent::Core(event)),
        }
    }

    /// Ends the transport (if any): the socket is dropped here, and its single report is queued
    /// for the core.
    fn end_transport(&mut self, code: Option<u16>) {
        let Some(transport) = self.transport.take() else {
            return;
        };
        if self
            .permit
            .as_ref()
            .is_some_and(|p| p.conn == transport.conn())
        {
            self.permit = None;
        }
        #[cfg(feature = "planted-faults")]
        let input = if self.planted == Some(crate::config::PlantedFault::ReportGoneBeforeDrop) {
            let (input, kept) = transport.finish_leaking(code);
            self.leaked.push(kept);
            input
        } else {
            transport.finish(code)
        };
        #[cfg(not(feature = "planted-faults"))]
        let input = transport.finish(code);
        let report = match input {
            Input::Closed { conn, code } => TransportEvent::Closed { conn, code },
            Input::OpenFailed(conn) => TransportEvent::OpenFailed { conn },
            _ => return,
        };
        debug!(conn = %report.connection(), ?report, "transport gone");
        self.push_event(DriverEvent::Transport(report));
        self.deferred.push_back(input);
    }

    fn next_deadline(&self) -> Option<Instant> {
        // Closed with a reconnect due but the application far behind: the reconnect waits
        // (re-armed as soon as the application reads, since every read wakes this loop).
        let core = if self.reconnect_held() {
            None
        } else {
            self.core.poll_timeout()
        };
        let linger = self.transport.as_ref().and_then(Transport::deadline);
        match (core, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_quiescent(&self) -> bool {
        self.core.state() == State::Closed && self.transport.is_none()
    }

    fn push_event(&mut self, event: DriverEvent<C::Item>) {
        if !self.events_open {
            return;
        }
        self.pending.push_back(event);
    }

    /// Tells the core when reading the open transport stops (the application is behind) and
    /// when it starts again: heartbeat ACKs may wait unread meanwhile, which is no sign of a
    /// dead peer (`Input::Backpressure`).
    fn report_reading(&mut self, read: bool) {
        let open = self
            .transport
            .as_ref()
            .filter(|t| t.is_writable())
            .map(Transport::conn);
        let want = if read { None } else { open };
        if want == self.paused {
            return;
        }
        if let Some(conn) = self.paused.take()
            && open == Some(conn)
        {
            trace!(%conn, "reading resumed");
            self.feed(Input::Backpressure {
                conn,
                paused: false,
            });
        }
        if let Some(conn) = want {
            trace!(%conn, "reading paused: the application is behind");
            self.paused = Some(conn);
            self.feed(Input::Backpressure { conn, paused: true });
        }
    }

    /// Whether a reconnect must wait for the application: it is behind (as many events held
    /// locally as make the driver stop reading). A new socket could not be read anyway (its
    /// HELLO would wait behind the application and time out), and the gateway keeps what the
    /// session misses meanwhile for the resume. Lifecycle events are still queued past the
    /// reading limit, never dropped; holding reconnects bounds them to one connection's end.
    fn reconnect_held(&self) -> bool {
        self.events_open
            && self.pending.len() >= self.max_pending
            && self.core.state() == State::Closed
    }

    fn flush_events(&mut self) {
        while let Some(ev) = self.pending.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.pending.push_front(ev);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("event receiver dropped; events are discarded from now on");
                    self.events_open = false;
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    fn publish_status(&self) {
        let status = self.core.status();
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}
