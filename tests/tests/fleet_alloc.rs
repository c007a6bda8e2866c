//! The fleet's reader allocates nothing per dispatch: merging the shards' events is no cost
//! per event beyond the shard's own (the frame's buffer, allocated by the shard's task).
//!
//! The shards' tasks run on a worker thread; the test thread only reads the fleet (a
//! multi-thread runtime's `block_on` polls its future on the calling thread), so the
//! allocation count of the test thread is the reader's alone.

#[path = "../../core/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use handover_mock::{MockConfig, MockServer, ShardKey, StreamRate, StreamSpec};
use handover_runtime::{Fleet, FleetConfig, ShardEventKind, ShardSelection};
use handover_tests::{WAIT, gateway, lifecycle, mock_config};

const SHARDS: u32 = 2;
const PER_SHARD: u64 = 2_000;

#[test]
fn reading_a_fleet_allocates_nothing_per_dispatch() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mock = rt
        .block_on(MockServer::start(MockConfig {
            shards: SHARDS,
            ..mock_config()
        }))
        .expect("mock starts");
    let mut config = FleetConfig::new(
        gateway(&mock.url(), 0, SHARDS),
        ShardSelection::All { total: SHARDS },
    );
    config.lifecycle = lifecycle();
    let mut fleet = {
        let _runtime = rt.enter();
        Fleet::start(config).expect("valid config")
    };
    rt.block_on(async {
        let mut ready = 0;
        while ready < SHARDS {
            let event = tokio::time::timeout(WAIT, fleet.next_event())
                .await
                .expect("READY in time")
                .expect("fleet alive");
            ready += u32::from(matches!(event.kind, ShardEventKind::Ready(_)));
        }
    });
    for shard in 0..SHARDS {
        mock.handle().stream(StreamSpec {
            shard: ShardKey::new(0, shard),
            event: "MESSAGE_CREATE".to_owned(),
            data: serde_json::json!({ "content": "hello", "channel_id": "1" }),
            count: PER_SHARD,
            rate: StreamRate::AsFastAsRead,
        });
    }
    let before = counting_alloc::allocations();
    let mut seen = [0_u64; SHARDS as usize];
    rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            while seen.iter().sum::<u64>() < u64::from(SHARDS) * PER_SHARD {
                let event = fleet.next_event().await.expect("fleet alive");
                if let ShardEventKind::Dispatch(_) = event.kind {
                    seen[event.shard as usize] += 1;
                }
            }
        })
        .await
        .expect("every dispatch in time");
    });
    let allocations = counting_alloc::allocations() - before;
    assert_eq!(seen, [PER_SHARD; SHARDS as usize]);
    // The timeout's timer entry and the like, once: nothing that grows with the events
    // (futures' SelectAll, which this replaced, allocated one task node per event: 4,000).
    assert!(
        allocations <= 16,
        "{allocations} allocations for {} dispatches",
        u64::from(SHARDS) * PER_SHARD
    );
    rt.block_on(async {
        fleet.shutdown(handover_core::StopIntent::EndSession).await;
        mock.shutdown().await;
    });
}
