//! An in-memory transport with the same contract as the WebSocket driver, for deterministic
//! simulation in virtual time (no tokio, no sockets).
//!
//! A [`MemoryPeer`] plays the server side (for example the mock gateway's sans-IO model).

use std::time::Instant;

use handover_core::{ConnectionId, Message};

/// What a simulated server does to one of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Send a data message to the client.
    Send(Message),
    /// Send a close frame with this code (the server then considers the socket closing, and the
    /// client's close reply or EOF ends it).
    Close(u16),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// The server side of an in-memory link.
///
/// The harness calls the `on_*` methods as the client's transport acts, drains
/// [`poll_action`](MemoryPeer::poll_action) after each, and calls
/// [`handle_timeout`](MemoryPeer::handle_timeout) at [`poll_timeout`](MemoryPeer::poll_timeout).
pub trait MemoryPeer {
    /// A client connects to `url` with transport `conn`. Return `false` to refuse (the client
    /// sees an open failure).
    fn on_connect(&mut self, now: Instant, conn: ConnectionId, url: &str) -> bool;
    /// A data message from the client.
    fn on_message(&mut self, now: Instant, conn: ConnectionId, msg: Message);
    /// The client sent a close frame with `code`. A well-behaved server answers with
    /// [`PeerAction::Close`]; a faulty one may never answer.
    fn on_close_frame(&mut self, now: Instant, conn: ConnectionId, code: u16);
    /// The client's socket is gone (it aborted, or the close handshake finished).
    fn on_disconnect(&mut self, now: Instant, conn: ConnectionId);
    /// The next thing the server does, if any.
    fn poll_action(&mut self) -> Option<(ConnectionId, PeerAction)>;
    /// When the server next needs [`handle_timeout`](MemoryPeer::handle_timeout).
    fn poll_timeout(&self) -> Option<Instant>;
    /// Let server time pass up to `now`.
    fn handle_timeout(&mut self, now: Instant);
}
