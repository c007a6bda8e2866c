//! Transport compression through the codec: several messages over one context, a message split
//! across frames, a corrupted stream, a bomb, and a fresh context per connection.

use std::time::Instant;

use bytes::Bytes;
use handover_core::{Codec, Message, OpenMode, Signal, TransportId};

use super::fixtures::*;
use super::harness::config;
use crate::{
    Compression, DiscordCodec, GatewayEvent, ProtocolError, ZlibStreamEncoder, ZstdStreamEncoder,
};

fn codec_with(compression: Compression, max: usize) -> DiscordCodec {
    let mut cfg = config();
    cfg.compression = compression;
    cfg.max_decompressed_bytes = max;
    let mut c = DiscordCodec::new(cfg).unwrap();
    c.reset(TransportId(1), OpenMode::Identify);
    c
}

fn bin(v: Vec<u8>) -> Message {
    Message::Binary(Bytes::from(v))
}

fn script() -> Vec<String> {
    vec![
        hello(41_250),
        ready(SESSION, 1),
        message_create(2, &"long message ".repeat(400)),
        message_create(3, "short"),
        heartbeat_ack(),
    ]
}

fn check_script_results(c: &mut DiscordCodec, frames: Vec<Vec<Message>>) {
    let now = Instant::now();
    let mut results = Vec::new();
    for msg_frames in frames {
        let n = msg_frames.len();
        for (i, f) in msg_frames.into_iter().enumerate() {
            let d = c.decode(now, f).unwrap();
            if i + 1 < n {
                assert_eq!(
                    d,
                    handover_core::Decoded::nothing(),
                    "partial frame decoded"
                );
            } else {
                results.push(d);
            }
        }
    }
    assert!(matches!(results[0].signal, Some(Signal::Hello { .. })));
    assert!(matches!(results[1].item, Some(GatewayEvent::Ready(_))));
    assert!(
        matches!(&results[2].item, Some(GatewayEvent::Dispatch(d)) if d.seq == 2 && d.data.len() > 5000)
    );
    assert!(matches!(&results[3].item, Some(GatewayEvent::Dispatch(d)) if d.seq == 3));
    assert_eq!(results[4].signal, Some(Signal::HeartbeatAck));
}

#[test]
fn zlib_stream_round_trip_with_split_frames() {
    let mut c = codec_with(Compression::ZlibStream, 1 << 20);
    let mut enc = ZlibStreamEncoder::new();
    let frames = script()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let z = enc.compress(m.as_bytes());
            if i == 2 {
                // Split the big message in three frames, the suffix itself split too.
                let a = z.len() / 2;
                let b = z.len() - 2;
                vec![
                    bin(z[..a].to_vec()),
                    bin(z[a..b].to_vec()),
                    bin(z[b..].to_vec()),
                ]
            } else {
                vec![bin(z)]
            }
        })
        .collect();
    check_script_results(&mut c, frames);
}

#[test]
fn zstd_stream_round_trip() {
    let mut c = codec_with(Compression::ZstdStream, 1 << 20);
    let mut enc = ZstdStreamEncoder::new().unwrap();
    let frames = script()
        .iter()
        .map(|m| vec![bin(enc.compress(m.as_bytes()).unwrap())])
        .collect();
    check_script_results(&mut c, frames);
}

#[test]
fn corrupted_stream_needs_a_reconnect_and_reset_recovers() {
    for compression in [Compression::ZlibStream, Compression::ZstdStream] {
        let now = Instant::now();
        let mut c = codec_with(compression, 1 << 20);
        let mut junk = vec![0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x42, 0x42];
        junk.extend_from_slice(&crate::ZLIB_SUFFIX);
        let err = c.decode(now, bin(junk)).unwrap_err();
        assert!(err.needs_reconnect(), "{compression:?}: {err:?}");
        assert!(matches!(err, ProtocolError::DecompressionFailed { .. }));
        // Everything after fails until a new connection resets the context.
        let good = match compression {
            Compression::ZlibStream => ZlibStreamEncoder::new().compress(hello(1).as_bytes()),
            _ => ZstdStreamEncoder::new()
                .unwrap()
                .compress(hello(1).as_bytes())
                .unwrap(),
        };
        assert_eq!(
            c.decode(now, bin(good.clone())).unwrap_err(),
            ProtocolError::StreamPoisoned
        );
        c.reset(TransportId(2), OpenMode::Identify);
        let d = c.decode(now, bin(good)).unwrap();
        assert!(
            matches!(d.signal, Some(Signal::Hello { .. })),
            "{compression:?}"
        );
    }
}

#[test]
fn bomb_is_refused_and_nothing_delivered() {
    let now = Instant::now();
    let cap = 256 * 1024;
    let bomb = format!(
        r#"{{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{{"content":"{}"}}}}"#,
        "A".repeat(8 << 20)
    );
    let mut c = codec_with(Compression::ZlibStream, cap);
    let z = ZlibStreamEncoder::new().compress(bomb.as_bytes());
    assert!(z.len() < cap / 4);
    assert_eq!(
        c.decode(now, bin(z)).unwrap_err(),
        ProtocolError::DecompressedTooLarge { limit: cap }
    );
    assert_eq!(c.stats().delivered, 0);

    let mut c = codec_with(Compression::ZstdStream, cap);
    let z = ZstdStreamEncoder::new()
        .unwrap()
        .compress(bomb.as_bytes())
        .unwrap();
    let err = c.decode(now, bin(z)).unwrap_err();
    assert_eq!(err, ProtocolError::DecompressedTooLarge { limit: cap });
    assert!(err.needs_reconnect());
}

#[test]
fn text_frames_bypass_the_decompressor() {
    let now = Instant::now();
    let mut c = codec_with(Compression::ZlibStream, 1 << 20);
    let d = c.decode(now, Message::text(heartbeat_ack())).unwrap();
    assert_eq!(d.signal, Some(Signal::HeartbeatAck));
    // And uncompressed binary JSON is read as JSON.
    let mut plain = codec_with(Compression::None, 1 << 20);
    let d = plain
        .decode(now, bin(heartbeat_ack().into_bytes()))
        .unwrap();
    assert_eq!(d.signal, Some(Signal::HeartbeatAck));
}
