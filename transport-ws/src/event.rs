//! What a driver hands to the application.

use handover_core::{Event, TransportId};

use crate::error::TransportError;

/// One thing the application should know about, in the order it happened.
#[derive(Debug)]
#[non_exhaustive]
pub enum DriverEvent<T> {
    /// An event from the core (state changes, ready, resumed, reconnect scheduled, gave up).
    Core(Event),
    /// Something the codec decoded for the application (for example a dispatched event).
    ///
    /// When a message carries both a signal and an item, the signal is applied to the core
    /// first, so a handshake item is seen after the matching `Ready`/`Resumed`.
    Item(T),
    /// A transport lifecycle fact exactly as it was reported to the core.
    Transport(TransportEvent),
    /// Something went wrong with a transport. Never fatal to the driver: failures to open and
    /// broken sockets are also reported as [`TransportEvent::OpenFailed`] /
    /// [`TransportEvent::Closed`].
    Error(TransportError),
}

/// A transport lifecycle fact, mirrored from the input fed to the core.
///
/// For every `Opening`, exactly one `OpenFailed` or (after `Opened`) exactly one `Closed`
/// follows, whatever the path (close handshake, peer close, EOF, error, abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportEvent {
    /// The core asked for a transport and the driver started to open it.
    Opening {
        /// The transport.
        conn: TransportId,
    },
    /// The WebSocket is open (TCP, TLS and upgrade done).
    Opened {
        /// The transport.
        conn: TransportId,
    },
    /// The transport never opened (error, timeout, or aborted while connecting). It is gone.
    OpenFailed {
        /// The transport.
        conn: TransportId,
    },
    /// The open transport is gone: the socket has been dropped.
    Closed {
        /// The transport.
        conn: TransportId,
        /// The peer's close code, if it sent a close frame.
        code: Option<u16>,
    },
}

impl TransportEvent {
    /// The transport this fact is about.
    pub fn connection(&self) -> TransportId {
        match self {
            TransportEvent::Opening { conn }
            | TransportEvent::Opened { conn }
            | TransportEvent::OpenFailed { conn }
            | TransportEvent::Closed { conn, .. } => *conn,
        }
    }
}
