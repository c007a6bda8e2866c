//! The bot author's API against real sockets on 127.0.0.1: shards and fleets read as streams,
//! a fleet stopped from another task while its events are read, typed give-up reasons, the
//! send that waits for send-rate capacity (fair and cancel-safe), heartbeat round trips.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_runtime::{
    Command, Fleet, FleetConfig, GatewayConfig, GiveUpReason, Intents, Phase, ProtocolError,
    RECENT_LATENCIES, RateLimitConfig, RequestGuildMembers, SendError, Shard, ShardConfig,
    ShardEventKind, ShardSelection, Snowflake, StopIntent, Token,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn mock_config() -> MockConfig {
    MockConfig {
        heartbeat_interval: Duration::from_millis(150),
        heartbeat_grace: Some(Duration::from_millis(500)),
        identify_window: Duration::from_millis(50),
        seed: 11,
        ..MockConfig::default()
    }
}

fn gateway(url: &str, token: &str) -> GatewayConfig {
    let mut g = GatewayConfig::new(Token::new(token).expect("well formed"), Intents::GUILDS);
    g.gateway_url = url.to_owned();
    g
}

fn shard_config(url: &str) -> ShardConfig {
    let mut c = ShardConfig::new(gateway(url, DEFAULT_TOKEN));
    c.seed = Some(5);
    c
}

/// A command the recording gateway can tell apart from the others: guild `n`.
fn members(n: u64) -> Command {
    Command::RequestGuildMembers(RequestGuildMembers::query(Snowflake(n), "", 0))
}

/// Reads `shard` until `pred` holds for an event kind; returns the kinds read.
async fn read_until(
    shard: &mut Shard,
    mut pred: impl FnMut(&ShardEventKind) -> bool,
) -> Vec<ShardEventKind> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, shard.next())
            .await
            .expect("the awaited event came in time")
            .expect("the shard is running");
        let done = pred(&ev.kind);
        seen.push(ev.kind);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_shard_is_a_stream_that_counts_what_it_returns() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut shard = Shard::start(shard_config(&mock.url())).expect("valid config");
    read_until(&mut shard, |k| matches!(k, ShardEventKind::Ready(_))).await;
    for i in 0..3 {
        mock.handle()
            .dispatch(0, "MESSAGE_CREATE", &serde_json::json!({ "n": i }));
    }
    let mut dispatches = 0;
    read_until(&mut shard, |k| {
        if matches!(k, ShardEventKind::Dispatch(_)) {
            dispatches += 1;
        }
        dispatches == 3
    })
    .await;
    let status = shard.status();
    // READY and three dispatches, taken through `Stream::poll_next`.
    assert_eq!(status.delivered, 4);
    assert_eq!(status.phase, Phase::Receiving);
    assert_eq!(shard.session().map(|s| s.seq), Some(4));
    shard.stop(StopIntent::EndSession).await.expect("stops");
    mock.shutdown().await;
}

#[tokio::test]
async fn a_fleet_read_as_a_stream_is_shut_down_from_another_task() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = FleetConfig::new(
        gateway(&mock.url(), DEFAULT_TOKEN),
        ShardSelection::All { total: 2 },
    );
    config.identify.bucket_window = Duration::from_millis(50);
    config.seed = Some(3);
    let fleet = Fleet::start(config).expect("valid config");
    let control = fleet.handle();
    // The reader owns the fleet; nothing else can reach its `&mut self`.
    let reader = tokio::spawn(async move {
        let mut fleet = pin!(fleet);
        let mut readies = Vec::new();
        let mut events = 0_usize;
        while let Some(ev) = fleet.next().await {
            events += 1;
            if matches!(ev.kind, ShardEventKind::Ready(_)) {
                readies.push(ev.shard);
            }
            assert!(events < 10_000, "the stream never ends");
        }
        readies
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !control.status().iter().all(|s| s.phase == Phase::Receiving) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both shards identify"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(control.shard_ids().collect::<Vec<_>>(), [0, 1]);
    // Stopping and shutting down while the other task is reading.
    tokio::time::timeout(WAIT, control.shutdown(StopIntent::KeepResumable))
        .await
        .expect("shutdown is bounded");
    let mut readies = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the stream ends once every shard ended")
        .expect("the reader did not panic");
    readies.sort_unstable();
    assert_eq!(readies, [0, 1]);
    assert_eq!(control.sessions().len(), 2, "both sessions kept resumable");
    assert!(control.status().iter().all(|s| s.live_sockets == 0));
    mock.shutdown().await;
}

#[tokio::test]
async fn give_up_reasons_are_typed_in_events_and_status() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.gateway = gateway(&mock.url(), "not-the-right-token");
    let mut shard = Shard::start(config).expect("valid config");
    let seen = read_until(&mut shard, |k| matches!(k, ShardEventKind::GaveUp { .. })).await;
    let Some(ShardEventKind::GaveUp { reason }) = seen.last() else {
        unreachable!("read_until stops on GaveUp")
    };
    assert_eq!(*reason, GiveUpReason::FatalClose { code: Some(4004) });
    let deadline = tokio::time::Instant::now() + WAIT;
    while shard.status().live_sockets != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the socket goes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = shard.status();
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.gave_up,
        Some(GiveUpReason::FatalClose { code: Some(4004) })
    );
    // The JSON keeps the readable strings.
    let json = serde_json::to_value(&status).expect("serializes");
    assert_eq!(json["phase"], "failed");
    assert_eq!(json["gave_up"], "authentication failed (close code 4004)");
    mock.shutdown().await;
}

#[tokio::test]
async fn heartbeat_round_trips_are_in_the_status_and_opt_in_events() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.latency_events = true;
    let mut shard = Shard::start(config).expect("valid config");
    let mut acks = Vec::new();
    read_until(&mut shard, |k| {
        if let ShardEventKind::HeartbeatAck { latency } = k {
            acks.push(*latency);
        }
        acks.len() == 3
    })
    .await;
    // Once stopped no ACK comes any more: drain what is queued, then compare.
    shard.stop(StopIntent::EndSession).await.expect("stops");
    for _ in 0..10_000 {
        match shard.next().now_or_never() {
            Some(Some(ev)) => {
                if let ShardEventKind::HeartbeatAck { latency } = ev.kind {
                    acks.push(latency);
                }
            }
            Some(None) | None => break,
        }
    }
    let status = shard.status();
    assert_eq!(status.latency, acks.last().copied());
    let recent = &acks[acks.len().saturating_sub(RECENT_LATENCIES)..];
    assert_eq!(status.latency_recent, recent, "the last five, oldest first");
    let total: Duration = acks.iter().sum();
    let n = u32::try_from(acks.len()).expect("a few ACKs");
    assert_eq!(
        status.latency_average,
        Some(total / n),
        "one connection's mean"
    );

    // Off by default: ACKs are measured all the same, no event reports them.
    let mut quiet = Shard::start(shard_config(&mock.url())).expect("valid config");
    let handle = quiet.handle();
    let (tx, mut kinds) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = quiet.next().await {
            let _ = tx.send(ev.kind);
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while handle.status().latency_recent.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "two ACKs measured");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop(StopIntent::EndSession).await.expect("stops");
    let mut readies = 0;
    while let Ok(kind) = kinds.try_recv() {
        assert!(
            !matches!(kind, ShardEventKind::HeartbeatAck { .. }),
            "an ACK event without latency_events"
        );
        readies += usize::from(matches!(kind, ShardEventKind::Ready(_)));
    }
    assert_eq!(readies, 1, "the events did flow");
    handle.shutdown().await;
    mock.shutdown().await;
}

/// A gateway on 127.0.0.1 that starts a session on every IDENTIFY, acknowledges heartbeats,
/// never enforces a send rate, and reports every other payload it receives, in arrival order.
/// HELLO announces an hour-long heartbeat interval: with a fixed seed, no heartbeat falls in
/// the tests' send windows.
async fn recording_gateway() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    let resume = url.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            let resume = resume.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let hello = r#"{"op":10,"d":{"heartbeat_interval":3600000},"s":null,"t":null}"#;
                if ws.send(Message::text(hello)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    let reply = match v["op"].as_u64() {
                        Some(1) => Some(r#"{"op":11,"d":null,"s":null,"t":null}"#.to_owned()),
                        Some(2) => Some(
                            serde_json::json!({
                                "op": 0, "t": "READY", "s": 1,
                                "d": { "session_id": "rec", "resume_gateway_url": resume },
                            })
                            .to_string(),
                        ),
                        _ => {
                            let _ = tx.send(v);
                            None
                        }
                    };
                    if let Some(reply) = reply
                        && ws.send(Message::text(reply)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// A shard on the recording gateway allowed `limit` commands per `window` (no slot kept for
/// heartbeats), read until READY; its reader keeps draining in the background.
async fn limited_shard(url: &str, limit: u32, window: Duration) -> handover_runtime::ShardHandle {
    let mut config = shard_config(url);
    config.gateway.rate_limit = RateLimitConfig {
        limit,
        window,
        heartbeat_reserve: Some(0),
    };
    let mut shard = Shard::start(config).expect("valid config");
    read_until(&mut shard, |k| matches!(k, ShardEventKind::Ready(_))).await;
    let handle = shard.handle();
    tokio::spawn(async move { while shard.next().await.is_some() {} });
    handle
}

/// Guild ids of the next `n` commands the recording gateway receives (a send returns once
/// its frame is queued for the socket, not once the gateway has read it).
async fn received(rx: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the gateway receives the command in time")
            .expect("the gateway runs");
        out.push(
            v["d"]["guild_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a request guild members payload"),
        );
    }
    out
}

/// Plain sends until the window refuses one (at most `max`); returns how many went out and
/// the refusal.
async fn fill(shard: &handover_runtime::ShardHandle, first: u64, max: u64) -> (u64, SendError) {
    for i in 0..max {
        if let Err(e) = shard.send(members(first + i)).await {
            return (i, e);
        }
    }
    panic!("{max} sends and none refused");
}

#[tokio::test]
async fn a_refused_send_keeps_its_cause_and_retry_after_and_paced_sends_go_in_order() {
    let (url, mut rx) = recording_gateway().await;
    let shard = limited_shard(&url, 3, Duration::from_millis(600)).await;
    let (sent, refusal) = fill(&shard, 0, 10).await;
    assert!(sent <= 3, "{sent} sends within a window of 3");
    let retry_after = refusal
        .retry_after()
        .expect("a rate-limit refusal says when");
    assert!(retry_after <= Duration::from_millis(600));
    assert!(
        matches!(refusal, SendError::Codec(ProtocolError::RateLimited { .. })),
        "{refusal:?}"
    );
    assert!(
        std::error::Error::source(&refusal).is_some(),
        "the cause is kept"
    );

    // Eight waiting sends, called in order while the window is full: each waits its turn and
    // none is refused.
    let paced = (100..108).map(|n| shard.send_paced(members(n)));
    let results = tokio::time::timeout(WAIT, futures_util::future::join_all(paced))
        .await
        .expect("paced sends finish");
    for r in results {
        r.expect("a paced send waits instead of failing");
    }
    let expected: Vec<u64> = (0..sent).chain(100..108).collect();
    let got = received(&mut rx, expected.len()).await;
    assert_eq!(
        got, expected,
        "the gateway saw the paced sends in call order"
    );
    shard.shutdown().await;
}

#[tokio::test]
async fn a_dropped_paced_send_sends_nothing_takes_no_slot_and_lets_the_next_go() {
    let (url, mut rx) = recording_gateway().await;
    let window = Duration::from_millis(800);
    let shard = limited_shard(&url, 3, window).await;
    // Let READY's identify leave the window, then fill it.
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    let (sent, refusal) = fill(&shard, 0, 10).await;
    assert_eq!(sent, 3, "a fresh window holds three commands");
    let retry_after = refusal.retry_after().expect("rate limited");

    // A waits for the window; B queues behind A and is dropped; C queues after.
    let a = tokio::spawn({
        let s = shard.clone();
        async move { s.send_paced(members(200)).await }
    });
    let b = tokio::spawn({
        let s = shard.clone();
        async move { s.send_paced(members(201)).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    b.abort();
    assert!(b.await.expect_err("aborted").is_cancelled());
    let c = tokio::spawn({
        let s = shard.clone();
        async move { s.send_paced(members(202)).await }
    });
    // D is dropped while it may hold the turn or wait for it.
    let d = tokio::time::timeout(Duration::from_millis(30), shard.send_paced(members(203))).await;
    assert!(d.is_err(), "D cannot be sent while the window is full");
    tokio::time::timeout(WAIT, a)
        .await
        .expect("A in time")
        .expect("no panic")
        .expect("A sent");
    tokio::time::timeout(WAIT, c)
        .await
        .expect("C in time")
        .expect("no panic")
        .expect("C sent");
    // One socket keeps the order: had B or D gone out, it would come before 300 below.
    assert_eq!(received(&mut rx, 5).await, [0, 1, 2, 200, 202]);

    // Once A and C leave the window, three plain sends fit again: the dropped waiters took no
    // slot.
    tokio::time::sleep(retry_after + window + Duration::from_millis(50)).await;
    let (sent, _) = fill(&shard, 300, 10).await;
    assert_eq!(sent, 3, "the dropped waiters kept no slot");
    assert_eq!(
        received(&mut rx, 3).await,
        [300, 301, 302],
        "B and D never went out"
    );
    shard.shutdown().await;
}

#[tokio::test]
async fn a_paced_send_called_later_never_overtakes_one_already_waiting() {
    let (url, mut rx) = recording_gateway().await;
    let window = Duration::from_millis(500);
    let shard = limited_shard(&url, 1, window).await;
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    let (sent, _) = fill(&shard, 0, 10).await;
    assert_eq!(sent, 1);
    // A waits for the slot...
    let a = tokio::spawn({
        let s = shard.clone();
        async move { s.send_paced(members(400)).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    // ...which frees while A's task cannot run (this test holds the runtime's only thread);
    // B is called then, and polled before A wakes. B must still go after A.
    std::thread::sleep(window);
    let mut b = pin!(shard.send_paced(members(401)));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(b.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "B waits for its turn");
    tokio::time::timeout(WAIT, a)
        .await
        .expect("A in time")
        .expect("no panic")
        .expect("A sent");
    tokio::time::timeout(WAIT, b)
        .await
        .expect("B in time")
        .expect("B sent");
    assert_eq!(received(&mut rx, 3).await, [0, 400, 401], "in call order");
    shard.shutdown().await;
}
