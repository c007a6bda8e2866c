//! `handover run` resuming from a session file that the gateway cannot honour: a seq beyond the
//! session's last (close 4007) and a seq older than the replay buffer (op 9). Either way the
//! session that had delivered events is lost, and the next process says so with a `gap` line
//! before its `ready`.

mod cli_common;

use cli_common::{TOKEN, mock_config, session_run_args, spawn, temp_dir};
use handover_mock::{MockServer, StreamRate, StreamSpec};
use serde_json::{Value, json};

/// Runs a first process that reads `events` dispatches and drains; returns the saved file.
async fn first_run(mock: &MockServer, file: &str, events: u64) -> Value {
    let url = mock.url();
    let mut run = spawn(&session_run_args(&url, file), &[("HANDOVER_TOKEN", TOKEN)]);
    run.expect_type("ready").await;
    mock.handle().stream(StreamSpec {
        shard: 0.into(),
        event: "MESSAGE_CREATE".into(),
        data: json!({"content": "tick"}),
        count: events,
        rate: StreamRate::AsFastAsRead,
    });
    for _ in 0..events {
        run.expect_type("dispatch").await;
    }
    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// Runs the second process until its new session; returns its stdout lines.
async fn second_run_reports_the_gap(mock: &MockServer, file: &str, seq: u64) -> Vec<String> {
    let url = mock.url();
    let mut run = spawn(&session_run_args(&url, file), &[("HANDOVER_TOKEN", TOKEN)]);
    let gap = run.expect_type("gap").await;
    assert_eq!(gap["last_seq"], seq, "{gap}");
    run.expect_type("ready").await;
    let gaps: Vec<usize> = run
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"gap\""))
        .map(|(i, _)| i)
        .collect();
    let ready = run
        .lines
        .iter()
        .position(|l| l.contains("\"type\":\"ready\""))
        .unwrap();
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] < ready,
        "the gap comes before the new session's READY"
    );
    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
    run.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_seq_beyond_the_session_is_a_gap() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let dir = temp_dir("gap-beyond");
    let file = dir.join("sessions.json");
    let file = file.to_str().unwrap();
    let mut saved = first_run(&mock, file, 5).await;
    // A seq the gateway never sent: it closes with 4007 and the session is gone.
    saved["sessions"][0]["seq"] = json!(999_999);
    std::fs::write(file, saved.to_string()).unwrap();
    let lines = second_run_reports_the_gap(&mock, file, 999_999).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""type":"socket_closed","code":4007"#)),
        "{lines:?}"
    );
    assert_eq!(mock.handle().counters().shard(0).identifies, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_seq_older_than_the_replay_buffer_is_a_gap() {
    let mut config = mock_config();
    config.replay_buffer = 5;
    let mock = MockServer::start(config).await.unwrap();
    let dir = temp_dir("gap-older");
    let file = dir.join("sessions.json");
    let file = file.to_str().unwrap();
    let mut saved = first_run(&mock, file, 20).await;
    assert_eq!(saved["sessions"][0]["seq"], 21);
    // Events 3..=21 are not all kept any more: the gateway answers op 9.
    saved["sessions"][0]["seq"] = json!(2);
    std::fs::write(file, saved.to_string()).unwrap();
    second_run_reports_the_gap(&mock, file, 2).await;
    let shard = mock.handle().counters().shard(0);
    assert_eq!(shard.identifies, 2);
    assert!(shard.invalid_sessions_sent >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}
