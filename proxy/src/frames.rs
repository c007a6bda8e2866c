//! The JSON frames the proxy sends downstream.

use serde_json::Value;

/// One JSON text frame for a client. Text by construction (built from `str`s only), so the
/// shell hands it to the WebSocket as a text message without checking its UTF-8 again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(FrameText);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameText {
    Static(&'static str),
    Owned(String),
}

impl Frame {
    /// The frame's JSON text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            FrameText::Static(s) => s,
            FrameText::Owned(s) => s,
        }
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    /// The frame as an owned string (no copy for a built frame).
    pub fn into_string(self) -> String {
        match self.0 {
            FrameText::Static(s) => s.to_owned(),
            FrameText::Owned(s) => s,
        }
    }

    /// The text of a frame that is a constant.
    pub fn as_static(&self) -> Option<&'static str> {
        match self.0 {
            FrameText::Static(s) => Some(s),
            FrameText::Owned(_) => None,
        }
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// `{"op":0,"t":T,"s":S,"d":D}` with `data` written as it is (valid JSON text).
///
/// One allocation for the frame (the name and the seq are written into it, not formatted apart).
pub(crate) fn dispatch(event_type: &str, seq: u64, data: &str) -> Frame {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(data.len() + event_type.len() + 48);
    out.push_str("{\"op\":0,\"t\":");
    if event_type
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20)
    {
        match serde_json::to_string(event_type) {
            Ok(quoted) => out.push_str(&quoted),
            Err(_) => out.push_str("\"\""),
        }
    } else {
        // Names Discord documents need no escaping: written as they are.
        out.push('"');
        out.push_str(event_type);
        out.push('"');
    }
    // Writing into a String cannot fail.
    let _ = write!(out, ",\"s\":{seq},\"d\":");
    out.push_str(data);
    out.push('}');
    Frame(FrameText::Owned(out))
}

pub(crate) fn dispatch_value(event_type: &str, seq: u64, data: &Value) -> Frame {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned());
    dispatch(event_type, seq, &text)
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

    #[test]
    fn frames_are_json() {
        for f in [
            dispatch("MESSAGE_CREATE", 7, r#"{"a":"\"x"}"#),
            hello(41_250),
            heartbeat_ack(),
            invalid_session(),
        ] {
            let v: Value = serde_json::from_slice(&f).unwrap();
            assert!(v["op"].is_u64(), "{v}");
        }
        let v: Value = serde_json::from_slice(&dispatch("E", 7, "[1]")).unwrap();
        assert_eq!(v, serde_json::json!({"op":0,"t":"E","s":7,"d":[1]}));
        let v: Value = serde_json::from_slice(&dispatch("A\"\\\nB", 1, "null")).unwrap();
        assert_eq!(v["t"], "A\"\\\nB");
    }
}
