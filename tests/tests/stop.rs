//! `stop` in every phase returns once the socket is gone, bounded by the drain deadline, and
//! leaves no socket on the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handover_core::{Backoff, RestartReason, StopIntent};
use handover_mock::{Fault, MockServer};
use handover_runtime::{Fleet, FleetConfig, Shard, ShardSelection, ShardStatus};
use handover_tests::{
    Log, WAIT, gateway, identify_queue, is_ready, is_resumed, lifecycle, mock_config, read_until,
    read_until_status, shard_config,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Drain deadline used here: long enough for the draining phase to be observed.
const DRAIN: Duration = Duration::from_millis(600);

/// `stop` must return within the drain deadline plus this much (socket teardown, scheduling).
const SLACK: Duration = Duration::from_secs(3);

async fn stop_and_check(shard: &Shard, phase_before: &str) -> ShardStatus {
    tokio::time::timeout(DRAIN + SLACK, shard.stop(StopIntent::KeepResumable))
        .await
        .unwrap_or_else(|_| panic!("stop in {phase_before} did not return within the drain bound"))
        .expect("shard alive");
    let status = shard.status();
    assert_eq!(
        status.live_sockets, 0,
        "stop in {phase_before} left a socket"
    );
    status
}

fn slow_config(url: &str) -> handover_runtime::ShardConfig {
    let mut c = shard_config(url);
    c.lifecycle.drain_deadline = DRAIN;
    c.lifecycle.probe_grace = Duration::from_secs(2);
    c.lifecycle.backoff = Backoff {
        floor: Duration::from_secs(2),
        base: Duration::from_secs(3),
        cap: Duration::from_secs(4),
    };
    c
}

#[tokio::test]
async fn stop_in_each_phase_against_the_mock() {
    // receiving, stale, draining (close never answered), backing off, stopped, failed.
    for phase in [
        "receiving",
        "stale",
        "draining",
        "backing_off",
        "stopped",
        "failed",
    ] {
        let mock = MockServer::start(mock_config()).await.expect("mock starts");
        let gw = mock.handle();
        let mut shard = Shard::start(slow_config(&mock.url())).expect("valid config");
        let mut log = Log::default();
        read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;
        match phase {
            "receiving" => {}
            "stale" => {
                gw.inject(0, Fault::StopAcks);
            }
            "draining" => {
                gw.inject(0, Fault::IgnoreCloseFrames);
                shard
                    .restart(RestartReason::HealthMonitor)
                    .await
                    .expect("alive");
            }
            "backing_off" => {
                gw.inject(0, Fault::Close(4000));
            }
            "stopped" => {
                shard.stop(StopIntent::KeepResumable).await.expect("alive");
            }
            "failed" => {
                gw.inject(0, Fault::Close(4004));
            }
            _ => unreachable!(),
        }
        read_until_status(&mut shard, &mut log, |s| s.phase.name() == phase).await;
        let status = stop_and_check(&shard, phase).await;
        let expected = if phase == "failed" {
            "failed"
        } else {
            "stopped"
        };
        assert_eq!(status.phase.name(), expected, "after stop in {phase}");
        gw.wait_for(WAIT, |c| c.live_sockets == 0)
            .await
            .unwrap_or_else(|_| panic!("the mock still sees a socket after stop in {phase}"));
        assert_eq!(gw.counters().max_live_sockets, 1);
    }
}

/// What a hand-made server does with each connection.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Accept TCP, never answer the WebSocket upgrade.
    Upgrade,
    /// Complete the upgrade, never send HELLO.
    Hello,
    /// Send HELLO, never answer IDENTIFY.
    Ready,
}

/// A server on 127.0.0.1 that stalls at one step and counts open sockets.
async fn stalling_server(stall: Stall) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let live = Arc::new(AtomicUsize::new(0));
    let counter = live.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let live = counter.clone();
            live.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                match stall {
                    Stall::Upgrade => {
                        use tokio::io::AsyncReadExt;
                        let mut buf = [0u8; 1024];
                        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    Stall::Hello | Stall::Ready => {
                        if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                            if matches!(stall, Stall::Ready) {
                                let hello =
                                    r#"{"op":10,"d":{"heartbeat_interval":200},"s":null,"t":null}"#;
                                let _ = ws.send(Message::text(hello)).await;
                            }
                            // Read (answering close frames) until the client is gone.
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                    }
                }
                live.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, live)
}

#[tokio::test]
async fn stop_while_connecting_awaiting_hello_and_identifying() {
    for (stall, phase) in [
        (Stall::Upgrade, "connecting"),
        (Stall::Hello, "awaiting_hello"),
        (Stall::Ready, "identifying"),
    ] {
        let (url, live) = stalling_server(stall).await;
        let mut shard = Shard::start(slow_config(&url)).expect("valid config");
        let mut log = Log::default();
        read_until_status(&mut shard, &mut log, |s| s.phase.name() == phase).await;
        let status = stop_and_check(&shard, phase).await;
        assert_eq!(status.phase.name(), "stopped");
        let deadline = tokio::time::Instant::now() + WAIT;
        while live.load(Ordering::SeqCst) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server still holds a socket after stop in {phase}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn stop_while_waiting_for_an_identify_permit() {
    // No session starts left until a reset far away: the shard waits for its permit, with
    // the socket open and heartbeating.
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = FleetConfig::new(gateway(&mock.url(), 0, 1), ShardSelection::All { total: 1 });
    config.lifecycle = lifecycle();
    config.identify = identify_queue();
    config.session_start_limit = Some(handover_protocol::SessionStartLimit {
        total: 1000,
        remaining: 0,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 1,
    });
    let fleet = Fleet::start(config).expect("valid config");
    let shard = fleet.shard(0).expect("shard 0").clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while shard.status().phase.name() != "awaiting_permit" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never waited for a permit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(DRAIN + SLACK, shard.stop(StopIntent::EndSession))
        .await
        .expect("stop returns")
        .expect("alive");
    assert_eq!(shard.status().live_sockets, 0);
    assert_eq!(shard.status().phase.name(), "stopped");
    mock.handle()
        .wait_for(WAIT, |c| c.live_sockets == 0)
        .await
        .expect("no socket left");
    assert_eq!(mock.handle().counters().shard(0).identifies, 0);
}

#[tokio::test]
async fn dropping_a_call_midway_leaves_the_shard_consistent() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let gw = mock.handle();
    let mut shard = Shard::start(slow_config(&mock.url())).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;

    // A stop whose caller gives up after 1 ms, while the close is never answered: the stop
    // still completes inside the shard (abort at the drain deadline), with no socket left.
    gw.inject(0, Fault::IgnoreCloseFrames);
    let dropped = tokio::time::timeout(
        Duration::from_millis(1),
        shard.stop(StopIntent::KeepResumable),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the stop must still be draining after 1 ms"
    );
    let status = read_until_status(&mut shard, &mut log, |s| s.phase.name() == "stopped").await;
    assert_eq!(status.live_sockets, 0);
    assert!(status.resumable);

    // Started again, it resumes.
    shard.handle().start().await.expect("alive");
    read_until(&mut shard, &mut log, |l| l.count(is_resumed) == 1).await;

    // Restarts abandoned at every point of their way through the shard's command channel.
    for i in 0..60u64 {
        let _ = tokio::time::timeout(
            Duration::from_micros(i * 53),
            shard.restart(RestartReason::HealthMonitor),
        )
        .await;
    }
    read_until_status(&mut shard, &mut log, |s| s.phase.name() == "receiving").await;
    let c = gw.counters();
    assert_eq!(c.max_live_sockets, 1, "two sockets at once");
    assert_eq!(c.shard(0).identifies, 1, "an identify was spent");
}
