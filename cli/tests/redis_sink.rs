//! The Redis Streams sink of `handover run --sink redis` as a library, against a real
//! redis-server: two coordinators stand for two processes of one bot publishing the same
//! shard's events.

#[path = "../../runtime/tests/redis_common/mod.rs"]
mod redis_common;

use std::time::Duration;

use handover_cli::sink::StreamSink;
use handover_protocol::{Dispatch, RawJson, Token};
use handover_runtime::redis::{RedisConfig, RedisCoordinator};
use handover_runtime::{ShardEvent, ShardEventKind};
use redis_common::Redis;

async fn coordinator(redis: &Redis) -> RedisCoordinator {
    let token = Token::new("mock-token").unwrap();
    let mut config = RedisConfig::new(redis.url(), &token);
    config.bucket_window = Duration::from_millis(1);
    config.budget = None;
    RedisCoordinator::connect(config).await.unwrap()
}

fn dispatch(shard: u32, seq: u64) -> ShardEvent {
    ShardEvent {
        shard,
        kind: ShardEventKind::Dispatch(Dispatch {
            seq,
            event_type: "MESSAGE_CREATE".into(),
            data: RawJson::parse(format!("{{\"n\":{seq}}}")).unwrap(),
        }),
    }
}

fn ids(redis: &Redis, key: &str) -> Vec<String> {
    redis
        .cli(&["XRANGE", key, "-", "+"])
        .unwrap()
        .lines()
        .filter(|l| l.contains('-') && l.chars().all(|c| c.is_ascii_digit() || c == '-'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_stream_entry_is_named_by_session_and_seq_so_a_republished_event_lands_once() {
    let redis = Redis::start("sink");
    let a = coordinator(&redis).await;
    let b = coordinator(&redis).await;
    let mut first = StreamSink::new(&a, 1000);
    let mut second = StreamSink::new(&b, 1000);
    first.set_session(0, "session-a");
    second.set_session(0, "session-a");
    let events = |seqs: std::ops::Range<u64>| seqs.map(|s| dispatch(0, s)).collect::<Vec<_>>();

    let p = first.publish(&events(1..11)).await.unwrap();
    assert_eq!((p.added, p.duplicates), (10, 0));
    // A retry after a failover, from the same process or another.
    let p = first.publish(&events(5..16)).await.unwrap();
    assert_eq!((p.added, p.duplicates), (5, 6));
    let p = second.publish(&events(12..21)).await.unwrap();
    assert_eq!((p.added, p.duplicates), (5, 4));
    let key = first.stream_key(0);
    let before = ids(&redis, &key);
    assert_eq!(before.len(), 20);
    let epoch = before[0].split('-').next().unwrap().to_owned();
    let seqs: Vec<String> = (1..21).map(|s| format!("{epoch}-{s}")).collect();
    assert_eq!(before, seqs, "ids are <epoch>-<seq>, one epoch per session");

    // A new session of the shard starts again at seq 1 under a later epoch.
    second.set_session(0, "session-b");
    let p = second.publish(&events(1..4)).await.unwrap();
    assert_eq!((p.added, p.duplicates), (3, 0));
    let after = ids(&redis, &key);
    assert_eq!(after.len(), 23);
    let new_epoch: u64 = after[20].split('-').next().unwrap().parse().unwrap();
    assert!(new_epoch > epoch.parse::<u64>().unwrap());
    assert_eq!(redis.cli(&["XLEN", &key]).as_deref(), Some("23"));
}
