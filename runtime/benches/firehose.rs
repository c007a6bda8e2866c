//! Dispatch throughput end to end: the mock gateway streams MESSAGE_CREATE as fast as a client
//! reads, and three clients read it.
//!
//! `cargo bench -p handover-runtime --bench firehose [-- OPTIONS]`
//!
//! Clients (each in a child process of this binary, so its CPU time and memory are its own):
//!
//! - `raw`: tokio-tungstenite `connect_async`, IDENTIFY written by hand, then frames are only
//!   counted. On compressed connections it inflates each frame with flate2 or zstd driven
//!   directly into a reused buffer (any real client must decompress), and parses nothing.
//! - `naive`: the same, plus `serde_json::from_slice::<Value>` of every payload (what a client
//!   that parses the whole event does).
//! - `shard`: `handover_runtime::Shard`, reading `next_event()`; the dispatch data is
//!   kept raw (the envelope is parsed, `d` is not).
//! - `twilight-raw`, `twilight-typed` (plain JSON only: built without compression): a peer,
//!   twilight-gateway 0.18's `Shard`, reading raw messages (`Stream::next`) or typed events
//!   (`next_event(EventTypeFlags::MESSAGE_CREATE)`, deserialized into twilight-model).
//! - `run`: the `handover run` binary of the same build (`target/release/handover`, or
//!   `HANDOVER_BIN`; skipped when absent) with its NDJSON stdout into a pipe that this child
//!   reads and discards; the CPU time and memory reported are the binary's own.
//!
//! The runs of a row are made in rounds: each round runs every selected client once, in the
//! order of the table, so a slow phase of the (shared, virtual) machine falls on all rows of
//! that round alike. Each row shows its median CPU per event and its ratio to the `raw` row:
//! the median over the rounds of the round's own ratio (the row's run divided by the raw run
//! just before it), which varies much less between invocations than a ratio of two medians.
//!
//! The parent runs the mock gateway (`MockServer`, 127.0.0.1 only) on a one-worker tokio
//! runtime, a fresh one per run. Once the child reports READY, the parent starts 64 streams of
//! distinct ~1 KiB MESSAGE_CREATE payloads at `StreamRate::AsFastAsRead` with `stream_batch` 1,
//! so the payloads rotate (a compressor sees a new one in each message). The child times from
//! the first dispatch to the last, and reports its CPU time (`/proc/self/stat`, 10 ms ticks) and
//! its peak resident memory over the run (`VmHWM` after resetting it, minus `VmRSS` at READY).
//! The parent reports its own CPU time over the run: the mock's cost, the same work in every
//! row. Each child runs a current-thread tokio runtime.
//!
//! Options: `--plain N`, `--compressed N` (dispatches per run), `--reps N` (rounds: runs per row),
//! `--distinct N` (payloads in rotation; 1 = one payload in batches of 32), `--only CLIENT[,CLIENT...]`,
//! `--only-compression plain|zlib-stream|zstd-stream`, `--read-buffer BYTES` (socket read
//! buffer of every client), `--hold N` (the raw clients keep their last N messages alive).
//!
//! `FIREHOSE_CHILD_WRAP="COMMAND ARGS..."` runs each child under that command (split at
//! whitespace, the child's own command line appended): `perf stat -x, -o FILE -e ...` to count
//! a whole child's system calls and page faults, `valgrind --tool=callgrind` to count its
//! instructions, `env LD_PRELOAD=...` for an allocation trace.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a small smoke workload only.
//! Every run is bounded: fixed counts, and a time cap after which the child is killed.

#[path = "../../protocol/benches/common/mod.rs"]
mod common;
#[path = "compressions/mod.rs"]
mod compressions;
#[path = "process/mod.rs"]
mod process;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer, ShardKey, StreamRate, StreamSpec};
use handover_protocol::{Compression, GatewayConfig, Intents, Token};
use handover_runtime::{Shard, ShardConfig, ShardEventKind};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use compressions::{COMPRESSIONS, compression_name, only_compression, parse_compression};
use process::{cpu_secs, cpu_secs_of, reap, status_kib, status_kib_of, wait_line};

/// The event every stream sends.
const EVENT: &str = "MESSAGE_CREATE";
/// Longest wait for a child to connect and see READY.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(15);
/// Distinct MESSAGE_CREATE payloads in rotation by default: 64 of about 1.1 KiB span more than
/// zlib's 32 KiB window, so zlib-stream cannot just point back at the previous copy.
const DISTINCT: u64 = 64;
/// Extra time the parent gives a child past its own cap before killing it.
const KILL_MARGIN: Duration = Duration::from_secs(10);
/// The IDENTIFY the raw clients send (the mock's test token, not a secret).
const IDENTIFY: &str = r#"{"op":2,"d":{"token":"mock-token","intents":513,"properties":{"os":"linux","browser":"firehose","device":"firehose"}}}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Raw,
    Naive,
    Shard,
    TwilightRaw,
    TwilightTyped,
    Run,
}

impl Client {
    const ALL: [Client; 6] = [
        Client::Raw,
        Client::Naive,
        Client::Shard,
        Client::TwilightRaw,
        Client::TwilightTyped,
        Client::Run,
    ];

    fn name(self) -> &'static str {
        match self {
            Client::Raw => "raw",
            Client::Naive => "naive",
            Client::Shard => "shard",
            Client::TwilightRaw => "twilight-raw",
            Client::TwilightTyped => "twilight-typed",
            Client::Run => "run",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Client::Raw => "raw tokio-tungstenite, frames counted",
            Client::Naive => "raw + serde_json Value per payload",
            Client::Shard => "handover Shard, next_event()",
            Client::TwilightRaw => {
                "twilight-gateway 0.18 Shard, raw messages (futures Stream::next), plain only"
            }
            Client::TwilightTyped => {
                "twilight-gateway 0.18 Shard, next_event(MESSAGE_CREATE) typed, plain only"
            }
            Client::Run => {
                "the `handover run` binary, NDJSON to a pipe read and discarded (its process's CPU)"
            }
        }
    }

    /// Whether this client runs on `compression` (twilight is built without compression, so
    /// its rows are plain JSON only).
    fn supports(self, compression: Compression) -> bool {
        !matches!(self, Client::TwilightRaw | Client::TwilightTyped)
            || compression == Compression::None
    }

    fn parse(s: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    events: u64,
    json_bytes: u64,
    wire_bytes: u64,
    secs: f64,
    client_cpu: f64,
    mock_cpu: f64,
    rss_start_kib: u64,
    hwm_kib: u64,
    complete: bool,
}

impl Run {
    /// Client CPU time per event, in µs.
    fn cpu_us(&self) -> f64 {
        self.client_cpu / self.events.max(1) as f64 * 1e6
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.events.saturating_sub(1) as f64 / self.secs
        } else {
            0.0
        }
    }
}

struct Plan {
    plain: u64,
    compressed: u64,
    reps: usize,
    cap: Duration,
    /// Distinct payloads in rotation (one mock stream each).
    distinct: u64,
    /// A smoke run (no `--bench`): the numbers mean nothing.
    smoke: bool,
    /// Only these clients, if any (`--only`, comma-separated).
    only_clients: Vec<Client>,
    /// Only this compression, if set (`--only-compression`).
    only_compression: Option<Compression>,
    /// Socket read buffer for every client, in bytes (`--read-buffer`); 0 keeps each client's
    /// default (tungstenite's 128 KiB for the raw clients, the driver's 4 KiB for the shard).
    read_buffer: u64,
    /// The raw clients keep the last this many messages alive (`--hold`), as an application
    /// does whose queued events share the receive buffer. Default 0: each is dropped at once.
    hold: u64,
}

impl Plan {
    /// `n` rounded up to whole rounds of the distinct payloads.
    fn count(&self, n: u64) -> u64 {
        n.div_ceil(self.distinct) * self.distinct
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        std::process::exit(child(&args[1..]));
    }
    let arg = |name: &str| process::flag_u64(&args, name);
    let full = args.iter().any(|a| a == "--bench");
    let mut plan = if full {
        Plan {
            plain: 1_000_000,
            compressed: 200_000,
            reps: 5,
            cap: Duration::from_secs(60),
            distinct: DISTINCT,
            smoke: !full,
            only_clients: Vec::new(),
            only_compression: None,
            read_buffer: 0,
            hold: 0,
        }
    } else {
        // `cargo test --benches`: prove the harness works, measure nothing worth keeping.
        Plan {
            plain: 2_000,
            compressed: 500,
            reps: 1,
            cap: Duration::from_secs(20),
            distinct: DISTINCT,
            smoke: !full,
            only_clients: Vec::new(),
            only_compression: None,
            read_buffer: 0,
            hold: 0,
        }
    };
    if let Some(n) = arg("--plain") {
        plan.plain = n.max(2);
    }
    if let Some(n) = arg("--compressed") {
        plan.compressed = n.max(2);
    }
    if let Some(n) = arg("--distinct") {
        plan.distinct = n.clamp(1, 4096);
    }
    let text = |name: &str| process::flag(&args, name);
    if let Some(list) = text("--only") {
        for name in list.split(',') {
            match Client::parse(name) {
                Some(c) => plan.only_clients.push(c),
                None => {
                    let names: Vec<&str> = Client::ALL.into_iter().map(Client::name).collect();
                    eprintln!("--only: unknown client {name:?} ({})", names.join(", "));
                    std::process::exit(2);
                }
            }
        }
    }
    plan.only_compression = only_compression(text("--only-compression"));
    if let Some(n) = arg("--read-buffer") {
        plan.read_buffer = n;
    }
    if let Some(n) = arg("--hold") {
        plan.hold = n.min(1 << 20);
    }
    if let Some(n) = arg("--reps") {
        plan.reps = usize::try_from(n).unwrap_or(1).max(1);
    }
    if !parent(&plan) {
        std::process::exit(1);
    }
}

// ---- parent: the mock and the table ----------------------------------------------------------

fn mock_config(distinct: u64) -> MockConfig {
    MockConfig {
        // The raw clients never heartbeat; runs are bounded by their own cap instead.
        heartbeat_grace: None,
        // With several streams, one dispatch of each per socket flush: the payloads rotate.
        stream_batch: if distinct > 1 { 1 } else { 32 },
        identify_window: Duration::from_millis(1),
        seed: 1,
        ..MockConfig::default()
    }
}

fn parent(plan: &Plan) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("mock runtime");
    let exe = std::env::current_exe().expect("current exe");
    let sample = common::message_create(0).to_string();
    for seq in [1, 9, 10, 99_999, 100_000] {
        // The shard client counts bytes by this formula; it must match what the mock writes.
        assert_eq!(
            envelope_len(seq, EVENT, sample.len()),
            common::envelope(seq, EVENT, &sample).len()
        );
    }
    println!(
        "firehose: {} plain / {} compressed dispatches per run, {} run(s) per row, cap {} s per run",
        plan.plain,
        plan.compressed,
        plan.reps,
        plan.cap.as_secs()
    );
    println!(
        "payload: {EVENT} with d of about {} bytes, {} distinct payloads in rotation (one mock stream each, stream_batch {})",
        sample.len(),
        plan.distinct,
        mock_config(plan.distinct).stream_batch
    );
    for c in Client::ALL {
        println!("  {:<6} {}", c.name(), c.describe());
    }
    if plan.smoke {
        println!(
            "smoke run (no --bench): checks that every client works; the figures are not measurements"
        );
    }
    match plan.read_buffer {
        0 => println!(
            "read buffers: each client's default (raw 128 KiB; shard 4 KiB per read, 64 KiB while a burst lasts)"
        ),
        n => println!("read buffers: {n} bytes for every client"),
    }
    if plan.hold > 0 {
        println!("raw clients keep the last {} messages alive", plan.hold);
    }
    println!();
    println!(
        "| client | compression | events | events/s (median) | events/s (min-max) | JSON MB/s | wire B/event | client CPU µs/event | ratio to raw (median of rounds) | client busy | mock CPU µs/event | mock busy | peak RSS Δ |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ok = true;
    for compression in COMPRESSIONS {
        if plan.only_compression.is_some_and(|c| c != compression) {
            continue;
        }
        let count = plan.count(if compression == Compression::None {
            plan.plain
        } else {
            plan.compressed
        });
        // The clients of this compression, run in rounds: each round runs every one of them
        // once, in order, so a slow phase of the machine falls on all rows alike.
        let mut clients = Vec::new();
        for client in Client::ALL {
            if (!plan.only_clients.is_empty() && !plan.only_clients.contains(&client))
                || !client.supports(compression)
            {
                continue;
            }
            if client == Client::Run && handover_bin().is_none() {
                println!(
                    "| run | {} | skipped: no `handover` binary next to this benchmark (build it with `cargo build --profile bench -p handover --bin handover`) |",
                    compression_name(compression)
                );
                continue;
            }
            clients.push(client);
        }
        // runs[client][round]: None when that run failed or did not complete.
        let mut runs: Vec<Vec<Option<Run>>> = vec![Vec::new(); clients.len()];
        for _ in 0..plan.reps {
            for (i, &client) in clients.iter().enumerate() {
                let run = match run_once(&rt, &exe, client, compression, count, plan) {
                    Ok(run) if run.complete && run.events == count => Some(run),
                    Ok(run) => {
                        eprintln!(
                            "{} {}: incomplete, {} of {count} events before the cap",
                            client.name(),
                            compression_name(compression),
                            run.events
                        );
                        ok = false;
                        None
                    }
                    Err(e) => {
                        eprintln!("{} {}: {e}", client.name(), compression_name(compression));
                        ok = false;
                        None
                    }
                };
                runs[i].push(run);
            }
        }
        let raw = clients.iter().position(|&c| c == Client::Raw);
        let shard = clients.iter().position(|&c| c == Client::Shard);
        for (i, &client) in clients.iter().enumerate() {
            let mut ratio = raw
                .and_then(|r| paired_ratio(&runs[i], &runs[r]))
                .map_or("n/a".to_owned(), |r| format!("{r:.2}"));
            // `handover run`'s target is a multiple of the shard's CPU: that ratio too.
            if client == Client::Run
                && let Some(to_shard) = shard.and_then(|s| paired_ratio(&runs[i], &runs[s]))
            {
                ratio = format!("{ratio} ({to_shard:.2} to shard)");
            }
            let mut done: Vec<Run> = runs[i].iter().flatten().cloned().collect();
            print_row(client, compression, count, &mut done, &ratio);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    ok
}

/// The median over the rounds in which both runs completed of `runs`' CPU per event divided by
/// `base`'s (the round's own ratio, so a slow phase of the machine cancels out); None without
/// such a round or with a zero base.
fn paired_ratio(runs: &[Option<Run>], base: &[Option<Run>]) -> Option<f64> {
    let mut ratios: Vec<f64> = runs
        .iter()
        .zip(base)
        .filter_map(|(r, b)| match (r, b) {
            (Some(r), Some(b)) if b.cpu_us() > 0.0 => Some(r.cpu_us() / b.cpu_us()),
            _ => None,
        })
        .collect();
    process::median(&mut ratios)
}

/// Prints one row: the medians of `runs`, and `ratio` as given (from [`paired_ratio`]).
fn print_row(client: Client, compression: Compression, count: u64, runs: &mut [Run], ratio: &str) {
    if runs.is_empty() {
        println!(
            "| {} | {} | {count} | failed | | | | | | | | | |",
            client.name(),
            compression_name(compression)
        );
        return;
    }
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let med = &runs[runs.len() / 2];
    let (lo, hi) = (runs[0].rate(), runs[runs.len() - 1].rate());
    let n = med.events as f64;
    // CPU per event: the median over the runs (runs are sorted by rate above).
    let mut cpus: Vec<f64> = runs.iter().map(Run::cpu_us).collect();
    cpus.sort_by(f64::total_cmp);
    let cpu = cpus[cpus.len() / 2];
    let wire = if matches!(
        client,
        Client::Shard | Client::Run | Client::TwilightRaw | Client::TwilightTyped
    ) {
        "n/a".to_owned()
    } else {
        format!("{:.0}", med.wire_bytes as f64 / n)
    };
    let rss = runs
        .iter()
        .map(|r| r.hwm_kib.saturating_sub(r.rss_start_kib))
        .max()
        .unwrap_or(0);
    // Busy: CPU time over wall time of the run, for one core (1.0 = the process never waited).
    let busy = |cpu: f64| {
        if med.secs > 0.0 {
            format!("{:.0} %", cpu / med.secs * 100.0)
        } else {
            "n/a".to_owned()
        }
    };
    println!(
        "| {} | {} | {} | {:.0} | {:.0} - {:.0} | {:.1} | {} | {:.2} | {} | {} | {:.2} | {} | {} KiB |",
        client.name(),
        compression_name(compression),
        med.events,
        med.rate(),
        lo,
        hi,
        med.json_bytes as f64 / n * med.rate() / 1e6,
        wire,
        cpu,
        ratio,
        busy(med.client_cpu),
        med.mock_cpu / n * 1e6,
        busy(med.mock_cpu),
        rss
    );
}

/// The `handover` binary of the same build (`target/<profile>/handover`, next to the
/// directory this benchmark runs from), or `HANDOVER_BIN`.
fn handover_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HANDOVER_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("handover");
    bin.is_file().then_some(bin)
}

/// One run: a fresh mock, one child client, one stream of `count` dispatches.
fn run_once(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    client: Client,
    compression: Compression,
    count: u64,
    plan: &Plan,
) -> Result<Run, String> {
    let cap = plan.cap;
    let mock = rt
        .block_on(MockServer::start(mock_config(plan.distinct)))
        .map_err(|e| format!("mock: {e}"))?;
    let handle = mock.handle();
    // A profiler or tracer around the child (see the module's documentation).
    let wrap: Vec<String> = std::env::var("FIREHOSE_CHILD_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args([
            "--child",
            client.name(),
            compression_name(compression),
            &count.to_string(),
            &mock.url(),
            &cap.as_secs().to_string(),
            &plan.read_buffer.to_string(),
            &plan.hold.to_string(),
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let (rx, reader) = process::lines(&mut child);
    let outcome = (|| {
        wait_line(&rx, "ready", HANDSHAKE_WAIT)?;
        let cpu0 = cpu_secs();
        for i in 0..plan.distinct {
            handle.stream(StreamSpec {
                shard: ShardKey::new(0, 0),
                event: EVENT.to_owned(),
                data: common::message_create(i),
                count: count / plan.distinct,
                rate: StreamRate::AsFastAsRead,
            });
        }
        let line = wait_line(&rx, "result ", cap + KILL_MARGIN)?;
        let mock_cpu = cpu_secs() - cpu0;
        let mut run = parse_result(&line)?;
        run.mock_cpu = mock_cpu;
        Ok(run)
    })();
    reap(&mut child, outcome.is_ok());
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), mock.shutdown()).await;
    });
    outcome
}

fn parse_result(line: &str) -> Result<Run, String> {
    let mut run = Run::default();
    for pair in line.trim_start_matches("result ").split(' ') {
        let (k, v) = pair.split_once('=').ok_or("malformed result")?;
        let int = || v.parse::<u64>().map_err(|_| format!("bad {k}"));
        let float = || v.parse::<f64>().map_err(|_| format!("bad {k}"));
        match k {
            "events" => run.events = int()?,
            "json" => run.json_bytes = int()?,
            "wire" => run.wire_bytes = int()?,
            "secs" => run.secs = float()?,
            "cpu" => run.client_cpu = float()?,
            "rss0" => run.rss_start_kib = int()?,
            "hwm" => run.hwm_kib = int()?,
            "complete" => run.complete = v == "true",
            _ => {}
        }
    }
    Ok(run)
}

// ---- child: one client -----------------------------------------------------------------------

/// Counts what a client received between READY and the end of the stream.
struct Meter {
    events: u64,
    json: u64,
    wire: u64,
    first: Option<Instant>,
    cpu0: f64,
    rss0: u64,
}

impl Meter {
    /// Taken right after READY: resets the peak-RSS mark so `VmHWM` covers the run only.
    fn start() -> Meter {
        // Writing 5 resets VmHWM to the current RSS (Linux 4.0+); without it the peak also
        // covers start-up, which only overstates the figure.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Meter {
            events: 0,
            json: 0,
            wire: 0,
            first: None,
            cpu0: cpu_secs(),
            rss0: status_kib("VmRSS:"),
        }
    }

    fn record(&mut self, json: usize, wire: usize) {
        if self.first.is_none() {
            self.first = Some(Instant::now());
        }
        self.events += 1;
        self.json += json as u64;
        self.wire += wire as u64;
    }

    fn report(&self, complete: bool) -> String {
        let secs = self.first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        format!(
            "result events={} json={} wire={} secs={secs:.6} cpu={:.2} rss0={} hwm={} complete={complete}",
            self.events,
            self.json,
            self.wire,
            cpu_secs() - self.cpu0,
            self.rss0,
            status_kib("VmHWM:"),
        )
    }
}

fn child(args: &[String]) -> i32 {
    let (
        Some(client),
        Some(compression),
        Some(count),
        Some(url),
        Some(cap),
        Some(read_buffer),
        Some(hold),
    ) = (
        args.first().and_then(|s| Client::parse(s)),
        args.get(1).and_then(|s| parse_compression(s)),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3),
        args.get(4).and_then(|s| s.parse::<u64>().ok()),
        args.get(5).and_then(|s| s.parse::<usize>().ok()),
        args.get(6).and_then(|s| s.parse::<usize>().ok()),
    )
    else {
        eprintln!("usage: --child CLIENT COMPRESSION COUNT URL CAP_SECS READ_BUFFER HOLD");
        return 2;
    };
    let read_buffer = (read_buffer > 0).then_some(read_buffer);
    let cap = Duration::from_secs(cap);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let result = rt.block_on(async {
        match client {
            Client::Raw | Client::Naive => {
                let naive = client == Client::Naive;
                raw_client(naive, compression, count, url, cap, read_buffer, hold).await
            }
            Client::Shard => shard_client(compression, count, url, cap, read_buffer).await,
            Client::TwilightRaw | Client::TwilightTyped => {
                twilight_client(client == Client::TwilightTyped, count, url, cap).await
            }
            Client::Run => run_client(compression, count, url, cap).await,
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("{} {}: {e}", client.name(), compression_name(compression));
            1
        }
    }
}

/// Decompression for the raw clients: one context per connection, output into a reused buffer.
enum Inflater {
    None,
    Zlib(flate2::Decompress, Vec<u8>),
    Zstd(zstd::stream::raw::Decoder<'static>, Vec<u8>),
}

impl Inflater {
    fn new(compression: Compression) -> Result<Inflater, String> {
        Ok(match compression {
            Compression::ZlibStream => {
                Inflater::Zlib(flate2::Decompress::new(true), vec![0; 64 << 10])
            }
            Compression::ZstdStream => Inflater::Zstd(
                zstd::stream::raw::Decoder::new().map_err(|e| e.to_string())?,
                vec![0; 64 << 10],
            ),
            _ => Inflater::None,
        })
    }

    /// One frame in, one whole message out (the mock flushes every message into one frame).
    fn push<'a>(&'a mut self, frame: &'a [u8]) -> Result<&'a [u8], String> {
        match self {
            Inflater::None => Ok(frame),
            Inflater::Zlib(d, out) => {
                // `decompress` into an initialized buffer: `decompress_vec` would zero-fill the
                // whole spare capacity on every call with flate2's default backend.
                let (in0, out0) = (d.total_in(), d.total_out());
                loop {
                    let used = usize::try_from(d.total_in() - in0).unwrap_or(usize::MAX);
                    let written = usize::try_from(d.total_out() - out0).unwrap_or(usize::MAX);
                    let input = frame.get(used..).unwrap_or_default();
                    let space = out.get_mut(written..).unwrap_or_default();
                    d.decompress(input, space, flate2::FlushDecompress::Sync)
                        .map_err(|e| e.to_string())?;
                    let used = usize::try_from(d.total_in() - in0).unwrap_or(usize::MAX);
                    let written = usize::try_from(d.total_out() - out0).unwrap_or(usize::MAX);
                    if used >= frame.len() && written < out.len() {
                        return Ok(&out[..written]);
                    }
                    let grow = out.len().max(1024);
                    out.resize(out.len() + grow, 0);
                }
            }
            Inflater::Zstd(d, out) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut input = InBuffer::around(frame);
                let mut written = 0;
                loop {
                    let mut output = OutBuffer::around_pos(&mut out[..], written);
                    d.run(&mut input, &mut output).map_err(|e| e.to_string())?;
                    written = output.pos();
                    if input.pos() >= frame.len() && written < out.len() {
                        return Ok(&out[..written]);
                    }
                    let grow = out.len().max(1024);
                    out.resize(out.len() + grow, 0);
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn raw_client(
    naive: bool,
    compression: Compression,
    count: u64,
    url: &str,
    cap: Duration,
    read_buffer: Option<usize>,
    hold: usize,
) -> Result<String, String> {
    let mut url = format!("{url}/?v=10&encoding=json");
    if let Some(c) = compression.query_value() {
        url.push_str("&compress=");
        url.push_str(c);
    }
    let mut inflater = Inflater::new(compression)?;
    let config = read_buffer.map(|n| WebSocketConfig::default().read_buffer_size(n));
    let connect = tokio_tungstenite::connect_async_with_config(url, config, true);
    let (mut ws, _) = tokio::time::timeout(HANDSHAKE_WAIT, connect)
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| format!("connect: {e}"))?;
    let handshake = async {
        let mut identified = false;
        while let Some(msg) = ws.next().await {
            let payload = match msg.map_err(|e| e.to_string())? {
                WsMessage::Text(t) => inflater.push(t.as_bytes())?.to_vec(),
                WsMessage::Binary(b) => inflater.push(&b)?.to_vec(),
                WsMessage::Close(f) => return Err(format!("closed during handshake: {f:?}")),
                _ => continue,
            };
            if !identified && contains(&payload, br#""op":10"#) {
                ws.send(WsMessage::text(IDENTIFY))
                    .await
                    .map_err(|e| e.to_string())?;
                identified = true;
            } else if contains(&payload, br#""t":"READY""#) {
                return Ok(());
            }
        }
        Err("closed during handshake".to_owned())
    };
    tokio::time::timeout(HANDSHAKE_WAIT, handshake)
        .await
        .map_err(|_| "handshake timed out")??;
    println!("ready");

    let mut meter = Meter::start();
    let mut next_seq: Option<u64> = None;
    let mut held = std::collections::VecDeque::with_capacity(hold);
    let body = async {
        while meter.events < count {
            let msg = ws
                .next()
                .await
                .ok_or("socket closed mid-stream")?
                .map_err(|e| e.to_string())?;
            let (wire, json) = match &msg {
                WsMessage::Text(t) => (t.len(), inflater.push(t.as_bytes())?),
                WsMessage::Binary(b) => (b.len(), inflater.push(b)?),
                WsMessage::Close(f) => return Err(format!("closed mid-stream: {f:?}")),
                _ => continue,
            };
            if naive {
                let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
                if v.get("op").and_then(Value::as_u64) != Some(0) {
                    continue;
                }
                let seq = v
                    .get("s")
                    .and_then(Value::as_u64)
                    .ok_or("dispatch without s")?;
                if next_seq.is_some_and(|n| n != seq) {
                    return Err(format!("sequence jumped to {seq}"));
                }
                next_seq = Some(seq + 1);
                std::hint::black_box(&v);
            }
            meter.record(json.len(), wire);
            if hold > 0 {
                if held.len() == hold {
                    held.pop_front();
                }
                held.push_back(msg);
            }
        }
        Ok::<(), String>(())
    };
    let complete = match tokio::time::timeout(cap, body).await {
        Ok(r) => {
            r?;
            true
        }
        Err(_) => false,
    };
    Ok(meter.report(complete))
}

/// Length of the envelope the mock wrote for a dispatch (`common::envelope`'s shape), computed
/// without building it.
fn envelope_len(seq: u64, event: &str, data_len: usize) -> usize {
    let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
    r#"{"op":0,"t":""#.len()
        + event.len()
        + r#"","s":"#.len()
        + digits
        + r#","d":"#.len()
        + data_len
        + 1
}

async fn shard_client(
    compression: Compression,
    count: u64,
    url: &str,
    cap: Duration,
    read_buffer: Option<usize>,
) -> Result<String, String> {
    let token = Token::new(DEFAULT_TOKEN).map_err(|e| e.to_string())?;
    let mut gateway = GatewayConfig::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES);
    gateway.gateway_url = url.to_owned();
    gateway.compression = compression;
    let mut config = ShardConfig::new(gateway);
    if let Some(n) = read_buffer {
        config.transport.read_buffer_size = n;
    }
    let mut shard = Shard::start(config).map_err(|e| e.to_string())?;
    let handshake = async {
        while let Some(ev) = shard.next_event().await {
            match ev.kind {
                ShardEventKind::Ready(_) => return Ok(()),
                ShardEventKind::GaveUp { reason } => return Err(reason.to_string()),
                _ => {}
            }
        }
        Err("shard ended during handshake".to_owned())
    };
    tokio::time::timeout(HANDSHAKE_WAIT, handshake)
        .await
        .map_err(|_| "handshake timed out")??;
    println!("ready");

    let mut meter = Meter::start();
    let mut next_seq: Option<u64> = None;
    let body = async {
        while meter.events < count {
            let ev = shard.next_event().await.ok_or("shard ended mid-stream")?;
            match ev.kind {
                ShardEventKind::Dispatch(d) => {
                    if next_seq.is_some_and(|n| n != d.seq) {
                        return Err(format!("sequence jumped to {}", d.seq));
                    }
                    next_seq = Some(d.seq + 1);
                    meter.record(envelope_len(d.seq, &d.event_type, d.data.len()), 0);
                }
                ShardEventKind::GaveUp { reason } => return Err(reason.to_string()),
                ShardEventKind::SocketClosed { code } => {
                    return Err(format!("socket closed mid-stream: {code:?}"));
                }
                _ => {}
            }
        }
        Ok::<(), String>(())
    };
    let complete = match tokio::time::timeout(cap, body).await {
        Ok(r) => {
            r?;
            true
        }
        Err(_) => false,
    };
    Ok(meter.report(complete))
}

/// twilight-gateway's `Shard` against the mock (plain JSON: built without compression).
/// Raw: every message as twilight hands it out (it has already parsed the envelope for its own
/// sequence tracking and heartbeats); dispatches are told from heartbeat ACKs by the mock's
/// envelope prefix. Typed: `next_event` for MESSAGE_CREATE, deserialized into twilight-model.
async fn twilight_client(
    typed: bool,
    count: u64,
    url: &str,
    cap: Duration,
) -> Result<String, String> {
    use twilight_gateway::{
        ConfigBuilder, EventTypeFlags, Intents as TwIntents, Message as TwMessage,
        Shard as TwShard, ShardId, StreamExt as _,
    };
    use twilight_model::gateway::event::Event;
    let intents = TwIntents::GUILDS | TwIntents::GUILD_MESSAGES;
    let config = ConfigBuilder::new(DEFAULT_TOKEN.to_owned(), intents)
        .proxy_url(url.to_owned())
        .build();
    let mut shard = TwShard::with_config(ShardId::ONE, config);
    let handshake = async {
        loop {
            match shard.next_event(EventTypeFlags::READY).await {
                Some(Ok(Event::Ready(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("twilight: {e}")),
                None => return Err("twilight shard ended during handshake".to_owned()),
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_WAIT, handshake)
        .await
        .map_err(|_| "handshake timed out")??;
    println!("ready");

    let mut meter = Meter::start();
    let body = async {
        while meter.events < count {
            if typed {
                match shard.next_event(EventTypeFlags::MESSAGE_CREATE).await {
                    Some(Ok(Event::MessageCreate(m))) => {
                        let seq = shard.session().map_or(0, |s| s.sequence());
                        meter.record(0, 0);
                        std::hint::black_box(seq);
                        std::hint::black_box(&m);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("twilight: {e}")),
                    None => return Err("twilight shard ended mid-stream".to_owned()),
                }
            } else {
                match futures_util::StreamExt::next(&mut shard).await {
                    Some(Ok(TwMessage::Text(t))) => {
                        if t.starts_with(r#"{"op":0,"#) {
                            meter.record(t.len(), 0);
                        }
                    }
                    Some(Ok(TwMessage::Close(f))) => {
                        return Err(format!("closed mid-stream: {f:?}"));
                    }
                    Some(Err(e)) => return Err(format!("twilight: {e}")),
                    None => return Err("twilight shard ended mid-stream".to_owned()),
                }
            }
        }
        Ok::<(), String>(())
    };
    let complete = match tokio::time::timeout(cap, body).await {
        Ok(r) => {
            r?;
            true
        }
        Err(_) => false,
    };
    Ok(meter.report(complete))
}

/// The `handover run` binary with its stdout into a pipe this process reads in 64 KiB chunks
/// and discards, counting dispatch lines. The CPU time and memory reported are the binary's.
async fn run_client(
    compression: Compression,
    count: u64,
    url: &str,
    cap: Duration,
) -> Result<String, String> {
    use std::io::Read;
    let bin = handover_bin().ok_or("no handover binary")?;
    let mut child = Command::new(bin)
        .args([
            "run",
            "--gateway-url",
            url,
            "--shards",
            "1",
            "--compression",
            compression.query_value().unwrap_or("none"),
        ])
        .env("HANDOVER_TOKEN", DEFAULT_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn handover: {e}"))?;
    let pid = child.id();
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let deadline = Instant::now() + HANDSHAKE_WAIT + cap;
    // The reader is a thread: it sees READY, then counts dispatch lines until `count`.
    let (tx, rx) = mpsc::channel::<&'static str>();
    let reader = std::thread::spawn(move || -> Result<(u64, u64), String> {
        let mut buf = vec![0u8; 64 << 10];
        let mut tail: Vec<u8> = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut ready = false;
        let (mut events, mut bytes) = (0u64, 0u64);
        while events < count && Instant::now() < deadline {
            let n = out.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("handover run closed stdout".to_owned());
            }
            let chunk = &buf[..n];
            if !ready {
                tail.extend_from_slice(chunk);
                if let Some(at) = find(&tail, br#""type":"ready""#) {
                    ready = true;
                    let _ = tx.send("ready");
                    // Lines after READY's count.
                    let rest = tail.split_off(at);
                    events += count_dispatch_lines(&[], &rest);
                    carry.extend_from_slice(&rest[rest.len().saturating_sub(MARKER.len() - 1)..]);
                }
                continue;
            }
            events += count_dispatch_lines(&carry, chunk);
            carry.clear();
            carry.extend_from_slice(&chunk[n.saturating_sub(MARKER.len() - 1)..]);
            bytes += n as u64;
        }
        let _ = tx.send("done");
        Ok((events, bytes))
    });
    let wait = |what: &str, within: Duration| match rx.recv_timeout(within) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("handover run: no {what} in time")),
    };
    let ready = wait("ready", HANDSHAKE_WAIT);
    let (cpu0, rss0) = (cpu_secs_of(pid), status_kib_of(pid, "VmRSS:"));
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let t0 = Instant::now();
    let outcome = match ready {
        Ok(()) => {
            println!("ready");
            wait("end of stream", cap).map(|()| {
                let secs = t0.elapsed().as_secs_f64();
                let cpu = cpu_secs_of(pid) - cpu0;
                let hwm = status_kib_of(pid, "VmHWM:");
                (secs, cpu, hwm)
            })
        }
        Err(e) => Err(e),
    };
    let _ = child.kill();
    let _ = child.wait();
    let counted = reader.join().map_err(|_| "reader panicked")?;
    let (events, bytes) = counted?;
    let (secs, cpu, hwm) = outcome?;
    Ok(format!(
        "result events={} json={bytes} wire=0 secs={secs:.6} cpu={cpu:.2} rss0={rss0} hwm={hwm} complete={}",
        events.min(count),
        events >= count
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What marks a dispatch line of `handover run` (`{"shard":0,"type":"dispatch","seq":...`).
const MARKER: &[u8] = b"\"type\":\"dispatch\"";

/// Dispatch lines in `chunk` of `handover run`'s stdout; `carry` holds the bytes just before it
/// (fewer than the marker), so a marker split by the read boundary is counted once.
fn count_dispatch_lines(carry: &[u8], chunk: &[u8]) -> u64 {
    let within = memchr::memmem::find_iter(chunk, MARKER).count();
    let mut edge = carry.to_vec();
    edge.extend_from_slice(&chunk[..chunk.len().min(MARKER.len() - 1)]);
    let across = memchr::memmem::find_iter(&edge, MARKER).count();
    (within + across) as u64
}
