//! A Discord-faithful mock gateway, for tests, the demo and other people's test suites.
//!
//! Two layers:
//!
//! - [`MockGateway`] (module [`model`]): the gateway's server side as a sans-IO state machine
//!   with injected time and seeded randomness. It implements
//!   [`MemoryPeer`](handover_transport_ws::memory::MemoryPeer), so a simulation can run the real
//!   client stack against it in memory, in virtual time.
//! - [`MockServer`]: a thin tokio shell around the same model, serving WebSocket and
//!   `GET /api/v10/gateway/bot` on one port of 127.0.0.1, with socket-level faults done for real
//!   (a zombie really stops answering pings, an ignored close frame really gets no reply).
//!
//! ```no_run
//! # async fn demo() -> Result<(), handover_mock::MockError> {
//! use handover_mock::{Fault, MockConfig, MockServer};
//! let mock = MockServer::start(MockConfig::default()).await?;
//! let url = mock.url(); // ws://127.0.0.1:PORT
//! let handle = mock.handle();
//! handle.dispatch(0, "MESSAGE_CREATE", &serde_json::json!({ "content": "hi" }));
//! handle.inject(0, Fault::Reconnect);
//! let seen = handle.counters().shard(0);
//! # let _ = (url, seen); Ok(()) }
//! ```
//!
//! See `docs/mock-gateway.md` for what is modelled, every fault, the counters, and what the mock
//! deliberately does not model.

pub mod close_codes;
mod compress;
mod config;
mod counters;
mod fault;
pub mod model;
mod server;

pub use close_codes::{DISCORD_CLOSE_CODES, SessionAfterClose, session_after_close};
pub use config::{DEFAULT_TOKEN, DOCUMENTED_INTENTS, MockConfig, PRIVILEGED_INTENTS, os_seed};
pub use counters::{Counters, SessionCounters, ShardCounters};
pub use fault::{Fault, Garbage, ShardKey, StreamId, StreamRate, StreamSpec, Target};
pub use model::{ConnectionInfo, HttpReply, MockGateway, bot_user_id};
pub use server::{MockError, MockHandle, MockServer};

/// The protocol types the mock's configuration and reports use (one name per concept: these
/// are `handover-protocol`'s).
pub use handover_protocol::{Compression, SessionStartLimit};
