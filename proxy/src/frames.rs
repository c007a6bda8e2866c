//! The JSON frames the proxy sends downstream.

use bytes::Bytes;
use serde_json::Value;

/// `{"op":0,"t":T,"s":S,"d":D}` with `data` written as it is (valid JSON text).
///
/// One allocation for the frame (the name and the seq are written into it, not formatted apart).
pub(crate) fn dispatch(event_type: &str, seq: u64, data: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(data.len() + event_type.len() + 48);
    out.extend_from_slice(b"{\"op\":0,\"t\":");
    if serde_json::to_writer(&mut out, event_type).is_err() {
        out.extend_from_slice(b"\"\"");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"s\":{seq},\"d\":");
    out.extend_from_slice(data);
    out.push(b'}');
    Bytes::from(out)
}

pub(crate) fn dispatch_value(event_type: &str, seq: u64, data: &Value) -> Bytes {
    let text = serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec());
    dispatch(event_type, seq, &text)
}

pub(crate) fn hello(heartbeat_interval_ms: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"op\":10,\"s\":null,\"t\":null,\"d\":{{\"heartbeat_interval\":{heartbeat_interval_ms}}}}}"
    ))
}

pub(crate) fn heartbeat_ack() -> Bytes {
    Bytes::from_static(b"{\"op\":11,\"s\":null,\"t\":null,\"d\":null}")
}

pub(crate) fn invalid_session() -> Bytes {
    Bytes::from_static(b"{\"op\":9,\"s\":null,\"t\":null,\"d\":false}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_json() {
        for f in [
            dispatch("MESSAGE_CREATE", 7, br#"{"a":"\"x"}"#),
            hello(41_250),
            heartbeat_ack(),
            invalid_session(),
        ] {
            let v: Value = serde_json::from_slice(&f).unwrap();
            assert!(v["op"].is_u64(), "{v}");
        }
        let v: Value = serde_json::from_slice(&dispatch("E", 7, b"[1]")).unwrap();
        assert_eq!(v, serde_json::json!({"op":0,"t":"E","s":7,"d":[1]}));
    }
}
