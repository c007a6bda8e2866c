//! Where a socket's bytes flow: TCP by default, or any byte stream a [`Connector`] opens.
//!
//! The driver resolves and dials `host:port` itself unless
//! [`TransportConfig::connector`](crate::TransportConfig::connector) names a connector; with
//! one, the connector opens the byte stream and the driver runs TLS (for `wss://`) and the
//! WebSocket upgrade over it exactly as over TCP. Everything above the byte stream (the close
//! handshake, the linger, the limits, the end report) is the same code either way. Uses: an
//! in-memory network for simulation under a paused tokio clock, a SOCKS or HTTP CONNECT
//! tunnel, a Unix socket.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use handover_core::TransportId;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream a WebSocket can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A byte stream opened by a [`Connector`].
pub type BoxByteStream = Box<dyn ByteStream>;

/// The future a [`Connector`] returns.
pub type ConnectorFuture = Pin<Box<dyn Future<Output = io::Result<BoxByteStream>> + Send>>;

/// Opens the byte stream for one socket, in place of a TCP connect.
///
/// The driver calls [`connect`](Self::connect) once per socket it opens, with the host and
/// port of the URL the codec asked for, and bounds the returned future (together with TLS and
/// the upgrade) by [`connect_timeout`](crate::TransportConfig::connect_timeout). Dropping the
/// future cancels the attempt; dropping the stream closes it: the peer must see EOF then, as
/// it would for a TCP stream.
pub trait Connector: Send + Sync + 'static {
    /// Open a stream to `host:port` for socket `conn`.
    fn connect(&self, conn: TransportId, host: &str, port: u16) -> ConnectorFuture;
}

/// A shared [`Connector`] in a [`TransportConfig`](crate::TransportConfig).
///
/// Two configurations compare equal when they name the same connector (the same `Arc`).
#[derive(Clone)]
pub struct SharedConnector(pub Arc<dyn Connector>);

impl SharedConnector {
    /// Wraps a connector.
    pub fn new(connector: impl Connector) -> Self {
        SharedConnector(Arc::new(connector))
    }
}

impl PartialEq for SharedConnector {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedConnector {}

impl fmt::Debug for SharedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedConnector(..)")
    }
}
