//! Child-process helpers shared by the benchmarks that measure a client in a process of its
//! own (`runtime/benches/firehose.rs`, `proxy/benches/proxy.rs`): bounded waits on a child's
//! stdout lines, reaping, and CPU time and memory read from `/proc` (Linux).

use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The next line of `rx` that starts with `prefix`, within `within`.
pub(crate) fn wait_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no `{}` line within {within:?}", prefix.trim()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("child exited before `{}`", prefix.trim()));
            }
        }
    }
}

/// Lets a finished child exit (for at most a few seconds), kills it otherwise.
pub(crate) fn reap(child: &mut Child, finished: bool) {
    if finished {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// User + system CPU time of this process so far, in seconds (clock ticks of 10 ms).
pub(crate) fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// A `/proc/self/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 when absent.
pub(crate) fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid` so far, in seconds (clock ticks of 10 ms).
pub(crate) fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// A `/proc/PID/status` field of process `pid` in KiB, 0 when absent.
pub(crate) fn status_kib_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
