//! The seam between a wire protocol and the machine.
//!
//! A [`Codec`] turns received messages into [`Signal`]s for the core (and items for the
//! application), and turns the core's [`Payload`] requests into messages. It is sans-IO like the
//! core, so the same codec serves the tokio transport, an in-memory simulation, or a runtime of
//! your own.

use std::time::Instant;

use bytes::Bytes;

use crate::io::{Payload, Signal};
use crate::types::{OpenMode, TransportId};

/// One WebSocket data message, owned by this crate so no transport type leaks into public APIs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A text message. The bytes are valid UTF-8: a transport checks them before handing the
    /// message over (RFC 6455 asks it to), and codecs rely on that rather than checking again
    /// (the Discord codec reads such a message's `d` as it is); a runtime of its own that builds
    /// one from bytes must check them first, or hand them over as [`Message::Binary`].
    Text(Bytes),
    /// A binary message (for example a compressed stream chunk).
    Binary(Bytes),
}

impl Message {
    /// The payload bytes, text or binary.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(b) | Message::Binary(b) => b,
        }
    }

    /// A text message from a string.
    pub fn text(s: impl Into<String>) -> Message {
        Message::Text(Bytes::from(s.into()))
    }
}

/// What one received message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    /// A fact for the core, if any.
    pub signal: Option<Signal>,
    /// Something for the application, if any (for example a dispatched event).
    pub item: Option<T>,
}

impl<T> Decoded<T> {
    /// Nothing: a message that completes no payload (a partial compressed chunk), or one that
    /// carries nothing the core or application needs.
    pub fn nothing() -> Self {
        Decoded {
            signal: None,
            item: None,
        }
    }
}

/// A wire protocol plugged between the transport and the core.
///
/// The driver calls [`reset`](Codec::reset) before each new transport, then
/// [`decode`](Codec::decode) for every received data message, [`encode`](Codec::encode) for
/// every [`Output::Send`](crate::Output::Send) and [`encode_command`](Codec::encode_command) for
/// every application command (only while
/// [`Connection::sendable_transport`](crate::Connection::sendable_transport) is `Some`).
pub trait Codec {
    /// What the codec hands to the application.
    type Item;
    /// What the application asks the codec to send (for example a presence update).
    type Command;
    /// Why a message could not be decoded or a payload encoded.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Where to connect for this attempt (a resume may go to a different URL).
    fn url(&self, mode: OpenMode) -> String;

    /// A new transport `conn` is about to open: drop all per-connection state (compression
    /// contexts, send-rate windows, half-received messages).
    fn reset(&mut self, conn: TransportId, mode: OpenMode);

    /// Decode one received message.
    ///
    /// One message may mean more than one item for the application: the first comes in
    /// [`Decoded::item`], the rest from [`poll_item`](Codec::poll_item), which the driver MUST
    /// drain after every `decode` (whether it returned `Ok` or `Err`), delivering them in order
    /// after the first.
    fn decode(&mut self, now: Instant, msg: Message) -> Result<Decoded<Self::Item>, Self::Error>;

    /// More items from the last [`decode`](Codec::decode), in order; `None` when there are no
    /// more. The default has none.
    #[must_use]
    fn poll_item(&mut self) -> Option<Self::Item> {
        None
    }

    /// Whether the current transport can no longer be decoded (for example a corrupted
    /// compression stream: every later message would fail). The driver MUST ask after every
    /// `decode` that returned `Err` and, on `true`, feed
    /// [`Input::Restart`](crate::Input::Restart) with
    /// [`RestartReason::TransportFault`](crate::RestartReason::TransportFault), so the
    /// connection is replaced (and the session resumed) at once instead of waiting for zombie
    /// detection. Answers `true` once per broken transport. The default never asks.
    #[must_use]
    fn poll_restart(&mut self) -> bool {
        false
    }

    /// Build the message for a payload the core asked for.
    fn encode(&mut self, now: Instant, payload: Payload) -> Result<Message, Self::Error>;

    /// Build the message for an application command. Send limits (size, rate) are the codec's
    /// to enforce: an error means nothing may be sent.
    fn encode_command(
        &mut self,
        now: Instant,
        command: Self::Command,
    ) -> Result<Message, Self::Error>;
}
