//! The gateway payload envelope `{op, d, s, t}`: parsed without parsing `d`.
//!
//! Source: <https://discord.com/developers/docs/events/gateway-events#payload-structure>.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::scan::{ScanError, Scanned, StrAt, decode_str, scan, scan_strict, scan_tail};
use super::{OpCode, ProtocolError};

/// Largest payload the gateway accepts from a client, in bytes. A larger one makes Discord close
/// the connection with 4002, so the codec refuses it before sending.
///
/// Source: <https://discord.com/developers/docs/events/gateway#sending-events>.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// A received payload, parsed down to the envelope only: `d` stays raw JSON borrowed from the
/// message buffer.
///
/// What [`Envelope::parse`] checks, in one pass over the message and without building `d`: the
/// message is UTF-8 (checked once over the whole message); the envelope is strict JSON (one
/// object with nothing but whitespace after it, keys, colons and commas in place, every value
/// but `d` following the full grammar, no `op`, `d`, `s` or `t` key twice, `op` and `s`
/// unsigned 64-bit integers or `null`, `t` a string or `null`); an object or array `d` is
/// checked structurally only (strings closed, with valid escapes and no control characters;
/// brackets balanced and matched by kind; any depth), a scalar `d` fully.
/// [`Envelope::parse_strict`] also checks the full grammar inside `d`, the rules `serde_json`
/// applied when it parsed the envelope. [`Envelope::parse_tail`], the codec's path, reads
/// nothing of an object or array `d` that follows `op`, `s` and `t` and ends the message, the
/// order Discord sends. `protocol/tests/envelope_oracle.rs` holds all three to `serde_json` as
/// the oracle: whatever `serde_json` accepts, `parse` and `parse_strict` read the same, and
/// `parse_tail` the same but for members after such a `d` (see there); whatever `parse` or
/// `parse_tail` accepts with a `d` that is valid JSON on its own, `serde_json` reads the same
/// (so no sequence number is ever read that a strict parser would not). What `d` means, and its
/// full grammar, is checked where it is read: HELLO, READY and INVALID_SESSION by the codec,
/// every other event by the application that deserializes it (a typed error there).
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The opcode number (kept raw so unknown ones can be reported with their number).
    pub op: u64,
    /// The event data as raw JSON text; `None` when absent or `null`.
    pub d: Option<&'a str>,
    /// The sequence number (dispatches only).
    pub s: Option<u64>,
    /// The event name (dispatches only).
    pub t: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// Parses the envelope of one complete JSON message: `d` is checked structurally but not
    /// interpreted (see [`Envelope`] for what is checked).
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, ProtocolError> {
        Self::parse_with(bytes, scan)
    }

    /// Parses the envelope like [`Envelope::parse`], except that an object or array `d` that
    /// comes after `op`, `s` and `t` and ends the message (`{"t":..,"s":..,"op":..,"d":{..}}`,
    /// as Discord sends every payload) is taken unread: from its opening bracket to the
    /// closing bracket of the same kind before the envelope's `}`. The codec's hot path: the
    /// structure of `d` is checked by whatever parses it (the codec for HELLO, READY and
    /// INVALID_SESSION, the application for any other event), a typed error there.
    ///
    /// Members after such a `d`, which Discord does not send, become part of the text of `d`
    /// (`{"op":0,"s":1,"t":"X","d":{},"x":{}}` gives `d` = `{},"x":{}`, not valid JSON on its
    /// own); `op`, `s` and `t` are always those of the envelope, read before `d`.
    pub fn parse_tail(bytes: &'a [u8]) -> Result<Envelope<'a>, ProtocolError> {
        Self::parse_with(bytes, scan_tail)
    }

    /// Parses the envelope like [`Envelope::parse`], and checks `d` against the full JSON
    /// grammar too: it accepts exactly what `serde_json` accepts for the envelope.
    pub fn parse_strict(bytes: &'a [u8]) -> Result<Envelope<'a>, ProtocolError> {
        Self::parse_with(bytes, scan_strict)
    }

    fn parse_with(
        bytes: &'a [u8],
        scanner: fn(&[u8]) -> Result<Scanned, ScanError>,
    ) -> Result<Envelope<'a>, ProtocolError> {
        let text = check_utf8(bytes)?;
        let scanned = scanner(bytes).map_err(scan_error)?;
        // `d` starts at its first byte and ends after an ASCII one, so the range always lies on
        // character boundaries.
        let d = match scanned.d {
            Some(range) => Some(
                text.get(range)
                    .ok_or_else(|| ProtocolError::MalformedJson {
                        reason: "d not on character boundaries".into(),
                    })?,
            ),
            None => None,
        };
        let t = match scanned.t {
            Some(at) => Some(str_at(text, at)?),
            None => None,
        };
        Ok(Envelope {
            op: scanned.op,
            d,
            s: scanned.s,
            t,
        })
    }

    /// The opcode, if Discord defines it.
    pub fn opcode(&self) -> Result<OpCode, ProtocolError> {
        opcode(self.op)
    }
}

/// The envelope of a message the codec reads, `d` as where it lies in the message.
pub(crate) struct Head {
    /// The opcode number.
    pub(crate) op: u64,
    /// The sequence number, if present and not `null`.
    pub(crate) s: Option<u64>,
    /// Where the event name lies in the message, if present and not `null`.
    pub(crate) t: Option<StrAt>,
    /// Where `d` lies in the message, if present and not `null`.
    pub(crate) d: Option<Range<usize>>,
}

impl Head {
    /// The opcode, if Discord defines it.
    pub(crate) fn opcode(&self) -> Result<OpCode, ProtocolError> {
        opcode(self.op)
    }
}

/// The opcode `op`, if Discord defines it.
fn opcode(op: u64) -> Result<OpCode, ProtocolError> {
    OpCode::from_code(op).ok_or(ProtocolError::UnknownOpcode { op })
}

/// Reads the envelope as [`Envelope::parse_tail`] does. `utf8_checked` says the bytes are a
/// [`Message::Text`](handover_core::Message::Text), whose transport checked their UTF-8 (the
/// type's contract): the whole message is then not checked a second time; `t` and `d` are
/// returned as where they lie, and `t` is checked where it becomes a `str` (see
/// [`EventName::from_message`](super::EventName)), a key written with escapes where it is
/// decoded. Anything else (a binary message, a decompressed one) is checked whole first.
pub(crate) fn head(bytes: &[u8], utf8_checked: bool) -> Result<Head, ProtocolError> {
    if !utf8_checked {
        check_utf8(bytes)?;
    }
    let scanned = scan_tail(bytes).map_err(scan_error)?;
    Ok(Head {
        op: scanned.op,
        s: scanned.s,
        t: scanned.t,
        d: scanned.d,
    })
}

/// The string at `at` in `text`, its escapes decoded.
fn str_at(text: &str, at: StrAt) -> Result<Cow<'_, str>, ProtocolError> {
    if at.escaped {
        return decode_str(text.as_bytes(), &at).map_err(scan_error);
    }
    text.get(at.range)
        .map(Cow::Borrowed)
        .ok_or_else(|| ProtocolError::MalformedJson {
            reason: "string not on character boundaries".into(),
        })
}

/// The message as `str`, or the offset of its first invalid byte in a typed error.
fn check_utf8(bytes: &[u8]) -> Result<&str, ProtocolError> {
    // simdutf8 picks its SIMD kernel (AVX2, SSE4.2, NEON) at run time; on the error path
    // std's check finds the offset for the message.
    simdutf8::basic::from_utf8(bytes).map_err(|_| ProtocolError::MalformedJson {
        reason: format!(
            "invalid utf-8 at byte {}",
            std::str::from_utf8(bytes).map_or_else(|e| e.valid_up_to(), str::len)
        ),
    })
}

/// The typed error for a scan's.
pub(crate) fn scan_error(e: ScanError) -> ProtocolError {
    match e {
        ScanError::MissingOp => ProtocolError::MissingField {
            field: "op",
            context: "payload",
        },
        // The reason names a category, a field name and a byte offset, never content.
        other => ProtocolError::MalformedJson {
            reason: other.to_string(),
        },
    }
}

/// Serializes `{"op": op, "d": d}`, the shape of every payload a client sends.
pub fn encode_payload<T: Serialize + ?Sized>(op: OpCode, d: &T) -> Result<Vec<u8>, ProtocolError> {
    #[derive(Serialize)]
    struct Out<'a, T: ?Sized> {
        op: u8,
        d: &'a T,
    }
    serde_json::to_vec(&Out { op: op.code(), d }).map_err(|_| ProtocolError::InvalidCommand {
        reason: "payload could not be serialized",
    })
}

/// JSON text kept as bytes. Received event data shares the message buffer (no copy); the codec
/// reads it no further than [`Envelope::parse_tail`] does (an event's `d` as Discord sends it is
/// not read at all), and its grammar is checked when it is deserialized or serialized (a typed
/// error there).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Bytes);

impl RawJson {
    /// The JSON text at `range` in `buf` (no copy).
    pub(crate) fn from_range(buf: &Bytes, range: Range<usize>) -> RawJson {
        RawJson(buf.slice(range))
    }

    /// Copies `raw` into a new buffer.
    pub fn from_raw(raw: &RawValue) -> RawJson {
        RawJson(Bytes::copy_from_slice(raw.get().as_bytes()))
    }

    /// Checks that `text` is one JSON value and keeps it (for [`Command::Raw`](super::Command::Raw)).
    pub fn parse(text: impl Into<String>) -> Result<RawJson, ProtocolError> {
        let text: String = text.into();
        serde_json::from_str::<&RawValue>(&text).map_err(|e| ProtocolError::malformed(&e))?;
        Ok(RawJson(Bytes::from(text)))
    }

    /// The JSON `null`.
    pub fn null() -> RawJson {
        RawJson(Bytes::from_static(b"null"))
    }

    /// The JSON text as bytes (UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text; `null` if its bytes are not UTF-8, which only a runtime that hands the
    /// codec a `Message::Text` its transport did not check can cause (the bytes come from a
    /// `&str`, or from a text message, whose transport checked them).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The underlying buffer, for zero-copy forwarding.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never, for values produced by this crate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the JSON into a typed value (for the events the application cares about).
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.0).map_err(|e| ProtocolError::malformed(&e))
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        let s = self.as_str();
        if s.len() <= SHOWN {
            write!(f, "RawJson({s})")
        } else {
            let cut = (0..=SHOWN)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            write!(f, "RawJson({}... {} bytes)", &s[..cut], s.len())
        }
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.as_str()) {
            Ok(raw) => raw.serialize(serializer),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_shapes() {
        let hello = br#"{"op":10,"d":{"heartbeat_interval":45000}}"#;
        let e = Envelope::parse(hello).unwrap();
        assert_eq!(e.opcode().unwrap(), OpCode::Hello);
        assert_eq!(e.d.unwrap(), r#"{"heartbeat_interval":45000}"#);
        assert_eq!((e.s, e.t.as_deref()), (None, None));

        let ack = br#"{"op":11}"#;
        let e = Envelope::parse(ack).unwrap();
        assert_eq!(e.opcode().unwrap(), OpCode::HeartbeatAck);
        assert!(e.d.is_none());

        let dispatch = br#"{"op":0,"d":{},"s":42,"t":"GATEWAY_EVENT_NAME"}"#;
        let e = Envelope::parse(dispatch).unwrap();
        assert_eq!(e.s, Some(42));
        assert_eq!(e.t.as_deref(), Some("GATEWAY_EVENT_NAME"));

        let null_fields = br#"{"t":null,"s":null,"op":9,"d":false}"#;
        let e = Envelope::parse(null_fields).unwrap();
        assert_eq!(e.opcode().unwrap(), OpCode::InvalidSession);
        assert_eq!(e.d.unwrap(), "false");
    }

    #[test]
    fn d_is_not_interpreted_but_must_be_json() {
        let deep = br#"{"op":0,"s":1,"t":"X","d":{"a":[1,2,{"b":"\u00e9"}],"c":null}}"#;
        let e = Envelope::parse(deep).unwrap();
        assert_eq!(e.d.unwrap(), r#"{"a":[1,2,{"b":"\u00e9"}],"c":null}"#);
        assert!(matches!(
            Envelope::parse(br#"{"op":0,"d":{"a":}"#),
            Err(ProtocolError::MalformedJson { .. })
        ));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            Envelope::parse(br#"{"d":null}"#).unwrap_err(),
            ProtocolError::MissingField {
                field: "op",
                context: "payload"
            }
        );
        let e = Envelope::parse(br#"{"op":42}"#).unwrap();
        assert_eq!(e.opcode(), Err(ProtocolError::UnknownOpcode { op: 42 }));
        assert!(matches!(
            Envelope::parse(b"\xff\xfe"),
            Err(ProtocolError::MalformedJson { .. })
        ));
        assert!(matches!(
            Envelope::parse(br#"[1,2]"#),
            Err(ProtocolError::MalformedJson { .. })
        ));
    }

    #[test]
    fn malformed_reason_quotes_no_content() {
        let err = Envelope::parse(br#"{"op":"secret-looking-value"}"#).unwrap_err();
        assert!(!err.to_string().contains("secret-looking-value"), "{err}");
    }

    #[test]
    fn raw_json_shares_the_buffer() {
        let buf = Bytes::from_static(br#"{"op":0,"s":3,"t":"X","d":{"k":"v"}}"#);
        let h = head(&buf, false).unwrap();
        let raw = RawJson::from_range(&buf, h.d.unwrap());
        assert_eq!(raw.as_str(), r#"{"k":"v"}"#);
        let inner = raw.as_bytes().as_ptr() as usize;
        let outer = buf.as_ptr() as usize;
        assert!(
            inner > outer && inner < outer + buf.len(),
            "copied instead of sliced"
        );
        #[derive(Deserialize)]
        struct K {
            k: String,
        }
        assert_eq!(raw.deserialize::<K>().unwrap().k, "v");
    }

    #[test]
    fn encodes_op_and_d() {
        let out = encode_payload(OpCode::Heartbeat, &Some(251u64)).unwrap();
        assert_eq!(out, br#"{"op":1,"d":251}"#);
        let out = encode_payload(OpCode::Heartbeat, &None::<u64>).unwrap();
        assert_eq!(out, br#"{"op":1,"d":null}"#);
    }
}
