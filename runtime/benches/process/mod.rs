//! Process measurements and child-process plumbing shared by the benchmarks that run each
//! client in a child process of their own (`firehose`, `idle_shards`, and the transport's
//! `idle_rss`, the proxy's bench): CPU time and memory from `/proc`, line-by-line reading of a
//! child's stdout, a bounded reap, and the value of a `--flag VALUE` option.

#![allow(dead_code)] // Each benchmark uses part of this module.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// User + system CPU time of process `pid` (`"self"` for this one) so far, in seconds (clock
/// ticks of 10 ms).
pub(crate) fn cpu_secs_of(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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

/// [`cpu_secs_of`] this process.
pub(crate) fn cpu_secs() -> f64 {
    cpu_secs_of("self")
}

/// A `kB` field (`"VmRSS:"`, `"VmHWM:"`...) of `/proc/PID/status` (`"self"` for this
/// process); 0 if the process or the field is gone.
pub(crate) fn status_kib_of(pid: impl std::fmt::Display, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// [`status_kib_of`] this process.
pub(crate) fn status_kib(field: &str) -> u64 {
    status_kib_of("self", field)
}

/// Reads a child's stdout line by line on a thread of its own, so the parent can wait for a
/// line with a deadline ([`wait_line`]).
pub(crate) fn lines(child: &mut Child) -> (mpsc::Receiver<String>, Option<JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel();
    let reader = child.stdout.take().map(|stdout| {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
    });
    (rx, reader)
}

/// The first line starting with `prefix` within `within`; other lines are skipped.
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

/// The value after the option `name` (`--reps 3`) in `args`, if it is there.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The value after the option `name` as a number, if it is there and one.
pub(crate) fn flag_u64(args: &[String], name: &str) -> Option<u64> {
    flag(args, name).and_then(|v| v.parse().ok())
}

/// The median of `values` (the mean of the middle two for an even count), sorting them; None
/// when there are none. NaNs sort last (`total_cmp`).
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}
