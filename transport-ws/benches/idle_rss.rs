//! Resident memory per idle connection: the driver against raw tokio-tungstenite clients.
//!
//! `cargo bench -p handover-transport-ws --bench idle_rss [-- --connections N]`
//!
//! The parent process runs a loopback server (127.0.0.1 only). For each client kind it starts a
//! child process (this same binary) that opens N connections, waits until every one has
//! finished its handshake (`hello` -> `identify` -> `ready`), and reports the growth of its
//! VmRSS (from /proc/self/status) divided by N. Children keep the server out of the figure, and
//! each kind starts from a fresh heap.

#[path = "../tests/common/lines.rs"]
mod lines;
#[path = "../../runtime/benches/process/mod.rs"]
mod process;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handover_core::{
    Config, Connection, Decoded, Message, OpenMode, Payload, Signal, State, TransportId,
};
use handover_transport_ws::{Codec, Driver, TransportConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const KINDS: [&str; 3] = ["raw-default", "raw-4k", "driver"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("--connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    if let (Some(kind), Some(addr)) = (arg("--client"), arg("--addr")) {
        client(&kind, &addr, n);
        return;
    }

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    server.spawn(serve(listener));

    println!("idle connections per client process: {n}");
    println!("| client | RSS growth | per connection |");
    println!("|---|---:|---:|");
    let exe = std::env::current_exe().expect("current exe");
    for kind in KINDS {
        let mut child = Command::new(&exe)
            .args([
                "--client",
                kind,
                "--addr",
                &addr.to_string(),
                "--connections",
                &n.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdout = child.stdout.take().expect("child stdout");
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("rss ") {
                let mut parts = rest.split(' ');
                let total: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                println!(
                    "| {kind} | {:.0} KiB | {:.1} KiB |",
                    total,
                    total / n as f64
                );
            }
        }
        let status = child.wait().expect("client exit");
        assert!(status.success(), "client {kind} failed");
    }
}

/// The server: `hello` with a 10-minute heartbeat interval, `ready` on `identify`, then idle.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(lines::serve_lines(tcp, 600_000, false));
    }
}

fn rss_kib() -> f64 {
    process::status_kib("VmRSS:") as f64
}

fn client(kind: &str, addr: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let url = format!("ws://{addr}/");
    rt.block_on(async move {
        // Warm up: one connection of the same kind loads code and initializes lazies.
        let mut keep = open(kind, &url, 1).await;
        let before = rss_kib();
        let started = Instant::now();
        keep.extend(open(kind, &url, n).await);
        // Let every task settle into its idle wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = rss_kib();
        println!("rss {} {:?}", after - before, started.elapsed());
        drop(keep);
    });
}

/// Opens `n` connections of one kind and returns what keeps them alive once all are ready.
async fn open(kind: &str, url: &str, n: usize) -> Vec<Box<dyn std::any::Any>> {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    match kind {
        "driver" => {
            let mut handles = Vec::new();
            for i in 0..n {
                let core = Connection::new(Config::default(), i as u64);
                let (handle, events) = Driver::spawn(
                    core,
                    LineCodec(url.to_owned()),
                    TransportConfig::default(),
                    None,
                );
                handle.start().await.expect("start");
                handles.push((handle, events));
            }
            for (handle, _) in &handles {
                let mut status = handle.watch_status();
                while status.borrow_and_update().state != State::Identified {
                    status.changed().await.expect("driver alive");
                }
            }
            for h in handles {
                keep.push(Box::new(h));
            }
        }
        raw => {
            let config = match raw {
                "raw-4k" => WebSocketConfig::default()
                    .read_buffer_size(4 << 10)
                    .write_buffer_size(0),
                _ => WebSocketConfig::default(),
            };
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
            for _ in 0..n {
                let url = url.to_owned();
                let ready = ready_tx.clone();
                let task = tokio::spawn(async move {
                    let host = url.trim_start_matches("ws://").trim_end_matches('/');
                    let tcp = TcpStream::connect(host).await.expect("connect");
                    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
                        url.as_str(),
                        tcp,
                        Some(config),
                    )
                    .await
                    .expect("upgrade");
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg.to_text().unwrap_or("") {
                            t if t.starts_with("hello") => {
                                ws.send(WsMessage::text("identify")).await.expect("send");
                            }
                            "ready" => {
                                let _ = ready.send(()).await;
                            }
                            _ => {}
                        }
                    }
                });
                keep.push(Box::new(AbortOnDrop(task)));
            }
            for _ in 0..n {
                ready_rx.recv().await.expect("raw client ready");
            }
        }
    }
    keep
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The line protocol of the tests, reduced to the handshake.
struct LineCodec(String);

#[derive(Debug)]
struct Unknown;

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown line")
    }
}

impl std::error::Error for Unknown {}

impl Codec for LineCodec {
    type Item = ();
    type Command = ();
    type Error = Unknown;

    fn url(&self, _mode: OpenMode) -> String {
        self.0.clone()
    }

    fn reset(&mut self, _conn: TransportId, _mode: OpenMode) {}

    fn decode(&mut self, _now: Instant, msg: Message) -> Result<Decoded<()>, Unknown> {
        let text = std::str::from_utf8(msg.as_bytes()).map_err(|_| Unknown)?;
        let signal = match text.split_once(' ') {
            Some(("hello", ms)) => Signal::Hello {
                interval: Duration::from_millis(ms.parse().map_err(|_| Unknown)?),
            },
            _ if text == "ready" => Signal::HandshakeAccepted { resumed: false },
            _ if text == "ack" => Signal::HeartbeatAck,
            _ => return Err(Unknown),
        };
        Ok(Decoded {
            signal: Some(signal),
            item: None,
        })
    }

    fn encode(&mut self, _now: Instant, payload: Payload) -> Result<Message, Unknown> {
        Ok(Message::text(match payload {
            Payload::Handshake(OpenMode::Identify) => "identify",
            Payload::Handshake(OpenMode::Resume) => "resume",
            Payload::Heartbeat => "hb",
        }))
    }

    fn encode_command(&mut self, _now: Instant, _command: ()) -> Result<Message, Unknown> {
        Err(Unknown)
    }
}
