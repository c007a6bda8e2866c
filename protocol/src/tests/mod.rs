//! Protocol tests built from Discord's documented payload shapes, and a test that drives the
//! lifecycle core with the codec and hand-fed server frames, without any socket.

#[cfg(all(feature = "zlib", feature = "zstd"))]
mod delivery;
mod drive_core;
mod fixtures;
mod harness;
mod payloads;
#[cfg(all(feature = "zlib", feature = "zstd"))]
mod robustness;
mod send_limits;
#[cfg(all(feature = "zlib", feature = "zstd"))]
mod transport_compression;
