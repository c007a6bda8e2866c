//! `handover proxy` refuses what cannot work before it starts anything.

use std::process::Command;

fn proxy(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover"));
    cmd.arg("proxy").args(args).env_remove("HANDOVER_TOKEN");
    if let Some(t) = token {
        cmd.env("HANDOVER_TOKEN", t);
    }
    cmd.output().unwrap()
}

#[test]
fn a_non_loopback_listen_address_needs_the_explicit_flag() {
    let out = proxy(
        &["--listen", "0.0.0.0:0", "--gateway-url", "ws://127.0.0.1:9"],
        Some("cli-proxy-token"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen-allow-remote"), "{stderr}");
    assert!(!stderr.contains("cli-proxy-token"), "the token never shows");
}

#[test]
fn the_token_comes_from_the_environment() {
    let out = proxy(&["--listen", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HANDOVER_TOKEN"));
    let out = proxy(&["--gateway-url", "ws://127.0.0.1:9"], Some("t"));
    assert_eq!(out.status.code(), Some(2), "--listen is required");
}

mod cli_common;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(cli_common::WAIT, ws.next())
            .await
            .expect("nothing from the proxy in time")
            .expect("the proxy closed the connection")
            .unwrap();
        if let Message::Text(t) = message {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// `handover proxy` on a free loopback port in front of the mock at `gateway`, with `extra`
/// flags; returns it with its `listening` line.
async fn start_proxy(gateway: &str, extra: &[&str]) -> (cli_common::Handover, Value) {
    let mut args = vec!["proxy", "--listen", "0", "--gateway-url", gateway];
    args.extend_from_slice(extra);
    let mut proxy = cli_common::spawn(&args, &[("HANDOVER_TOKEN", cli_common::TOKEN)]);
    let listening = proxy.expect_type("listening").await;
    (proxy, listening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_a_client_in_front_of_the_mock_and_drains_on_sigterm() {
    let mock = handover_mock::MockServer::start(cli_common::mock_config())
        .await
        .unwrap();
    let (mut proxy, listening) = start_proxy(&mock.url(), &["--drain-timeout-ms", "500"]).await;
    let proxy_url = listening["url"].as_str().unwrap().to_owned();
    assert_eq!(listening["total"], 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{proxy_url}/?v=10&encoding=json"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["op"], 10);
    let identify = json!({"op": 2, "d": {"token": format!("Bot {}", cli_common::TOKEN),
        "intents": 513, "properties": {"os": "linux", "browser": "t", "device": "t"}}});
    ws.send(Message::text(identify.to_string())).await.unwrap();
    let ready = next_json(&mut ws).await;
    assert_eq!(ready["t"], "READY", "{ready}");
    assert_eq!(ready["d"]["resume_gateway_url"], proxy_url.as_str());
    mock.handle().dispatch(
        0,
        "MESSAGE_CREATE",
        &json!({ "content": "through the proxy", "guild_id": "1" }),
    );
    let event = loop {
        let v = next_json(&mut ws).await;
        if v["t"] == "MESSAGE_CREATE" {
            break v;
        }
    };
    assert_eq!(event["d"]["content"], "through the proxy");
    assert_eq!(event["s"], ready["s"].as_u64().unwrap() + 1);
    proxy.signal("TERM");
    let status = proxy.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        !proxy.stderr().contains(cli_common::TOKEN),
        "the token never shows"
    );
    let shard = mock.handle().counters().shard(0);
    assert_eq!(shard.identifies, 1);
    mock.shutdown().await;
}

#[test]
fn an_unknown_cache_kind_is_refused_by_name() {
    let out = proxy(
        &[
            "--listen",
            "0",
            "--gateway-url",
            "ws://127.0.0.1:9",
            "--cache",
            "channels,rolez",
        ],
        Some("cli-proxy-token"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rolez"), "{stderr}");
}

/// Connects to the proxy, identifies, and returns the socket after READY.
async fn identified(
    proxy_url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{proxy_url}/?v=10&encoding=json"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["op"], 10);
    let identify = json!({"op": 2, "d": {"token": cli_common::TOKEN,
        "intents": 513, "properties": {"os": "linux", "browser": "t", "device": "t"}}});
    ws.send(Message::text(identify.to_string())).await.unwrap();
    let ready = next_json(&mut ws).await;
    assert_eq!(ready["t"], "READY", "{ready}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keeps_only_the_kinds_the_operator_names() {
    let mock = handover_mock::MockServer::start(cli_common::mock_config())
        .await
        .unwrap();
    let (mut proxy, listening) = start_proxy(&mock.url(), &["--cache", "channels"]).await;
    let proxy_url = listening["url"].as_str().unwrap().to_owned();
    let mut first = identified(&proxy_url).await;
    let guild = json!({
        "id": "77", "name": "cached guild", "unavailable": false, "member_count": 1,
        "channels": [{"id": "78", "type": 0, "name": "general", "guild_id": "77"}],
        "roles": [{"id": "77", "name": "@everyone", "permissions": "0", "position": 0}],
        "members": [], "threads": [], "emojis": [], "stickers": [], "voice_states": [],
        "presences": [], "stage_instances": [], "guild_scheduled_events": [],
        "soundboard_sounds": []
    });
    mock.handle().dispatch(0, "GUILD_CREATE", &guild);
    mock.handle().dispatch(
        0,
        "MESSAGE_CREATE",
        &json!({ "content": "marker", "guild_id": "77" }),
    );
    // Events reach a client in order: once the marker is here, the cache holds the guild.
    loop {
        let v = next_json(&mut first).await;
        if v["t"] == "MESSAGE_CREATE" {
            break;
        }
    }
    let mut second = identified(&proxy_url).await;
    let created = loop {
        let v = next_json(&mut second).await;
        if v["t"] == "GUILD_CREATE" {
            break v;
        }
    };
    assert_eq!(created["d"]["id"], "77");
    assert_eq!(created["d"]["name"], "cached guild");
    assert_eq!(created["d"]["channels"][0]["name"], "general", "{created}");
    assert_eq!(
        created["d"]["roles"],
        json!([]),
        "roles are not cached: {created}"
    );
    proxy.signal("TERM");
    let status = proxy.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert_eq!(mock.handle().counters().shard(0).identifies, 1);
    mock.shutdown().await;
}
