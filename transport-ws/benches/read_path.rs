//! The receive path under a stream of ~1 KiB messages that the application keeps alive, over
//! plain `ws://` and over `wss://`, with and without read-ahead.
//!
//! `cargo bench -p handover-transport-ws --bench read_path [-- OPTIONS]`
//!
//! The parent process runs a loopback server (127.0.0.1 only; for `wss://` a throwaway CA and
//! certificate made with rcgen). For each row it starts a child process (this same binary) that
//! runs one `Driver` on a current-thread tokio runtime with a codec that hands every event
//! message to the application as `Bytes` sliced from the received frame (zero copy, as the
//! Discord codec does). The application keeps the last `--hold` of them alive. After the
//! handshake the server writes `--events` messages (64 distinct payloads of 1,000–1,063 bytes in
//! rotation) as fast as the client takes them. The child reports the time and the CPU time of
//! its thread (`/proc/thread-self/schedstat`, nanoseconds) from the first event to the last.
//!
//! Socket reads are not counted here; run one row under
//! `perf stat -e syscalls:sys_enter_recvfrom` (the server's own reads are a handful: the upgrade
//! request, `identify`, the close).
//!
//! Options: `--events N` (default 200,000), `--hold N` (default 1,024), `--reps N` (default 3),
//! `--scheme ws|wss` and `--read-ahead BYTES` to run one row only (0 turns read-ahead off).
//! Without `--bench` (as under `cargo test --benches`) it runs a small smoke workload.

use std::collections::VecDeque;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use handover_core::{Config, Connection, Decoded, Message, OpenMode, Payload, Signal, TransportId};
use handover_transport_ws::{Codec, Driver, DriverEvent, TransportConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// Distinct payloads in rotation.
const DISTINCT: usize = 64;
/// Longest a child may run before it gives up (every run is bounded).
const CHILD_CAP: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str| arg(name).and_then(|v| v.parse::<usize>().ok());
    if let Some(url) = arg("--client") {
        let ca = arg("--ca").map(|hex| decode_hex(&hex)).unwrap_or_default();
        let code = client(
            &url,
            ca,
            num("--events").unwrap_or(1),
            num("--hold").unwrap_or(0),
            num("--read-ahead").unwrap_or(0),
        );
        std::process::exit(code);
    }

    let full = args.iter().any(|a| a == "--bench");
    let events = num("--events").unwrap_or(if full { 200_000 } else { 2_000 });
    let hold = num("--hold").unwrap_or(1_024);
    let reps = num("--reps").unwrap_or(if full { 3 } else { 1 }).max(1);
    let default_read_ahead = TransportConfig::default().read_ahead_size;
    let schemes: Vec<&str> = match arg("--scheme").as_deref() {
        Some("ws") => vec!["ws"],
        Some("wss") => vec!["wss"],
        _ => vec!["ws", "wss"],
    };
    let read_aheads = match num("--read-ahead") {
        Some(n) => vec![n],
        None => vec![0, default_read_ahead],
    };

    let (ca, server_tls) = tls_material();
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let plain = server
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let secure = server
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let plain_url = format!("ws://{}/", plain.local_addr().expect("addr"));
    let secure_url = format!("wss://{}/", secure.local_addr().expect("addr"));
    server.spawn(serve(plain, None, events));
    server.spawn(serve(
        secure,
        Some(tokio_rustls::TlsAcceptor::from(server_tls)),
        events,
    ));

    println!(
        "events per run: {events}, messages held by the application: {hold}, runs per row: {reps}"
    );
    println!("| scheme | read-ahead | events/s (median) | client CPU µs/event (median) |");
    println!("|---|---:|---:|---:|");
    let exe = std::env::current_exe().expect("current exe");
    let ca_hex = encode_hex(&ca);
    for scheme in &schemes {
        for &read_ahead in &read_aheads {
            let url = if *scheme == "ws" {
                &plain_url
            } else {
                &secure_url
            };
            let mut rates = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..reps {
                let output = Command::new(&exe)
                    .args([
                        "--client",
                        url,
                        "--ca",
                        &ca_hex,
                        "--events",
                        &events.to_string(),
                        "--hold",
                        &hold.to_string(),
                        "--read-ahead",
                        &read_ahead.to_string(),
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run client");
                assert!(output.status.success(), "client {scheme} failed");
                let line = output
                    .stdout
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|l| l.strip_prefix("result ").map(str::to_owned))
                    .expect("client result");
                let mut parts = line.split(' ').map(|v| v.parse::<f64>().unwrap_or(0.0));
                let (n, secs, cpu_ns) = (
                    parts.next().unwrap_or(0.0),
                    parts.next().unwrap_or(0.0),
                    parts.next().unwrap_or(0.0),
                );
                rates.push((n - 1.0) / secs.max(1e-9));
                cpus.push(cpu_ns / 1e3 / n.max(1.0));
            }
            println!(
                "| {scheme} | {} | {:.0} | {:.2} |",
                if read_ahead == 0 {
                    "off".to_owned()
                } else {
                    format!("{} KiB", read_ahead >> 10)
                },
                median(&mut rates),
                median(&mut cpus)
            );
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The server: `hello`, `ready` on `identify`, then `events` event messages as fast as the
/// client reads them, then it waits for the client to leave.
async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, events: usize) {
    let payloads: Vec<Utf8Bytes> = (0..DISTINCT)
        .map(|i| Utf8Bytes::from(format!("event {i:02} {}", "x".repeat(991 + i))))
        .collect();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let payloads = payloads.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        session(stream, &payloads, events).await;
                    }
                }
                None => session(tcp, &payloads, events).await,
            }
        });
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    payloads: &[Utf8Bytes],
    events: usize,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    if ws.send(WsMessage::text("hello 600000")).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if msg.to_text().ok() == Some("identify") {
            break;
        }
    }
    if ws.send(WsMessage::text("ready")).await.is_err() {
        return;
    }
    for i in 0..events {
        let msg = WsMessage::Text(payloads[i % payloads.len()].clone());
        if ws.feed(msg).await.is_err() {
            return;
        }
        if i % 32 == 31 && ws.flush().await.is_err() {
            return;
        }
    }
    if ws.flush().await.is_err() {
        return;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn client(url: &str, ca: Vec<u8>, events: usize, hold: usize, read_ahead: usize) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let transport = TransportConfig {
        extra_root_certificates: vec![ca],
        use_webpki_roots: false,
        read_ahead_size: read_ahead,
        ..TransportConfig::default()
    };
    let run = async move {
        let core = Connection::new(Config::default(), 1);
        let (handle, mut stream) = Driver::spawn(core, HoldCodec(url.to_owned()), transport, None);
        handle.start().await.expect("start");
        let mut held: VecDeque<Bytes> = VecDeque::with_capacity(hold);
        let mut seen = 0usize;
        let mut start = None;
        while let Some(event) = stream.next_event().await {
            match event {
                DriverEvent::Item(bytes) => {
                    if seen == 0 {
                        start = Some((Instant::now(), thread_cpu_ns()));
                    }
                    seen += 1;
                    if hold > 0 {
                        if held.len() == hold {
                            held.pop_front();
                        }
                        held.push_back(bytes);
                    }
                    if seen == events {
                        break;
                    }
                }
                DriverEvent::Error(e) => {
                    eprintln!("client error: {e}");
                    return false;
                }
                _ => {}
            }
        }
        let Some((t0, cpu0)) = start else {
            return false;
        };
        let secs = t0.elapsed().as_secs_f64();
        let cpu = thread_cpu_ns() - cpu0;
        println!("result {seen} {secs} {cpu}");
        drop(held);
        seen == events
    };
    match rt.block_on(async { tokio::time::timeout(CHILD_CAP, run).await }) {
        Ok(true) => 0,
        _ => 1,
    }
}

/// The line protocol of the tests; `event ...` messages go to the application unparsed.
struct HoldCodec(String);

#[derive(Debug)]
struct Unknown;

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown line")
    }
}

impl std::error::Error for Unknown {}

impl Codec for HoldCodec {
    type Item = Bytes;
    type Command = ();
    type Error = Unknown;

    fn url(&self, _mode: OpenMode) -> String {
        self.0.clone()
    }

    fn reset(&mut self, _conn: TransportId, _mode: OpenMode) {}

    fn decode(&mut self, _now: Instant, msg: Message) -> Result<Decoded<Bytes>, Unknown> {
        let Message::Text(bytes) = msg else {
            return Err(Unknown);
        };
        let signal = match &bytes[..] {
            b if b.starts_with(b"event ") => {
                return Ok(Decoded {
                    signal: None,
                    item: Some(bytes),
                });
            }
            b if b.starts_with(b"hello ") => {
                let ms: u64 = std::str::from_utf8(&b[6..])
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or(Unknown)?;
                Signal::Hello {
                    interval: Duration::from_millis(ms),
                }
            }
            b"ready" => Signal::HandshakeAccepted { resumed: false },
            b"ack" => Signal::HeartbeatAck,
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

/// A throwaway CA (its DER is handed to the client) and a server certificate for 127.0.0.1.
fn tls_material() -> (Vec<u8>, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key_der)
    .expect("server config");
    (ca_cert.der().to_vec(), Arc::new(config))
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
