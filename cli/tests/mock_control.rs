//! The control lines of `handover mock-gateway` (the function its stdin loop calls), against a
//! mock serving two bots over real loopback sockets: which bot a line targets, and the default.

#[path = "../../mock/tests/mock_util/mod.rs"]
mod mock_util;

use handover_cli::mock_gateway::control;
use handover_mock::{MockConfig, bot_user_id};
use mock_util::{Client, QUIET, fast_config, start};
use serde_json::{Value, json};

async fn identified_as(url: &str, token: &str) -> (Client, Value) {
    let (mut c, _) = Client::hello(url).await;
    c.send_identify(token, [0, 1], 513).await;
    let ready = c.expect_dispatch("READY").await;
    (c, ready["d"].clone())
}

async fn nothing_more(c: &mut Client) {
    let next = c.recv_within(QUIET).await;
    assert!(next.is_none(), "unexpected {next:?}");
}

#[tokio::test]
async fn control_lines_target_one_bot_by_token_or_id_and_every_bot_by_default() {
    let mock = start(MockConfig {
        tokens: vec!["secret-a".into(), "secret-b".into()],
        ..fast_config()
    })
    .await;
    let handle = mock.handle();
    let url = mock.url();
    let (mut a, ready_a) = identified_as(&url, "secret-a").await;
    let (mut b, ready_b) = identified_as(&url, "secret-b").await;
    assert_eq!(ready_a["user"]["id"], bot_user_id(0).to_string());
    assert_eq!(ready_b["user"]["id"], bot_user_id(1).to_string());
    assert_eq!(ready_b["application"]["id"], "1000000000000000001");

    // No target: every bot.
    let answer = control(&handle, r#"{"op":"dispatch","event":"E","data":{"n":1}}"#);
    assert_eq!(answer, json!({"type": "dispatched", "written": 2}));
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_dispatch("E").await["d"], json!({"n": 1}));
    }

    // One bot, named four ways; the other hears nothing.
    let one_bot = [
        (r#""token":1"#, 1),
        (r#""token":"secret-a""#, 0),
        (r#""bot":"1000000000000000001""#, 1),
        (r#""bot":1000000000000000000"#, 0),
        (r#""token":1,"bot":"1000000000000000001""#, 1),
    ];
    for (n, (target, bot)) in one_bot.into_iter().enumerate() {
        let line = format!(r#"{{"op":"dispatch",{target},"event":"E","data":{{"n":{n}}}}}"#);
        assert_eq!(
            control(&handle, &line),
            json!({"type": "dispatched", "written": 1}),
            "{line}"
        );
        let (to, other) = if bot == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(
            to.expect_dispatch("E").await["d"],
            json!({ "n": n }),
            "{line}"
        );
        nothing_more(other).await;
    }

    // Streams: one per bot without a target.
    let answer = control(
        &handle,
        r#"{"op":"stream","event":"S","count":3,"every_ms":1}"#,
    );
    assert_eq!(answer["type"], "streaming");
    assert_eq!(
        answer["streams"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            c.expect_dispatch("S").await;
        }
    }
    let answer = control(
        &handle,
        r#"{"op":"stream","token":0,"event":"S","count":2}"#,
    );
    assert_eq!(
        answer["streams"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    a.expect_dispatch("S").await;
    a.expect_dispatch("S").await;
    nothing_more(&mut b).await;

    // Faults: a bot's sockets, a shard of every bot, every socket.
    let answer = control(
        &handle,
        r#"{"op":"fault","token":1,"fault":"request_heartbeat"}"#,
    );
    assert_eq!(answer, json!({"type": "injected", "hit": 1}));
    b.expect_op(1).await;
    nothing_more(&mut a).await;
    let answer = control(
        &handle,
        r#"{"op":"fault","shard":0,"fault":"request_heartbeat"}"#,
    );
    assert_eq!(answer, json!({"type": "injected", "hit": 2}));
    let answer = control(
        &handle,
        r#"{"op":"fault","bot":"1000000000000000000","shard":0,"fault":"request_heartbeat"}"#,
    );
    assert_eq!(answer, json!({"type": "injected", "hit": 1}));
    let (mut unidentified, _) = Client::hello(&url).await;
    let answer = control(&handle, r#"{"op":"fault","fault":"request_heartbeat"}"#);
    assert_eq!(answer, json!({"type": "injected", "hit": 3}));
    unidentified.expect_op(1).await;

    // Targets that name no accepted bot are refused without quoting a token.
    for line in [
        r#"{"op":"dispatch","token":2}"#,
        r#"{"op":"dispatch","token":-1}"#,
        r#"{"op":"dispatch","token":"secret-c"}"#,
        r#"{"op":"dispatch","bot":"42"}"#,
        r#"{"op":"dispatch","bot":true}"#,
        r#"{"op":"dispatch","token":0,"bot":"1000000000000000001"}"#,
    ] {
        let answer = control(&handle, line);
        assert_eq!(answer["type"], "error", "{line}: {answer}");
        assert!(!answer.to_string().contains("secret"), "{answer}");
    }

    let counters = control(&handle, r#"{"op":"counters"}"#);
    assert_eq!(counters["shards"]["0/0"]["identifies"], 1, "{counters}");
    assert_eq!(counters["shards"]["1/0"]["identifies"], 1, "{counters}");
    assert!(!counters.to_string().contains("secret"));
}
