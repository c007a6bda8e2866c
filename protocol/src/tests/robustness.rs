//! Untrusted input never panics the codec, and the codec recovers after a reset.

use std::time::Instant;

use bytes::Bytes;
use handover_core::{Codec, Message, OpenMode, Signal, TransportId};

use super::fixtures::*;
use super::harness::config;
use crate::{Compression, DiscordCodec, IdentifyQueue, ZlibStreamEncoder, ZstdStreamEncoder};

fn assert_send<T: Send + 'static>() {}

#[test]
fn codec_and_queue_can_move_between_threads() {
    assert_send::<DiscordCodec>();
    assert_send::<IdentifyQueue>();
    assert_send::<crate::ProtocolError>();
}

/// Valid messages, then mutated ones: bytes flipped, truncated, spliced.
fn corpus() -> Vec<Vec<u8>> {
    [
        hello(41_250),
        ready(SESSION, 1),
        resumed(2),
        message_create(3, "hello"),
        reconnect(),
        invalid_session(true),
        invalid_session(false),
        heartbeat_ack(),
        heartbeat_request(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn mutate(rng: &mut fastrand::Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    match rng.u8(0..4) {
        0 => {
            for _ in 0..rng.usize(1..4) {
                if !m.is_empty() {
                    let i = rng.usize(0..m.len());
                    m[i] = rng.u8(..);
                }
            }
        }
        1 => m.truncate(rng.usize(0..=m.len())),
        2 => {
            let i = rng.usize(0..=m.len());
            let junk: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
            m.splice(i..i, junk);
        }
        _ => m = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
    }
    m
}

#[test]
fn mutated_input_never_panics_and_reset_recovers() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let corpus = corpus();
    for compression in [
        Compression::None,
        Compression::ZlibStream,
        Compression::ZstdStream,
    ] {
        let mut cfg = config();
        cfg.compression = compression;
        cfg.max_decompressed_bytes = 1 << 20;
        let mut codec = DiscordCodec::new(cfg).unwrap();
        let now = Instant::now();
        for round in 0..40u64 {
            codec.reset(TransportId(round + 1), OpenMode::Identify);
            let mut zlib = ZlibStreamEncoder::new();
            let mut zstd = ZstdStreamEncoder::new().unwrap();
            for _ in 0..50 {
                let base = &corpus[rng.usize(0..corpus.len())];
                let plain = if rng.bool() {
                    mutate(&mut rng, base)
                } else {
                    base.clone()
                };
                let mut wire = match compression {
                    Compression::None => plain,
                    Compression::ZlibStream => zlib.compress(&plain),
                    _ => zstd.compress(&plain).unwrap(),
                };
                if compression != Compression::None && rng.u8(0..10) == 0 {
                    wire = mutate(&mut rng, &wire);
                }
                let msg = if compression == Compression::None && rng.bool() {
                    match String::from_utf8(wire) {
                        Ok(s) => Message::text(s),
                        Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
                    }
                } else {
                    Message::Binary(Bytes::from(wire))
                };
                let _ = codec.decode(now, msg);
            }
            // A new connection always decodes valid input again.
            codec.reset(TransportId(1000 + round), OpenMode::Identify);
            let wire = match compression {
                Compression::None => hello(1).into_bytes(),
                Compression::ZlibStream => ZlibStreamEncoder::new().compress(hello(1).as_bytes()),
                _ => ZstdStreamEncoder::new()
                    .unwrap()
                    .compress(hello(1).as_bytes())
                    .unwrap(),
            };
            let d = codec
                .decode(now, Message::Binary(Bytes::from(wire)))
                .unwrap();
            assert!(
                matches!(d.signal, Some(Signal::Hello { .. })),
                "{compression:?} round {round}"
            );
        }
    }
}
