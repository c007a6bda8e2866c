//! A session saved when one shard stops resumes in a new shard (as after a process restart),
//! with the events written in between replayed; a stale saved session falls back to identify.

use handover_core::StopIntent;
use handover_mock::MockServer;
use handover_protocol::Session;
use handover_runtime::{Shard, ShardEventKind};
use handover_tests::{Log, is_ready, is_resumed, mock_config, read_until, shard_config};

#[tokio::test]
async fn a_saved_session_resumes_in_a_new_shard() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let gw = mock.handle();
    let mut first = Shard::start(shard_config(&mock.url())).expect("valid config");
    let mut log = Log::default();
    read_until(&mut first, &mut log, |l| l.count(is_ready) == 1).await;
    gw.dispatch(0, "MESSAGE_CREATE", &serde_json::json!({ "n": 1 }));
    read_until(&mut first, &mut log, |l| l.seqs.len() == 2).await;

    first
        .stop(StopIntent::KeepResumable)
        .await
        .expect("stopped");
    let saved = first.handle().session().expect("a resumable session");
    assert_eq!(saved.seq, 2);
    // What a session file holds, through JSON and back.
    let saved: Session =
        serde_json::from_str(&serde_json::to_string(&saved).expect("serializes")).expect("parses");
    drop(first);

    // Written while no process was connected: must arrive after the resume.
    gw.dispatch(0, "MESSAGE_CREATE", &serde_json::json!({ "n": 2 }));

    let mut config = shard_config(&mock.url());
    config.resume = Some(saved);
    let mut second = Shard::start(config).expect("valid config");
    let mut log2 = Log::default();
    read_until(&mut second, &mut log2, |l| l.count(is_resumed) == 1).await;
    let replayed: Vec<u64> = log2
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            ShardEventKind::Dispatch(d) => Some(d.seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        replayed,
        vec![3],
        "the event written in between is replayed once"
    );
    let s = gw.counters().shard(0);
    assert_eq!(s.identifies, 1, "the second shard must not identify");
    assert_eq!(s.resumes_ok, 1);
    assert_eq!(log2.count(is_ready), 0);
}

#[tokio::test]
async fn an_unknown_saved_session_falls_back_to_identify() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let mut config = shard_config(&mock.url());
    config.resume = Some(Session {
        session_id: "not-a-session-the-gateway-knows".into(),
        resume_gateway_url: mock.url(),
        seq: 40,
    });
    let mut shard = Shard::start(config).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;
    let c = mock.handle().counters();
    assert_eq!(c.resumes_unknown_session, 1, "the resume was tried first");
    assert_eq!(c.shard(0).identifies, 1);
    assert_eq!(c.max_live_sockets, 1);
}
