//! What an idle compressed connection keeps on the heap: its stream context, and nothing it
//! needs only while a message is being decompressed (the scratch the decompressor writes into,
//! the slab messages are cut from). Those are shared by the decoders of a thread, so many idle
//! decoders cost one set of them. A global allocator counting the live bytes of the current
//! thread proves it with a byte count, not a timing.

mod live_bytes;

use live_bytes::{LiveBytes, live};

use handover_protocol::{
    DEFAULT_MAX_DECOMPRESSED_BYTES, ZlibStreamDecoder, ZlibStreamEncoder, ZstdStreamDecoder,
    ZstdStreamEncoder,
};

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// Decoders measured together (the figures are per decoder).
const DECODERS: usize = 64;

const HELLO: &[u8] = br#"{"op":10,"d":{"heartbeat_interval":41250}}"#;
const READY: &[u8] = br#"{"op":0,"s":1,"t":"READY","d":{"session_id":"abc","resume_gateway_url":"wss://resume.example","v":10}}"#;

/// Live heap bytes per decoder: `fresh` after creating them, `idle` after each decoded the
/// handshake and its messages were dropped.
fn per_decoder<D>(
    mut make: impl FnMut() -> D,
    mut decode: impl FnMut(&mut D, &[u8]),
) -> (i64, i64) {
    let before = live();
    let mut decoders: Vec<D> = (0..DECODERS).map(|_| make()).collect();
    let fresh = live() - before;
    for d in &mut decoders {
        for m in [HELLO, READY] {
            decode(d, m);
        }
    }
    let idle = live() - before;
    drop(decoders);
    let n = DECODERS as i64;
    (fresh / n, idle / n)
}

#[test]
fn the_counter_sees_live_bytes() {
    let before = live();
    let v = std::hint::black_box(vec![1u8; 4096]);
    assert!(live() - before >= 4096);
    drop(v);
    assert_eq!(live(), before);
}

#[test]
fn an_idle_zlib_decoder_keeps_only_its_inflate_context() {
    let mut enc = ZlibStreamEncoder::new();
    let frames: Vec<Vec<u8>> = [HELLO, READY].iter().map(|m| enc.compress(m)).collect();
    let (fresh, idle) = per_decoder(
        || ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES),
        |d, m| {
            let frame = if m == HELLO { &frames[0] } else { &frames[1] };
            let msg = d.push_shared(frame).expect("decodes").expect("complete");
            assert_eq!(&msg[..], m);
        },
    );
    // The inflate context: zlib-rs allocates its state and the 32 KiB window up front (about
    // 47 KiB). Before the buffers were shared, a fresh decoder also held a 32 KiB scratch
    // (about 80 KiB), and decoding a message left a 64 KiB output slab behind.
    assert!(fresh < 56 << 10, "a fresh zlib decoder holds {fresh} B");
    assert!(
        idle - fresh < 4 << 10,
        "decoding the handshake left {} B per zlib decoder ({fresh} B fresh)",
        idle - fresh
    );
}

#[test]
fn an_idle_zstd_decoder_keeps_only_its_zstd_context() {
    let mut enc = ZstdStreamEncoder::new().expect("encoder");
    let frames: Vec<Vec<u8>> = [HELLO, READY]
        .iter()
        .map(|m| enc.compress(m).expect("compresses"))
        .collect();
    let (fresh, idle) = per_decoder(
        || ZstdStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES).expect("decoder"),
        |d, m| {
            let frame = if m == HELLO { &frames[0] } else { &frames[1] };
            let msg = d.push_shared(frame).expect("decodes");
            assert_eq!(&msg[..], m);
        },
    );
    // zstd allocates its context and window buffers with the C allocator, which this counter
    // does not see: what it sees is ours. A decoder used to hold a 32 KiB scratch from its
    // creation and a 64 KiB output slab from its first message.
    assert!(fresh < 1 << 10, "a fresh zstd decoder holds {fresh} B");
    assert!(
        idle - fresh < 4 << 10,
        "decoding the handshake left {} B per zstd decoder ({fresh} B fresh)",
        idle - fresh
    );
}

#[test]
fn a_send_limiter_reserves_no_window_up_front() {
    use handover_protocol::{RateLimitConfig, SendLimiter};
    let before = live();
    let limiters: Vec<SendLimiter> = (0..DECODERS)
        .map(|_| SendLimiter::new(RateLimitConfig::default()))
        .collect();
    let per = (live() - before) / DECODERS as i64;
    drop(limiters);
    // The struct itself lives in the Vec (under 100 B); a window of 120 timestamps reserved
    // up front was 1920 B more per connection.
    assert!(per < 256, "a fresh send limiter holds {per} B");
}
