//! The dispatch hot path allocates nothing beyond the frame: decoding a plain dispatch makes no
//! allocation at all (the event name is static or a slice of the frame, the data a slice of the
//! frame), and a compressed stream takes a new output buffer once per many messages, not once
//! per message, even while every decoded message is held. A counting global allocator proves it
//! with a count, not a timing.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use bytes::Bytes;
use handover_core::{Codec, Message, OpenMode, TransportId};
use handover_protocol::{
    Compression, DiscordCodec, GatewayConfig, GatewayEvent, Intents, Token, ZlibStreamEncoder,
    ZstdStreamEncoder,
};

/// Counts allocations made by the current thread (the test harness runs other threads).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: thread-local storage may already be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

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
