//! The tokio shell: one port serving the gateway (WebSocket, JSON encoding) and
//! `GET /api/v10/gateway/bot`, fed by a [`Fleet`].
//!
//! The [`Hub`] lives behind one mutex, never held across an `.await`. Each client connection
//! is one task with a bounded queue of frame batches: fan-out only ever `try_send`s, so a client
//! that does not read never slows the others or the upstream shards; when its queue is full it
//! is closed with 4000 (resumable) and resumes from the replay buffer.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use handover_protocol::{Command, Compression, ZlibStreamEncoder, ZstdStreamEncoder};
use handover_runtime::{Fleet, ShardEvent, ShardEventKind, ShardHandle};
use handover_transport_ws::frame::Incoming as WsIncoming;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, info, warn};

use crate::frames::Frame;
use crate::hub::{
    Action, ClientId, CommandOutcome, Hub, HubConfig, HubStats, HubStatus, Upstream, close,
};
use crate::socket::ClientSocket;
use serde_json::Value;

/// Largest frame read from a client. Discord's limit for a client payload is 4096 bytes (the
/// hub closes a larger one with 4002); this bound only protects the proxy's memory.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Settings of a [`Proxy`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The downstream protocol's settings.
    pub hub: HubConfig,
    /// Frame batches queued per client before it counts as fallen behind and is closed with
    /// 4000. Default 1024. A batch holds at most 64 live dispatches (the events the pump took
    /// in one round); a resume's replay is one batch.
    pub client_queue: usize,
}

impl ProxyConfig {
    /// Defaults around `hub`.
    pub fn new(hub: HubConfig) -> ProxyConfig {
        ProxyConfig {
            hub,
            client_queue: 1024,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listening socket's address could not be read.
    #[error("cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
}

struct ClientTx {
    frames: mpsc::Sender<Vec<Frame>>,
    close: watch::Sender<Option<(u16, &'static str)>>,
}

/// A client command on its way upstream.
struct Forward {
    client: ClientId,
    shard: u32,
    command: Command,
    /// The presence of an IDENTIFY, not a command the client sent.
    from_identify: bool,
}

/// Client commands queued for the forwarder before more are refused (4008).
const FORWARD_QUEUE: usize = 256;

/// Queued batches a client's writer takes after the one it woke for, before one flush.
const DRAIN_BATCHES: usize = 64;

/// Upstream events the pump takes at once (those ready when it wakes), handed to the hub
/// under one lock: a client's batch of live dispatches holds at most this many frames.
const PUMP_BATCH: usize = 64;

struct State {
    hub: Hub,
    clients: HashMap<ClientId, ClientTx>,
    forward: mpsc::Sender<Forward>,
    /// The frames of one round of actions, gathered per client (in order) and queued as one
    /// batch each: a burst of upstream events is one queue slot and one wake-up per client.
    outgoing: Vec<(ClientId, Vec<Frame>)>,
    /// The round of actions being carried out (kept for its allocation).
    round: Vec<Action>,
}

impl State {
    /// Carries out the hub's actions; a client whose queue is full is closed as lagging.
    ///
    /// Every client's frames of the round go out as one batch, queued after the round (or
    /// before a close of that client, which comes after what was sent before it).
    fn apply(&mut self, actions: &mut Vec<Action>) {
        // Bounded: each lagging client adds one Close, and a closed client gets no more sends,
        // so the rounds end.
        while !actions.is_empty() {
            std::mem::swap(&mut self.round, actions);
            let mut round = std::mem::take(&mut self.round);
            for action in round.drain(..) {
                match action {
                    Action::Send { client, frames } => self.gather(client, frames),
                    Action::Forward {
                        client,
                        shard,
                        op,
                        d,
                        from_identify,
                    } => {
                        let command = Command::Raw { op, d };
                        let queued = self.forward.try_send(Forward {
                            client,
                            shard,
                            command,
                            from_identify,
                        });
                        if queued.is_err() {
                            if from_identify {
                                self.hub.identify_presence_sent(CommandOutcome::OverBudget);
                            } else {
                                self.hub
                                    .command_sent(client, CommandOutcome::OverBudget, actions);
                            }
                        }
                    }
                    Action::Close {
                        client,
                        code,
                        reason,
                    } => {
                        if let Some(i) = self.outgoing.iter().position(|(c, _)| *c == client) {
                            let (_, frames) = self.outgoing.swap_remove(i);
                            self.queue(client, frames, actions);
                        }
                        if let Some(tx) = self.clients.get(&client) {
                            tx.close.send_replace(Some((code, reason)));
                        }
                    }
                }
            }
            self.round = round;
            let mut outgoing = std::mem::take(&mut self.outgoing);
            for (client, frames) in outgoing.drain(..) {
                self.queue(client, frames, actions);
            }
            self.outgoing = outgoing;
        }
    }

    /// Adds frames to the client's batch of this round.
    fn gather(&mut self, client: ClientId, frames: Vec<Frame>) {
        // Few clients per round: a linear search beats hashing.
        match self.outgoing.iter_mut().find(|(c, _)| *c == client) {
            Some((_, batch)) => batch.extend(frames),
            None => self.outgoing.push((client, frames)),
        }
    }

    /// Queues one batch for the client; a full queue closes it as lagging.
    fn queue(&mut self, client: ClientId, frames: Vec<Frame>, actions: &mut Vec<Action>) {
        if let Some(tx) = self.clients.get(&client)
            && let Err(mpsc::error::TrySendError::Full(_)) = tx.frames.try_send(frames)
        {
            self.hub.client_lagged(client, actions);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// The upstream shards, for their status.
    upstream: BTreeMap<u32, ShardHandle>,
    client_queue: usize,
    public_url: String,
    total: u32,
    /// Heartbeat interval plus grace: a client silent this long is closed.
    silence_ms: u64,
}

impl Shared {
    /// The hub's status plus each client's queue depth and the upstream shards' own status.
    fn status_json(&self) -> String {
        let (status, queued) = self.snapshot();
        let upstream: Vec<Value> = self
            .upstream
            .values()
            .map(|h| {
                let s = h.status();
                serde_json::json!({
                    "shard": s.shard, "phase": s.phase.name(), "resumable": s.resumable,
                    "reconnects": s.reconnects, "identifies": s.identifies, "resumes": s.resumes,
                    "received": s.received, "gaps": s.gaps, "live_sockets": s.live_sockets,
                })
            })
            .collect();
        let sessions: Vec<Value> = status
            .sessions
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                let q = s.client.and_then(|c| queued.get(&c)).copied().unwrap_or(0);
                v["connected"] = Value::Bool(s.client.is_some());
                v["queued"] = Value::from(q);
                v
            })
            .collect();
        serde_json::json!({
            "url": self.public_url,
            "stats": status.stats,
            "shards": status.shards,
            "sessions": sessions,
            "upstream": upstream,
        })
        .to_string()
    }

    /// Prometheus text: the hub's counters, per shard and per client session, then the
    /// upstream shards' own metrics (`handover_shard_*`, as `handover run --http` serves them).
    fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let (status, queued) = self.snapshot();
        let st = status.stats;
        let mut out = String::new();
        let counters: [(&str, &str, u64); 8] = [
            (
                "identifies_total",
                "client IDENTIFYs accepted",
                st.identifies,
            ),
            ("resumes_total", "client RESUMEs accepted", st.resumes),
            (
                "resumes_refused_total",
                "client RESUMEs answered with op 9",
                st.resumes_refused,
            ),
            (
                "replayed_total",
                "dispatches replayed to resuming clients",
                st.replayed,
            ),
            (
                "lagged_total",
                "clients closed with 4000 for falling behind",
                st.lagged,
            ),
            (
                "commands_forwarded_total",
                "client commands sent upstream",
                st.forwarded,
            ),
            (
                "commands_refused_total",
                "client commands over the upstream budget (4008)",
                st.commands_refused,
            ),
            (
                "commands_dropped_total",
                "client commands the upstream could not take",
                st.commands_dropped,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP handover_proxy_{name} {help}.");
            let _ = writeln!(out, "# TYPE handover_proxy_{name} counter");
            let _ = writeln!(out, "handover_proxy_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP handover_proxy_clients Client connections open."
        );
        let _ = writeln!(out, "# TYPE handover_proxy_clients gauge");
        let _ = writeln!(out, "handover_proxy_clients {}", st.clients);
        let _ = writeln!(
            out,
            "# HELP handover_proxy_buffered Dispatches in the shard's replay buffer."
        );
        let _ = writeln!(out, "# TYPE handover_proxy_buffered gauge");
        for s in &status.shards {
            let _ = writeln!(
                out,
                "handover_proxy_buffered{{shard=\"{}\"}} {}",
                s.shard, s.buffered
            );
        }
        let per_session: [(&str, &str); 4] = [
            (
                "session_connected",
                "Whether a connection is attached to the client session.",
            ),
            (
                "session_seq",
                "Client seq of the last dispatch handed to the session.",
            ),
            (
                "session_behind",
                "Dispatches of the shard the session has not been handed.",
            ),
            (
                "session_queued",
                "Frame batches queued for the session's connection.",
            ),
        ];
        for (i, (name, help)) in per_session.iter().enumerate() {
            let _ = writeln!(out, "# HELP handover_proxy_{name} {help}");
            let _ = writeln!(out, "# TYPE handover_proxy_{name} gauge");
            for s in &status.sessions {
                let q = s.client.and_then(|c| queued.get(&c)).copied().unwrap_or(0);
                let value = match i {
                    0 => u64::from(s.client.is_some()),
                    1 => s.seq,
                    2 => s.behind,
                    _ => q as u64,
                };
                let _ = writeln!(
                    out,
                    "handover_proxy_{name}{{shard=\"{}\",session=\"{}\"}} {value}",
                    s.shard, s.session_id
                );
            }
        }
        // The upstream shards' own families, rendered by the runtime as for `handover run`.
        let upstream: Vec<_> = self.upstream.values().map(ShardHandle::status).collect();
        handover_runtime::metrics::write_shard_metrics(&mut out, &upstream);
        out
    }

    fn snapshot(&self) -> (HubStatus, HashMap<u64, usize>) {
        let state = self.lock();
        let queued = state
            .clients
            .iter()
            .map(|(id, tx)| (id.0, tx.frames.max_capacity() - tx.frames.capacity()))
            .collect();
        (state.hub.status(), queued)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is still memory-safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cloneable view of a running proxy, for status and tests.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("public_url", &self.shared.public_url)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        self.shared.lock().hub.stats()
    }

    /// The shards and client sessions.
    pub fn status(&self) -> HubStatus {
        self.shared.lock().hub.status()
    }

    /// Whether the shard's upstream session is ready.
    pub fn upstream_ready(&self, shard: u32) -> bool {
        self.shared.lock().hub.upstream_ready(shard)
    }

    /// Events in the shard's replay buffer.
    pub fn buffered(&self, shard: u32) -> usize {
        self.shared.lock().hub.buffered(shard)
    }
}

/// A running proxy: the accept loop and the task reading the fleet's events.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    forwarder: JoinHandle<()>,
    accept: JoinHandle<()>,
    pump: JoinHandle<Fleet>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts serving on `listener`, fed by `fleet`'s events. Must be called within a tokio runtime.
pub fn serve(
    listener: TcpListener,
    fleet: Fleet,
    config: ProxyConfig,
) -> Result<Proxy, ProxyError> {
    Proxy::start(listener, fleet, config)
}

impl Proxy {
    /// See [`serve`].
    pub fn start(
        listener: TcpListener,
        fleet: Fleet,
        config: ProxyConfig,
    ) -> Result<Proxy, ProxyError> {
        let addr = listener.local_addr().map_err(ProxyError::LocalAddr)?;
        let handles: BTreeMap<u32, ShardHandle> = fleet
            .shard_ids()
            .filter_map(|id| fleet.shard(id).map(|h| (id, h.clone())))
            .collect();
        let (forward, forward_rx) = mpsc::channel(FORWARD_QUEUE);
        let shared = Arc::new(Shared {
            upstream: handles.clone(),
            silence_ms: config
                .hub
                .heartbeat_interval_ms
                .max(1)
                .saturating_add(config.hub.heartbeat_grace_ms),
            public_url: config.hub.public_url.clone(),
            total: config.hub.total,
            client_queue: config.client_queue.max(1),
            state: Mutex::new(State {
                hub: Hub::new(config.hub),
                clients: HashMap::new(),
                forward,
                outgoing: Vec::new(),
                round: Vec::new(),
            }),
        });
        let (stop, stop_rx) = watch::channel(false);
        let forwarder = tokio::spawn(forwarder(forward_rx, handles, shared.clone()));
        let pump = tokio::spawn(pump(fleet, shared.clone(), stop_rx.clone()));
        let accept = tokio::spawn(accept(listener, shared.clone(), stop_rx));
        Ok(Proxy {
            shared,
            addr,
            forwarder,
            accept,
            pump,
            stop,
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for status.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: self.shared.clone(),
        }
    }

    /// Whether the fleet's event stream ended (every shard's task is gone).
    pub fn fleet_ended(&self) -> bool {
        self.pump.is_finished()
    }

    /// Stops accepting, closes every client (1001, going away: clients reconnect to the next
    /// proxy and re-identify) and hands the fleet back, to drain it.
    pub async fn stop(self) -> Option<Fleet> {
        self.stop.send_replace(true);
        self.accept.abort();
        self.forwarder.abort();
        {
            let mut state = self.shared.lock();
            for tx in state.clients.values() {
                tx.close.send_replace(Some((1001, "proxy stopping")));
            }
            state.clients.clear();
        }
        self.pump.await.ok()
    }
}

/// Sends client commands upstream one at a time, through the shard's handle: the runtime's
/// send limiter is the budget every client of the shard shares.
async fn forwarder(
    mut rx: mpsc::Receiver<Forward>,
    handles: BTreeMap<u32, ShardHandle>,
    shared: Arc<Shared>,
) {
    let mut actions = Vec::new();
    while let Some(f) = rx.recv().await {
        let sent = match handles.get(&f.shard) {
            Some(h) => match h.send(f.command).await {
                Ok(()) => CommandOutcome::Sent,
                Err(e) => {
                    warn!(client = f.client.0, shard = f.shard, error = %e, "client command refused upstream");
                    // Over the send budget (the codec's limiter says when it frees up).
                    if e.retry_after().is_some() {
                        CommandOutcome::OverBudget
                    } else {
                        CommandOutcome::Dropped
                    }
                }
            },
            None => CommandOutcome::Dropped,
        };
        let mut state = shared.lock();
        if f.from_identify {
            state.hub.identify_presence_sent(sent);
        } else {
            state.hub.command_sent(f.client, sent, &mut actions);
        }
        state.apply(&mut actions);
    }
}

async fn pump(mut fleet: Fleet, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Fleet {
    let mut actions = Vec::new();
    let mut events = Vec::with_capacity(PUMP_BATCH);
    loop {
        let event = tokio::select! {
            event = fleet.next_event() => event,
            _ = stop.changed() => return fleet,
        };
        let Some(event) = event else {
            warn!("every upstream shard ended");
            return fleet;
        };
        // What else is ready goes with it, under one lock and as one batch per client.
        events.push(event);
        while events.len() < PUMP_BATCH
            && let Some(event) = fleet.try_next_event()
        {
            events.push(event);
        }
        let mut state = shared.lock();
        for event in events.drain(..) {
            if let Some(upstream) = upstream_of(event) {
                state.hub.upstream(upstream, &mut actions);
            }
        }
        state.apply(&mut actions);
    }
}

fn upstream_of(event: ShardEvent) -> Option<Upstream> {
    let shard = event.shard;
    match event.kind {
        ShardEventKind::Ready(r) => Some(Upstream::Ready {
            shard,
            session_id: r.session_id,
            data: r.data,
        }),
        ShardEventKind::Dispatch(d) => Some(Upstream::Dispatch {
            shard,
            event_type: d.event_type,
            data: d.data,
        }),
        ShardEventKind::Gap(g) => {
            warn!(shard, last_seq = g.last_seq, "upstream session lost");
            Some(Upstream::Lost { shard })
        }
        ShardEventKind::GaveUp { reason } => {
            warn!(shard, %reason, "upstream shard gave up");
            None
        }
        _ => None,
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        debug!(%peer, "connection");
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let stop = stop.clone();
                async move { Ok::<_, Infallible>(route(req, shared, stop)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "message": message, "code": 0 }).to_string();
    text_response(status, "application/json", body)
}

/// What a gateway URL's query asks for.
struct Query {
    version_ok: bool,
    compression: Compression,
    problem: Option<&'static str>,
}

/// A connection's transport compression: one context for the connection's life, as Discord's.
enum Encoder {
    None,
    Zlib(Box<ZlibStreamEncoder>),
    Zstd(Box<ZstdStreamEncoder>),
}

impl Encoder {
    fn new(compression: Compression) -> Encoder {
        match compression {
            Compression::ZlibStream => Encoder::Zlib(Box::new(ZlibStreamEncoder::new())),
            Compression::ZstdStream => match ZstdStreamEncoder::new() {
                Ok(e) => Encoder::Zstd(Box::new(e)),
                Err(e) => {
                    warn!(error = %e, "zstd context unavailable; sending uncompressed");
                    Encoder::None
                }
            },
            _ => Encoder::None,
        }
    }

    /// Queues the frame as it goes on the wire: text (by construction, so no UTF-8 check
    /// again), or a binary frame of the compressed stream.
    fn push<S>(&mut self, frame: &Frame, ws: &mut ClientSocket<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self {
            Encoder::None => ws.push_frame(frame),
            // The compressors take contiguous text (and allocate their output anyway).
            Encoder::Zlib(z) => ws.push_binary(&z.compress(&frame.to_vec())),
            Encoder::Zstd(z) => match z.compress(&frame.to_vec()) {
                Ok(out) => ws.push_binary(&out),
                Err(e) => warn!(error = %e, "zstd compression failed; frame dropped"),
            },
        }
    }
}

fn parse_query(query: Option<&str>) -> Query {
    let mut q = Query {
        version_ok: true,
        compression: Compression::None,
        problem: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "v" => q.version_ok = value == "10",
            "encoding" if value != "json" => q.problem = Some("only encoding=json is served"),
            "compress" => match value {
                "zlib-stream" => q.compression = Compression::ZlibStream,
                "zstd-stream" => q.compression = Compression::ZstdStream,
                _ => q.problem = Some("compress must be zlib-stream or zstd-stream"),
            },
            _ => {}
        }
    }
    q
}

fn route(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return json_error(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
        };
        let query = parse_query(req.uri().query());
        if let Some(problem) = query.problem {
            return json_error(StatusCode::BAD_REQUEST, problem);
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = ClientSocket::new(TokioIo::new(upgraded), MAX_CLIENT_MESSAGE);
                    let encoder = Encoder::new(query.compression);
                    run_client(ws, shared, query.version_ok, encoder, stop).await;
                }
                Err(e) => debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        return response;
    }
    match path.as_str() {
        "/api/v10/gateway/bot" | "/api/gateway/bot" => {
            let authorized = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    let bare = v.strip_prefix("Bot ").unwrap_or(v);
                    shared.lock().hub.config().token.matches(bare)
                });
            if !authorized {
                return json_error(StatusCode::UNAUTHORIZED, "401: Unauthorized");
            }
            let body = serde_json::json!({
                "url": shared.public_url,
                "shards": shared.total,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": shared.total.max(1),
                }
            });
            text_response(StatusCode::OK, "application/json", body.to_string())
        }
        "/status" => text_response(StatusCode::OK, "application/json", shared.status_json()),
        "/metrics" => text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics_text(),
        ),
        "/api/v10/gateway" | "/api/gateway" => {
            let body = serde_json::json!({ "url": shared.public_url });
            text_response(StatusCode::OK, "application/json", body.to_string())
        }
        _ => json_error(StatusCode::NOT_FOUND, "404: Not Found"),
    }
}

/// One client connection, until it closes or is closed.
async fn run_client<S>(
    mut ws: ClientSocket<S>,
    shared: Arc<Shared>,
    version_ok: bool,
    mut encoder: Encoder,
    stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // One task owns the whole stream (no split halves and their lock per frame): it reads
    // the client between batches, and a batch is written and flushed in one go.
    let (tx, mut rx) = mpsc::channel(shared.client_queue);
    let (close_tx, mut close_rx) = watch::channel(None);
    let (client, hello) = {
        let mut state = shared.lock();
        let (client, hello) = state.hub.connect();
        state.clients.insert(
            client,
            ClientTx {
                frames: tx,
                close: close_tx,
            },
        );
        (client, hello)
    };
    if *stop.borrow() {
        ws.push_close(1001, "proxy stopping");
        let _ = ws.flush().await;
        shared.lock().hub.client_gone(client);
        return;
    }
    debug!(client = client.0, "client connected");
    let mut closing: Option<(u16, &'static str)> = None;
    // The client's own close frame, with its code, to answer.
    let mut answer: Option<Option<u16>> = None;
    if !version_ok {
        closing = Some((close::INVALID_API_VERSION, "invalid api version"));
    } else {
        encoder.push(&hello, &mut ws);
        if ws.flush().await.is_err() {
            closing = Some((1000, ""));
        }
    }
    let mut actions = Vec::new();
    // A client that sends nothing (not even a heartbeat) for its interval plus the grace is
    // closed with 4000, resumable: Discord closes zombie connections too.
    let silence = Duration::from_millis(shared.silence_ms);
    let zombie = tokio::time::sleep(silence);
    tokio::pin!(zombie);
    while closing.is_none() {
        tokio::select! {
            biased;
            () = &mut zombie => {
                info!(client = client.0, "client sent nothing within its heartbeat interval");
                shared.lock().hub.client_gone(client);
                closing = Some((close::UNKNOWN_ERROR, "heartbeat timed out"));
            }
            changed = close_rx.changed() => {
                closing = match changed {
                    Ok(()) => *close_rx.borrow(),
                    Err(_) => Some((1001, "proxy stopping")),
                };
            }
            batch = rx.recv() => {
                let Some(frames) = batch else { break };
                for frame in &frames {
                    encoder.push(frame, &mut ws);
                }
                // Batches already queued behind this one go out with it: one write to the
                // socket per burst, not one per event. Bounded, so that a close or a client
                // frame waits at most this many batches.
                for _ in 0..DRAIN_BATCHES {
                    let Ok(frames) = rx.try_recv() else { break };
                    for frame in &frames {
                        encoder.push(frame, &mut ws);
                    }
                }
                let write = ws.flush();
                // A client that stops reading blocks this write; being closed as lagging ends
                // it without waiting for the socket.
                tokio::select! {
                    written = write => if written.is_err() { break },
                    _ = close_rx.changed() => closing = *close_rx.borrow(),
                }
            }
            message = ws.next() => match message {
                Ok(Some(WsIncoming::Text(text))) => {
                    zombie.as_mut().reset(tokio::time::Instant::now() + silence);
                    let mut state = shared.lock();
                    state.hub.client_text(client, &text, &mut actions);
                    state.apply(&mut actions);
                }
                Ok(Some(WsIncoming::Binary(_))) => {
                    closing = Some((close::DECODE_ERROR, "decode error"));
                }
                Ok(Some(WsIncoming::Ping(payload))) => {
                    ws.push_pong(&payload);
                    if ws.flush().await.is_err() {
                        break;
                    }
                }
                Ok(Some(WsIncoming::Close(code))) => {
                    // The client closes: answer with its code, as the RFC asks.
                    answer = Some(code);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(client = client.0, error = %e, "client socket ended");
                    break;
                }
                Ok(Some(_)) => {}
            },
        }
    }
    {
        let mut state = shared.lock();
        state.hub.client_gone(client);
        state.clients.remove(&client);
    }
    if let Some((code, reason)) = closing {
        ws.push_close(code, reason);
    } else if let Some(code) = answer {
        match code {
            Some(code) => ws.push_close(code, ""),
            None => ws.push_close_empty(),
        }
    }
    // Bounded: a client that does not read gets no close handshake.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        ws.flush().await?;
        ws.shutdown().await
    })
    .await;
    info!(client = client.0, "client disconnected");
}
