//! The proxy's tokio shell against the mock gateway, with a bare WebSocket client:
//! `GET /api/v10/gateway/bot` on the gateway's port, and a client that stops reading is closed
//! resumable without slowing another client of the shard.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handover_mock::{DEFAULT_TOKEN, MockServer};
use handover_proxy::server::Proxy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn start(client_queue: usize) -> (MockServer, Proxy, String) {
    start_with(client_queue, None).await
}

async fn start_with(client_queue: usize, heartbeat_ms: Option<u64>) -> (MockServer, Proxy, String) {
    common::start(|config| {
        config.client_queue = client_queue;
        if let Some(ms) = heartbeat_ms {
            config.hub.heartbeat_interval_ms = ms;
            config.hub.heartbeat_grace_ms = ms;
        }
    })
    .await
}

async fn http_get(addr: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(response).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bot_is_answered_on_the_gateway_port() {
    let (mock, proxy, url) = start(1024).await;
    let addr = url.trim_start_matches("ws://");
    let (status, body) = http_get(addr, "/api/v10/gateway/bot", Some("Bot mock-token")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], url.as_str());
    assert_eq!(body["shards"], 1);
    assert!(body["session_start_limit"]["max_concurrency"].as_u64() >= Some(1));
    let (status, _) = http_get(addr, "/api/v10/gateway/bot", Some("Bot wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = http_get(addr, "/api/v10/gateway/bot", None).await;
    assert_eq!(status, 401);
    let (status, body) = http_get(addr, "/api/v10/gateway", None).await;
    assert_eq!((status, body["url"].as_str()), (200, Some(url.as_str())));
    let (status, _) = http_get(addr, "/elsewhere", None).await;
    assert_eq!(status, 404);
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("nothing from the proxy within 10 s")?;
        match message {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(frame)) => {
                return Some(json!({ "close": frame.map(|f| u16::from(f.code)) }));
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

async fn connect(url: &str, payload: Value) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/?v=10&encoding=json"))
        .await
        .unwrap();
    let hello = next_json(&mut ws).await.unwrap();
    assert_eq!(hello["op"], 10);
    ws.send(Message::text(payload.to_string())).await.unwrap();
    let first = next_json(&mut ws).await.unwrap();
    (ws, first)
}

fn identify() -> Value {
    json!({"op": 2, "d": {"token": DEFAULT_TOKEN, "intents": 1, "shard": [0, 1],
        "properties": {"os": "linux", "browser": "test", "device": "test"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_resumable_and_never_slows_another() {
    const EVENTS: u64 = 3000;
    const CHUNK: u64 = 50;
    let (mock, proxy, url) = start(64).await;
    let (mut fast, ready) = connect(&url, identify()).await;
    assert_eq!(ready["t"], "READY");
    let (slow, slow_ready) = connect(&url, identify()).await;
    let slow_session = slow_ready["d"]["session_id"].as_str().unwrap().to_owned();
    // 8 KiB per event, 24 MB in all: more than the loopback socket buffers and the client
    // queue hold for the client that does not read. Dispatched in chunks the fast client
    // reads before the next one, so its queue never holds more than a chunk.
    let padding = "x".repeat(8192);
    let mock_handle = mock.handle();
    let mut expected = 1;
    for chunk in 0..EVENTS / CHUNK {
        for n in chunk * CHUNK + 1..=(chunk + 1) * CHUNK {
            mock_handle.dispatch(0, "E", &json!({ "n": n, "pad": padding }));
        }
        while expected <= (chunk + 1) * CHUNK {
            let v = next_json(&mut fast)
                .await
                .expect("the fast client was closed");
            assert!(v.get("close").is_none(), "the fast client was closed: {v}");
            if v["t"] == "E" {
                assert_eq!(v["d"]["n"], expected);
                expected += 1;
            }
        }
    }
    assert!(
        proxy.handle().stats().lagged >= 1,
        "the slow client was closed"
    );
    drop(slow);
    // It resumes from READY's seq: every event, from the buffer.
    let resume =
        json!({"op": 6, "d": {"token": DEFAULT_TOKEN, "session_id": slow_session, "seq": 1}});
    let (mut again, first) = connect(&url, resume).await;
    assert_eq!(first["d"]["n"], 1, "{first}");
    let mut n = 1;
    loop {
        let v = next_json(&mut again).await.unwrap();
        if v["t"] == "RESUMED" {
            break;
        }
        n += 1;
        assert_eq!(v["d"]["n"], n);
    }
    assert_eq!(n, EVENTS);
    let counters = mock.handle().counters();
    assert_eq!(counters.shard(0).identifies, 1);
    assert_eq!(counters.connections_accepted, 1);
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_go_upstream_within_the_shared_budget() {
    let (mock, proxy, url) = start(1024).await;
    let (mut ws, ready) = connect(&url, identify()).await;
    assert_eq!(ready["t"], "READY");
    let presence =
        json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": false}});
    for _ in 0..3 {
        ws.send(Message::text(presence.to_string())).await.unwrap();
    }
    let handle = proxy.handle();
    for _ in 0..500 {
        if handle.stats().forwarded == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.stats().forwarded, 3);
    // Far over 120 a minute: the runtime's limiter refuses the rest before the mock sees
    // them, and the client is closed with 4008 as Discord would.
    for _ in 0..150 {
        if ws.send(Message::text(presence.to_string())).await.is_err() {
            break;
        }
    }
    let close = loop {
        match next_json(&mut ws).await {
            Some(v) if v.get("close").is_some() => break v["close"].clone(),
            Some(_) => continue,
            None => panic!("no close frame"),
        }
    };
    assert_eq!(close, 4008);
    let stats = handle.stats();
    assert!(stats.commands_refused >= 1, "{stats:?}");
    assert!(stats.forwarded < 120, "{stats:?}");
    let counters = mock.handle().counters();
    assert_eq!(
        counters.connections_accepted, 1,
        "the upstream was never closed for its rate"
    );
    assert!(counters.shard(0).server_closes.is_empty());
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

/// Decoders of both transport compressions; `next` reads one payload with the one in use.
struct Decoders {
    zlib: bool,
    zlib_stream: handover_protocol::ZlibStreamDecoder,
    zstd_stream: handover_protocol::ZstdStreamDecoder,
}

impl Decoders {
    fn new(compress: &str) -> Decoders {
        Decoders {
            zlib: compress == "zlib-stream",
            zlib_stream: handover_protocol::ZlibStreamDecoder::new(1 << 20),
            zstd_stream: handover_protocol::ZstdStreamDecoder::new(1 << 20).unwrap(),
        }
    }

    async fn next(&mut self, ws: &mut Ws) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("nothing in time")
                .expect("closed")
                .unwrap();
            let b = match m {
                Message::Binary(b) => b,
                Message::Text(t) => panic!("a text frame on a compressed connection: {t}"),
                _ => continue,
            };
            let text = if self.zlib {
                match self.zlib_stream.push(&b).unwrap() {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                self.zstd_stream.push(&b).unwrap()
            };
            return serde_json::from_slice(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_stream_and_zstd_stream_are_served_when_asked_for() {
    let (mock, proxy, url) = start(1024).await;
    for compress in ["zlib-stream", "zstd-stream"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "{url}/?v=10&encoding=json&compress={compress}"
        ))
        .await
        .unwrap();
        let mut decoders = Decoders::new(compress);
        assert_eq!(decoders.next(&mut ws).await["op"], 10, "{compress}");
        ws.send(Message::text(identify().to_string()))
            .await
            .unwrap();
        assert_eq!(decoders.next(&mut ws).await["t"], "READY", "{compress}");
        mock.handle()
            .dispatch(0, "E", &json!({ "compress": compress }));
        let event = decoders.next(&mut ws).await;
        assert_eq!(event["d"]["compress"], compress);
    }
    let refused =
        tokio_tungstenite::connect_async(format!("{url}/?v=10&encoding=json&compress=gzip")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

async fn http_text(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(response).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    (status, text.split_once("\r\n\r\n").unwrap().1.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_show_each_client_session() {
    let (mock, proxy, url) = start(1024).await;
    let addr = url.trim_start_matches("ws://").to_owned();
    let (mut ws, ready) = connect(&url, identify()).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        mock.handle().dispatch(0, "E", &json!({ "n": n }));
    }
    let mut got = 0;
    while got < 3 {
        if next_json(&mut ws).await.unwrap()["t"] == "E" {
            got += 1;
        }
    }
    let (status, body) = http_text(&addr, "/status").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stats"]["identifies"], 1);
    assert_eq!(v["shards"][0]["buffered"], 3);
    assert_eq!(v["upstream"][0]["live_sockets"], 1);
    let s = &v["sessions"][0];
    assert_eq!(s["session_id"], session.as_str());
    assert_eq!(
        (s["connected"].as_bool(), s["seq"].as_u64()),
        (Some(true), Some(4))
    );
    assert!(!body.contains(DEFAULT_TOKEN), "the token never shows");
    drop(ws);
    let handle = proxy.handle();
    for _ in 0..500 {
        if handle.stats().clients == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.stats().clients, 0, "the proxy saw the client go");
    mock.handle().dispatch(0, "E", &json!({ "n": 4 }));
    for _ in 0..500 {
        let st = handle.status();
        if st.sessions[0].client.is_none() && st.sessions[0].behind == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, metrics) = http_text(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("handover_proxy_identifies_total 1"),
        "{metrics}"
    );
    let line = format!("handover_proxy_session_behind{{shard=\"0\",session=\"{session}\"}} 1");
    assert!(metrics.contains(&line), "{metrics}");
    let line = format!("handover_proxy_session_connected{{shard=\"0\",session=\"{session}\"}} 0");
    assert!(metrics.contains(&line), "{metrics}");
    // The upstream shard's own metrics, as `handover run --http` renders them.
    for line in [
        "handover_shard_phase{shard=\"0\",phase=\"receiving\"} 1\n",
        "handover_shard_identifies_total{shard=\"0\"} 1\n",
        // READY and the four dispatches.
        "handover_shard_events_received_total{shard=\"0\"} 5\n",
        "handover_shard_live_sockets{shard=\"0\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_heartbeating_is_closed_resumable() {
    let (mock, proxy, url) = start_with(1024, Some(100)).await;
    let (mut quiet, ready) = connect(&url, identify()).await;
    assert_eq!(ready["t"], "READY");
    let (mut beating, _) = connect(&url, identify()).await;
    // The beating client heartbeats every 50 ms while the quiet one says nothing; bounded at
    // 10 s.
    let mut rounds = 0;
    let close = loop {
        rounds += 1;
        assert!(rounds < 200, "the quiet client was never closed");
        beating
            .send(Message::text(json!({"op": 1, "d": null}).to_string()))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(50), quiet.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(close, Some(4000));
    // The other client is still served.
    mock.handle().dispatch(0, "E", &json!({ "n": 1 }));
    loop {
        let v = next_json(&mut beating).await.expect("still open");
        assert!(v.get("close").is_none(), "{v}");
        if v["t"] == "E" {
            break;
        }
    }
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_chunks_go_back_to_the_client_that_asked_even_with_the_same_nonce() {
    let (mock, proxy, url) = start(1024).await;
    let (mut a, ready_a) = connect(&url, identify()).await;
    let (mut b, ready_b) = connect(&url, identify()).await;
    assert_eq!(
        (ready_a["t"].as_str(), ready_b["t"].as_str()),
        (Some("READY"), Some("READY"))
    );
    let request =
        json!({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0, "nonce": "same"}});
    let handle = proxy.handle();
    // One at a time, so the proxy's nonces are handover-1 (a) and handover-2 (b).
    for (n, ws) in [(1, &mut a), (2, &mut b)] {
        ws.send(Message::text(request.to_string())).await.unwrap();
        for _ in 0..500 {
            if handle.stats().forwarded == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handle.stats().forwarded, n);
    }
    let chunk = |nonce: &str| json!({"guild_id": "1", "members": [], "chunk_index": 0, "chunk_count": 1, "nonce": nonce});
    mock.handle()
        .dispatch(0, "GUILD_MEMBERS_CHUNK", &chunk("handover-2"));
    mock.handle()
        .dispatch(0, "GUILD_MEMBERS_CHUNK", &chunk("handover-1"));
    mock.handle().dispatch(0, "E", &json!({"n": 1}));
    for ws in [&mut a, &mut b] {
        let got = next_json(ws).await.unwrap();
        assert_eq!(got["t"], "GUILD_MEMBERS_CHUNK", "{got}");
        assert_eq!(got["d"]["nonce"], "same", "the client's own nonce: {got}");
        // Its own seq: READY was 1, the chunk is 2, the next event 3 (the other client's
        // chunk took none of its seqs).
        assert_eq!(got["s"], 2, "{got}");
        let next = next_json(ws).await.unwrap();
        assert_eq!(
            (next["t"].as_str(), next["s"].as_u64()),
            (Some("E"), Some(3)),
            "{next}"
        );
    }
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_ping_and_close_are_answered_as_the_rfc_asks() {
    let (mock, proxy, url) = start(1024).await;
    let (mut ws, ready) = connect(&url, identify()).await;
    assert_eq!(ready["t"], "READY");
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    // Bounded: the pong comes within a few frames (GUILD_CREATEs may come first).
    let mut pong = None;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => {
                pong = Some(payload);
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong: {other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"still there?"[..]));
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4321.into(),
        reason: "".into(),
    }))
    .await
    .unwrap();
    // The proxy answers with the client's code, then ends the stream.
    let mut answered = None;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                answered = Some(frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("the close handshake broke: {e}"),
            Err(_) => panic!("the proxy neither answered nor ended the stream"),
        }
    }
    assert_eq!(answered, Some(Some(4321)));
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}
