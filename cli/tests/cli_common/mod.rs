//! Shared harness of the `cli_*` tests: the real `handover` binary as a child process, its
//! stdout read as NDJSON, a tiny HTTP client, and a mock gateway with short timers. Every wait
//! is bounded.

#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_mock::MockConfig;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Upper bound of any single wait. Generous: it only matters when a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The token the test mock accepts.
pub const TOKEN: &str = "mock-token";

/// A mock gateway configuration with timers shrunk for tests.
pub fn mock_config() -> MockConfig {
    MockConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_grace: Some(Duration::from_millis(500)),
        resume_window: Duration::from_secs(30),
        identify_window: Duration::from_millis(100),
        close_timeout: Duration::from_millis(500),
        seed: 11,
        ..MockConfig::default()
    }
}

/// The `handover` binary, running.
pub struct Handover {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    /// Every stdout line read so far.
    pub lines: Vec<String>,
}

/// `handover run` against the gateway at `url`, handing its sessions over through `file`,
/// with a short drain; more flags may be appended.
pub fn session_run_args<'a>(url: &'a str, file: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--gateway-url",
        url,
        "--session-file",
        file,
        "--drain-timeout-ms",
        "500",
    ]
}

/// Starts `handover ARGS` with `env` (and without any inherited token or log filter).
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Handover {
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    spawn_os(args, &env)
}

/// [`spawn`] with environment values that need not be UTF-8.
pub fn spawn_os(args: &[&str], env: &[(&str, &OsStr)]) -> Handover {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover"));
    cmd.args(args);
    start(cmd, env)
}

/// [`spawn`] under the file creation mask `umask` (octal, for example `277`): `sh` sets it and
/// execs the binary, which keeps the process id.
pub fn spawn_with_umask(umask: &str, args: &[&str], env: &[(&str, &str)]) -> Handover {
    assert!(
        umask.bytes().all(|b| (b'0'..=b'7').contains(&b)),
        "octal umask"
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_handover"))
        .args(args);
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    start(cmd, &env)
}

fn start(mut cmd: Command, env: &[(&str, &OsStr)]) -> Handover {
    cmd.env_remove("HANDOVER_TOKEN")
        .env_remove("HANDOVER_MOCK_TOKENS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the handover binary starts");
    let stdin = child.stdin.take();
    let stdout = Some(BufReader::new(child.stdout.take().expect("piped stdout")).lines());
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let stderr_task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match stderr_pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    Handover {
        child,
        stdin,
        stdout,
        stderr,
        stderr_task: Some(stderr_task),
        lines: Vec::new(),
    }
}

impl Handover {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads stdout lines until one parses as JSON and satisfies `pred`; returns it. Panics
    /// (with what was read) at end of output or after [`WAIT`].
    pub async fn expect_line(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stdout = self.stdout.as_mut().expect("stdout still read");
            let next = tokio::time::timeout_at(deadline, stdout.next_line()).await;
            let line = match next {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) | Ok(Err(_)) => panic!(
                    "stdout ended before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.lines.join("\n"),
                    self.stderr()
                ),
                Err(_) => panic!(
                    "no {what} within {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                    self.lines.join("\n"),
                    self.stderr()
                ),
            };
            self.lines.push(line.clone());
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not json ({e}): {line}"));
            if pred(&value) {
                return value;
            }
        }
    }

    /// A line already read that satisfies `pred`, or else the next one that does (for lines
    /// whose order against others is not defined, such as command replies and events).
    pub async fn seen_or_expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let seen = self
            .lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| pred(v));
        match seen {
            Some(v) => v,
            None => self.expect_line(what, pred).await,
        }
    }

    /// Reads stdout until a line of this `type` arrives.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        self.expect_line(kind, |v| v["type"] == kind).await
    }

    /// Reads the rest of stdout (until the process closes it).
    pub async fn read_to_end(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let Some(stdout) = self.stdout.as_mut() else {
            return;
        };
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, stdout.next_line()).await {
            self.lines.push(line);
        }
    }

    /// Stops reading stdout and closes the pipe, as a consumer that went away.
    pub fn close_stdout(&mut self) {
        self.stdout = None;
    }

    /// Writes one line to stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Sends a signal (`TERM`, `HUP`, `INT`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, reading the rest of stdout meanwhile.
    pub async fn wait(&mut self) -> ExitStatus {
        self.read_to_end().await;
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait works"),
            Err(_) => panic!(
                "handover did not exit within {WAIT:?}\nstderr:\n{}",
                self.stderr()
            ),
        };
        // The stderr reader ends at the pipe's end: after it, stderr() is complete.
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
        status
    }

    /// Waits for the process to exit without reading stdout, as a reader stalled through the
    /// whole shutdown would; what the process wrote stays in the pipe for
    /// [`read_to_end`](Self::read_to_end).
    pub async fn wait_unread(&mut self) -> ExitStatus {
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait works"),
            Err(_) => panic!(
                "handover did not exit within {WAIT:?} with stdout unread\nstderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// All of stdout read so far, one string.
    pub fn stdout(&self) -> String {
        self.lines.join("\n")
    }
}

/// Runs `handover ARGS` to completion with `env` and empty stdin; returns (exit code, stdout,
/// stderr).
pub async fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut h = spawn(args, env);
    drop(h.stdin.take());
    let status = h.wait().await;
    (status.code(), h.stdout(), h.stderr())
}

/// [`run_to_end`] with environment values that need not be UTF-8.
pub async fn run_to_end_os(args: &[&str], env: &[(&str, &OsStr)]) -> (Option<i32>, String, String) {
    let mut h = spawn_os(args, env);
    drop(h.stdin.take());
    let status = h.wait().await;
    (status.code(), h.stdout(), h.stderr())
}

/// One HTTP/1.1 request to `addr` (127.0.0.1 only); returns the status code and the body.
pub async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    assert!(addr.starts_with("127.0.0.1:"), "loopback only: {addr}");
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let text = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("http answer in time");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad http answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
