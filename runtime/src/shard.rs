//! One shard: the lifecycle core, the Discord codec and the WebSocket driver, as one task.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use handover_core::{
    Codec, Config, Connection, Decoded, Event, GiveUpReason, Message, OpenMode, Payload,
    RestartReason, Signal, State, StopIntent, TransportId,
};
use handover_transport_ws::{
    DriverEvent, DriverEvents, DriverGone, DriverHandle, PermitSource, TransportConfig,
    TransportEvent,
};
use tracing::{debug, error, info, warn};

use super::delivery::{Delivery, Entry, Ledger, Receipt, resumable_session};
use super::queue::IdentifyGate;
use super::status::{Observer, ShardStatus, describe_give_up, millis};
use handover_protocol::session::Gap;
use handover_protocol::{
    CLOSE_RULES, Command, DiscordCodec, Dispatch, GatewayConfig, GatewayEvent, IdentifyQueueConfig,
    ProtocolError, Ready, Resumed, Session,
};

/// Everything one shard needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShardConfig {
    /// Token, intents, shard id, gateway URL, compression, send limits.
    pub gateway: GatewayConfig,
    /// Lifecycle timers and backoff. Its close rules are always Discord's. Default: the
    /// core's, except that the first reconnect after a good session goes out at once
    /// (`reconnect_spread` zero; a [`Fleet`](super::Fleet) spreads its shards' over 25 ms).
    pub lifecycle: Config,
    /// Socket limits and TLS roots.
    pub transport: TransportConfig,
    /// Seed for heartbeat and backoff jitter. `None` (the default): drawn from the operating
    /// system's randomness, so that processes and restarts do not reconnect in step. Set it
    /// for reproducible runs (tests, simulations).
    pub seed: Option<u64>,
    /// Who decides that an event was delivered (see [`Delivery`]). Default: `next_event()`
    /// returning it.
    pub delivery: Delivery,
    /// Events buffered for the application (the driver's queue, read directly by
    /// `next_event()`) before the shard stops reading its socket, beyond the driver's own
    /// `max_pending_events`. Replaces `transport.event_capacity`. Default 256 (each queued
    /// dispatch keeps its frame's buffer alive: about 0.8 MiB for a full queue of 1 KiB
    /// messages).
    pub event_capacity: usize,
    /// A session saved earlier (for example in a session file before a process restart): the
    /// first connection resumes it instead of identifying. If Discord no longer knows it, the
    /// shard identifies afresh (and reports the gap). Default `None`.
    pub resume: Option<Session>,
    /// Identify pacing and the budget guard for a shard started on its own. A fleet replaces
    /// it with the queue its shards share. Default: one bucket, Discord's 5 s window, at most
    /// 10 identifies in 10 minutes.
    pub identify: IdentifyQueueConfig,
    /// Report every heartbeat ACK as a [`ShardEventKind::HeartbeatAck`] with its round trip.
    /// Default `false`: the event stream carries no per-heartbeat event (the round trips are in
    /// [`ShardStatus`] either way).
    pub latency_events: bool,
}

impl ShardConfig {
    /// Defaults for everything but the gateway settings.
    pub fn new(gateway: GatewayConfig) -> Self {
        ShardConfig {
            gateway,
            // A lone shard reconnects at once after a good session: there is no fleet to
            // spread (a Fleet keeps the core's default spread of its first reconnects).
            lifecycle: Config {
                close_rules: CLOSE_RULES,
                reconnect_spread: Duration::ZERO,
                ..Config::default()
            },
            transport: TransportConfig::default(),
            seed: None,
            delivery: Delivery::OnReturn,
            event_capacity: 256,
            identify: IdentifyQueueConfig::default(),
            resume: None,
            latency_events: false,
        }
    }
}

/// Something that happened on a shard, for the application.
#[derive(Debug, Clone)]
pub struct ShardEvent {
    /// The shard it happened on.
    pub shard: u32,
    /// What happened.
    pub kind: ShardEventKind,
}

/// The kinds of [`ShardEvent`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ShardEventKind {
    /// A dispatched event (op 0), once and in order within a session.
    Dispatch(Dispatch),
    /// A new session started (READY).
    Ready(Ready),
    /// The session was resumed (RESUMED); replayed events came before this.
    Resumed(Resumed),
    /// A session that had delivered events was lost; the events between its last sequence
    /// number and the new session's READY will never arrive.
    Gap(Gap),
    /// The lifecycle state changed.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
    /// A socket opened (TCP, TLS and WebSocket upgrade done).
    SocketOpened,
    /// The socket is gone: every open socket ends with exactly one of these. `code` is the
    /// gateway's close code if it sent a close frame; `None` after an abort or a drop.
    SocketClosed {
        /// The gateway's close code, if any.
        code: Option<u16>,
    },
    /// A reconnect was scheduled.
    Reconnecting {
        /// Resume or identify.
        mode: OpenMode,
        /// After how long.
        delay: Duration,
    },
    /// The shard stopped trying on its own (fatal close code, identify budget exceeded...).
    /// It stays closed until started again.
    ///
    /// The reason is typed: match the close code (`4004` is a bad token, `4014` intents that
    /// are not enabled for the bot); [`describe_give_up`](crate::describe_give_up) gives the
    /// readable text.
    ///
    /// ```
    /// use handover_runtime::{GiveUpReason, ShardEventKind};
    ///
    /// fn advice(kind: &ShardEventKind) -> Option<&'static str> {
    ///     match kind {
    ///         ShardEventKind::GaveUp { reason: GiveUpReason::FatalClose { code: Some(4004) } } => {
    ///             Some("reset the token")
    ///         }
    ///         ShardEventKind::GaveUp { reason: GiveUpReason::FatalClose { code: Some(4014) } } => {
    ///             Some("enable the privileged intents in the developer portal")
    ///         }
    ///         ShardEventKind::GaveUp { .. } => Some("see the reason"),
    ///         _ => None,
    ///     }
    /// }
    /// # let _ = advice;
    /// ```
    GaveUp {
        /// Why.
        reason: GiveUpReason,
    },
    /// A heartbeat was acknowledged, `latency` after it was sent. Only with
    /// [`ShardConfig::latency_events`] (off by default).
    HeartbeatAck {
        /// The round trip.
        latency: Duration,
    },
    /// A transport or protocol problem that the shard handles itself (logged, recorded in the
    /// status). Informational.
    Warning {
        /// What went wrong, readable.
        message: String,
    },
}

/// A cloneable handle to command a shard from any task (health monitors, HTTP control...).
///
/// Every call is serialized through the shard's task. Dropping a call's future mid-way leaves
/// the shard consistent.
#[derive(Clone)]
pub struct ShardHandle {
    shard: u32,
    driver: DriverHandle<ObservedCodec>,
    observed: Arc<Observer>,
    ledger: Arc<Ledger>,
    /// Waiting senders take turns here (tokio's mutex queues its waiters in order).
    send_turn: Arc<tokio::sync::Mutex<()>>,
}

impl ShardHandle {
    /// The shard id.
    pub fn id(&self) -> u32 {
        self.shard
    }

    /// Connect (again) after a stop or after giving up. Idempotent while connected.
    pub async fn start(&self) -> Result<(), DriverGone> {
        self.driver.start().await
    }

    /// Close the socket keeping the session resumable, then connect again and resume.
    ///
    /// Safe from any task, any number of times, concurrently: restarts that arrive while a
    /// fresh connection is being made or while the old socket drains are absorbed into the
    /// step under way. There is never more than one socket.
    pub async fn restart(&self, reason: RestartReason) -> Result<(), DriverGone> {
        self.driver.restart(reason).await
    }

    /// Stop. Returns only once the socket is confirmed gone (bounded by the drain deadline,
    /// after which the socket is aborted).
    pub async fn stop(&self, intent: StopIntent) -> Result<(), DriverGone> {
        self.driver.stop(intent).await
    }

    /// Send a command (presence update, request guild members...). Refused with a typed error,
    /// and nothing sent, when not identified, over 4096 bytes or over the send rate (then
    /// [`SendError::retry_after`] says when a slot frees up). See
    /// [`send_paced`](Self::send_paced) for a send that waits instead.
    pub async fn send(&self, command: Command) -> Result<(), SendError> {
        self.driver.send(command).await.map_err(SendError::from)
    }

    /// Send a command, waiting for send-rate capacity when the connection's window is full
    /// instead of refusing it. Other refusals (not identified, too large, write queue full,
    /// shard gone) are returned as by [`send`](Self::send).
    ///
    /// Fair: concurrent `send_paced` calls on one shard are sent in the order they were
    /// called (a plain [`send`](Self::send) does not queue and may take a slot first).
    /// Cancel-safe: dropping the future while it waits sends nothing, takes no slot of the
    /// window and lets the next waiter go.
    ///
    /// ```no_run
    /// # async fn f(shard: handover_runtime::ShardHandle) -> Result<(), handover_runtime::SendError> {
    /// use handover_runtime::{Command, RequestGuildMembers, Snowflake};
    ///
    /// for guild in [1_u64, 2, 3] {
    ///     let request = RequestGuildMembers::query(Snowflake(guild), "", 0);
    ///     shard.send_paced(Command::RequestGuildMembers(request)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_paced(&self, command: Command) -> Result<(), SendError> {
        let _turn = self.send_turn.lock().await;
        let mut last = None;
        for _ in 0..PACED_TRIES {
            match self.send(command.clone()).await {
                Err(e) => match e.retry_after() {
                    Some(wait) => {
                        debug!(shard = self.shard, wait_ms = millis(wait), "send paced");
                        tokio::time::sleep(wait).await;
                        last = Some(e);
                    }
                    None => return Err(e),
                },
                Ok(()) => return Ok(()),
            }
        }
        // Only reachable when plain sends keep taking the freed slots first.
        Err(last.unwrap_or(SendError::QueueFull))
    }

    /// A snapshot of the shard.
    pub fn status(&self) -> ShardStatus {
        let core = self.driver.status();
        let observed = self.observed.snapshot();
        let taken = self.ledger.snapshot();
        ShardStatus::build(
            self.shard,
            &core,
            &observed,
            &taken,
            self.driver.live_transports(),
        )
    }

    /// The session a later process should resume (id, resume URL, and the last sequence number
    /// the application's sink took), if one is held: what a session file stores so that a
    /// process restart resumes instead of identifying, and misses nothing. Read it after
    /// [`stop`](Self::stop) with [`StopIntent::KeepResumable`], once the sink has taken what it
    /// will take.
    ///
    /// The sequence number is the sink's, not the socket's (see the
    /// [sink contract](super::delivery)): events received but not yet taken are replayed by
    /// Discord to the next process. If the shard lost the session and the sink has not taken
    /// the gap report yet, the lost session is returned all the same, so the next process
    /// fails to resume it and reports the gap. After [`StopIntent::EndSession`] there is
    /// nothing worth saving: do not save what this returns then.
    pub fn session(&self) -> Option<Session> {
        resumable_session(&self.ledger.snapshot())
    }

    /// A receipt for `event`, to confirm once the sink has safely taken it (with
    /// [`Delivery::Confirmed`]; with [`Delivery::OnReturn`] the event was already counted when
    /// it was returned and confirming it again changes nothing that matters).
    pub fn receipt(&self, event: &ShardEvent) -> Receipt {
        Receipt::new(self.ledger.clone(), Entry::of(event))
    }

    /// Counts `event` taken by the sink (what confirming its receipt does, without the
    /// receipt).
    pub(crate) fn taken(&self, event: &ShardEvent) {
        if let Some(entry) = Entry::of(event) {
            self.ledger.take(&entry);
        }
    }

    /// Stop (keeping the session resumable) and end the shard's task.
    pub async fn shutdown(&self) {
        self.driver.shutdown().await
    }
}

/// Attempts of one [`ShardHandle::send_paced`]: each waits for the slot the previous refusal
/// named, so only plain sends taking that slot first make a second one necessary.
const PACED_TRIES: usize = 16;

/// Why an application command was not sent. Whatever the variant, nothing was written.
///
/// ```
/// use std::time::Duration;
/// use handover_runtime::{ProtocolError, SendError};
///
/// let e = SendError::Codec(ProtocolError::RateLimited { retry_after: Duration::from_secs(2) });
/// assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
/// assert_eq!(SendError::NotIdentified.retry_after(), None);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection has an accepted handshake right now (connecting, draining or closed).
    /// Wait for a `Ready`/`Resumed` event and retry.
    #[error("not identified: no connection accepts commands now")]
    NotIdentified,
    /// The codec refused the command: [`ProtocolError::RateLimited`] over the send rate (with
    /// its `retry_after`), [`ProtocolError::PayloadTooLarge`] over 4096 bytes, or a command
    /// that cannot be encoded.
    #[error("the codec refused the command")]
    Codec(#[source] ProtocolError),
    /// The socket's write queue is full (the peer is not reading). Retry later.
    #[error("write queue full")]
    QueueFull,
    /// The shard's task has exited.
    #[error(transparent)]
    DriverGone(#[from] DriverGone),
    /// Another refusal of the transport.
    #[error(transparent)]
    Transport(handover_transport_ws::SendError),
}

impl SendError {
    /// When the send rate allows this command, if that is why it was refused.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Codec(ProtocolError::RateLimited { retry_after }) => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<handover_transport_ws::SendError> for SendError {
    fn from(e: handover_transport_ws::SendError) -> Self {
        use handover_transport_ws::SendError as T;
        match e {
            T::NotIdentified => SendError::NotIdentified,
            T::QueueFull => SendError::QueueFull,
            T::DriverGone(g) => SendError::DriverGone(g),
            T::Codec(source) => match source.downcast::<ProtocolError>() {
                Ok(p) => SendError::Codec(*p),
                Err(other) => SendError::Transport(T::Codec(other)),
            },
            other => SendError::Transport(other),
        }
    }
}

impl std::fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardHandle")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// A running shard: its handle and its event stream.
///
/// Read it with [`next_event`](Self::next_event) or as a [`Stream`] of [`ShardEvent`]s (the
/// same events, delivered the same way).
///
/// ```no_run
/// use handover_runtime::{
///     GatewayConfig, Intents, RestartReason, Shard, ShardConfig, ShardEventKind, StopIntent,
///     Token, describe_give_up,
/// };
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let token = Token::new(std::env::var("DISCORD_TOKEN")?)?;
/// let config = ShardConfig::new(GatewayConfig::new(token, Intents::GUILD_MESSAGES));
/// let mut shard = Shard::start(config)?;
///
/// // A health monitor may restart the shard from any task, any number of times.
/// let monitor = shard.handle();
/// tokio::spawn(async move { monitor.restart(RestartReason::HealthMonitor).await });
///
/// while let Some(event) = shard.next_event().await {
///     match event.kind {
///         ShardEventKind::Dispatch(d) => println!("#{} {}", d.seq, d.event_type),
///         ShardEventKind::GaveUp { reason } => {
///             eprintln!("stopped: {}", describe_give_up(reason));
///             break;
///         }
///         _ => {}
///     }
/// }
/// shard.stop(StopIntent::EndSession).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Shard {
    handle: ShardHandle,
    events: ShardEvents,
    delivery: Delivery,
}

impl Shard {
    /// Spawn the shard's task and start connecting. Must be called within a tokio runtime.
    ///
    /// Fails only on a configuration that cannot work (a typed protocol error).
    pub fn start(config: ShardConfig) -> Result<Shard, ProtocolError> {
        let gate = IdentifyGate::spawn(config.identify, None);
        let permits = gate.permits_for(config.gateway.shard.id);
        Shard::start_with(config, permits)
    }

    /// [`start`](Self::start) with identify permits from `permits` instead of a queue of its
    /// own (for example a coordinator shared by several processes: see
    /// [`IdentifyCoordinator`](super::IdentifyCoordinator)). `config.identify` is not used then.
    pub fn start_with(
        config: ShardConfig,
        permits: Arc<dyn PermitSource>,
    ) -> Result<Shard, ProtocolError> {
        let delivery = config.delivery;
        let (handle, events) = spawn(config, permits)?;
        Ok(Shard {
            handle,
            events,
            delivery,
        })
    }

    /// The next event, or `None` once the shard's task has ended.
    ///
    /// With [`Delivery::OnReturn`] (the default) a dispatch counts as delivered as it is
    /// returned; with [`Delivery::Confirmed`], once its [`receipt`](Self::receipt) is
    /// confirmed.
    pub async fn next_event(&mut self) -> Option<ShardEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        let Some(event) = ready!(self.events.poll_next_event(cx)) else {
            return Poll::Ready(None);
        };
        if self.delivery == Delivery::OnReturn {
            self.handle.taken(&event);
        }
        Poll::Ready(Some(event))
    }

    /// See [`ShardHandle::receipt`].
    pub fn receipt(&self, event: &ShardEvent) -> Receipt {
        self.handle.receipt(event)
    }

    /// A cloneable handle for other tasks.
    pub fn handle(&self) -> ShardHandle {
        self.handle.clone()
    }

    /// See [`ShardHandle::restart`].
    pub async fn restart(&self, reason: RestartReason) -> Result<(), DriverGone> {
        self.handle.restart(reason).await
    }

    /// See [`ShardHandle::stop`].
    pub async fn stop(&self, intent: StopIntent) -> Result<(), DriverGone> {
        self.handle.stop(intent).await
    }

    /// See [`ShardHandle::send`].
    pub async fn send(&self, command: Command) -> Result<(), SendError> {
        self.handle.send(command).await
    }

    /// See [`ShardHandle::send_paced`].
    pub async fn send_paced(&self, command: Command) -> Result<(), SendError> {
        self.handle.send_paced(command).await
    }

    /// See [`ShardHandle::status`].
    pub fn status(&self) -> ShardStatus {
        self.handle.status()
    }

    /// See [`ShardHandle::session`].
    pub fn session(&self) -> Option<Session> {
        self.handle.session()
    }
}

/// The shard's events as a stream: what [`Shard::next_event`] returns, in the same order,
/// counted delivered the same way; it ends once the shard's task has ended.
///
/// ```no_run
/// use futures_util::StreamExt;
/// # async fn f(mut shard: handover_runtime::Shard) {
/// while let Some(event) = shard.next().await {
///     println!("shard {}: {:?}", event.shard, event.kind);
/// }
/// # }
/// ```
impl Stream for Shard {
    type Item = ShardEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        self.get_mut().poll_event(cx)
    }
}

/// Spawns a shard; returns its handle and its events.
pub(crate) fn spawn(
    config: ShardConfig,
    permits: Arc<dyn PermitSource>,
) -> Result<(ShardHandle, ShardEvents), ProtocolError> {
    let shard = config.gateway.shard.id;
    let mut codec = DiscordCodec::new(config.gateway)?;
    let mut lifecycle = config.lifecycle;
    lifecycle.close_rules = CLOSE_RULES;
    lifecycle.gate_new_sessions = true;
    let observed = Arc::new(Observer::new(
        config.resume.as_ref().map(|s| s.session_id.clone()),
    ));
    let ledger = Ledger::new(config.resume.as_ref());
    let seed = config.seed.unwrap_or_else(os_seed);
    let connection = match config.resume {
        Some(session) => {
            codec.restore_session(session);
            Connection::with_restored_session(lifecycle, seed)
        }
        None => Connection::new(lifecycle, seed),
    };
    let codec = ObservedCodec {
        inner: codec,
        observed: observed.clone(),
        beat_sent_at: None,
        event_recorded_at: None,
        latency_events: config.latency_events,
    };
    let mut transport = config.transport;
    // The driver's queue is the shard's event queue (there is no second one).
    transport.event_capacity = config.event_capacity.max(1);
    let (driver, driver_events) =
        handover_transport_ws::Driver::spawn(connection, codec, transport, Some(permits));
    let events = ShardEvents {
        shard,
        events: driver_events,
        observed: observed.clone(),
    };
    let handle = ShardHandle {
        shard,
        driver,
        observed,
        ledger,
        send_turn: Arc::new(tokio::sync::Mutex::new(())),
    };
    // Queued for the driver's first run: no task and no reply channel per shard (a task
    // spawned to call `start` was a transient of 1 KiB per shard, allocated by every shard
    // of a fleet at once). A fresh queue always has room.
    if !handle.driver.request_start() {
        warn!(shard, "the driver did not take the start request");
    }
    Ok((handle, events))
}

/// A seed from the operating system's randomness (std's `RandomState` keys are drawn from it),
/// different in every process and for every shard.
pub(crate) fn os_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x4a11_u64)
}

/// One shard's events, read straight from its driver's queue: the application's read is the
/// only hand-off after the socket (no task in between that only forwards).
pub(crate) struct ShardEvents {
    shard: u32,
    events: DriverEvents<ObservedCodec>,
    observed: Arc<Observer>,
}

impl ShardEvents {
    /// The next shard event, or `None` once the driver task has ended and every event was read.
    pub(crate) fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        loop {
            let Some(ev) = ready!(self.events.poll_next_event(cx)) else {
                return Poll::Ready(None);
            };
            if let Some(kind) = to_kind(self.shard, ev, &self.observed) {
                return Poll::Ready(Some(ShardEvent {
                    shard: self.shard,
                    kind,
                }));
            }
        }
    }
}

impl Stream for ShardEvents {
    type Item = ShardEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        self.poll_next_event(cx)
    }
}

impl std::fmt::Debug for ShardEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardEvents")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// A driver event as the application sees it (`None`: nothing the application is told of),
/// logging and recording what the status needs.
fn to_kind(shard: u32, ev: DriverEvent<Item>, observed: &Observer) -> Option<ShardEventKind> {
    {
        let kind = match ev {
            DriverEvent::Item(Item::Gateway(GatewayEvent::Dispatch(d))) => {
                ShardEventKind::Dispatch(d)
            }
            DriverEvent::Item(Item::Gateway(GatewayEvent::Ready(r))) => {
                info!(shard, "ready");
                ShardEventKind::Ready(r)
            }
            DriverEvent::Item(Item::Gateway(GatewayEvent::Resumed(r))) => {
                info!(shard, "resumed");
                ShardEventKind::Resumed(r)
            }
            DriverEvent::Item(Item::HeartbeatAck(latency)) => {
                ShardEventKind::HeartbeatAck { latency }
            }
            DriverEvent::Item(Item::Gateway(GatewayEvent::Gap(g))) => {
                warn!(
                    shard,
                    last_seq = g.last_seq,
                    "session lost; events after it are gone"
                );
                ShardEventKind::Gap(g)
            }
            DriverEvent::Core(Event::StateChanged { from, to }) => {
                debug!(shard, from = from.name(), to = to.name(), "state");
                ShardEventKind::StateChanged { from, to }
            }
            DriverEvent::Core(Event::ReconnectScheduled { mode, delay }) => {
                info!(shard, ?mode, delay_ms = millis(delay), "reconnecting");
                ShardEventKind::Reconnecting { mode, delay }
            }
            DriverEvent::Core(Event::GaveUp(reason)) => {
                warn!(shard, reason = %describe_give_up(reason), "gave up");
                ShardEventKind::GaveUp { reason }
            }
            DriverEvent::Transport(TransportEvent::Opened { .. }) => ShardEventKind::SocketOpened,
            DriverEvent::Transport(TransportEvent::Closed { code, .. }) => {
                debug!(shard, ?code, "socket gone");
                ShardEventKind::SocketClosed { code }
            }
            // The shipped driver never breaks the core's contract; if it ever does, that is a
            // bug worth an operator's attention, not a silent drop.
            DriverEvent::Core(Event::InputRejected { input, reason }) => {
                let message = format!(
                    "driver bug: the core refused {:?} for transport {}: {reason}",
                    input.kind, input.conn
                );
                error!(shard, %message, "core contract broken");
                observed.set_error(message.clone());
                ShardEventKind::Warning { message }
            }
            DriverEvent::Core(_) | DriverEvent::Transport(_) => return None,
            DriverEvent::Error(e) => {
                let message = e.to_string();
                warn!(shard, error = %message, "transport");
                observed.set_error(message.clone());
                ShardEventKind::Warning { message }
            }
            _ => return None,
        };
        Some(kind)
    }
}

/// What the shard's codec hands the driver's queue: a gateway event or, with
/// [`ShardConfig::latency_events`], a heartbeat round trip.
#[derive(Debug)]
pub(crate) enum Item {
    Gateway(GatewayEvent),
    HeartbeatAck(Duration),
}

/// The Discord codec, recording delivery statistics and heartbeat round trips for the status as
/// it encodes and decodes.
pub(crate) struct ObservedCodec {
    inner: DiscordCodec,
    observed: Arc<Observer>,
    /// When the last heartbeat not yet acknowledged was sent on this connection.
    beat_sent_at: Option<Instant>,
    /// The time of the last event recorded in the status: the messages of one burst share
    /// one `now`, recorded once.
    event_recorded_at: Option<Instant>,
    latency_events: bool,
}

impl Codec for ObservedCodec {
    type Item = Item;
    type Command = Command;
    type Error = ProtocolError;

    fn url(&self, mode: OpenMode) -> String {
        self.inner.url(mode)
    }

    fn reset(&mut self, conn: TransportId, mode: OpenMode) {
        self.beat_sent_at = None;
        self.observed.new_connection();
        self.inner.reset(conn, mode)
    }

    fn decode(&mut self, now: Instant, msg: Message) -> Result<Decoded<Item>, ProtocolError> {
        let result = self.inner.decode(now, msg);
        let o = &self.observed;
        match &result {
            Ok(Decoded {
                item: Some(item), ..
            }) => {
                if self.event_recorded_at != Some(now) {
                    o.event_at(now);
                    self.event_recorded_at = Some(now);
                }
                match item {
                    GatewayEvent::Ready(r) => o.set_session(&r.session_id),
                    GatewayEvent::Resumed(r) => o.set_session(&r.session_id),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => o.set_error(e.to_string()),
        }
        o.set_stats(self.inner.stats());
        let Decoded { signal, item } = result?;
        let mut item = item.map(Item::Gateway);
        // The round trip as the core measures it: from the last heartbeat sent to the first
        // ACK after it (an ACK of nothing sent gives no sample).
        if signal == Some(Signal::HeartbeatAck)
            && let Some(sent) = self.beat_sent_at.take()
        {
            let latency = now.saturating_duration_since(sent);
            o.heartbeat_acked(latency);
            if self.latency_events && item.is_none() {
                item = Some(Item::HeartbeatAck(latency));
            }
        }
        Ok(Decoded { signal, item })
    }

    fn poll_item(&mut self) -> Option<Item> {
        self.inner.poll_item().map(Item::Gateway)
    }

    fn poll_restart(&mut self) -> bool {
        self.inner.poll_restart()
    }

    fn encode(&mut self, now: Instant, payload: Payload) -> Result<Message, ProtocolError> {
        let msg = self.inner.encode(now, payload)?;
        if payload == Payload::Heartbeat {
            self.beat_sent_at = Some(now);
        }
        Ok(msg)
    }

    fn encode_command(&mut self, now: Instant, command: Command) -> Result<Message, ProtocolError> {
        self.inner.encode_command(now, command)
    }
}
