//! # handover-core
//!
//! A sans-IO lifecycle machine for long-lived gateway connections (Discord first), built so that a
//! restart can never leave two sockets alive.
//!
//! The crate does no I/O, reads no clock, spawns no thread. [`Connection`] takes facts in
//! ([`Connection::handle_input`], [`Connection::handle_timeout`]) and hands work out
//! ([`Connection::poll_output`], [`Connection::poll_timeout`]). A driver (the tokio transport in
//! `handover-transport-ws`, an in-memory simulation, or a runtime of your own) carries the work
//! out. A [`Codec`] plugs a wire protocol between driver and machine.
//!
//! States: [`State::Connecting`] -> [`State::Identified`] <-> [`State::Stale`] ->
//! [`State::Draining`] -> [`State::Closed`] -> (after backoff) [`State::Connecting`].
//! `Draining` leaves only to `Closed`, and only when the driver confirms the transport is gone; a
//! drain deadline becomes [`Output::Abort`], never a second [`Output::Open`].
//!
//! See `docs/architecture.md` in the repository for invariants and a worked driver loop.

#![warn(missing_docs)]

mod codec;
mod config;
mod connection;
mod io;
mod machine;
mod types;

pub use codec::{Codec, Decoded, Message};
pub use config::{Backoff, Config};
pub use connection::Connection;
pub use io::{Event, Input, InputKind, Output, Payload, RejectedInput, Rejection, Signal};
pub use types::{
    CloseClass, CloseRules, ConnectingPhase, ConnectionStatus, GiveUpReason, OpenMode, Phase,
    RestartReason, State, StopIntent, TransportId,
};
