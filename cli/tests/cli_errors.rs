//! Fatal conditions of `handover run` end with a clear message and a non-zero exit code, never
//! a retry loop, and never print the token.

mod cli_common;

use cli_common::{mock_config, run_to_end, run_to_end_os};
use handover_mock::MockServer;

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
        &["run", "--intents", ""],
        &["run", "--intents", " "],
        &["run", "--intents", "GUILDS,,GUILD_MESSAGES"],
        &["run", "--intents", "GUILDS,"],
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
    for url in [
        "http://x",
        "ws://",
        "wss://",
        "ws://:80",
        "ws://exa mple",
        "wss:///path",
    ] {
        let (code, stdout, stderr) = run_to_end(&["run", "--gateway-url", url], &env).await;
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("error: --gateway-url is not a usable gateway url"),
            "{url}: {stderr}"
        );
        assert!(stdout.is_empty(), "{url}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_intents_are_refused_with_a_clear_message() {
    let env = [("HANDOVER_TOKEN", "mock-token")];
    let (code, _, stderr) = run_to_end(&["run", "--intents", ""], &env).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no intents given"), "{stderr}");
    let (code, _, stderr) = run_to_end(&["run", "--intents", "GUILDS,,GUILD_MESSAGES"], &env).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("an intent name is missing between separators"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_utf8_is_reported_as_such() {
    use std::os::unix::ffi::OsStrExt;
    let token = std::ffi::OsStr::from_bytes(b"SECRET-\xff\xfe-token");
    let (code, stdout, stderr) = run_to_end_os(
        &["run", "--gateway-url", "ws://127.0.0.1:9"],
        &[("HANDOVER_TOKEN", token)],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("HANDOVER_TOKEN does not hold a valid token: it is not valid utf-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("not set"), "{stderr}");
    assert!(!stderr.contains("SECRET") && stdout.is_empty(), "{stderr}");
}

/// A token too long for an IDENTIFY used to leave the shard in `identifying` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_too_long_for_an_identify_exits_2_at_start() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let url = mock.url();
    let token = format!("SECRET{}", "x".repeat(10 * 1024));
    let (code, stdout, stderr) = run_to_end(
        &["run", "--gateway-url", &url],
        &[("HANDOVER_TOKEN", token.as_str())],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .contains("HANDOVER_TOKEN does not hold a valid token: token is longer than 512 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET") && stdout.is_empty(), "{stderr}");
    assert_eq!(mock.handle().counters().connections_accepted, 0);
    mock.shutdown().await;
}

/// An unusable session file path used to be found at shutdown only, losing the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_session_file_exits_2_before_any_shard_starts() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let url = mock.url();
    let dir = cli_common::temp_dir("unusable-session-file");
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(dir.join("elsewhere.json"), &link).unwrap();
    let cases = [
        (dir.clone(), "is not a regular file"),
        (
            dir.join("missing").join("sessions.json"),
            "its directory does not exist",
        ),
        (link, "is a symbolic link"),
        // No file can be created there, even by root.
        ("/proc/handover-sessions.json".into(), "cannot write /proc"),
    ];
    for (path, why) in cases {
        let (code, stdout, stderr) = run_to_end(
            &[
                "run",
                "--gateway-url",
                &url,
                "--session-file",
                path.to_str().unwrap(),
            ],
            &[("HANDOVER_TOKEN", cli_common::TOKEN)],
        )
        .await;
        assert_eq!(code, Some(2), "{path:?}: {stderr}");
        assert!(
            stderr.contains("error: --session-file cannot be used:") && stderr.contains(why),
            "{path:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{path:?}: {stdout}");
    }
    assert_eq!(
        mock.handle().counters().connections_accepted,
        0,
        "no shard started, no identify spent"
    );
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_help_says_where_the_token_comes_from() {
    let (code, stdout, stderr) = run_to_end(&["run", "--help"], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("HANDOVER_TOKEN environment variable"),
        "{stdout}"
    );
    assert!(stdout.contains("Exit codes:"), "{stdout}");
    assert!(stdout.contains("--session-file"), "{stdout}");
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
