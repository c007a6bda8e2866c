//! `handover run` with a reader of stdout that stops reading: the sink contract end to end.
//!
//! A stalled reader must never harm the connection (no stale judgement, no reconnect, no
//! identify of our own making), must not hold a SIGTERM, and the session file must resume right
//! after the last event actually written, so that two processes together write every event
//! exactly once.

mod cli_common;

use std::collections::BTreeMap;
use std::time::Duration;

use cli_common::{Handover, TOKEN, http, mock_config, session_run_args, spawn, temp_dir};
use handover_mock::{MockServer, StreamRate, StreamSpec};
use serde_json::{Value, json};

/// Events in the stream (see the data size below).
const EVENTS: u64 = 12_000;

/// How long the reader stops reading.
const STALL: Duration = Duration::from_secs(60);

/// Every dispatch line read so far, by seq (counting duplicates). Only the very last line may
/// be incomplete (a process stopped in the middle of writing a line longer than a pipe write);
/// it is not counted: the next process writes that event again, whole.
fn dispatches(h: &Handover, into: &mut BTreeMap<u64, u32>) {
    for (i, line) in h.lines.iter().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            assert_eq!(
                i + 1,
                h.lines.len(),
                "only the last line may be cut: {line}"
            );
            continue;
        };
        if v["type"] == "dispatch" {
            *into.entry(v["seq"].as_u64().expect("seq")).or_default() += 1;
        }
    }
}

fn types(h: &Handover, kind: &str) -> Vec<Value> {
    h.lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_then_sigterm_then_a_restart_writes_every_event_once() {
    let mut config = mock_config();
    config.replay_buffer = EVENTS as usize + 100;
    // A minute of 200 ms heartbeats (300 a minute) would exceed the gateway's send limit of 120
    // a minute and be closed with 4008 whatever the reader does; Discord's interval is 41 s.
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_grace = Some(Duration::from_secs(1));
    let mock = MockServer::start(config).await.unwrap();
    let gw = mock.handle();
    let dir = temp_dir("stall");
    let file = dir.join("sessions.json");
    let file = file.to_str().unwrap();
    let url = mock.url();
    let mut args = session_run_args(&url, file);
    args.extend(["--write-timeout-ms", "1000", "--http", "127.0.0.1:0"]);

    let mut first = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let started = first.expect_type("started").await;
    let control = started["http"].as_str().expect("http address").to_owned();
    first.expect_type("ready").await;
    // 2 KiB events: 24 MiB in all, more than the shard's queues and the kernel's socket
    // buffers hold, so the shard must stop reading its socket during the stall.
    let data = json!({ "content": "x".repeat(2048), "channel_id": "1" });
    gw.stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data,
        count: EVENTS,
        rate: StreamRate::AsFastAsRead,
    });
    for _ in 0..300 {
        first.expect_type("dispatch").await;
    }

    // The reader stops reading for a minute. Heartbeats go on; nothing is judged stale.
    tokio::time::sleep(STALL).await;
    let c = gw.counters();
    let shard = c.shard(0);
    assert_eq!(
        c.connections_accepted,
        1,
        "no reconnect during the stall: {:?}\n{}",
        c,
        first.stderr()
    );
    assert_eq!(shard.identifies, 1);
    assert_eq!(shard.resumes_ok + shard.resumes_failed, 0);
    assert!(shard.close_frames.is_empty(), "{:?}", shard.close_frames);
    assert!(shard.server_closes.is_empty(), "{:?}", shard.server_closes);
    assert!(
        shard.heartbeats_received >= (STALL.as_millis() / 1000 / 2) as u64,
        "heartbeats went on: {}",
        shard.heartbeats_received
    );
    // Delivered means written: the status agrees with the writer, not with the socket.
    let (code, body) = http(&control, "GET", "/status").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let (_, metrics) = http(&control, "GET", "/metrics").await;
    let written: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("handover_events_written_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("written counter");
    assert_eq!(status[0]["delivered"].as_u64(), Some(written), "{body}");
    assert!(status[0]["received"].as_u64().unwrap() > written, "{body}");
    let sent_before_stop = shard.sessions.values().map(|s| s.sent).sum::<u64>();
    assert!(
        sent_before_stop < EVENTS,
        "the gateway was held back by the stalled reader ({sent_before_stop} sent)"
    );

    // SIGTERM with stdout still unread: bounded, and it says output was cut short.
    first.signal("TERM");
    let status = first.wait_unread().await;
    assert_eq!(status.code(), Some(3), "stderr:\n{}", first.stderr());
    first.read_to_end().await;
    let mut seen = BTreeMap::new();
    dispatches(&first, &mut seen);
    assert!(
        types(&first, "state")
            .iter()
            .all(|v| v["to"] != "stale" && v["from"] != "stale"),
        "never judged stale"
    );
    assert!(
        types(&first, "reconnecting").is_empty(),
        "never reconnected"
    );
    // The drain's own lines (socket_closed...) were queued behind the stalled reader and cut
    // short with the rest; none reports a second socket.
    assert!(types(&first, "socket_opened").len() <= 1);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let saved_seq = saved["sessions"][0]["seq"].as_u64().unwrap();
    assert_eq!(
        Some(&saved_seq),
        seen.keys().last(),
        "the session file resumes right after the last event written"
    );

    // The next process resumes and writes the rest.
    let mut second = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let resumed = second.expect_type("resumed").await;
    // RESUMED takes a seq of its own, among the stream's.
    let resumed_seq = resumed["seq"].as_u64().expect("resumed seq");
    // Replayed events came before RESUMED; count them, then each new line as it comes.
    let mut all = seen.clone();
    dispatches(&second, &mut all);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (all.len() as u64) < EVENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} events",
            all.len()
        );
        let line = second.expect_type("dispatch").await;
        *all.entry(line["seq"].as_u64().expect("seq")).or_default() += 1;
    }
    second.signal("TERM");
    let status = second.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", second.stderr());
    dispatches(&second, &mut seen);

    // READY was seq 1, RESUMED `resumed_seq`; the stream is every other seq up to EVENTS+2,
    // each written exactly once.
    let expected: std::collections::BTreeSet<u64> =
        (2..=EVENTS + 2).filter(|s| *s != resumed_seq).collect();
    let got: std::collections::BTreeSet<u64> = seen.keys().copied().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    assert!(types(&second, "gap").is_empty());
    let shard = gw.counters().shard(0);
    assert_eq!(shard.identifies, 1, "0 identifies after the first");
    assert_eq!(shard.resumes_ok, 1);
    assert_eq!(shard.max_live_sockets, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
