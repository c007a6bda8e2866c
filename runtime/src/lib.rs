//! The tokio runtime: [`Shard`] (one gateway connection) and [`Fleet`] (many shards sharing one
//! identify queue).
//!
//! A shard is one task owning the lifecycle core, the Discord codec and at most one socket (the
//! `handover-transport-ws` driver). Every command (`restart`, `stop`, `send`) is serialized
//! through that task, so a health monitor may call [`ShardHandle::restart`] from any task, at any
//! moment, any number of times: the shard never has two sockets, resumes instead of identifying
//! when the session allows it, and delivers each dispatch once.

//!
//! Also here: [`http`], the client of `GET /gateway/bot`, and, behind the `redis` feature,
//! [`redis`], coordination of several processes through one Redis server.
//!
//! The protocol itself (codec, commands, identify queue) is `handover-protocol`, sans-IO; this
//! crate is where tokio, hyper and rustls come in.

mod coordination;
pub mod delivery;
mod fleet;
pub mod http;
mod merge;
pub mod metrics;
mod queue;
#[cfg(feature = "redis")]
pub mod redis;
mod shard;
mod status;
#[cfg(feature = "twilight")]
pub mod twilight;

pub use coordination::{IdentifyCoordinator, PermitDenied, PermitFuture, PermitSource};
pub use delivery::{Delivery, Receipt, ReceiptBook};
pub use fleet::{Fleet, FleetConfig, FleetError, FleetHandle, ShardSelection};
pub use queue::IdentifyGate;
pub use shard::{SendError, Shard, ShardConfig, ShardEvent, ShardEventKind, ShardHandle};
pub use status::{Latency, RECENT_LATENCIES, ShardStatus, describe_give_up};

// What the runtime's API takes and returns, so that a bot depends on this crate alone.
pub use handover_core::{
    Backoff, Config, ConnectingPhase, GiveUpReason, OpenMode, Phase, RestartReason, State,
    StopIntent,
};
pub use handover_protocol::{
    Activity, CloseCode, Command, Compression, Dispatch, Gap, GatewayConfig, IdentifyQueueConfig,
    Intents, PresenceStatus, ProtocolError, RateLimitConfig, RawJson, Ready, RequestGuildMembers,
    RequestSoundboardSounds, Resumed, Session, SessionStartLimit, ShardId, Snowflake, Token,
    UpdatePresence, UpdateVoiceState,
};
pub use handover_transport_ws::{DriverGone, TransportConfig};
