//! The incident the project exists for: a health monitor restarts a shard whose socket went
//! zombie (no ACKs, close frames never answered), from several tasks, every few milliseconds.
//! The shard must never hold two sockets, must resume (no identify spent), and must deliver
//! every dispatch the gateway wrote exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use handover_core::RestartReason;
use handover_mock::{Fault, MockServer, StreamRate, StreamSpec};
use handover_runtime::{Shard, ShardEventKind};
use handover_tests::{Log, WAIT, is_ready, is_resumed, mock_config, read_until, shard_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_on_a_zombie_never_overlaps_and_resumes() {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let gw = mock.handle();
    let mut shard = Shard::start(shard_config(&mock.url())).expect("valid config");
    let mut log = Log::default();
    read_until(&mut shard, &mut log, |l| l.count(is_ready) == 1).await;

    // Events keep flowing on the gateway side the whole time.
    let total = 300;
    gw.stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data: serde_json::json!({ "content": "tick" }),
        count: total,
        rate: StreamRate::Every(Duration::from_millis(3)),
    });
    read_until(&mut shard, &mut log, |l| l.seqs.len() >= 20).await;

    // The socket goes zombie: no more ACKs, nothing sent, close frames never answered.
    assert_eq!(gw.inject(0, Fault::Zombie), 1);

    // A health monitor in four tasks restarts the shard every 2-5 ms, 100 times each.
    let monitors: Vec<_> = (0..4u64)
        .map(|i| {
            let h = shard.handle();
            tokio::spawn(async move {
                for _ in 0..100 {
                    h.restart(RestartReason::HealthMonitor)
                        .await
                        .expect("shard alive");
                    tokio::time::sleep(Duration::from_millis(2 + i)).await;
                }
            })
        })
        .collect();
    // Keep reading meanwhile so the shard never stalls on a full event channel.
    let reading = async {
        loop {
            match shard.next_event().await {
                Some(ev) => log.push(ev),
                None => panic!("shard ended"),
            }
        }
    };
    tokio::select! {
        _ = futures_join(monitors) => {}
        _ = reading => unreachable!(),
        _ = tokio::time::sleep(WAIT) => panic!("monitors did not finish"),
    }

    // Recovery: the stream completes and every event the gateway wrote arrives, once.
    let written = || -> BTreeSet<u64> {
        let c = gw.counters().shard(0);
        assert_eq!(c.sessions.len(), 1, "one session for the whole incident");
        c.sessions.values().flat_map(|s| s.seqs()).collect()
    };
    let dispatches = |log: &Log| log.count(|k| matches!(k, ShardEventKind::Dispatch(_))) as u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dispatches(&log) < total || written() != log.seqs.iter().copied().collect() {
        tokio::select! {
            ev = shard.next_event() => log.push(ev.expect("shard alive")),
            _ = tokio::time::sleep_until(deadline) => panic!(
                "not all dispatches delivered: written {} delivered {}",
                written().len(), log.seqs.len()
            ),
        }
    }

    let c = gw.counters();
    let s = c.shard(0);
    println!(
        "max live sockets {} (shard {}), identifies {}, resumes ok {}, delivered {}",
        c.max_live_sockets,
        s.max_live_sockets,
        s.identifies,
        s.resumes_ok,
        log.seqs.len()
    );
    assert_eq!(s.max_live_sockets, 1, "two sockets for one shard");
    assert_eq!(c.max_live_sockets, 1, "two sockets open at once");
    assert_eq!(s.identifies, 1, "an identify was spent on a restart");
    assert!(s.resumes_ok >= 1, "recovery must be a resume");
    assert_eq!(log.count(is_ready), 1);
    assert!(log.count(is_resumed) >= 1);
    assert_eq!(
        log.duplicates(),
        Vec::<u64>::new(),
        "an event was delivered twice"
    );
    let status = shard.status();
    assert_eq!(status.identifies, 1);
    assert!(status.live_sockets <= 1);
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        h.await.expect("monitor task");
    }
}
