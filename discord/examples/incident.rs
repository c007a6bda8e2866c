//! Replays the incident handover exists for, against the embedded mock gateway on loopback:
//! a socket goes zombie (no heartbeat ACKs, close frames never answered) while a health monitor
//! in four tasks restarts the shard every few milliseconds.
//!
//! Needs no token and no network. Prints what the shard does as it happens, then a table, and
//! exits non-zero if an invariant broke (two sockets, an identify spent, an event lost or
//! delivered twice).
//!
//! ```sh
//! cargo run -p handover-discord --example incident
//! ```

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handover_core::{Backoff, Config, RestartReason, StopIntent};
use handover_discord::mock::{
    DEFAULT_TOKEN, Fault, MockConfig, MockServer, StreamRate, StreamSpec,
};
use handover_discord::protocol::{CLOSE_RULES, GatewayConfig, IdentifyQueueConfig, Intents, Token};
use handover_discord::runtime::{Shard, ShardConfig, ShardEventKind};

/// Dispatches the gateway streams during the incident.
const EVENTS: u64 = 400;
/// Restarts each monitor task asks for.
const RESTARTS_PER_MONITOR: u64 = 150;
/// Upper bound for the whole run.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    match tokio::time::timeout(LIMIT, run()).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the incident did not play out within {LIMIT:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let at = move || format!("{:>6} ms", start.elapsed().as_millis());

    // A gateway with Discord's behaviour and short timers.
    let mock = MockServer::start(MockConfig {
        heartbeat_interval: Duration::from_millis(250),
        identify_window: Duration::from_millis(200),
        seed: 1,
        ..MockConfig::default()
    })
    .await?;
    let gw = mock.handle();
    println!("{} mock gateway listening at {}", at(), mock.url());

    // One shard, with timers shrunk to match.
    let mut gateway = GatewayConfig::new(Token::new(DEFAULT_TOKEN)?, Intents::GUILD_MESSAGES);
    gateway.gateway_url = mock.url();
    let mut config = ShardConfig::new(gateway);
    config.lifecycle = Config {
        probe_grace: Duration::from_millis(100),
        drain_deadline: Duration::from_millis(200),
        backoff: Backoff {
            floor: Duration::from_millis(20),
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        },
        close_rules: CLOSE_RULES,
        ..Config::default()
    };
    config.identify = IdentifyQueueConfig {
        bucket_window: Duration::from_millis(250),
        ..IdentifyQueueConfig::default()
    };
    let mut shard = Shard::start(config)?;

    let mut delivered: Vec<u64> = Vec::new();
    let mut wait_ready = true;
    while wait_ready {
        let Some(ev) = shard.next_event().await else {
            return Err("the shard ended".into());
        };
        if let ShardEventKind::Ready(r) = &ev.kind {
            println!("{} shard 0 READY, session {}", at(), r.session_id);
            delivered.extend(r.seq);
            wait_ready = false;
        }
    }

    gw.stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data: serde_json::json!({ "content": "tick" }),
        count: EVENTS,
        rate: StreamRate::Every(Duration::from_millis(2)),
    });
    println!(
        "{} gateway streams {EVENTS} MESSAGE_CREATE, one every 2 ms",
        at()
    );
    while delivered.len() < 50 {
        if let Some(ev) = shard.next_event().await
            && let ShardEventKind::Dispatch(d) = ev.kind
        {
            delivered.push(d.seq);
        }
    }

    gw.inject(0, Fault::Zombie);
    let fault_at = Instant::now();
    println!(
        "{} FAULT: the socket goes zombie (no ACKs, nothing sent, close frames ignored)",
        at()
    );
    println!(
        "{} a health monitor restarts the shard from 4 tasks every 2-5 ms",
        at()
    );
    let restarts = Arc::new(AtomicU64::new(0));
    let monitors: Vec<_> = (0..4u64)
        .map(|i| {
            let h = shard.handle();
            let restarts = restarts.clone();
            tokio::spawn(async move {
                for _ in 0..RESTARTS_PER_MONITOR {
                    if h.restart(RestartReason::HealthMonitor).await.is_err() {
                        return;
                    }
                    restarts.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2 + i)).await;
                }
            })
        })
        .collect();

    let mut recovered: Option<Duration> = None;
    let mut last_state = String::new();
    let written = || -> BTreeSet<u64> {
        gw.counters()
            .shard(0)
            .sessions
            .values()
            .flat_map(|s| s.seqs())
            .collect()
    };
    let dispatch_count = |d: &[u64]| d.len() as u64;
    loop {
        let monitors_done = monitors.iter().all(|m| m.is_finished());
        if monitors_done
            && dispatch_count(&delivered) > EVENTS
            && written() == delivered.iter().copied().collect::<BTreeSet<_>>()
        {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(50), shard.next_event()).await;
        let Ok(Some(ev)) = next else { continue };
        match ev.kind {
            ShardEventKind::Dispatch(d) => delivered.push(d.seq),
            ShardEventKind::Ready(r) => {
                println!(
                    "{} shard 0 READY (a new session: an identify was spent)",
                    at()
                );
                delivered.extend(r.seq);
            }
            ShardEventKind::Resumed(r) => {
                if recovered.is_none() {
                    recovered = Some(fault_at.elapsed());
                }
                println!("{} shard 0 RESUMED, missed events replayed", at());
                delivered.extend(r.seq);
            }
            ShardEventKind::StateChanged { from, to } => {
                let line = format!("{} -> {}", from.name(), to.name());
                if line != last_state {
                    println!("{} shard 0 {line}", at());
                    last_state = line;
                }
            }
            ShardEventKind::SocketClosed { code: None } => {
                println!(
                    "{} shard 0 socket gone (aborted or dropped, no close frame)",
                    at()
                );
            }
            ShardEventKind::SocketClosed { code: Some(code) } => {
                println!(
                    "{} shard 0 socket gone (close handshake done, code {code})",
                    at()
                );
            }
            ShardEventKind::Reconnecting { mode, delay_ms } => {
                println!("{} shard 0 reconnect ({mode:?}) in {delay_ms} ms", at());
            }
            ShardEventKind::Gap(g) => println!("{} shard 0 GAP after seq {}", at(), g.last_seq),
            ShardEventKind::GaveUp { reason } => println!("{} shard 0 gave up: {reason}", at()),
            ShardEventKind::Warning { message } => println!("{} shard 0 warning: {message}", at()),
            _ => {}
        }
    }
    shard.stop(StopIntent::EndSession).await?;
    println!("{} shard stopped; socket confirmed gone", at());

    let counters = gw.counters();
    let s = counters.shard(0);
    let written = written();
    let got: BTreeSet<u64> = delivered.iter().copied().collect();
    let lost = written.difference(&got).count();
    let duplicated = delivered.len() - got.len();
    let status = shard.status();

    println!();
    println!("| measure                          | value |");
    println!("|----------------------------------|-------|");
    println!(
        "| restarts requested by the monitor| {:>5} |",
        restarts.load(Ordering::Relaxed)
    );
    println!(
        "| max live sockets for the shard   | {:>5} |",
        s.max_live_sockets
    );
    println!(
        "| max live sockets on the gateway  | {:>5} |",
        counters.max_live_sockets
    );
    println!("| identifies                       | {:>5} |", s.identifies);
    println!("| resumes accepted                 | {:>5} |", s.resumes_ok);
    println!(
        "| dispatches written (distinct seq)| {:>5} |",
        written.len()
    );
    println!(
        "| dispatches delivered             | {:>5} |",
        delivered.len()
    );
    println!("| lost                             | {:>5} |", lost);
    println!("| duplicated                       | {:>5} |", duplicated);
    println!(
        "| replays dropped as duplicates    | {:>5} |",
        status.duplicates_dropped
    );
    match recovered {
        Some(d) => println!(
            "| recovery (fault -> RESUMED)      | {:>5} ms |",
            d.as_millis()
        ),
        None => println!("| recovery (fault -> RESUMED)      | never |"),
    }

    let mut ok = true;
    let mut check = |cond: bool, what: &str| {
        if !cond {
            eprintln!("INVARIANT BROKEN: {what}");
            ok = false;
        }
    };
    check(
        s.max_live_sockets == 1,
        "two sockets were live for one shard",
    );
    check(
        counters.max_live_sockets == 1,
        "two sockets were open at once",
    );
    check(s.identifies == 1, "a restart spent an identify");
    check(
        s.resumes_ok >= 1 && recovered.is_some(),
        "recovery was not a resume",
    );
    check(lost == 0, "events were lost");
    check(duplicated == 0, "events were delivered twice");
    if ok {
        println!("\nall invariants held");
    }
    Ok(ok)
}
