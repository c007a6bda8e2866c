//! A client someone else wrote in another language: @discordjs/ws 2.0.4, run by node 20 from
//! `tests/node/restarts.mjs`, through the proxy to the mock gateway. Its `WebSocketManager` is
//! destroyed and a new one created 50 times during a stream; each new manager resumes from the
//! session the script saved and the script checks it saw every event exactly once, in order.
//! Upstream, the mock saw one IDENTIFY and no reconnect.
//!
//! Needs `npm ci` in `proxy/tests/node` (`.ci/run` does it); without `node_modules` the test
//! fails and says so.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handover_mock::DEFAULT_TOKEN;
use serde_json::{Value, json};

/// Events dispatched upstream during the test.
const EVENTS: u64 = 2500;
/// Managers destroyed and recreated during the stream.
const RESTARTS: u64 = 50;
/// The node script's own deadline; the test kills it a little after.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Kills the node process when the test ends, passed or not.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_managers_recreated_during_a_stream_resume_and_see_every_event_once() {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/@discordjs/ws/package.json")
            .is_file(),
        "@discordjs/ws is not installed: run `npm ci` in {} (node 20 and the npm registry; \
         .ci/run does it)",
        dir.display()
    );

    let (mock, proxy, url) = common::start(|_| {}).await;
    let addr = url.trim_start_matches("ws://").to_owned();

    let child = Command::new("node")
        .arg("restarts.mjs")
        .current_dir(&dir)
        .env("PROXY_HTTP", format!("http://{addr}"))
        .env("TOKEN", DEFAULT_TOKEN)
        .env("EVENTS", EVENTS.to_string())
        .env("RESTARTS", RESTARTS.to_string())
        .env("SEED", "7")
        .env("DEADLINE_MS", SCRIPT_DEADLINE.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node (node 20 must be on PATH): {e}"));
    let mut child = Reaper(child);
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let stderr = child.0.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    drop(tx);

    // Bounded waits on the script's lines; `output` keeps them for the failure message.
    let mut output = Vec::new();
    let mut wait_for = |prefix: &str, within: Duration| -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).ok()?;
            output.push(line.clone());
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    };
    let ready = tokio::task::block_in_place(|| wait_for("ready", Duration::from_secs(30)));
    if ready.is_none() {
        let _ = child.0.kill();
        let stderr = err_thread.join().unwrap_or_default();
        panic!("the node client never got READY\nstdout: {output:#?}\nstderr:\n{stderr}");
    }
    let mock_handle = mock.handle();
    let producer = tokio::spawn(async move {
        for n in 1..=EVENTS {
            mock_handle.dispatch(0, "E", &json!({ "n": n }));
            if n % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let result = tokio::task::block_in_place(|| {
        wait_for("result ", SCRIPT_DEADLINE + Duration::from_secs(10))
    });
    let status = tokio::task::block_in_place(|| {
        // Bounded: the script exits right after its result line.
        for _ in 0..100 {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    let _ = child.0.kill();
    let stderr = err_thread.join().unwrap_or_default();
    let report: Option<Value> = result
        .as_deref()
        .and_then(|l| serde_json::from_str(l.trim_start_matches("result ")).ok());
    let ok = report.as_ref().is_some_and(|r| r["ok"] == true);
    assert!(
        ok && status.is_some_and(|s| s.success()),
        "the node client failed (exit {status:?})\nstdout: {output:#?}\nstderr:\n{stderr}"
    );
    let report = report.unwrap();
    assert_eq!(report["events"], EVENTS, "{report}");
    assert_eq!(report["readies"], 1, "{report}");
    assert_eq!(report["restarts"], RESTARTS, "{report}");
    assert!(
        report["gatewayFetches"].as_u64() >= Some(RESTARTS + 1),
        "every manager asked the proxy's /api/v10/gateway/bot: {report}"
    );
    producer.await.unwrap();

    common::assert_upstream_untouched(&mock);
    let stats = proxy.handle().stats();
    assert_eq!(stats.resumes, RESTARTS, "every new manager resumed");
    assert_eq!(stats.resumes_refused, 0);
    assert!(
        stats.replayed > 0,
        "restarts missed events that were replayed"
    );
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}
