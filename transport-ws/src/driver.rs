//! The tokio driver: one task owns a core [`Connection`], a codec and at most one socket.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Instant;

use handover_core::{Codec, Connection, ConnectionStatus, RestartReason, StopIntent, TransportId};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::clock;

use crate::config::TransportConfig;
use crate::error::{DriverGone, PermitDenied, SendError, TransportError};
use crate::event::DriverEvent;
use crate::handoff;
use crate::link::{Action, CoreSettings, DriverCore, ReadMode};
use crate::socket::{
    self, ConnectSettings, QueueError, SocketEvent, TlsSetup, Transport, TransportWake,
};

/// The future a [`PermitSource`] hands out.
pub type PermitFuture = Pin<Box<dyn Future<Output = Result<(), PermitDenied>> + Send>>;

/// Messages read from the socket in one driver step, at most: the messages one socket read
/// brought are decoded back to back and their events handed to the application at once.
/// Bounded so that a flood still lets the timers, commands and permits in between steps.
const MAX_BURST: usize = 128;

/// Grants permits to start new sessions (Discord: the shared identify queue and budget).
///
/// The driver calls [`acquire`](Self::acquire) when the core emits
/// [`Output::AcquirePermit`](handover_core::Output::AcquirePermit) (only with [`Config::gate_new_sessions`](handover_core::Config)).
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
        let (cmd_tx, cmd_rx) = handoff::command_channel(config.command_capacity);
        let (ev_tx, ev_rx) = handoff::channel(config.event_capacity);
        let (status_tx, status_rx) = watch::channel(connection.status());
        let live = Arc::new(AtomicUsize::new(0));
        let core_settings = CoreSettings {
            max_pending: config.max_pending_events,
            close_timeout: config.close_timeout,
            external_permits: permits.is_some(),
        };
        let task = Task {
            core: DriverCore::new(connection, codec, core_settings),
            settings: ConnectSettings::new(&config),
            tls: TlsSetup::new(&config),
            max_write_queue: config.max_write_queue,
            permits,
            transport: None,
            permit: None,
            events: ev_tx,
            status: status_tx,
            stop_waiters: Vec::new(),
            exiting: false,
            live: live.clone(),
            #[cfg(feature = "planted-faults")]
            planted: config.planted_fault,
            #[cfg(feature = "planted-faults")]
            leaked: Vec::new(),
        };
        // Boxed: an async fn keeps its by-value arguments beside the locals they are moved
        // into, so a `Task` passed by value was in the parked future twice (4.1 KiB of future
        // for a 1.9 KiB task with the Discord codec).
        tokio::spawn(Box::new(task).run(cmd_rx));
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
    /// A reply sender, or none for [`DriverHandle::request_start`].
    Start(Option<oneshot::Sender<()>>),
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
    commands: handoff::CommandSender<Command<C>>,
    status: watch::Receiver<ConnectionStatus>,
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
        self.call(|tx| Command::Start(Some(tx))).await
    }

    /// Asks the task to begin connecting, without waiting for it to apply the request (for
    /// callers that cannot wait, such as a constructor). Same effect as [`start`](Self::start)
    /// once the task runs. `false` if the task is gone or its command queue is full (then
    /// call `start`). Costs no task and no reply channel.
    pub fn request_start(&self) -> bool {
        self.commands.try_send(Command::Start(None)).is_ok()
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
    pub fn status(&self) -> ConnectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that is notified after every status change (for health pages or waits).
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
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
///
/// The driver hands events over in bursts (everything one step decoded, in one operation) and
/// this side takes every queued event at once into a local buffer it pops without locking. The
/// capacity bounds events, not bursts: an event counts until the burst it was taken in has been
/// read to its end.
pub struct DriverEvents<C: Codec> {
    events: handoff::Receiver<DriverEvent<C::Item>>,
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
        poll_fn(|cx| self.events.poll_recv(cx)).await
    }

    /// The next event if one is ready now.
    pub fn try_next_event(&mut self) -> Option<DriverEvent<C::Item>> {
        self.events.try_recv()
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
    conn: TransportId,
    future: PermitFuture,
}

enum Wake<C: Codec> {
    Command(Option<Command<C>>),
    Transport(TransportWake),
    Timer,
    Permit(TransportId, Result<(), PermitDenied>),
    EventSent,
}

/// The tokio shell over the driver core: the socket, the permit future, the channels and the
/// timer. What to do with them is the core's decision.
struct Task<C: Codec> {
    core: DriverCore<C>,
    settings: ConnectSettings,
    tls: TlsSetup,
    max_write_queue: usize,
    permits: Option<Arc<dyn PermitSource>>,
    /// The one transport that may exist, dropped only when the core says so.
    transport: Option<Transport>,
    permit: Option<PendingPermit>,
    events: handoff::Sender<DriverEvent<C::Item>>,
    status: watch::Sender<ConnectionStatus>,
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
    async fn run(mut self: Box<Self>, mut commands: handoff::CommandReceiver<Command<C>>) {
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut commands_open = true;
        loop {
            // Status first: an application that reads an event and then asks for the status
            // sees at least the state that produced the event.
            self.publish_status();
            self.flush_events();
            if self.core.is_quiescent() && self.transport.is_none() {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                if self.exiting {
                    break;
                }
            }
            let deadline = self.core.poll_timeout();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
            let room = self.core.has_room();
            self.core.set_reading(clock::now(), room);
            self.carry_out();
            let mode = match self.transport.as_ref() {
                Some(t) => self.core.read_mode(t.conn()),
                None => ReadMode::Paused,
            };
            let wake = {
                let transport = &mut self.transport;
                let permit = &mut self.permit;
                let events = &self.events;
                let core = &mut self.core;
                let want_slot = core.has_events();
                // A fixed order (`biased`), so that a run replays exactly under a paused clock
                // (tokio otherwise picks among ready branches at random). Deadlines and permits
                // first: a flood of frames must not delay a heartbeat or a drain deadline.
                // Commands before the socket, so a stop is never starved by incoming data;
                // the socket last, since it is the branch that can stay ready for long.
                tokio::select! {
                    biased;
                    () = &mut sleep, if armed.is_some() => Wake::Timer,
                    (conn, result) = poll_fn(|cx| match permit.as_mut() {
                        Some(p) => p.future.as_mut().poll(cx).map(|r| (p.conn, r)),
                        None => Poll::Pending,
                    }) => Wake::Permit(conn, result),
                    cmd = poll_fn(|cx| commands.poll_recv(cx)), if commands_open => Wake::Command(cmd),
                    room = poll_fn(|cx| events.poll_room(cx)), if want_slot => {
                        // Room: the next step's flush hands over what fits.
                        if room.is_err() {
                            core.close_events();
                        }
                        Wake::EventSent
                    }
                    w = poll_fn(|cx| match transport.as_mut() {
                        Some(t) => t.poll(cx, mode),
                        None => Poll::Pending,
                    }) => Wake::Transport(w),
                }
            };
            let now = clock::now();
            match wake {
                Wake::Command(Some(cmd)) => self.command(now, cmd),
                Wake::Command(None) => {
                    commands_open = false;
                    debug!("all handles dropped; stopping");
                    self.begin_exit(now);
                }
                Wake::Transport(w) => {
                    let message = matches!(w, TransportWake::Socket(SocketEvent::Message(_)));
                    self.transport_wake(now, w);
                    if message {
                        poll_fn(|cx| {
                            self.read_burst(cx, now);
                            Poll::Ready(())
                        })
                        .await;
                    }
                }
                Wake::Timer => {
                    armed = None;
                    self.core.handle_timeout(now);
                }
                Wake::Permit(conn, result) => {
                    self.permit = None;
                    self.core.permit_result(now, conn, result);
                }
                Wake::EventSent => {}
            }
            self.carry_out();
        }
        // Leave what fits for the reader; the rest is dropped with the task.
        self.flush_events();
        self.publish_status();
        debug!("driver task exits");
    }

    fn command(&mut self, now: Instant, cmd: Command<C>) {
        match cmd {
            Command::Start(reply) => {
                self.core.start(now);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            Command::Stop(intent, reply) => {
                self.core.stop(now, intent);
                self.stop_waiters.push(reply);
            }
            Command::Restart(reason, reply) => {
                self.core.restart(now, reason);
                let _ = reply.send(());
            }
            Command::Send(command, reply) => {
                let result = self.send_command(now, command);
                let _ = reply.send(result);
            }
            Command::Shutdown => self.begin_exit(now),
        }
    }

    fn begin_exit(&mut self, now: Instant) {
        self.exiting = true;
        self.core.stop(now, StopIntent::KeepResumable);
    }

    fn send_command(&mut self, now: Instant, command: C::Command) -> Result<(), SendError> {
        let (conn, msg) = self.core.send(now, command)?;
        let Some(transport) = self.transport.as_mut().filter(|t| t.conn() == conn) else {
            return Err(SendError::NotIdentified);
        };
        match transport.queue(msg, false) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(SendError::QueueFull),
            Err(QueueError::InvalidText) => Err(SendError::Codec(
                "codec produced a text message that is not utf-8".into(),
            )),
        }
    }

    fn transport_wake(&mut self, now: Instant, wake: TransportWake) {
        let Some(conn) = self.transport.as_ref().map(Transport::conn) else {
            return;
        };
        match wake {
            TransportWake::Opened => self.core.opened(now, conn),
            TransportWake::OpenFailed(error) => self.core.open_failed(now, conn, Some(error)),
            TransportWake::Socket(SocketEvent::Message(msg)) => self.core.message(now, conn, msg),
            TransportWake::Socket(SocketEvent::CloseFrame(code)) => {
                self.core.peer_close(now, conn, code);
            }
            TransportWake::Socket(SocketEvent::Gone { error }) => {
                self.core.socket_gone(now, conn, error);
            }
        }
    }

    /// Carries out every action the core queued, in order, including those that carrying one
    /// out produces.
    fn carry_out(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect { conn, url } => {
                    let future = socket::connect(conn, url, &self.settings, &mut self.tls);
                    self.transport = Some(Transport::connecting(
                        conn,
                        future,
                        self.max_write_queue,
                        &self.live,
                    ));
                }
                Action::Write { conn, msg } => {
                    let Some(t) = self.transport.as_mut().filter(|t| t.conn() == conn) else {
                        continue;
                    };
                    if t.queue(msg, true).is_err() {
                        self.core.push_error(TransportError::Encode {
                            conn,
                            source: "codec produced a text message that is not utf-8".into(),
                        });
                    }
                }
                Action::SendClose { conn, code } => {
                    if let Some(t) = self.transport.as_mut().filter(|t| t.conn() == conn) {
                        t.close(code);
                    }
                }
                // tungstenite queued the reply with the peer's code when it read the frame.
                Action::AnswerClose { conn, .. } => {
                    if let Some(t) = self.transport.as_mut().filter(|t| t.conn() == conn) {
                        t.answer_close();
                    }
                }
                Action::Drop { conn } => self.drop_transport(conn),
                Action::AcquirePermit { conn } => match &self.permits {
                    Some(source) => {
                        self.permit = Some(PendingPermit {
                            conn,
                            future: source.acquire(),
                        });
                    }
                    // Only asked for with a source; without one the core grants at once.
                    None => self.core.permit_result(clock::now(), conn, Ok(())),
                },
                Action::CancelPermit { conn } => {
                    if self.permit.as_ref().is_some_and(|p| p.conn == conn) {
                        self.permit = None;
                    }
                }
            }
        }
    }

    /// Drops the transport of `conn` (socket or connect attempt), then tells the core, which
    /// makes its one end report.
    fn drop_transport(&mut self, conn: TransportId) {
        if let Some(transport) = self.transport.take_if(|t| t.conn() == conn) {
            #[cfg(feature = "planted-faults")]
            if self.planted == Some(crate::config::PlantedFault::ReportGoneBeforeDrop) {
                // The planted bug: the core hears the socket is gone, but it stays open.
                self.leaked.push(transport);
                self.core.dropped(clock::now(), conn);
                return;
            }
            drop(transport);
        }
        self.core.dropped(clock::now(), conn);
    }

    /// After a message: decodes the messages already readable on the same socket, up to
    /// [`MAX_BURST`] in all, without going back through the select (whose every branch costs a
    /// poll). Stops at the first thing that is not a data message, when the core has actions
    /// for the shell (a reply, a drop: they go out before more is read), and when the
    /// application is behind (the read mode is no longer `Data`; the next step reports the
    /// pause to the core as before). A `Pending` poll leaves the task's waker with the socket.
    fn read_burst(&mut self, cx: &mut std::task::Context<'_>, now: Instant) {
        for _ in 1..MAX_BURST {
            if self.core.has_actions() {
                return;
            }
            let Some(transport) = self.transport.as_mut() else {
                return;
            };
            let mode = self.core.read_mode(transport.conn());
            if mode != ReadMode::Data {
                return;
            }
            let Poll::Ready(wake) = transport.poll(cx, mode) else {
                return;
            };
            let message = matches!(wake, TransportWake::Socket(SocketEvent::Message(_)));
            self.transport_wake(now, wake);
            if !message {
                return;
            }
        }
    }

    /// Hands every waiting event the application has room for over in one operation.
    fn flush_events(&mut self) {
        if !self.core.has_events() {
            return;
        }
        if self.events.send_from(self.core.pending_events()).is_err() {
            debug!("event receiver dropped; events are discarded from now on");
            self.core.close_events();
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
