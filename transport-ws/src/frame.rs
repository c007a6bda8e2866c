//! WebSocket framing (RFC 6455, section 5) for one end of an open connection, without I/O.
//!
//! [`FrameReader`] cuts whole messages and control frames out of a receive buffer that its
//! caller fills; [`encode`] appends one frame to a send buffer. Frame headers are read and
//! written here, in a few lines over a byte slice (tungstenite's `FrameHeader` reads them
//! through `io::Read` one field at a time, a cost paid per message; the tests hold both to the
//! same result for every first two bytes, length form and cut). Beyond headers, this module is
//! the message layer the transport needs and tungstenite's `WebSocket` did in its own way:
//! payloads are `Bytes` cut from the caller's buffer (no copy, no zero-filled receive buffer),
//! text is checked for UTF-8 once (with `simdutf8`), and the caller owns the buffer, so it can
//! let it go whenever the socket has nothing more to read (an idle connection then holds no
//! receive buffer at all).
//!
//! Checked on every frame, as the RFC requires of both ends: reserved bits clear (no
//! extension is negotiated), no reserved opcode, the mask present exactly when the sender is
//! a client, control frames final and at most 125 bytes, continuations only inside a
//! fragmented message and no new message inside one, close payloads empty or a valid code and
//! UTF-8 reason, text valid UTF-8. Sizes are checked from the header, before the payload
//! arrives, so a hostile length never allocates.

use bytes::{Buf, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Which end of the connection the reader or writer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The connecting end: sends masked frames, receives unmasked ones.
    Client,
    /// The accepting end: sends unmasked frames, receives masked ones.
    Server,
}

/// A whole message or a control frame, as [`FrameReader::read`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A text message (all its fragments), checked to be UTF-8.
    Text(Bytes),
    /// A binary message (all its fragments).
    Binary(Bytes),
    /// A ping with its payload; the pong must echo it.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with its code, if it carried one.
    Close(Option<u16>),
}

/// A frame that breaks the protocol or a size limit. The connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A reserved bit is set, but no extension was negotiated.
    #[error("websocket frame with a reserved bit set")]
    ReservedBits,
    /// The opcode is one the RFC reserves.
    #[error("websocket frame with a reserved opcode")]
    ReservedOpcode,
    /// A server sent a masked frame, or a client an unmasked one.
    #[error("websocket frame masked the wrong way for its sender")]
    Mask,
    /// A control frame was fragmented or longer than 125 bytes.
    #[error("websocket control frame fragmented or longer than 125 bytes")]
    BadControl,
    /// A continuation frame arrived outside a fragmented message.
    #[error("websocket continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// A new message started before the fragmented one before it ended.
    #[error("websocket message started inside a fragmented message")]
    UnfinishedMessage,
    /// A close frame's payload is one byte, or its code is not one an endpoint may send.
    #[error("websocket close frame with an invalid payload")]
    BadClose,
    /// A text message or a close reason is not valid UTF-8.
    #[error("websocket text is not valid utf-8")]
    InvalidUtf8,
    /// A frame's payload is longer than the frame limit.
    #[error("websocket frame of {size} bytes, limit {max}")]
    FrameTooLarge {
        /// The announced payload length (saturated to `usize`).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A message (its fragments together) is longer than the message limit.
    #[error("websocket message of {size} bytes, limit {max}")]
    MessageTooLarge {
        /// The length with this frame (saturated to `usize`).
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A frame header as the wire has it (RFC 6455, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// FIN: the last frame of its message.
    is_final: bool,
    /// Any of RSV1-3 set.
    reserved_bits: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    /// The payload length announced (the 64-bit form is taken as written).
    length: u64,
    /// Bytes of the header itself: 2, plus 2 or 8 of extended length, plus 4 of mask key.
    size: usize,
}

/// Reads the frame header at the start of `buf`: `Ok(None)` while it is incomplete, whatever
/// its content (an opcode is refused only once the whole header is there).
fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [first, second, rest @ ..] = buf else {
        return Ok(None);
    };
    let (length, rest, mut size) = match second & 0x7F {
        126 => match rest {
            [a, b, rest @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), rest, 4),
            _ => return Ok(None),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((len, rest)) => (u64::from_be_bytes(*len), rest, 10),
            None => return Ok(None),
        },
        short => (u64::from(short), rest, 2),
    };
    let mask = if second & 0x80 != 0 {
        match rest.first_chunk::<4>() {
            Some(key) => {
                size += 4;
                Some(*key)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    let opcode = OpCode::from(first & 0x0F);
    if matches!(
        opcode,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_))
    ) {
        return Err(FrameError::ReservedOpcode);
    }
    Ok(Some(Header {
        is_final: first & 0x80 != 0,
        reserved_bits: first & 0x70 != 0,
        opcode,
        mask,
        length,
        size,
    }))
}

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask key.
const MAX_HEADER: usize = 14;

/// Appends the header of a final frame: `opcode`, `len` bytes of payload in the shortest
/// length form, and `mask`'s key if any.
fn write_header(out: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    out.extend_from_slice(&[0x80 | opcode]);
    match len {
        // Each arm's range fits the byte or integer it is written as.
        0..=125 => out.extend_from_slice(&[masked | len as u8]),
        126..=0xFFFF => {
            out.extend_from_slice(&[masked | 126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[masked | 127]);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: BytesMut,
}

/// Cuts messages out of a receive buffer. See the [module docs](self).
#[derive(Debug)]
pub struct FrameReader {
    role: Role,
    max_frame: usize,
    max_message: usize,
    partial: Option<Partial>,
    /// Bytes the frame at the head of the buffer needs in all, once its header has been read.
    needed: usize,
}

impl FrameReader {
    /// A reader for the `role` end, refusing frames longer than `max_frame` and messages longer
    /// than `max_message` bytes of payload.
    pub fn new(role: Role, max_frame: usize, max_message: usize) -> Self {
        FrameReader {
            role,
            max_frame,
            max_message,
            partial: None,
            needed: 0,
        }
    }

    /// How many bytes the buffer must hold for the frame at its head to be complete, when its
    /// header has been read (0 otherwise). A caller reserves this much before its next read,
    /// so a large frame is received into one allocation.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Whether a fragmented message is being put together (its fragments so far are held).
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Cuts the next message or control frame from the head of `buf`: `Ok(None)` when `buf`
    /// holds no whole one yet (nothing is consumed but complete fragments). Payloads share
    /// `buf`'s allocation. After an error the connection must be dropped.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        // Bounded: every pass consumes one whole frame of `buf` or returns.
        loop {
            let Some(header) = parse_header(buf)? else {
                return Ok(None);
            };
            let head = header.size;
            let size = usize::try_from(header.length).unwrap_or(usize::MAX);
            if header.reserved_bits {
                return Err(FrameError::ReservedBits);
            }
            if header.mask.is_some() != (self.role == Role::Server) {
                return Err(FrameError::Mask);
            }
            match header.opcode {
                OpCode::Control(_) if !header.is_final || size > 125 => {
                    return Err(FrameError::BadControl);
                }
                OpCode::Control(_) => {}
                OpCode::Data(_) => {
                    if size > self.max_frame {
                        return Err(FrameError::FrameTooLarge {
                            size,
                            max: self.max_frame,
                        });
                    }
                    let so_far = self.partial.as_ref().map_or(0, |p| p.payload.len());
                    if so_far.saturating_add(size) > self.max_message {
                        return Err(FrameError::MessageTooLarge {
                            size: so_far.saturating_add(size),
                            max: self.max_message,
                        });
                    }
                }
            }
            let total = head + size;
            if buf.len() < total {
                self.needed = total;
                return Ok(None);
            }
            self.needed = 0;
            buf.advance(head);
            let mut payload = buf.split_to(size);
            if let Some(mask) = header.mask {
                apply_mask(&mut payload, mask);
            }
            match header.opcode {
                OpCode::Data(Data::Continue) => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(FrameError::UnexpectedContinuation);
                    };
                    partial.payload.extend_from_slice(&payload);
                    if header.is_final
                        && let Some(Partial { text, payload }) = self.partial.take()
                    {
                        return message(text, payload).map(Some);
                    }
                }
                OpCode::Data(data) => {
                    if self.partial.is_some() {
                        return Err(FrameError::UnfinishedMessage);
                    }
                    let text = data == Data::Text;
                    if header.is_final {
                        return message(text, payload).map(Some);
                    }
                    self.partial = Some(Partial { text, payload });
                }
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(Incoming::Ping(payload.freeze())));
                }
                OpCode::Control(Control::Pong) => return Ok(Some(Incoming::Pong)),
                OpCode::Control(Control::Close) => return close(&payload).map(Some),
                // `parse_header` refuses reserved opcodes.
                OpCode::Control(Control::Reserved(_)) => return Err(FrameError::ReservedOpcode),
            }
        }
    }
}

/// A whole data message.
fn message(text: bool, payload: BytesMut) -> Result<Incoming, FrameError> {
    if !text {
        return Ok(Incoming::Binary(payload.freeze()));
    }
    if simdutf8::basic::from_utf8(&payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(Incoming::Text(payload.freeze()))
}

/// A close frame's payload: nothing, or a code an endpoint may send and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Incoming, FrameError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(FrameError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(FrameError::BadClose);
            }
            if simdutf8::basic::from_utf8(reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

/// XORs `payload` with the 4-byte `mask` (masking and unmasking are the same).
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// What [`encode`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A text message (the caller vouches for its UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// A pong.
    Pong,
    /// A close frame (the payload is the code and reason, or empty).
    Close,
}

/// Appends one final frame of `kind` with `payload` to `out`: masked with a fresh random key
/// when `role` is [`Role::Client`], as the RFC requires of clients; unmasked for a server.
pub fn encode(out: &mut BytesMut, role: Role, kind: Kind, payload: &[u8]) {
    encode_with(out, role, kind, payload.len(), |out| {
        out.extend_from_slice(payload)
    });
}

/// Like [`encode`], for a payload of `len` bytes that `write` appends to `out` itself (so a
/// payload kept in pieces is copied once, into `out`). If `write` appends another number of
/// bytes, the frame is cut or padded with zeros to `len`, so the stream stays framed.
pub fn encode_with(
    out: &mut BytesMut,
    role: Role,
    kind: Kind,
    len: usize,
    write: impl FnOnce(&mut BytesMut),
) {
    let opcode = u8::from(match kind {
        Kind::Text => OpCode::Data(Data::Text),
        Kind::Binary => OpCode::Data(Data::Binary),
        Kind::Close => OpCode::Control(Control::Close),
        Kind::Pong => OpCode::Control(Control::Pong),
    });
    let mask = (role == Role::Client).then(rand::random::<[u8; 4]>);
    out.reserve(MAX_HEADER + len);
    write_header(out, opcode, len, mask);
    let start = out.len();
    write(out);
    out.resize(start + len, 0);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// The payload of a close frame with `code` and no reason.
pub fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// tungstenite's reading of a header, in `parse_header`'s terms.
    fn tungstenite_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let mut cursor = std::io::Cursor::new(buf);
        match FrameHeader::parse(&mut cursor) {
            Ok(Some((h, length))) => Ok(Some(Header {
                is_final: h.is_final,
                reserved_bits: h.rsv1 || h.rsv2 || h.rsv3,
                opcode: h.opcode,
                mask: h.mask,
                length,
                size: usize::try_from(cursor.position()).unwrap(),
            })),
            Ok(None) => Ok(None),
            // From memory, only a reserved opcode fails.
            Err(_) => Err(FrameError::ReservedOpcode),
        }
    }

    #[test]
    fn headers_read_as_tungstenite_reads_them() {
        let mut checked = 0u32;
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let extended: &[&[u8]] = match second & 0x7F {
                    126 => &[&[0x01, 0x02], &[0xFF, 0xFF]],
                    // Small, large, and with the top bit the RFC says must be 0.
                    127 => &[&[0, 0, 0, 0, 0, 1, 0, 0], &[0x80, 0, 0, 0, 0, 0, 0, 5]],
                    _ => &[&[]],
                };
                for ext in extended {
                    let mut wire = vec![first, second];
                    wire.extend_from_slice(ext);
                    if second & 0x80 != 0 {
                        wire.extend_from_slice(&[9, 8, 7, 6]);
                    }
                    wire.extend_from_slice(b"abc");
                    for cut in 0..=wire.len() {
                        let buf = &wire[..cut];
                        assert_eq!(parse_header(buf), tungstenite_header(buf), "{buf:02x?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 500_000, "{checked}");
        // One worked example, so that the oracle itself is seen to say something.
        assert_eq!(
            parse_header(&[0x81, 0xFE, 0x01, 0x00, 1, 2, 3, 4]),
            Ok(Some(Header {
                is_final: true,
                reserved_bits: false,
                opcode: OpCode::Data(Data::Text),
                mask: Some([1, 2, 3, 4]),
                length: 256,
                size: 8,
            }))
        );
    }

    #[test]
    fn headers_written_as_tungstenite_writes_them() {
        let opcodes = [
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Control(Control::Close),
            OpCode::Control(Control::Pong),
        ];
        for opcode in opcodes {
            let code = u8::from(opcode);
            for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 1 << 20] {
                for mask in [None, Some([1, 2, 3, 4])] {
                    let mut ours = BytesMut::new();
                    write_header(&mut ours, code, len, mask);
                    let mut theirs = BytesMut::new();
                    let header = FrameHeader {
                        opcode,
                        mask,
                        ..FrameHeader::default()
                    };
                    header
                        .format(len as u64, &mut (&mut theirs).writer())
                        .unwrap();
                    assert_eq!(ours, theirs, "{opcode:?} {len} {mask:?}");
                    assert!(ours.len() <= MAX_HEADER);
                }
            }
        }
    }

    fn reader(role: Role) -> FrameReader {
        FrameReader::new(role, 1 << 10, 4 << 10)
    }

    /// One frame as a peer of `from` would send it.
    fn frame(from: Role, first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if from == Role::Client { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(masked | n as u8),
            n @ 126..=0xffff => {
                out.push(masked | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(masked | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if from == Role::Client {
            let mask = [1, 2, 3, 4];
            out.extend_from_slice(&mask);
            let mut body = payload.to_vec();
            apply_mask(&mut body, mask);
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    fn read_all(r: &mut FrameReader, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.read(&mut buf)? {
            out.push(m);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        Ok(out)
    }

    #[test]
    fn messages_and_control_frames_come_out_whole_for_both_roles() {
        for (reader_role, sender) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let mut bytes = frame(sender, 0x81, b"{\"op\":11}");
            bytes.extend(frame(sender, 0x82, &[0, 255, 7]));
            bytes.extend(frame(sender, 0x89, b"are you there"));
            bytes.extend(frame(sender, 0x8a, b""));
            bytes.extend(frame(sender, 0x81, &[b'x'; 300]));
            bytes.extend(frame(sender, 0x88, &[0x0f, 0xa4, b'b', b'y', b'e']));
            let got = read_all(&mut reader(reader_role), &bytes).unwrap();
            assert_eq!(
                got,
                vec![
                    Incoming::Text(Bytes::from_static(b"{\"op\":11}")),
                    Incoming::Binary(Bytes::from_static(&[0, 255, 7])),
                    Incoming::Ping(Bytes::from_static(b"are you there")),
                    Incoming::Pong,
                    Incoming::Text(Bytes::from(vec![b'x'; 300])),
                    Incoming::Close(Some(4004)),
                ],
                "reader {reader_role:?}"
            );
        }
    }

    #[test]
    fn a_message_split_anywhere_comes_out_once_whole() {
        let mut bytes = frame(Role::Server, 0x01, b"{\"op\":0,");
        bytes.extend(frame(Role::Server, 0x89, b"p"));
        bytes.extend(frame(Role::Server, 0x00, b"\"s\":1,"));
        bytes.extend(frame(Role::Server, 0x80, b"\"d\":{}}"));
        bytes.extend(frame(Role::Server, 0x81, &[b'y'; 200]));
        for cut in 0..bytes.len() {
            let mut r = reader(Role::Client);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(m) = r.read(&mut buf).unwrap() {
                got.push(m);
            }
            if r.needed() > 0 {
                assert!(r.needed() > buf.len(), "cut {cut}");
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(m) = r.read(&mut buf).unwrap() {
                got.push(m);
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Ping(Bytes::from_static(b"p")),
                    Incoming::Text(Bytes::from_static(b"{\"op\":0,\"s\":1,\"d\":{}}")),
                    Incoming::Text(Bytes::from(vec![b'y'; 200])),
                ],
                "cut at {cut}"
            );
            assert!(buf.is_empty() && !r.in_message());
        }
    }

    #[test]
    fn protocol_violations_are_typed_errors() {
        let s = Role::Server;
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (frame(s, 0xc1, b"x"), FrameError::ReservedBits),
            (frame(s, 0x83, b"x"), FrameError::ReservedOpcode),
            (frame(s, 0x8b, b""), FrameError::ReservedOpcode),
            (frame(Role::Client, 0x81, b"x"), FrameError::Mask),
            (frame(s, 0x09, b""), FrameError::BadControl),
            (frame(s, 0x89, &[0; 126]), FrameError::BadControl),
            (frame(s, 0x80, b"x"), FrameError::UnexpectedContinuation),
            (
                [frame(s, 0x01, b"a"), frame(s, 0x81, b"b")].concat(),
                FrameError::UnfinishedMessage,
            ),
            (frame(s, 0x88, &[3]), FrameError::BadClose),
            (frame(s, 0x88, &[0x03, 0xed]), FrameError::BadClose), // 1005 is never sent
            (frame(s, 0x88, &[0x03, 0xe8, 0xff]), FrameError::InvalidUtf8),
            (frame(s, 0x81, &[0xc3, 0x28]), FrameError::InvalidUtf8),
            (
                [frame(s, 0x01, &[0xe2, 0x82]), frame(s, 0x80, &[0x28])].concat(),
                FrameError::InvalidUtf8,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                read_all(&mut reader(Role::Client), &bytes),
                Err(want.clone()),
                "{want}"
            );
        }
        // A client's unmasked frame, at a server.
        assert_eq!(
            read_all(&mut reader(Role::Server), &frame(s, 0x81, b"x")),
            Err(FrameError::Mask)
        );
    }

    #[test]
    fn sizes_are_refused_from_the_header_before_the_payload_arrives() {
        // Only the header of a frame announcing 2^62 bytes.
        let mut buf = BytesMut::from(&[0x82, 127, 0x40, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            reader(Role::Client).read(&mut buf),
            Err(FrameError::FrameTooLarge {
                size: 1 << 62,
                max: 1 << 10
            })
        );
        // Fragments of 1 KiB each add up past the 4 KiB message limit on the fifth.
        let mut bytes = frame(Role::Server, 0x02, &[0; 1024]);
        for _ in 0..3 {
            bytes.extend(frame(Role::Server, 0x00, &[0; 1024]));
        }
        bytes.extend(&frame(Role::Server, 0x80, &[0; 1024])[..4]);
        let mut r = reader(Role::Client);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            r.read(&mut buf),
            Err(FrameError::MessageTooLarge {
                size: 5 << 10,
                max: 4 << 10
            })
        );
        // Exactly at the limit is fine.
        let mut r = FrameReader::new(Role::Client, 1024, 1024);
        assert_eq!(
            read_all(&mut r, &frame(Role::Server, 0x82, &[9; 1024])).unwrap(),
            vec![Incoming::Binary(Bytes::from(vec![9; 1024]))]
        );
    }

    #[test]
    fn encoded_frames_read_back_for_the_other_end() {
        for (role, peer) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let mut out = BytesMut::new();
            let long = vec![b'z'; 70_000];
            encode(&mut out, role, Kind::Text, b"{\"op\":1,\"d\":null}");
            encode(&mut out, role, Kind::Binary, &long);
            encode(&mut out, role, Kind::Pong, b"p");
            encode(&mut out, role, Kind::Close, &close_payload(1000));
            encode(&mut out, role, Kind::Close, b"");
            let mut r = FrameReader::new(peer, 1 << 20, 1 << 20);
            assert_eq!(
                read_all(&mut r, &out).unwrap(),
                vec![
                    Incoming::Text(Bytes::from_static(b"{\"op\":1,\"d\":null}")),
                    Incoming::Binary(Bytes::from(long.clone())),
                    Incoming::Pong,
                    Incoming::Close(Some(1000)),
                    Incoming::Close(None),
                ]
            );
        }
        // A client's frames are masked: the payload is not readable on the wire.
        let mut out = BytesMut::new();
        encode(&mut out, Role::Client, Kind::Text, b"secret token here");
        assert_eq!(out[1] & 0x80, 0x80);
        assert!(!out.windows(6).any(|w| w == b"secret"));
    }
}

#[cfg(test)]
mod interop {
    use super::*;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role as TRole, WebSocket};

    /// A stream over fixed input that swallows writes.
    struct Wire(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Write for Wire {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tungstenite_reads_what_a_client_encodes() {
        for round in 0..200 {
            let mut out = BytesMut::new();
            let text = format!("identify {round} {}", "x".repeat(round));
            encode(&mut out, Role::Client, Kind::Text, text.as_bytes());
            let mut ws = WebSocket::from_raw_socket(
                Wire(std::io::Cursor::new(out.to_vec())),
                TRole::Server,
                None,
            );
            match ws.read() {
                Ok(Message::Text(t)) => assert_eq!(t.as_str(), text),
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}
