//! Resharding a running bot from 2 to 3 shards against the mock, while messages stream in,
//! following the procedure of docs/runtime.md ("Resharding"): start the new fleet beside the
//! old one (sharing one identify coordinator), read both while they overlap and drop duplicates
//! by message id, and once every new shard is READY stop the old fleet with EndSession and drain
//! what it still holds.
//!
//! Discord routes a guild's events to the shard `(guild_id >> 22) % shard_count` of every
//! session that owns it, so during the overlap a guild's messages reach one shard of each fleet.
//! The mock keys sessions by token and shard id, not by shard count: two fleets of one token
//! would share shard ids 0 and 1, and a dispatch to shard 0 would reach both fleets' shard 0,
//! hiding a message that only one of them should have had. So the new fleet connects with a
//! second token of the mock, standing for the same bot under its new shard count, and the test
//! plays the router: each message goes to the old fleet's shard `(guild_id >> 22) % 2` while
//! that fleet runs, and to the new fleet's `(guild_id >> 22) % 3` once it has started (the
//! mock drops a dispatch for a shard with no session yet, as Discord would not deliver it).
//! The price: the mock paces identifies per token, so it cannot check that the two fleets'
//! identifies share one bucket; the shared coordinator paces them all the same.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use handover_core::StopIntent;
use handover_mock::{DEFAULT_TOKEN, Fault, MockConfig, MockHandle, MockServer, ShardKey, Target};
use handover_runtime::{
    Fleet, FleetConfig, IdentifyCoordinator, IdentifyGate, ShardEvent, ShardEventKind,
    ShardSelection,
};
use handover_tests::{WAIT, gateway, identify_queue, lifecycle, mock_config};

const OLD: u32 = 2;
const NEW: u32 = 3;
/// Messages the router sends in each phase at least (old only, both, new only).
const PER_PHASE: u64 = 60;
/// The router's hard bound on messages, whatever happens.
const MAX_MESSAGES: u64 = 20_000;
/// Guilds whose ids spread over every shard of both counts (`(id >> 22) % n`).
const GUILDS: u64 = 6;
/// Message `n` has id `FIRST_ID + n`: ids grow with time, as Discord's snowflakes do.
const FIRST_ID: u64 = 1_000_000;

/// Where the migration is, as the router sees it.
const PHASE_OLD: u8 = 0;
const PHASE_BOTH: u8 = 1;
const PHASE_NEW: u8 = 2;
const PHASE_END: u8 = 3;

/// The mock's token for the bot under its new shard count (see the module's documentation).
const NEW_COUNT_TOKEN: &str = "mock-token-under-the-new-shard-count";

fn fleet_config(url: &str, total: u32) -> FleetConfig {
    let mut gateway = gateway(url, 0, total);
    if total == NEW {
        gateway.token = handover_protocol::Token::new(NEW_COUNT_TOKEN).expect("well formed");
    }
    let mut config = FleetConfig::new(gateway, ShardSelection::All { total });
    config.lifecycle = lifecycle();
    config
}

/// Plays Discord's router: message `n` belongs to guild `(n % GUILDS) << 22` and goes to the
/// shard that owns the guild in every fleet that is up (old: token 0, new: token 1). Returns how many it sent.
async fn route(mock: MockHandle, phase: Arc<AtomicU8>, sent: Arc<AtomicU64>) -> u64 {
    let mut n = 0;
    while n < MAX_MESSAGES {
        let now = phase.load(Ordering::SeqCst);
        if now == PHASE_END {
            break;
        }
        let guild = (n % GUILDS) << 22;
        let mut shards = Vec::new();
        if now <= PHASE_BOTH {
            shards.push(ShardKey::new(0, ((guild >> 22) % u64::from(OLD)) as u32));
        }
        if now >= PHASE_BOTH {
            shards.push(ShardKey::new(1, ((guild >> 22) % u64::from(NEW)) as u32));
        }
        let data = serde_json::json!({
            "id": (FIRST_ID + n).to_string(),
            "guild_id": guild.to_string(),
            "channel_id": (guild + 1).to_string(),
            "content": format!("message {n}"),
        });
        for shard in shards {
            mock.dispatch(shard, "MESSAGE_CREATE", &data);
        }
        n += 1;
        sent.store(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n
}

/// The application: takes each message id once, whichever fleet and shard brought it. It also
/// notes which fleet delivered what, for the test's checks.
#[derive(Default)]
struct App {
    /// The messages the application processed (its deduplication: each number once).
    processed: BTreeSet<u64>,
    /// Copies dropped as duplicates.
    duplicates: u64,
    /// What each fleet (0 old, 1 new) delivered, by message number.
    by_fleet: [BTreeSet<u64>; 2],
    /// The highest message number each old shard delivered.
    old_latest: BTreeMap<u32, u64>,
}

impl App {
    /// Takes one event of `fleet`; returns whether it was a READY.
    fn take(&mut self, fleet: usize, event: &ShardEvent) -> bool {
        match &event.kind {
            ShardEventKind::Dispatch(d) if d.event_type == "MESSAGE_CREATE" => {
                let data: serde_json::Value =
                    serde_json::from_str(d.data.as_str()).expect("the router sends JSON");
                let n = data["id"]
                    .as_str()
                    .and_then(|id| id.parse::<u64>().ok())
                    .expect("a message id")
                    - FIRST_ID;
                self.by_fleet[fleet].insert(n);
                if fleet == 0 {
                    let latest = self.old_latest.entry(event.shard).or_default();
                    *latest = (*latest).max(n);
                }
                // The deduplication the procedure asks of the application.
                if !self.processed.insert(n) {
                    self.duplicates += 1;
                }
                false
            }
            ShardEventKind::Ready(_) => true,
            ShardEventKind::GaveUp { reason } => panic!("shard {} gave up: {reason}", event.shard),
            _ => false,
        }
    }
}

async fn next(fleet: &mut Fleet) -> ShardEvent {
    tokio::time::timeout(WAIT, fleet.next_event())
        .await
        .expect("an event in time")
        .expect("fleet alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_three_shards_while_messages_stream_loses_nothing_and_delivers_each_once() {
    let mock = MockServer::start(MockConfig {
        shards: OLD,
        tokens: vec![DEFAULT_TOKEN.to_owned(), NEW_COUNT_TOKEN.to_owned()],
        ..mock_config()
    })
    .await
    .expect("mock starts");
    // One coordinator for both fleets, as the procedure asks: the new fleet's identifies are
    // paced behind the old one's.
    let permits: Arc<dyn IdentifyCoordinator> = Arc::new(IdentifyGate::spawn(
        handover_protocol::IdentifyQueueConfig {
            bucket_window: Duration::from_millis(120),
            ..identify_queue()
        },
        None,
    ));
    let mut app = App::default();

    // 1. The old fleet runs and messages stream to it.
    let mut old =
        Fleet::start_with(fleet_config(&mock.url(), OLD), permits.clone()).expect("valid config");
    let mut ready = 0;
    for _ in 0..1_000 {
        if ready == OLD {
            break;
        }
        ready += u32::from(app.take(0, &next(&mut old).await));
    }
    assert_eq!(ready, OLD, "the old fleet is up");
    let phase = Arc::new(AtomicU8::new(PHASE_OLD));
    let sent = Arc::new(AtomicU64::new(0));
    let router = tokio::spawn(route(mock.handle(), phase.clone(), sent.clone()));
    for _ in 0..100_000 {
        if sent.load(Ordering::SeqCst) >= PER_PHASE {
            break;
        }
        app.take(0, &next(&mut old).await);
    }

    // 2. The new fleet starts beside it; both receive; the application reads both. The old
    //    fleet's connections lag from now on (every frame held 100 ms), as a far-away or busy
    //    connection does: stopping it at the new fleet's last READY would lose what it still
    //    had in flight, so the switch point must wait for it.
    assert_eq!(
        mock.handle()
            .inject(Target::Token(0), Fault::Delay(Duration::from_millis(100))),
        OLD as usize
    );
    phase.store(PHASE_BOTH, Ordering::SeqCst);
    let mut new =
        Fleet::start_with(fleet_config(&mock.url(), NEW), permits.clone()).expect("valid config");
    let mut new_ready = 0;
    // Set when the last new shard is READY: the first message number sent after it (the
    // router's clock, as a snowflake's timestamp is Discord's). Everything from it on reaches
    // the new fleet.
    let mut mark = None;
    for _ in 0..100_000 {
        // The switch point: every old shard has delivered a message sent after the mark, so
        // what it still has in flight reached the new fleet too.
        if let Some(mark) = mark
            && (0..OLD).all(|k| app.old_latest.get(&k).is_some_and(|&n| n >= mark))
        {
            break;
        }
        let (fleet, event) = tokio::time::timeout(WAIT, async {
            tokio::select! {
                Some(e) = old.next_event() => (0, e),
                Some(e) = new.next_event() => (1, e),
                else => panic!("both fleets ended"),
            }
        })
        .await
        .expect("an event in time");
        if app.take(fleet, &event) && fleet == 1 {
            new_ready += 1;
            if new_ready == NEW {
                mark = Some(sent.load(Ordering::SeqCst));
            }
        }
    }
    assert_eq!(new_ready, NEW, "every new shard is READY");
    let mark = mark.expect("set with the last READY");

    // 3. Stop the old fleet (EndSession: its sessions end) and take what it still holds; from
    //    now on the router sends to the new fleet only.
    old.stop_all(StopIntent::EndSession)
        .await
        .expect("the old fleet stops");
    phase.store(PHASE_NEW, Ordering::SeqCst);
    for _ in 0..100_000 {
        let Some(event) = old.try_next_event() else {
            break;
        };
        app.take(0, &event);
    }
    tokio::time::timeout(WAIT, old.shutdown(StopIntent::EndSession))
        .await
        .expect("the old fleet's sockets are gone in time");

    // 4. The new fleet alone, until the router has sent enough more and stops; then read until
    //    the new fleet delivered everything sent from the mark on.
    let new_from = sent.load(Ordering::SeqCst);
    for _ in 0..100_000 {
        if sent.load(Ordering::SeqCst) >= new_from + PER_PHASE {
            break;
        }
        app.take(1, &next(&mut new).await);
    }
    phase.store(PHASE_END, Ordering::SeqCst);
    let total = tokio::time::timeout(WAIT, router)
        .await
        .expect("the router stops in time")
        .expect("the router did not panic");
    assert!(total < MAX_MESSAGES, "the router ran out of its bound");
    for _ in 0..100_000 {
        if (mark..total).all(|n| app.by_fleet[1].contains(&n)) {
            break;
        }
        app.take(1, &next(&mut new).await);
    }

    // Nothing lost, each message processed once by the application.
    let expected: Vec<u64> = (0..total).collect();
    let processed: Vec<u64> = app.processed.iter().copied().collect();
    assert_eq!(processed, expected, "every message the router sent");
    // Before the new fleet was up only the old one had them; after the mark the new one has
    // every message; and the overlap is real: some messages came through both fleets, and
    // the application dropped their second copies.
    assert!((0..PER_PHASE).all(|n| app.by_fleet[0].contains(&n)));
    assert!((mark..total).all(|n| app.by_fleet[1].contains(&n)));
    let both = app.by_fleet[0].intersection(&app.by_fleet[1]).count() as u64;
    assert!(both > 0, "no message reached both fleets");
    assert!(app.duplicates >= both, "{} copies dropped", app.duplicates);

    // One identify per shard of each fleet, none refused inside a busy window.
    let counters = mock.handle().counters();
    for (token, total) in [(0, OLD), (1, NEW)] {
        for id in 0..total {
            let shard = counters.shard(ShardKey::new(token, id));
            assert_eq!(shard.identifies, 1, "token {token} shard {id}");
            assert_eq!(shard.invalid_sessions_sent, 0, "token {token} shard {id}");
        }
    }
    tokio::time::timeout(WAIT, new.shutdown(StopIntent::EndSession))
        .await
        .expect("shutdown in time");
}
