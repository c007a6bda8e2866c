//! The loopback WebSocket + HTTP server around [`MockGateway`].
//!
//! Architecture: the model lives in one `Arc<Mutex<..>>`. Each accepted TCP socket gets one task
//! that reads the HTTP request head itself (so `GET /api/v10/gateway/bot` and the WebSocket
//! upgrade share the port), then runs the WebSocket with both halves polled in the same task.
//! Every event from a socket, every scripted fault and every timer tick locks the model, feeds it
//! the fact, drains its actions into per-connection channels, and releases the lock. One timer
//! task sleeps until the model's next deadline. The lock is never held across an `.await`.
//!
//! Socket-level faults are real: the TCP stream sits behind a gate that can swallow every byte
//! the WebSocket library writes on its own (pong, close reply), so a zombie stays silent and an
//! ignored close frame is never answered; after that the task keeps the TCP stream open and reads
//! (and discards) until the client drops it. A drop closes TCP without a close frame.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use handover_core::{Message, TransportId};
use handover_transport_ws::memory::{MemoryPeer, PeerAction};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tracing::debug;

use crate::MockConfig;
use crate::counters::Counters;
use crate::fault::{Fault, ShardKey, StreamId, StreamSpec, Target};
use crate::model::{ConnectionInfo, MockGateway};

/// How long a client may take to send its HTTP request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest WebSocket message read; anything above `max_payload` is already a 4002.
const MAX_WS_MESSAGE: usize = 1 << 20;

/// Why the mock server could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// The listening socket could not be bound on 127.0.0.1.
    #[error("cannot bind the mock gateway on 127.0.0.1")]
    Bind(#[source] io::Error),
    /// A [`MockHandle::wait_for`] condition did not hold in time.
    #[error("mock condition not reached in time")]
    Timeout,
}

struct Route {
    tx: mpsc::UnboundedSender<PeerAction>,
    mute: Arc<AtomicBool>,
}

struct Shared {
    model: MockGateway,
    routes: HashMap<TransportId, Route>,
    next_conn: u64,
}

impl Shared {
    /// Hand every pending action to its socket and refresh the socket mutes.
    fn pump(&mut self) {
        while let Some((conn, action)) = self.model.poll_action() {
            if let Some(route) = self.routes.get(&conn) {
                // A send error means the socket task already ended; nothing is left to do.
                let _ = route.tx.send(action);
            }
        }
        for (conn, route) in &self.routes {
            route
                .mute
                .store(self.model.socket_muted(*conn), Ordering::SeqCst);
        }
    }
}

struct Inner {
    shared: Mutex<Shared>,
    timer: Notify,
    changed: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves a model that is still memory-safe to use.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run `f` on the model at the current time, then route its actions and wake the timer.
    fn with<R>(&self, f: impl FnOnce(&mut Shared, Instant) -> R) -> R {
        let r = {
            let mut shared = self.lock();
            let r = f(&mut shared, Instant::now());
            shared.pump();
            r
        };
        self.timer.notify_one();
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        r
    }
}

/// A cloneable handle on a running mock: script events and faults, read counters. Every method
/// acts immediately; it stays usable (and harmless) after the server shut down.
#[derive(Clone)]
pub struct MockHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle").finish_non_exhaustive()
    }
}

impl MockHandle {
    /// Dispatch an event to every live session of `shard` (a `u32` means token 0). Returns how
    /// many connections it was written to now; sessions between connections get it on RESUME.
    pub fn dispatch(&self, shard: impl Into<ShardKey>, event: &str, data: &Value) -> usize {
        let shard = shard.into();
        self.inner
            .with(|s, now| s.model.dispatch(now, shard, event, data))
    }

    /// Apply a fault to the connections of `target` now. Returns how many it hit.
    pub fn inject(&self, target: impl Into<Target>, fault: Fault) -> usize {
        let target = target.into();
        self.inner.with(|s, now| s.model.inject(now, target, fault))
    }

    /// Start a bounded stream of dispatches.
    pub fn stream(&self, spec: StreamSpec) -> StreamId {
        self.inner.with(|s, now| s.model.stream(now, spec))
    }

    /// Stop a stream. Returns whether it was still running.
    pub fn cancel_stream(&self, id: StreamId) -> bool {
        self.inner.with(|s, _| s.model.cancel_stream(id))
    }

    /// Dispatches of stream `id` not written yet (0 once it has written its last one): a
    /// test that waits for a stream's events should wait for this too, as the events a
    /// client has are all the gateway wrote only once nothing is left to write.
    pub fn stream_remaining(&self, id: StreamId) -> u64 {
        self.inner.lock().model.stream_remaining(id)
    }

    /// A snapshot of every counter.
    pub fn counters(&self) -> Counters {
        self.inner.lock().model.counters()
    }

    /// The configuration in force (see [`MockGateway::config`]).
    pub fn config(&self) -> MockConfig {
        self.inner.lock().model.config().clone()
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner.lock().model.connections()
    }

    /// Wait until `pred` holds for the counters (checked now and after every change), for at
    /// most `within`. Returns the counters that satisfied it.
    pub async fn wait_for(
        &self,
        within: Duration,
        mut pred: impl FnMut(&Counters) -> bool,
    ) -> Result<Counters, MockError> {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let counters = self.counters();
            if pred(&counters) {
                return Ok(counters);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(MockError::Timeout),
            }
        }
    }
}

/// The mock gateway served on 127.0.0.1: WebSocket at [`url`](MockServer::url) and
/// `GET /api/v10/gateway/bot` at [`http_base`](MockServer::http_base), same port. Dropping it
/// (or [`shutdown`](MockServer::shutdown)) closes the listener and every socket.
pub struct MockServer {
    handle: MockHandle,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Bind 127.0.0.1:[`MockConfig::port`] (0: any free port) and start serving. Must be called
    /// inside a tokio runtime.
    pub async fn start(config: MockConfig) -> Result<MockServer, MockError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
            .await
            .map_err(MockError::Bind)?;
        let addr = listener.local_addr().map_err(MockError::Bind)?;
        let mut model = MockGateway::new(config);
        model.set_url(format!("ws://{addr}"));
        model.set_driver_pulls_streams(true);
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                model,
                routes: HashMap::new(),
                next_conn: 0,
            }),
            timer: Notify::new(),
            changed,
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(listener, inner.clone(), stopped));
        debug!(%addr, "mock gateway listening");
        Ok(MockServer {
            handle: MockHandle { inner },
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The gateway URL, `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The HTTP base, `http://127.0.0.1:PORT` (the API lives under `/api/v10`).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for faults, events and counters.
    pub fn handle(&self) -> MockHandle {
        self.handle.clone()
    }

    /// Stop listening and close every socket; returns once they are gone. Counters stay
    /// readable through handles (live sockets drop to zero).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The supervisor returns only after every socket task has ended.
        let _ = (&mut self.task).await;
        self.handle.inner.with(|s, now| {
            s.routes.clear();
            s.model.disconnect_all(now);
        });
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(listener: TcpListener, inner: Arc<Inner>, mut stopped: oneshot::Receiver<()>) {
    let mut tasks = JoinSet::new();
    tasks.spawn(run_timer(inner.clone()));
    loop {
        tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                tasks.shutdown().await;
                debug!("mock gateway stopped");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tasks.spawn(serve_socket(tcp, inner.clone()));
                }
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = tasks.join_next() => {}
        }
    }
}

async fn run_timer(inner: Arc<Inner>) {
    loop {
        let deadline = inner.lock().model.poll_timeout();
        match deadline {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = inner.timer.notified() => continue,
                }
            }
            None => {
                inner.timer.notified().await;
                continue;
            }
        }
        inner.with(|s, now| s.model.handle_timeout(now));
    }
}

/// Reads the whole request head; returns it and any bytes read past it.
struct Head {
    method: String,
    target: String,
    upgrade: bool,
    ws_key: Option<String>,
    ws_version_ok: bool,
    authorization: Option<String>,
    rest: Vec<u8>,
}

async fn read_head(tcp: &TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        tcp.readable().await?;
        match tcp.try_read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::trim)
                };
                let upgrade =
                    header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
                return Ok(Some(Head {
                    method: req.method.unwrap_or("").to_owned(),
                    target: req.path.unwrap_or("/").to_owned(),
                    upgrade,
                    ws_key: header("sec-websocket-key").map(str::to_owned),
                    ws_version_ok: header("sec-websocket-version") == Some("13"),
                    authorization: header("authorization").map(str::to_owned),
                    rest: buf[len..].to_vec(),
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => return Ok(None),
        }
    }
}

async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

async fn respond(tcp: &TcpStream, status: u16, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    write_all(tcp, response.as_bytes()).await
}

async fn serve_socket(tcp: TcpStream, inner: Arc<Inner>) {
    let _ = tcp.set_nodelay(true);
    let tcp = Arc::new(tcp);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&tcp)).await {
        Ok(Ok(Some(head))) => head,
        _ => return,
    };
    if !head.upgrade {
        let reply = inner.with(|s, now| {
            s.model.http_request(
                now,
                &head.method,
                &head.target,
                head.authorization.as_deref(),
            )
        });
        let _ = respond(&tcp, reply.status, &reply.body).await;
        return;
    }
    let (Some(key), true, "GET") = (
        head.ws_key.as_deref(),
        head.ws_version_ok,
        head.method.as_str(),
    ) else {
        let _ = respond(&tcp, 400, r#"{"message": "400: Bad Request", "code": 0}"#).await;
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if write_all(&tcp, response.as_bytes()).await.is_err() {
        return;
    }
    run_websocket(tcp, head, inner).await;
}

async fn run_websocket(tcp: Arc<TcpStream>, head: Head, inner: Arc<Inner>) {
    let mute = Arc::new(AtomicBool::new(false));
    let gate = Gate {
        tcp: tcp.clone(),
        mute: mute.clone(),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let ws =
        WebSocketStream::from_partially_read(gate, head.rest, Role::Server, Some(config)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registered = inner.with(|s, now| {
        s.next_conn += 1;
        let id = TransportId(s.next_conn);
        s.routes.insert(
            id,
            Route {
                tx,
                mute: mute.clone(),
            },
        );
        if s.model.on_connect(now, id, &head.target) {
            Some(id)
        } else {
            s.routes.remove(&id);
            None
        }
    });
    let Some(id) = registered else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut outq = VecDeque::new();
    let mut need_flush = false;
    let mut dropped = false;
    loop {
        tokio::select! {
            biased;
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let msg = Message::Text(Bytes::from(text));
                    inner.with(|s, now| s.model.on_message(now, id, msg));
                }
                Some(Ok(WsMessage::Binary(bin))) => {
                    inner.with(|s, now| s.model.on_message(now, id, Message::Binary(bin)));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    inner.with(|s, now| s.model.on_close_frame(now, id, code));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    debug!(conn = id.0, %error, "websocket read ended");
                    break;
                }
                None => break,
            },
            step = poll_fn(|cx| write_step(cx, &mut sink, &mut rx, &mut outq, &mut need_flush)) => {
                match step {
                    WriteStep::Flushed => {
                        inner.with(|s, now| s.model.pull_stream(now, id));
                    }
                    WriteStep::Drop => {
                        dropped = true;
                        break;
                    }
                    WriteStep::Ended => break,
                }
            }
        }
    }
    drop((sink, stream));
    if !dropped && mute.load(Ordering::SeqCst) {
        // Never answer, never close: hold TCP open until the client gives up.
        debug!(conn = id.0, "holding the socket open without answering");
        hold_open(&tcp, &mut rx).await;
    }
    drop(tcp);
    inner.with(|s, now| {
        s.routes.remove(&id);
        s.model.on_disconnect(now, id);
    });
}

enum WriteStep {
    /// Everything queued was written and flushed.
    Flushed,
    /// The model dropped the connection.
    Drop,
    /// The socket failed, or the route is gone.
    Ended,
}

type WsSink = SplitSink<WebSocketStream<Gate>, WsMessage>;

/// Write queued actions; cancel-safe (all state lives in the arguments).
fn write_step(
    cx: &mut Context<'_>,
    sink: &mut WsSink,
    rx: &mut mpsc::UnboundedReceiver<PeerAction>,
    outq: &mut VecDeque<PeerAction>,
    need_flush: &mut bool,
) -> Poll<WriteStep> {
    loop {
        loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(PeerAction::Drop)) => return Poll::Ready(WriteStep::Drop),
                Poll::Ready(Some(action)) => outq.push_back(action),
                Poll::Ready(None) => return Poll::Ready(WriteStep::Ended),
                Poll::Pending => break,
            }
        }
        let Some(action) = outq.front() else {
            if !*need_flush {
                return Poll::Pending;
            }
            return match ready!(sink.poll_flush_unpin(cx)) {
                Ok(()) => {
                    *need_flush = false;
                    Poll::Ready(WriteStep::Flushed)
                }
                Err(_) => Poll::Ready(WriteStep::Ended),
            };
        };
        let msg = to_ws(action);
        if ready!(sink.poll_ready_unpin(cx)).is_err() {
            return Poll::Ready(WriteStep::Ended);
        }
        outq.pop_front();
        if sink.start_send_unpin(msg).is_err() {
            return Poll::Ready(WriteStep::Ended);
        }
        *need_flush = true;
    }
}

fn to_ws(action: &PeerAction) -> WsMessage {
    match action {
        PeerAction::Send(Message::Text(b)) => match Utf8Bytes::try_from(b.clone()) {
            Ok(text) => WsMessage::Text(text),
            Err(_) => WsMessage::Binary(b.clone()),
        },
        PeerAction::Send(Message::Binary(b)) => WsMessage::Binary(b.clone()),
        // 1005, 1006 and 1015 must never appear on the wire: an empty close frame stands for them.
        PeerAction::Close(1005 | 1006 | 1015) => WsMessage::Close(None),
        PeerAction::Close(code) => WsMessage::Close(Some(CloseFrame {
            code: WsCloseCode::from(*code),
            reason: Utf8Bytes::from_static(""),
        })),
        // Handled by the caller before conversion; an empty close is the harmless stand-in.
        PeerAction::Drop => WsMessage::Close(None),
    }
}

/// Read and discard until the client closes TCP, or the model drops the connection.
async fn hold_open(tcp: &TcpStream, rx: &mut mpsc::UnboundedReceiver<PeerAction>) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            ready = tcp.readable() => {
                if ready.is_err() {
                    return;
                }
                match tcp.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            action = rx.recv() => match action {
                Some(PeerAction::Drop) | None => return,
                Some(_) => {}
            },
        }
    }
}

/// The TCP stream as the WebSocket library sees it. While muted, writes are accepted and
/// discarded, so the library's automatic pong and close reply never reach the client. The TCP
/// socket itself closes only when the last `Arc` goes.
struct Gate {
    tcp: Arc<TcpStream>,
    mute: Arc<AtomicBool>,
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.mute.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP closes when the connection task lets go of its last reference.
        Poll::Ready(Ok(()))
    }
}
