//! `handover mock-gateway` as a child process, driven over stdin, with `handover run` connected
//! to it.

#![cfg(feature = "cli")]

mod cli_common;

use cli_common::{TOKEN, spawn};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_gateway_serves_a_run_process_and_takes_commands() {
    let mut mock = spawn(
        &[
            "mock-gateway",
            "--port",
            "0",
            "--heartbeat-ms",
            "200",
            "--identify-window-ms",
            "100",
        ],
        &[],
    );
    let hello = mock.expect_type("listening").await;
    let ws = hello["ws_url"].as_str().unwrap().to_owned();
    let api = hello["http_base"].as_str().unwrap().to_owned();
    let port = hello["port"].as_u64().unwrap();
    assert_eq!(ws, format!("ws://127.0.0.1:{port}"));
    assert_eq!(api, format!("http://127.0.0.1:{port}"));

    let mut run = spawn(
        &["run", "--api-base", &api, "--compression", "zlib-stream"],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    run.expect_type("ready").await;

    mock.send(r#"{"op":"dispatch","shard":0,"event":"GUILD_CREATE","data":{"id":"5"}}"#)
        .await;
    assert_eq!(mock.expect_type("dispatched").await["written"], 1);
    let ev = run.expect_type("dispatch").await;
    assert_eq!(
        (ev["event"].as_str(), ev["data"].clone()),
        (Some("GUILD_CREATE"), json!({"id": "5"}))
    );

    mock.send(r#"{"op":"fault","shard":0,"fault":"reconnect"}"#)
        .await;
    assert_eq!(mock.expect_type("injected").await["hit"], 1);
    run.expect_type("resumed").await;

    mock.send("nonsense").await;
    mock.expect_type("error").await;
    mock.send(r#"{"op":"counters"}"#).await;
    let c = mock.expect_type("counters").await;
    let shard = &c["shards"]["0/0"];
    assert_eq!(shard["identifies"], 1);
    assert_eq!(shard["resumes_ok"], 1);
    assert_eq!(shard["reconnects_sent"], 1);
    assert_eq!(shard["max_live_sockets"], 1);
    assert_eq!(c["http_requests"], 1, "the lookup");

    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
    mock.send(r#"{"op":"counters"}"#).await;
    let c = mock.expect_type("counters").await;
    assert_eq!(c["live_sockets"], 0, "{c}");
    mock.signal("TERM");
    assert_eq!(mock.wait().await.code(), Some(0), "{}", mock.stderr());
}
