//! Many shards of one bot: one identify queue, one merged event stream.

use std::collections::BTreeMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_util::FutureExt;
use handover_core::{Config, RestartReason, StopIntent};
use handover_transport_ws::{DriverGone, TransportConfig};

use tracing::info;

use super::coordination::IdentifyCoordinator;
use super::delivery::{Delivery, Receipt};
use super::merge::Merge;
use super::queue::IdentifyGate;
use super::shard::{self, ShardConfig, ShardEvent, ShardEvents, ShardHandle};
use super::status::ShardStatus;
use crate::http::{HttpError, HttpOptions, gateway_bot};
use handover_protocol::{
    CLOSE_RULES, GatewayConfig, IdentifyQueueConfig, ProtocolError, Session, SessionStartLimit,
    ShardId,
};

/// Which shards a fleet runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSelection {
    /// Shards `ids` of `total` (for a bot split over several processes).
    Range {
        /// The shard ids this fleet runs.
        ids: Range<u32>,
        /// The bot's total shard count.
        total: u32,
    },
    /// All shards `0..total`.
    All {
        /// The bot's total shard count.
        total: u32,
    },
    /// All shards of the count Discord recommends in `GET /gateway/bot`
    /// (only with [`Fleet::connect`]).
    Recommended,
}

impl ShardSelection {
    fn resolve(&self) -> Result<(Range<u32>, u32), FleetError> {
        let (ids, total) = match self {
            ShardSelection::Range { ids, total } => (ids.clone(), *total),
            ShardSelection::All { total } => (0..*total, *total),
            ShardSelection::Recommended => {
                return Err(FleetError::BadSelection {
                    reason: "the recommended shard count is only known to Fleet::connect".into(),
                });
            }
        };
        if total == 0 || ids.is_empty() || ids.end > total {
            return Err(FleetError::BadSelection {
                reason: format!(
                    "shards {ids:?} of {total} is not a non-empty range within the total"
                ),
            });
        }
        Ok((ids, total))
    }
}

/// Settings of a [`Fleet`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Template for every shard's gateway settings (token, intents, URL, compression...); the
    /// shard id is set per shard.
    pub gateway: GatewayConfig,
    /// Which shards to run.
    pub shards: ShardSelection,
    /// Lifecycle timers and backoff for every shard.
    pub lifecycle: Config,
    /// Socket limits and TLS roots for every shard.
    pub transport: TransportConfig,
    /// Identify pacing shared by all shards.
    pub identify: IdentifyQueueConfig,
    /// The `session_start_limit` from `GET /gateway/bot`, if known.
    pub session_start_limit: Option<SessionStartLimit>,
    /// Events buffered for the application per shard (each shard's driver queue; the fleet
    /// merges the shards' queues as it reads them, with no queue of its own). Default 256.
    pub event_capacity: usize,
    /// Seed for the shards' jitter (each shard derives its own). `None` (the default): every
    /// shard draws its own from the operating system's randomness.
    pub seed: Option<u64>,
    /// Who decides that an event was delivered (see [`Delivery`]). Default: `next_event()`
    /// returning it.
    pub delivery: Delivery,
    /// Sessions saved earlier, by shard id (for example from a session file): those shards
    /// resume instead of identifying. Default empty.
    pub sessions: BTreeMap<u32, Session>,
}

impl FleetConfig {
    /// A fleet running `shards` with defaults elsewhere.
    pub fn new(gateway: GatewayConfig, shards: ShardSelection) -> Self {
        FleetConfig {
            gateway,
            shards,
            lifecycle: Config {
                close_rules: CLOSE_RULES,
                ..Config::default()
            },
            transport: TransportConfig::default(),
            identify: IdentifyQueueConfig::default(),
            session_start_limit: None,
            event_capacity: 256,
            seed: None,
            delivery: Delivery::OnReturn,
            sessions: BTreeMap::new(),
        }
    }
}

/// Why a fleet could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The shard selection is empty or outside the total.
    #[error("bad shard selection: {reason}")]
    BadSelection {
        /// What is wrong.
        reason: String,
    },
    /// A shard's configuration was refused.
    #[error("shard {shard}: {source}")]
    Shard {
        /// The shard.
        shard: u32,
        /// Why.
        #[source]
        source: ProtocolError,
    },
    /// No shard with that id runs in this fleet.
    #[error("no shard {shard} in this fleet")]
    NoSuchShard {
        /// The id asked for.
        shard: u32,
    },
    /// The shard's task has exited.
    #[error(transparent)]
    Gone(#[from] DriverGone),
    /// `GET /gateway/bot` failed (invalid token, rate limited, unreachable...).
    #[error("gateway lookup failed: {0}")]
    Lookup(#[from] HttpError),
}

/// Many shards sharing one identify queue, with one merged event stream.
///
/// Read the events with [`next_event`](Self::next_event) or as a [`Stream`]; command the
/// shards from other tasks, while the events are being read, through a [`FleetHandle`]
/// ([`handle`](Self::handle)).
///
/// ```no_run
/// use handover_runtime::http::{DEFAULT_API_BASE, HttpOptions};
/// use handover_runtime::{
///     Fleet, FleetConfig, GatewayConfig, Intents, ShardEventKind, ShardSelection, StopIntent,
///     Token,
/// };
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let token = Token::new(std::env::var("DISCORD_TOKEN")?)?;
/// let gateway = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
/// let config = FleetConfig::new(gateway, ShardSelection::Recommended);
/// let mut fleet = Fleet::connect(config, DEFAULT_API_BASE, &HttpOptions::default()).await?;
///
/// // Another task stops every shard while the loop below is still reading (a signal
/// // handler, an admin command: here, whoever sends on `stop`); the loop then ends.
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let control = fleet.handle();
/// tokio::spawn(async move {
///     let _ = stopped.await;
///     control.shutdown(StopIntent::KeepResumable).await;
/// });
/// # drop(stop);
///
/// while let Some(event) = fleet.next_event().await {
///     if let ShardEventKind::Dispatch(d) = event.kind {
///         println!("shard {} #{} {}", event.shard, d.seq, d.event_type);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Fleet {
    control: FleetHandle,
    /// Every shard's events, read straight from the shards' drivers, merged as they come.
    events: Merge<ShardEvents>,
    delivery: Delivery,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("shards", &self.control.inner.shards)
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle to command a [`Fleet`]'s shards from any task, while the fleet's events
/// are being read elsewhere: restart, stop, shut down, status, saved sessions.
///
/// The shards keep running while any handle or the fleet itself lives; stopping them is
/// explicit ([`stop_all`](Self::stop_all), [`shutdown`](Self::shutdown)). Once every shard's
/// task has ended, the fleet's event stream ends.
///
/// ```no_run
/// # async fn f(mut fleet: handover_runtime::Fleet) {
/// use handover_runtime::{RestartReason, StopIntent};
///
/// let control = fleet.handle();
/// let reader = tokio::spawn(async move {
///     let mut n = 0_u64;
///     while let Some(_event) = fleet.next_event().await {
///         n += 1;
///     }
///     n // every shard ended
/// });
/// control.restart_all(RestartReason::Requested).await.ok();
/// control.shutdown(StopIntent::KeepResumable).await;
/// let _events = reader.await;
/// let _saved = control.sessions(); // for a session file
/// # }
/// ```
#[derive(Clone)]
pub struct FleetHandle {
    inner: Arc<FleetShards>,
}

struct FleetShards {
    shards: BTreeMap<u32, ShardHandle>,
    _permits: Arc<dyn IdentifyCoordinator>,
}

impl std::fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHandle")
            .field("shards", &self.inner.shards)
            .finish_non_exhaustive()
    }
}

impl FleetHandle {
    /// The shard ids of the fleet, ascending.
    pub fn shard_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.inner.shards.keys().copied()
    }

    /// A handle to one shard.
    pub fn shard(&self, id: u32) -> Option<&ShardHandle> {
        self.inner.shards.get(&id)
    }

    /// A receipt for `event`, to confirm once the sink has safely taken it (with
    /// [`Delivery::Confirmed`]). `None` for an event of a shard this fleet does not run.
    pub fn receipt(&self, event: &ShardEvent) -> Option<Receipt> {
        self.inner
            .shards
            .get(&event.shard)
            .map(|s| s.receipt(event))
    }

    /// The sessions a reconnect would resume, by shard id: what a session file stores. Read
    /// them after [`stop_all`](Self::stop_all) with [`StopIntent::KeepResumable`].
    pub fn sessions(&self) -> BTreeMap<u32, Session> {
        self.inner
            .shards
            .iter()
            .filter_map(|(id, s)| s.session().map(|session| (*id, session)))
            .collect()
    }

    /// A snapshot of every shard, by id.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.inner
            .shards
            .values()
            .map(ShardHandle::status)
            .collect()
    }

    fn get(&self, id: u32) -> Result<&ShardHandle, FleetError> {
        self.inner
            .shards
            .get(&id)
            .ok_or(FleetError::NoSuchShard { shard: id })
    }

    /// Restart one shard (see [`ShardHandle::restart`]).
    pub async fn restart(&self, id: u32, reason: RestartReason) -> Result<(), FleetError> {
        Ok(self.get(id)?.restart(reason).await?)
    }

    /// Restart every shard, concurrently.
    pub async fn restart_all(&self, reason: RestartReason) -> Result<(), FleetError> {
        let all = self.inner.shards.values().map(|s| s.restart(reason));
        for r in futures_util::future::join_all(all).await {
            r?;
        }
        Ok(())
    }

    /// Stop one shard; returns once its socket is gone.
    pub async fn stop(&self, id: u32, intent: StopIntent) -> Result<(), FleetError> {
        Ok(self.get(id)?.stop(intent).await?)
    }

    /// Stop every shard concurrently; returns once every socket is gone (each bounded by the
    /// drain deadline, after which sockets are aborted).
    pub async fn stop_all(&self, intent: StopIntent) -> Result<(), FleetError> {
        let all = self.inner.shards.values().map(|s| s.stop(intent));
        for r in futures_util::future::join_all(all).await {
            r?;
        }
        Ok(())
    }

    /// Stop every shard with `intent` and end their tasks: the fleet's event stream then
    /// yields what is still queued and ends.
    pub async fn shutdown(&self, intent: StopIntent) {
        let _ = self.stop_all(intent).await;
        futures_util::future::join_all(self.inner.shards.values().map(ShardHandle::shutdown)).await;
    }
}

impl Fleet {
    /// Asks Discord (`GET {api_base}/api/v10/gateway/bot`) for the gateway URL, the
    /// recommended shard count and the session start limit, then [`start`](Self::start)s.
    ///
    /// The URL and limit from the answer replace the configured ones; the shard count is used
    /// when the selection is [`ShardSelection::Recommended`].
    pub async fn connect(
        mut config: FleetConfig,
        api_base: &str,
        http: &HttpOptions,
    ) -> Result<Fleet, FleetError> {
        let bot = gateway_bot(api_base, &config.gateway.token, http).await?;
        info!(
            shards = bot.shards,
            remaining = bot.session_start_limit.remaining,
            max_concurrency = bot.session_start_limit.max_concurrency,
            "gateway lookup"
        );
        config.gateway.gateway_url = bot.url;
        if config.shards == ShardSelection::Recommended {
            config.shards = ShardSelection::All { total: bot.shards };
        }
        config.session_start_limit = Some(bot.session_start_limit);
        Fleet::start(config)
    }

    /// Spawns every selected shard and starts connecting. Identifies are paced by the shared
    /// queue; must be called within a tokio runtime.
    pub fn start(config: FleetConfig) -> Result<Fleet, FleetError> {
        config.shards.resolve()?;
        let gate = IdentifyGate::spawn(config.identify, config.session_start_limit);
        Fleet::start_with(config, Arc::new(gate))
    }

    /// [`start`](Self::start) with identify permits from `permits` instead of an in-process
    /// queue (for example one shared by every process of the bot). `config.identify` and
    /// `config.session_start_limit` are not used then: pacing and budget are the
    /// coordinator's.
    pub fn start_with(
        mut config: FleetConfig,
        permits: Arc<dyn IdentifyCoordinator>,
    ) -> Result<Fleet, FleetError> {
        let (ids, total) = config.shards.resolve()?;
        let mut shards = BTreeMap::new();
        let mut events = Vec::new();
        for id in ids {
            let mut gateway = config.gateway.clone();
            gateway.shard = ShardId::new(id, total)
                .map_err(|source| FleetError::Shard { shard: id, source })?;
            let mut shard_config = ShardConfig::new(gateway);
            shard_config.lifecycle = config.lifecycle;
            shard_config.transport = config.transport.clone();
            shard_config.seed = config
                .seed
                .map(|seed| seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            shard_config.delivery = config.delivery;
            shard_config.resume = config.sessions.remove(&id);
            shard_config.event_capacity = config.event_capacity;
            let (handle, shard_events) = shard::spawn(shard_config, permits.permits_for(id, total))
                .map_err(|source| FleetError::Shard { shard: id, source })?;
            shards.insert(id, handle);
            events.push(shard_events);
        }
        Ok(Fleet {
            control: FleetHandle {
                inner: Arc::new(FleetShards {
                    shards,
                    _permits: permits,
                }),
            },
            events: Merge::new(events),
            delivery: config.delivery,
        })
    }

    /// A cloneable handle to command the shards from other tasks while this fleet's events
    /// are being read (see [`FleetHandle`]).
    pub fn handle(&self) -> FleetHandle {
        self.control.clone()
    }

    /// The next event of any shard, tagged with its shard id; `None` once every shard ended.
    ///
    /// With [`Delivery::OnReturn`] (the default) a dispatch counts as delivered as it is
    /// returned; with [`Delivery::Confirmed`], once its [`receipt`](Self::receipt) is
    /// confirmed.
    pub async fn next_event(&mut self) -> Option<ShardEvent> {
        let event = std::future::poll_fn(|cx| self.events.poll_next_item(cx)).await?;
        Some(self.returned(event))
    }

    /// The next event if one is ready now, without waiting (`None` if none is). Delivery as
    /// for [`next_event`](Self::next_event).
    pub fn try_next_event(&mut self) -> Option<ShardEvent> {
        let event = std::future::poll_fn(|cx| self.events.poll_next_item(cx))
            .now_or_never()
            .flatten()?;
        Some(self.returned(event))
    }

    /// An event on its way to the application: with [`Delivery::OnReturn`], it counts now.
    fn returned(&self, event: ShardEvent) -> ShardEvent {
        if self.delivery == Delivery::OnReturn
            && let Some(shard) = self.control.shard(event.shard)
        {
            shard.taken(&event);
        }
        event
    }

    /// A receipt for `event`, to confirm once the sink has safely taken it (with
    /// [`Delivery::Confirmed`]). `None` for an event of a shard this fleet does not run.
    pub fn receipt(&self, event: &ShardEvent) -> Option<Receipt> {
        self.control.receipt(event)
    }

    /// The shard ids this fleet runs, ascending.
    pub fn shard_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.control.shard_ids()
    }

    /// A handle to one shard.
    pub fn shard(&self, id: u32) -> Option<&ShardHandle> {
        self.control.shard(id)
    }

    /// The sessions a reconnect would resume, by shard id: what a session file stores. Read
    /// them after [`stop_all`](Self::stop_all) with [`StopIntent::KeepResumable`].
    pub fn sessions(&self) -> BTreeMap<u32, Session> {
        self.control.sessions()
    }

    /// A snapshot of every shard, by id.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.control.status()
    }

    /// Restart one shard (see [`ShardHandle::restart`]).
    pub async fn restart(&self, id: u32, reason: RestartReason) -> Result<(), FleetError> {
        self.control.restart(id, reason).await
    }

    /// Restart every shard, concurrently.
    pub async fn restart_all(&self, reason: RestartReason) -> Result<(), FleetError> {
        self.control.restart_all(reason).await
    }

    /// Stop one shard; returns once its socket is gone.
    pub async fn stop(&self, id: u32, intent: StopIntent) -> Result<(), FleetError> {
        self.control.stop(id, intent).await
    }

    /// Stop every shard concurrently; returns once every socket is gone (each bounded by the
    /// drain deadline, after which sockets are aborted).
    pub async fn stop_all(&self, intent: StopIntent) -> Result<(), FleetError> {
        self.control.stop_all(intent).await
    }

    /// Stop every shard with `intent` and end their tasks.
    pub async fn shutdown(self, intent: StopIntent) {
        self.control.shutdown(intent).await
    }
}

/// The fleet's merged events as a stream: what [`Fleet::next_event`] returns, counted
/// delivered the same way; it ends once every shard's task has ended.
///
/// ```no_run
/// use futures_util::StreamExt;
/// # async fn f(fleet: handover_runtime::Fleet) {
/// use handover_runtime::ShardEventKind;
///
/// let mut dispatches = fleet.filter_map(|e| async move {
///     match e.kind {
///         ShardEventKind::Dispatch(d) => Some((e.shard, d)),
///         _ => None,
///     }
/// });
/// let mut dispatches = std::pin::pin!(dispatches);
/// while let Some((shard, d)) = dispatches.next().await {
///     println!("shard {shard}: {}", d.event_type);
/// }
/// # }
/// ```
impl Stream for Fleet {
    type Item = ShardEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardEvent>> {
        let this = self.get_mut();
        let event = ready!(this.events.poll_next_item(cx));
        Poll::Ready(event.map(|e| this.returned(e)))
    }
}
