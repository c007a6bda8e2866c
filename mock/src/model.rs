//! The sans-IO mock gateway: Discord's gateway v10 server side as a pure state machine.
//!
//! [`MockGateway`] owns no socket, reads no clock and spawns nothing. The caller feeds it facts
//! through the [`MemoryPeer`] methods (a client connected, sent a message, sent a close frame,
//! went away; time passed) and through the scripting methods ([`MockGateway::dispatch`],
//! [`MockGateway::inject`], [`MockGateway::stream`]). After every call the caller MUST drain
//! [`MemoryPeer::poll_action`] until it returns `None` and carry each action out on that
//! connection, then call [`MemoryPeer::handle_timeout`] no later than
//! [`MemoryPeer::poll_timeout`].
//!
//! The same model runs in memory against the real client stack (simulation) and behind the
//! loopback WebSocket server ([`MockServer`](crate::MockServer)). All randomness (session
//! ids, garbage frames) comes from [`MockConfig::seed`]: the same seed and the same inputs give
//! the same actions.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover_core::{Message, TransportId};
use handover_protocol::{CloseCode, Compression, OpCode};
use handover_transport_ws::memory::{MemoryPeer, PeerAction};
use serde_json::{Value, json};
use tracing::debug;

use crate::close_codes::{SessionAfterClose, session_after_close};
use crate::compress::Compressor;
use crate::config::{DOCUMENTED_INTENTS, MockConfig, PRIVILEGED_INTENTS};
use crate::counters::{Counters, ShardCounters};
use crate::fault::{Fault, Garbage, ShardKey, StreamId, StreamRate, StreamSpec, Target};

/// The `_trace` value the mock puts in HELLO, READY and RESUMED.
const TRACE: &str = "handover-mock";

/// Request Channel Info, a client opcode of gateway v10
/// (<https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes>)
/// that [`OpCode`] does not model: the mock accepts it after the handshake.
const REQUEST_CHANNEL_INFO: u64 = 43;

/// Close code the mock uses when a client stops heartbeating (the session stays resumable, as
/// Discord documents: "you will be forced to Resume").
pub const HEARTBEAT_TIMEOUT_CLOSE: u16 = 4000;

/// The id of the bot user (and of its application) of the token at index `token`, as READY
/// reports it: `1000000000000000000 + token`.
pub const fn bot_user_id(token: usize) -> u64 {
    1_000_000_000_000_000_000u64.saturating_add(token as u64)
}

/// An answer to an HTTP request, computed by the model so the HTTP API is sans-IO too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

/// What the mock knows about one open connection, for tests that pick a target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection.
    pub id: TransportId,
    /// The URL (or request target) the client connected to.
    pub url: String,
    /// Transport compression in use ([`Compression::None`] for none).
    pub compression: Compression,
    /// The shard this socket is counted for (after an accepted IDENTIFY or RESUME).
    pub shard: Option<ShardKey>,
    /// The session whose events this socket receives now.
    pub session_id: Option<String>,
    /// The mock has sent (or answered) a close frame.
    pub closing: bool,
    /// The connection is a zombie: the mock sends nothing more on it.
    pub zombie: bool,
}

/// What happens to a session when its connection goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Resumable,
    End,
}

/// Fate of the session after the mock closes with `code`, from the mock's own reading of
/// Discord's documentation ([`close_codes`](crate::close_codes)): the codes after which a new
/// session is needed, or no reconnect is allowed, end it; every other code leaves it resumable.
fn fate_of_server_close(code: u16) -> Fate {
    match session_after_close(code) {
        SessionAfterClose::Resumable => Fate::Resumable,
        _ => Fate::End,
    }
}

struct TokenState {
    revoked: bool,
    remaining: u32,
    reset_at: Option<Instant>,
}

struct Session {
    key: ShardKey,
    seq: u64,
    buffer: VecDeque<(u64, Bytes)>,
    attached: Option<TransportId>,
    resumable_until: Option<Instant>,
}

struct Conn {
    url: String,
    compression: Compression,
    compressor: Option<Compressor>,
    identified: bool,
    shard: Option<ShardKey>,
    session: Option<String>,
    recent_sends: VecDeque<Instant>,
    heartbeat_due: Option<Instant>,
    closing: Option<Instant>,
    close_received: bool,
    zombie: bool,
    stop_acks: bool,
    ignore_close: bool,
    delay: Duration,
    delayed_pending: usize,
    last_due: Option<Instant>,
}

impl Conn {
    /// The mock may still write frames of its own on this connection.
    fn writable(&self) -> bool {
        !self.zombie && self.closing.is_none() && !self.close_received
    }
}

struct ActiveStream {
    key: ShardKey,
    event: String,
    data: String,
    remaining: u64,
    rate: StreamRate,
    next_at: Instant,
}

/// The mock gateway's state machine. See the [module docs](self) for the driving rules.
pub struct MockGateway {
    config: MockConfig,
    url: String,
    rng: fastrand::Rng,
    now: Option<Instant>,
    conns: BTreeMap<TransportId, Conn>,
    sessions: BTreeMap<String, Session>,
    session_index: BTreeMap<String, ShardKey>,
    tokens: Vec<TokenState>,
    buckets: BTreeMap<(usize, u32), Instant>,
    streams: BTreeMap<StreamId, ActiveStream>,
    next_stream: u64,
    driver_pulls_streams: bool,
    delay_line: BTreeMap<(Instant, u64), (TransportId, PeerAction)>,
    delay_seq: u64,
    actions: VecDeque<(TransportId, PeerAction)>,
    counters: Counters,
}

impl std::fmt::Debug for MockGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGateway")
            .field("url", &self.url)
            .field("connections", &self.conns.len())
            .field("sessions", &self.sessions.len())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl MockGateway {
    /// A mock with this configuration. Its URL (returned as `resume_gateway_url` and by
    /// `GET /gateway`) is `ws://mock-gateway.invalid` until [`set_url`](Self::set_url).
    pub fn new(mut config: MockConfig) -> MockGateway {
        config.session_start.max_concurrency = config.session_start.max_concurrency.max(1);
        config.shards = config.shards.max(1);
        let tokens = config
            .tokens
            .iter()
            .map(|_| TokenState {
                revoked: false,
                remaining: config.session_start.remaining,
                reset_at: None,
            })
            .collect();
        MockGateway {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            url: "ws://mock-gateway.invalid".to_owned(),
            now: None,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_index: BTreeMap::new(),
            tokens,
            buckets: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream: 0,
            driver_pulls_streams: false,
            delay_line: BTreeMap::new(),
            delay_seq: 0,
            actions: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Set the URL clients should reconnect to (READY's `resume_gateway_url`, HTTP `url`).
    pub fn set_url(&mut self, url: impl Into<String>) {
        self.url = url.into();
    }

    /// The URL clients should reconnect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration in force (after clamping `session_start.max_concurrency` and `shards` to
    /// at least 1).
    pub fn config(&self) -> &MockConfig {
        &self.config
    }

    /// Declare that the driver calls [`pull_stream`](Self::pull_stream) whenever a connection's
    /// outbound queue runs empty (a driver with real socket backpressure does). Without it, a
    /// stream running [`StreamRate::AsFastAsRead`] emits one batch per
    /// [`handle_timeout`](MemoryPeer::handle_timeout) while it has a reader, which is as fast as
    /// an in-memory client reads.
    pub fn set_driver_pulls_streams(&mut self, on: bool) {
        self.driver_pulls_streams = on;
    }

    /// A snapshot of every counter.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.live_sockets = self.conns.len();
        c
    }

    /// The open connections, in id order.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.conns
            .iter()
            .map(|(id, c)| ConnectionInfo {
                id: *id,
                url: c.url.clone(),
                compression: c.compression,
                shard: c.shard,
                session_id: c.session.clone(),
                closing: c.closing.is_some() || c.close_received,
                zombie: c.zombie,
            })
            .collect()
    }

    /// Whether the socket of `conn` must write nothing on its own any more (no pong, no close
    /// reply): true for a zombie, and for a connection told to ignore close frames once the
    /// client's close frame arrived. A socket driver MUST honour it; the in-memory harness has
    /// nothing automatic to suppress.
    pub fn socket_muted(&self, conn: TransportId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.zombie || (c.ignore_close && c.close_received))
    }

    /// Dispatch event `event` with data `data` to every live session of `shard` (each numbers it
    /// with its own seq and keeps it for replay). Returns how many connections it was written to
    /// now (sessions between connections get it on RESUME).
    pub fn dispatch(
        &mut self,
        now: Instant,
        shard: impl Into<ShardKey>,
        event: &str,
        data: &Value,
    ) -> usize {
        self.advance(now);
        let data = data.to_string();
        self.dispatch_json(now, shard.into(), event, &data)
    }

    /// Apply `fault` to every connection in `target` now. Returns how many connections it hit.
    pub fn inject(&mut self, now: Instant, target: impl Into<Target>, fault: Fault) -> usize {
        self.advance(now);
        let ids: Vec<TransportId> = match target.into() {
            Target::Shard(key) => self
                .conns
                .iter()
                .filter(|(_, c)| c.shard == Some(key))
                .map(|(id, _)| *id)
                .collect(),
            Target::Token(token) => self
                .conns
                .iter()
                .filter(|(_, c)| c.shard.is_some_and(|k| k.token == token))
                .map(|(id, _)| *id)
                .collect(),
            Target::Connection(id) => self
                .conns
                .contains_key(&id)
                .then_some(id)
                .into_iter()
                .collect(),
            Target::All => self.conns.keys().copied().collect(),
        };
        for &id in &ids {
            self.apply_fault(now, id, fault);
        }
        ids.len()
    }

    /// Start a bounded stream of dispatches. The first dispatch (or first batch) goes out now.
    pub fn stream(&mut self, now: Instant, spec: StreamSpec) -> StreamId {
        self.advance(now);
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let rate = match spec.rate {
            StreamRate::Every(iv) if iv.is_zero() => StreamRate::AsFastAsRead,
            r => r,
        };
        self.streams.insert(
            id,
            ActiveStream {
                key: spec.shard,
                event: spec.event,
                data: spec.data.to_string(),
                remaining: spec.count,
                rate,
                next_at: now,
            },
        );
        if rate == StreamRate::AsFastAsRead {
            self.stream_batch(now, id);
        } else {
            self.run_streams(now);
        }
        id
    }

    /// Stop a stream. Returns whether it was still running.
    pub fn cancel_stream(&mut self, id: StreamId) -> bool {
        self.streams.remove(&id).is_some()
    }

    /// Dispatches of stream `id` not written yet: 0 once it has written its last one (or was
    /// cancelled, or never existed). A paced stream writes as its time comes; an
    /// as-fast-as-read one as its reader drains it.
    pub fn stream_remaining(&self, id: StreamId) -> u64 {
        self.streams.get(&id).map_or(0, |s| s.remaining)
    }

    /// The driver's outbound queue for `conn` ran empty: emit the next batch of every
    /// as-fast-as-read stream for its shard. Returns how many dispatches were emitted.
    pub fn pull_stream(&mut self, now: Instant, conn: TransportId) -> usize {
        self.advance(now);
        let Some(key) = self
            .conns
            .get(&conn)
            .filter(|c| c.writable())
            .and_then(|c| c.session.as_ref())
            .and_then(|sid| self.sessions.get(sid))
            .map(|s| s.key)
        else {
            return 0;
        };
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.key == key && s.rate == StreamRate::AsFastAsRead)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().map(|id| self.stream_batch(now, id)).sum()
    }

    /// Answer an HTTP request: `GET /api/v10/gateway` and `GET /api/v10/gateway/bot` (which
    /// needs `Authorization: Bot <token>`). Anything else gets Discord's JSON error body.
    pub fn http_request(
        &mut self,
        now: Instant,
        method: &str,
        target: &str,
        authorization: Option<&str>,
    ) -> HttpReply {
        self.advance(now);
        self.counters.http_requests += 1;
        let path = target.split('?').next().unwrap_or("");
        let path = path.trim_end_matches('/');
        let error = |status: u16, text: &str| HttpReply {
            status,
            body: json!({ "message": format!("{status}: {text}"), "code": 0 }).to_string(),
        };
        if path != "/api/v10/gateway" && path != "/api/v10/gateway/bot" {
            return error(404, "Not Found");
        }
        if method != "GET" {
            return error(405, "Method Not Allowed");
        }
        if path == "/api/v10/gateway" {
            return HttpReply {
                status: 200,
                body: json!({ "url": self.url }).to_string(),
            };
        }
        let token = authorization
            .and_then(|a| a.strip_prefix("Bot "))
            .and_then(|t| self.token_index(t));
        let Some(token) = token else {
            return error(401, "Unauthorized");
        };
        self.refresh_budget(now, token);
        let state = &self.tokens[token];
        let reset_after = state
            .reset_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        HttpReply {
            status: 200,
            body: json!({
                "url": self.url,
                "shards": self.config.shards,
                "session_start_limit": {
                    "total": self.config.session_start.total,
                    "remaining": state.remaining,
                    "reset_after": u64::try_from(reset_after.as_millis()).unwrap_or(u64::MAX),
                    "max_concurrency": self.config.session_start.max_concurrency,
                },
            })
            .to_string(),
        }
    }

    /// Forget every connection (the server is shutting down): live counts drop to zero and their
    /// sessions become resumable, as after a drop.
    pub fn disconnect_all(&mut self, now: Instant) {
        self.advance(now);
        let ids: Vec<TransportId> = self.conns.keys().copied().collect();
        for id in ids {
            self.finalize(now, id);
        }
        self.actions.clear();
    }

    // ---- internals ---------------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        if self.now.is_none() {
            let first = now + self.config.session_start.reset_after;
            for t in &mut self.tokens {
                t.reset_at = Some(first);
            }
        }
        if self.now.is_none_or(|n| now > n) {
            self.now = Some(now);
        }
    }

    /// The index of an accepted, not revoked token, given as configured.
    fn token_index(&self, token: &str) -> Option<usize> {
        let i = self.config.tokens.iter().position(|t| t == token)?;
        (!self.tokens[i].revoked).then_some(i)
    }

    /// The token of an IDENTIFY or RESUME: Discord accepts it bare or with the `Bot ` prefix
    /// of the HTTP `Authorization` header (twilight-gateway sends the prefixed form), so the
    /// mock does too. Anything else is refused.
    fn gateway_token_index(&self, token: &str) -> Option<usize> {
        self.token_index(token)
            .or_else(|| token.strip_prefix("Bot ").and_then(|t| self.token_index(t)))
    }

    fn refresh_budget(&mut self, now: Instant, token: usize) {
        let period = self
            .config
            .session_start
            .reset_after
            .max(Duration::from_millis(1));
        let total = self.config.session_start.total;
        let state = &mut self.tokens[token];
        let Some(reset_at) = state.reset_at else {
            return;
        };
        if now >= reset_at {
            let periods = (now - reset_at).as_nanos() / period.as_nanos() + 1;
            let step = period
                .as_nanos()
                .saturating_mul(periods)
                .min(u128::from(u64::MAX));
            // `step` was clamped to u64 just above.
            state.reset_at = Some(reset_at + Duration::from_nanos(step as u64));
            state.remaining = total;
        }
    }

    fn shard_counters(&mut self, key: ShardKey) -> &mut ShardCounters {
        self.counters.shards.entry(key).or_default()
    }

    /// Queue `action` for `id`, through the connection's delay line if it has one. Returns when
    /// the action leaves the mock.
    fn enqueue(&mut self, now: Instant, id: TransportId, action: PeerAction) -> Instant {
        let Some(conn) = self.conns.get_mut(&id) else {
            return now;
        };
        if conn.delay.is_zero() && conn.delayed_pending == 0 {
            self.actions.push_back((id, action));
            return now;
        }
        let mut due = now + conn.delay;
        if let Some(last) = conn.last_due {
            due = due.max(last);
        }
        conn.last_due = Some(due);
        conn.delayed_pending += 1;
        self.delay_seq += 1;
        self.delay_line.insert((due, self.delay_seq), (id, action));
        due
    }

    /// Send one payload (compressed if the connection asked for it). Returns whether it was
    /// queued.
    fn send_payload(&mut self, now: Instant, id: TransportId, text: Bytes) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        if !conn.writable() {
            return false;
        }
        let msg = match conn.compressor.as_mut() {
            None => Message::Text(text),
            Some(c) => match c.compress(&text) {
                Ok(b) => Message::Binary(b),
                Err(error) => {
                    debug!(conn = id.0, %error, "compression failed, dropping connection");
                    self.drop_conn(now, id);
                    return false;
                }
            },
        };
        self.enqueue(now, id, PeerAction::Send(msg));
        true
    }

    fn send_op(&mut self, now: Instant, id: TransportId, op: OpCode, d: Value) -> bool {
        let text = json!({ "op": op.code(), "d": d, "s": null, "t": null }).to_string();
        self.send_payload(now, id, Bytes::from(text))
    }

    fn send_invalid_session(&mut self, now: Instant, id: TransportId, resumable: bool) {
        if self.send_op(now, id, OpCode::InvalidSession, Value::Bool(resumable))
            && let Some(key) = self.conns.get(&id).and_then(|c| c.shard)
        {
            self.shard_counters(key).invalid_sessions_sent += 1;
        }
    }

    /// The mock closes `id` with `code` (unless it is a zombie or already closing).
    fn close_conn(&mut self, now: Instant, id: TransportId, code: u16) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if !conn.writable() {
            return;
        }
        debug!(conn = id.0, code, "mock closes");
        let due = self.enqueue(now, id, PeerAction::Close(code));
        let timeout = self.config.close_timeout;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.closing = Some(due + timeout);
        let shard = conn.shard;
        let session = conn.session.take();
        if let Some(key) = shard {
            self.shard_counters(key).server_closes.push(code);
        }
        if let Some(sid) = session {
            self.detach_session(now, &sid, fate_of_server_close(code));
        }
    }

    /// Drop TCP now: anything delayed is discarded and the connection is gone.
    fn drop_conn(&mut self, now: Instant, id: TransportId) {
        if !self.conns.contains_key(&id) {
            return;
        }
        debug!(conn = id.0, "mock drops tcp");
        self.actions.push_back((id, PeerAction::Drop));
        self.finalize(now, id);
    }

    /// The transport of `id` is gone.
    fn finalize(&mut self, now: Instant, id: TransportId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if conn.delayed_pending > 0 {
            self.delay_line.retain(|_, (c, _)| *c != id);
        }
        if let Some(key) = conn.shard {
            let sc = self.shard_counters(key);
            sc.live_sockets = sc.live_sockets.saturating_sub(1);
        }
        if let Some(sid) = conn.session {
            self.detach_session(now, &sid, Fate::Resumable);
        }
        self.counters.live_sockets = self.conns.len();
    }

    fn detach_session(&mut self, now: Instant, sid: &str, fate: Fate) {
        match fate {
            Fate::End => {
                self.sessions.remove(sid);
            }
            Fate::Resumable => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.attached = None;
                    s.resumable_until = Some(now + self.config.resume_window);
                }
            }
        }
    }

    /// Count `id` for `key` from now on.
    fn count_for_shard(&mut self, id: TransportId, key: ShardKey) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let old = conn.shard.replace(key);
        if old == Some(key) {
            return;
        }
        if let Some(old) = old {
            let sc = self.shard_counters(old);
            sc.live_sockets = sc.live_sockets.saturating_sub(1);
        }
        let sc = self.shard_counters(key);
        sc.live_sockets += 1;
        sc.max_live_sockets = sc.max_live_sockets.max(sc.live_sockets);
    }

    fn session_alive(session: &Session, now: Instant) -> bool {
        session.attached.is_some() || session.resumable_until.is_some_and(|t| t > now)
    }

    fn dispatch_json(&mut self, now: Instant, key: ShardKey, event: &str, data: &str) -> usize {
        let sids: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.key == key && Self::session_alive(s, now))
            .map(|(id, _)| id.clone())
            .collect();
        sids.iter()
            .filter(|sid| self.push_dispatch(now, sid, event, data))
            .count()
    }

    /// Number, buffer and (if attached) send one dispatch of session `sid`. Returns whether it
    /// was written to a connection.
    fn push_dispatch(&mut self, now: Instant, sid: &str, event: &str, data: &str) -> bool {
        let limit = self.config.replay_buffer;
        let Some(session) = self.sessions.get_mut(sid) else {
            return false;
        };
        session.seq += 1;
        let seq = session.seq;
        let name = Value::String(event.to_owned());
        let payload = Bytes::from(format!(
            "{{\"op\":0,\"t\":{name},\"s\":{seq},\"d\":{data}}}"
        ));
        session.buffer.push_back((seq, payload.clone()));
        while session.buffer.len() > limit {
            session.buffer.pop_front();
        }
        let key = session.key;
        let Some(conn) = session.attached else {
            return false;
        };
        if !self.send_payload(now, conn, payload) {
            return false;
        }
        self.record_seq(key, sid, seq, false);
        true
    }

    fn record_seq(&mut self, key: ShardKey, sid: &str, seq: u64, replay: bool) {
        let sc = self.shard_counters(key);
        sc.sessions
            .entry(sid.to_owned())
            .or_default()
            .record(seq, replay);
    }

    fn new_session_id(&mut self) -> String {
        format!("{:016x}{:016x}", self.rng.u64(..), self.rng.u64(..))
    }

    fn apply_fault(&mut self, now: Instant, id: TransportId, fault: Fault) {
        debug!(conn = id.0, ?fault, "fault");
        match fault {
            Fault::Zombie => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.zombie = true;
                }
            }
            Fault::StopAcks => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.stop_acks = true;
                }
            }
            Fault::DropTcp => self.drop_conn(now, id),
            Fault::IgnoreCloseFrames => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.ignore_close = true;
                }
            }
            Fault::Reconnect => {
                if self.send_op(now, id, OpCode::Reconnect, Value::Null)
                    && let Some(key) = self.conns.get(&id).and_then(|c| c.shard)
                {
                    self.shard_counters(key).reconnects_sent += 1;
                }
            }
            Fault::InvalidSession { resumable } => {
                self.send_invalid_session(now, id, resumable);
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                if !conn.writable() {
                    return;
                }
                conn.identified = false;
                if let Some(sid) = conn.session.take() {
                    let fate = if resumable {
                        Fate::Resumable
                    } else {
                        Fate::End
                    };
                    self.detach_session(now, &sid, fate);
                }
            }
            Fault::Close(code) => self.close_conn(now, id, code),
            Fault::Delay(d) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.delay = d;
                }
            }
            Fault::Garbage(kind) => {
                if !self.conns.get(&id).is_some_and(Conn::writable) {
                    return;
                }
                let msg = match kind {
                    Garbage::Text => {
                        let tail: String = std::iter::repeat_with(|| self.rng.alphanumeric())
                            .take(12)
                            .collect();
                        Message::text(format!("{{\"op\":0,\"d\":{{\"garbage\":\"{tail}"))
                    }
                    Garbage::Binary => {
                        let junk: Vec<u8> = std::iter::repeat_with(|| self.rng.u8(..))
                            .take(64)
                            .collect();
                        Message::Binary(Bytes::from(junk))
                    }
                };
                self.enqueue(now, id, PeerAction::Send(msg));
            }
            Fault::RequestHeartbeat => {
                self.send_op(now, id, OpCode::Heartbeat, Value::Null);
            }
        }
    }

    fn stream_has_reader(&self, key: ShardKey) -> bool {
        self.sessions.values().any(|s| {
            s.key == key
                && s.attached
                    .and_then(|c| self.conns.get(&c))
                    .is_some_and(Conn::writable)
        })
    }

    /// Emit one batch of an as-fast-as-read stream. Returns the number of dispatches.
    fn stream_batch(&mut self, now: Instant, id: StreamId) -> usize {
        let batch = self.config.stream_batch.max(1) as u64;
        let Some(s) = self.streams.get_mut(&id) else {
            return 0;
        };
        let n = s.remaining.min(batch);
        s.remaining -= n;
        let (key, event, data) = (s.key, s.event.clone(), s.data.clone());
        if s.remaining == 0 {
            self.streams.remove(&id);
        }
        for _ in 0..n {
            self.dispatch_json(now, key, &event, &data);
        }
        // `n` is at most `stream_batch`, a usize.
        n as usize
    }

    fn run_streams(&mut self, now: Instant) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let Some(s) = self.streams.get(&id) else {
                continue;
            };
            match s.rate {
                StreamRate::Every(iv) => {
                    while let Some(s) = self.streams.get_mut(&id)
                        && s.remaining > 0
                        && s.next_at <= now
                    {
                        s.remaining -= 1;
                        s.next_at += iv;
                        let (key, event, data) = (s.key, s.event.clone(), s.data.clone());
                        self.dispatch_json(now, key, &event, &data);
                    }
                    if self.streams.get(&id).is_some_and(|s| s.remaining == 0) {
                        self.streams.remove(&id);
                    }
                }
                StreamRate::AsFastAsRead => {
                    if !self.driver_pulls_streams && self.stream_has_reader(s.key) {
                        self.stream_batch(now, id);
                    }
                }
            }
        }
    }

    // ---- client payloads -------------------------------------------------------------------

    fn on_payload(&mut self, now: Instant, id: TransportId, bytes: &[u8]) {
        let (limit, window, max_payload) = (
            self.config.send_limit as usize,
            self.config.send_window,
            self.config.max_payload,
        );
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.zombie && conn.shard.is_some() {
            // A zombie reads and never answers; heartbeats are still counted, so a test can see
            // the client kept beating into the void.
            let beat = serde_json::from_slice::<Value>(bytes)
                .is_ok_and(|v| v.get("op").and_then(Value::as_u64) == Some(1));
            if let (true, Some(key)) = (beat, conn.shard) {
                self.shard_counters(key).heartbeats_received += 1;
            }
            return;
        }
        if !conn.writable() {
            return;
        }
        while conn
            .recent_sends
            .front()
            .is_some_and(|&t| t + window <= now)
        {
            conn.recent_sends.pop_front();
        }
        conn.recent_sends.push_back(now);
        if conn.recent_sends.len() > limit {
            return self.close_conn(now, id, CloseCode::RateLimited.code());
        }
        if bytes.len() > max_payload {
            return self.close_conn(now, id, CloseCode::DecodeError.code());
        }
        let Ok(Value::Object(mut payload)) = serde_json::from_slice::<Value>(bytes) else {
            return self.close_conn(now, id, CloseCode::DecodeError.code());
        };
        let Some(op) = payload.get("op").and_then(Value::as_u64) else {
            return self.close_conn(now, id, CloseCode::DecodeError.code());
        };
        let d = payload.remove("d").unwrap_or(Value::Null);
        let identified = conn.identified;
        if op == REQUEST_CHANNEL_INFO {
            // Sendable by clients (Discord's opcode table) but not modelled by the protocol
            // layer: accepted after the handshake like the other commands, nothing answered.
            if !identified {
                self.close_conn(now, id, CloseCode::NotAuthenticated.code());
            }
            return;
        }
        match OpCode::from_code(op) {
            Some(OpCode::Heartbeat) => self.on_heartbeat(now, id),
            Some(OpCode::Identify) => self.on_identify(now, id, &d),
            Some(OpCode::Resume) => self.on_resume(now, id, &d),
            Some(
                OpCode::PresenceUpdate
                | OpCode::VoiceStateUpdate
                | OpCode::RequestGuildMembers
                | OpCode::RequestSoundboardSounds,
            ) => {
                if !identified {
                    self.close_conn(now, id, CloseCode::NotAuthenticated.code());
                }
            }
            _ => self.close_conn(now, id, CloseCode::UnknownOpcode.code()),
        }
    }

    fn on_heartbeat(&mut self, now: Instant, id: TransportId) {
        let next = self
            .config
            .heartbeat_grace
            .map(|g| now + self.config.heartbeat_interval + g);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.heartbeat_due = next;
        let shard = conn.shard;
        let stop_acks = conn.stop_acks;
        if let Some(key) = shard {
            self.shard_counters(key).heartbeats_received += 1;
        }
        if stop_acks {
            return;
        }
        if self.send_op(now, id, OpCode::HeartbeatAck, Value::Null)
            && let Some(key) = shard
        {
            self.shard_counters(key).acks_sent += 1;
        }
    }

    fn on_identify(&mut self, now: Instant, id: TransportId, d: &Value) {
        if self.conns.get(&id).is_some_and(|c| c.identified) {
            return self.close_conn(now, id, CloseCode::AlreadyAuthenticated.code());
        }
        let token = d.get("token").and_then(Value::as_str);
        let intents = d.get("intents").and_then(Value::as_u64);
        let properties_ok = d.get("properties").is_some_and(Value::is_object);
        let (Some(token), Some(intents), true) = (token, intents, properties_ok) else {
            return self.close_conn(now, id, CloseCode::DecodeError.code());
        };
        let Some(token) = self.gateway_token_index(token) else {
            return self.close_conn(now, id, CloseCode::AuthenticationFailed.code());
        };
        let (shard_id, shard_count) = match d.get("shard") {
            None | Some(Value::Null) => (0, 1),
            Some(Value::Array(a)) if a.len() == 2 => {
                match (
                    a[0].as_u64().and_then(|v| u32::try_from(v).ok()),
                    a[1].as_u64().and_then(|v| u32::try_from(v).ok()),
                ) {
                    (Some(i), Some(n)) if n > 0 && i < n => (i, n),
                    _ => return self.close_conn(now, id, CloseCode::InvalidShard.code()),
                }
            }
            Some(_) => return self.close_conn(now, id, CloseCode::InvalidShard.code()),
        };
        if shard_count < self.config.min_shards {
            return self.close_conn(now, id, CloseCode::ShardingRequired.code());
        }
        let key = ShardKey::new(token, shard_id);
        self.shard_counters(key).identifies += 1;
        if intents & !DOCUMENTED_INTENTS != 0 {
            return self.close_conn(now, id, CloseCode::InvalidIntents.code());
        }
        if intents & PRIVILEGED_INTENTS & !self.config.allowed_privileged_intents != 0 {
            return self.close_conn(now, id, CloseCode::DisallowedIntents.code());
        }
        let bucket = (token, shard_id % self.config.session_start.max_concurrency);
        if let Some(&last) = self.buckets.get(&bucket)
            && now < last + self.config.identify_window
        {
            debug!(
                conn = id.0,
                shard = shard_id,
                "identify inside the concurrency window"
            );
            // Counted against the shard the client asked for, though not yet identified.
            if self.send_op(now, id, OpCode::InvalidSession, Value::Bool(false)) {
                self.shard_counters(key).invalid_sessions_sent += 1;
            }
            return;
        }
        self.refresh_budget(now, token);
        if self.tokens[token].remaining == 0 {
            return self.revoke_token(now, token, id);
        }
        self.tokens[token].remaining -= 1;
        self.buckets.insert(bucket, now);

        let sid = self.new_session_id();
        self.sessions.insert(
            sid.clone(),
            Session {
                key,
                seq: 0,
                buffer: VecDeque::new(),
                attached: Some(id),
                resumable_until: None,
            },
        );
        self.session_index.insert(sid.clone(), key);
        self.count_for_shard(id, key);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.identified = true;
            conn.session = Some(sid.clone());
        }
        let sc = self.shard_counters(key);
        sc.sessions_started += 1;
        sc.sessions.entry(sid.clone()).or_default();
        let user_id = bot_user_id(token).to_string();
        let ready = json!({
            "v": 10,
            "user": {
                "id": user_id,
                "username": format!("mock-bot-{token}"),
                "discriminator": "0",
                "global_name": null,
                "avatar": null,
                "bot": true,
                "verified": true,
                "mfa_enabled": false,
                "flags": 0,
            },
            "guilds": [],
            "session_id": sid,
            "resume_gateway_url": self.url,
            "shard": [shard_id, shard_count],
            "application": { "id": user_id, "flags": 0 },
            "_trace": [TRACE],
        });
        debug!(conn = id.0, shard = %key, "ready");
        self.push_dispatch(now, &sid, "READY", &ready.to_string());
    }

    /// The session-start budget ran out: Discord resets the token. Every connection of the token
    /// (and `tripping`, whose IDENTIFY hit the limit) is closed with 4004, its sessions end, and
    /// the token is refused from now on.
    fn revoke_token(&mut self, now: Instant, token: usize, tripping: TransportId) {
        debug!(token, "session-start budget exhausted, token revoked");
        self.tokens[token].revoked = true;
        let victims: Vec<TransportId> = self
            .conns
            .iter()
            .filter(|(id, c)| **id == tripping || c.shard.is_some_and(|k| k.token == token))
            .map(|(id, _)| *id)
            .collect();
        for id in victims {
            self.close_conn(now, id, CloseCode::AuthenticationFailed.code());
        }
        self.sessions.retain(|_, s| s.key.token != token);
    }

    fn on_resume(&mut self, now: Instant, id: TransportId, d: &Value) {
        if self.conns.get(&id).is_some_and(|c| c.identified) {
            return self.close_conn(now, id, CloseCode::AlreadyAuthenticated.code());
        }
        let token = d.get("token").and_then(Value::as_str);
        let sid = d.get("session_id").and_then(Value::as_str);
        let seq = d.get("seq").and_then(Value::as_u64);
        let (Some(token), Some(sid), Some(seq)) = (token, sid, seq) else {
            return self.close_conn(now, id, CloseCode::DecodeError.code());
        };
        let Some(token) = self.gateway_token_index(token) else {
            return self.close_conn(now, id, CloseCode::AuthenticationFailed.code());
        };
        let Some(&key) = self.session_index.get(sid) else {
            self.counters.resumes_unknown_session += 1;
            return self.send_invalid_session(now, id, false);
        };
        let sid = sid.to_owned();
        let usable = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.key.token == token && Self::session_alive(s, now));
        if !usable {
            debug!(conn = id.0, "resume of an ended or expired session");
            self.shard_counters(key).resumes_failed += 1;
            if self
                .sessions
                .get(&sid)
                .is_some_and(|s| !Self::session_alive(s, now))
            {
                self.sessions.remove(&sid);
                self.counters.sessions_expired += 1;
            }
            return self.send_invalid_session_for(now, id, key);
        }
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if seq > session.seq {
            self.shard_counters(key).resumes_failed += 1;
            return self.close_conn(now, id, CloseCode::InvalidSeq.code());
        }
        let oldest = session.buffer.front().map_or(session.seq + 1, |(s, _)| *s);
        if seq + 1 < oldest {
            debug!(
                conn = id.0,
                seq, oldest, "resume older than the replay buffer"
            );
            self.shard_counters(key).resumes_failed += 1;
            return self.send_invalid_session_for(now, id, key);
        }
        let replay: Vec<(u64, Bytes)> = session
            .buffer
            .iter()
            .filter(|(s, _)| *s > seq)
            .cloned()
            .collect();
        let previous = session.attached;

        // Take the session over: a connection still holding it keeps its socket (and stays
        // counted for the shard) but receives none of this session's events any more.
        if let Some(old) = previous.filter(|&old| old != id)
            && let Some(c) = self.conns.get_mut(&old)
        {
            c.session = None;
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.attached = Some(id);
            s.resumable_until = None;
        }
        self.count_for_shard(id, key);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.identified = true;
            conn.session = Some(sid.clone());
        }
        for (s, payload) in replay {
            if self.send_payload(now, id, payload) {
                self.record_seq(key, &sid, s, true);
            }
        }
        self.shard_counters(key).resumes_ok += 1;
        debug!(conn = id.0, shard = %key, from = seq, "resumed");
        let resumed = json!({ "_trace": [TRACE] }).to_string();
        self.push_dispatch(now, &sid, "RESUMED", &resumed);
    }

    fn send_invalid_session_for(&mut self, now: Instant, id: TransportId, key: ShardKey) {
        if self.send_op(now, id, OpCode::InvalidSession, Value::Bool(false)) {
            self.shard_counters(key).invalid_sessions_sent += 1;
        }
    }
}

/// Query parameters of a gateway URL the mock understands.
struct UrlParams {
    version_ok: bool,
    encoding_ok: bool,
    compression: Result<Compression, ()>,
}

fn parse_url(url: &str) -> UrlParams {
    let mut p = UrlParams {
        version_ok: true,
        encoding_ok: true,
        compression: Ok(Compression::None),
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" => p.version_ok = v == "10",
            "encoding" => p.encoding_ok = v == "json",
            "compress" => {
                p.compression = match v {
                    "zlib-stream" => Ok(Compression::ZlibStream),
                    "zstd-stream" => Ok(Compression::ZstdStream),
                    _ => Err(()),
                }
            }
            _ => {}
        }
    }
    p
}

impl MemoryPeer for MockGateway {
    fn on_connect(&mut self, now: Instant, conn: TransportId, url: &str) -> bool {
        self.advance(now);
        if self.conns.contains_key(&conn) {
            return false;
        }
        let params = parse_url(url);
        let compression = params.compression.unwrap_or(Compression::None);
        let compressor = match Compressor::new(compression) {
            Ok(c) => c,
            Err(error) => {
                debug!(conn = conn.0, %error, "compressor unavailable, refusing");
                return false;
            }
        };
        self.conns.insert(
            conn,
            Conn {
                url: url.to_owned(),
                compression,
                compressor,
                identified: false,
                shard: None,
                session: None,
                recent_sends: VecDeque::new(),
                heartbeat_due: self
                    .config
                    .heartbeat_grace
                    .map(|g| now + self.config.heartbeat_interval + g),
                closing: None,
                close_received: false,
                zombie: false,
                stop_acks: false,
                ignore_close: false,
                delay: Duration::ZERO,
                delayed_pending: 0,
                last_due: None,
            },
        );
        self.counters.connections_accepted += 1;
        self.counters.live_sockets = self.conns.len();
        self.counters.max_live_sockets = self.counters.max_live_sockets.max(self.conns.len());
        debug!(conn = conn.0, ?compression, "connected");
        if !params.version_ok {
            self.close_conn(now, conn, CloseCode::InvalidApiVersion.code());
        } else if !params.encoding_ok || params.compression.is_err() {
            self.close_conn(now, conn, CloseCode::DecodeError.code());
        } else {
            let interval =
                u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
            self.send_op(
                now,
                conn,
                OpCode::Hello,
                json!({ "heartbeat_interval": interval, "_trace": [TRACE] }),
            );
        }
        true
    }

    fn on_message(&mut self, now: Instant, conn: TransportId, msg: Message) {
        self.advance(now);
        self.on_payload(now, conn, msg.as_bytes());
    }

    fn on_close_frame(&mut self, now: Instant, conn: TransportId, code: u16) {
        self.advance(now);
        self.counters.close_frames.push(code);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let shard = c.shard;
        if c.closing.is_some() || c.close_received {
            // The reply to our own close frame (or a duplicate): nothing more to decide.
            if let Some(key) = shard {
                self.shard_counters(key).close_frames.push(code);
            }
            return;
        }
        c.close_received = true;
        let session = c.session.take();
        let answer = !(c.zombie || c.ignore_close);
        debug!(conn = conn.0, code, answer, "client close frame");
        if let Some(key) = shard {
            self.shard_counters(key).close_frames.push(code);
        }
        if let Some(sid) = session {
            let fate = if code == 1000 || code == 1001 {
                Fate::End
            } else {
                Fate::Resumable
            };
            self.detach_session(now, &sid, fate);
        }
        if answer {
            let due = self.enqueue(now, conn, PeerAction::Close(code));
            let timeout = self.config.close_timeout;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.closing = Some(due + timeout);
            }
        }
    }

    fn on_disconnect(&mut self, now: Instant, conn: TransportId) {
        self.advance(now);
        debug!(conn = conn.0, "disconnected");
        self.finalize(now, conn);
    }

    fn poll_action(&mut self) -> Option<(TransportId, PeerAction)> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(((due, _), _)) = self.delay_line.first_key_value() {
            take(*due);
        }
        for c in self.conns.values() {
            if let Some(deadline) = c.closing {
                take(deadline);
            } else if let Some(due) = c.heartbeat_due.filter(|_| c.writable()) {
                take(due);
            }
        }
        for s in self.sessions.values() {
            if s.attached.is_none()
                && let Some(until) = s.resumable_until
            {
                take(until);
            }
        }
        for s in self.streams.values() {
            match s.rate {
                StreamRate::Every(_) => take(s.next_at),
                StreamRate::AsFastAsRead => {
                    if !self.driver_pulls_streams
                        && self.stream_has_reader(s.key)
                        && let Some(now) = self.now
                    {
                        take(now);
                    }
                }
            }
        }
        t
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(entry) = self.delay_line.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (id, action) = entry.remove();
            if let Some(c) = self.conns.get_mut(&id) {
                c.delayed_pending = c.delayed_pending.saturating_sub(1);
                if !c.zombie || action == PeerAction::Drop {
                    self.actions.push_back((id, action));
                }
            }
        }
        let ids: Vec<TransportId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            if let Some(deadline) = c.closing {
                if deadline <= now {
                    debug!(conn = id.0, "close handshake timed out");
                    self.drop_conn(now, id);
                }
            } else if c.writable() && c.heartbeat_due.is_some_and(|due| due <= now) {
                debug!(conn = id.0, "client stopped heartbeating");
                self.close_conn(now, id, HEARTBEAT_TIMEOUT_CLOSE);
            }
        }
        let before = self.sessions.len();
        self.sessions
            .retain(|_, s| s.attached.is_some() || s.resumable_until.is_some_and(|t| t > now));
        self.counters.sessions_expired += (before - self.sessions.len()) as u64;
        self.run_streams(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny in-memory harness: one model, virtual time, decoded frames per connection.
    struct Sim {
        gw: MockGateway,
        now: Instant,
        next_conn: u64,
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Out {
        Json(Value),
        Raw(Message),
        Close(u16),
        Drop,
    }

    impl Sim {
        fn new(config: MockConfig) -> Sim {
            Sim {
                gw: MockGateway::new(config),
                now: Instant::now(),
                next_conn: 0,
            }
        }

        fn fast() -> MockConfig {
            MockConfig {
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_grace: None,
                resume_window: Duration::from_millis(500),
                identify_window: Duration::from_millis(200),
                close_timeout: Duration::from_millis(100),
                seed: 7,
                ..MockConfig::default()
            }
        }

        fn drain(&mut self) -> Vec<(TransportId, Out)> {
            let mut out = Vec::new();
            while let Some((c, a)) = self.gw.poll_action() {
                out.push((
                    c,
                    match a {
                        PeerAction::Send(Message::Text(t)) => match serde_json::from_slice(&t) {
                            Ok(v) => Out::Json(v),
                            Err(_) => Out::Raw(Message::Text(t)),
                        },
                        PeerAction::Send(m) => Out::Raw(m),
                        PeerAction::Close(code) => Out::Close(code),
                        PeerAction::Drop => Out::Drop,
                    },
                ));
            }
            out
        }

        fn connect(&mut self) -> TransportId {
            self.next_conn += 1;
            let id = TransportId(self.next_conn);
            assert!(
                self.gw
                    .on_connect(self.now, id, "ws://x/?v=10&encoding=json")
            );
            let hello = self.drain();
            assert_eq!(hello.len(), 1);
            id
        }

        fn send(&mut self, id: TransportId, v: Value) -> Vec<Out> {
            self.gw
                .on_message(self.now, id, Message::text(v.to_string()));
            self.drain().into_iter().map(|(_, o)| o).collect()
        }

        fn advance(&mut self, by: Duration) -> Vec<(TransportId, Out)> {
            let end = self.now + by;
            let mut out = Vec::new();
            loop {
                match self.gw.poll_timeout() {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.gw.handle_timeout(self.now);
                        out.extend(self.drain());
                    }
                    _ => break,
                }
            }
            self.now = end;
            out
        }

        fn identify(&mut self, id: TransportId, shard: [u32; 2]) -> Vec<Out> {
            self.send(
                id,
                json!({"op": 2, "d": {"token": "mock-token", "intents": 513,
                    "properties": {"os": "linux", "browser": "t", "device": "t"},
                    "shard": shard}}),
            )
        }
    }

    fn ready_session(out: &[Out]) -> String {
        match out {
            [Out::Json(v)] if v["t"] == "READY" => v["d"]["session_id"].as_str().unwrap().into(),
            other => panic!("expected READY, got {other:?}"),
        }
    }

    #[test]
    fn identify_then_resume_replays_in_order_then_resumed() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        let sid = ready_session(&sim.identify(a, [0, 1]));
        for i in 0..3 {
            sim.gw
                .dispatch(sim.now, 0, "MESSAGE_CREATE", &json!({ "i": i }));
        }
        assert_eq!(sim.drain().len(), 3);
        sim.gw.on_disconnect(sim.now, a);
        for i in 3..5 {
            assert_eq!(
                sim.gw
                    .dispatch(sim.now, 0, "MESSAGE_CREATE", &json!({ "i": i })),
                0
            );
        }
        let b = sim.connect();
        let out = sim.send(
            b,
            json!({"op": 6, "d": {"token": "mock-token", "session_id": sid, "seq": 2}}),
        );
        let seqs: Vec<u64> = out
            .iter()
            .map(|o| match o {
                Out::Json(v) => v["s"].as_u64().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
        let Out::Json(last) = out.last().unwrap() else {
            unreachable!()
        };
        assert_eq!(last["t"], "RESUMED");
        let c = sim.gw.counters().shard(0);
        assert_eq!(c.resumes_ok, 1);
        assert_eq!(c.sessions[&sid].seqs(), vec![1, 2, 3, 4, 3, 4, 5, 6, 7]);
        assert_eq!(c.sessions[&sid].replayed, 4);
    }

    #[test]
    fn resume_after_the_window_is_invalid_session_false() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        let sid = ready_session(&sim.identify(a, [0, 1]));
        sim.gw.on_close_frame(sim.now, a, 4000);
        assert_eq!(sim.drain(), vec![(a, Out::Close(4000))]);
        sim.gw.on_disconnect(sim.now, a);
        sim.advance(Duration::from_millis(600));
        let b = sim.connect();
        let out = sim.send(
            b,
            json!({"op": 6, "d": {"token": "mock-token", "session_id": sid, "seq": 1}}),
        );
        assert_eq!(
            out,
            vec![Out::Json(
                json!({"op": 9, "d": false, "s": null, "t": null})
            )]
        );
        assert_eq!(sim.gw.counters().shard(0).resumes_failed, 1);
    }

    #[test]
    fn close_1000_ends_the_session_other_codes_keep_it() {
        for (code, resumable) in [(1000, false), (1001, false), (4000, true), (1005, true)] {
            let mut sim = Sim::new(Sim::fast());
            let a = sim.connect();
            let sid = ready_session(&sim.identify(a, [0, 1]));
            sim.gw.on_close_frame(sim.now, a, code);
            sim.gw.on_disconnect(sim.now, a);
            sim.drain();
            let b = sim.connect();
            let out = sim.send(
                b,
                json!({"op": 6, "d": {"token": "mock-token", "session_id": sid, "seq": 1}}),
            );
            let Out::Json(v) = out.last().unwrap() else {
                panic!()
            };
            assert_eq!(v["t"] == "RESUMED", resumable, "code {code}: {out:?}");
        }
    }

    #[test]
    fn concurrency_bucket_and_window() {
        let mut sim = Sim::new(MockConfig {
            session_start: handover_protocol::SessionStartLimit {
                max_concurrency: 2,
                ..handover_protocol::SessionStartLimit::default()
            },
            ..Sim::fast()
        });
        let a = sim.connect();
        let b = sim.connect();
        let c = sim.connect();
        ready_session(&sim.identify(a, [0, 4]));
        // Shard 1 is bucket 1: allowed at the same instant.
        ready_session(&sim.identify(b, [1, 4]));
        // Shard 2 is bucket 0 again: too soon.
        let out = sim.identify(c, [2, 4]);
        assert_eq!(
            out,
            vec![Out::Json(
                json!({"op": 9, "d": false, "s": null, "t": null})
            )]
        );
        sim.advance(Duration::from_millis(200));
        // The same connection may identify again once the window passed.
        ready_session(&sim.identify(c, [2, 4]));
        let counters = sim.gw.counters();
        assert_eq!(counters.shard(2).identifies, 2);
        assert_eq!(counters.shard(2).sessions_started, 1);
        assert_eq!(counters.shard(2).invalid_sessions_sent, 1);
    }

    #[test]
    fn budget_exhaustion_revokes_the_token() {
        let mut sim = Sim::new(MockConfig {
            identify_window: Duration::ZERO,
            session_start: handover_protocol::SessionStartLimit {
                total: 5,
                remaining: 1,
                reset_after: Duration::from_secs(3600),
                max_concurrency: 1,
            },
            ..Sim::fast()
        });
        let a = sim.connect();
        ready_session(&sim.identify(a, [0, 1]));
        let b = sim.connect();
        sim.gw.on_message(
            sim.now,
            b,
            Message::text(
                json!({"op": 2, "d": {"token": "mock-token", "intents": 0,
                    "properties": {}}})
                .to_string(),
            ),
        );
        let mut closes = sim.drain();
        closes.sort_by_key(|(c, _)| *c);
        assert_eq!(closes, vec![(a, Out::Close(4004)), (b, Out::Close(4004))]);
        assert_eq!(sim.gw.counters().shard(0).server_closes, vec![4004]);
        // The token stays refused, on the gateway as over HTTP.
        let c = sim.connect();
        assert_eq!(sim.identify(c, [0, 1]), vec![Out::Close(4004)]);
        let reply = sim.gw.http_request(
            sim.now,
            "GET",
            "/api/v10/gateway/bot",
            Some("Bot mock-token"),
        );
        assert_eq!(reply.status, 401);
    }

    #[test]
    fn payload_rules_close_with_the_documented_codes() {
        let cases: Vec<(Message, u16)> = vec![
            (Message::text("{not json"), 4002),
            (
                Message::text(format!("{{\"op\":1,\"d\":\"{}\"}}", "x".repeat(5000))),
                4002,
            ),
            (Message::text("{\"op\":5,\"d\":null}"), 4001),
            (Message::text("{\"op\":10,\"d\":null}"), 4001),
            (Message::text("{\"op\":3,\"d\":{}}"), 4003),
            (Message::text("{\"d\":{}}"), 4002),
        ];
        for (msg, code) in cases {
            let mut sim = Sim::new(Sim::fast());
            let a = sim.connect();
            sim.gw.on_message(sim.now, a, msg.clone());
            assert_eq!(sim.drain(), vec![(a, Out::Close(code))], "{msg:?}");
        }
    }

    #[test]
    fn tokens_are_accepted_bare_or_with_the_bot_prefix() {
        let properties = json!({"os": "linux", "browser": "t", "device": "t"});
        for token in ["mock-token", "Bot mock-token"] {
            let mut sim = Sim::new(Sim::fast());
            let a = sim.connect();
            let out = sim.send(
                a,
                json!({"op": 2, "d": {"token": token, "intents": 1, "properties": properties}}),
            );
            let sid = ready_session(&out);
            sim.gw.on_disconnect(sim.now, a);
            let b = sim.connect();
            let out = sim.send(
                b,
                json!({"op": 6, "d": {"token": token, "session_id": sid, "seq": 1}}),
            );
            match out.as_slice() {
                [Out::Json(v)] => assert_eq!(v["t"], "RESUMED", "{token}"),
                other => panic!("{token}: {other:?}"),
            }
        }
        for token in [
            "Bearer mock-token",
            "bot mock-token",
            "Botmock-token",
            "Bot  mock-token",
            "Bot Bot mock-token",
            "Bot ",
            "mock-token ",
        ] {
            let mut sim = Sim::new(Sim::fast());
            let a = sim.connect();
            let out = sim.send(
                a,
                json!({"op": 2, "d": {"token": token, "intents": 1, "properties": properties}}),
            );
            assert_eq!(out, vec![Out::Close(4004)], "identify with {token:?}");
            let b = sim.connect();
            let out = sim.send(
                b,
                json!({"op": 6, "d": {"token": token, "session_id": "x", "seq": 1}}),
            );
            assert_eq!(out, vec![Out::Close(4004)], "resume with {token:?}");
        }
    }

    #[test]
    fn request_channel_info_is_accepted_after_the_handshake_only() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        let before = json!({"op": 43, "d": {"guild_id": "1", "fields": ["status"]}});
        assert_eq!(sim.send(a, before.clone()), vec![Out::Close(4003)]);
        let b = sim.connect();
        ready_session(&sim.identify(b, [0, 1]));
        assert!(sim.send(b, before).is_empty());
        assert_eq!(sim.gw.counters().shard(0).server_closes, Vec::<u16>::new());
    }

    #[test]
    fn heartbeat_timeout_closes_resumably() {
        let mut sim = Sim::new(MockConfig {
            heartbeat_grace: Some(Duration::from_millis(50)),
            ..Sim::fast()
        });
        let a = sim.connect();
        let sid = ready_session(&sim.identify(a, [0, 1]));
        sim.advance(Duration::from_millis(100));
        assert_eq!(
            sim.send(a, json!({"op": 1, "d": 1})),
            vec![Out::Json(
                json!({"op": 11, "d": null, "s": null, "t": null})
            )]
        );
        let out = sim.advance(Duration::from_millis(200));
        assert_eq!(out, vec![(a, Out::Close(HEARTBEAT_TIMEOUT_CLOSE))]);
        // The client never answers: after the close timeout the mock drops TCP.
        let out = sim.advance(Duration::from_millis(200));
        assert_eq!(out, vec![(a, Out::Drop)]);
        assert!(sim.gw.sessions.contains_key(&sid));
        assert_eq!(sim.gw.counters().live_sockets, 0);
    }

    #[test]
    fn delay_holds_frames_in_order() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        sim.gw
            .inject(sim.now, a, Fault::Delay(Duration::from_millis(30)));
        assert!(sim.send(a, json!({"op": 1, "d": null})).is_empty());
        sim.gw.inject(sim.now, a, Fault::RequestHeartbeat);
        let out = sim.advance(Duration::from_millis(29));
        assert!(out.is_empty());
        let out = sim.advance(Duration::from_millis(1));
        let ops: Vec<u64> = out
            .iter()
            .map(|(_, o)| match o {
                Out::Json(v) => v["op"].as_u64().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ops, vec![11, 1]);
    }

    #[test]
    fn zombie_sends_nothing_and_ignores_close() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        ready_session(&sim.identify(a, [0, 1]));
        sim.gw.inject(sim.now, ShardKey::new(0, 0), Fault::Zombie);
        assert!(sim.send(a, json!({"op": 1, "d": 1})).is_empty());
        assert_eq!(sim.gw.dispatch(sim.now, 0, "X", &json!({})), 0);
        sim.gw.on_close_frame(sim.now, a, 4000);
        assert!(sim.drain().is_empty());
        assert!(sim.gw.socket_muted(a));
        // No heartbeat timeout, no close timeout: the zombie just sits there.
        assert!(sim.advance(Duration::from_secs(5)).is_empty());
        assert_eq!(sim.gw.counters().live_sockets, 1);
        assert_eq!(sim.gw.inject(sim.now, a, Fault::DropTcp), 1);
        assert_eq!(sim.drain(), vec![(a, Out::Drop)]);
        assert_eq!(sim.gw.counters().live_sockets, 0);
    }

    #[test]
    fn duplicate_sessions_both_receive_and_resume_takes_over() {
        let mut sim = Sim::new(Sim::fast());
        let a = sim.connect();
        let sa = ready_session(&sim.identify(a, [0, 1]));
        sim.advance(Duration::from_millis(200));
        let b = sim.connect();
        let sb = ready_session(&sim.identify(b, [0, 1]));
        assert_ne!(sa, sb);
        assert_eq!(sim.gw.dispatch(sim.now, 0, "MESSAGE_CREATE", &json!({})), 2);
        assert_eq!(sim.drain().len(), 2);
        let c = sim.gw.counters().shard(0);
        assert_eq!((c.live_sockets, c.max_live_sockets), (2, 2));
        // A third connection resumes A's session while A is still open: A goes quiet.
        let c3 = sim.connect();
        let out = sim.send(
            c3,
            json!({"op": 6, "d": {"token": "mock-token", "session_id": sa, "seq": 2}}),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(sim.gw.dispatch(sim.now, 0, "MESSAGE_CREATE", &json!({})), 2);
        let to: Vec<TransportId> = sim.drain().into_iter().map(|(c, _)| c).collect();
        assert_eq!(to, vec![b, c3]);
        assert_eq!(sim.gw.counters().shard(0).live_sockets, 3);
    }

    #[test]
    fn fast_stream_in_memory_emits_one_batch_per_tick() {
        let mut sim = Sim::new(MockConfig {
            stream_batch: 4,
            ..Sim::fast()
        });
        let a = sim.connect();
        ready_session(&sim.identify(a, [0, 1]));
        sim.gw.stream(
            sim.now,
            StreamSpec {
                shard: 0.into(),
                event: "E".into(),
                data: json!({}),
                count: 10,
                rate: StreamRate::AsFastAsRead,
            },
        );
        assert_eq!(sim.drain().len(), 4);
        assert_eq!(sim.gw.poll_timeout(), Some(sim.now));
        sim.gw.handle_timeout(sim.now);
        assert_eq!(sim.drain().len(), 4);
        sim.gw.handle_timeout(sim.now);
        assert_eq!(sim.drain().len(), 2);
        assert!(sim.gw.streams.is_empty());
    }

    fn script(seed: u64) -> Vec<(TransportId, Out)> {
        let mut sim = Sim::new(MockConfig {
            seed,
            ..Sim::fast()
        });
        let mut log = Vec::new();
        let a = sim.connect();
        log.extend(sim.identify(a, [0, 1]).into_iter().map(|o| (a, o)));
        sim.gw.dispatch(sim.now, 0, "E", &json!({"x": 1}));
        sim.gw.inject(sim.now, a, Fault::Garbage(Garbage::Text));
        sim.gw.inject(sim.now, a, Fault::Garbage(Garbage::Binary));
        log.extend(sim.drain());
        sim.advance(Duration::from_millis(300));
        let b = sim.connect();
        log.extend(sim.identify(b, [0, 1]).into_iter().map(|o| (b, o)));
        log.extend(sim.advance(Duration::from_secs(2)));
        log
    }

    #[test]
    fn deterministic_for_a_seed() {
        assert_eq!(script(1), script(1));
        assert_ne!(script(1), script(2));
    }
}
