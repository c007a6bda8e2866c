//! What the codec hands on beyond one item per message: a gap reported together with the READY
//! that replaced a session, a gap for a restored session that is lost, a restart asked for a
//! corrupted compressed stream, and the floor on HELLO's heartbeat interval.

use std::time::Duration;

use bytes::Bytes;
use handover_core::{Codec, Config, Connection, Input, Message, OpenMode, Signal};

use super::fixtures::*;
use super::harness::{Harness, Seen, codec, config};
use crate::{
    CLOSE_RULES, Compression, DiscordCodec, Gap, GatewayEvent, MIN_HEARTBEAT_INTERVAL, Session,
    ZlibStreamEncoder,
};

#[test]
fn a_ready_answering_a_resume_reports_the_gap_just_before_it() {
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.server(conn, &message_create(2, "a"));
    h.server(conn, &message_create(3, "b"));
    h.closed(conn, None);
    let (next, mode, _) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    h.server(next, &hello(41_250));
    h.take();
    // The server answers the RESUME with a READY of a new session.
    h.server(next, &ready("other-session", 1));
    let app = h.app();
    assert_eq!(app.len(), 2, "{app:?}");
    assert_eq!(
        app[0],
        GatewayEvent::Gap(Gap {
            session_id: SESSION.into(),
            last_seq: 3,
            delivered: 3,
        })
    );
    assert!(matches!(&app[1], GatewayEvent::Ready(r) if r.session_id == "other-session"));
    // Nothing is left over for the next HELLO.
    h.closed(next, None);
    let (third, _, _) = h.reconnect();
    h.take();
    h.server(third, &hello(41_250));
    assert!(h.app().is_empty(), "{:?}", h.app());
}

#[test]
fn a_restored_session_that_is_lost_is_reported_as_a_gap() {
    for lost in [invalid_session(false), String::new()] {
        let mut codec = codec();
        codec.restore_session(Session {
            session_id: SESSION.into(),
            resume_gateway_url: RESUME_URL.into(),
            seq: 1110,
        });
        let mut h = Harness::new(codec);
        h.core = Connection::with_restored_session(
            Config {
                close_rules: CLOSE_RULES,
                ..Config::default()
            },
            7,
        );
        h.input(Input::Start);
        let (conn, mode, _) = h.last_open().unwrap();
        assert_eq!(mode, OpenMode::Resume);
        h.input(Input::Opened(conn));
        h.server(conn, &hello(41_250));
        if lost.is_empty() {
            // A seq the gateway never sent: it closes with 4007 (invalid seq).
            h.closed(conn, Some(4007));
        } else {
            h.server(conn, &lost);
            h.closed(conn, Some(1000));
        }
        let (next, mode, _) = h.reconnect();
        assert_eq!(mode, OpenMode::Identify);
        h.take();
        h.server(next, &hello(41_250));
        assert_eq!(
            h.app(),
            vec![GatewayEvent::Gap(Gap {
                session_id: SESSION.into(),
                last_seq: 1110,
                delivered: 0,
            })],
            "lost by {lost:?}"
        );
    }
}

#[test]
fn a_restored_session_that_delivered_nothing_is_no_gap() {
    let mut codec = codec();
    codec.restore_session(Session {
        session_id: SESSION.into(),
        resume_gateway_url: RESUME_URL.into(),
        seq: 0,
    });
    codec.reset(handover_core::TransportId(1), OpenMode::Identify);
    let d = codec
        .decode(std::time::Instant::now(), Message::text(hello(41_250)))
        .unwrap();
    assert_eq!(d.item, None);
}

#[test]
fn a_corrupted_compressed_stream_asks_for_one_restart_per_connection() {
    let mut cfg = config();
    cfg.compression = Compression::ZlibStream;
    let mut h = Harness::new(DiscordCodec::new(cfg).unwrap());
    h.input(Input::Start);
    let (conn, _, _) = h.last_open().unwrap();
    h.input(Input::Opened(conn));
    let mut enc = ZlibStreamEncoder::new();
    let frame = |enc: &mut ZlibStreamEncoder, json: &str| {
        Message::Binary(Bytes::from(enc.compress(json.as_bytes())))
    };
    h.server_msg(conn, frame(&mut enc, &hello(41_250))).unwrap();
    h.server_msg(conn, frame(&mut enc, &ready(SESSION, 1)))
        .unwrap();
    assert_eq!(h.core.sendable_transport(), Some(conn));
    h.take();
    // Garbage that ends like a message: the inflate context is poisoned.
    let mut garbage = vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x11];
    garbage.extend_from_slice(&crate::ZLIB_SUFFIX);
    assert!(
        h.server_msg(conn, Message::Binary(Bytes::from(garbage)))
            .is_err()
    );
    assert!(
        h.seen.contains(&Seen::Close(conn, 4000)),
        "restarted at once, resumable: {:?}",
        h.seen
    );
    // Later frames on the same socket fail too, but ask for nothing more.
    h.take();
    assert!(
        h.server_msg(conn, frame(&mut enc, &heartbeat_ack()))
            .is_err()
    );
    assert!(!h.codec.poll_restart());
    assert!(h.take().is_empty());
    // A new connection gets a fresh context and a fresh right to ask.
    h.closed(conn, Some(4000));
    let (next, mode, _) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    let mut enc = ZlibStreamEncoder::new();
    h.server_msg(next, frame(&mut enc, &hello(41_250))).unwrap();
    assert!(!h.codec.poll_restart());
}

#[test]
fn a_hello_below_the_floor_is_raised_to_it() {
    for (asked, expected) in [
        (0, MIN_HEARTBEAT_INTERVAL),
        (1, MIN_HEARTBEAT_INTERVAL),
        (100, Duration::from_millis(100)),
        (41_250, Duration::from_millis(41_250)),
    ] {
        let mut c = codec();
        c.reset(handover_core::TransportId(1), OpenMode::Identify);
        let d = c
            .decode(std::time::Instant::now(), Message::text(hello(asked)))
            .unwrap();
        assert_eq!(
            d.signal,
            Some(Signal::Hello { interval: expected }),
            "{asked}"
        );
    }
    let mut cfg = config();
    cfg.min_heartbeat_interval = Duration::from_millis(5);
    let mut c = DiscordCodec::new(cfg).unwrap();
    c.reset(handover_core::TransportId(1), OpenMode::Identify);
    let d = c
        .decode(std::time::Instant::now(), Message::text(hello(10)))
        .unwrap();
    assert_eq!(
        d.signal,
        Some(Signal::Hello {
            interval: Duration::from_millis(10)
        })
    );
}
