//! # handover-transport-ws
//!
//! Drives a `handover-core` [`Connection`](handover_core::Connection) over WebSockets
//! (tokio, rustls with the ring provider, the framing of [`frame`]), and offers an in-memory transport with the
//! same contract for deterministic simulation ([`memory`]).
//!
//! The core decides; this crate does what it says, over real sockets:
//!
//! | core output | driver action | report back to the core |
//! |---|---|---|
//! | `Open { conn, mode }` | `codec.reset`, connect `codec.url(mode)` (TCP, TLS, upgrade) within the connect timeout | `Opened(conn)` or `OpenFailed(conn)` |
//! | `Send { conn, payload }` | `codec.encode`, queue on the socket | — |
//! | `Close { conn, code }` | send the close frame, keep reading (data discarded) until the peer's close frame or EOF | `Closed { conn, code: peer's code }` |
//! | `Abort { conn }` | drop the TCP stream (or the connect attempt) at once | `Closed { conn, code: None }` / `OpenFailed(conn)` |
//! | `AcquirePermit { conn }` | poll [`PermitSource::acquire`] inside the task (grant at once without a source) | `PermitGranted(conn)` / `PermitDenied(conn)` |
//! | `Event(e)` | [`DriverEvent::Core`] | — |
//!
//! Received data messages go through [`Codec::decode`]: the signal to the core, the item to the
//! application. Every transport gets exactly one end report (`OpenFailed` or `Closed`) on every
//! path, and the socket is dropped before that report is made, so the core can never open a
//! second socket while the first one lives. `docs/transport.md` in the repository has the whole
//! contract, the close and abort paths, the limits and the backpressure rules.
//!
//! ```no_run
//! # async fn demo<C>(codec: C) -> Result<(), handover_transport_ws::DriverGone>
//! # where C: handover_transport_ws::Codec + Send + 'static, C::Item: Send + std::fmt::Debug, C::Command: Send {
//! use handover_core::{Config, Connection, StopIntent};
//! use handover_transport_ws::{Driver, DriverEvent, TransportConfig};
//!
//! let core = Connection::new(Config::default(), 42);
//! let (handle, mut events) = Driver::spawn(core, codec, TransportConfig::default(), None);
//! handle.start().await?;
//! while let Some(event) = events.next_event().await {
//!     if let DriverEvent::Item(item) = event {
//!         println!("{item:?}");
//!         break;
//!     }
//! }
//! handle.stop(StopIntent::EndSession).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod clock;
mod config;
pub mod connector;
mod driver;
mod error;
mod event;
pub mod frame;
mod handoff;
mod link;
pub mod memory;
mod read_ahead;
mod socket;

/// Counts the live heap bytes of each thread in this crate's unit tests (the socket's buffer
/// tests read it).
#[cfg(test)]
#[path = "../../protocol/tests/live_bytes/mod.rs"]
mod live_bytes;
#[cfg(test)]
#[global_allocator]
static ALLOC: live_bytes::LiveBytes = live_bytes::LiveBytes;

#[cfg(feature = "planted-faults")]
#[doc(hidden)]
pub use config::PlantedFault;
pub use config::TransportConfig;
pub use connector::{BoxByteStream, ByteStream, Connector, ConnectorFuture, SharedConnector};
pub use driver::{Driver, DriverEvents, DriverHandle, PermitFuture, PermitSource};
pub use error::{BoxError, DriverGone, PermitDenied, SendError, TransportError};
pub use event::{DriverEvent, TransportEvent};
pub use handover_core::{Codec, Decoded, Message};
