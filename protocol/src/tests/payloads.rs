//! Decoding and encoding of every documented payload, at the codec level.

use std::time::Instant;

use handover_core::{Codec, Decoded, Message, OpenMode, Payload, Signal, TransportId};
use serde_json::{Value, json};

use super::fixtures::*;
use super::harness::{codec, config};
use crate::{
    Activity, Command, Compression, DiscordCodec, GatewayEvent, IdentifyError, OpCode,
    PresenceStatus, ProtocolError, RawJson, RequestGuildMembers, Session, ShardId, Snowflake,
    Token, UpdatePresence, UpdateVoiceState,
};

fn decode(c: &mut DiscordCodec, json: &str) -> Result<Decoded<GatewayEvent>, ProtocolError> {
    c.decode(Instant::now(), Message::text(json))
}

fn encode(c: &mut DiscordCodec, p: Payload) -> Value {
    let m = c.encode(Instant::now(), p).unwrap();
    assert!(matches!(m, Message::Text(_)));
    serde_json::from_slice(m.as_bytes()).unwrap()
}

fn ready_codec() -> DiscordCodec {
    let mut c = codec();
    c.reset(TransportId(1), OpenMode::Identify);
    decode(&mut c, &hello(41_250)).unwrap();
    decode(&mut c, &ready(SESSION, 1)).unwrap();
    c
}

#[test]
fn hello_becomes_the_hello_signal() {
    let mut c = codec();
    c.reset(TransportId(1), OpenMode::Identify);
    let d = decode(&mut c, r#"{"op":10,"d":{"heartbeat_interval":45000}}"#).unwrap();
    assert_eq!(
        d.signal,
        Some(Signal::Hello {
            interval: std::time::Duration::from_millis(45_000)
        })
    );
    assert_eq!(d.item, None);
    // Extra fields (Discord adds `_trace`) are ignored.
    let d = decode(
        &mut c,
        r#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250,"_trace":["[\"gateway-prd\"]"]}}"#,
    )
    .unwrap();
    assert!(matches!(d.signal, Some(Signal::Hello { .. })));
}

#[test]
fn simple_ops_map_to_signals() {
    let mut c = ready_codec();
    let cases = [
        (heartbeat_ack(), Signal::HeartbeatAck),
        (r#"{"op":11,"d":null}"#.to_owned(), Signal::HeartbeatAck),
        (heartbeat_request(), Signal::HeartbeatRequested),
        (reconnect(), Signal::ReconnectRequested),
        (
            invalid_session(true),
            Signal::SessionInvalidated { resumable: true },
        ),
        (
            invalid_session(false),
            Signal::SessionInvalidated { resumable: false },
        ),
    ];
    for (json, signal) in cases {
        let d = decode(&mut c, &json).unwrap();
        assert_eq!(d.signal, Some(signal), "{json}");
        assert_eq!(d.item, None, "{json}");
    }
}

#[test]
fn ready_resumed_and_message_create() {
    let mut c = codec();
    c.reset(TransportId(1), OpenMode::Identify);
    let d = decode(&mut c, &ready(SESSION, 1)).unwrap();
    assert_eq!(d.signal, Some(Signal::HandshakeAccepted { resumed: false }));
    let Some(GatewayEvent::Ready(r)) = d.item else {
        panic!("{:?}", d.item)
    };
    assert_eq!(r.session_id, SESSION);
    assert_eq!(r.resume_gateway_url, RESUME_URL);
    let data: Value = r.data.deserialize().unwrap();
    assert_eq!(data["user"]["username"], "Nelly");
    assert_eq!(
        c.session(),
        Some(Session {
            session_id: SESSION.into(),
            resume_gateway_url: RESUME_URL.into(),
            seq: 1
        })
    );

    let d = decode(&mut c, &message_create(2, "Supa Hot")).unwrap();
    assert_eq!(d.signal, None);
    let Some(GatewayEvent::Dispatch(m)) = d.item else {
        panic!()
    };
    assert_eq!((m.seq, m.event_type.as_str()), (2, "MESSAGE_CREATE"));
    let data: Value = serde_json::from_slice(m.data.as_bytes()).unwrap();
    assert_eq!(data["content"], "Supa Hot");

    c.reset(TransportId(2), OpenMode::Resume);
    let d = decode(&mut c, &resumed(3)).unwrap();
    assert_eq!(d.signal, Some(Signal::HandshakeAccepted { resumed: true }));
    assert!(matches!(d.item, Some(GatewayEvent::Resumed(r)) if r.seq == Some(3)));
    assert_eq!(c.last_seq(), Some(3));
}

#[test]
fn dispatch_with_null_data_is_delivered_as_null() {
    let mut c = ready_codec();
    let d = decode(&mut c, r#"{"op":0,"s":2,"t":"SOMETHING_NEW","d":null}"#).unwrap();
    let Some(GatewayEvent::Dispatch(m)) = d.item else {
        panic!()
    };
    assert_eq!(m.data, RawJson::null());
}

#[test]
fn replayed_duplicates_are_dropped_and_gaps_counted() {
    let mut c = ready_codec();
    let script = [
        (2, true),
        (3, true),
        (2, false),
        (3, false),
        (4, true),
        (1, false),
        (7, true),
        (5, false),
        (8, true),
    ];
    for (s, expect) in script {
        let d = decode(&mut c, &message_create(s, "x")).unwrap();
        let delivered = matches!(d.item, Some(GatewayEvent::Dispatch(ref m)) if m.seq == s);
        assert_eq!(delivered, expect, "seq {s}");
        if !expect {
            assert_eq!(d, Decoded::nothing(), "seq {s}");
        }
    }
    let st = c.stats();
    assert_eq!(st.duplicates, 4);
    assert_eq!(st.seq_jumps, 1);
    assert_eq!(st.delivered, 6);
    assert_eq!(c.last_seq(), Some(8));
}

#[test]
fn new_session_after_a_lost_one_reports_a_gap_once() {
    let mut c = ready_codec();
    decode(&mut c, &message_create(2, "x")).unwrap();
    c.reset(TransportId(2), OpenMode::Identify);
    assert_eq!(c.session(), None);
    // The heartbeat of the new connection does not carry the old session's seq.
    assert_eq!(
        encode(&mut c, Payload::Heartbeat),
        json!({"op": 1, "d": null})
    );
    let d = decode(&mut c, &hello(41_250)).unwrap();
    assert!(matches!(d.signal, Some(Signal::Hello { .. })));
    assert!(matches!(d.item, Some(GatewayEvent::Gap(ref g))
        if g.session_id == SESSION && g.last_seq == 2 && g.delivered == 2));
    // The identify may fail and be retried: no second report.
    c.reset(TransportId(3), OpenMode::Identify);
    assert_eq!(decode(&mut c, &hello(41_250)).unwrap().item, None);
    assert_eq!(c.stats().sessions_lost, 1);
}

#[test]
fn a_fresh_codec_reports_no_gap() {
    let mut c = codec();
    c.reset(TransportId(1), OpenMode::Identify);
    assert_eq!(decode(&mut c, &hello(41_250)).unwrap().item, None);
}

#[test]
fn errors_are_typed_and_the_codec_stays_usable() {
    let mut c = ready_codec();
    type Check = fn(&ProtocolError) -> bool;
    let bad: [(&str, Check); 10] = [
        ("{not json", |e| {
            matches!(e, ProtocolError::MalformedJson { .. })
        }),
        (r#"{"op":99,"d":null}"#, |e| {
            *e == ProtocolError::UnknownOpcode { op: 99 }
        }),
        (r#"{"op":2,"d":{}}"#, |e| {
            *e == ProtocolError::UnexpectedOpcode {
                op: OpCode::Identify,
            }
        }),
        (r#"{"d":{}}"#, |e| {
            matches!(e, ProtocolError::MissingField { field: "op", .. })
        }),
        (r#"{"op":10,"d":{}}"#, |e| {
            matches!(
                e,
                ProtocolError::MissingField {
                    field: "heartbeat_interval",
                    ..
                }
            )
        }),
        (r#"{"op":10}"#, |e| {
            matches!(e, ProtocolError::MissingField { field: "d", .. })
        }),
        (r#"{"op":9}"#, |e| {
            matches!(e, ProtocolError::MissingField { field: "d", .. })
        }),
        (r#"{"op":9,"d":"yes"}"#, |e| {
            matches!(e, ProtocolError::MalformedJson { .. })
        }),
        (r#"{"op":0,"t":"MESSAGE_CREATE","d":{}}"#, |e| {
            matches!(e, ProtocolError::MissingField { field: "s", .. })
        }),
        (
            r#"{"op":0,"s":5,"t":"READY","d":{"resume_gateway_url":"wss://x"}}"#,
            |e| {
                matches!(
                    e,
                    ProtocolError::MissingField {
                        field: "session_id",
                        ..
                    }
                )
            },
        ),
    ];
    for (json, check) in bad {
        let err = decode(&mut c, json).unwrap_err();
        assert!(check(&err), "{json}: {err:?}");
        assert!(!err.needs_reconnect(), "{json}");
        // The next valid message still decodes.
        let d = decode(&mut c, &heartbeat_ack()).unwrap();
        assert_eq!(d.signal, Some(Signal::HeartbeatAck));
    }
    // None of the bad dispatches moved the sequence.
    assert_eq!(c.last_seq(), Some(1));
    assert_eq!(c.session().unwrap().session_id, SESSION);
}

/// A text message's UTF-8 is its transport's to check (the contract of `Message::Text`): the
/// codec does not check the whole message again, but the event name is checked where it becomes
/// a `str`, and a binary message (plain JSON sent as binary, or a decompressed one), which no
/// transport checks, is checked whole.
#[test]
fn text_is_taken_as_checked_and_the_strings_read_are_checked() {
    use bytes::Bytes;
    let mut c = ready_codec();
    // Invalid UTF-8 inside `d` of a text message: the event goes through with `d` as it came,
    // and reading `d` is the typed error.
    let mut wire = br#"{"op":0,"t":"MESSAGE_CREATE","s":2,"d":{"content":"x"}}"#.to_vec();
    let at = wire.windows(3).position(|w| w == b"\"x\"").unwrap() + 1;
    wire[at] = 0xFF;
    let d = c
        .decode(Instant::now(), Message::Text(Bytes::from(wire.clone())))
        .expect("a text message's bytes are the transport's to check");
    let Some(GatewayEvent::Dispatch(dispatch)) = d.item else {
        panic!("a dispatch: {d:?}");
    };
    assert_eq!(dispatch.seq, 2);
    assert!(dispatch.data.deserialize::<Value>().is_err());
    // The same bytes as a binary message are checked: a typed error, the seq unmoved.
    let err = c
        .decode(Instant::now(), Message::Binary(Bytes::from(wire)))
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::MalformedJson { .. }),
        "{err:?}"
    );
    // Invalid UTF-8 in the event name of a text message: a typed error.
    let wire = b"{\"op\":0,\"t\":\"MESSAGE_\xFF\",\"s\":3,\"d\":{}}";
    let err = c
        .decode(Instant::now(), Message::Text(Bytes::from_static(wire)))
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::MalformedJson { .. }),
        "{err:?}"
    );
    assert_eq!(c.last_seq(), Some(2));
    // An unknown key is passed over unread, its bytes too.
    let wire = b"{\"op\":0,\"t\":\"X\",\"s\":3,\"k\xFF\":1,\"d\":{}}";
    let d = c
        .decode(Instant::now(), Message::Text(Bytes::from_static(wire)))
        .unwrap();
    assert!(
        matches!(d.item, Some(GatewayEvent::Dispatch(ref x)) if x.seq == 3 && x.event_type == "X")
    );
}

#[test]
fn identify_carries_every_configured_field() {
    let mut cfg = config();
    cfg.shard = ShardId::new(3, 8).unwrap();
    cfg.large_threshold = Some(250);
    cfg.presence = Some(UpdatePresence {
        since: Some(91879201),
        activities: vec![Activity {
            name: "Cards Against Humanity".into(),
            kind: 0,
            url: None,
            state: None,
        }],
        status: PresenceStatus::Dnd,
        afk: false,
    });
    cfg.intents = crate::Intents::from_bits_retain(7 | (1 << 40));
    let mut c = DiscordCodec::new(cfg).unwrap();
    c.reset(TransportId(1), OpenMode::Identify);
    let v = encode(&mut c, Payload::Handshake(OpenMode::Identify));
    assert_eq!(
        v,
        json!({"op": 2, "d": {
            "token": TOKEN,
            "properties": {"os": std::env::consts::OS, "browser": "handover", "device": "handover"},
            "intents": 7u64 | (1u64 << 40),
            "shard": [3, 8],
            "presence": {"since": 91879201, "activities": [{"name": "Cards Against Humanity", "type": 0}], "status": "dnd", "afk": false},
            "large_threshold": 250
        }})
    );
}

#[test]
fn resume_and_heartbeat_carry_the_session() {
    let mut c = ready_codec();
    decode(&mut c, &message_create(2, "x")).unwrap();
    decode(&mut c, &message_create(1337, "x")).unwrap();
    assert_eq!(
        encode(&mut c, Payload::Heartbeat),
        json!({"op": 1, "d": 1337})
    );
    c.reset(TransportId(2), OpenMode::Resume);
    assert_eq!(
        encode(&mut c, Payload::Handshake(OpenMode::Resume)),
        json!({"op": 6, "d": {"token": TOKEN, "session_id": SESSION, "seq": 1337}})
    );
    // Without a session there is nothing to resume.
    let mut fresh = codec();
    assert_eq!(
        fresh
            .encode(Instant::now(), Payload::Handshake(OpenMode::Resume))
            .unwrap_err(),
        ProtocolError::NoSession
    );
}

#[test]
fn restored_session_resumes() {
    let mut c = codec();
    c.restore_session(Session {
        session_id: "saved".into(),
        resume_gateway_url: "wss://resume.example".into(),
        seq: 77,
    });
    c.reset(TransportId(1), OpenMode::Resume);
    assert_eq!(
        c.url(OpenMode::Resume),
        "wss://resume.example/?v=10&encoding=json"
    );
    assert_eq!(
        encode(&mut c, Payload::Handshake(OpenMode::Resume)),
        json!({"op": 6, "d": {"token": TOKEN, "session_id": "saved", "seq": 77}})
    );
    let saved = serde_json::to_string(&c.session().unwrap()).unwrap();
    let back: Session = serde_json::from_str(&saved).unwrap();
    assert_eq!(back.seq, 77);
}

#[cfg(all(feature = "zlib", feature = "zstd"))]
#[test]
fn urls_carry_version_encoding_and_compression() {
    let mut cfg = config();
    cfg.compression = Compression::ZlibStream;
    let mut c = DiscordCodec::new(cfg.clone()).unwrap();
    assert_eq!(
        c.url(OpenMode::Identify),
        "wss://gateway.discord.gg/?v=10&encoding=json&compress=zlib-stream"
    );
    // No session yet: a resume falls back to the gateway URL.
    assert_eq!(c.url(OpenMode::Resume), c.url(OpenMode::Identify));
    c.restore_session(Session {
        session_id: "s".into(),
        resume_gateway_url: RESUME_URL.into(),
        seq: 1,
    });
    assert_eq!(
        c.url(OpenMode::Resume),
        "wss://gateway-us-east1-b.discord.gg/?v=10&encoding=json&compress=zlib-stream"
    );
    cfg.compression = Compression::ZstdStream;
    cfg.gateway_url = "ws://127.0.0.1:9000/gw?v=6&keep=1&encoding=etf".into();
    let c = DiscordCodec::new(cfg).unwrap();
    assert_eq!(
        c.url(OpenMode::Identify),
        "ws://127.0.0.1:9000/gw?v=10&encoding=json&compress=zstd-stream&keep=1"
    );
}

/// With a compression feature off, a codec asking for that compression is refused at
/// construction with a typed error; the other compression and none still work.
#[test]
fn a_compression_left_out_of_the_build_is_refused_by_the_codec() {
    for compression in [Compression::ZlibStream, Compression::ZstdStream] {
        let mut cfg = config();
        cfg.compression = compression;
        match DiscordCodec::new(cfg) {
            Ok(c) => {
                assert!(compression.is_available());
                assert!(c.url(OpenMode::Identify).contains("compress="));
            }
            Err(e) => {
                assert!(!compression.is_available());
                assert!(
                    matches!(e, ProtocolError::CompressionUnavailable { compression: c, .. }
                        if Some(c) == compression.query_value()),
                    "{e:?}"
                );
            }
        }
    }
    assert!(DiscordCodec::new(config()).is_ok());
}

#[test]
fn bad_configurations_are_refused() {
    let mut cfg = config();
    cfg.gateway_url = "https://discord.com".into();
    assert!(matches!(
        DiscordCodec::new(cfg).unwrap_err(),
        ProtocolError::InvalidConfig { .. }
    ));
    let mut cfg = config();
    cfg.shard = ShardId { id: 2, count: 2 };
    assert!(DiscordCodec::new(cfg).is_err());
    let mut cfg = config();
    cfg.large_threshold = Some(49);
    assert!(DiscordCodec::new(cfg).is_err());
    let mut cfg = config();
    cfg.max_decompressed_bytes = 0;
    assert!(DiscordCodec::new(cfg).is_err());
}

#[test]
fn the_token_never_appears_in_debug_output() {
    let mut c = ready_codec();
    let dbg = [
        format!("{:?}", config()),
        format!("{:#?}", c),
        format!("{:?}", c.session()),
        format!("{:?}", Token::new(TOKEN).unwrap()),
        format!("{:?}", Token::new("bad token")),
        format!("{}", Token::new("bad token").unwrap_err()),
        format!(
            "{:?}",
            c.encode(Instant::now(), Payload::Handshake(OpenMode::Resume))
                .map(|_| ())
        ),
        format!("{:?}", decode(&mut c, "{garbage")),
        format!(
            "{:?}",
            IdentifyError::BudgetExceeded {
                shard_id: 0,
                identifies: 1,
                within: std::time::Duration::ZERO,
                retry_at: Instant::now()
            }
        ),
    ];
    for d in dbg {
        assert!(!d.contains(TOKEN), "token leaked: {d}");
        assert!(
            !d.contains("ZnCjm1XVW7vRze4b7Cq4se7kKWs"),
            "token part leaked: {d}"
        );
    }
    assert!(format!("{:?}", config()).contains("Token(<redacted>)"));
}

#[test]
fn commands_encode_as_documented() {
    let mut c = ready_codec();
    let now = Instant::now();
    let cases = [
        (
            Command::UpdateVoiceState(UpdateVoiceState {
                guild_id: Snowflake(41771983423143937),
                channel_id: None,
                self_mute: false,
                self_deaf: false,
            }),
            4,
        ),
        (
            Command::RequestGuildMembers(RequestGuildMembers::query(Snowflake(1), "", 0)),
            8,
        ),
        (
            Command::UpdatePresence(UpdatePresence::status(PresenceStatus::Invisible)),
            3,
        ),
    ];
    for (cmd, op) in cases {
        let m = c.encode_command(now, cmd).unwrap();
        let v: Value = serde_json::from_slice(m.as_bytes()).unwrap();
        assert_eq!(v["op"], op);
    }
    let raw_identify = Command::Raw {
        op: 2,
        d: RawJson::parse(r#"{"token":"x"}"#).unwrap(),
    };
    assert!(matches!(
        c.encode_command(now, raw_identify),
        Err(ProtocolError::InvalidCommand { .. })
    ));
}

#[test]
fn a_replayed_resumed_is_not_a_second_handshake() {
    // Connection 1 had a session; its RESUMED (seq 4) was written but never arrived. The
    // resume on connection 2 replays it among the missed events, then sends a new RESUMED.
    let mut c = ready_codec();
    c.reset(TransportId(2), OpenMode::Resume);
    decode(&mut c, &hello(41_250)).unwrap();
    let first = decode(&mut c, &resumed(4)).unwrap();
    assert_eq!(
        first.signal,
        Some(Signal::HandshakeAccepted { resumed: true })
    );
    assert!(matches!(first.item, Some(GatewayEvent::Resumed(_))));
    let again = decode(&mut c, &resumed(6)).unwrap();
    assert_eq!(again.signal, None, "one handshake per connection");
    // Delivered as the replayed dispatch it is, so sequence numbers stay gapless.
    match again.item {
        Some(GatewayEvent::Dispatch(d)) => {
            assert_eq!((d.seq, d.event_type.as_str()), (6, "RESUMED"));
        }
        other => panic!("expected a plain dispatch, got {other:?}"),
    }
    assert_eq!(c.last_seq(), Some(6));

    // The next connection's RESUMED is its handshake again.
    c.reset(TransportId(3), OpenMode::Resume);
    decode(&mut c, &hello(41_250)).unwrap();
    let next = decode(&mut c, &resumed(7)).unwrap();
    assert_eq!(
        next.signal,
        Some(Signal::HandshakeAccepted { resumed: true })
    );
}
