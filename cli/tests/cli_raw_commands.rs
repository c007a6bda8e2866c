//! `handover run` as a child process against the mock gateway: `raw` commands are checked
//! against the opcodes a client may send, and a refused one is an `error` line that leaves the
//! connection alone.

mod cli_common;

use cli_common::{TOKEN, mock_config, spawn};
use handover_mock::MockServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_opcodes_a_client_may_not_send_are_refused_and_the_connection_is_kept() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let mut run = spawn(
        &["run", "--api-base", &api, "--drain-timeout-ms", "500"],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    let ready = run.expect_type("ready").await;
    let session = ready["session_id"].as_str().unwrap().to_owned();

    // An opcode Discord does not define, one only the gateway sends, and the lifecycle's own.
    let refused = [
        (
            r#"{"op":"raw","payload":{"op":99,"d":null},"id":"unknown"}"#,
            "unknown",
            "raw op 99 refused: not an opcode a client may send (3, 4, 8, 31 or 43)",
        ),
        (
            r#"{"op":"raw","payload":{"op":11,"d":null},"id":"ack"}"#,
            "ack",
            "raw op 11 refused: not an opcode a client may send (3, 4, 8, 31 or 43)",
        ),
        (
            r#"{"op":"raw","payload":{"op":1,"d":null},"id":"beat"}"#,
            "beat",
            "raw op 1 refused: heartbeat, identify and resume are sent by the shard itself",
        ),
        (
            r#"{"op":"raw","payload":{"op":2,"d":{"token":"x"}},"id":"identify"}"#,
            "identify",
            "raw op 2 refused: heartbeat, identify and resume are sent by the shard itself",
        ),
        (
            r#"{"op":"request_guild_members","guild_id":"1","id":"members"}"#,
            "members",
            "invalid command: request guild members needs a query or user ids",
        ),
    ];
    for (number, (line, id, message)) in refused.iter().enumerate() {
        run.send(line).await;
        let err = run.expect_type("error").await;
        assert_eq!(
            err,
            json!({"type": "error", "line": number + 1, "id": id, "error": message}),
            "{line}"
        );
    }

    // Valid commands after them still go out on the same connection.
    run.send(
        r#"{"op":"raw","payload":{"op":43,"d":{"guild_id":"1","fields":["status"]}},"id":"info"}"#,
    )
    .await;
    let ok = run.expect_type("ok").await;
    assert_eq!(ok["id"], "info", "{ok}");
    run.send(r#"{"op":"presence","status":"idle","id":"presence"}"#)
        .await;
    let ok = run.expect_type("ok").await;
    assert_eq!(ok["id"], "presence", "{ok}");
    assert_eq!(gw.dispatch(0, "MESSAGE_CREATE", &json!({"n": 1})), 1);
    let ev = run.expect_type("dispatch").await;
    assert_eq!(ev["data"], json!({"n": 1}));

    run.send(r#"{"op":"status","id":"s"}"#).await;
    let status = run.expect_type("status").await;
    let shard = &status["shards"][0];
    assert_eq!(shard["phase"], "receiving", "{status}");
    assert_eq!(shard["session_id"], session.as_str());
    assert_eq!(
        (shard["identifies"].as_u64(), shard["resumes"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(shard["last_close_code"].is_null(), "{status}");

    // The shard stayed identified on its one socket throughout.
    assert!(
        !run.stdout().contains("socket_closed"),
        "a socket closed:\n{}",
        run.stdout()
    );
    let c = gw.counters();
    assert_eq!(c.connections_accepted, 1);
    assert_eq!(c.live_sockets, 1);
    let s0 = c.shard(0);
    assert_eq!(s0.server_closes, Vec::<u16>::new());
    assert_eq!((s0.identifies, s0.resumes_ok), (1, 0));

    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
}
