//! The mock's transport surface: one-line start on loopback, transport compression, the HTTP
//! API on the same port, URL parameters, seeded determinism and shutdown.

mod mock_util;

use handover_mock::{MockConfig, MockServer, SessionStartLimit};
use mock_util::{Client, Frame, TOKEN, WAIT, fast_config, http_get, identified, start};
use serde_json::json;

const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[tokio::test]
async fn starts_in_one_line_on_a_loopback_port() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    assert!(mock.url().starts_with("ws://127.0.0.1:"), "{}", mock.url());
    assert_ne!(mock.addr().port(), 0);
    assert!(mock.addr().ip().is_loopback());
    assert_eq!(mock.http_base(), format!("http://{}", mock.addr()));
    let (_c, hello) = Client::hello(&mock.url()).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 41_250);
}

#[tokio::test]
async fn zlib_stream_compresses_every_message_with_one_context() {
    let mock = start(fast_config()).await;
    let mut c = Client::connect_query(&mock.url(), "v=10&encoding=json&compress=zlib-stream").await;
    c.expect_op(10).await;
    c.identify([0, 1]).await;
    for i in 0..3 {
        mock.handle().dispatch(
            0,
            "MESSAGE_CREATE",
            &json!({ "content": "hello hello hello", "i": i }),
        );
        assert_eq!(c.expect_dispatch("MESSAGE_CREATE").await["d"]["i"], i);
    }
    c.heartbeat().await;
    c.expect_op(11).await;
    assert_eq!(c.raw.len(), 6, "every message arrived as a binary frame");
    assert_eq!(c.raw[0][0], 0x78, "the stream starts with a zlib header");
    for frame in &c.raw {
        assert!(frame.ends_with(&ZLIB_SUFFIX));
    }
    // A later message cannot be inflated on its own: the context is shared.
    let mut fresh = flate2::Decompress::new(true);
    let mut out = Vec::with_capacity(4096);
    let alone = fresh.decompress_vec(&c.raw[3], &mut out, flate2::FlushDecompress::Sync);
    assert!(alone.is_err() || out.is_empty());
}

#[tokio::test]
async fn zstd_stream_compresses_every_message_in_one_frame() {
    let mock = start(fast_config()).await;
    let mut c = Client::connect_query(&mock.url(), "v=10&encoding=json&compress=zstd-stream").await;
    c.expect_op(10).await;
    c.identify([0, 1]).await;
    mock.handle()
        .dispatch(0, "MESSAGE_CREATE", &json!({ "content": "zstd" }));
    assert_eq!(
        c.expect_dispatch("MESSAGE_CREATE").await["d"]["content"],
        "zstd"
    );
    assert_eq!(c.raw.len(), 3);
    assert!(c.raw[0].starts_with(&ZSTD_MAGIC));
    assert!(
        !c.raw[1].starts_with(&ZSTD_MAGIC),
        "one frame per connection"
    );
    assert!(!c.raw[2].starts_with(&ZSTD_MAGIC));
}

#[tokio::test]
async fn gateway_bot_answers_on_the_same_port_and_checks_the_token() {
    let mock = start(MockConfig {
        shards: 3,
        session_start: SessionStartLimit {
            total: 1000,
            remaining: 999,
            reset_after: std::time::Duration::from_secs(60),
            max_concurrency: 2,
        },
        ..fast_config()
    })
    .await;
    let (status, body) = http_get(
        mock.addr(),
        "/api/v10/gateway/bot",
        Some(&format!("Bot {TOKEN}")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["url"], mock.url());
    assert_eq!(body["shards"], 3);
    let limit = &body["session_start_limit"];
    assert_eq!(
        (limit["total"].clone(), limit["remaining"].clone()),
        (json!(1000), json!(999))
    );
    assert_eq!(limit["max_concurrency"], 2);
    let reset_after = limit["reset_after"].as_u64().unwrap();
    assert!(reset_after > 0 && reset_after <= 60_000, "{reset_after}");

    for auth in [None, Some("Bot wrong"), Some(TOKEN)] {
        let (status, body) = http_get(mock.addr(), "/api/v10/gateway/bot", auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body, json!({ "message": "401: Unauthorized", "code": 0 }));
    }
    let (status, body) = http_get(mock.addr(), "/api/v10/gateway", None).await;
    assert_eq!((status, body), (200, json!({ "url": mock.url() })));
    let (status, body) = http_get(mock.addr(), "/api/v10/users/@me", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "404: Not Found");
    assert_eq!(mock.handle().counters().http_requests, 6);
}

#[tokio::test]
async fn unsupported_url_parameters_are_refused_with_close_codes() {
    let mock = start(fast_config()).await;
    for (query, code) in [
        ("v=9&encoding=json", 4012),
        ("v=10&encoding=etf", 4002),
        ("v=10&encoding=json&compress=gzip", 4002),
    ] {
        let mut c = Client::connect_query(&mock.url(), query).await;
        assert_eq!(c.expect_close().await, Some(code), "{query}");
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_sessions() {
    async fn sessions(seed: u64) -> Vec<String> {
        let mock = start(MockConfig {
            seed,
            identify_window: std::time::Duration::ZERO,
            ..fast_config()
        })
        .await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (_c, sid) = identified(&mock.url(), [0, 1]).await;
            ids.push(sid);
        }
        ids
    }
    let a = sessions(9).await;
    assert_eq!(a, sessions(9).await);
    assert_ne!(a, sessions(10).await);
}

#[tokio::test]
async fn mocks_with_default_settings_hand_out_different_session_ids() {
    let a = start(MockConfig::default()).await;
    let b = start(MockConfig::default()).await;
    assert_ne!(a.handle().config().seed, b.handle().config().seed);
    let (_ca, sa) = identified(&a.url(), [0, 1]).await;
    let (_cb, sb) = identified(&b.url(), [0, 1]).await;
    assert_ne!(sa, sb);
}

#[tokio::test]
async fn shutdown_closes_every_socket() {
    let mock = start(fast_config()).await;
    let handle = mock.handle();
    let (mut a, _) = identified(&mock.url(), [0, 1]).await;
    let (mut b, _) = Client::hello(&mock.url()).await;
    mock.shutdown().await;
    assert_eq!(a.recv().await, Frame::Eof);
    assert_eq!(b.recv().await, Frame::Eof);
    let counters = handle.counters();
    assert_eq!(counters.live_sockets, 0);
    assert_eq!(counters.shard(0).live_sockets, 0);
    // The handle stays usable and harmless.
    assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &json!({})), 0);
}

#[tokio::test]
async fn dropping_the_server_closes_every_socket() {
    let mock = start(fast_config()).await;
    let (mut a, _) = identified(&mock.url(), [0, 1]).await;
    let addr = mock.addr();
    drop(mock);
    assert_eq!(a.recv().await, Frame::Eof);
    let refused = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect attempt in time");
    assert!(refused.is_err(), "the listener is gone");
}
