//! `handover run`'s NDJSON output under a burst and after it: every event of a burst is
//! written once and counted once, and when the stream pauses what is queued goes out without
//! waiting for more events. Every wait is bounded.

mod cli_common;

use std::collections::BTreeMap;
use std::time::Duration;

use cli_common::{Handover, TOKEN, http, mock_config, spawn};
use handover_mock::{MockConfig, MockServer, StreamRate, StreamSpec};
use serde_json::{Value, json};

/// Events in the burst: a few MiB, far more than a pipe holds, so writes are cut wherever the
/// pipe is full, in the middle of lines as well as between them.
const BURST: u64 = 4_000;

/// `delivered` of shard 0 and `handover_events_written_total`, from the control API.
async fn counted(control: &str) -> (u64, u64) {
    let (code, body) = http(control, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status json");
    let delivered = status[0]["delivered"].as_u64().expect("delivered");
    let (_, metrics) = http(control, "GET", "/metrics").await;
    let written = metrics
        .lines()
        .find_map(|l| l.strip_prefix("handover_events_written_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("written counter");
    (delivered, written)
}

/// Waits (bounded) until the counters read `want`; returns what they last read.
async fn counted_until(control: &str, want: (u64, u64)) -> (u64, u64) {
    let mut last = counted(control).await;
    for _ in 0..200 {
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        last = counted(control).await;
    }
    last
}

/// Dispatch lines read so far, by seq, with how often each was seen.
fn dispatches(h: &Handover) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for line in &h.lines {
        let v: Value = serde_json::from_str(line).expect("whole json lines");
        if v["type"] == "dispatch" {
            *seen.entry(v["seq"].as_u64().expect("seq")).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_written_once_and_a_pause_flushes_what_is_queued() {
    // Heartbeats a second apart, not the shared 200 ms: on a loaded machine a 200 ms interval
    // let the burst delay an ACK past the probe grace, and the resume that followed wrote a
    // RESUMED line this test does not count.
    let config = MockConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_grace: Some(Duration::from_secs(2)),
        ..mock_config()
    };
    let mock = MockServer::start(config).await.unwrap();
    let gw = mock.handle();
    let url = mock.url();
    let args = [
        "run",
        "--gateway-url",
        &url,
        "--http",
        "127.0.0.1:0",
        "--drain-timeout-ms",
        "500",
    ];
    let mut h = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let started = h.expect_type("started").await;
    let control = started["http"].as_str().expect("http address").to_owned();
    let ready = h.expect_type("ready").await;
    let first_seq = ready["seq"].as_u64().unwrap_or(0) + 1;

    // A burst of ~1.3 KiB events as fast as the process reads them.
    let data = json!({ "content": "m".repeat(1200), "channel_id": "1" });
    gw.stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data: data.clone(),
        count: BURST,
        rate: StreamRate::AsFastAsRead,
    });
    let last = first_seq + BURST - 1;
    h.expect_line("the burst's last dispatch", |v| {
        v["type"] == "dispatch" && v["seq"].as_u64() == Some(last)
    })
    .await;
    let seen = dispatches(&h);
    assert_eq!(seen.len() as u64, BURST, "every event of the burst");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    assert_eq!(seen.keys().next(), Some(&first_seq));
    // READY and the burst, each counted once its line was written, no more.
    assert_eq!(
        counted_until(&control, (BURST + 1, BURST + 1)).await,
        (BURST + 1, BURST + 1),
        "{}",
        h.stderr()
    );

    // The stream pauses; one more event arrives alone and is written without waiting for
    // others (the harness bounds the read).
    gw.stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data,
        count: 1,
        rate: StreamRate::AsFastAsRead,
    });
    let lone = h
        .expect_line("the lone dispatch after the pause", |v| {
            v["type"] == "dispatch" && v["seq"].as_u64() == Some(last + 1)
        })
        .await;
    assert_eq!(lone["event"], "MESSAGE_CREATE");
    assert_eq!(
        counted_until(&control, (BURST + 2, BURST + 2)).await,
        (BURST + 2, BURST + 2)
    );

    h.signal("TERM");
    let status = h.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", h.stderr());
}
