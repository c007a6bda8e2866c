//! The Discord gateway v10 protocol, sans-IO.
//!
//! Everything here is pure: no sockets, no tokio, no clock (time is passed in). The central
//! type is [`DiscordCodec`], a [`handover_core::Codec`] that turns gateway payloads into the
//! core's signals and the application's [`GatewayEvent`]s, and builds heartbeats, IDENTIFY,
//! RESUME and application [`Command`]s. [`IdentifyQueue`] paces identifies across shards.
//!
//! Each rule and its source in Discord's documentation is listed in `docs/protocol.md`.

pub mod codec;
pub mod commands;
pub mod compression;
pub mod envelope;
pub mod error;
pub mod event_name;
pub mod identify_queue;
pub mod intents;
pub mod limits;
pub mod opcode;
mod scan;
pub mod session;
pub mod token;

#[cfg(test)]
mod tests;

pub use codec::{
    API_VERSION, DEFAULT_GATEWAY_URL, DiscordCodec, Dispatch, GatewayConfig, GatewayEvent,
    MIN_HEARTBEAT_INTERVAL, Ready, Resumed, gateway_url,
};
pub use commands::{
    Activity, Command, ConnectionProperties, PresenceStatus, RequestGuildMembers,
    RequestSoundboardSounds, ShardId, Snowflake, UpdatePresence, UpdateVoiceState,
};
pub use compression::{Compression, DEFAULT_MAX_DECOMPRESSED_BYTES, ZLIB_SUFFIX};
#[cfg(feature = "zlib")]
pub use compression::{ZlibStreamDecoder, ZlibStreamEncoder};
#[cfg(feature = "zstd")]
pub use compression::{ZstdStreamDecoder, ZstdStreamEncoder};
pub use envelope::{Envelope, MAX_PAYLOAD_BYTES, RawJson, encode_payload};
pub use error::ProtocolError;
pub use event_name::EventName;
pub use identify_queue::{
    Grant, IdentifyBudget, IdentifyError, IdentifyQueue, IdentifyQueueConfig, SessionStartLimit,
    Ticket,
};
pub use intents::Intents;
pub use limits::{RateLimitConfig, SendLimiter};
pub use opcode::{CLOSE_RULES, CloseCode, OpCode};
pub use session::{DeliveryStats, Gap, Session};
pub use token::Token;
