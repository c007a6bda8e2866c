//! The layer drives the lifecycle core with hand-fed server frames, without any socket.

use handover_core::{
    Codec, Event, GiveUpReason, Input, OpenMode, RestartReason, Signal, State, StopIntent,
};
use serde_json::json;

use super::fixtures::*;
use super::harness::{Harness, Seen, codec};
use crate::{CloseCode, Gap, GatewayEvent};

#[test]
fn identify_then_resume_then_new_session_with_gap() {
    let mut h = Harness::new(codec());

    // Start: a transport to the configured gateway, v10 JSON.
    h.input(Input::Start);
    let (c1, mode, url) = h.last_open().unwrap();
    assert_eq!(mode, OpenMode::Identify);
    assert_eq!(url, "wss://gateway.discord.gg/?v=10&encoding=json");
    h.input(Input::Opened(c1));
    h.take();

    // HELLO -> the core identifies at once. (A 10 s interval puts the first, jittered beat
    // before the 30 s handshake deadline.)
    h.server(c1, &hello(10_000));
    let identify = h.sent();
    assert_eq!(identify.len(), 1);
    assert_eq!(
        identify[0],
        json!({"op": 2, "d": {
            "token": TOKEN,
            "properties": {"os": std::env::consts::OS, "browser": "handover", "device": "handover"},
            "intents": 513,
            "shard": [0, 1]
        }})
    );
    assert_eq!(
        h.core.state(),
        State::Connecting(handover_core::ConnectingPhase::Handshaking)
    );

    // The first heartbeat before READY carries null.
    h.take();
    h.advance_to_deadline();
    assert_eq!(h.sent(), vec![json!({"op": 1, "d": null})]);
    h.server(c1, &heartbeat_ack());

    // READY -> identified; the application gets the session.
    h.take();
    h.server(c1, &ready(SESSION, 1));
    let seen = h.take();
    assert!(seen.contains(&Seen::Core(Event::Ready { conn: c1 })));
    assert!(matches!(
        &seen[0],
        Seen::App(GatewayEvent::Ready(r)) if r.session_id == SESSION && r.resume_gateway_url == RESUME_URL && r.seq == Some(1)
    ));
    assert_eq!(h.core.state(), State::Identified);

    // Dispatches flow in order.
    h.server(c1, &message_create(2, "first"));
    h.server(c1, &message_create(3, "second"));
    let seqs: Vec<u64> = h
        .app()
        .iter()
        .map(|e| match e {
            GatewayEvent::Dispatch(d) => {
                assert_eq!(d.event_type, "MESSAGE_CREATE");
                d.seq
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    let GatewayEvent::Dispatch(d) = &h.app()[0] else {
        unreachable!()
    };
    assert_eq!(
        d.data.deserialize::<serde_json::Value>().unwrap()["content"],
        "first"
    );

    // A heartbeat now carries the last sequence number.
    h.take();
    h.advance_to_deadline();
    assert_eq!(h.sent(), vec![json!({"op": 1, "d": 3})]);
    h.server(c1, &heartbeat_ack());

    // op 1 from the server: beat now.
    h.take();
    h.server(c1, &heartbeat_request());
    assert_eq!(h.sent(), vec![json!({"op": 1, "d": 3})]);

    // op 7: close keeping the session resumable (4000), then resume at resume_gateway_url.
    h.take();
    h.server(c1, &reconnect());
    assert!(h.seen.contains(&Seen::Close(c1, 4000)));
    h.closed(c1, Some(4000));
    assert!(h.seen.iter().any(|s| matches!(
        s,
        Seen::Core(Event::ReconnectScheduled {
            mode: OpenMode::Resume,
            ..
        })
    )));
    h.take();
    let (c2, mode, url) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    assert_eq!(
        url,
        "wss://gateway-us-east1-b.discord.gg/?v=10&encoding=json"
    );
    h.server(c2, &hello(41_250));
    assert_eq!(
        h.sent(),
        vec![json!({"op": 6, "d": {"token": TOKEN, "session_id": SESSION, "seq": 3}})]
    );

    // Replay: 3 was delivered already (dropped, counted), 4 is new; RESUMED ends the replay.
    h.take();
    h.server(c2, &message_create(3, "second"));
    h.server(c2, &message_create(4, "third"));
    h.server(c2, &resumed(5));
    let seen = h.take();
    let app: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::App(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(app.len(), 2);
    assert!(matches!(&app[0], GatewayEvent::Dispatch(d) if d.seq == 4));
    assert!(
        matches!(&app[1], GatewayEvent::Resumed(r) if r.session_id == SESSION && r.seq == Some(5))
    );
    assert!(seen.contains(&Seen::Core(Event::Resumed { conn: c2 })));
    assert_eq!(h.codec.stats().duplicates, 1);
    assert_eq!(h.core.status().identifies, 1);
    assert_eq!(h.core.status().resumes, 1);

    // op 9 d=false: close with 1000 (ends the session), identify afresh at the gateway URL.
    h.server(c2, &invalid_session(false));
    assert!(h.seen.contains(&Seen::Close(c2, 1000)));
    h.closed(c2, Some(1000));
    h.take();
    let (c3, mode, url) = h.reconnect();
    assert_eq!(mode, OpenMode::Identify);
    assert_eq!(url, "wss://gateway.discord.gg/?v=10&encoding=json");
    assert_eq!(h.codec.session(), None);

    // HELLO on the new connection reports the gap before anything of the new session.
    h.take();
    h.server(c3, &hello(41_250));
    let seen = h.take();
    assert_eq!(
        seen[0],
        Seen::App(GatewayEvent::Gap(Gap {
            session_id: SESSION.into(),
            last_seq: 5,
            delivered: 5,
        }))
    );
    assert!(matches!(&seen[1], Seen::Sent(c, v) if *c == c3 && v["op"] == 2));
    h.server(c3, &ready("second-session", 1));
    h.server(c3, &message_create(2, "new session"));
    assert!(
        matches!(&h.app()[..], [GatewayEvent::Ready(r), GatewayEvent::Dispatch(d)]
        if r.session_id == "second-session" && d.seq == 2)
    );
    assert_eq!(h.codec.stats().sessions_lost, 1);
    assert_eq!(h.core.status().identifies, 2);
}

/// Every close code lands in the documented lifecycle transition.
#[test]
fn every_close_code_lands_in_the_right_transition() {
    let resume = [4000, 4001, 4002, 4003, 4005, 4008];
    let new_session = [4007, 4009];
    let fatal = [4004, 4010, 4011, 4012, 4013, 4014];
    for code in CloseCode::ALL.iter().map(|c| c.code()) {
        let mut h = Harness::new(codec());
        let conn = h.identified(SESSION);
        h.server(conn, &message_create(2, "x"));
        h.take();
        h.closed(conn, Some(code));
        let seen = h.take();
        if fatal.contains(&code) {
            assert!(
                seen.contains(&Seen::Core(Event::GaveUp(GiveUpReason::FatalClose {
                    code: Some(code)
                }))),
                "{code}: {seen:?}"
            );
            assert_eq!(h.core.poll_timeout(), None, "{code}: no retry");
            continue;
        }
        let (next, mode, url) = h.reconnect();
        if resume.contains(&code) {
            assert_eq!(mode, OpenMode::Resume, "{code}");
            assert!(url.starts_with(RESUME_URL), "{code}: {url}");
            h.server(next, &hello(41_250));
            assert_eq!(h.sent().last().unwrap()["op"], 6, "{code}");
        } else {
            assert!(new_session.contains(&code), "{code} unlisted");
            assert_eq!(mode, OpenMode::Identify, "{code}");
            assert!(url.starts_with(GATEWAY), "{code}: {url}");
            h.take();
            h.server(next, &hello(41_250));
            let seen = h.take();
            assert!(
                matches!(&seen[0], Seen::App(GatewayEvent::Gap(g)) if g.last_seq == 2),
                "{code}: {seen:?}"
            );
            assert!(
                matches!(&seen[1], Seen::Sent(c, v) if *c == next && v["op"] == 2),
                "{code}: {seen:?}"
            );
        }
    }
    // A drop without a close frame resumes too.
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.closed(conn, None);
    assert_eq!(h.reconnect().1, OpenMode::Resume);
}

#[test]
fn invalid_session_resumable_resumes() {
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.take();
    h.server(conn, &invalid_session(true));
    assert!(h.seen.contains(&Seen::Close(conn, 4000)));
    h.closed(conn, Some(4000));
    let (next, mode, _) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    h.take();
    h.server(next, &hello(41_250));
    assert_eq!(
        h.sent(),
        vec![json!({"op": 6, "d": {"token": TOKEN, "session_id": SESSION, "seq": 1}})]
    );
}

#[test]
fn stopping_uses_1000_or_4000() {
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.input(Input::Stop(StopIntent::KeepResumable));
    assert!(h.seen.contains(&Seen::Close(conn, 4000)));
    h.closed(conn, Some(4000));
    h.input(Input::Start);
    assert_eq!(h.last_open().unwrap().1, OpenMode::Resume);

    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.input(Input::Stop(StopIntent::EndSession));
    assert!(h.seen.contains(&Seen::Close(conn, 1000)));
}

#[test]
fn hot_restart_resumes_without_spending_an_identify() {
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.server(conn, &message_create(2, "x"));
    h.input(Input::Restart(RestartReason::HealthMonitor));
    assert!(h.seen.contains(&Seen::Close(conn, 4000)));
    h.closed(conn, Some(4000));
    let (next, mode, _) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    h.take();
    h.server(next, &hello(41_250));
    h.server(next, &resumed(3));
    assert_eq!(h.core.status().identifies, 1);
    assert_eq!(h.core.status().resumed, 1);
    assert!(h.sent()[0]["d"]["seq"] == 2);
}

#[test]
fn zombie_connection_is_closed_resumable() {
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    // Beat, no ACK; next beat finds it unacknowledged: probe, then close after the grace.
    for _ in 0..3 {
        h.advance_to_deadline();
        if h.seen.iter().any(|s| matches!(s, Seen::Close(..))) {
            break;
        }
    }
    assert!(h.seen.contains(&Seen::Close(conn, 4000)), "{:?}", h.seen);
}

#[test]
fn resume_without_a_session_falls_back_to_identify() {
    // The core believes a session is held, the codec has none (lost state): HELLO on the
    // resume connection invalidates instead of sending a RESUME that cannot be built.
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    h.closed(conn, None);
    let (next, mode, _) = h.reconnect();
    assert_eq!(mode, OpenMode::Resume);
    h.codec = codec();
    h.codec.reset(next, OpenMode::Resume);
    let d = h
        .codec
        .decode(h.now, handover_core::Message::text(hello(41_250)))
        .unwrap();
    assert_eq!(
        d.signal,
        Some(Signal::SessionInvalidated { resumable: false })
    );
    h.input(Input::Signal {
        conn: next,
        signal: d.signal.unwrap(),
    });
    assert!(h.seen.contains(&Seen::Close(next, 1000)));
    h.closed(next, Some(1000));
    assert_eq!(h.reconnect().1, OpenMode::Identify);
}

#[test]
fn commands_are_sendable_only_through_the_codec_limits() {
    use crate::{Command, PresenceStatus, UpdatePresence};
    let mut h = Harness::new(codec());
    let conn = h.identified(SESSION);
    assert_eq!(h.core.sendable_transport(), Some(conn));
    let msg = h
        .codec
        .encode_command(
            h.now,
            Command::UpdatePresence(UpdatePresence::status(PresenceStatus::Idle)),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(msg.as_bytes()).unwrap();
    assert_eq!(v["op"], 3);
    assert_eq!(v["d"]["status"], "idle");
    // Handshake + command counted in the connection's window.
    assert_eq!(h.codec.sends_in_window(h.now), 2);
}
