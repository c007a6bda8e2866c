//! CPU per event of the two sinks of `handover run`: NDJSON on stdout and the Redis Streams
//! sink (`--sink redis`).
//!
//! `cargo bench -p handover --bench sink [-- --events N --reps N]`
//!
//! Both rows take the same dispatches (distinct ~1 KiB MESSAGE_CREATE payloads) in batches of
//! 512, as the sinks do when events queue up:
//!
//! - `stdout`: `ndjson::write_event` of each event into one buffer, one `write` of the batch to
//!   /dev/null (the formatting and the system call of the stdout writer, which hands a pipe
//!   everything queued in one non-blocking write, without a reader);
//! - `redis`: `StreamSink::publish` of the batch (one EVALSHA round trip: XADD per event with its
//!   derived id) to a redis-server started by the bench on 127.0.0.1, awaited before the next
//!   batch, as the sink confirms receipts.
//!
//! CPU time is this process's (`/proc/self/stat`, 10 ms ticks) on a current-thread tokio
//! runtime; redis-server's own CPU is reported beside it. Without `--bench` (as under `cargo
//! test --benches`) it runs a smoke workload. Every wait is bounded.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover_cli::ndjson;
use handover_cli::sink::StreamSink;
use handover_protocol::{Dispatch, RawJson, Token};
use handover_runtime::redis::{RedisConfig, RedisCoordinator};
use handover_runtime::{ShardEvent, ShardEventKind};

const BATCH: usize = 512;

fn ticks(stat: &str) -> u64 {
    // Fields after the command name (which is in parentheses): utime is the 14th field of the
    // line, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn cpu_ms(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    ticks(&std::fs::read_to_string(path).unwrap_or_default()) * 10
}

fn events(n: usize) -> Vec<ShardEvent> {
    (0..n)
        .map(|i| {
            let content = format!("message {i} ").repeat(60);
            let data = format!(
                r#"{{"id":"{}","channel_id":"1100000000000000000","content":"{}","author":{{"id":"1200000000000000000","username":"someone"}},"mentions":[],"attachments":[]}}"#,
                1_300_000_000_000_000_000u64 + i as u64,
                &content[..content.len().min(900)]
            );
            ShardEvent {
                shard: (i % 4) as u32,
                kind: ShardEventKind::Dispatch(Dispatch {
                    seq: (i / 4 + 1) as u64,
                    event_type: "MESSAGE_CREATE".into(),
                    data: RawJson::parse(data).expect("valid json"),
                }),
            }
        })
        .collect()
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let opt = |name: &str, default: usize| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = opt("--events", if bench { 200_000 } else { 2_000 });
    let reps = opt("--reps", if bench { 3 } else { 1 });
    let evs = events(n);

    // The Redis server of the bench.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let dir = std::env::temp_dir().join(format!("handover-sink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut server = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("redis-server not on PATH ({e}): the redis row is skipped");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let token = Token::new("bench-token").expect("a token");
    let coordinator = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RedisCoordinator::connect(RedisConfig::new(
                format!("redis://127.0.0.1:{port}"),
                &token,
            ))
            .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });

    println!("| sink | events | wall | CPU (handover) | CPU / event | CPU (redis-server) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    for rep in 0..reps {
        let (c0, t0) = (cpu_ms(None), Instant::now());
        let mut buf = Vec::with_capacity(BATCH * 1200);
        for batch in evs.chunks(BATCH) {
            buf.clear();
            for ev in batch {
                ndjson::write_event(&mut buf, ev);
            }
            devnull.write_all(&buf).expect("write");
        }
        row("stdout", rep, n, t0.elapsed(), cpu_ms(None) - c0, None);

        let mut sink = StreamSink::new(&coordinator, n as u64);
        for s in 0..4 {
            sink.set_session(s, &format!("bench-session-{rep}"));
        }
        let (c0, r0, t0) = (cpu_ms(None), cpu_ms(Some(server.id())), Instant::now());
        rt.block_on(async {
            for batch in evs.chunks(BATCH) {
                let p = sink.publish(batch).await.expect("published");
                assert_eq!(p.added as usize, batch.len(), "every event added once");
            }
        });
        let redis_cpu = cpu_ms(Some(server.id())) - r0;
        row(
            "redis",
            rep,
            n,
            t0.elapsed(),
            cpu_ms(None) - c0,
            Some(redis_cpu),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn row(name: &str, rep: usize, n: usize, wall: Duration, cpu: u64, redis: Option<u64>) {
    println!(
        "| {name} (run {}) | {n} | {:.0} ms | {cpu} ms | {:.2} µs | {} |",
        rep + 1,
        wall.as_secs_f64() * 1000.0,
        cpu as f64 * 1000.0 / n as f64,
        redis.map_or("-".into(), |r| format!("{r} ms")),
    );
}
