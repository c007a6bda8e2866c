//! The mock gateway's protocol behaviour, over real loopback sockets.

mod mock_util;

use std::time::Duration;

use handover_mock::{Fault, MockConfig, SessionStartLimit, ShardKey};
use mock_util::{Client, Frame, TOKEN, fast_config, http_get, identified, start};
use serde_json::json;

#[tokio::test]
async fn hello_carries_the_configured_interval_and_every_heartbeat_is_acked() {
    let mock = start(MockConfig {
        heartbeat_interval: Duration::from_millis(1234),
        ..fast_config()
    })
    .await;
    let (mut c, hello) = Client::hello(&mock.url()).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 1234);
    assert_eq!(hello["s"], json!(null));
    for _ in 0..3 {
        c.heartbeat().await;
        let ack = c.expect_op(11).await;
        assert_eq!(ack["d"], json!(null));
    }
}

#[tokio::test]
async fn the_mock_requests_a_heartbeat_on_demand() {
    let mock = start(fast_config()).await;
    let (mut c, _) = identified(&mock.url(), [0, 1]).await;
    assert_eq!(
        mock.handle()
            .inject(ShardKey::new(0, 0), Fault::RequestHeartbeat),
        1
    );
    let req = c.expect_op(1).await;
    assert_eq!(req["d"], json!(null));
    c.heartbeat().await;
    c.expect_op(11).await;
}

#[tokio::test]
async fn identify_gets_ready_with_session_and_resume_url() {
    let mock = start(MockConfig {
        shards: 4,
        ..fast_config()
    })
    .await;
    let (mut c, _) = Client::hello(&mock.url()).await;
    c.send_identify(TOKEN, [2, 4], 513).await;
    let ready = c.expect_dispatch("READY").await;
    assert_eq!(ready["s"], 1);
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["resume_gateway_url"], mock.url());
    assert_eq!(d["shard"], json!([2, 4]));
    assert_eq!(d["guilds"], json!([]));
    assert_eq!(d["user"]["bot"], true);
    assert!(d["application"]["id"].is_string());
    let sid = d["session_id"].as_str().unwrap();
    assert_eq!(sid.len(), 32);
    let shard = mock.handle().counters().shard(ShardKey::new(0, 2));
    assert_eq!(shard.sessions_started, 1);
    assert_eq!(shard.sessions[sid].seqs(), vec![1]);
}

#[tokio::test]
async fn resume_replays_missed_dispatches_in_order_then_resumed() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    for i in 0..2 {
        handle.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
        let ev = a.expect_dispatch("MESSAGE_CREATE").await;
        assert_eq!(ev["d"]["i"], i);
    }
    assert_eq!(a.last_seq, Some(3));
    // Leave without a close frame: the session stays resumable.
    drop(a);
    handle
        .wait_for(mock_util::WAIT, |c| c.live_sockets == 0)
        .await
        .unwrap();
    for i in 2..5 {
        assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i })), 0);
    }
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 3).await;
    for (i, seq) in (2..5).zip(4..) {
        let ev = b.expect_dispatch("MESSAGE_CREATE").await;
        assert_eq!(
            (ev["d"]["i"].clone(), ev["s"].clone()),
            (json!(i), json!(seq))
        );
    }
    let resumed = b.expect_dispatch("RESUMED").await;
    assert_eq!(resumed["s"], 7);
    // New events keep numbering after RESUMED.
    handle.dispatch(0, "MESSAGE_CREATE", &json!({ "i": 5 }));
    assert_eq!(b.expect_dispatch("MESSAGE_CREATE").await["s"], 8);
    let shard = handle.counters().shard(0);
    assert_eq!(shard.resumes_ok, 1);
    assert_eq!(shard.sessions[&sid].seqs(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

#[tokio::test]
async fn resume_after_the_window_gets_invalid_session_false() {
    let mock = start(MockConfig {
        resume_window: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    a.close(4000).await;
    assert_eq!(a.expect_close().await, Some(4000));
    handle
        .wait_for(mock_util::WAIT, |c| c.live_sockets == 0)
        .await
        .unwrap();
    handle
        .wait_for(mock_util::WAIT, |c| c.sessions_expired == 1)
        .await
        .unwrap();
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    let nine = b.expect_op(9).await;
    assert_eq!(nine["d"], false);
    let shard = handle.counters().shard(0);
    assert_eq!((shard.resumes_ok, shard.resumes_failed), (0, 1));
    assert_eq!(shard.invalid_sessions_sent, 1);
    // The connection is still usable: a fresh IDENTIFY works on it.
    b.identify([0, 1]).await;
}

#[tokio::test]
async fn resume_of_a_session_this_mock_never_issued_gets_invalid_session_false() {
    // One issued by another mock (with its own seed), and one made up.
    let other = start(MockConfig {
        seed: 1,
        ..fast_config()
    })
    .await;
    let (_c, foreign) = identified(&other.url(), [0, 1]).await;
    let mock = start(MockConfig {
        seed: 2,
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    for (n, sid) in [foreign.as_str(), "00112233445566778899aabbccddeeff"]
        .into_iter()
        .enumerate()
    {
        let (mut c, _) = Client::hello(&mock.url()).await;
        c.send_resume(sid, 1).await;
        let nine = c.expect_op(9).await;
        assert_eq!(nine, json!({"op": 9, "d": false, "s": null, "t": null}));
        assert_eq!(handle.counters().resumes_unknown_session, n as u64 + 1);
        // Like Discord, op 9 leaves the connection open: it may identify now.
        let ready = c.identify([0, 1]).await;
        assert_ne!(ready["session_id"], sid);
    }
    let shard = handle.counters().shard(0);
    assert_eq!((shard.resumes_ok, shard.sessions_started), (0, 2));
}

#[tokio::test]
async fn resume_with_a_seq_beyond_the_session_closes_4007() {
    let mock = start(fast_config()).await;
    let (a, sid) = identified(&mock.url(), [0, 1]).await;
    drop(a);
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 99).await;
    assert_eq!(b.expect_close().await, Some(4007));
    assert_eq!(mock.handle().counters().shard(0).resumes_failed, 1);
}

#[tokio::test]
async fn identifies_beyond_max_concurrency_in_the_window_get_invalid_session() {
    let mock = start(MockConfig {
        session_start: SessionStartLimit {
            max_concurrency: 2,
            ..SessionStartLimit::default()
        },
        identify_window: Duration::from_secs(30),
        ..fast_config()
    })
    .await;
    // Shards 0 and 1 are buckets 0 and 1: both start at once.
    let (_a, _) = identified(&mock.url(), [0, 4]).await;
    let (_b, _) = identified(&mock.url(), [1, 4]).await;
    // Shard 2 is bucket 0 again, inside the window.
    let (mut c, _) = Client::hello(&mock.url()).await;
    c.send_identify(TOKEN, [2, 4], 513).await;
    assert_eq!(c.expect_op(9).await["d"], false);
    let counters = mock.handle().counters();
    assert_eq!(counters.shard(2).identifies, 1);
    assert_eq!(counters.shard(2).sessions_started, 0);
    assert_eq!(counters.shard(2).invalid_sessions_sent, 1);
}

#[tokio::test]
async fn the_identify_window_reopens_after_it_passes() {
    let mock = start(MockConfig {
        identify_window: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let (_a, _) = identified(&mock.url(), [0, 1]).await;
    let (mut b, _) = Client::hello(&mock.url()).await;
    let started = tokio::time::Instant::now();
    b.send_identify(TOKEN, [0, 1], 513).await;
    assert_eq!(b.expect_op(9).await["d"], false);
    tokio::time::sleep_until(started + Duration::from_millis(100)).await;
    b.identify([0, 1]).await;
}

#[tokio::test]
async fn the_session_start_budget_runs_out_and_the_token_is_reset() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        session_start: SessionStartLimit {
            total: 1000,
            remaining: 2,
            reset_after: Duration::from_secs(3600),
            max_concurrency: 1,
        },
        ..fast_config()
    })
    .await;
    let auth = format!("Bot {TOKEN}");
    let (status, body) = http_get(mock.addr(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(status, 200);
    assert_eq!(body["session_start_limit"]["remaining"], 2);
    let (mut a, _) = identified(&mock.url(), [0, 1]).await;
    let (_, body) = http_get(mock.addr(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(body["session_start_limit"]["remaining"], 1);
    let (_b, _) = identified(&mock.url(), [0, 1]).await;
    // The third session start is over the budget: every session of the token ends with 4004.
    let (mut c, _) = Client::hello(&mock.url()).await;
    c.send_identify(TOKEN, [0, 1], 513).await;
    assert_eq!(c.expect_close().await, Some(4004));
    assert_eq!(a.expect_close().await, Some(4004));
    let (status, body) = http_get(mock.addr(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "401: Unauthorized");
    assert_eq!(mock.handle().counters().shard(0).sessions_started, 2);
}

#[tokio::test]
async fn a_second_identify_on_one_connection_closes_4005() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let (mut a, _) = identified(&mock.url(), [0, 1]).await;
    a.send_identify(TOKEN, [0, 1], 513).await;
    assert_eq!(a.expect_close().await, Some(4005));
}

#[tokio::test]
async fn payload_rules_close_with_the_documented_codes() {
    let mock = start(fast_config()).await;
    let url = mock.url();
    let cases: [(String, u16); 5] = [
        (
            format!("{{\"op\":1,\"d\":null,\"pad\":\"{}\"}}", "x".repeat(4100)),
            4002,
        ),
        ("{\"op\":1,".to_owned(), 4002),
        ("{\"op\":42,\"d\":null}".to_owned(), 4001),
        ("{\"op\":3,\"d\":{\"status\":\"online\"}}".to_owned(), 4003),
        ("{\"op\":11,\"d\":null}".to_owned(), 4001),
    ];
    for (text, code) in cases {
        let (mut c, _) = Client::hello(&url).await;
        c.send_text(text.clone()).await;
        assert_eq!(
            c.expect_close().await,
            Some(code),
            "{}",
            &text[..text.len().min(40)]
        );
    }
    // Exactly 4096 bytes is allowed.
    let (mut c, _) = Client::hello(&url).await;
    let base = "{\"op\":1,\"d\":null,\"pad\":\"\"}".len();
    c.send_text(format!(
        "{{\"op\":1,\"d\":null,\"pad\":\"{}\"}}",
        "x".repeat(4096 - base)
    ))
    .await;
    c.expect_op(11).await;
}

#[tokio::test]
async fn more_than_120_payloads_in_the_window_close_4008() {
    let mock = start(fast_config()).await;
    let (mut c, _) = Client::hello(&mock.url()).await;
    for _ in 0..120 {
        c.heartbeat().await;
        c.expect_op(11).await;
    }
    c.heartbeat().await;
    assert_eq!(c.expect_close().await, Some(4008));
}

#[tokio::test]
async fn identify_errors_close_with_their_codes() {
    let mock = start(MockConfig {
        allowed_privileged_intents: 1 << 15,
        min_shards: 2,
        ..fast_config()
    })
    .await;
    let url = mock.url();
    let cases: [(&str, [u32; 2], u64, u16); 6] = [
        ("not-the-token", [0, 2], 1, 4004),
        (TOKEN, [0, 2], 1 << 1, 4014),
        (TOKEN, [0, 2], 1 << 8, 4014),
        (TOKEN, [0, 2], 1 << 18, 4013),
        (TOKEN, [2, 2], 1, 4010),
        (TOKEN, [0, 1], 1, 4011),
    ];
    for (token, shard, intents, code) in cases {
        let (mut c, _) = Client::hello(&url).await;
        c.send_identify(token, shard, intents).await;
        assert_eq!(c.expect_close().await, Some(code), "{shard:?} {intents:#x}");
    }
    // MESSAGE_CONTENT is enabled for this application: accepted.
    let (mut c, _) = Client::hello(&url).await;
    c.send_identify(TOKEN, [0, 2], (1 << 15) | (1 << 9)).await;
    c.expect_dispatch("READY").await;
}

#[tokio::test]
async fn two_connections_on_one_shard_both_receive_every_dispatch() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let (mut a, sa) = identified(&mock.url(), [0, 1]).await;
    let (mut b, sb) = identified(&mock.url(), [0, 1]).await;
    assert_ne!(sa, sb);
    assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &json!({ "n": 1 })), 2);
    assert_eq!(a.expect_dispatch("MESSAGE_CREATE").await["d"]["n"], 1);
    assert_eq!(b.expect_dispatch("MESSAGE_CREATE").await["d"]["n"], 1);
    let shard = handle.counters().shard(0);
    assert_eq!((shard.live_sockets, shard.max_live_sockets), (2, 2));
    assert_eq!(shard.sessions.len(), 2);
}

#[tokio::test]
async fn a_resume_takes_the_session_away_from_a_connection_still_holding_it() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    b.expect_dispatch("RESUMED").await;
    assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &json!({})), 1);
    b.expect_dispatch("MESSAGE_CREATE").await;
    // A still holds its socket (and heartbeats are ACKed) but gets nothing of the session.
    a.heartbeat().await;
    a.expect_op(11).await;
    let shard = handle.counters().shard(0);
    assert_eq!(shard.live_sockets, 2);
}

#[tokio::test]
async fn close_1000_ends_the_session_and_other_codes_keep_it_resumable() {
    let mock = start(MockConfig {
        identify_window: Duration::ZERO,
        ..fast_config()
    })
    .await;
    for (code, resumable) in [(1000, false), (1001, false), (4000, true), (4999, true)] {
        let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
        a.close(code).await;
        assert_eq!(a.expect_close().await, Some(code));
        let (mut b, _) = Client::hello(&mock.url()).await;
        b.send_resume(&sid, 1).await;
        match b.recv().await {
            Frame::Json(v) if resumable => assert_eq!(v["t"], "RESUMED", "{code}"),
            Frame::Json(v) => {
                assert_eq!((v["op"].clone(), v["d"].clone()), (json!(9), json!(false)))
            }
            other => panic!("{code}: {other:?}"),
        }
        // Leave the resumed session cleanly so the next round starts from zero.
        b.close(1000).await;
        b.expect_close().await;
    }
    // A socket whose RESUME failed never counted for the shard: its close shows only globally.
    let counters = mock.handle().counters();
    assert_eq!(
        counters.shard(0).close_frames,
        vec![1000, 1001, 4000, 1000, 4999, 1000]
    );
    assert_eq!(
        counters.close_frames,
        vec![1000, 1000, 1001, 1000, 4000, 1000, 4999, 1000]
    );
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_is_closed_resumably() {
    let mock = start(MockConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_grace: Some(Duration::from_millis(50)),
        ..fast_config()
    })
    .await;
    let (mut a, sid) = identified(&mock.url(), [0, 1]).await;
    assert_eq!(a.expect_close().await, Some(4000));
    let (mut b, _) = Client::hello(&mock.url()).await;
    b.send_resume(&sid, 1).await;
    b.expect_dispatch("RESUMED").await;
}
