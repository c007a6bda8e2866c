//! The JSON frames the proxy sends downstream.

use bytes::BufMut;
use handover_protocol::{EventName, RawJson};
use serde_json::Value;

/// One JSON text frame for a client. Text by construction (built from `str`s and JSON text
/// only), so the shell writes it as a text frame without checking its UTF-8 again.
///
/// A dispatch forwarded from upstream is kept in pieces, the event's name, the client's seq
/// and `d` shared with the upstream event (no copy, no allocation per client): its text is
/// written out only where it goes on the wire ([`write_to`](Frame::write_to)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(FrameText);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameText {
    Static(&'static str),
    Owned(String),
    /// `{"op":0,"t":"NAME","s":SEQ,"d":DATA}`, `name` needing no escape.
    Dispatch {
        name: EventName,
        seq: u64,
        data: RawJson,
    },
}

const DISPATCH_HEAD: &str = "{\"op\":0,\"t\":\"";
const DISPATCH_SEQ: &str = "\",\"s\":";
const DISPATCH_DATA: &str = ",\"d\":";

impl Frame {
    /// The length of the frame's text in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            FrameText::Static(s) => s.len(),
            FrameText::Owned(s) => s.len(),
            FrameText::Dispatch { name, seq, data } => {
                DISPATCH_HEAD.len()
                    + name.len()
                    + DISPATCH_SEQ.len()
                    + itoa::Buffer::new().format(*seq).len()
                    + DISPATCH_DATA.len()
                    + data.as_bytes().len()
                    + 1
            }
        }
    }

    /// Whether the frame's text is empty (never, for a frame the proxy builds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the frame's text to `out`: exactly [`len`](Frame::len) bytes.
    pub fn write_to(&self, out: &mut impl BufMut) {
        match &self.0 {
            FrameText::Static(s) => out.put_slice(s.as_bytes()),
            FrameText::Owned(s) => out.put_slice(s.as_bytes()),
            FrameText::Dispatch { name, seq, data } => {
                out.put_slice(DISPATCH_HEAD.as_bytes());
                out.put_slice(name.as_bytes());
                out.put_slice(DISPATCH_SEQ.as_bytes());
                out.put_slice(itoa::Buffer::new().format(*seq).as_bytes());
                out.put_slice(DISPATCH_DATA.as_bytes());
                out.put_slice(data.as_bytes());
                out.put_u8(b'}');
            }
        }
    }

    /// The frame's text as bytes (a copy, for tests and compression).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }
}

/// Whether `name` can be written between quotes as it is.
fn plain_name(name: &str) -> bool {
    !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// `{"op":0,"t":T,"s":S,"d":D}` for an event from upstream: the name and `d` are shared with
/// the event, nothing is copied or allocated here.
pub(crate) fn dispatch(event_type: &EventName, seq: u64, data: &RawJson) -> Frame {
    if plain_name(event_type) {
        Frame(FrameText::Dispatch {
            name: event_type.clone(),
            seq,
            data: data.clone(),
        })
    } else {
        dispatch_text(event_type, seq, data.as_str())
    }
}

/// `{"op":0,"t":T,"s":S,"d":D}` with `data` written as it is (valid JSON text), in one
/// allocation.
pub(crate) fn dispatch_text(event_type: &str, seq: u64, data: &str) -> Frame {
    let mut out = String::with_capacity(data.len() + event_type.len() + 48);
    out.push_str("{\"op\":0,\"t\":");
    if plain_name(event_type) {
        // Names Discord documents need no escaping: written as they are.
        out.push('"');
        out.push_str(event_type);
        out.push('"');
    } else {
        match serde_json::to_string(event_type) {
            Ok(quoted) => out.push_str(&quoted),
            Err(_) => out.push_str("\"\""),
        }
    }
    out.push_str(",\"s\":");
    out.push_str(itoa::Buffer::new().format(seq));
    out.push_str(",\"d\":");
    out.push_str(data);
    out.push('}');
    Frame(FrameText::Owned(out))
}

pub(crate) fn dispatch_value(event_type: &str, seq: u64, data: &Value) -> Frame {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned());
    dispatch_text(event_type, seq, &text)
}

pub(crate) fn hello(heartbeat_interval_ms: u64) -> Frame {
    Frame(FrameText::Owned(format!(
        "{{\"op\":10,\"s\":null,\"t\":null,\"d\":{{\"heartbeat_interval\":{heartbeat_interval_ms}}}}}"
    )))
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
