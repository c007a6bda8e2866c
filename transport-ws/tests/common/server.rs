//! A loopback WebSocket server (tokio-tungstenite) speaking the line protocol, with fault knobs
//! and a strict count of concurrent sockets.
//!
//! The count: a socket is live from TCP accept until its handler ends or the kernel shows the
//! client's FIN/RST. At every accept, before counting the new socket, all registered sockets are
//! peeked (a real syscall on a duplicate descriptor), so a socket the client already closed is
//! never counted as overlapping the next one, however late its handler notices.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the server does; read at every decision, so tests may change it at any time.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub interval_ms: u64,
    /// Complete the WebSocket upgrade (false: accept TCP, then say nothing).
    pub upgrade: bool,
    /// Answer the client's close frame (false: never answer, keep the socket until EOF).
    pub answer_close: bool,
    /// Acknowledge heartbeats.
    pub ack: bool,
    /// After `ready`, send this many `event <i> <padding>` messages of about this size, as fast
    /// as the client takes them, while still reading.
    pub flood: Option<(usize, usize)>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            interval_ms: 60_000,
            upgrade: true,
            answer_close: true,
            ack: true,
            flood: None,
        }
    }
}

/// Something the test makes the current connection do.
#[derive(Debug)]
pub enum Action {
    Send(WsMessage),
    Close(u16),
    /// Send a close frame, then neither read the reply nor close TCP until the client does.
    CloseAndHold(u16),
    Drop,
}

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub accepted: usize,
    pub live: usize,
    pub max_live: usize,
    pub upgraded: usize,
    pub identifies: usize,
    pub resumes: usize,
    pub heartbeats: usize,
    /// Close codes received from clients (`None`: close frame without a code).
    pub close_codes: Vec<Option<u16>>,
    pub commands: Vec<String>,
    /// Pongs received (answers to our pings).
    pub pongs: usize,
    /// Flood messages handed to the socket so far.
    pub flood_sent: usize,
    /// Handlers that finished.
    pub ended: usize,
}

struct Registry {
    next_id: u64,
    live: Vec<(u64, std::net::TcpStream)>,
}

struct Shared {
    counts: Mutex<Counts>,
    registry: Mutex<Registry>,
    behavior: Mutex<Behavior>,
    current: Mutex<Option<mpsc::UnboundedSender<Action>>>,
    changed: watch::Sender<u64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }

    fn behavior(&self) -> Behavior {
        self.behavior.lock().unwrap().clone()
    }

    /// Registers a freshly accepted socket; returns its id and the socket to serve.
    fn register(&self, tcp: TcpStream) -> std::io::Result<(u64, TcpStream)> {
        let std = tcp.into_std()?;
        let dup = std.try_clone()?;
        let tcp = TcpStream::from_std(std)?;
        let mut reg = self.registry.lock().unwrap();
        reg.live.retain(|(_, s)| kernel_alive(s));
        let id = reg.next_id;
        reg.next_id += 1;
        reg.live.push((id, dup));
        let live = reg.live.len();
        drop(reg);
        self.update(|c| {
            c.accepted += 1;
            c.live = live;
            c.max_live = c.max_live.max(live);
        });
        Ok((id, tcp))
    }

    fn unregister(&self, id: u64) {
        let mut reg = self.registry.lock().unwrap();
        reg.live.retain(|(i, _)| *i != id);
        let live = reg.live.len();
        drop(reg);
        self.update(|c| {
            c.live = live;
            c.ended += 1;
        });
    }
}

/// Whether the client end of `s` is still open, as the kernel sees it now.
fn kernel_alive(s: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match s.peek(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(behavior: Behavior) -> TestServer {
        Self::start_with_tls(behavior, None).await
    }

    pub async fn start_with_tls(
        behavior: Behavior,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            counts: Mutex::new(Counts::default()),
            registry: Mutex::new(Registry {
                next_id: 0,
                live: Vec::new(),
            }),
            behavior: Mutex::new(behavior),
            current: Mutex::new(None),
            changed: watch::channel(0).0,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok((id, tcp)) = s.register(tcp) else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    serve(tcp, &s).await;
                    s.unregister(id);
                });
            }
        });
        TestServer { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().unwrap().clone()
    }

    pub fn set_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.shared.behavior.lock().unwrap());
    }

    /// Makes the newest connection do `action`.
    pub fn act(&self, action: Action) {
        if let Some(tx) = self.shared.current.lock().unwrap().as_ref() {
            let _ = tx.send(action);
        }
    }

    /// Waits (on change notifications, bounded by `limit`) until `pred` holds.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&Counts) -> bool) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.counts()) {
                return true;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return pred(&self.counts()) },
                () = tokio::time::sleep_until(deadline) => return pred(&self.counts()),
            }
        }
    }
}

async fn serve(tcp: TcpStream, s: &Arc<Shared>) {
    let stream: Box<dyn Io> = match &s.tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(t) => Box::new(t),
            Err(_) => return,
        },
        None => Box::new(tcp),
    };
    if !s.behavior().upgrade {
        drain_raw(stream).await;
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    s.update(|c| c.upgraded += 1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    *s.current.lock().unwrap() = Some(tx);
    let hello = format!("hello {}", s.behavior().interval_ms);
    if ws.send(WsMessage::text(hello)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            msg = ws.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    _ => return,
                };
                match msg {
                    WsMessage::Text(t) => {
                        let reply = on_text(s, t.as_str());
                        if let Some(reply) = reply
                            && ws.send(WsMessage::text(reply)).await.is_err()
                        {
                            return;
                        }
                        if (t.as_str() == "identify" || t.as_str() == "resume")
                            && let Some((n, size)) = s.behavior().flood
                        {
                            flood(ws, s, n, size).await;
                            return;
                        }
                    }
                    WsMessage::Close(frame) => {
                        s.update(|c| c.close_codes.push(frame.map(|f| u16::from(f.code))));
                        if !s.behavior().answer_close {
                            // Throw away the queued close reply with the protocol state and
                            // hold the raw socket until the client goes away.
                            drain_raw(ws.into_inner()).await;
                            return;
                        }
                        // The next read flushes tungstenite's reply and ends the stream.
                    }
                    WsMessage::Pong(_) => s.update(|c| c.pongs += 1),
                    _ => {}
                }
            }
            action = rx.recv() => match action {
                Some(Action::Send(m)) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Action::Close(code)) => {
                    let frame = CloseFrame { code: code.into(), reason: "".into() };
                    if ws.send(WsMessage::Close(Some(frame))).await.is_err() {
                        return;
                    }
                }
                Some(Action::CloseAndHold(code)) => {
                    let frame = CloseFrame { code: code.into(), reason: "".into() };
                    if ws.send(WsMessage::Close(Some(frame))).await.is_err() {
                        return;
                    }
                    drain_raw(ws.into_inner()).await;
                    return;
                }
                Some(Action::Drop) | None => return,
            },
        }
    }
}

fn on_text(s: &Shared, text: &str) -> Option<String> {
    match text {
        "identify" => {
            s.update(|c| c.identifies += 1);
            Some("ready".into())
        }
        "resume" => {
            s.update(|c| c.resumes += 1);
            Some("resumed".into())
        }
        "hb" => {
            s.update(|c| c.heartbeats += 1);
            s.behavior().ack.then(|| "ack".into())
        }
        t if t.starts_with("cmd ") => {
            let t = t.to_owned();
            s.update(|c| c.commands.push(t));
            None
        }
        _ => None,
    }
}

/// Sends `n` events while reading (and counting) what the client sends.
async fn flood<S: Io + 'static>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    s: &Arc<Shared>,
    n: usize,
    size: usize,
) {
    let (mut sink, mut stream) = ws.split();
    let writer = {
        let s = s.clone();
        async move {
            let pad = "x".repeat(size);
            for i in 0..n {
                if sink
                    .send(WsMessage::text(format!("event {i} {pad}")))
                    .await
                    .is_err()
                {
                    return;
                }
                s.update(|c| c.flood_sent = i + 1);
            }
            // Keep the sink (and so the socket) until the reader is done.
            std::future::pending::<()>().await;
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            if let WsMessage::Text(t) = msg {
                on_text(s, t.as_str());
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

async fn drain_raw(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
