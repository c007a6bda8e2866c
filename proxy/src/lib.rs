//! `handover proxy`: Discord's gateway served locally, in front of handover's shards.
//!
//! Unmodified bots (discord.js, discord.py, twilight, serenity...) point their gateway URL at
//! the proxy. handover holds the real sessions upstream (one per shard, resumed across faults,
//! never two sockets); each client gets a session of its own from the proxy, with its own
//! session id and sequence numbers, and can restart, crash and RESUME as often as it likes on
//! loopback: the proxy replays exactly the events it missed from a bounded per-shard buffer.
//!
//! Two layers:
//!
//! - sans-IO, no tokio: [`Hub`] (the downstream protocol: IDENTIFY and RESUME checks, client
//!   sessions, fan-out, the guild cache) and [`ReplayBuffer`];
//! - [`server`]: the tokio shell serving WebSocket and `GET /api/v10/gateway/bot` on one port,
//!   fed by a [`handover_runtime::Fleet`].
//!
//! See `docs/proxy.md` for what is done, what differs from Discord and what is not done yet.

pub mod buffer;
pub mod cache;
pub mod frames;
pub mod hub;
pub mod intents;
pub mod server;
mod socket;

pub use buffer::{Audience, Buffered, ReplayBuffer};
pub use cache::{CacheKind, CacheKinds, CacheKindsError, GuildCache};
pub use frames::Frame;
pub use hub::{
    Action, ClientId, CommandOutcome, HEARTBEAT_GRACE_MS, HEARTBEAT_INTERVAL_MS, Hub, HubConfig,
    HubStats, HubStatus, SessionView, ShardView, Upstream,
};
pub use server::{ProxyConfig, ProxyError, ProxyHandle, serve};
