//! # handover-tests
//!
//! End-to-end and simulation tests across the workspace crates. The library part is the shared
//! harness: short timers so every fault plays out in milliseconds, and helpers that wait on
//! events (never on sleeps) with a hard upper bound.

#![warn(missing_docs)]

pub mod shell_sim;
pub mod sim;

use std::collections::BTreeSet;
use std::time::Duration;

use handover_core::{Backoff, Config};
use handover_mock::{DEFAULT_TOKEN, MockConfig};
use handover_protocol::{
    CLOSE_RULES, GatewayConfig, IdentifyBudget, IdentifyQueueConfig, Intents, Token,
};
use handover_runtime::{Shard, ShardConfig, ShardEvent, ShardEventKind, ShardStatus};

/// Upper bound for any single wait in these tests. Generous: it only matters when a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Heartbeat interval the mock announces in tests.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// A mock gateway configuration with intervals and windows shrunk for tests.
pub fn mock_config() -> MockConfig {
    MockConfig {
        heartbeat_interval: HEARTBEAT,
        heartbeat_grace: Some(Duration::from_millis(500)),
        resume_window: Duration::from_secs(10),
        identify_window: Duration::from_millis(100),
        close_timeout: Duration::from_millis(500),
        seed: 7,
        ..MockConfig::default()
    }
}

/// Lifecycle timers shrunk for tests: a zombie is aborted one interval after its unanswered
/// heartbeat, drains are bounded by 150 ms, reconnects after a failure are spaced 10-200 ms
/// (the first after a session of at least 1 s within the 25 ms spread).
pub fn lifecycle() -> Config {
    Config {
        open_timeout: Duration::from_secs(2),
        hello_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        probe_grace: Duration::from_millis(100),
        drain_deadline: Duration::from_millis(150),
        backoff: Backoff {
            floor: Duration::from_millis(10),
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        stable_after: Duration::from_secs(1),
        close_rules: CLOSE_RULES,
        ..Config::default()
    }
}

/// Identify pacing matching [`mock_config`]'s window.
pub fn identify_queue() -> IdentifyQueueConfig {
    IdentifyQueueConfig {
        bucket_window: Duration::from_millis(100),
        budget: Some(IdentifyBudget {
            max_identifies: 10,
            per: Duration::from_secs(60),
        }),
        ..IdentifyQueueConfig::default()
    }
}

/// The gateway settings of shard `id` of `count` against the mock at `url`.
pub fn gateway(url: &str, id: u32, count: u32) -> GatewayConfig {
    let token = Token::new(DEFAULT_TOKEN).expect("the mock's default token is well formed");
    let mut g = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    g.gateway_url = url.to_owned();
    g.shard = handover_protocol::ShardId::new(id, count).expect("id below count");
    g
}

/// A shard configuration against the mock at `url`, with test timers.
pub fn shard_config(url: &str) -> ShardConfig {
    let mut c = ShardConfig::new(gateway(url, 0, 1));
    c.lifecycle = lifecycle();
    c.identify = identify_queue();
    c
}

/// Everything a shard delivered, recorded as it is read.
#[derive(Debug, Default)]
pub struct Log {
    /// Every event, in order.
    pub events: Vec<ShardEvent>,
    /// Sequence numbers delivered to the application (dispatches, READY, RESUMED), in order.
    pub seqs: Vec<u64>,
}

impl Log {
    /// Record one event.
    pub fn push(&mut self, ev: ShardEvent) {
        match &ev.kind {
            ShardEventKind::Dispatch(d) => self.seqs.push(d.seq),
            ShardEventKind::Ready(r) => self.seqs.extend(r.seq),
            ShardEventKind::Resumed(r) => self.seqs.extend(r.seq),
            _ => {}
        }
        self.events.push(ev);
    }

    /// Sequence numbers delivered more than once.
    pub fn duplicates(&self) -> Vec<u64> {
        let mut seen = BTreeSet::new();
        self.seqs
            .iter()
            .copied()
            .filter(|s| !seen.insert(*s))
            .collect()
    }

    /// How many events match `pred`.
    pub fn count(&self, pred: impl Fn(&ShardEventKind) -> bool) -> usize {
        self.events.iter().filter(|e| pred(&e.kind)).count()
    }
}

/// Read events from `shard` into `log` until `pred` holds for the log (checked after each), for
/// at most [`WAIT`]. Panics with the log's tail on timeout.
pub async fn read_until(shard: &mut Shard, log: &mut Log, mut pred: impl FnMut(&Log) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pred(log) {
        match tokio::time::timeout_at(deadline, shard.next_event()).await {
            Ok(Some(ev)) => log.push(ev),
            Ok(None) => panic!("shard ended; last events: {:#?}", tail(log)),
            Err(_) => panic!("timed out; last events: {:#?}", tail(log)),
        }
    }
}

/// Read events until the shard's status satisfies `pred` (checked after each event and every
/// 10 ms), for at most [`WAIT`].
pub async fn read_until_status(
    shard: &mut Shard,
    log: &mut Log,
    mut pred: impl FnMut(&ShardStatus) -> bool,
) -> ShardStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = shard.status();
        if pred(&status) {
            return status;
        }
        tokio::select! {
            ev = shard.next_event() => match ev {
                Some(ev) => log.push(ev),
                None => panic!("shard ended; status {status:#?}"),
            },
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("timed out; status {status:#?}; last events {:#?}", tail(log)),
        }
    }
}

fn tail(log: &Log) -> &[ShardEvent] {
    let n = log.events.len();
    &log.events[n.saturating_sub(12)..]
}

/// Whether an event is a READY.
pub fn is_ready(k: &ShardEventKind) -> bool {
    matches!(k, ShardEventKind::Ready(_))
}

/// Whether an event is a RESUMED.
pub fn is_resumed(k: &ShardEventKind) -> bool {
    matches!(k, ShardEventKind::Resumed(_))
}
