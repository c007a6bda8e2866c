//! The Redis coordinator as a library, against a real redis-server: two coordinators stand
//! for two processes of one bot. (The stream sink, the binary's, is tested in
//! `cli/tests/redis_sink.rs`.)

mod redis_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_protocol::{IdentifyBudget, SessionStartLimit, Token};
use handover_runtime::IdentifyCoordinator;
use handover_runtime::redis::{RedisConfig, RedisCoordinator};
use redis_common::Redis;

const WAIT: Duration = Duration::from_secs(10);

async fn coordinator(
    redis: &Redis,
    window_ms: u64,
    budget: Option<IdentifyBudget>,
) -> RedisCoordinator {
    let token = Token::new("mock-token").unwrap();
    let mut config = RedisConfig::new(redis.url(), &token);
    config.bucket_window = Duration::from_millis(window_ms);
    config.budget = budget;
    RedisCoordinator::connect(config).await.unwrap()
}

async fn permit(c: &RedisCoordinator, shard: u32) -> Result<(), String> {
    let source = c.permits_for(shard, 8);
    tokio::time::timeout(WAIT, source.acquire())
        .await
        .expect("a permit answer in time")
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_storm_guard_counts_every_process_and_the_budget_is_shared() {
    let redis = Redis::start("guard");
    let guard = Some(IdentifyBudget {
        max_identifies: 2,
        per: Duration::from_secs(600),
    });
    let a = coordinator(&redis, 1, guard).await;
    let b = coordinator(&redis, 1, guard).await;
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 3,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 1,
    };
    assert_eq!(a.apply_limit(limit).await.unwrap(), 3);
    assert_eq!(
        b.apply_limit(SessionStartLimit {
            remaining: 5,
            ..limit
        })
        .await
        .unwrap(),
        3,
        "the lower count wins"
    );
    permit(&a, 0).await.unwrap();
    permit(&b, 0).await.unwrap();
    let denied = permit(&a, 0).await.unwrap_err();
    assert!(denied.contains("identify budget exceeded"), "{denied}");
    assert!(denied.contains("every process"), "{denied}");
    // One session start left, shared: the second ask (another process, another shard) waits.
    permit(&b, 1).await.unwrap();
    assert_eq!(a.remaining(), Some(2), "as a last saw it");
    assert_eq!(b.remaining(), Some(0));
    let source = a.permits_for(2, 8);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), source.acquire())
            .await
            .is_err(),
        "no identify past the shared budget"
    );
}

#[tokio::test]
async fn a_bucket_grants_one_identify_per_window_lowest_shard_first() {
    let redis = Redis::start("order");
    let a = coordinator(&redis, 400, None).await;
    let b = coordinator(&redis, 400, None).await;
    permit(&a, 0).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let spawn = |c: &RedisCoordinator, shard: u32| {
        let source = c.permits_for(shard, 8);
        let order = order.clone();
        tokio::spawn(async move {
            tokio::time::timeout(WAIT, source.acquire())
                .await
                .unwrap()
                .unwrap();
            order.lock().unwrap().push(shard);
        })
    };
    let late_high = spawn(&a, 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let low = spawn(&b, 1);
    low.await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        vec![1],
        "shard 1 first though shard 3 asked first"
    );
    late_high.await.unwrap();
    assert_eq!(*order.lock().unwrap(), vec![1, 3]);
}
