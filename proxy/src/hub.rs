//! The proxy's downstream protocol as a sans-IO state machine: sessions of the clients, the
//! replay buffers and guild caches of the upstream shards, and what to send to whom.
//!
//! Nothing here does I/O or reads a clock: the shell ([`crate::server`]) feeds it client frames
//! and upstream events and carries out the [`Action`]s it returns.

use std::collections::{BTreeMap, HashMap, VecDeque};

use handover_protocol::{EventName, Intents, RawJson, Token};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tracing::{debug, info};

use crate::buffer::{Audience, ReplayBuffer};
use crate::cache::{CacheKinds, GuildCache};
use crate::frames::{self, Frame};
use crate::intents;

/// REQUEST_GUILD_MEMBERS kept per shard awaiting their GUILD_MEMBERS_CHUNKs; beyond it the
/// oldest is forgotten (its chunks then go to every session).
const MAX_OPEN_REQUESTS: usize = 256;

/// Prefix of the nonces the proxy puts on the REQUEST_GUILD_MEMBERS it sends upstream.
const NONCE_PREFIX: &str = "handover-";

/// The heartbeat interval announced to clients in HELLO, in milliseconds (Discord's).
pub const HEARTBEAT_INTERVAL_MS: u64 = 41_250;

/// Largest payload a client may send (Discord's limit); larger closes with 4002.
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// Close codes the proxy sends, with Discord's meaning (see `docs/proxy.md`).
pub mod close {
    /// Unknown error: resumable. Sent to a client that fell too far behind.
    pub const UNKNOWN_ERROR: u16 = 4000;
    /// Unknown opcode.
    pub const UNKNOWN_OPCODE: u16 = 4001;
    /// Decode error: not a JSON payload the proxy understands.
    pub const DECODE_ERROR: u16 = 4002;
    /// Not authenticated: a payload before IDENTIFY or RESUME.
    pub const NOT_AUTHENTICATED: u16 = 4003;
    /// Authentication failed: not the bot's token.
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    /// Already authenticated: a second IDENTIFY or RESUME on one connection.
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    /// Invalid shard.
    pub const INVALID_SHARD: u16 = 4010;
    /// Sharding required.
    pub const SHARDING_REQUIRED: u16 = 4011;
    /// Rate limited: a client command over the upstream connection's send budget.
    pub const RATE_LIMITED: u16 = 4008;
    /// Invalid API version.
    pub const INVALID_API_VERSION: u16 = 4012;
    /// Invalid intent(s): bits Discord does not document.
    pub const INVALID_INTENTS: u16 = 4013;
    /// Disallowed intent(s): intents the upstream shards were not identified with.
    pub const DISALLOWED_INTENTS: u16 = 4014;
}

/// Settings of a [`Hub`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// The bot's token: clients must identify with it (with or without `Bot `).
    pub token: Token,
    /// The intents the upstream shards identified with; a client may ask for these or fewer.
    pub intents: Intents,
    /// The shard ids the proxy runs upstream.
    pub shards: Vec<u32>,
    /// The bot's total shard count.
    pub total: u32,
    /// The proxy's own gateway URL (`ws://ADDR:PORT`), sent as `resume_gateway_url`.
    pub public_url: String,
    /// Dispatches kept per shard for client resumes. Default 4096.
    pub replay_capacity: usize,
    /// Client sessions kept per shard; beyond it the one detached longest ago is forgotten.
    /// Default 64.
    pub max_sessions_per_shard: usize,
    /// Seed of the session ids. Default: from the operating system.
    pub seed: u64,
    /// `heartbeat_interval` announced in HELLO, in milliseconds. A client that sends nothing
    /// for this long plus `heartbeat_grace_ms` is closed with 4000 (resumable). Default
    /// [`HEARTBEAT_INTERVAL_MS`] (Discord's).
    pub heartbeat_interval_ms: u64,
    /// See `heartbeat_interval_ms`. Default [`HEARTBEAT_GRACE_MS`].
    pub heartbeat_grace_ms: u64,
    /// The resource kinds the guild cache keeps (`--cache`). Default all.
    pub cache: CacheKinds,
}

/// How long past its heartbeat interval a silent client is kept.
pub const HEARTBEAT_GRACE_MS: u64 = 5_000;

impl HubConfig {
    /// A configuration with defaults for the buffer and session bounds.
    pub fn new(
        token: Token,
        intents: Intents,
        shards: Vec<u32>,
        total: u32,
        public_url: String,
    ) -> HubConfig {
        HubConfig {
            token,
            intents,
            shards,
            total,
            public_url,
            replay_capacity: 4096,
            max_sessions_per_shard: 64,
            seed: fastrand::u64(..),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            heartbeat_grace_ms: HEARTBEAT_GRACE_MS,
            cache: CacheKinds::all(),
        }
    }
}

/// A downstream connection, as the hub names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Send these text frames, in order, to the client (one queue slot for all of them).
    Send {
        /// The connection.
        client: ClientId,
        /// JSON text frames.
        frames: Vec<Frame>,
    },
    /// Send this client command on the shard's upstream connection, then report the outcome
    /// with [`Hub::command_sent`].
    Forward {
        /// The connection that sent it.
        client: ClientId,
        /// Its shard.
        shard: u32,
        /// The opcode (3, 4, 8, 31 or 43).
        op: u8,
        /// The `d` field.
        d: RawJson,
        /// The presence of the client's IDENTIFY, not a command it sent: report the outcome
        /// with [`Hub::identify_presence_sent`] (over the budget it is dropped, the client is
        /// not closed).
        from_identify: bool,
    },
    /// Close the client's connection with this code (after what was queued before).
    Close {
        /// The connection.
        client: ClientId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
}

/// What the upstream shards report, as the hub needs it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Upstream {
    /// READY of an upstream session.
    Ready {
        /// The shard.
        shard: u32,
        /// The upstream session id.
        session_id: String,
        /// READY's `d`.
        data: RawJson,
    },
    /// A dispatch (not READY or RESUMED).
    Dispatch {
        /// The shard.
        shard: u32,
        /// The event name, as the runtime delivers it (no copy per event).
        event_type: EventName,
        /// The event data.
        data: RawJson,
    },
    /// The upstream session of the shard is lost (events were missed).
    Lost {
        /// The shard.
        shard: u32,
    },
}

#[derive(Debug)]
enum ClientState {
    /// HELLO sent; waiting for IDENTIFY or RESUME.
    Hello,
    /// Identified, waiting for the upstream shard's READY.
    Pending { shard: u32, identified: Identified },
    /// Attached to a session.
    Attached { session: String },
}

#[derive(Debug)]
struct Session {
    /// The session's number in the buffers' audiences.
    key: u64,
    /// The intents the client identified with: it sees the dispatches they govern.
    intents: u64,
    /// Client seq of the last synthesized dispatch (READY and the GUILD_CREATEs).
    prefix: u64,
    /// Buffer position when the session started: the events after it are the session's.
    start: u64,
    /// Last buffer position handed to the shell for this session, or skipped (not for it).
    sent: u64,
    /// Client seq of the last dispatch handed (at `sent` or before it): the session's own
    /// numbering, one per event its audience admits.
    seq: u64,
    client: Option<ClientId>,
    /// When (in hub steps) it was detached, for eviction.
    detached_at: u64,
    /// RESUMEs accepted for it.
    resumes: u64,
}

impl Session {
    fn admits(&self, audience: &Audience) -> bool {
        audience.admits(self.key, self.intents)
    }

    /// The buffer position after which a client that has seen client seq `seq` of this
    /// session resumes, found walking the buffer back from `sent`; `None` if `seq` was never
    /// handed, lies in the synthesized prefix, or the events after it are no longer kept.
    fn resume_point(&self, buffer: &ReplayBuffer, seq: u64) -> Option<u64> {
        if seq > self.seq || seq < self.prefix {
            return None;
        }
        let mut q = self.seq;
        if q == seq {
            return Some(self.sent);
        }
        // Bounded by the buffer's length.
        for e in buffer.newest_first() {
            if e.pos > self.sent {
                continue;
            }
            if e.pos <= self.start {
                return None;
            }
            if self.admits(&e.audience) {
                // `e` carried client seq `q`.
                q -= 1;
                if q == seq {
                    return Some(e.pos - 1);
                }
            }
        }
        None
    }
}

/// A REQUEST_GUILD_MEMBERS a client sent, awaiting its chunks.
#[derive(Debug)]
struct MemberRequest {
    /// The key of the session that asked.
    session: u64,
    /// The client's own nonce, restored on the chunks (absent: removed from them).
    nonce: Option<Box<RawValue>>,
}

#[derive(Debug)]
struct UpstreamSession {
    id: String,
    /// READY's `d` without the fields made per client.
    ready: Map<String, Value>,
}

#[derive(Debug)]
struct ShardState {
    buffer: ReplayBuffer,
    /// The shard's client sessions, attached or resumable, by id: an upstream event walks
    /// these, not every session of the proxy.
    sessions: HashMap<String, Session>,
    upstream: Option<UpstreamSession>,
    /// Guilds of the upstream session, by id: the latest GUILD_CREATE's `d`, or `None` while
    /// unavailable.
    guilds: GuildCache,
    pending: Vec<ClientId>,
    /// Open member requests by the number in the nonce the proxy sent upstream.
    requests: BTreeMap<u64, MemberRequest>,
    next_nonce: u64,
    /// REQUEST_SOUNDBOARD_SOUNDS awaiting their SOUNDBOARD_SOUNDS, oldest first: the guild id
    /// and the key of the session that asked.
    sound_requests: VecDeque<(String, u64)>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    op: u64,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdentifyData {
    token: Value,
    intents: Option<u64>,
    shard: Option<Vec<u64>>,
    #[serde(default)]
    large_threshold: Option<u64>,
    #[serde(default)]
    presence: Option<Box<RawValue>>,
}

/// What an accepted IDENTIFY asked for, kept while it waits for the upstream READY.
#[derive(Debug, Clone)]
struct Identified {
    intents: u64,
    large_threshold: Option<u64>,
    /// Its `presence`, sent upstream as a presence update once the session starts.
    presence: Option<RawJson>,
}

#[derive(Deserialize)]
struct ResumeData {
    token: Value,
    session_id: Value,
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct GuildData {
    id: String,
}

/// Whether an event's data carries a guild.
#[derive(Deserialize)]
struct InGuild {
    #[serde(default)]
    guild_id: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ReadyGuilds {
    #[serde(default)]
    guilds: Vec<GuildData>,
}

/// Counters of a hub, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HubStats {
    /// Client connections open now.
    pub clients: usize,
    /// Client sessions kept (attached or resumable).
    pub sessions: usize,
    /// IDENTIFYs accepted.
    pub identifies: u64,
    /// RESUMEs accepted.
    pub resumes: u64,
    /// RESUMEs answered with op 9.
    pub resumes_refused: u64,
    /// Dispatches replayed to resuming clients.
    pub replayed: u64,
    /// Clients closed for falling behind.
    pub lagged: u64,
    /// Client commands sent upstream.
    pub forwarded: u64,
    /// Client commands over the upstream send budget (the client was closed with 4008).
    pub commands_refused: u64,
    /// Client commands dropped because the upstream connection could not take them.
    pub commands_dropped: u64,
}

/// One client session, for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SessionView {
    /// The session id the proxy gave the client.
    pub session_id: String,
    /// Its shard.
    pub shard: u32,
    /// The connection attached to it now, if any.
    pub client: Option<u64>,
    /// The client seq of the last dispatch handed to its connection.
    pub seq: u64,
    /// Dispatches of the shard it has not been handed (while detached: what a RESUME would
    /// replay, if still buffered).
    pub behind: u64,
    /// RESUMEs accepted for it.
    pub resumes: u64,
}

/// One upstream shard as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ShardView {
    /// The shard id.
    pub shard: u32,
    /// Whether its upstream session is ready.
    pub upstream_ready: bool,
    /// Dispatches in its replay buffer.
    pub buffered: usize,
    /// The buffer's capacity.
    pub capacity: usize,
    /// Guilds in its cache.
    pub guilds: usize,
}

/// What a hub holds, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HubStatus {
    /// Counters.
    pub stats: HubStats,
    /// The shards.
    pub shards: Vec<ShardView>,
    /// The client sessions, attached or resumable, by shard then id.
    pub sessions: Vec<SessionView>,
}

/// What became of a forwarded client command (see [`Hub::command_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandOutcome {
    /// Sent on the upstream connection.
    Sent,
    /// Refused: over the upstream connection's send budget (or too large to send).
    OverBudget,
    /// Not sent: the upstream connection could not take it now (reconnecting, write queue
    /// full).
    Dropped,
}

/// The proxy's downstream state. See the [module documentation](self).
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    shards: BTreeMap<u32, ShardState>,
    clients: HashMap<ClientId, ClientState>,
    /// The shard each client session belongs to (the session itself is its shard's).
    session_shards: HashMap<String, u32>,
    next_client: u64,
    next_session_key: u64,
    steps: u64,
    rng: fastrand::Rng,
    stats: HubStats,
}

impl Hub {
    /// A hub for the configured shards, with empty buffers.
    pub fn new(config: HubConfig) -> Hub {
        let shards = config
            .shards
            .iter()
            .map(|&id| {
                (
                    id,
                    ShardState {
                        buffer: ReplayBuffer::new(config.replay_capacity),
                        sessions: HashMap::new(),
                        upstream: None,
                        guilds: GuildCache::new(config.cache),
                        pending: Vec::new(),
                        requests: BTreeMap::new(),
                        sound_requests: VecDeque::new(),
                        next_nonce: 0,
                    },
                )
            })
            .collect();
        let rng = fastrand::Rng::with_seed(config.seed);
        Hub {
            config,
            shards,
            clients: HashMap::new(),
            session_shards: HashMap::new(),
            next_client: 0,
            next_session_key: 0,
            steps: 0,
            rng,
            stats: HubStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            clients: self.clients.len(),
            sessions: self.session_shards.len(),
            ..self.stats
        }
    }

    /// A snapshot of the shards and client sessions.
    pub fn status(&self) -> HubStatus {
        let shards = self
            .shards
            .iter()
            .map(|(&shard, s)| ShardView {
                shard,
                upstream_ready: s.upstream.is_some(),
                buffered: s.buffer.len(),
                capacity: s.buffer.capacity(),
                guilds: s.guilds.len(),
            })
            .collect();
        let mut sessions: Vec<SessionView> = self
            .shards
            .iter()
            .flat_map(|(&shard, st)| st.sessions.iter().map(move |(id, s)| (shard, st, id, s)))
            .map(|(shard, st, id, s)| {
                let last = st.buffer.last_pos();
                SessionView {
                    session_id: id.clone(),
                    shard,
                    client: s.client.map(|c| c.0),
                    seq: s.seq,
                    behind: last.saturating_sub(s.sent),
                    resumes: s.resumes,
                }
            })
            .collect();
        sessions.sort_by(|a, b| (a.shard, &a.session_id).cmp(&(b.shard, &b.session_id)));
        HubStatus {
            stats: self.stats(),
            shards,
            sessions,
        }
    }

    /// Whether the shard's upstream session is ready (a client's IDENTIFY is answered at once).
    pub fn upstream_ready(&self, shard: u32) -> bool {
        self.shards
            .get(&shard)
            .is_some_and(|s| s.upstream.is_some())
    }

    /// Events in the shard's replay buffer.
    pub fn buffered(&self, shard: u32) -> usize {
        self.shards.get(&shard).map_or(0, |s| s.buffer.len())
    }

    /// A new connection: its id and the HELLO to send it first.
    pub fn connect(&mut self) -> (ClientId, Frame) {
        self.next_client += 1;
        let id = ClientId(self.next_client);
        self.clients.insert(id, ClientState::Hello);
        (id, frames::hello(self.config.heartbeat_interval_ms.max(1)))
    }

    /// The connection is gone: its session stays resumable.
    pub fn client_gone(&mut self, client: ClientId) {
        self.steps += 1;
        match self.clients.remove(&client) {
            Some(ClientState::Attached { session }) => self.detach(&session, client),
            Some(ClientState::Pending { shard, .. }) => {
                if let Some(s) = self.shards.get_mut(&shard) {
                    s.pending.retain(|c| *c != client);
                }
            }
            _ => {}
        }
    }

    /// The client did not take its frames fast enough: it is detached (its session stays
    /// resumable) and closed with 4000, which every library resumes after.
    pub fn client_lagged(&mut self, client: ClientId, out: &mut Vec<Action>) {
        if self.clients.contains_key(&client) {
            self.stats.lagged += 1;
            info!(
                client = client.0,
                "client fell behind; closing it resumable"
            );
            self.client_gone(client);
            out.push(Action::Close {
                client,
                code: close::UNKNOWN_ERROR,
                reason: "client fell behind",
            });
        }
    }

    /// The client session `id`, whichever shard it is of.
    fn session(&self, id: &str) -> Option<&Session> {
        let shard = self.session_shards.get(id)?;
        self.shards.get(shard)?.sessions.get(id)
    }

    fn session_mut(&mut self, id: &str) -> Option<&mut Session> {
        let shard = self.session_shards.get(id)?;
        self.shards.get_mut(shard)?.sessions.get_mut(id)
    }

    fn remove_session(&mut self, id: &str) -> Option<Session> {
        let shard = self.session_shards.remove(id)?;
        self.shards.get_mut(&shard)?.sessions.remove(id)
    }

    fn detach(&mut self, session: &str, client: ClientId) {
        let steps = self.steps;
        if let Some(s) = self.session_mut(session)
            && s.client == Some(client)
        {
            s.client = None;
            s.detached_at = steps;
        }
    }

    fn close(&mut self, client: ClientId, code: u16, reason: &'static str, out: &mut Vec<Action>) {
        debug!(client = client.0, code, reason, "closing client");
        self.client_gone(client);
        out.push(Action::Close {
            client,
            code,
            reason,
        });
    }

    fn send(client: ClientId, frames: Vec<Frame>, out: &mut Vec<Action>) {
        out.push(Action::Send { client, frames });
    }

    /// One frame for the client: added to the last action if that is a send to the same
    /// client (a burst of dispatches for one client is one batch, not one `Vec` per event).
    fn send_one(client: ClientId, frame: Frame, out: &mut Vec<Action>) {
        if let Some(Action::Send {
            client: last,
            frames,
        }) = out.last_mut()
            && *last == client
        {
            frames.push(frame);
        } else {
            out.push(Action::Send {
                client,
                frames: vec![frame],
            });
        }
    }

    /// A text frame from a client.
    pub fn client_text(&mut self, client: ClientId, text: &[u8], out: &mut Vec<Action>) {
        self.steps += 1;
        let Some(state) = self.clients.get(&client) else {
            return;
        };
        if text.len() > MAX_CLIENT_PAYLOAD {
            return self.close(client, close::DECODE_ERROR, "payload too large", out);
        }
        let Ok(payload) = serde_json::from_slice::<Incoming<'_>>(text) else {
            return self.close(client, close::DECODE_ERROR, "decode error", out);
        };
        let attached = !matches!(state, ClientState::Hello);
        match payload.op {
            1 => {
                let ok = payload
                    .d
                    .is_none_or(|d| d.get() == "null" || d.get().parse::<u64>().is_ok());
                if ok {
                    Hub::send(client, vec![frames::heartbeat_ack()], out);
                } else {
                    self.close(client, close::DECODE_ERROR, "decode error", out);
                }
            }
            2 if attached => self.close(
                client,
                close::ALREADY_AUTHENTICATED,
                "already authenticated",
                out,
            ),
            6 if attached => self.close(
                client,
                close::ALREADY_AUTHENTICATED,
                "already authenticated",
                out,
            ),
            2 => self.identify(client, payload.d, out),
            6 => self.resume(client, payload.d, out),
            3 | 4 | 8 | 31 | 43 if !attached => {
                self.close(client, close::NOT_AUTHENTICATED, "not authenticated", out)
            }
            op @ (3 | 4 | 8 | 31 | 43) => {
                let shard = match self.clients.get(&client) {
                    Some(ClientState::Attached { session }) => {
                        self.session_shards.get(session).copied()
                    }
                    _ => None,
                };
                match (shard, payload.d) {
                    (Some(shard), Some(d)) if op == 8 => {
                        match self.member_request(client, shard, d) {
                            Some(d) => out.push(Action::Forward {
                                client,
                                shard,
                                op: 8,
                                d,
                                from_identify: false,
                            }),
                            None => self.close(client, close::DECODE_ERROR, "decode error", out),
                        }
                    }
                    (Some(shard), Some(d)) => {
                        if op == 31 {
                            self.sound_request(client, shard, d);
                        }
                        out.push(Action::Forward {
                            client,
                            shard,
                            // One of the opcodes matched above.
                            op: u8::try_from(op).unwrap_or_default(),
                            d: RawJson::from_raw(d),
                            from_identify: false,
                        });
                    }
                    // Identified, waiting for the upstream READY: nowhere to send it yet.
                    (None, Some(_)) => self.stats.commands_dropped += 1,
                    (_, None) => self.close(client, close::DECODE_ERROR, "decode error", out),
                }
            }
            _ => self.close(client, close::UNKNOWN_OPCODE, "unknown opcode", out),
        }
    }

    /// The outcome of an [`Action::Forward`]. Over the upstream connection's send budget
    /// (shared by every client of the shard), the client is closed with 4008, as Discord closes
    /// a client over its rate; a command the upstream could not take for another reason (the
    /// shard is reconnecting) is dropped and counted.
    pub fn command_sent(
        &mut self,
        client: ClientId,
        outcome: CommandOutcome,
        out: &mut Vec<Action>,
    ) {
        match outcome {
            CommandOutcome::Sent => self.stats.forwarded += 1,
            CommandOutcome::Dropped => self.stats.commands_dropped += 1,
            CommandOutcome::OverBudget => {
                self.stats.commands_refused += 1;
                if self.clients.contains_key(&client) {
                    self.close(client, close::RATE_LIMITED, "rate limited", out);
                }
            }
        }
    }

    /// The key of the session `client` is attached to, if it is.
    fn session_key(&self, client: ClientId) -> Option<u64> {
        match self.clients.get(&client) {
            Some(ClientState::Attached { session }) => self.session(session).map(|s| s.key),
            _ => None,
        }
    }

    /// A client's REQUEST_GUILD_MEMBERS as it goes upstream: its nonce replaced by one unique
    /// to the proxy (two clients may use the same nonce, or none), remembered so that the
    /// GUILD_MEMBERS_CHUNKs go back to the client's session only, with its own nonce. `None`
    /// if `d` is not an object.
    fn member_request(&mut self, client: ClientId, shard: u32, d: &RawValue) -> Option<RawJson> {
        let mut fields: Map<String, Value> = serde_json::from_str(d.get()).ok()?;
        let key = self.session_key(client)?;
        let state = self.shards.get_mut(&shard)?;
        state.next_nonce += 1;
        let n = state.next_nonce;
        let nonce = fields
            .remove("nonce")
            .and_then(|v| serde_json::value::to_raw_value(&v).ok());
        fields.insert("nonce".into(), Value::String(format!("{NONCE_PREFIX}{n}")));
        state.requests.insert(
            n,
            MemberRequest {
                session: key,
                nonce,
            },
        );
        while state.requests.len() > MAX_OPEN_REQUESTS {
            state.requests.pop_first();
        }
        RawJson::parse(Value::Object(fields).to_string()).ok()
    }

    /// Remembers a client's REQUEST_SOUNDBOARD_SOUNDS, so that each SOUNDBOARD_SOUNDS it
    /// causes (one per guild, carrying no nonce) goes to its session only: the oldest open
    /// request for the event's guild takes it. Beyond [`MAX_OPEN_REQUESTS`] the oldest is
    /// forgotten, and a reply no request claims goes to every session, as before.
    fn sound_request(&mut self, client: ClientId, shard: u32, d: &RawValue) {
        #[derive(Deserialize)]
        struct Request {
            guild_ids: Vec<Value>,
        }
        let Ok(request) = serde_json::from_str::<Request>(d.get()) else {
            return;
        };
        let Some(key) = self.session_key(client) else {
            return;
        };
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        for id in request.guild_ids {
            let id = match id {
                Value::String(s) => s,
                other => other.to_string(),
            };
            state.sound_requests.push_back((id, key));
        }
        while state.sound_requests.len() > MAX_OPEN_REQUESTS {
            state.sound_requests.pop_front();
        }
    }

    /// The session whose request a SOUNDBOARD_SOUNDS answers, taken off the open requests.
    fn sound_reply(state: &mut ShardState, data: &RawJson) -> Option<u64> {
        #[derive(Deserialize)]
        struct Reply {
            guild_id: Value,
        }
        let reply: Reply = serde_json::from_slice(data.as_bytes()).ok()?;
        let id = match reply.guild_id {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let at = state.sound_requests.iter().position(|(g, _)| *g == id)?;
        state.sound_requests.remove(at).map(|(_, key)| key)
    }

    /// A GUILD_MEMBERS_CHUNK of a request the proxy forwarded: the session it is for, and its
    /// data with the client's nonce back. `None` for a chunk of no open request.
    fn member_chunk(state: &mut ShardState, data: &RawJson) -> Option<(u64, RawJson)> {
        #[derive(Deserialize)]
        struct Chunk<'a> {
            #[serde(borrow)]
            nonce: Option<&'a str>,
            chunk_index: Option<u64>,
            chunk_count: Option<u64>,
        }
        let chunk: Chunk<'_> = serde_json::from_slice(data.as_bytes()).ok()?;
        let n: u64 = chunk.nonce?.strip_prefix(NONCE_PREFIX)?.parse().ok()?;
        let request = state.requests.get(&n)?;
        let session = request.session;
        let mut fields: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(data.as_bytes()).ok()?;
        match &request.nonce {
            Some(nonce) => fields.insert("nonce".into(), nonce.clone()),
            None => fields.remove("nonce"),
        };
        let last = chunk.chunk_index.unwrap_or(0) + 1 >= chunk.chunk_count.unwrap_or(1);
        if last {
            state.requests.remove(&n);
        }
        let text = serde_json::to_string(&fields).ok()?;
        Some((session, RawJson::parse(text).ok()?))
    }

    /// The outcome of the [`Action::Forward`] of an IDENTIFY's presence: counted like a
    /// command, but over the budget it is only dropped (the IDENTIFY itself was fine).
    pub fn identify_presence_sent(&mut self, outcome: CommandOutcome) {
        match outcome {
            CommandOutcome::Sent => self.stats.forwarded += 1,
            CommandOutcome::Dropped | CommandOutcome::OverBudget => {
                self.stats.commands_dropped += 1;
            }
        }
    }

    fn token_ok(&self, token: &Value) -> bool {
        let Some(token) = token.as_str() else {
            return false;
        };
        let bare = token.strip_prefix("Bot ").unwrap_or(token);
        self.config.token.matches(bare)
    }

    fn identify(&mut self, client: ClientId, d: Option<&RawValue>, out: &mut Vec<Action>) {
        let Some(data) = d.and_then(|d| serde_json::from_str::<IdentifyData>(d.get()).ok()) else {
            return self.close(client, close::DECODE_ERROR, "decode error", out);
        };
        if !self.token_ok(&data.token) {
            return self.close(
                client,
                close::AUTHENTICATION_FAILED,
                "authentication failed",
                out,
            );
        }
        let shard = match data.shard.as_deref() {
            None if self.config.total > 1 => {
                return self.close(client, close::SHARDING_REQUIRED, "sharding required", out);
            }
            None => 0,
            Some([id, total])
                if *total == u64::from(self.config.total)
                    && u32::try_from(*id).is_ok_and(|id| self.shards.contains_key(&id)) =>
            {
                // Checked just above.
                u32::try_from(*id).unwrap_or_default()
            }
            Some(_) => return self.close(client, close::INVALID_SHARD, "invalid shard", out),
        };
        let Some(intents) = data.intents else {
            return self.close(client, close::DECODE_ERROR, "decode error", out);
        };
        if intents & !Intents::all().bits() != 0 {
            return self.close(client, close::INVALID_INTENTS, "invalid intent(s)", out);
        }
        if intents & !self.config.intents.bits() != 0 {
            return self.close(
                client,
                close::DISALLOWED_INTENTS,
                "disallowed intent(s)",
                out,
            );
        }
        let Some(state) = self.shards.get_mut(&shard) else {
            return self.close(client, close::INVALID_SHARD, "invalid shard", out);
        };
        let identified = Identified {
            intents,
            large_threshold: data.large_threshold,
            presence: data.presence.as_deref().map(RawJson::from_raw),
        };
        self.clients.insert(
            client,
            ClientState::Pending {
                shard,
                identified: identified.clone(),
            },
        );
        if state.upstream.is_some() {
            self.start_session(client, shard, identified, out);
        } else {
            debug!(
                client = client.0,
                shard, "identify waits for the upstream READY"
            );
            state.pending.push(client);
        }
    }

    fn new_session_id(&mut self) -> String {
        let (a, b) = (self.rng.u64(..), self.rng.u64(..));
        format!("{a:016x}{b:016x}")
    }

    /// READY and one GUILD_CREATE per cached guild, for a new session of `client`.
    fn start_session(
        &mut self,
        client: ClientId,
        shard: u32,
        identified: Identified,
        out: &mut Vec<Action>,
    ) {
        let Identified {
            intents,
            large_threshold,
            presence,
        } = identified;
        let session_id = self.new_session_id();
        self.evict(shard);
        let (total, url) = (self.config.total, self.config.public_url.clone());
        let Some(state) = self.shards.get(&shard) else {
            return;
        };
        let Some(upstream) = &state.upstream else {
            return;
        };
        let mut ready = upstream.ready.clone();
        ready.insert("session_id".into(), Value::String(session_id.clone()));
        ready.insert("resume_gateway_url".into(), Value::String(url));
        ready.insert("shard".into(), Value::from(vec![shard, total]));
        let guilds: Vec<Value> = state
            .guilds
            .ids()
            .map(|id| serde_json::json!({ "id": id, "unavailable": true }))
            .collect();
        ready.insert("guilds".into(), Value::Array(guilds));
        let mut seq = 1;
        let mut batch = vec![frames::dispatch_value("READY", seq, &Value::Object(ready))];
        // GUILD_CREATE is a GUILDS event: a session without that intent gets none.
        if intents & Intents::GUILDS.bits() != 0 {
            for data in state.guilds.guild_creates(large_threshold) {
                seq += 1;
                batch.push(frames::dispatch_text("GUILD_CREATE", seq, &data));
            }
        }
        let start = state.buffer.last_pos();
        self.next_session_key += 1;
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        self.session_shards.insert(session_id.clone(), shard);
        state.sessions.insert(
            session_id.clone(),
            Session {
                key: self.next_session_key,
                intents,
                prefix: seq,
                start,
                sent: start,
                seq,
                client: Some(client),
                detached_at: 0,
                resumes: 0,
            },
        );
        self.clients.insert(
            client,
            ClientState::Attached {
                session: session_id,
            },
        );
        self.stats.identifies += 1;
        info!(
            client = client.0,
            shard,
            guilds = seq - 1,
            "client identified"
        );
        Hub::send(client, batch, out);
        // Discord sets a session's presence from its IDENTIFY; the upstream connection is
        // shared, so the latest client's presence becomes the bot's, within the send budget.
        if let Some(d) = presence {
            out.push(Action::Forward {
                client,
                shard,
                op: 3,
                d,
                from_identify: true,
            });
        }
    }

    /// Keeps the shard's sessions within bounds: forgets the one detached longest ago.
    fn evict(&mut self, shard: u32) {
        let Some(state) = self.shards.get(&shard) else {
            return;
        };
        if state.sessions.len() < self.config.max_sessions_per_shard.max(1) {
            return;
        }
        let oldest = state
            .sessions
            .iter()
            .filter(|(_, s)| s.client.is_none())
            .min_by_key(|(_, s)| s.detached_at)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.remove_session(&id);
        }
    }

    fn invalid_session(&mut self, client: ClientId, out: &mut Vec<Action>) {
        self.stats.resumes_refused += 1;
        self.clients.insert(client, ClientState::Hello);
        Hub::send(client, vec![frames::invalid_session()], out);
    }

    fn resume(&mut self, client: ClientId, d: Option<&RawValue>, out: &mut Vec<Action>) {
        let Some(data) = d.and_then(|d| serde_json::from_str::<ResumeData>(d.get()).ok()) else {
            return self.close(client, close::DECODE_ERROR, "decode error", out);
        };
        if !self.token_ok(&data.token) {
            return self.close(
                client,
                close::AUTHENTICATION_FAILED,
                "authentication failed",
                out,
            );
        }
        let Some(session_id) = data.session_id.as_str() else {
            return self.invalid_session(client, out);
        };
        let seq = data.seq.unwrap_or(0);
        let Some(&shard) = self.session_shards.get(session_id) else {
            debug!(client = client.0, "resume of an unknown session");
            return self.invalid_session(client, out);
        };
        let Some(state) = self.shards.get(&shard) else {
            return self.invalid_session(client, out);
        };
        let Some(session) = state.sessions.get(session_id) else {
            return self.invalid_session(client, out);
        };
        let Some(pos) = session.resume_point(&state.buffer, seq) else {
            debug!(
                client = client.0,
                seq, "resume from a seq this session cannot replay"
            );
            return self.invalid_session(client, out);
        };
        let Some(missed) = state.buffer.after(pos) else {
            debug!(
                client = client.0,
                seq, "resume from a seq older than the buffer"
            );
            return self.invalid_session(client, out);
        };
        let mut next = seq;
        let mut batch: Vec<Frame> = missed
            .filter(|e| session.admits(&e.audience))
            .map(|e| {
                next += 1;
                frames::dispatch(&e.event_type, next, &e.data)
            })
            .collect();
        let last = state.buffer.last_pos();
        let replayed = batch.len() as u64;
        // RESUMED carries the last seq again: it is not an event a later resume must replay.
        batch.push(frames::dispatch_text("RESUMED", next, "{}"));
        let previous = session.client;
        let session_id = session_id.to_owned();
        if let Some(old) = previous
            && old != client
        {
            // The session's old connection has not noticed it is replaced (a restarted client
            // whose old socket lingers): it goes.
            self.clients.remove(&old);
            out.push(Action::Close {
                client: old,
                code: close::UNKNOWN_ERROR,
                reason: "session resumed elsewhere",
            });
        }
        if let Some(s) = self.session_mut(&session_id) {
            s.sent = last;
            s.seq = next;
            s.client = Some(client);
            s.resumes += 1;
        }
        self.clients.insert(
            client,
            ClientState::Attached {
                session: session_id,
            },
        );
        self.stats.resumes += 1;
        self.stats.replayed += replayed;
        info!(client = client.0, seq, replayed, "client resumed");
        Hub::send(client, batch, out);
    }

    /// An upstream event.
    pub fn upstream(&mut self, event: Upstream, out: &mut Vec<Action>) {
        self.steps += 1;
        match event {
            Upstream::Ready {
                shard,
                session_id,
                data,
            } => self.upstream_ready_event(shard, session_id, &data, out),
            Upstream::Dispatch {
                shard,
                event_type,
                data,
            } => self.upstream_dispatch(shard, event_type, data, out),
            Upstream::Lost { shard } => self.lose(shard, out),
        }
    }

    fn upstream_ready_event(
        &mut self,
        shard: u32,
        session_id: String,
        data: &RawJson,
        out: &mut Vec<Action>,
    ) {
        let same = self
            .shards
            .get(&shard)
            .and_then(|s| s.upstream.as_ref())
            .is_some_and(|u| u.id == session_id);
        if same {
            return;
        }
        if self
            .shards
            .get(&shard)
            .is_some_and(|s| s.upstream.is_some())
        {
            self.lose(shard, out);
        }
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        let mut ready: Map<String, Value> =
            serde_json::from_slice(data.as_bytes()).unwrap_or_default();
        let listed: ReadyGuilds = ready
            .get("guilds")
            .and_then(|g| serde_json::from_value(serde_json::json!({ "guilds": g })).ok())
            .unwrap_or(ReadyGuilds { guilds: Vec::new() });
        for key in ["session_id", "resume_gateway_url", "guilds", "shard"] {
            ready.remove(key);
        }
        // The guilds of the new session: cached guilds it still lists are kept (Discord sends
        // their GUILD_CREATE again shortly).
        state
            .guilds
            .retain_listed(listed.guilds.into_iter().map(|g| g.id));
        state.upstream = Some(UpstreamSession {
            id: session_id,
            ready,
        });
        let pending = std::mem::take(&mut state.pending);
        for client in pending {
            if let Some(ClientState::Pending { identified, .. }) = self.clients.get(&client) {
                let identified = identified.clone();
                self.start_session(client, shard, identified, out);
            }
        }
    }

    fn upstream_dispatch(
        &mut self,
        shard: u32,
        event_type: EventName,
        data: RawJson,
        out: &mut Vec<Action>,
    ) {
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        state.guilds.apply(&event_type, &data);
        let mut data = data;
        let mut audience = Audience::ALL;
        if event_type == "GUILD_MEMBERS_CHUNK"
            && let Some((session, restored)) = Hub::member_chunk(state, &data)
        {
            audience.only = Some(session);
            data = restored;
        }
        if event_type == "SOUNDBOARD_SOUNDS"
            && let Some(session) = Hub::sound_reply(state, &data)
        {
            audience.only = Some(session);
        }
        // The intents matter only if a session of the shard lacks some of the upstream's
        // (sessions started later never see this event): the common case parses nothing.
        let upstream = self.config.intents.bits();
        let narrow = state
            .sessions
            .values()
            .any(|s| s.intents & upstream != upstream);
        if narrow {
            audience.intents = intents::governing(&event_type, || {
                serde_json::from_slice::<InGuild>(data.as_bytes())
                    .is_ok_and(|g| g.guild_id.is_some())
            });
        }
        let pos = state
            .buffer
            .push(event_type.clone(), data.clone(), audience);
        for session in state.sessions.values_mut() {
            let Some(client) = session.client else {
                continue;
            };
            session.sent = pos;
            if !session.admits(&audience) {
                continue;
            }
            session.seq += 1;
            let frame = frames::dispatch(&event_type, session.seq, &data);
            Hub::send_one(client, frame, out);
        }
    }

    /// The upstream session of `shard` is gone: every client session of the shard is, too.
    /// Attached clients get op 9 d=false (and may IDENTIFY again on the same connection).
    fn lose(&mut self, shard: u32, out: &mut Vec<Action>) {
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        state.upstream = None;
        state.buffer.clear();
        state.requests.clear();
        let lost = std::mem::take(&mut state.sessions);
        info!(
            shard,
            sessions = lost.len(),
            "upstream session lost; client sessions invalidated"
        );
        for (id, session) in lost {
            self.session_shards.remove(&id);
            if let Some(client) = session.client {
                self.clients.insert(client, ClientState::Hello);
                Hub::send(client, vec![frames::invalid_session()], out);
            }
        }
    }
}
