//! Every scriptable fault of the mock gateway, and its counters, over real loopback sockets.

mod mock_util;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handover_mock::{
    Fault, Garbage, MockConfig, MockError, ShardKey, StreamId, StreamRate, StreamSpec, Target,
};
use mock_util::{Client, Frame, QUIET, WAIT, fast_config, identified, start};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SHARD0: ShardKey = ShardKey::new(0, 0);

#[tokio::test]
async fn a_zombie_stops_acking_and_sends_nothing_more_while_tcp_stays_open() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, _) = identified(&mock.url(), [0, 1]).await;
    c.heartbeat().await;
    c.expect_op(11).await;
    assert_eq!(handle.inject(SHARD0, Fault::Zombie), 1);

    // Heartbeats, a ping and a dispatch all go unanswered.
    c.heartbeat().await;
    c.ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    c.heartbeat().await;
    handle
        .wait_for(WAIT, |k| k.shard(0).heartbeats_received == 3)
        .await
        .unwrap();
    assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &json!({})), 0);
    // Even the close frame gets no reply, and TCP is not closed.
    c.close(4000).await;
    handle
        .wait_for(WAIT, |k| k.close_frames == [4000])
        .await
        .unwrap();
    assert_eq!(c.recv_within(QUIET).await, None);
    let counters = handle.counters();
    assert_eq!(counters.live_sockets, 1);
    assert_eq!(counters.shard(0).acks_sent, 1);
    // Only a drop still acts; the first thing the client ever sees after the zombie is EOF.
    assert_eq!(handle.inject(SHARD0, Fault::DropTcp), 1);
    assert_eq!(c.recv().await, Frame::Eof);
    handle
        .wait_for(WAIT, |k| k.live_sockets == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_acks_leaves_everything_else_flowing() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, _) = identified(&mock.url(), [0, 1]).await;
    handle.inject(SHARD0, Fault::StopAcks);
    c.heartbeat().await;
    handle
        .wait_for(WAIT, |k| k.shard(0).heartbeats_received == 1)
        .await
        .unwrap();
    handle.dispatch(0, "MESSAGE_CREATE", &json!({ "after": "beat" }));
    // The dispatch is the next frame: no ACK came before it.
    assert_eq!(
        c.expect_dispatch("MESSAGE_CREATE").await["d"]["after"],
        "beat"
    );
    assert_eq!(handle.counters().shard(0).acks_sent, 0);
}

#[tokio::test]
async fn drop_tcp_ends_the_socket_without_a_close_frame_and_the_session_resumes() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    assert_eq!(handle.inject(SHARD0, Fault::DropTcp), 1);
    assert_eq!(a.recv().await, Frame::Eof);
    handle
        .wait_for(WAIT, |k| k.live_sockets == 0)
        .await
        .unwrap();
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    b.expect_dispatch("RESUMED").await;
}

#[tokio::test]
async fn ignored_close_frames_get_no_reply_and_tcp_stays_open_until_the_client_drops() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, sid) = identified(&mock.url(), [0, 1]).await;
    assert_eq!(handle.inject(SHARD0, Fault::IgnoreCloseFrames), 1);
    // Until the close frame, traffic flows as usual.
    c.heartbeat().await;
    c.expect_op(11).await;
    c.close(1000).await;
    handle
        .wait_for(WAIT, |k| k.shard(0).close_frames == [1000])
        .await
        .unwrap();
    assert_eq!(c.recv_within(QUIET).await, None, "no close reply, no EOF");
    assert_eq!(handle.counters().live_sockets, 1);
    drop(c);
    handle
        .wait_for(WAIT, |k| k.live_sockets == 0)
        .await
        .unwrap();
    // The unanswered 1000 still ended the session.
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    assert_eq!(b.expect_op(9).await["d"], false);
}

#[tokio::test]
async fn reconnect_sends_op_7_and_the_session_resumes() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    assert_eq!(handle.inject(SHARD0, Fault::Reconnect), 1);
    assert_eq!(a.expect_op(7).await["d"], json!(null));
    a.close(4000).await;
    assert_eq!(a.expect_close().await, Some(4000));
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    b.expect_dispatch("RESUMED").await;
    let shard = handle.counters().shard(0);
    assert_eq!((shard.reconnects_sent, shard.resumes_ok), (1, 1));
}

#[tokio::test]
async fn invalid_session_true_keeps_the_session_and_false_ends_it() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();

    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    handle.inject(SHARD0, Fault::InvalidSession { resumable: true });
    assert_eq!(a.expect_op(9).await["d"], true);
    // Discord lets the client RESUME on the same connection.
    a.send_resume(&sid, 1).await;
    a.expect_dispatch("RESUMED").await;

    handle.inject(SHARD0, Fault::InvalidSession { resumable: false });
    assert_eq!(a.expect_op(9).await["d"], false);
    a.send_resume(&sid, 2).await;
    assert_eq!(a.expect_op(9).await["d"], false);
    // A fresh IDENTIFY on the same connection starts a new session.
    let ready = a.identify([0, 1]).await;
    assert_ne!(ready["session_id"], sid.as_str());
    let shard = handle.counters().shard(0);
    assert_eq!(shard.invalid_sessions_sent, 3);
    assert_eq!((shard.resumes_ok, shard.resumes_failed), (1, 1));
}

#[tokio::test]
async fn close_with_a_code_and_the_session_fate_follows_the_code() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    for (code, resumable) in [(4000, true), (4009, false), (1000, true)] {
        let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
        assert_eq!(handle.inject(SHARD0, Fault::Close(code)), 1);
        assert_eq!(a.expect_close().await, Some(code));
        // Reading on lets the client library send its close reply; the mock then ends TCP.
        assert_eq!(a.recv().await, Frame::Eof);
        handle
            .wait_for(WAIT, |k| k.live_sockets == 0)
            .await
            .unwrap();
        let (mut b, _) = Client::hello(&mock.url()).await;
        b.send_resume(&sid, 1).await;
        let reply = b.recv().await;
        let Frame::Json(v) = reply else {
            panic!("{code}: {reply:?}")
        };
        assert_eq!(v["t"] == "RESUMED", resumable, "{code}: {v}");
        b.close(1000).await;
        b.expect_close().await;
    }
    let shard = handle.counters().shard(0);
    assert_eq!(shard.server_closes, vec![4000, 4009, 1000]);
    // Replies to the mock's own closes count as received close frames (plus each resumed
    // session's final 1000; the failed resume in round two never counted for the shard).
    assert_eq!(shard.close_frames, vec![4000, 1000, 4009, 1000, 1000]);
}

#[tokio::test]
async fn delayed_replies_arrive_late_and_in_order() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, _) = identified(&mock.url(), [0, 1]).await;
    let delay = Duration::from_millis(150);
    handle.inject(SHARD0, Fault::Delay(delay));
    let sent = tokio::time::Instant::now();
    c.heartbeat().await;
    handle
        .wait_for(WAIT, |k| k.shard(0).heartbeats_received == 1)
        .await
        .unwrap();
    handle.inject(SHARD0, Fault::RequestHeartbeat);
    handle.dispatch(0, "MESSAGE_CREATE", &json!({}));
    c.expect_op(11).await;
    assert!(sent.elapsed() >= delay, "ack after {:?}", sent.elapsed());
    c.expect_op(1).await;
    c.expect_dispatch("MESSAGE_CREATE").await;
    // Back to no delay.
    handle.inject(SHARD0, Fault::Delay(Duration::ZERO));
    c.heartbeat().await;
    c.expect_op(11).await;
}

#[tokio::test]
async fn garbage_frames_arrive_as_sent_and_the_connection_lives_on() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, _) = identified(&mock.url(), [0, 1]).await;
    handle.inject(SHARD0, Fault::Garbage(Garbage::Text));
    handle.inject(SHARD0, Fault::Garbage(Garbage::Binary));
    match c.recv().await {
        Frame::Text(t) => assert!(serde_json::from_str::<serde_json::Value>(&t).is_err()),
        other => panic!("expected invalid JSON text, got {other:?}"),
    }
    match c.recv().await {
        Frame::Binary(b) => assert_eq!(b.len(), 64),
        other => panic!("expected binary junk, got {other:?}"),
    }
    c.heartbeat().await;
    c.expect_op(11).await;
}

#[tokio::test]
async fn a_stream_at_a_rate_delivers_every_dispatch_in_order() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, sid) = identified(&mock.url(), [0, 1]).await;
    let every = Duration::from_millis(20);
    let started = tokio::time::Instant::now();
    let id = handle.stream(StreamSpec {
        shard: SHARD0,
        event: "TYPING_START".into(),
        data: json!({ "user_id": "1" }),
        count: 5,
        rate: StreamRate::Every(every),
    });
    for seq in 2..7 {
        assert_eq!(c.expect_dispatch("TYPING_START").await["s"], seq);
        // The dispatch just read was written.
        assert!(handle.stream_remaining(id) <= 6 - seq, "after seq {seq}");
    }
    assert_eq!(handle.stream_remaining(id), 0, "the last one written");
    assert!(started.elapsed() >= every * 4);
    assert_eq!(
        handle.counters().shard(0).sessions[&sid].seqs(),
        (1..7).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_paced_stream_tells_what_it_has_not_written_yet() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut c, _sid) = identified(&mock.url(), [0, 1]).await;
    // The first dispatch is written at once, the next ones an hour apart.
    let id = handle.stream(StreamSpec {
        shard: SHARD0,
        event: "TYPING_START".into(),
        data: json!({ "user_id": "1" }),
        count: 3,
        rate: StreamRate::Every(Duration::from_secs(3600)),
    });
    assert_eq!(c.expect_dispatch("TYPING_START").await["s"], 2);
    assert_eq!(handle.stream_remaining(id), 2);
    assert!(handle.cancel_stream(id));
    assert_eq!(
        handle.stream_remaining(id),
        0,
        "a cancelled stream writes nothing more"
    );
    assert_eq!(handle.stream_remaining(StreamId(999)), 0, "no such stream");
}

#[tokio::test]
async fn a_stream_as_fast_as_the_client_reads_is_paced_by_the_reader() {
    let mock = start(MockConfig {
        stream_batch: 16,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let mut c = Client::connect_small_buffer(&mock.url()).await;
    c.expect_op(10).await;
    let sid = c.identify([0, 1]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let count: u64 = 20_000;
    let blob = "x".repeat(1024);
    let id = handle.stream(StreamSpec {
        shard: SHARD0,
        event: "MESSAGE_CREATE".into(),
        data: json!({ "content": blob }),
        count,
        rate: StreamRate::AsFastAsRead,
    });
    // Read a few, then stop reading: the mock must stop producing (about 20 MB would be needed
    // to finish, far more than the socket buffers hold).
    for seq in 2..12 {
        assert_eq!(c.expect_dispatch("MESSAGE_CREATE").await["s"], seq);
    }
    let stalled = handle
        .wait_for(QUIET, |k| k.shard(0).sessions[&sid].sent > count)
        .await;
    assert!(matches!(stalled, Err(MockError::Timeout)));
    let sent = handle.counters().shard(0).sessions[&sid].sent;
    assert!(
        sent < count / 2,
        "{sent} written while the client was not reading"
    );
    // Read the rest, checking order cheaply on the frame prefix.
    for seq in 12..count + 2 {
        let frame = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = frame else {
            panic!("unexpected {frame:?}")
        };
        let prefix = format!("{{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"s\":{seq},");
        assert!(text.starts_with(&prefix), "{}", &text[..60]);
    }
    assert!(!handle.cancel_stream(id), "the stream finished by itself");
    assert_eq!(handle.counters().shard(0).sessions[&sid].sent, count + 1);
}

#[tokio::test]
async fn counters_track_sockets_sessions_and_close_codes_per_shard() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        shards: 2,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let url = mock.url();
    let (mut a, sa) = identified(&url, [0, 2]).await;
    let (mut b, sb) = identified(&url, [0, 2]).await;
    let (mut other, _) = identified(&url, [1, 2]).await;
    let (mut idle, _) = Client::hello(&url).await;
    handle.dispatch(0, "MESSAGE_CREATE", &json!({}));
    a.expect_dispatch("MESSAGE_CREATE").await;
    b.expect_dispatch("MESSAGE_CREATE").await;
    // B leaves with a resumable code, A resumes B's session after a miss.
    b.close(4000).await;
    b.expect_close().await;
    handle
        .wait_for(WAIT, |k| k.shard(0).live_sockets == 1)
        .await
        .unwrap();
    handle.dispatch(0, "MESSAGE_CREATE", &json!({}));
    a.expect_dispatch("MESSAGE_CREATE").await;
    let (mut r, _) = Client::hello(&url).await;
    r.send_resume(&sb, 2).await;
    r.expect_dispatch("MESSAGE_CREATE").await;
    r.expect_dispatch("RESUMED").await;
    let (mut bad, _) = Client::hello(&url).await;
    bad.send_resume("no-such-session", 1).await;
    assert_eq!(bad.expect_op(9).await["d"], false);
    idle.close(1001).await;
    idle.expect_close().await;
    other.close(1000).await;
    other.expect_close().await;
    let k = handle
        .wait_for(WAIT, |k| k.live_sockets == 3)
        .await
        .unwrap();

    assert_eq!(k.connections_accepted, 6);
    assert_eq!(k.max_live_sockets, 5);
    assert_eq!(k.resumes_unknown_session, 1);
    assert_eq!(k.close_frames, vec![4000, 1001, 1000]);
    let s0 = k.shard(0);
    assert_eq!((s0.live_sockets, s0.max_live_sockets), (2, 2));
    assert_eq!((s0.identifies, s0.sessions_started), (2, 2));
    assert_eq!((s0.resumes_ok, s0.resumes_failed), (1, 0));
    assert_eq!(s0.close_frames, vec![4000]);
    assert_eq!(s0.sessions[&sa].seqs(), vec![1, 2, 3]);
    assert_eq!(s0.sessions[&sb].seqs(), vec![1, 2, 3, 4]);
    assert_eq!(s0.sessions[&sb].replayed, 1);
    let s1 = k.shard(ShardKey::new(0, 1));
    assert_eq!((s1.live_sockets, s1.max_live_sockets), (0, 1));
    assert_eq!(s1.close_frames, vec![1000]);
    // The per-connection view agrees.
    let open: Vec<_> = handle
        .connections()
        .into_iter()
        .filter_map(|c| c.shard)
        .collect();
    assert_eq!(open, vec![SHARD0, SHARD0]);
    assert_eq!(handle.inject(Target::All, Fault::RequestHeartbeat), 3);
}

/// Discord keeps reading a client that stops reading: heartbeats still arrive while the
/// gateway's own writes are blocked, the session is kept (no 4000, no 4009), and a RESUME
/// replays what the client never read. Timers are scaled down: the client stops reading for
/// ten heartbeat intervals (at Discord's 41.25 s, about seven minutes) while thousands of
/// 1 KiB events, far more than the socket buffers hold, are dispatched.
#[tokio::test]
async fn a_client_that_stops_reading_during_a_stream_keeps_its_session_and_resumes_it() {
    let interval = Duration::from_millis(200);
    let count: u64 = 12_000;
    let mock = start(MockConfig {
        heartbeat_interval: interval,
        heartbeat_grace: Some(Duration::from_millis(300)),
        replay_buffer: 20_000,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let mut c = Client::connect_small_buffer(&mock.url()).await;
    c.expect_op(10).await;
    let sid = c.identify([0, 1]).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    handle.stream(StreamSpec {
        shard: SHARD0,
        event: "MESSAGE_CREATE".into(),
        data: json!({ "content": "x".repeat(1024) }),
        count,
        rate: StreamRate::Every(Duration::from_micros(50)),
    });
    for seq in 2..12 {
        assert_eq!(c.expect_dispatch("MESSAGE_CREATE").await["s"], seq);
    }
    // Stop reading; keep heartbeating for ten intervals.
    let beats = 20;
    for _ in 0..beats {
        c.heartbeat().await;
        tokio::time::sleep(interval / 2).await;
    }
    let k = handle
        .wait_for(WAIT, |k| k.shard(0).heartbeats_received >= beats)
        .await
        .expect("every heartbeat read while the mock could not write");
    let s0 = k.shard(0);
    assert_eq!(
        s0.server_closes,
        Vec::<u16>::new(),
        "the session was timed out"
    );
    assert_eq!((s0.live_sockets, k.connections_accepted), (1, 1));
    let open = handle.connections();
    assert_eq!(open[0].session_id.as_deref(), Some(sid.as_str()));
    assert!(!open[0].closing);
    assert_eq!(k.shard(0).sessions[&sid].sent, count + 1, "all queued");

    // The client gives up on the socket and resumes from the last event it read.
    drop(c);
    handle
        .wait_for(WAIT, |k| k.live_sockets == 0)
        .await
        .unwrap();
    let (mut r, _) = Client::hello(&mock.url()).await;
    r.send_resume(&sid, 11).await;
    for seq in 12..count + 2 {
        let frame = tokio::time::timeout(WAIT, r.ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = frame else {
            panic!("unexpected {frame:?}")
        };
        let prefix = format!("{{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"s\":{seq},");
        assert!(text.starts_with(&prefix), "{}", &text[..60]);
    }
    assert_eq!(r.expect_dispatch("RESUMED").await["s"], count + 2);
    let s0 = handle.counters().shard(0);
    assert_eq!((s0.resumes_ok, s0.resumes_failed), (1, 0));
    assert_eq!(s0.sessions[&sid].replayed, count - 10);
}
