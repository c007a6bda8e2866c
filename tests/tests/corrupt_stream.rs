//! A corrupted compressed stream (one garbage binary frame poisons the inflate context) is
//! replaced at once: the codec asks for a restart and the shard resumes, instead of losing
//! every later frame until zombie detection notices.

use std::time::Duration;

use handover_mock::{Fault, Garbage, MockServer};
use handover_protocol::Compression;
use handover_runtime::{Shard, ShardEventKind};
use handover_tests::{Log, is_ready, is_resumed, mock_config, read_until, shard_config};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_stream_is_restarted_and_resumed_at_once() {
    for compression in [Compression::ZlibStream, Compression::ZstdStream] {
        let mut config = mock_config();
        // Zombie detection cannot be what recovers: no beat is due within the test's waits.
        config.heartbeat_interval = Duration::from_secs(60);
        config.heartbeat_grace = None;
        let mock = MockServer::start(config).await.expect("mock starts");
        let gw = mock.handle();
        let mut shard_config = shard_config(&mock.url());
        shard_config.gateway.compression = compression;
        let mut shard = Shard::start(shard_config).expect("valid config");
        let mut log = Log::default();
        read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;
        gw.dispatch(0, "MESSAGE_CREATE", &json!({"n": 1}));
        read_until(&mut shard, &mut log, |l| l.seqs.contains(&2)).await;

        assert_eq!(gw.inject(0, Fault::Garbage(Garbage::Binary)), 1);
        // Random bytes may look like the start of a zlib message: the next message completes
        // it and fails to inflate. That event is not lost: the resume replays it.
        gw.dispatch(0, "MESSAGE_CREATE", &json!({"n": 2}));
        read_until(&mut shard, &mut log, |l| l.count(is_resumed) == 1).await;
        assert!(
            log.events
                .iter()
                .any(|e| matches!(e.kind, ShardEventKind::SocketClosed { code: Some(4000) })),
            "{compression:?}: closed resumable: {:#?}",
            log.events
        );
        gw.dispatch(0, "MESSAGE_CREATE", &json!({"n": 3}));
        read_until(&mut shard, &mut log, |l| {
            l.seqs.contains(&3) && l.seqs.contains(&5)
        })
        .await;
        let c = gw.counters().shard(0);
        assert_eq!((c.identifies, c.resumes_ok), (1, 1), "{compression:?}");
        assert_eq!(c.max_live_sockets, 1);
        assert!(log.duplicates().is_empty());
        shard.handle().shutdown().await;
    }
}
