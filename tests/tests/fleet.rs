//! A fleet of shards sharing one identify queue against the mock gateway.

use std::time::Duration;

use handover_core::{RestartReason, StopIntent};
use handover_mock::{MockConfig, MockServer};
use handover_runtime::{Fleet, FleetConfig, ShardEventKind, ShardSelection};
use handover_tests::{WAIT, gateway, identify_queue, lifecycle, mock_config};

const SHARDS: u32 = 16;

fn fleet_config(url: &str) -> FleetConfig {
    let mut config = FleetConfig::new(
        gateway(url, 0, SHARDS),
        ShardSelection::All { total: SHARDS },
    );
    config.lifecycle = lifecycle();
    // A little over the gateway's window: a grant and the IDENTIFY it lets go are not the
    // same instant, and Discord enforces the window on arrival.
    config.identify = handover_protocol::IdentifyQueueConfig {
        bucket_window: Duration::from_millis(120),
        ..identify_queue()
    };
    config
}

async fn next_of_kind(fleet: &mut Fleet, pred: impl Fn(&ShardEventKind) -> bool) -> u32 {
    loop {
        let ev = tokio::time::timeout(WAIT, fleet.next_event())
            .await
            .expect("fleet event in time")
            .expect("fleet alive");
        if pred(&ev.kind) {
            return ev.shard;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_shards_identify_one_bucket_at_a_time() {
    let mock = MockServer::start(MockConfig {
        shards: SHARDS,
        identify_window: Duration::from_millis(100),
        ..mock_config()
    })
    .await
    .expect("mock starts");
    let mut fleet = Fleet::start(fleet_config(&mock.url())).expect("valid config");
    assert_eq!(fleet.shard_ids().count(), SHARDS as usize);

    let mut ready = Vec::new();
    while ready.len() < SHARDS as usize {
        ready.push(next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Ready(_))).await);
    }
    ready.sort_unstable();
    assert_eq!(ready, (0..SHARDS).collect::<Vec<_>>());

    let c = mock.handle().counters();
    for id in 0..SHARDS {
        let s = c.shard(id);
        assert_eq!(s.identifies, 1, "shard {id} identified more than once");
        assert_eq!(
            s.invalid_sessions_sent, 0,
            "shard {id} hit the concurrency limit"
        );
        assert_eq!(s.max_live_sockets, 1, "shard {id} had two sockets");
    }
    assert_eq!(c.max_live_sockets, SHARDS as usize);

    // Events from every shard arrive on the merged stream, tagged.
    mock.handle().dispatch(
        5,
        "MESSAGE_CREATE",
        &serde_json::json!({ "content": "five" }),
    );
    let shard = next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Dispatch(_))).await;
    assert_eq!(shard, 5);

    // Restarting every shard resumes each of them: no identify spent.
    fleet
        .restart_all(RestartReason::Requested)
        .await
        .expect("alive");
    let mut resumed = 0;
    while resumed < SHARDS {
        next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Resumed(_))).await;
        resumed += 1;
    }
    let c = mock.handle().counters();
    assert!((0..SHARDS).all(|id| c.shard(id).identifies == 1));
    assert_eq!(fleet.status().len(), SHARDS as usize);
    assert!(fleet.status().iter().all(|s| s.phase.name() == "receiving"));

    // Graceful shutdown keeping sessions: every socket gone, every session saved.
    fleet
        .stop_all(StopIntent::KeepResumable)
        .await
        .expect("stopped");
    let sessions = fleet.sessions();
    assert_eq!(sessions.len(), SHARDS as usize);
    tokio::time::timeout(WAIT, fleet.shutdown(StopIntent::KeepResumable))
        .await
        .expect("shutdown in time");
    mock.handle()
        .wait_for(WAIT, |c| c.live_sockets == 0)
        .await
        .expect("no socket left");

    // A new fleet (a process restart) resumes all sixteen: no identify spent.
    let mut config = fleet_config(&mock.url());
    config.sessions = sessions;
    let mut fleet = Fleet::start(config).expect("valid config");
    let mut resumed = 0;
    while resumed < SHARDS {
        next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Resumed(_))).await;
        resumed += 1;
    }
    let c = mock.handle().counters();
    assert!((0..SHARDS).all(|id| c.shard(id).identifies == 1));
    fleet.shutdown(StopIntent::EndSession).await;
}

#[tokio::test]
async fn a_range_of_shards_runs_only_those() {
    let mock = MockServer::start(MockConfig {
        shards: 4,
        ..mock_config()
    })
    .await
    .expect("mock starts");
    let mut config = fleet_config(&mock.url());
    config.shards = ShardSelection::Range {
        ids: 2..4,
        total: 4,
    };
    let mut fleet = Fleet::start(config).expect("valid config");
    let mut ready = vec![
        next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Ready(_))).await,
        next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Ready(_))).await,
    ];
    ready.sort_unstable();
    assert_eq!(ready, vec![2, 3]);
    assert!(fleet.stop(0, StopIntent::EndSession).await.is_err());
    assert!(
        Fleet::start({
            let mut c = fleet_config(&mock.url());
            c.shards = ShardSelection::Range {
                ids: 3..5,
                total: 4,
            };
            c
        })
        .is_err()
    );
}

#[tokio::test]
async fn connect_asks_the_gateway_for_url_shards_and_limits() {
    let mock = MockServer::start(MockConfig {
        shards: 3,
        ..mock_config()
    })
    .await
    .expect("mock starts");
    // The configured URL is wrong on purpose: the answer of /gateway/bot must replace it.
    let mut config = fleet_config("ws://127.0.0.1:9");
    config.shards = ShardSelection::Recommended;
    let mut fleet = Fleet::connect(
        config,
        &mock.http_base(),
        &handover_runtime::http::HttpOptions::default(),
    )
    .await
    .expect("lookup and start");
    let mut ready = Vec::new();
    while ready.len() < 3 {
        ready.push(next_of_kind(&mut fleet, |k| matches!(k, ShardEventKind::Ready(_))).await);
    }
    ready.sort_unstable();
    assert_eq!(ready, vec![0, 1, 2]);
    assert_eq!(mock.handle().counters().http_requests, 1);

    // A bad token fails the lookup with a typed error, before any socket opens.
    let mut bad = fleet_config(&mock.url());
    bad.gateway.token = handover_protocol::Token::new("wrong-token").expect("well formed");
    bad.shards = ShardSelection::Recommended;
    let err = Fleet::connect(
        bad,
        &mock.http_base(),
        &handover_runtime::http::HttpOptions::default(),
    )
    .await
    .expect_err("401");
    assert!(
        matches!(
            err,
            handover_runtime::FleetError::Lookup(handover_runtime::http::HttpError::InvalidToken)
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-token"));
}
