//! A shard against the mock gateway over loopback: every server-side fault lands in the right
//! lifecycle transition, spends identifies only when the session is gone, and stops for good on
//! fatal conditions.

use std::time::Duration;

use handover_core::StopIntent;
use handover_mock::{Fault, MockConfig, MockServer};
use handover_protocol::{IdentifyBudget, Token};
use handover_runtime::{GiveUpReason, Shard, ShardEventKind, describe_give_up};
use handover_tests::{
    Log, WAIT, is_ready, is_resumed, mock_config, read_until, read_until_status, shard_config,
};

async fn ready_shard(config: MockConfig) -> (MockServer, Shard, Log) {
    let mock = MockServer::start(config).await.expect("mock starts");
    let mut shard = Shard::start(shard_config(&mock.url())).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;
    (mock, shard, log)
}

fn gave_up(k: &ShardEventKind) -> bool {
    matches!(k, ShardEventKind::GaveUp { .. })
}

/// One fault after READY, then: how many READY and RESUMED in total once recovered.
async fn recover_from(fault: Fault) -> (usize, usize, MockServer, Shard, Log) {
    let (mock, mut shard, mut log) = ready_shard(mock_config()).await;
    assert_eq!(
        mock.handle().inject(0, fault),
        1,
        "{fault:?} hit the connection"
    );
    read_until(&mut shard, &mut log, |l| {
        l.count(is_ready) + l.count(is_resumed) >= 2
    })
    .await;
    let counters = mock.handle().counters();
    assert_eq!(
        counters.max_live_sockets, 1,
        "{fault:?}: two sockets at once"
    );
    (log.count(is_ready), log.count(is_resumed), mock, shard, log)
}

#[tokio::test]
async fn op7_reconnect_resumes() {
    let (ready, resumed, mock, ..) = recover_from(Fault::Reconnect).await;
    assert_eq!((ready, resumed), (1, 1));
    let s = mock.handle().counters().shard(0);
    assert_eq!((s.identifies, s.resumes_ok), (1, 1));
    // We closed the old socket ourselves, keeping the session resumable.
    assert_eq!(s.close_frames, vec![4000]);
}

#[tokio::test]
async fn op9_resumable_resumes() {
    let (ready, resumed, mock, ..) = recover_from(Fault::InvalidSession { resumable: true }).await;
    assert_eq!((ready, resumed), (1, 1));
    assert_eq!(mock.handle().counters().shard(0).identifies, 1);
}

#[tokio::test]
async fn op9_not_resumable_identifies_afresh_and_reports_the_gap() {
    let (mock, mut shard, mut log) = ready_shard(mock_config()).await;
    mock.handle().dispatch(
        0,
        "MESSAGE_CREATE",
        &serde_json::json!({ "content": "before" }),
    );
    read_until(&mut shard, &mut log, |l| l.seqs.len() >= 2).await;
    mock.handle()
        .inject(0, Fault::InvalidSession { resumable: false });
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 2).await;
    let s = mock.handle().counters().shard(0);
    assert_eq!(s.identifies, 2);
    assert_eq!(s.resumes_ok, 0);
    // We ended the dead session with 1000.
    assert_eq!(s.close_frames, vec![1000]);
    assert_eq!(log.count(|k| matches!(k, ShardEventKind::Gap(_))), 1);
    assert_eq!(shard.status().gaps, 1);
}

#[tokio::test]
async fn resumable_close_codes_resume() {
    for code in [4000, 4001, 4002, 4003, 4005, 4008] {
        let (ready, resumed, mock, ..) = recover_from(Fault::Close(code)).await;
        assert_eq!((ready, resumed), (1, 1), "close {code}");
        assert_eq!(
            mock.handle().counters().shard(0).identifies,
            1,
            "close {code}"
        );
    }
}

#[tokio::test]
async fn new_session_close_codes_identify() {
    for code in [4007, 4009] {
        let (ready, resumed, mock, shard, _) = recover_from(Fault::Close(code)).await;
        assert_eq!((ready, resumed), (2, 0), "close {code}");
        assert_eq!(
            mock.handle().counters().shard(0).identifies,
            2,
            "close {code}"
        );
        assert_eq!(shard.status().last_close_code, Some(code));
    }
}

#[tokio::test]
async fn fatal_close_codes_stop_with_a_reason_and_never_retry() {
    for code in [4004, 4010, 4011, 4012, 4013, 4014] {
        let (mock, mut shard, mut log) = ready_shard(mock_config()).await;
        mock.handle().inject(0, Fault::Close(code));
        read_until(&mut shard, &mut log, |l| l.count(gave_up) == 1).await;
        let status = read_until_status(&mut shard, &mut log, |s| s.live_sockets == 0).await;
        assert_eq!(status.phase.name(), "failed", "close {code}");
        assert_eq!(
            status.reconnect_at_ms, None,
            "close {code}: a retry is scheduled"
        );
        assert_eq!(status.last_close_code, Some(code));
        let reason = status.gave_up.expect("a reason");
        // Typed: a bot can tell 4004 from 4014 without parsing text.
        assert_eq!(reason, GiveUpReason::FatalClose { code: Some(code) });
        let text = describe_give_up(reason);
        assert!(text.contains(&code.to_string()), "{text}");
        // Nothing more happens: no reconnect (longer than the backoff cap).
        let accepted = mock.handle().counters().connections_accepted;
        while let Ok(ev) =
            tokio::time::timeout(Duration::from_millis(400), shard.next_event()).await
        {
            let ev = ev.expect("shard alive");
            assert!(
                matches!(
                    ev.kind,
                    ShardEventKind::StateChanged {
                        to: handover_core::State::Closed,
                        ..
                    }
                ),
                "close {code}: unexpected event {ev:?}"
            );
        }
        assert_eq!(mock.handle().counters().connections_accepted, accepted);
    }
}

#[tokio::test]
async fn bad_token_fails_with_a_clear_reason_and_no_retry() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.gateway.token = Token::new("not-the-right-token").expect("well formed");
    let mut shard = Shard::start(config).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(gave_up) == 1).await;
    let Some(ShardEventKind::GaveUp { reason }) =
        log.events.iter().map(|e| &e.kind).find(|k| gave_up(k))
    else {
        unreachable!()
    };
    assert_eq!(*reason, GiveUpReason::FatalClose { code: Some(4004) });
    let text = describe_give_up(*reason);
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("not-the-right-token"));
    let status = shard.status();
    assert_eq!(status.phase.name(), "failed");
    assert_eq!(mock.handle().counters().connections_accepted, 1);
    let text = format!("{status:?} {:?}", log.events);
    assert!(!text.contains("not-the-right-token"), "token leaked");
}

#[tokio::test]
async fn drop_without_close_resumes() {
    let (ready, resumed, mock, ..) = recover_from(Fault::DropTcp).await;
    assert_eq!((ready, resumed), (1, 1));
    assert_eq!(mock.handle().counters().shard(0).identifies, 1);
}

#[tokio::test]
async fn zombie_is_detected_and_resumed() {
    let (ready, resumed, mock, shard, _) = recover_from(Fault::Zombie).await;
    assert_eq!((ready, resumed), (1, 1));
    let s = mock.handle().counters().shard(0);
    assert_eq!(s.identifies, 1);
    assert_eq!(shard.status().live_sockets, 1);
}

/// A zombie that never answers a close is aborted, not drained: with a drain deadline far past
/// the harness's wait, the shard still resumes, and the mock never sees the new socket while the
/// zombie's is open (the abort is confirmed before the next open).
#[tokio::test]
async fn a_silent_zombie_is_aborted_at_once_and_its_socket_is_gone_before_the_next() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.lifecycle.drain_deadline = WAIT * 3;
    let mut shard = Shard::start(config).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;
    assert_eq!(mock.handle().inject(0, Fault::Zombie), 1);
    read_until(&mut shard, &mut log, |l| l.count(is_resumed) == 1).await;
    let counters = mock.handle().counters();
    assert_eq!(
        counters.max_live_sockets, 1,
        "the zombie's socket outlived the abort"
    );
    assert_eq!(counters.connections_accepted, 2);
    assert_eq!(counters.shard(0).identifies, 1);
}

#[tokio::test]
async fn resume_after_the_window_expired_identifies_afresh() {
    let config = MockConfig {
        resume_window: Duration::from_millis(100),
        ..mock_config()
    };
    let (mock, mut shard, mut log) = ready_shard(config).await;
    shard
        .stop(StopIntent::KeepResumable)
        .await
        .expect("stopped");
    assert!(shard.status().resumable);
    mock.handle()
        .wait_for(WAIT, |c| c.sessions_expired == 1)
        .await
        .expect("session expires");
    shard.handle().start().await.expect("started");
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 2).await;
    let s = mock.handle().counters().shard(0);
    assert_eq!(s.resumes_failed, 1, "the resume was tried first");
    assert_eq!(s.identifies, 2);
    assert_eq!(s.max_live_sockets, 1);
}

#[tokio::test]
async fn an_identify_storm_is_stopped_by_the_budget_guard() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.identify.budget = Some(IdentifyBudget {
        max_identifies: 3,
        per: Duration::from_secs(60),
    });
    let mut shard = Shard::start(config).expect("valid config");
    let mut log = Log::default();
    // The gateway keeps invalidating every new session: each one costs an identify.
    for round in 1..=5 {
        read_until(&mut shard, &mut log, |l| {
            l.count(is_ready) == round || l.count(gave_up) > 0
        })
        .await;
        if log.count(gave_up) > 0 {
            break;
        }
        assert!(round <= 3, "identified past the budget");
        mock.handle()
            .inject(0, Fault::InvalidSession { resumable: false });
    }
    assert_eq!(log.count(gave_up), 1, "the storm was not stopped");
    let status = read_until_status(&mut shard, &mut log, |s| s.phase.name() == "failed").await;
    let reason = status.gave_up.expect("a reason");
    assert_eq!(reason, GiveUpReason::PermitDenied);
    assert_eq!(status.last_error, None);
    assert_eq!(mock.handle().counters().shard(0).identifies, 3);
    assert_eq!(status.identifies, 3);
}
