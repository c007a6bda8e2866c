//! The 4096-byte refusal and the send rate limit, through the codec, in virtual time.

use std::time::{Duration, Instant};

use handover_core::{Codec, OpenMode, Payload, TransportId};

use super::fixtures::*;
use super::harness::codec;
use crate::{
    Command, DiscordCodec, MAX_PAYLOAD_BYTES, PresenceStatus, ProtocolError, RawJson,
    UpdatePresence,
};

fn identified_codec(now: Instant) -> DiscordCodec {
    let mut c = codec();
    c.reset(TransportId(1), OpenMode::Identify);
    c.decode(now, handover_core::Message::text(hello(41_250)))
        .unwrap();
    c.encode(now, Payload::Handshake(OpenMode::Identify))
        .unwrap();
    c.decode(now, handover_core::Message::text(ready(SESSION, 1)))
        .unwrap();
    c
}

/// A raw command whose encoded payload is exactly `size` bytes.
fn raw_of_size(size: usize) -> Command {
    // {"op":43,"d":"xxx..."} = 15 bytes of frame + the string content.
    let frame = r#"{"op":43,"d":""}"#.len();
    let d = RawJson::parse(format!("\"{}\"", "x".repeat(size - frame))).unwrap();
    Command::Raw { op: 43, d }
}

#[test]
fn payloads_over_4096_bytes_are_refused_and_nothing_is_counted() {
    let now = Instant::now();
    let mut c = identified_codec(now);
    let before = c.sends_in_window(now);
    let ok = c
        .encode_command(now, raw_of_size(MAX_PAYLOAD_BYTES))
        .unwrap();
    assert_eq!(ok.as_bytes().len(), 4096);
    assert_eq!(c.sends_in_window(now), before + 1);
    let err = c
        .encode_command(now, raw_of_size(MAX_PAYLOAD_BYTES + 1))
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::PayloadTooLarge {
            size: 4097,
            limit: 4096
        }
    );
    assert_eq!(
        c.sends_in_window(now),
        before + 1,
        "a refused payload used a slot"
    );
    // An oversized presence is refused the same way.
    let mut p = UpdatePresence::status(PresenceStatus::Online);
    p.activities = vec![
        crate::Activity {
            name: "n".repeat(5000),
            kind: 0,
            url: None,
            state: None,
        };
        1
    ];
    assert!(matches!(
        c.encode_command(now, Command::UpdatePresence(p)),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
}

#[test]
fn an_oversized_identify_is_refused() {
    let mut cfg = super::harness::config();
    let mut p = UpdatePresence::status(PresenceStatus::Online);
    p.activities = vec![crate::Activity {
        name: "n".repeat(5000),
        kind: 0,
        url: None,
        state: None,
    }];
    cfg.presence = Some(p);
    // Refused once, as a configuration that cannot work, instead of at every connection.
    match DiscordCodec::new(cfg) {
        Err(ProtocolError::InvalidConfig { reason }) => {
            assert!(reason.contains("IDENTIFY"), "{reason}");
            assert!(
                !reason.contains(super::fixtures::TOKEN),
                "the token never appears"
            );
        }
        other => panic!("accepted: {other:?}"),
    }
    let mut cfg = super::harness::config();
    cfg.presence = Some(UpdatePresence::status(PresenceStatus::Idle));
    assert!(DiscordCodec::new(cfg).is_ok());
}

#[test]
fn rate_limit_keeps_room_for_heartbeats_in_virtual_time() {
    let t0 = Instant::now();
    let mut c = identified_codec(t0);
    // One send used by IDENTIFY; reserve is 4 at a 41.25 s interval: 115 commands fit.
    let cmd = || Command::UpdatePresence(UpdatePresence::status(PresenceStatus::Online));
    let mut sent = 0;
    let mut now = t0;
    let retry_after = loop {
        match c.encode_command(now, cmd()) {
            Ok(_) => sent += 1,
            Err(ProtocolError::RateLimited { retry_after }) => break retry_after,
            Err(e) => panic!("{e}"),
        }
        now += Duration::from_millis(100);
        assert!(sent <= 120, "limiter never refused");
    };
    assert_eq!(sent, 115);
    // Heartbeats are never refused and are counted.
    for _ in 0..4 {
        c.encode(now, Payload::Heartbeat).unwrap();
    }
    assert_eq!(c.sends_in_window(now), 120);
    // The identify (at t0) leaves the window first; by then beats fill its slot.
    assert_eq!(now + retry_after, t0 + Duration::from_secs(60));
    // A new connection starts a new window.
    c.reset(TransportId(2), OpenMode::Resume);
    assert_eq!(c.sends_in_window(now), 0);
    c.encode_command(now, cmd()).unwrap();
}
