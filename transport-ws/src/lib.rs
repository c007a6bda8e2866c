//! # handover-transport-ws
//!
//! Drives a `handover-core` connection over WebSockets (tokio-tungstenite, rustls).

#![warn(missing_docs)]

pub use handover_core::{Codec, Decoded, Message};
