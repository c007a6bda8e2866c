//! Several `handover run` processes of one bot coordinated through a real redis-server: shared
//! identify permits and budget, takeover after SIGKILL with resumes, a Redis outage, and the
//! Redis Streams sink through a handoff.

mod cli_common;
#[path = "../../runtime/tests/redis_common/mod.rs"]
mod redis_common;

use std::time::Duration;

use cli_common::{Handover, TOKEN, WAIT, http, mock_config, spawn};
use handover_mock::{Counters, Fault, MockConfig, MockServer, SessionStartLimit};
use redis_common::Redis;
use serde_json::json;

const SHARDS: u32 = 8;

fn args<'a>(api: &'a str, redis: &'a str, shards: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = args_with_lease(api, redis, shards, "1500");
    a.extend_from_slice(extra);
    a
}

fn args_with_lease<'a>(
    api: &'a str,
    redis: &'a str,
    shards: &'a str,
    lease: &'a str,
) -> Vec<&'a str> {
    vec![
        "run",
        "--api-base",
        api,
        "--redis",
        redis,
        "--shards",
        shards,
        "--identify-window-ms",
        "150",
        "--redis-lease-ms",
        lease,
        "--drain-timeout-ms",
        "500",
    ]
}

fn identifies(c: &Counters) -> u64 {
    (0..SHARDS).map(|s| c.shard(s).identifies).sum()
}

fn refused(c: &Counters) -> u64 {
    (0..SHARDS).map(|s| c.shard(s).invalid_sessions_sent).sum()
}

async fn readies(run: &mut Handover, n: usize) {
    for _ in 0..n {
        run.expect_line("ready or resumed", |v| {
            v["type"] == "ready" || v["type"] == "resumed"
        })
        .await;
    }
}

fn budget(redis: &Redis) -> Option<u64> {
    let key = redis.keys("handover:*budget").pop()?;
    redis.cli(&["HGET", &key, "remaining"])?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_buckets_and_budget_and_a_killed_one_is_taken_over_by_resuming() {
    let redis = Redis::start("split");
    let mock = MockServer::start(MockConfig {
        shards: SHARDS,
        session_start: SessionStartLimit {
            max_concurrency: 2,
            ..SessionStartLimit::default()
        },
        ..mock_config()
    })
    .await
    .unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let url = redis.url();
    let env = [("HANDOVER_TOKEN", TOKEN)];
    let mut a = spawn(&args(&api, &url, "0..3/8", &[]), &env);
    let mut b = spawn(&args(&api, &url, "3..6/8", &[]), &env);
    let mut c = spawn(&args(&api, &url, "6..8/8", &[]), &env);
    readies(&mut a, 3).await;
    readies(&mut b, 3).await;
    readies(&mut c, 2).await;

    let counters = gw.counters();
    assert_eq!(identifies(&counters), 8, "one identify per shard");
    assert_eq!(
        refused(&counters),
        0,
        "no identify refused by a concurrency bucket"
    );
    assert_eq!(
        budget(&redis),
        Some(992),
        "the shared budget dropped by exactly 8"
    );
    assert!(counters.shard(3).sessions.len() == 1);

    // B's sessions are stored as it runs; SIGKILL it, start its replacement (a supervisor, on
    // any machine): it waits for the dead leases, takes the sessions and resumes.
    redis
        .until("b's sessions in redis", WAIT, |r| {
            (3..6).all(|s| !r.keys(&format!("handover:*session:{s}")).is_empty())
        })
        .await;
    b.signal("KILL");
    let _ = b.wait().await;
    let mut b2 = spawn(&args(&api, &url, "3..6/8", &[]), &env);
    for _ in 0..3 {
        b2.expect_type("resumed").await;
    }
    let counters = gw.counters();
    assert_eq!(
        identifies(&counters),
        8,
        "the takeover resumed, it did not identify"
    );
    for s in 3..6 {
        assert_eq!(counters.shard(s).resumes_ok, 1, "shard {s} resumed");
    }
    assert_eq!(refused(&counters), 0);
    assert_eq!(budget(&redis), Some(992));

    // A process for shards someone else runs does not start them.
    let mut dup = spawn(&args_with_lease(&api, &url, "0..1/8", "300"), &env);
    let status = dup.wait().await;
    assert_eq!(status.code(), Some(1), "{}", dup.stderr());
    assert!(
        dup.stderr().contains("run by another process"),
        "{}",
        dup.stderr()
    );
    assert_eq!(identifies(&gw.counters()), 8);

    for run in [&mut a, &mut b2, &mut c] {
        run.signal("TERM");
        assert!(run.wait().await.success(), "{}", run.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_no_shard_identifies_but_resumes_go_on_and_identifies_come_back_with_it() {
    let mut redis = Redis::start("outage");
    let mock = MockServer::start(MockConfig {
        shards: 2,
        ..mock_config()
    })
    .await
    .unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let url = redis.url();
    let mut run = spawn(
        &args(&api, &url, "0..2/2", &["--http", "127.0.0.1:0"]),
        &[("HANDOVER_TOKEN", TOKEN), ("RUST_LOG", "info")],
    );
    let started = run.expect_type("started").await;
    let control = started["http"].as_str().expect("http address").to_owned();
    readies(&mut run, 2).await;
    wait_redis_metric(&control, 1).await;
    redis.stop();
    wait_redis_metric(&control, 0).await;

    // A resume needs no permit.
    assert_eq!(gw.inject(0, Fault::Reconnect), 1);
    run.expect_line("resumed", |v| v["type"] == "resumed" && v["shard"] == 0)
        .await;
    // A lost session needs one: the shard waits while Redis is away.
    assert_eq!(gw.inject(1, Fault::InvalidSession { resumable: false }), 1);
    gw.wait_for(WAIT, |c| c.shard(1).invalid_sessions_sent == 1)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !run.stderr().contains("redis unreachable") {
        assert!(tokio::time::Instant::now() < deadline, "{}", run.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several permit attempts fail meanwhile (they retry at most every second).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        gw.counters().shard(1).identifies,
        1,
        "no identify without a permit"
    );
    assert_eq!(gw.inject(0, Fault::Reconnect), 1);
    gw.wait_for(WAIT, |c| c.shard(0).resumes_ok == 2)
        .await
        .unwrap();

    redis.restart();
    wait_redis_metric(&control, 1).await;
    let c = gw
        .wait_for(WAIT, |c| c.shard(1).identifies == 2)
        .await
        .unwrap();
    assert_eq!(c.shard(0).identifies, 1);
    run.expect_line("ready again", |v| v["type"] == "ready" && v["shard"] == 1)
        .await;
    assert!(
        run.stderr().contains("redis reachable again"),
        "{}",
        run.stderr()
    );
    run.signal("TERM");
    assert!(run.wait().await.success(), "{}", run.stderr());
}

/// Waits (bounded) until `/metrics` shows `handover_redis_reachable` at `value`.
async fn wait_redis_metric(control: &str, value: u8) {
    let want = format!("handover_redis_reachable {value}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = http(control, "GET", "/metrics").await;
        if metrics.lines().any(|l| l == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{want}` in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `i` of every test event in the stream, in stream order.
fn messages(redis: &Redis, key: &str) -> Vec<u64> {
    redis
        .cli(&["XRANGE", key, "-", "+"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["i"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_stream_lands_every_event_once_in_the_stream() {
    let redis = Redis::start("handoff");
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let url = redis.url();
    let env = [("HANDOVER_TOKEN", TOKEN)];
    let sink = ["--sink", "redis"];
    let mut old = spawn(&args(&api, &url, "0..1/1", &sink), &env);
    old.expect_type("ready").await;
    for i in 0..50 {
        gw.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
    }
    let stream = || redis.keys("handover:*events:0").pop();
    redis
        .until("50 events in the stream", WAIT, |r| {
            stream().and_then(|k| r.cli(&["XLEN", &k])).as_deref() == Some("50")
        })
        .await;

    let mut new = spawn(
        &args(&api, &url, "0..1/1", &["--sink", "redis", "--handoff"]),
        &env,
    );
    for i in 50..100 {
        gw.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
        if i == 60 {
            // The old process drains on its own once asked.
            assert!(old.wait().await.success(), "{}", old.stderr());
        }
    }
    new.expect_type("resumed").await;
    for i in 100..120 {
        gw.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
    }
    let key = stream().expect("the stream");
    redis
        .until("120 events in the stream", WAIT, |r| {
            messages(r, &key).len() >= 120
        })
        .await;
    let c = gw.counters().shard(0);
    assert_eq!(
        (c.identifies, c.resumes_ok),
        (1, 1),
        "the new process resumed"
    );

    // Killed without draining: its successor resumes from the last stored session, which may
    // be behind the stream; what Discord replays again is not added twice.
    redis
        .until("the session stored", WAIT, |r| {
            !r.keys("handover:*session:0").is_empty()
        })
        .await;
    new.signal("KILL");
    let _ = new.wait().await;
    for i in 120..140 {
        gw.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
    }
    let mut third = spawn(&args(&api, &url, "0..1/1", &sink), &env);
    third.expect_type("resumed").await;
    // The stream also holds what the gateway dispatched on its own (a replayed RESUMED is a
    // plain dispatch): count the test's events.
    redis
        .until("the 140 events in the stream", WAIT, |r| {
            messages(r, &key).len() >= 140
        })
        .await;
    assert_eq!(
        messages(&redis, &key),
        (0..140).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let c = gw.counters().shard(0);
    assert_eq!(
        (c.identifies, c.resumes_ok),
        (1, 2),
        "both successors resumed"
    );
    // Commands still work with the stream sink; their replies go to stdout.
    third.send(r#"{"op":"status","id":"s"}"#).await;
    let status = third.expect_type("status").await;
    assert_eq!(status["shards"][0]["phase"], "receiving", "{status}");
    third.signal("TERM");
    assert!(third.wait().await.success(), "{}", third.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sink_keeps_events_while_redis_is_away_and_publishes_them_when_it_returns() {
    let mut redis = Redis::start("sink-outage");
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let url = redis.url();
    let mut run = spawn(
        &args(&api, &url, "0..1/1", &["--sink", "redis"]),
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    run.expect_type("ready").await;
    redis.stop();
    for i in 0..10 {
        gw.dispatch(0, "MESSAGE_CREATE", &json!({ "i": i }));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !run.stderr().contains("events not published") {
        assert!(tokio::time::Instant::now() < deadline, "{}", run.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart();
    redis
        .until("the 10 events in the stream", WAIT, |r| {
            r.keys("handover:*events:0")
                .pop()
                .is_some_and(|k| messages(r, &k) == (0..10).collect::<Vec<_>>())
        })
        .await;
    run.signal("TERM");
    assert!(run.wait().await.success(), "{}", run.stderr());
}
