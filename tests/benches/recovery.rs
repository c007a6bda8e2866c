//! Recovery benchmark: how long from a gateway fault to the next READY or RESUMED, as the mock
//! gateway saw it, in real time over real loopback sockets.
//!
//! Run with `cargo bench -p handover-tests --bench recovery` (`RECOVERY_REPS=<n>` for more
//! repetitions than the default 5). Every sample gets a fresh mock gateway (announcing a 1 s
//! heartbeat, other settings at their defaults) and a fresh client, which identifies and runs
//! healthy for 1.5 s before the fault, so samples are independent (a client's backoff state does
//! not carry from one to the next; the core's scenario tests cover back-to-back faults). Every
//! fault is sampled `RECOVERY_REPS` times, round robin over the faults, and the median and the
//! worst are printed as a table:
//!
//! - `handover`: a `Shard` with `ShardConfig::new` defaults (only the URL points at the mock);
//! - `floor`: a bare tokio-tungstenite client that reconnects the moment anything goes wrong
//!   (EOF, a close frame, op 7, op 9, a heartbeat without an ACK by the next beat), never sends
//!   a close frame, resumes when it can and identifies otherwise, as soon as the mock's identify
//!   window (5 s since its previous IDENTIFY) allows (it ignores the 1-5 s wait Discord asks for
//!   after op 9 `d: false`, so that row is the protocol's floor, not a compliant client).
//!
//! When a fault starts: for a dropped TCP connection, op 7 and op 9, at the injection; for the
//! two zombies, when the mock receives the first heartbeat it will not acknowledge (the fault
//! is armed, then the clock starts at the next heartbeat the mock counts). It ends when the
//! mock's counters show one more READY or RESUMED for the shard. Every wait is bounded (30 s per
//! sample, 20 minutes in all); a sample that times out prints as a timeout.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handover_mock::{DEFAULT_TOKEN, Fault, MockConfig, MockHandle, MockServer};
use handover_protocol::{GatewayConfig, Intents, Token};
use handover_runtime::{Shard, ShardConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Heartbeat interval the mock announces.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Upper bound of one sample.
const SAMPLE_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound of the whole run.
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Healthy time between a recovery and the next fault (heartbeats acknowledged meanwhile).
const SETTLE: Duration = Duration::from_millis(1_500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    DropTcp,
    ZombieAnswersClose,
    ZombieSilent,
    ReconnectCloseIgnored,
    InvalidResumableCloseIgnored,
    InvalidNotResumableCloseIgnored,
}

const CASES: [Case; 6] = [
    Case::DropTcp,
    Case::ZombieAnswersClose,
    Case::ZombieSilent,
    Case::ReconnectCloseIgnored,
    Case::InvalidResumableCloseIgnored,
    Case::InvalidNotResumableCloseIgnored,
];

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::DropTcp => "TCP dropped, no close frame",
            Case::ZombieAnswersClose => "zombie (ACKs stop, server answers a close)",
            Case::ZombieSilent => "zombie that never answers the close",
            Case::ReconnectCloseIgnored => "op 7, close never answered",
            Case::InvalidResumableCloseIgnored => "op 9 d=true, close never answered",
            Case::InvalidNotResumableCloseIgnored => "op 9 d=false, close never answered",
        }
    }
}

/// READY plus RESUMED the mock sent for shard 0.
fn handshakes(h: &MockHandle) -> u64 {
    let c = h.counters().shard(0);
    c.sessions_started + c.resumes_ok
}

/// Injects `case` into shard 0 and returns the fault -> READY/RESUMED time, `None` on timeout.
async fn sample(h: &MockHandle, case: Case) -> Option<Duration> {
    let before = handshakes(h);
    let start = match case {
        Case::DropTcp => {
            let t = Instant::now();
            h.inject(0, Fault::DropTcp);
            t
        }
        Case::ZombieAnswersClose | Case::ZombieSilent => {
            let beats = h.counters().shard(0).heartbeats_received;
            h.inject(
                0,
                if case == Case::ZombieSilent {
                    Fault::Zombie
                } else {
                    Fault::StopAcks
                },
            );
            h.wait_for(SAMPLE_LIMIT, |c| c.shard(0).heartbeats_received > beats)
                .await
                .ok()?;
            Instant::now()
        }
        Case::ReconnectCloseIgnored
        | Case::InvalidResumableCloseIgnored
        | Case::InvalidNotResumableCloseIgnored => {
            h.inject(0, Fault::IgnoreCloseFrames);
            let fault = match case {
                Case::ReconnectCloseIgnored => Fault::Reconnect,
                Case::InvalidResumableCloseIgnored => Fault::InvalidSession { resumable: true },
                _ => Fault::InvalidSession { resumable: false },
            };
            let t = Instant::now();
            h.inject(0, fault);
            t
        }
    };
    h.wait_for(SAMPLE_LIMIT, |c| {
        c.shard(0).sessions_started + c.shard(0).resumes_ok > before
    })
    .await
    .ok()?;
    Some(start.elapsed())
}

fn mock_config() -> MockConfig {
    MockConfig {
        heartbeat_interval: HEARTBEAT,
        seed: 11,
        ..MockConfig::default()
    }
}

/// Starts the client under test against `url`; the returned guard stops it when dropped.
type Guard = Box<dyn FnOnce()>;

fn start_handover(url: &str) -> Guard {
    let token = Token::new(DEFAULT_TOKEN).expect("the mock's token is well formed");
    let mut gateway = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    gateway.gateway_url = url.to_owned();
    let mut shard = Shard::start(ShardConfig::new(gateway)).expect("a valid configuration");
    // The application reads every event, so the driver never has to pause reading.
    let task = tokio::spawn(async move { while shard.next_event().await.is_some() {} });
    Box::new(move || task.abort())
}

/// The mock's identify window: one IDENTIFY per 5 s.
const IDENTIFY_SPACING: Duration = Duration::from_secs(5);

fn start_floor(url: &str) -> Guard {
    let url = url.to_owned();
    let task = tokio::spawn(async move {
        let mut session: Option<(String, u64)> = None;
        let mut last_identify: Option<tokio::time::Instant> = None;
        // Bounded: a sample never needs more connections than this.
        for _ in 0..1_000 {
            floor_connection(&url, &mut session, &mut last_identify).await;
        }
    });
    Box::new(move || task.abort())
}

/// One connection of the floor client: returns the moment it decides to reconnect.
async fn floor_connection(
    url: &str,
    session: &mut Option<(String, u64)>,
    last_identify: &mut Option<tokio::time::Instant>,
) {
    let addr = url.trim_start_matches("ws://").to_owned();
    let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let request = format!("{url}/?v=10&encoding=json");
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(request, tcp).await else {
        return;
    };
    let mut beat: Option<tokio::time::Interval> = None;
    let mut acked = true;
    loop {
        let tick = async {
            match beat.as_mut() {
                Some(b) => {
                    b.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(text) = msg else {
                    // A close frame or anything unexpected: reconnect at once.
                    if msg.is_close() { return; }
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { return };
                if let Some(s) = v.get("s").and_then(Value::as_u64)
                    && let Some((_, seq)) = session.as_mut()
                {
                    *seq = s;
                }
                match v.get("op").and_then(Value::as_u64) {
                    Some(10) => {
                        let ms = v["d"]["heartbeat_interval"].as_u64().unwrap_or(1_000);
                        let period = Duration::from_millis(ms);
                        let first = tokio::time::Instant::now()
                            + period.mul_f64(fastrand::f64());
                        beat = Some(tokio::time::interval_at(first, period));
                        if session.is_none()
                            && let Some(at) = *last_identify
                        {
                            tokio::time::sleep_until(at + IDENTIFY_SPACING).await;
                        }
                        let hello = match session.as_ref() {
                            Some((id, seq)) => json!({"op": 6, "d": {
                                "token": DEFAULT_TOKEN, "session_id": id, "seq": seq }}),
                            None => json!({"op": 2, "d": {
                                "token": DEFAULT_TOKEN,
                                "intents": (Intents::GUILDS | Intents::GUILD_MESSAGES).bits(),
                                "properties": {"os": "linux", "browser": "floor", "device": "floor"},
                                "shard": [0, 1] }}),
                        };
                        if session.is_none() {
                            *last_identify = Some(tokio::time::Instant::now());
                        }
                        if ws.send(Message::text(hello.to_string())).await.is_err() {
                            return;
                        }
                    }
                    Some(0) if v["t"] == "READY" => {
                        let id = v["d"]["session_id"].as_str().unwrap_or_default().to_owned();
                        let seq = v.get("s").and_then(Value::as_u64).unwrap_or(0);
                        *session = Some((id, seq));
                    }
                    Some(1) => {
                        let seq = session.as_ref().map(|s| s.1);
                        let hb = json!({"op": 1, "d": seq});
                        if ws.send(Message::text(hb.to_string())).await.is_err() {
                            return;
                        }
                    }
                    Some(11) => acked = true,
                    // Op 7: reconnect and resume at once.
                    Some(7) => return,
                    Some(9) => {
                        if v["d"] != Value::Bool(true) {
                            *session = None;
                        }
                        return;
                    }
                    _ => {}
                }
            }
            () = tick => {
                if !acked {
                    // No ACK since the previous beat: the connection is dead.
                    return;
                }
                acked = false;
                let seq = session.as_ref().map(|s| s.1);
                let hb = json!({"op": 1, "d": seq});
                if ws.send(Message::text(hb.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn fmt(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(10) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{} ms", d.as_millis()),
        None => "timeout".to_owned(),
    }
}

/// Median and worst; a timeout counts as the worst.
fn summary(samples: &[Option<Duration>]) -> (Option<Duration>, Option<Duration>) {
    let mut ok: Vec<Duration> = samples.iter().flatten().copied().collect();
    ok.sort();
    let worst = if ok.len() == samples.len() {
        ok.last().copied()
    } else {
        None
    };
    (ok.get(ok.len() / 2).copied(), worst)
}

/// One sample on a fresh mock and a fresh client.
async fn fresh_sample(start: fn(&str) -> Guard, case: Case) -> Option<Duration> {
    let mock = MockServer::start(mock_config()).await.expect("mock starts");
    let h = mock.handle();
    let stop = start(&mock.url());
    h.wait_for(SAMPLE_LIMIT, |c| c.shard(0).sessions_started >= 1)
        .await
        .expect("the client identifies");
    tokio::time::sleep(SETTLE).await;
    let s = sample(&h, case).await;
    stop();
    mock.shutdown().await;
    s
}

async fn run_client(
    name: &str,
    start: fn(&str) -> Guard,
    reps: usize,
) -> Vec<(Case, Vec<Option<Duration>>)> {
    let mut results: Vec<(Case, Vec<Option<Duration>>)> =
        CASES.iter().map(|c| (*c, Vec::new())).collect();
    for rep in 0..reps {
        for (case, samples) in results.iter_mut() {
            let s = fresh_sample(start, *case).await;
            eprintln!("{name} rep {rep}: {} -> {}", case.label(), fmt(s));
            samples.push(s);
        }
    }
    results
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let reps: usize = std::env::var("RECOVERY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let run = async {
        let handover = run_client("handover", start_handover, reps).await;
        let floor = run_client("floor", start_floor, reps).await;
        (handover, floor)
    };
    let Ok((handover, floor)) = rt.block_on(async { tokio::time::timeout(RUN_LIMIT, run).await })
    else {
        eprintln!("recovery benchmark exceeded {RUN_LIMIT:?}");
        std::process::exit(1);
    };
    println!(
        "\nfault -> READY/RESUMED as the mock saw it, heartbeat {} ms, {reps} repetitions, {:.0} s",
        HEARTBEAT.as_millis(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| fault | handover median | handover worst | floor median | floor worst |\n|---|---:|---:|---:|---:|"
    );
    for ((case, h), (_, f)) in handover.iter().zip(&floor) {
        let (hm, hw) = summary(h);
        let (fm, fw) = summary(f);
        println!(
            "| {} | {} | {} | {} | {} |",
            case.label(),
            fmt(hm),
            fmt(hw),
            fmt(fm),
            fmt(fw)
        );
    }
}
