//! Errors of the transport: what went wrong on a socket, why a send was refused, why a permit
//! was denied.

use std::time::Duration;

use handover_core::TransportId;

/// A boxed error from a layer below (I/O, TLS, WebSocket, codec), kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something that went wrong with one transport.
///
/// These are reported as [`DriverEvent::Error`](crate::DriverEvent::Error) and never end the
/// driver: a connection that fails to open is reported as `OpenFailed`, a socket that breaks is
/// reported as `Closed`, and the core decides what happens next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL from [`Codec::url`](crate::Codec::url) is not a `ws://` or `wss://` URL with a
    /// host.
    #[error("invalid url for {conn}: {reason}")]
    InvalidUrl {
        /// The transport that could not open.
        conn: TransportId,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// TCP, TLS and the WebSocket upgrade did not finish within
    /// [`TransportConfig::connect_timeout`](crate::TransportConfig::connect_timeout).
    #[error("connect timed out for {conn} after {after:?}")]
    ConnectTimeout {
        /// The transport that could not open.
        conn: TransportId,
        /// The configured timeout.
        after: Duration,
    },
    /// The TCP connection could not be made.
    #[error("tcp connect failed for {conn}")]
    Connect {
        /// The transport that could not open.
        conn: TransportId,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (for example an extra root certificate is not
    /// valid DER).
    #[error("tls configuration rejected")]
    TlsConfig {
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The TLS handshake failed (for example the server certificate is not trusted).
    #[error("tls handshake failed for {conn}")]
    Tls {
        /// The transport that could not open.
        conn: TransportId,
        /// The TLS error as reported by the stream.
        #[source]
        source: std::io::Error,
    },
    /// The WebSocket upgrade failed (an HTTP error status, a bad response).
    #[error("websocket handshake failed for {conn}")]
    Handshake {
        /// The transport that could not open.
        conn: TransportId,
        /// The WebSocket error.
        #[source]
        source: BoxError,
    },
    /// A received message or frame exceeded
    /// [`max_message_size`](crate::TransportConfig::max_message_size) or
    /// [`max_frame_size`](crate::TransportConfig::max_frame_size). The socket is dropped.
    #[error("message too large on {conn}: {size} bytes, limit {max}")]
    TooLarge {
        /// The transport.
        conn: TransportId,
        /// The announced or accumulated size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// Reading or writing the socket failed. The socket is dropped.
    #[error("socket i/o failed on {conn}")]
    Io {
        /// The transport.
        conn: TransportId,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the WebSocket protocol (bad framing, invalid UTF-8 in a text message).
    /// The socket is dropped.
    #[error("websocket protocol error on {conn}")]
    Protocol {
        /// The transport.
        conn: TransportId,
        /// The WebSocket error.
        #[source]
        source: BoxError,
    },
    /// The codec could not decode a received message. The message is skipped; the socket
    /// stays open.
    #[error("could not decode a message on {conn}")]
    Decode {
        /// The transport.
        conn: TransportId,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// The codec could not encode a payload the core asked for. Nothing was sent; the core's
    /// timers notice the missing reply.
    #[error("could not encode a payload on {conn}")]
    Encode {
        /// The transport.
        conn: TransportId,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
}

impl TransportError {
    /// The transport the error concerns, if it concerns one.
    pub fn connection(&self) -> Option<TransportId> {
        match self {
            TransportError::InvalidUrl { conn, .. }
            | TransportError::ConnectTimeout { conn, .. }
            | TransportError::Connect { conn, .. }
            | TransportError::Tls { conn, .. }
            | TransportError::Handshake { conn, .. }
            | TransportError::TooLarge { conn, .. }
            | TransportError::Io { conn, .. }
            | TransportError::Protocol { conn, .. }
            | TransportError::Decode { conn, .. }
            | TransportError::Encode { conn, .. } => Some(*conn),
            TransportError::TlsConfig { .. } => None,
        }
    }
}

/// Why an application command was not sent. Whatever the variant, nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No transport has an accepted handshake right now (connecting, draining or closed).
    /// Wait for a `Ready`/`Resumed` event and retry.
    #[error("not identified: no connection accepts commands now")]
    NotIdentified,
    /// The codec refused the command (too large, over the send rate, not encodable).
    #[error("the codec refused the command")]
    Codec(#[source] BoxError),
    /// The socket's write queue is full (the peer is not reading). Retry later.
    #[error("write queue full")]
    QueueFull,
    /// The driver task has exited.
    #[error(transparent)]
    DriverGone(#[from] DriverGone),
}

/// The driver task has exited (every handle asked it to shut down, or its runtime stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("driver task has exited")]
pub struct DriverGone;

/// A [`PermitSource`](crate::PermitSource) refused to let a new session start.
///
/// The core then closes the transport and gives up until the next start
/// ([`GiveUpReason::PermitDenied`](handover_core::GiveUpReason::PermitDenied)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permit denied: {reason}")]
pub struct PermitDenied {
    reason: String,
}

impl PermitDenied {
    /// A denial with a short lowercase reason (for logs and status; never put secrets in it).
    pub fn new(reason: impl Into<String>) -> Self {
        PermitDenied {
            reason: reason.into(),
        }
    }

    /// Why the permit was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
