//! A raw WebSocket client for driving the mock gateway over real loopback sockets.
//!
//! Every receive is bounded by [`WAIT`]; absence checks use the short [`QUIET`] window.
//!
//! The cli crate's tests include this same file (`#[path]`), so there is one copy.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handover_mock::{MockConfig, MockServer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything we expect to happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long we watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub const TOKEN: &str = handover_mock::DEFAULT_TOKEN;

/// Short intervals and windows so every test runs in milliseconds.
pub fn fast_config() -> MockConfig {
    MockConfig {
        heartbeat_interval: Duration::from_millis(1000),
        heartbeat_grace: None,
        resume_window: Duration::from_secs(30),
        identify_window: Duration::from_millis(100),
        close_timeout: Duration::from_secs(2),
        seed: 42,
        ..MockConfig::default()
    }
}

pub async fn start(config: MockConfig) -> MockServer {
    MockServer::start(config).await.expect("mock starts")
}

/// What the client saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A JSON payload (decompressed if the connection is compressed).
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// A binary frame that could not be decoded.
    Binary(Vec<u8>),
    /// A close frame (code, if any).
    Close(Option<u16>),
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// The TCP stream ended without a close frame.
    Eof,
}

enum Inflate {
    None,
    Zlib(flate2::Decompress),
    Zstd(zstd::stream::raw::Decoder<'static>),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    inflate: Inflate,
    /// Raw binary frames as received (for compression checks).
    pub raw: Vec<Vec<u8>>,
    pub last_seq: Option<u64>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_query(url, "v=10&encoding=json").await
    }

    pub async fn connect_query(url: &str, query: &str) -> Client {
        let full = format!("{url}/?{query}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(full))
            .await
            .expect("connect in time")
            .expect("connect");
        let inflate = if query.contains("compress=zlib-stream") {
            Inflate::Zlib(flate2::Decompress::new(true))
        } else if query.contains("compress=zstd-stream") {
            Inflate::Zstd(zstd::stream::raw::Decoder::new().expect("zstd decoder"))
        } else {
            Inflate::None
        };
        Client {
            ws,
            inflate,
            raw: Vec::new(),
            last_seq: None,
        }
    }

    /// Connect with a small, fixed TCP receive buffer (no autotuning), so a client that stops
    /// reading pushes back on the server quickly.
    pub async fn connect_small_buffer(url: &str) -> Client {
        let addr = url.trim_start_matches("ws://");
        let addr: std::net::SocketAddr = addr.parse().expect("loopback address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(32 * 1024).expect("rcvbuf");
        let tcp = socket.connect(addr).await.expect("tcp connect");
        let full = format!("{url}/?v=10&encoding=json");
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(full, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        Client {
            ws,
            inflate: Inflate::None,
            raw: Vec::new(),
            last_seq: None,
        }
    }

    /// Connect and read HELLO.
    pub async fn hello(url: &str) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        let hello = c.expect_op(10).await;
        (c, hello)
    }

    fn decode(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        match &mut self.inflate {
            Inflate::None => Some(bytes.to_vec()),
            Inflate::Zlib(d) => {
                let mut out = Vec::with_capacity(bytes.len() * 4 + 1024);
                let mut consumed = 0usize;
                loop {
                    let before = d.total_in();
                    d.decompress_vec(&bytes[consumed..], &mut out, flate2::FlushDecompress::Sync)
                        .ok()?;
                    consumed += usize::try_from(d.total_in() - before).ok()?;
                    if consumed == bytes.len() && out.len() < out.capacity() {
                        return Some(out);
                    }
                    out.reserve(out.capacity().max(1024));
                }
            }
            Inflate::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut out = vec![0u8; bytes.len() * 8 + 4096];
                let mut input = InBuffer::around(bytes);
                let mut written = 0;
                loop {
                    let mut output = OutBuffer::around(&mut out[written..]);
                    d.run(&mut input, &mut output).ok()?;
                    written += output.pos();
                    if input.pos() == bytes.len() && written < out.len() {
                        out.truncate(written);
                        return Some(out);
                    }
                    out.resize(out.len() * 2, 0);
                }
            }
        }
    }

    /// The next frame, within [`WAIT`].
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(WAIT)
            .await
            .expect("a frame within the wait bound")
    }

    /// The next frame, or `None` if nothing arrived within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Frame> {
        let next = tokio::time::timeout(within, self.ws.next()).await.ok()?;
        Some(match next {
            None | Some(Err(_)) => Frame::Eof,
            Some(Ok(Message::Text(t))) => self.parse(t.as_bytes().to_vec(), true),
            Some(Ok(Message::Binary(b))) => {
                self.raw.push(b.to_vec());
                match self.decode(&b) {
                    Some(plain) => self.parse(plain, false),
                    None => Frame::Binary(b.to_vec()),
                }
            }
            Some(Ok(Message::Close(f))) => Frame::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_))) => Frame::Ping,
            Some(Ok(Message::Pong(_))) => Frame::Pong,
            Some(Ok(Message::Frame(_))) => return Box::pin(self.recv_within(within)).await,
        })
    }

    fn parse(&mut self, bytes: Vec<u8>, text: bool) -> Frame {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => {
                if let Some(s) = v.get("s").and_then(Value::as_u64) {
                    self.last_seq = Some(s);
                }
                Frame::Json(v)
            }
            Err(_) if text => Frame::Text(String::from_utf8_lossy(&bytes).into_owned()),
            Err(_) => Frame::Binary(bytes),
        }
    }

    /// The next frame must be a JSON payload with this op.
    pub async fn expect_op(&mut self, op: u64) -> Value {
        match self.recv().await {
            Frame::Json(v) if v["op"] == op => v,
            other => panic!("expected op {op}, got {other:?}"),
        }
    }

    /// The next frame must be a dispatch named `t`.
    pub async fn expect_dispatch(&mut self, t: &str) -> Value {
        let v = self.expect_op(0).await;
        assert_eq!(v["t"], t, "{v}");
        v
    }

    /// The next frame must be a close frame; returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        match self.recv().await {
            Frame::Close(code) => code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn heartbeat(&mut self) {
        let d = self.last_seq.map_or(Value::Null, Value::from);
        self.send(json!({ "op": 1, "d": d })).await;
    }

    pub async fn send_identify(&mut self, token: &str, shard: [u32; 2], intents: u64) {
        self.send(json!({
            "op": 2,
            "d": {
                "token": token,
                "intents": intents,
                "properties": { "os": "linux", "browser": "handover-test", "device": "handover-test" },
                "shard": shard,
            }
        }))
        .await;
    }

    /// IDENTIFY with the default token; returns READY's `d`.
    pub async fn identify(&mut self, shard: [u32; 2]) -> Value {
        self.send_identify(TOKEN, shard, 513).await;
        let ready = self.expect_dispatch("READY").await;
        ready["d"].clone()
    }

    pub async fn send_resume(&mut self, session_id: &str, seq: u64) {
        self.send(json!({
            "op": 6,
            "d": { "token": TOKEN, "session_id": session_id, "seq": seq }
        }))
        .await;
    }

    /// Send a close frame with `code`.
    pub async fn close(&mut self, code: u16) {
        self.ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(""),
            })))
            .await
            .expect("send close");
    }
}

/// HELLO + IDENTIFY on shard `[shard, count]`; returns the client and the session id.
pub async fn identified(url: &str, shard: [u32; 2]) -> (Client, String) {
    let (mut c, _) = Client::hello(url).await;
    let ready = c.identify(shard).await;
    let sid = ready["session_id"].as_str().expect("session id").to_owned();
    (c, sid)
}

/// One raw HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: application/json\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content length");
    assert_eq!(length, body.len());
    (status, serde_json::from_str(body).expect("json body"))
}
