//! Property-based fuzzing of the gateway decoder and the transport decompressors.
//!
//! Inputs: arbitrary bytes as text and binary messages; valid gateway payloads (HELLO, READY,
//! RESUMED, dispatches, op 7, op 9, op 11, op 1) mutated by bit flips, truncation, insertion,
//! deletion and field type swaps; zlib-stream and zstd-stream chunk sequences made with the
//! protocol's own encoders, split at random points and corrupted. Properties:
//!
//! - decoding never panics and always yields `Ok` or a typed [`ProtocolError`];
//! - after an error that does not need a reconnect, the next valid message decodes normally
//!   (nothing is lost, nothing is stuck);
//! - after an error that needs a reconnect, the stream stays refused until the codec is reset,
//!   and a reset codec decodes a fresh stream;
//! - no decompressed message is ever larger than the configured cap (a small one here);
//! - `Envelope::parse`, `Intents::parse` and `Token::new` take arbitrary strings without panic,
//!   and a token never shows in Debug output.
//!
//! Runs are deterministic: a fixed RNG seed, no failure files written. Raise the number of cases
//! by hand with `PROPTEST_CASES=5000 cargo test -p handover-protocol --test fuzz_decode` (and pick
//! another seed with `PROPTEST_RNG_SEED=<n>`).

mod fuzz_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use handover_core::{Codec, Message, OpenMode, Signal, TransportId};
use handover_protocol::{
    Compression, DiscordCodec, Envelope, GatewayConfig, GatewayEvent, Intents, ProtocolError,
    Token, ZLIB_SUFFIX, ZlibStreamDecoder, ZlibStreamEncoder, ZstdStreamDecoder, ZstdStreamEncoder,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 512;

/// The seed used unless `PROPTEST_RNG_SEED` says otherwise, so CI runs are reproducible.
const DEFAULT_SEED: u64 = 0x6465_636f_6465_7221;

/// A small decompression cap, so that bombs and oversize messages are cheap to make.
const CAP: usize = 2048;

fn proptest_config() -> ProptestConfig {
    fuzz_common::proptest_config(DEFAULT_CASES, DEFAULT_SEED, 4096)
}

fn codec(compression: Compression) -> DiscordCodec {
    let token = Token::new("fuzz.token.value").expect("a valid token");
    let mut cfg = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    cfg.compression = compression;
    cfg.max_decompressed_bytes = CAP;
    let mut codec = DiscordCodec::new(cfg).expect("a valid configuration");
    codec.reset(TransportId(1), OpenMode::Identify);
    codec
}

/// Valid gateway payloads of every kind a client receives.
fn templates() -> Vec<Value> {
    vec![
        json!({"op": 10, "d": {"heartbeat_interval": 41250, "_trace": ["gw"]}, "s": null, "t": null}),
        json!({"op": 0, "s": 1, "t": "READY", "d": {
            "v": 10, "session_id": "0123456789abcdef", "resume_gateway_url": "wss://resume.example",
            "user": {"id": "42", "bot": true}, "guilds": [{"id": "7", "unavailable": true}],
            "shard": [0, 1]
        }}),
        json!({"op": 0, "s": 2, "t": "MESSAGE_CREATE", "d": {"id": "1", "content": "hi \u{1F600}"}}),
        json!({"op": 0, "s": 3, "t": "GUILD_CREATE", "d": {"id": "7", "members": [], "name": "g"}}),
        json!({"op": 0, "s": 9, "t": "RESUMED", "d": {"_trace": ["gw"]}}),
        json!({"op": 7, "d": null}),
        json!({"op": 9, "d": true}),
        json!({"op": 9, "d": false}),
        json!({"op": 11}),
        json!({"op": 1, "d": null}),
    ]
}

/// A message the codec must always decode the same way when its stream is healthy.
const PROBE: &[u8] = br#"{"op":11,"d":null}"#;

fn check_probe(
    result: Result<handover_core::Decoded<GatewayEvent>, ProtocolError>,
) -> Result<(), TestCaseError> {
    let decoded = result.map_err(|e| TestCaseError::fail(format!("probe failed: {e}")))?;
    prop_assert_eq!(decoded.signal, Some(Signal::HeartbeatAck));
    prop_assert!(decoded.item.is_none());
    Ok(())
}

/// Whatever came out of one decode stays within the cap.
fn check_decoded(
    result: &Result<handover_core::Decoded<GatewayEvent>, ProtocolError>,
) -> Result<(), TestCaseError> {
    if let Ok(d) = result {
        match &d.item {
            Some(GatewayEvent::Dispatch(x)) => prop_assert!(x.data.len() <= CAP),
            Some(GatewayEvent::Ready(x)) => prop_assert!(x.data.len() <= CAP),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Huge,
    Str(String),
    Array,
    Object,
}

impl Kind {
    fn value(&self) -> Value {
        match self {
            Kind::Null => Value::Null,
            Kind::Bool(b) => json!(b),
            Kind::Int(n) => json!(n),
            Kind::Float(f) => json!(f),
            Kind::Huge => serde_json::from_str("123456789012345678901234567890")
                .expect("a big number is valid json"),
            Kind::Str(s) => json!(s),
            Kind::Array => json!([1, "two", null]),
            Kind::Object => json!({"k": [{}]}),
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Null),
        any::<bool>().prop_map(Kind::Bool),
        prop_oneof![
            any::<i64>(),
            Just(-1i64),
            Just(0),
            Just(u32::MAX as i64 + 1)
        ]
        .prop_map(Kind::Int),
        prop_oneof![Just(1.5f64), Just(-0.0), Just(1e300)].prop_map(Kind::Float),
        Just(Kind::Huge),
        prop_oneof![
            Just(String::new()),
            Just("READY".to_owned()),
            Just("RESUMED".to_owned()),
            "\\PC{0,12}"
        ]
        .prop_map(Kind::Str),
        Just(Kind::Array),
        Just(Kind::Object),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at the `n`th path of the JSON tree (any depth) with another type.
    Swap(Index, Kind),
    /// Remove the `n`th object member.
    Remove(Index),
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pieces = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..4),
        prop_oneof![
            Just(&b"{"[..]),
            Just(&b"}"[..]),
            Just(&b"\""[..]),
            Just(&b","[..]),
            Just(&b"\\u"[..]),
            Just(&b"\\ud800"[..]),
            Just(&b"null"[..]),
            Just(&b"1e999"[..]),
            Just(&b"[[[[[[[[[["[..]),
        ]
        .prop_map(<[u8]>::to_vec),
    ];
    prop_oneof![
        3 => (any::<Index>(), kind()).prop_map(|(i, k)| Mutation::Swap(i, k)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), pieces).prop_map(|(i, p)| Mutation::Insert(i, p)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

/// Every value in the tree, as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// Applies the mutations: the JSON ones to the tree first, then the byte ones to its text.
fn mutate(template: &Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut v = template.clone();
    for m in mutations {
        let mut paths = Vec::new();
        pointers(&v, String::new(), &mut paths);
        if paths.is_empty() {
            continue;
        }
        match m {
            Mutation::Swap(i, k) => {
                if let Some(slot) = v.pointer_mut(i.get(&paths).as_str()) {
                    *slot = k.value();
                }
            }
            Mutation::Remove(i) => {
                let path = i.get(&paths);
                let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
                if let Some(Value::Object(obj)) = v.pointer_mut(parent) {
                    obj.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
            }
            _ => {}
        }
    }
    let mut bytes = serde_json::to_vec(&v).expect("a value serializes");
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Insert(i, piece) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                let end = (at + 1 + n.index(8)).min(len);
                bytes.drain(at..end);
            }
            _ => {}
        }
    }
    bytes
}

fn as_message(bytes: Vec<u8>, prefer_text: bool) -> Message {
    match String::from_utf8(bytes) {
        Ok(s) if prefer_text => Message::text(s),
        Ok(s) => Message::Binary(Bytes::from(s.into_bytes())),
        Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
    }
}

fn mutated_payload() -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), prop::collection::vec(mutation(), 0..5)).prop_map(|(t, ms)| {
        let templates = templates();
        mutate(t.get(&templates), &ms)
    })
}

/// How a valid compressed stream gets damaged.
#[derive(Debug, Clone)]
enum Damage {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// Replace the chunk with arbitrary bytes.
    Replace(Vec<u8>),
    /// Drop the chunk entirely (a lost frame).
    Drop,
    /// Send the chunk twice.
    Repeat,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Damage::Flip(i, b)),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(i, p)| Damage::Insert(i, p)),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(ZLIB_SUFFIX.to_vec()),
            Just([&[0x78, 0x9c][..], &ZLIB_SUFFIX].concat()),
        ]
        .prop_map(Damage::Replace),
        1 => Just(Damage::Drop),
        1 => Just(Damage::Repeat),
    ]
}

fn damaged(chunk: &[u8], d: &Damage) -> Vec<Vec<u8>> {
    let mut c = chunk.to_vec();
    match d {
        Damage::Flip(i, bit) if !c.is_empty() => {
            let at = i.index(c.len());
            c[at] ^= 1 << bit;
        }
        Damage::Truncate(i) => c.truncate(i.index(c.len() + 1)),
        Damage::Insert(i, p) => {
            let at = i.index(c.len() + 1);
            c.splice(at..at, p.iter().copied());
        }
        Damage::Replace(p) => c = p.clone(),
        Damage::Drop => return Vec::new(),
        Damage::Repeat => return vec![c.clone(), c],
        _ => {}
    }
    vec![c]
}

/// A message of `n` bytes that compresses well (a bomb when `n` is above the cap).
fn big_dispatch(n: usize) -> Vec<u8> {
    let head = br#"{"op":0,"s":5,"t":"BIG","d":""#;
    let tail = br#""}"#;
    let mut v = head.to_vec();
    v.resize(n.saturating_sub(tail.len()).max(head.len()), b'a');
    v.extend_from_slice(tail);
    v
}

/// Messages for a compressed stream: mutated payloads (mostly small) and some large ones.
///
/// Never empty: `ZlibStreamEncoder::compress(b"")` after an earlier message returns no bytes at
/// all (deflate has nothing to flush), not a frame ending with the suffix, so there would be no
/// frame to send. A gateway never sends an empty message.
fn stream_messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            6 => mutated_payload().prop_filter("an empty message has no frame", |m| !m.is_empty()),
            1 => (CAP / 2..CAP * 3).prop_map(big_dispatch),
        ],
        1..8,
    )
}

/// Splits every compressed message into frames at the given cut points.
///
/// A cut right after a `00 00 FF FF` inside the compressed bytes is skipped: zlib-stream marks
/// the end of a message by a frame ending with the suffix, so such a frame ends the message by
/// the protocol's own rule (a sender never cuts a frame there; the encoder emits exactly one
/// marker per message, see `zlib_encoder_emits_exactly_one_sync_marker_per_message`).
fn split(chunk: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c.index(chunk.len() + 1))
        .filter(|&cut| !chunk[..cut].ends_with(&ZLIB_SUFFIX))
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in at {
        if cut > start {
            out.push(chunk[start..cut].to_vec());
            start = cut;
        }
    }
    if start < chunk.len() || out.is_empty() {
        out.push(chunk[start..].to_vec());
    }
    out
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Arbitrary bytes, as text (when UTF-8) and as binary, on an uncompressed codec.
    #[test]
    fn arbitrary_messages_never_panic_and_keep_the_codec_usable(
        messages in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..96), any::<bool>()),
            1..12,
        ),
    ) {
        let mut codec = codec(Compression::None);
        let now = Instant::now();
        for (bytes, text) in messages {
            let result = codec.decode(now, as_message(bytes, text));
            check_decoded(&result)?;
            if let Err(e) = result {
                prop_assert!(!e.needs_reconnect(), "plain json cannot poison: {e}");
                check_probe(codec.decode(now, Message::Text(Bytes::from_static(PROBE))))?;
            }
        }
        check_probe(codec.decode(now, Message::Binary(Bytes::from_static(PROBE))))?;
    }

    /// Valid payloads of every kind, mutated; every error leaves the codec usable.
    #[test]
    fn mutated_payloads_decode_or_fail_typed(
        payloads in prop::collection::vec((mutated_payload(), any::<bool>()), 1..10),
    ) {
        let mut codec = codec(Compression::None);
        let now = Instant::now();
        for (bytes, text) in payloads {
            let result = codec.decode(now, as_message(bytes, text));
            check_decoded(&result)?;
            match result {
                Ok(d) => {
                    if let Some(Signal::Hello { interval }) = d.signal {
                        prop_assert!(interval <= Duration::from_millis(u64::MAX));
                    }
                }
                Err(e) => {
                    prop_assert!(!e.needs_reconnect(), "plain json cannot poison: {e}");
                    prop_assert!(!e.to_string().contains("fuzz.token.value"));
                    check_probe(codec.decode(now, Message::Text(Bytes::from_static(PROBE))))?;
                }
            }
        }
    }

    /// A valid zlib stream of (possibly malformed) payloads, split into frames at random
    /// points: every message within the cap decodes exactly, larger ones fail typed and poison
    /// the stream, JSON errors lose nothing.
    #[test]
    fn split_zlib_streams_round_trip_within_the_cap(
        messages in stream_messages(),
        cuts in prop::collection::vec(prop::collection::vec(any::<Index>(), 0..4), 8),
    ) {
        let mut enc = ZlibStreamEncoder::new();
        let mut dec = ZlibStreamDecoder::new(CAP);
        let mut codec = codec(Compression::ZlibStream);
        let now = Instant::now();
        for (msg, cuts) in messages.iter().zip(&cuts) {
            let compressed = enc.compress(msg);
            let frames = split(&compressed, cuts);
            let last = frames.len() - 1;
            for (i, frame) in frames.into_iter().enumerate() {
                let raw = dec.push(&frame);
                let result = codec.decode(now, Message::Binary(Bytes::from(frame)));
                check_decoded(&result)?;
                if msg.len() > CAP {
                    // Refused once the cap is crossed (while buffering or inflating).
                    if let Err(e) = &raw {
                        prop_assert_eq!(e, &ProtocolError::DecompressedTooLarge { limit: CAP });
                        prop_assert_eq!(result.as_ref().err(), Some(e));
                        // Poisoned: the rest of the stream is refused until a reset.
                        let again = enc.compress(PROBE);
                        prop_assert_eq!(dec.push(&again), Err(ProtocolError::StreamPoisoned));
                        prop_assert_eq!(
                            codec.decode(now, Message::Binary(Bytes::from(again))).err(),
                            Some(ProtocolError::StreamPoisoned)
                        );
                        return Ok(());
                    }
                    prop_assert!(i < last, "an oversize message was delivered");
                    continue;
                }
                if i < last {
                    prop_assert_eq!(raw, Ok(None));
                    prop_assert_eq!(result, Ok(handover_core::Decoded::nothing()));
                } else {
                    prop_assert_eq!(raw.as_ref().ok(), Some(&Some(msg.clone())));
                    if let Err(e) = result {
                        prop_assert!(!e.needs_reconnect(), "a valid stream poisoned: {e}");
                    }
                }
            }
        }
        let probe = enc.compress(PROBE);
        prop_assert_eq!(dec.push(&probe).ok(), Some(Some(PROBE.to_vec())));
        check_probe(codec.decode(now, Message::Binary(Bytes::from(probe))))?;
    }

    /// The same for zstd-stream (one message per frame).
    #[test]
    fn zstd_streams_round_trip_within_the_cap(messages in stream_messages()) {
        let mut enc = ZstdStreamEncoder::new().expect("a zstd context");
        let mut dec = ZstdStreamDecoder::new(CAP).expect("a zstd context");
        let mut codec = codec(Compression::ZstdStream);
        let now = Instant::now();
        for msg in &messages {
            let frame = enc.compress(msg).expect("compressible");
            let raw = dec.push(&frame);
            let result = codec.decode(now, Message::Binary(Bytes::from(frame)));
            check_decoded(&result)?;
            if msg.len() > CAP {
                let limit = ProtocolError::DecompressedTooLarge { limit: CAP };
                prop_assert_eq!(raw.as_ref().err(), Some(&limit));
                prop_assert_eq!(result.err(), Some(limit));
                let again = enc.compress(PROBE).expect("compressible");
                prop_assert_eq!(dec.push(&again), Err(ProtocolError::StreamPoisoned));
                return Ok(());
            }
            prop_assert_eq!(raw.as_ref().ok(), Some(msg));
            if let Err(e) = result {
                prop_assert!(!e.needs_reconnect(), "a valid stream poisoned: {e}");
            }
        }
        let probe = enc.compress(PROBE).expect("compressible");
        check_probe(codec.decode(now, Message::Binary(Bytes::from(probe))))?;
    }

    /// Damaged zlib streams (flipped, cut, padded, replaced, lost and repeated frames):
    /// typed errors, nothing over the cap, poisoned after a stream error, usable after reset.
    #[test]
    fn damaged_zlib_streams_fail_typed_and_recover_after_reset(
        messages in stream_messages(),
        damages in prop::collection::vec(prop::option::weighted(0.3, damage()), 8),
    ) {
        let mut enc = ZlibStreamEncoder::new();
        let frames: Vec<Vec<u8>> = messages
            .iter()
            .zip(&damages)
            .flat_map(|(m, d)| {
                let c = enc.compress(m);
                match d {
                    Some(d) => damaged(&c, d),
                    None => vec![c],
                }
            })
            .collect();
        run_damaged(Compression::ZlibStream, &frames)?;
    }

    /// Damaged zstd streams, the same properties.
    #[test]
    fn damaged_zstd_streams_fail_typed_and_recover_after_reset(
        messages in stream_messages(),
        damages in prop::collection::vec(prop::option::weighted(0.3, damage()), 8),
    ) {
        let mut enc = ZstdStreamEncoder::new().expect("a zstd context");
        let mut frames = Vec::new();
        for (m, d) in messages.iter().zip(&damages) {
            let c = enc.compress(m).expect("compressible");
            match d {
                Some(d) => frames.extend(damaged(&c, d)),
                None => frames.push(c),
            }
        }
        run_damaged(Compression::ZstdStream, &frames)?;
    }

    /// Arbitrary binary frames straight into both decompressors.
    #[test]
    fn arbitrary_frames_into_the_decompressors(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8),
    ) {
        let mut zlib = ZlibStreamDecoder::new(CAP);
        let mut zstd = ZstdStreamDecoder::new(CAP).expect("a zstd context");
        let (mut zlib_dead, mut zstd_dead) = (false, false);
        for f in &frames {
            match zlib.push(f) {
                Ok(out) => {
                    prop_assert!(!zlib_dead, "zlib decoded after a stream error");
                    prop_assert!(out.is_none_or(|o| o.len() <= CAP));
                }
                Err(e) => {
                    prop_assert!(e.needs_reconnect(), "untyped zlib failure: {e}");
                    zlib_dead = true;
                }
            }
            match zstd.push(f) {
                Ok(out) => {
                    prop_assert!(!zstd_dead, "zstd decoded after a stream error");
                    prop_assert!(out.len() <= CAP);
                }
                Err(e) => {
                    prop_assert!(e.needs_reconnect(), "untyped zstd failure: {e}");
                    zstd_dead = true;
                }
            }
        }
    }

    /// The envelope parser, the intents parser and the token check on arbitrary strings.
    #[test]
    fn parsers_take_arbitrary_strings(s in "\\PC{0,40}|[ -~]{0,40}|\\PC*") {
        match Envelope::parse(s.as_bytes()) {
            Ok(env) => {
                prop_assert!(s.trim_start().starts_with('{'), "parsed a non-object");
                if let Err(e) = env.opcode() {
                    prop_assert_eq!(e, ProtocolError::UnknownOpcode { op: env.op });
                }
            }
            Err(e) => prop_assert!(!e.needs_reconnect()),
        }
        if let Ok(bits) = s.trim().parse::<u64>() {
            prop_assert_eq!(Intents::parse(&s), Some(Intents::from_bits_retain(bits)));
        } else {
            let _ = Intents::parse(&s);
        }
        let valid = !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        match Token::new(s.clone()) {
            Ok(t) => {
                prop_assert!(valid);
                prop_assert!(t.matches(&s));
                let shown = format!("{t:?} {t}");
                prop_assert!(s.len() < 4 || !shown.contains(&s), "token shown: {shown}");
            }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert!(s.len() < 4 || !e.to_string().contains(&s));
            }
        }
    }
}

/// Feeds damaged frames to a compressed codec and its bare decoder; checks the error
/// discipline, then that a reset brings a fresh stream back.
fn run_damaged(compression: Compression, frames: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut codec = codec(compression);
    let now = Instant::now();
    let mut poisoned = false;
    for f in frames {
        let result = codec.decode(now, Message::Binary(Bytes::copy_from_slice(f)));
        check_decoded(&result)?;
        match result {
            Ok(_) => prop_assert!(!poisoned, "decoded after a stream error"),
            Err(e) if e.needs_reconnect() => {
                if poisoned {
                    prop_assert_eq!(e, ProtocolError::StreamPoisoned);
                }
                poisoned = true;
            }
            Err(e) => prop_assert!(!poisoned, "a json error after a stream error: {e}"),
        }
    }
    // A text message never touches the decompressor.
    check_probe(codec.decode(now, Message::Text(Bytes::from_static(PROBE))))?;
    codec.reset(TransportId(2), OpenMode::Identify);
    let probe = match compression {
        Compression::ZlibStream => ZlibStreamEncoder::new().compress(PROBE),
        _ => ZstdStreamEncoder::new()
            .and_then(|mut e| e.compress(PROBE))
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
    };
    check_probe(codec.decode(now, Message::Binary(Bytes::from(probe))))
}

/// Every template decodes to what it means when unmutated, so the mutations start from
/// meaningful payloads.
#[test]
fn templates_decode_to_their_meaning() {
    let mut codec = codec(Compression::None);
    let now = Instant::now();
    let mut signals = Vec::new();
    let mut items = Vec::new();
    for t in templates() {
        let bytes = serde_json::to_vec(&t).expect("serializes");
        let d = codec
            .decode(now, Message::Binary(Bytes::from(bytes)))
            .expect("a template decodes");
        signals.push(d.signal);
        items.push(match d.item {
            None => "none",
            Some(GatewayEvent::Ready(_)) => "ready",
            Some(GatewayEvent::Resumed(_)) => "resumed",
            Some(GatewayEvent::Dispatch(_)) => "dispatch",
            Some(_) => "other",
        });
    }
    assert_eq!(
        signals,
        [
            Some(Signal::Hello {
                interval: Duration::from_millis(41250)
            }),
            Some(Signal::HandshakeAccepted { resumed: false }),
            None,
            None,
            Some(Signal::HandshakeAccepted { resumed: true }),
            Some(Signal::ReconnectRequested),
            Some(Signal::SessionInvalidated { resumable: true }),
            Some(Signal::SessionInvalidated { resumable: false }),
            Some(Signal::HeartbeatAck),
            Some(Signal::HeartbeatRequested),
        ]
    );
    assert_eq!(
        items,
        [
            "none", "ready", "dispatch", "dispatch", "resumed", "none", "none", "none", "none",
            "none"
        ]
    );
}

/// The zlib encoder has no frame for an empty message after an earlier one (see
/// `stream_messages`); pinned so the generator's constraint is revisited if that changes.
#[test]
fn zlib_encoder_has_no_frame_for_an_empty_message() {
    let mut enc = ZlibStreamEncoder::new();
    assert!(enc.compress(PROBE).ends_with(&ZLIB_SUFFIX));
    assert!(enc.compress(b"").is_empty());
}

/// The cap is enforced for a message split across many frames and for a bomb in one frame.
#[test]
fn bombs_are_refused_at_the_cap() {
    let bomb = big_dispatch(CAP * 64);
    let mut enc = ZlibStreamEncoder::new();
    let compressed = enc.compress(&bomb);
    assert!(compressed.len() < CAP, "the bomb compresses below the cap");
    let mut zlib_codec = codec(Compression::ZlibStream);
    assert_eq!(
        zlib_codec
            .decode(Instant::now(), Message::Binary(Bytes::from(compressed)))
            .err(),
        Some(ProtocolError::DecompressedTooLarge { limit: CAP })
    );
    let mut zstd = ZstdStreamEncoder::new().expect("a zstd context");
    let mut zstd_codec = codec(Compression::ZstdStream);
    assert_eq!(
        zstd_codec
            .decode(
                Instant::now(),
                Message::Binary(Bytes::from(zstd.compress(&bomb).expect("compressible")))
            )
            .err(),
        Some(ProtocolError::DecompressedTooLarge { limit: CAP })
    );
}
