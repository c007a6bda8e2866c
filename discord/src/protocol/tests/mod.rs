//! Protocol tests built from Discord's documented payload shapes, and a test that drives the
//! lifecycle core with the codec and hand-fed server frames, without any socket.

mod delivery;
mod drive_core;
mod fixtures;
mod harness;
mod payloads;
mod robustness;
mod send_limits;
mod transport_compression;
