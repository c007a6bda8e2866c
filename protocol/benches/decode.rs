//! Decoding one MESSAGE_CREATE: the Discord codec against a plain `serde_json::Value` parse.
//!
//! `cargo bench -p handover-protocol --bench decode`
//!
//! Every benchmark walks a ring of distinct dispatches (about 1 KiB of JSON each, increasing
//! sequence numbers, varied ids and text), so compressed streams see new text in every message
//! and the codec never takes its duplicate-drop path. For the compressed cases the ring is
//! compressed in order on one stream context, as a gateway connection would be; each pass over
//! the ring uses a fresh codec (built outside the timed region), so the decompression context
//! always matches the stream.
//!
//! - `serde_json_value`: `serde_json::from_slice::<Value>` of the plain envelope (the baseline:
//!   what a naive client does with every message).
//! - `envelope_serde_json`: the envelope struct (op, s, t, d raw) through `serde_json`, as the
//!   codec parsed it before its own scanner.
//! - `utf8_check`, `utf8_check_simd`: `std::str::from_utf8` and `simdutf8` (what the scanner
//!   uses) over the whole message.
//! - `envelope_parse`: `Envelope::parse` alone (op, s, t read; d checked structurally, kept
//!   raw).
//! - `envelope_parse_tail`: `Envelope::parse_tail` alone, the codec's path (op, s, t read; d,
//!   last as in every frame of the ring, taken unread).
//! - `codec_plain`: `DiscordCodec::decode` of a text frame (envelope, sequence tracking, the
//!   `Dispatch` item with `d` sharing the buffer).
//! - `zlib_inflate_only`, `zstd_decompress_only`: the decompression step alone, with flate2 and
//!   zstd driven directly into a reused buffer.
//! - `codec_zlib_stream`, `codec_zstd_stream`: `DiscordCodec::decode` of binary frames with the
//!   codec's own decompressor.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use handover_core::{Codec, Message, OpenMode, TransportId};
use handover_protocol::{
    Compression, DiscordCodec, Envelope, GatewayConfig, GatewayEvent, Intents, Token,
    ZlibStreamEncoder, ZstdStreamEncoder,
};

/// The envelope struct the codec parsed with `serde_json` before its own scanner (the
/// comparison case `envelope_serde_json`).
#[derive(serde::Deserialize)]
struct Wire<'a> {
    op: Option<u64>,
    #[serde(borrow, default)]
    d: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(borrow, default)]
    t: Option<std::borrow::Cow<'a, str>>,
}

/// Distinct messages in the ring.
const RING: usize = 1024;

/// The plain envelopes of the ring, seq 1..=RING.
fn plain_ring() -> Vec<Bytes> {
    (0..RING as u64)
        .map(|i| {
            let data = common::message_create(i).to_string();
            Bytes::from(common::envelope(i + 1, "MESSAGE_CREATE", &data))
        })
        .collect()
}

/// The ring compressed in order on one stream context.
fn compressed_ring(plain: &[Bytes], compression: Compression) -> Vec<Bytes> {
    match compression {
        Compression::ZlibStream => {
            let mut enc = ZlibStreamEncoder::new();
            plain.iter().map(|m| Bytes::from(enc.compress(m))).collect()
        }
        Compression::ZstdStream => {
            let mut enc = ZstdStreamEncoder::new().expect("zstd context");
            plain
                .iter()
                .map(|m| Bytes::from(enc.compress(m).expect("zstd compress")))
                .collect()
        }
        _ => plain.to_vec(),
    }
}

fn codec(compression: Compression) -> DiscordCodec {
    let token = Token::new("bench-token").expect("well-formed token");
    let mut cfg = GatewayConfig::new(token, Intents::GUILD_MESSAGES);
    cfg.gateway_url = "ws://127.0.0.1:1".to_owned();
    cfg.compression = compression;
    let mut codec = DiscordCodec::new(cfg).expect("valid config");
    codec.reset(TransportId(1), OpenMode::Identify);
    codec
}

fn frame(bytes: &Bytes, compression: Compression) -> Message {
    match compression {
        Compression::None => Message::Text(bytes.clone()),
        _ => Message::Binary(bytes.clone()),
    }
}

/// Checks, outside any timing, that the codec turns every frame of the ring into a dispatch.
fn check_ring(frames: &[Bytes], compression: Compression) {
    let mut c = codec(compression);
    let now = Instant::now();
    for (i, f) in frames.iter().enumerate() {
        let decoded = c.decode(now, frame(f, compression)).expect("decodes");
        match decoded.item {
            Some(GatewayEvent::Dispatch(d)) => assert_eq!(d.seq, i as u64 + 1),
            other => panic!("frame {i}: expected a dispatch, got {other:?}"),
        }
    }
}

/// Times `iters` codec decodes, walking the ring with a fresh codec for each pass.
fn time_codec(frames: &[Bytes], compression: Compression, iters: u64) -> Duration {
    let now = Instant::now();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(frames.len());
        let mut c = codec(compression);
        let start = Instant::now();
        for f in &frames[..n] {
            black_box(c.decode(now, frame(f, compression)).ok());
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

/// Times `iters` decompressions with flate2 driven directly, output into a reused buffer.
///
/// `Decompress::decompress` into an initialized slice, not `decompress_vec`: with flate2's
/// default (miniz_oxide) backend, `decompress_vec` zero-fills the vector's whole spare capacity
/// on every call, which would bill a memset to the baseline.
fn time_inflate(frames: &[Bytes], iters: u64) -> Duration {
    let mut out = vec![0u8; 64 * 1024];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(frames.len());
        let mut inflate = flate2::Decompress::new(true);
        let start = Instant::now();
        for f in &frames[..n] {
            let before = inflate.total_out();
            inflate
                .decompress(f, &mut out, flate2::FlushDecompress::Sync)
                .expect("inflate");
            black_box(inflate.total_out() - before);
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

/// Times `iters` decompressions with zstd driven directly, output into a reused buffer.
fn time_zstd(frames: &[Bytes], iters: u64) -> Duration {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut out = vec![0u8; 64 * 1024];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(frames.len());
        let mut dec = Decoder::new().expect("zstd context");
        let start = Instant::now();
        for f in &frames[..n] {
            let mut input = InBuffer::around(f);
            let mut output = OutBuffer::around(&mut out[..]);
            while input.pos() < f.len() {
                dec.run(&mut input, &mut output).expect("zstd");
            }
            black_box(output.pos());
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

fn decode(c: &mut Criterion) {
    let plain = plain_ring();
    let zlib = compressed_ring(&plain, Compression::ZlibStream);
    let zstd = compressed_ring(&plain, Compression::ZstdStream);
    check_ring(&plain, Compression::None);
    check_ring(&zlib, Compression::ZlibStream);
    check_ring(&zstd, Compression::ZstdStream);

    let mean = |frames: &[Bytes]| frames.iter().map(Bytes::len).sum::<usize>() / frames.len();
    let json_bytes = mean(&plain) as u64;
    println!(
        "ring of {RING} MESSAGE_CREATE dispatches: mean {} B of JSON, {} B zlib-stream, {} B zstd-stream",
        json_bytes,
        mean(&zlib),
        mean(&zstd)
    );

    let mut g = c.benchmark_group("decode_message_create");
    // Throughput in decompressed JSON bytes, so every row reads as MiB/s of gateway JSON.
    g.throughput(Throughput::Bytes(json_bytes));

    g.bench_function("serde_json_value", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(serde_json::from_slice::<serde_json::Value>(m).ok())
        })
    });
    g.bench_function("envelope_serde_json", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(
                serde_json::from_slice::<Wire<'_>>(m)
                    .ok()
                    .map(|e| (e.op, e.s, e.d.map(|d| d.get().len()), e.t.map(|t| t.len()))),
            )
        })
    });
    g.bench_function("utf8_check", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(std::str::from_utf8(m).ok().map(str::len))
        })
    });
    g.bench_function("utf8_check_simd", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(simdutf8::basic::from_utf8(m).ok().map(str::len))
        })
    });
    g.bench_function("envelope_parse", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(Envelope::parse(m).ok().map(|e| e.s))
        })
    });
    g.bench_function("envelope_parse_tail", |b| {
        let mut i = 0;
        b.iter(|| {
            let m = &plain[i % RING];
            i += 1;
            black_box(Envelope::parse_tail(m).ok().map(|e| e.s))
        })
    });
    for (name, frames, compression) in [
        ("plain", &plain, Compression::None),
        ("zlib-stream", &zlib, Compression::ZlibStream),
        ("zstd-stream", &zstd, Compression::ZstdStream),
    ] {
        g.bench_function(BenchmarkId::new("codec", name), |b| {
            b.iter_custom(|iters| time_codec(frames, compression, iters))
        });
    }
    g.bench_function("zlib_inflate_only", |b| {
        b.iter_custom(|iters| time_inflate(&zlib, iters))
    });
    g.bench_function("zstd_decompress_only", |b| {
        b.iter_custom(|iters| time_zstd(&zstd, iters))
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the whole file finishes in about a minute on two cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(4))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode
}
criterion_main!(benches);
