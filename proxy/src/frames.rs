//! The JSON frames the proxy sends downstream.

use bytes::{BufMut, Bytes};
use handover_protocol::{EventName, RawJson};
use serde_json::Value;

/// One JSON text frame for a client. Text by construction (built from `str`s and JSON text
/// only), so the shell writes it as a text frame without checking its UTF-8 again.
///
/// A dispatch is kept in pieces, the event's name, the client's seq and `d` (shared with the
/// upstream event for a forwarded one: no copy, no allocation per client): its text is written
/// out only where it goes on the wire ([`write_to`](Frame::write_to)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(FrameText);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameText {
    Static(&'static str),
    Owned(Vec<u8>),
    /// `{"op":0,"t":"NAME","s":SEQ,"d":DATA}`, `name` needing no escape.
    Dispatch {
        name: EventName,
        seq: u64,
        data: Bytes,
    },
}

const DISPATCH_HEAD: &[u8] = b"{\"op\":0,\"t\":";
const DISPATCH_SEQ: &[u8] = b",\"s\":";
const DISPATCH_DATA: &[u8] = b",\"d\":";

/// The pieces of `{"op":0,"t":NAME,"s":SEQ,"d":DATA}`, `name` already quoted as JSON (in one
/// or more parts), in order.
fn dispatch_pieces<'a>(
    name: &[&'a [u8]],
    seq: &'a str,
    data: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> {
    std::iter::once(DISPATCH_HEAD)
        .chain(name.iter().copied())
        .chain([DISPATCH_SEQ, seq.as_bytes(), DISPATCH_DATA, data, b"}"])
}

impl Frame {
    /// The length of the frame's text in bytes.
    pub fn len(&self) -> usize {
        let mut len = 0;
        self.each_piece(|piece| len += piece.len());
        len
    }

    /// Whether the frame's text is empty (never, for a frame the proxy builds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the frame's text to `out`: exactly [`len`](Frame::len) bytes.
    pub fn write_to(&self, out: &mut impl BufMut) {
        self.each_piece(|piece| out.put_slice(piece));
    }

    /// The frame's text as bytes (a copy, for tests and compression).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }

    /// Calls `f` with each piece of the frame's text, in order.
    fn each_piece(&self, mut f: impl FnMut(&[u8])) {
        match &self.0 {
            FrameText::Static(s) => f(s.as_bytes()),
            FrameText::Owned(text) => f(text),
            FrameText::Dispatch { name, seq, data } => {
                let mut digits = itoa::Buffer::new();
                let name: [&[u8]; 3] = [b"\"", name.as_bytes(), b"\""];
                dispatch_pieces(&name, digits.format(*seq), data).for_each(f);
            }
        }
    }
}

/// Whether `name` can be written between quotes as it is.
fn plain_name(name: &str) -> bool {
    !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// `{"op":0,"t":T,"s":S,"d":D}` for an event from upstream: the name and `d` are shared with
/// the event, nothing is copied or allocated here.
pub(crate) fn dispatch(event_type: &EventName, seq: u64, data: &RawJson) -> Frame {
    dispatch_bytes(event_type, seq, data.clone().into_bytes())
}

/// `{"op":0,"t":T,"s":S,"d":D}` with `data` written as it is (valid JSON text).
pub(crate) fn dispatch_text(event_type: &str, seq: u64, data: &str) -> Frame {
    dispatch_bytes(
        &EventName::new(event_type),
        seq,
        Bytes::copy_from_slice(data.as_bytes()),
    )
}

fn dispatch_bytes(event_type: &EventName, seq: u64, data: Bytes) -> Frame {
    if plain_name(event_type) {
        return Frame(FrameText::Dispatch {
            name: event_type.clone(),
            seq,
            data,
        });
    }
    // A name Discord does not document, needing escapes: written once, whole.
    let quoted = serde_json::to_string(&**event_type).unwrap_or_else(|_| "\"\"".to_owned());
    let mut digits = itoa::Buffer::new();
    let mut text = Vec::new();
    dispatch_pieces(&[quoted.as_bytes()], digits.format(seq), &data)
        .for_each(|piece| text.extend_from_slice(piece));
    Frame(FrameText::Owned(text))
}

pub(crate) fn dispatch_value(event_type: &str, seq: u64, data: &Value) -> Frame {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned());
    dispatch_text(event_type, seq, &text)
}

pub(crate) fn hello(heartbeat_interval_ms: u64) -> Frame {
    Frame(FrameText::Owned(
        format!(
            "{{\"op\":10,\"s\":null,\"t\":null,\"d\":{{\"heartbeat_interval\":{heartbeat_interval_ms}}}}}"
        )
        .into_bytes(),
    ))
}

pub(crate) fn heartbeat_ack() -> Frame {
    Frame(FrameText::Static(
        "{\"op\":11,\"s\":null,\"t\":null,\"d\":null}",
    ))
}

pub(crate) fn invalid_session() -> Frame {
    Frame(FrameText::Static(
        "{\"op\":9,\"s\":null,\"t\":null,\"d\":false}",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(f: &Frame) -> Value {
        let text = f.to_vec();
        assert_eq!(text.len(), f.len());
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn frames_are_json() {
        let data = RawJson::parse(r#"{"a":"\"x"}"#).unwrap();
        for f in [
            dispatch(&EventName::new("MESSAGE_CREATE"), 7, &data),
            dispatch_text("MESSAGE_CREATE", 7, r#"{"a":"\"x"}"#),
            hello(41_250),
            heartbeat_ack(),
            invalid_session(),
        ] {
            let v = json(&f);
            assert!(v["op"].is_u64(), "{v}");
        }
        let list = RawJson::parse("[1]").unwrap();
        for seq in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let want = serde_json::json!({"op":0,"t":"E","s":seq,"d":[1]});
            assert_eq!(json(&dispatch(&EventName::new("E"), seq, &list)), want);
            assert_eq!(json(&dispatch_text("E", seq, "[1]")), want);
        }
        let odd = EventName::new("A\"\\\nB");
        assert_eq!(json(&dispatch(&odd, 1, &RawJson::null()))["t"], "A\"\\\nB");
        assert_eq!(json(&dispatch_text(&odd, 1, "null"))["t"], "A\"\\\nB");
    }
}
