//! Property-based fuzzing of the frame reader (`handover_transport_ws::frame`), the code that
//! reads what the network sends.
//!
//! Inputs: sequences of frames a server may send (text, binary, ping, pong, close; messages
//! fragmented with control frames between the fragments), written by tungstenite's
//! `Frame::format` as the reference encoder, then cut into arbitrary chunks; the same bytes
//! mutated (bit flips, truncation, insertion); and arbitrary bytes. Properties:
//!
//! - the reader never panics and yields either messages or a typed `FrameError`;
//! - whatever the chunks, a valid sequence comes out as exactly the messages and control frames
//!   that went in, in order, and nothing is left over;
//! - the reader never asks for more than the frame at hand needs, and never holds a message
//!   over the limit.
//!
//! Deterministic: a fixed seed, no failure files. `PROPTEST_CASES=5000 cargo test -p
//! handover-transport-ws --test fuzz_frames` runs longer by hand.

#[path = "../../protocol/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use bytes::{Bytes, BytesMut};
use handover_transport_ws::frame::{FrameReader, Incoming, Role};
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

const MAX: usize = 4096;

fn config() -> ProptestConfig {
    fuzz_common::proptest_config(512, 0x6672_616d_6573_2121, 2048)
}

/// One thing a server sends.
#[derive(Debug, Clone)]
enum Sent {
    /// A text or binary message, cut into this many fragments.
    Message {
        text: bool,
        payload: Vec<u8>,
        fragments: usize,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        4 => (any::<bool>(), "[ -~é€😀]{0,300}", 1usize..5).prop_map(|(text, s, fragments)| {
            Sent::Message { text, payload: s.into_bytes(), fragments }
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Sent::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Sent::Pong),
        1 => prop_oneof![Just(None), Just(Some(1000)), Just(Some(4004)), (3000u16..5000).prop_map(Some)]
            .prop_map(Sent::Close),
    ]
}

/// The wire bytes of `items` (server frames, unmasked) and what the reader must yield. A ping
/// goes between the first two fragments of each fragmented message.
fn wire(items: &[Sent]) -> (Vec<u8>, Vec<Incoming>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    let put = |out: &mut Vec<u8>, f: Frame| f.format(out).expect("formats into memory");
    for item in items {
        match item {
            Sent::Message {
                text,
                payload,
                fragments,
            } => {
                let parts = (*fragments).min(payload.len().max(1));
                let size = payload.len().div_ceil(parts).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&[][..]]
                } else {
                    payload.chunks(size).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let opcode = match (i, text) {
                        (0, true) => OpCode::Data(Data::Text),
                        (0, false) => OpCode::Data(Data::Binary),
                        _ => OpCode::Data(Data::Continue),
                    };
                    put(
                        &mut out,
                        Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len()),
                    );
                    if i == 0 && chunks.len() > 1 {
                        put(&mut out, Frame::ping(b"mid".to_vec()));
                        want.push(Incoming::Ping(Bytes::from_static(b"mid")));
                    }
                }
                let bytes = Bytes::from(payload.clone());
                want.push(if *text {
                    Incoming::Text(bytes)
                } else {
                    Incoming::Binary(bytes)
                });
            }
            Sent::Ping(p) => {
                put(&mut out, Frame::ping(p.clone()));
                want.push(Incoming::Ping(Bytes::from(p.clone())));
            }
            Sent::Pong(p) => {
                put(&mut out, Frame::pong(p.clone()));
                want.push(Incoming::Pong);
            }
            Sent::Close(code) => {
                let frame = code.map(|c| CloseFrame {
                    code: CloseCode::from(c),
                    reason: "bye".into(),
                });
                put(&mut out, Frame::close(frame));
                want.push(Incoming::Close(*code));
            }
        }
    }
    (out, want)
}

/// Feeds `bytes` in chunks cut at `cuts` (fractions of the length); returns what came out
/// and whether it ended in an error.
fn feed(bytes: &[u8], cuts: &[usize]) -> (Vec<Incoming>, bool, usize) {
    let mut reader = FrameReader::new(Role::Client, MAX, MAX);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        loop {
            match reader.read(&mut buf) {
                Ok(Some(m)) => {
                    if let Incoming::Text(b) | Incoming::Binary(b) = &m {
                        assert!(b.len() <= MAX, "a message over the limit came out");
                    }
                    got.push(m);
                }
                Ok(None) => {
                    assert!(
                        reader.needed() == 0 || reader.needed() > buf.len(),
                        "asked for bytes it already had"
                    );
                    assert!(
                        reader.needed() <= MAX + 14,
                        "asked for {} bytes",
                        reader.needed()
                    );
                    break;
                }
                Err(_) => return (got, true, buf.len()),
            }
        }
    }
    (got, false, buf.len())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_frames_come_out_whole_however_they_are_cut(
        items in proptest::collection::vec(sent(), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let (bytes, want) = wire(&items);
        let (got, failed, left) = feed(&bytes, &cuts);
        prop_assert!(!failed, "valid frames refused");
        prop_assert_eq!(left, 0);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn mutated_frames_never_panic(
        items in proptest::collection::vec(sent(), 1..6),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
        insert in proptest::collection::vec(any::<u8>(), 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let (mut bytes, _) = wire(&items);
        for (at, bits) in flips {
            let n = bytes.len();
            bytes[at % n] ^= bits;
        }
        let at = cut % (bytes.len() + 1);
        bytes.splice(at..at, insert);
        bytes.truncate(bytes.len() - cut % 3);
        let _ = feed(&bytes, &cuts);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = feed(&bytes, &cuts);
    }
}

#[test]
fn a_masked_server_frame_and_reserved_opcodes_are_refused() {
    // One valid text frame, then the same masked: the first comes out, the second is an error.
    let mut bytes = Vec::new();
    Frame::message(b"ok".to_vec(), OpCode::Data(Data::Text), true)
        .format(&mut bytes)
        .expect("formats into memory");
    let mut masked = Frame::message(b"no".to_vec(), OpCode::Data(Data::Text), true);
    masked.header_mut().mask = Some([1, 2, 3, 4]);
    masked.format(&mut bytes).expect("formats into memory");
    let (got, failed, _) = feed(&bytes, &[]);
    assert_eq!(got, vec![Incoming::Text(Bytes::from_static(b"ok"))]);
    assert!(failed);
    for opcode in [3u8, 7, 0xb, 0xf] {
        let (got, failed, _) = feed(&[0x80 | opcode, 0], &[]);
        assert!(got.is_empty() && failed, "opcode {opcode}");
    }
}
