//! # handover-transport-ws
//!
//! Drives a `handover-core` connection over WebSockets (tokio-tungstenite, rustls), and offers
//! an in-memory transport with the same contract for deterministic simulation.

#![warn(missing_docs)]

pub mod memory;

pub use handover_core::{Codec, Decoded, Message};
