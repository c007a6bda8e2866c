//! `handover mock-gateway` as a child process, driven over stdin, with `handover run` connected
//! to it.

mod cli_common;
#[path = "../../mock/tests/mock_util/mod.rs"]
mod mock_util;

use cli_common::{TOKEN, run_to_end, spawn};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_the_environment_the_stdin_commands_and_the_exit_codes() {
    let (code, stdout, stderr) = run_to_end(&["mock-gateway", "--help"], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for needle in [
        "HANDOVER_MOCK_TOKENS",
        "Bot <token>",
        r#"{"op":"dispatch""#,
        r#"{"op":"stream""#,
        r#"{"op":"fault""#,
        r#"{"op":"counters"}"#,
        r#""bot""#,
        "every bot",
        "zombie",
        "stop_acks",
        "drop_tcp",
        "ignore_close_frames",
        "reconnect",
        "invalid_session",
        "close",
        "delay",
        "garbage_text",
        "garbage_binary",
        "request_heartbeat",
        "Exit codes",
        "SIGTERM",
        "--allow-privileged-intents",
        "--replay-buffer",
        "--seed",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_intents_are_refused_unless_allowed() {
    let mut mock = spawn(
        &[
            "mock-gateway",
            "--heartbeat-ms",
            "200",
            "--identify-window-ms",
            "100",
            "--allow-privileged-intents",
            "MESSAGE_CONTENT",
        ],
        &[],
    );
    let api = mock.expect_type("listening").await["http_base"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut allowed = spawn(
        &[
            "run",
            "--api-base",
            &api,
            "--intents",
            "GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT",
        ],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    allowed.expect_type("ready").await;
    allowed.signal("TERM");
    assert_eq!(allowed.wait().await.code(), Some(0), "{}", allowed.stderr());

    // An intent the flag did not enable is still refused as Discord refuses it.
    let (code, stdout, stderr) = run_to_end(
        &[
            "run",
            "--api-base",
            &api,
            "--intents",
            "GUILDS,GUILD_MEMBERS",
        ],
        &[("HANDOVER_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.contains(r#""code":4014"#), "{stdout}");

    mock.send(r#"{"op":"counters"}"#).await;
    let c = mock.expect_type("counters").await;
    assert_eq!(c["shards"]["0/0"]["sessions_started"], 1, "{c}");
    assert_eq!(c["shards"]["0/0"]["identifies"], 2, "{c}");
    mock.signal("TERM");
    assert_eq!(mock.wait().await.code(), Some(0), "{}", mock.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_mocks_hand_out_different_session_ids_and_a_seed_repeats_them() {
    async fn first_session(flags: &[&str]) -> (u64, String) {
        let args: Vec<&str> = std::iter::once("mock-gateway")
            .chain(flags.iter().copied())
            .collect();
        let mut mock = spawn(&args, &[]);
        let listening = mock.expect_type("listening").await;
        let seed = listening["seed"].as_u64().expect("the seed in use");
        let url = listening["ws_url"].as_str().unwrap().to_owned();
        let (_client, session) = mock_util::identified(&url, [0, 1]).await;
        mock.signal("TERM");
        assert_eq!(mock.wait().await.code(), Some(0), "{}", mock.stderr());
        (seed, session)
    }
    let (seed_a, a) = first_session(&[]).await;
    let (seed_b, b) = first_session(&[]).await;
    assert_ne!(seed_a, seed_b);
    assert_ne!(a, b, "two default mocks handed out the same session id");
    let (seed_c, c) = first_session(&["--seed", &seed_a.to_string()]).await;
    assert_eq!((seed_c, c), (seed_a, a), "the printed seed replays the run");
}
