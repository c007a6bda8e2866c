//! Fatal conditions of `handover run` end with a clear message and a non-zero exit code, never
//! a retry loop, and never print the token.

#![cfg(feature = "cli")]

mod cli_common;

use cli_common::{mock_config, run_to_end};
use handover_discord::mock::MockServer;

/// Well formed, refused by the mock, and easy to search for.
const WRONG: &str = "wrong-but-well-formed-SECRET-4f1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_variable_is_a_usage_error() {
    let (code, stdout, stderr) =
        run_to_end(&["run", "--gateway-url", "ws://127.0.0.1:9"], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("HANDOVER_TOKEN is not set"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_a_usage_error_and_is_not_printed() {
    let (code, stdout, stderr) = run_to_end(
        &["run", "--gateway-url", "ws://127.0.0.1:9"],
        &[("HANDOVER_TOKEN", "Bot SECRET-with-space")],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("HANDOVER_TOKEN does not hold a valid token"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET") && !stdout.contains("SECRET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_by_the_lookup_exits_1() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let api = mock.http_base();
    let (code, stdout, stderr) =
        run_to_end(&["run", "--api-base", &api], &[("HANDOVER_TOKEN", WRONG)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("error: authentication failed"), "{stderr}");
    assert!(
        !stderr.contains(WRONG) && !stdout.contains(WRONG),
        "token leaked"
    );
    assert_eq!(mock.handle().counters().connections_accepted, 0);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_by_the_gateway_gives_up_once_and_exits_1() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let url = mock.url();
    let (code, stdout, stderr) = run_to_end(
        &["run", "--gateway-url", &url, "--http", "127.0.0.1:0"],
        &[("HANDOVER_TOKEN", WRONG)],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: every shard gave up: shard 0: authentication failed (close code 4004)"
        ),
        "{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.contains(r#""type":"gave_up""#)),
        "{stdout}"
    );
    assert!(
        !stderr.contains(WRONG) && !stdout.contains(WRONG),
        "token leaked"
    );
    let c = mock.handle().counters();
    assert_eq!(c.connections_accepted, 1, "no retry after 4004");
    assert_eq!(c.live_sockets, 0);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2() {
    let env = [("HANDOVER_TOKEN", "mock-token")];
    for args in [
        &["run", "--token", "abc"][..],
        &["run", "--shards", "nope"],
        &["run", "--shards", "3..2/4"],
        &["run", "--intents", "GUILDZ"],
        &["run", "--compression", "gzip"],
        &["run", "--http", "not-an-address"],
        &["demo", "--seed", "x"],
        &["mock-gateway", "--port", "70000"],
        &["--log-level", "a=b=c=d", "demo"],
        &["fly"],
    ] {
        let (code, stdout, stderr) = run_to_end(args, &env).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    // Refused before anything is bound: the control API is loopback unless asked otherwise.
    let (code, _, stderr) = run_to_end(
        &[
            "run",
            "--gateway-url",
            "ws://127.0.0.1:9",
            "--http",
            "0.0.0.0:0",
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--http-allow-remote"), "{stderr}");
    let (code, _, stderr) = run_to_end(&["run", "--gateway-url", "http://x"], &env).await;
    assert_eq!(code, Some(2), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_goes_away_ends_the_run_with_1_and_the_session_saved() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let dir = cli_common::temp_dir("stdout-closed");
    let file = dir.join("sessions.json");
    let mut run = cli_common::spawn(
        &[
            "run",
            "--api-base",
            &api,
            "--session-file",
            file.to_str().unwrap(),
        ],
        &[("HANDOVER_TOKEN", cli_common::TOKEN)],
    );
    run.expect_type("ready").await;
    run.close_stdout();
    // The next event finds no reader.
    gw.dispatch(0, "MESSAGE_CREATE", &serde_json::json!({ "n": 1 }));
    let status = run.wait().await;
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr().contains("error: stdout was closed"),
        "{}",
        run.stderr()
    );
    gw.wait_for(cli_common::WAIT, |c| c.live_sockets == 0)
        .await
        .unwrap();
    assert!(file.exists(), "the session is handed over all the same");
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}
