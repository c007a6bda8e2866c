//! The dispatch hot path allocates nothing beyond the frame: decoding a plain dispatch makes no
//! allocation at all (the event name is static or a slice of the frame, the data a slice of the
//! frame), and a compressed stream takes a new output buffer once per many messages, not once
//! per message, even while every decoded message is held. A counting global allocator proves it
//! with a count, not a timing.

use std::time::Instant;

use bytes::Bytes;
use handover_core::{Codec, Message, OpenMode, TransportId};
use handover_protocol::{
    Compression, DiscordCodec, GatewayConfig, GatewayEvent, Intents, Token, ZlibStreamEncoder,
    ZstdStreamEncoder,
};

#[path = "../../core/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use counting_alloc::allocations;

const MESSAGES: u64 = 512;

fn dispatch(seq: u64, event: &str) -> String {
    format!(
        r#"{{"op":0,"t":"{event}","s":{seq},"d":{{"id":"{}","content":"message number {seq} with some text","author":{{"id":"80351110224678912","username":"Nelly"}},"mentions":[],"pinned":false}}}}"#,
        1_350_000_000_000_000_000u64 + seq
    )
}

/// A codec past HELLO and READY (seq 1), ready for dispatches.
fn identified(compression: Compression, frames: &mut dyn FnMut(&str) -> Message) -> DiscordCodec {
    let token =
        Token::new("MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs").expect("token");
    let mut cfg = GatewayConfig::new(token, Intents::GUILDS);
    cfg.compression = compression;
    let mut codec = DiscordCodec::new(cfg).expect("codec");
    codec.reset(TransportId(1), OpenMode::Identify);
    let now = Instant::now();
    let hello = r#"{"op":10,"d":{"heartbeat_interval":41250}}"#;
    let ready = r#"{"op":0,"s":1,"t":"READY","d":{"session_id":"abc","resume_gateway_url":"wss://resume.example","v":10}}"#;
    for m in [hello, ready] {
        codec.decode(now, frames(m)).expect("handshake");
    }
    codec
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn a_plain_dispatch_allocates_nothing() {
    let mut codec = identified(Compression::None, &mut |m| {
        Message::Text(Bytes::from(m.to_owned()))
    });
    for event in ["MESSAGE_CREATE", "SIM_UNDOCUMENTED_EVENT"] {
        // Frames as the transport hands them out: shared buffers (a clone makes a `Bytes`
        // built from a `Vec` shared, as tungstenite's are), built before counting.
        let frames: Vec<Bytes> = (0..MESSAGES)
            .map(|i| {
                let b = Bytes::from(dispatch(2 + i + u64::from(event.len() as u8) * 1000, event));
                let _shared = b.clone();
                b
            })
            .collect();
        let mut held = Vec::with_capacity(frames.len());
        let now = Instant::now();
        let before = allocations();
        for f in &frames {
            let d = codec.decode(now, Message::Text(f.clone())).expect("decode");
            held.push(d);
        }
        let made = allocations() - before;
        assert_eq!(
            made, 0,
            "{made} allocations for {MESSAGES} {event} dispatches"
        );
        for d in &held {
            match &d.item {
                Some(GatewayEvent::Dispatch(d)) => assert_eq!(d.event_type, event),
                other => panic!("not a dispatch: {other:?}"),
            }
        }
    }
}

#[test]
fn compressed_dispatches_share_output_buffers() {
    for compression in [Compression::ZlibStream, Compression::ZstdStream] {
        let mut zlib = ZlibStreamEncoder::new();
        let mut zstd = ZstdStreamEncoder::new().expect("zstd");
        let mut compress = |m: &str| -> Vec<u8> {
            match compression {
                Compression::ZlibStream => zlib.compress(m.as_bytes()),
                _ => zstd.compress(m.as_bytes()).expect("compress"),
            }
        };
        let mut codec = identified(compression, &mut |m| {
            Message::Binary(Bytes::from(compress(m)))
        });
        let frames: Vec<Bytes> = (0..MESSAGES)
            .map(|i| {
                let b = Bytes::from(compress(&dispatch(2 + i, "MESSAGE_CREATE")));
                let _shared = b.clone();
                b
            })
            .collect();
        let json: usize = (0..MESSAGES)
            .map(|i| dispatch(2 + i, "MESSAGE_CREATE").len())
            .sum();
        let mut held = Vec::with_capacity(frames.len());
        let now = Instant::now();
        let before = allocations();
        for f in &frames {
            held.push(
                codec
                    .decode(now, Message::Binary(f.clone()))
                    .expect("decode"),
            );
        }
        let made = allocations() - before;
        // Every message is held, so no buffer is ever reused: one 64 KiB buffer per 64 KiB of
        // JSON, plus a few for the decompressor's own state.
        let bound = (json / (64 << 10)) as u64 + 8;
        assert!(
            made <= bound,
            "{compression:?}: {made} allocations for {MESSAGES} messages ({json} B of JSON), bound {bound}"
        );
        assert!(
            held.iter()
                .all(|d| matches!(d.item, Some(GatewayEvent::Dispatch(_))))
        );
    }
}
