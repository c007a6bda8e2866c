//! Resident memory per idle connected shard of one bot in one process: handover's `Fleet`
//! beside twilight-gateway 0.18 and @discordjs/ws 2.0.4, in one run.
//!
//! `cargo bench -p handover-runtime --bench idle_shards [-- OPTIONS]`
//!
//! The parent runs the mock gateway (`MockServer`, 127.0.0.1 only) on a one-worker tokio
//! runtime, a fresh one per run, advertising `max_concurrency` equal to the shard count (so no
//! client's identify queue spaces the shards 5 s apart). For each client and compression it
//! starts a child process twice, with 0 shards and with N, waits until the child reports every
//! shard READY, lets it idle (heartbeats keep running), then reads the child's `VmRSS` from
//! `/proc/PID/status`. The figure per shard is `(RSS(N) - RSS(0)) / N`.
//!
//! Clients (each a child process; the Rust ones on a current-thread tokio runtime):
//!
//! - `fleet`: `handover_runtime::Fleet` of N shards, its merged event stream read and dropped.
//! - `twilight`: N twilight-gateway 0.18 `Shard`s sharing one `InMemoryQueue` (concurrency N),
//!   one task each reading its shard's messages. twilight chooses its compression at build
//!   time, so the plain row is this crate's dev-dependency (no compression feature) and the
//!   zlib-stream and zstd-stream rows are `idle_twilight/`, a project of its own (own
//!   workspace and Cargo.lock, so its features never reach this crate's build) that the
//!   benchmark builds once per compression with `cargo build --release --locked --features
//!   zlib|zstd` into `TARGET/idle_twilight/FEATURE` before the rows. Those rows are skipped
//!   with a note when that build fails (offline without the crates in cargo's cache, say) and
//!   without `--bench`.
//! - `discordjs`: `node idle_node/idle.js` (@discordjs/ws 2.0.4 `WebSocketManager`, its
//!   default `SimpleShardingStrategy`: every shard in the node process). Plain, and
//!   zlib-stream through its `compression: CompressionMethod.ZlibNative` (node:zlib); 2.0.4
//!   has no zstd-stream. Skipped with a note when `idle_node/node_modules` is absent (`npm ci`
//!   in that folder) or `node` is not on the PATH.
//!
//! Options: `--shards N` (default 1000), `--idle-secs S` (default 30), `--only CLIENT`,
//! `--only-compression plain|zlib-stream|zstd-stream`, `--heap-profile` (the fleet child only:
//! a dhat heap profile of the live blocks per allocation site at the end of the idle time,
//! written to `dhat-idle-fleet-COMPRESSION.json` in the working directory, and the live heap
//! bytes per shard printed).
//!
//! Without `--bench` (as under `cargo test --benches`) it runs 4 shards for 1 s: it proves the
//! harness works and measures nothing worth keeping. Every wait is bounded.

#[path = "compressions/mod.rs"]
mod compressions;
#[path = "process/mod.rs"]
mod process;
#[path = "idle_twilight/src/client.rs"]
mod twilight_idle;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_protocol::{Compression, GatewayConfig, Intents, SessionStartLimit, Token};
use handover_runtime::{Fleet, FleetConfig, ShardEventKind, ShardSelection};

use compressions::{COMPRESSIONS, compression_name, only_compression, parse_compression};
use process::{reap, status_kib_of, wait_line};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Longest wait for the first shard to connect, plus this per shard, for all to be READY.
const READY_BASE: Duration = Duration::from_secs(20);
const READY_PER_SHARD: Duration = Duration::from_millis(50);
/// A child ends by itself this long after its idle time, should the parent not kill it.
const CHILD_MARGIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Fleet,
    Twilight,
    DiscordJs,
}

impl Client {
    const ALL: [Client; 3] = [Client::Fleet, Client::Twilight, Client::DiscordJs];

    fn name(self) -> &'static str {
        match self {
            Client::Fleet => "fleet",
            Client::Twilight => "twilight",
            Client::DiscordJs => "discordjs",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Client::Fleet => "handover Fleet",
            Client::Twilight => "twilight-gateway 0.18",
            Client::DiscordJs => "@discordjs/ws 2.0.4",
        }
    }

    /// Why this client has no row for `compression`, if it has none.
    fn missing(self, compression: Compression) -> Option<&'static str> {
        match (self, compression) {
            (_, Compression::None) | (Client::Fleet, _) => None,
            (Client::Twilight, _) => None,
            (Client::DiscordJs, Compression::ZstdStream) => Some("2.0.4 has no zstd-stream"),
            (Client::DiscordJs, _) => None,
        }
    }

    fn parse(s: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|c| c.name() == s)
    }
}

struct Plan {
    shards: u32,
    idle: Duration,
    only_client: Option<Client>,
    only_compression: Option<Compression>,
    heap_profile: bool,
    /// Build and run the compressed twilight peer (`idle_twilight/`): with `--bench` only.
    full: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        std::process::exit(child(&args[1..]));
    }
    let text = |name: &str| process::flag(&args, name);
    let full = args.iter().any(|a| a == "--bench");
    let plan = Plan {
        shards: text("--shards")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if full { 1000 } else { 4 })
            .clamp(1, 10_000),
        idle: Duration::from_secs(
            text("--idle-secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if full { 30 } else { 1 })
                .min(3600),
        ),
        only_client: text("--only").map(|name| {
            Client::parse(name).unwrap_or_else(|| {
                let names: Vec<&str> = Client::ALL.into_iter().map(Client::name).collect();
                eprintln!("--only: unknown client {name:?} ({})", names.join(", "));
                std::process::exit(2)
            })
        }),
        only_compression: only_compression(text("--only-compression")),
        heap_profile: args.iter().any(|a| a == "--heap-profile"),
        full,
    };
    if !parent(&plan) {
        std::process::exit(1);
    }
}

// ---- parent: the mock and the table ----------------------------------------------------------

fn mock_config(shards: u32) -> MockConfig {
    MockConfig {
        shards: shards.max(1),
        session_start: SessionStartLimit {
            total: 1_000_000,
            remaining: 1_000_000,
            max_concurrency: shards.max(1),
            ..SessionStartLimit::default()
        },
        seed: 1,
        ..MockConfig::default()
    }
}

/// The folder of the node peer, `runtime/benches/idle_node`.
fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/idle_node")
}

/// The folder of the compressed twilight peer, `runtime/benches/idle_twilight`.
fn twilight_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/idle_twilight")
}

/// Builds the twilight peer for `compression` (its own project, so twilight's compression
/// feature stays out of this crate's build) and returns its binary, or why it cannot run.
fn build_twilight_peer(exe: &Path, compression: Compression) -> Result<PathBuf, String> {
    let feature = match compression {
        Compression::ZlibStream => "zlib",
        Compression::ZstdStream => "zstd",
        _ => return Err("the plain twilight row is this crate's own".to_owned()),
    };
    // `exe` is TARGET/release/deps/idle_shards-HASH: the peer builds beside it in TARGET, one
    // target folder per feature (each build's binary has the same name).
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("no target folder above the bench binary")?
        .join("idle_twilight")
        .join(feature);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--features",
            feature,
        ])
        .arg("--manifest-path")
        .arg(twilight_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("cannot build idle_twilight: {}", last.trim()));
    }
    Ok(target.join("release").join("idle-twilight"))
}

/// Why the node peer cannot run here, if it cannot.
fn node_missing() -> Option<String> {
    if !node_dir().join("node_modules/@discordjs/ws").is_dir() {
        return Some(format!(
            "{} has no node_modules: run `npm ci` there",
            node_dir().display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("no `node` on the PATH".to_owned()),
    }
}

fn parent(plan: &Plan) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("mock runtime");
    let exe = std::env::current_exe().expect("current exe");
    let node = node_missing();
    println!(
        "idle_shards: {} shards of one bot per process, {} s idle after the last READY",
        plan.shards,
        plan.idle.as_secs()
    );
    if let Some(why) = &node {
        println!("note: @discordjs/ws skipped: {why}");
    }
    println!(
        "| client | compression | RSS, 0 shards | RSS, {} shards | per shard | all READY after |",
        plan.shards
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut ok = true;
    for compression in COMPRESSIONS {
        if plan.only_compression.is_some_and(|c| c != compression) {
            continue;
        }
        let wants_peer = compression != Compression::None
            && plan.only_client.is_none_or(|c| c == Client::Twilight);
        let twilight_peer = if !wants_peer {
            None
        } else if plan.full {
            Some(build_twilight_peer(&exe, compression))
        } else {
            Some(Err("built and run with --bench only".to_owned()))
        };
        for client in Client::ALL {
            if plan.only_client.is_some_and(|c| c != client) {
                continue;
            }
            let cname = compression_name(compression);
            if let Some(why) = client.missing(compression) {
                println!(
                    "| {} | {cname} | — | — | — ({why}) | — |",
                    client.describe()
                );
                continue;
            }
            let peer = match (client, &twilight_peer) {
                (Client::Twilight, Some(Ok(path))) => Some(path.as_path()),
                (Client::Twilight, Some(Err(why))) => {
                    println!(
                        "| {} | {cname} | — | — | — (skipped: {why}) | — |",
                        client.describe()
                    );
                    continue;
                }
                _ => None,
            };
            if client == Client::DiscordJs && node.is_some() {
                println!(
                    "| {} | {cname} | — | — | — (skipped) | — |",
                    client.describe()
                );
                continue;
            }
            let runs =
                [0, plan.shards].map(|n| run_once(&rt, &exe, peer, client, compression, n, plan));
            match runs {
                [Ok((rss0, _)), Ok((rss, ready))] => {
                    let per = rss.saturating_sub(rss0) as f64 / f64::from(plan.shards);
                    println!(
                        "| {} | {cname} | {rss0} KiB | {rss} KiB | {per:.1} KiB | {:.1} s |",
                        client.describe(),
                        ready.as_secs_f64()
                    );
                }
                [a, b] => {
                    let e = a.err().or(b.err()).unwrap_or_default();
                    println!("| {} | {cname} | failed: {e} | | | |", client.describe());
                    ok = false;
                }
            }
        }
    }
    ok
}

/// One child with `n` shards against a fresh mock: its RSS (KiB) after the idle time, and how
/// long until all its shards were READY.
#[allow(clippy::too_many_arguments)] // one call site, every argument a different thing
fn run_once(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    peer: Option<&Path>,
    client: Client,
    compression: Compression,
    n: u32,
    plan: &Plan,
) -> Result<(u64, Duration), String> {
    let mock = rt
        .block_on(MockServer::start(mock_config(n)))
        .map_err(|e| format!("mock: {e}"))?;
    let cname = compression_name(compression);
    let life = (plan.idle + CHILD_MARGIN).as_secs().to_string();
    let (n_arg, url) = (n.to_string(), mock.url());
    let mut command = match (client, peer) {
        (_, Some(peer)) => {
            let mut c = Command::new(peer);
            c.args([&n_arg, &url, &life])
                .env("IDLE_TWILIGHT_TOKEN", DEFAULT_TOKEN);
            c
        }
        (Client::DiscordJs, None) => {
            let mut c = Command::new("node");
            c.arg(node_dir().join("idle.js"))
                .args([&url, &n_arg, cname, &life])
                .current_dir(node_dir());
            c
        }
        _ => {
            let mut c = Command::new(exe);
            c.args(["--child", client.name(), cname, &n_arg, &url, &life]);
            if plan.heap_profile && n > 0 {
                c.arg("--heap-profile");
            }
            c
        }
    };
    let mut child = command
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let (rx, reader) = process::lines(&mut child);
    let started = Instant::now();
    let outcome = (|| {
        wait_line(&rx, "ready", READY_BASE + READY_PER_SHARD * n)?;
        let ready = started.elapsed();
        std::thread::sleep(plan.idle);
        let rss = status_kib_of(child.id(), "VmRSS:");
        if plan.heap_profile && client == Client::Fleet && n > 0 {
            // The child writes its profile after the same idle time, then says so.
            let line = wait_line(&rx, "heap ", Duration::from_secs(60))?;
            println!("{} {cname}: {line}", client.name());
        }
        if rss == 0 {
            return Err("child gone before the measurement".to_owned());
        }
        Ok((rss, ready))
    })();
    reap(&mut child, false);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), mock.shutdown()).await;
    });
    outcome
}

// ---- child: one client -----------------------------------------------------------------------

fn child(args: &[String]) -> i32 {
    let (Some(client), Some(compression), Some(n), Some(url), Some(life)) = (
        args.first().and_then(|s| Client::parse(s)),
        args.get(1).and_then(|s| parse_compression(s)),
        args.get(2).and_then(|s| s.parse::<u32>().ok()),
        args.get(3),
        args.get(4).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: --child fleet|twilight COMPRESSION SHARDS URL LIFE_SECS");
        return 2;
    };
    let heap_profile = args.iter().any(|a| a == "--heap-profile");
    let life = Duration::from_secs(life);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let result = rt.block_on(async {
        if n == 0 {
            // The baseline: the same process, runtime and libraries, no shard.
            println!("ready");
            tokio::time::sleep(life).await;
            return Ok(());
        }
        match client {
            Client::Fleet => fleet_client(compression, n, url, life, heap_profile).await,
            Client::Twilight if compression != Compression::None => {
                Err("compressed twilight runs as idle_twilight/".to_owned())
            }
            Client::Twilight => twilight_client(n, url, life).await,
            Client::DiscordJs => Err("the node peer runs as `node idle_node/idle.js`".to_owned()),
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{} {}: {e}", client.name(), compression_name(compression));
            1
        }
    }
}

/// A `Fleet` of `n` shards; its events are read and dropped for `life`.
async fn fleet_client(
    compression: Compression,
    n: u32,
    url: &str,
    life: Duration,
    heap_profile: bool,
) -> Result<(), String> {
    // Every block allocated from here on is tracked, so the live ones at the end of the idle
    // time are what the fleet holds (the profiler's own tables are not in its figures).
    let profiler = heap_profile.then(|| {
        dhat::Profiler::builder()
            .file_name(format!(
                "dhat-idle-fleet-{}.json",
                compression_name(compression)
            ))
            .build()
    });
    let token = Token::new(DEFAULT_TOKEN).map_err(|e| e.to_string())?;
    let mut gateway = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    gateway.gateway_url = url.to_owned();
    gateway.compression = compression;
    let mut config = FleetConfig::new(gateway, ShardSelection::All { total: n });
    config.identify.max_concurrency = n;
    config.session_start_limit = Some(mock_config(n).session_start);
    let mut fleet = Fleet::start(config).map_err(|e| e.to_string())?;
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + READY_BASE + READY_PER_SHARD * n;
    while ready < n {
        match tokio::time::timeout_at(deadline, fleet.next_event()).await {
            Ok(Some(ev)) => match ev.kind {
                ShardEventKind::Ready(_) => ready += 1,
                ShardEventKind::GaveUp { reason } => {
                    return Err(format!("shard {} gave up: {reason}", ev.shard));
                }
                _ => {}
            },
            Ok(None) => return Err("fleet ended during the handshakes".to_owned()),
            Err(_) => return Err(format!("{ready} of {n} shards READY in time")),
        }
    }
    println!("ready");
    if let Some(profiler) = profiler {
        // The same idle time as the parent's (the child lives that plus its margin).
        drain(&mut fleet, life.saturating_sub(CHILD_MARGIN)).await;
        let stats = dhat::HeapStats::get();
        // Written on drop: before the line the parent waits for (it kills the child then).
        drop(profiler);
        println!(
            "heap live={} B in {} blocks, {:.1} B per shard",
            stats.curr_bytes,
            stats.curr_blocks,
            stats.curr_bytes as f64 / f64::from(n)
        );
    }
    drain(&mut fleet, life).await;
    Ok(())
}

/// Reads the fleet's events and drops them, for `within` at most.
async fn drain(fleet: &mut Fleet, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while let Some(ev) = fleet.next_event().await {
            drop(ev);
        }
    })
    .await;
}

/// `n` twilight-gateway shards sharing one in-memory identify queue, one task each.
async fn twilight_client(n: u32, url: &str, life: Duration) -> Result<(), String> {
    twilight_idle::run(
        n,
        url,
        DEFAULT_TOKEN.to_owned(),
        life,
        READY_BASE + READY_PER_SHARD * n,
    )
    .await
}
