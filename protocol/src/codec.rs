//! [`DiscordCodec`]: Discord gateway v10 (JSON encoding) as a [`handover_core::Codec`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use handover_core::{Codec, Decoded, Message, OpenMode, Payload, Signal, TransportId};
use serde::Deserialize;

use super::commands::{ConnectionProperties, IdentifyData, ResumeData, ShardId, UpdatePresence};
use super::compression::{Compression, DEFAULT_MAX_DECOMPRESSED_BYTES, Decompressor};
use super::envelope::{Head, MAX_PAYLOAD_BYTES, RawJson, encode_payload, head};
use super::event_name::EventName;
use super::limits::{RateLimitConfig, SendLimiter};
use super::session::{DeliveryStats, Gap, Session, Tracker, Verdict};
use super::{Command, Intents, OpCode, ProtocolError, Token};

/// The gateway API version this codec speaks.
pub const API_VERSION: u8 = 10;

/// Where Discord's gateway lives when `GET /gateway/bot` was not asked.
pub const DEFAULT_GATEWAY_URL: &str = "wss://gateway.discord.gg";

/// Everything a shard's codec needs. Build it with [`GatewayConfig::new`], then adjust the
/// public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The bot token (redacted in Debug output).
    pub token: Token,
    /// Intents sent in IDENTIFY.
    pub intents: Intents,
    /// `[shard_id, num_shards]` sent in IDENTIFY. Default `[0, 1]`.
    pub shard: ShardId,
    /// The URL for new sessions, from `GET /gateway/bot` (its `url`). Default
    /// [`DEFAULT_GATEWAY_URL`]. The codec adds `v=10&encoding=json` and `compress=...`.
    pub gateway_url: String,
    /// The `properties` of IDENTIFY.
    pub properties: ConnectionProperties,
    /// Initial presence sent in IDENTIFY.
    pub presence: Option<UpdatePresence>,
    /// `large_threshold` of IDENTIFY (50..=250), or Discord's default (50) when `None`.
    pub large_threshold: Option<u8>,
    /// Transport compression. Default none.
    pub compression: Compression,
    /// Cap on the decompressed size of one message. Default 32 MiB.
    pub max_decompressed_bytes: usize,
    /// The send limit. Default Discord's: 120 per 60 s, slots kept for heartbeats.
    pub rate_limit: RateLimitConfig,
    /// The shortest heartbeat interval a HELLO may set; a shorter one (0 included) is raised
    /// to this, with a warning. Default [`MIN_HEARTBEAT_INTERVAL`].
    pub min_heartbeat_interval: Duration,
}

/// Default floor on the heartbeat interval a HELLO may set: 100 ms. Discord sends 41,250 ms;
/// test gateways (the mock included) use a few hundred milliseconds. Without a floor, a HELLO
/// with `heartbeat_interval` 0 would make the client beat as fast as it can and be closed for
/// exceeding the send rate (4008).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

impl GatewayConfig {
    /// A configuration for shard `[0, 1]` of the default gateway, no compression.
    pub fn new(token: Token, intents: Intents) -> Self {
        GatewayConfig {
            token,
            intents,
            shard: ShardId::ONE,
            gateway_url: DEFAULT_GATEWAY_URL.to_owned(),
            properties: ConnectionProperties::default(),
            presence: None,
            large_threshold: None,
            compression: Compression::None,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            rate_limit: RateLimitConfig::default(),
            min_heartbeat_interval: MIN_HEARTBEAT_INTERVAL,
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |reason: String| Err(ProtocolError::InvalidConfig { reason });
        if !is_ws_url(&self.gateway_url) {
            return bad("gateway url must start with ws:// or wss://".into());
        }
        if !self.shard.is_valid() {
            return bad(format!(
                "shard id {} is not below the shard count {}",
                self.shard.id, self.shard.count
            ));
        }
        if let Some(t) = self.large_threshold
            && !(50..=250).contains(&t)
        {
            return bad(format!("large_threshold {t} is outside 50..=250"));
        }
        if self.max_decompressed_bytes == 0 {
            return bad("max_decompressed_bytes must be positive".into());
        }
        if self.rate_limit.limit == 0 || self.rate_limit.window.is_zero() {
            return bad("rate limit must allow at least one send per non-empty window".into());
        }
        Ok(())
    }
}

/// What the codec hands to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatewayEvent {
    /// READY: a new session started.
    Ready(Ready),
    /// RESUMED: the held session was resumed; the replayed events came before it.
    Resumed(Resumed),
    /// Any other dispatch (op 0), exactly once and in order within a session.
    Dispatch(Dispatch),
    /// A session that had delivered events was lost and a new one is starting: the events in
    /// between will never arrive. Reported once, before the new session's READY: on the new
    /// connection's HELLO, or (should a server answer a RESUME with READY) just before that
    /// READY.
    Gap(Gap),
}

/// READY, with the session it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The new session's id.
    pub session_id: String,
    /// Where to resume it.
    pub resume_gateway_url: String,
    /// READY's sequence number.
    pub seq: Option<u64>,
    /// The whole `d` of READY (user, guilds, application...), raw.
    pub data: RawJson,
}

/// RESUMED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The resumed session's id.
    pub session_id: String,
    /// The last sequence number after the replay.
    pub seq: Option<u64>,
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Its sequence number in the session.
    pub seq: u64,
    /// The event name (`t`), for example `MESSAGE_CREATE`: reads as a `&str`
    /// ([`EventName::as_str`]) and compares with strings; held without a copy of the frame.
    pub event_type: EventName,
    /// The event data (`d`), raw JSON sharing the received buffer.
    pub data: RawJson,
}

#[derive(Deserialize)]
struct HelloData {
    heartbeat_interval: Option<u64>,
}

#[derive(Deserialize)]
struct ReadyData {
    session_id: Option<String>,
    resume_gateway_url: Option<String>,
}

/// Discord gateway v10 as a [`Codec`] for the lifecycle core.
///
/// One codec serves one shard for its whole life, across connections: it holds the session
/// (id, resume URL, last sequence number) and resets per-connection state (decompression
/// context, send window) in [`Codec::reset`].
///
/// Received: HELLO becomes [`Signal::Hello`]; HEARTBEAT_ACK [`Signal::HeartbeatAck`]; op 1
/// [`Signal::HeartbeatRequested`]; READY `HandshakeAccepted { resumed: false }`; RESUMED
/// `HandshakeAccepted { resumed: true }`; op 7 [`Signal::ReconnectRequested`]; op 9
/// `SessionInvalidated { resumable: d }`. Dispatches become [`GatewayEvent`]s; replays of a
/// sequence number already delivered are dropped and counted.
///
/// Sent: heartbeats carry the last sequence number; IDENTIFY and RESUME are built from the
/// configuration and the session; commands are refused when over 4096 bytes or over the send
/// rate, and then nothing is sent.
#[derive(Debug)]
pub struct DiscordCodec {
    cfg: GatewayConfig,
    tracker: Tracker,
    decompressor: Decompressor,
    limiter: SendLimiter,
    conn: Option<TransportId>,
    mode: OpenMode,
    /// A RESUMED already accepted the handshake on the current connection.
    resumed_here: bool,
    /// Items of the last decoded message after the first (see [`Codec::poll_item`]).
    extra: Option<GatewayEvent>,
    /// The restart for a broken decompression stream was asked for on this connection.
    restart_asked: bool,
}

impl DiscordCodec {
    /// A codec for one shard. Refuses a configuration that cannot work.
    ///
    /// An IDENTIFY that could never be sent (over 4096 bytes, for example with a very large
    /// initial presence) is refused here, as a configuration error, rather than failing at
    /// every connection.
    pub fn new(cfg: GatewayConfig) -> Result<Self, ProtocolError> {
        cfg.validate()?;
        let identify = identify_bytes(&cfg)?.len();
        if identify > MAX_PAYLOAD_BYTES {
            return Err(ProtocolError::InvalidConfig {
                reason: format!(
                    "the IDENTIFY payload would be {identify} bytes, over the gateway's \
                     {MAX_PAYLOAD_BYTES} (a smaller initial presence is needed)"
                ),
            });
        }
        let decompressor = Decompressor::new(cfg.compression, cfg.max_decompressed_bytes)?;
        let limiter = SendLimiter::new(cfg.rate_limit);
        Ok(DiscordCodec {
            cfg,
            tracker: Tracker::default(),
            decompressor,
            limiter,
            conn: None,
            mode: OpenMode::Identify,
            resumed_here: false,
            extra: None,
            restart_asked: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The session a resume would continue, if one is held.
    pub fn session(&self) -> Option<Session> {
        self.tracker.session()
    }

    /// Installs a session saved earlier (for example from a session file), so the next
    /// [`OpenMode::Resume`] connection resumes it. The lifecycle core must be told to resume
    /// as well; if the session turns out to be gone, Discord answers with op 9 and the core
    /// identifies afresh.
    pub fn restore_session(&mut self, session: Session) {
        self.tracker.restore(session);
    }

    /// The last sequence number received in the current session.
    pub fn last_seq(&self) -> Option<u64> {
        self.tracker.last_seq()
    }

    /// Delivery counters: delivered, duplicates dropped, sequence jumps, sessions lost.
    pub fn stats(&self) -> DeliveryStats {
        self.tracker.stats
    }

    /// Payloads sent on the current connection within the rate window ending at `now`.
    pub fn sends_in_window(&mut self, now: Instant) -> u32 {
        self.limiter.used(now)
    }

    /// The connection the codec was last reset for.
    pub fn connection(&self) -> Option<TransportId> {
        self.conn
    }

    /// Decodes one JSON message; `utf8_checked` for a text message, whose transport checked
    /// its UTF-8 (see [`head`]).
    fn decode_json(
        &mut self,
        buf: &Bytes,
        utf8_checked: bool,
    ) -> Result<Decoded<GatewayEvent>, ProtocolError> {
        let env = head(buf, utf8_checked)?;
        let signal = |s| Decoded {
            signal: Some(s),
            item: None,
        };
        match env.opcode()? {
            OpCode::Hello => {
                let d = env.d.ok_or(ProtocolError::MissingField {
                    field: "d",
                    context: "hello",
                })?;
                let hello: HelloData =
                    serde_json::from_slice(&buf[d]).map_err(|e| ProtocolError::malformed(&e))?;
                let ms = hello
                    .heartbeat_interval
                    .ok_or(ProtocolError::MissingField {
                        field: "heartbeat_interval",
                        context: "hello",
                    })?;
                let mut interval = Duration::from_millis(ms);
                if interval < self.cfg.min_heartbeat_interval {
                    tracing::warn!(
                        asked_ms = ms,
                        floor_ms = self.cfg.min_heartbeat_interval.as_millis() as u64,
                        "heartbeat interval below the floor; using the floor"
                    );
                    interval = self.cfg.min_heartbeat_interval;
                }
                self.limiter.set_heartbeat_interval(interval);
                if self.mode == OpenMode::Resume && self.tracker.session_ids().is_none() {
                    // Asked to resume with nothing to resume: behave as Discord would, so the
                    // lifecycle closes this connection and identifies (through its permit).
                    tracing::warn!("resume requested without a session; invalidating");
                    return Ok(signal(Signal::SessionInvalidated { resumable: false }));
                }
                let gap = self.tracker.take_gap();
                if let Some(g) = &gap {
                    tracing::warn!(
                        lost_session = %g.session_id,
                        last_seq = g.last_seq,
                        "session lost; events were missed"
                    );
                }
                Ok(Decoded {
                    signal: Some(Signal::Hello { interval }),
                    item: gap.map(GatewayEvent::Gap),
                })
            }
            OpCode::HeartbeatAck => Ok(signal(Signal::HeartbeatAck)),
            OpCode::Heartbeat => Ok(signal(Signal::HeartbeatRequested)),
            OpCode::Reconnect => Ok(signal(Signal::ReconnectRequested)),
            OpCode::InvalidSession => {
                let d = env.d.ok_or(ProtocolError::MissingField {
                    field: "d",
                    context: "invalid session",
                })?;
                let resumable: bool =
                    serde_json::from_slice(&buf[d]).map_err(|e| ProtocolError::malformed(&e))?;
                Ok(signal(Signal::SessionInvalidated { resumable }))
            }
            OpCode::Dispatch => self.decode_dispatch(buf, env),
            op => Err(ProtocolError::UnexpectedOpcode { op }),
        }
    }

    fn decode_dispatch(
        &mut self,
        buf: &Bytes,
        env: Head,
    ) -> Result<Decoded<GatewayEvent>, ProtocolError> {
        let t = env.t.as_ref().ok_or(ProtocolError::MissingField {
            field: "t",
            context: "dispatch",
        })?;
        let t = EventName::from_message(buf, t)?;
        match t.as_str() {
            "READY" => {
                let d = env.d.ok_or(ProtocolError::MissingField {
                    field: "d",
                    context: "ready",
                })?;
                let ready: ReadyData = serde_json::from_slice(&buf[d.clone()])
                    .map_err(|e| ProtocolError::malformed(&e))?;
                let session_id = ready.session_id.ok_or(ProtocolError::MissingField {
                    field: "session_id",
                    context: "ready",
                })?;
                let resume_gateway_url =
                    ready
                        .resume_gateway_url
                        .ok_or(ProtocolError::MissingField {
                            field: "resume_gateway_url",
                            context: "ready",
                        })?;
                tracing::info!(session = %session_id, seq = ?env.s, "ready");
                self.tracker
                    .ready(session_id.clone(), resume_gateway_url.clone(), env.s);
                let ready = GatewayEvent::Ready(Ready {
                    session_id,
                    resume_gateway_url,
                    seq: env.s,
                    data: RawJson::from_range(buf, d),
                });
                // A READY that replaced a session we still held (a server answering a
                // RESUME with READY): the lost session is reported first, then READY.
                let item = match self.tracker.take_gap() {
                    Some(gap) => {
                        tracing::warn!(
                            lost_session = %gap.session_id,
                            last_seq = gap.last_seq,
                            "session replaced by READY; events were missed"
                        );
                        self.extra = Some(ready);
                        GatewayEvent::Gap(gap)
                    }
                    None => ready,
                };
                Ok(Decoded {
                    signal: Some(Signal::HandshakeAccepted { resumed: false }),
                    item: Some(item),
                })
            }
            "RESUMED" if self.resumed_here => {
                // A second RESUMED on one connection: one that never reached us before was
                // replayed among the missed events. The handshake is already accepted; this
                // one is delivered like any replayed dispatch (once, in seq order).
                tracing::debug!(seq = ?env.s, "second RESUMED on one connection");
                self.plain_dispatch(buf, env.s, env.d, t)
            }
            "RESUMED" => {
                self.resumed_here = true;
                self.tracker.resumed(env.s);
                let session_id = self
                    .tracker
                    .session_ids()
                    .map(|(id, _)| id.to_owned())
                    .unwrap_or_default();
                tracing::info!(session = %session_id, seq = ?self.tracker.last_seq(), "resumed");
                Ok(Decoded {
                    signal: Some(Signal::HandshakeAccepted { resumed: true }),
                    item: Some(GatewayEvent::Resumed(Resumed {
                        session_id,
                        seq: self.tracker.last_seq(),
                    })),
                })
            }
            _ => self.plain_dispatch(buf, env.s, env.d, t),
        }
    }

    /// Any dispatch but READY and the handshake's RESUMED: delivered once, in seq order.
    fn plain_dispatch(
        &mut self,
        buf: &Bytes,
        s: Option<u64>,
        d: Option<std::ops::Range<usize>>,
        t: EventName,
    ) -> Result<Decoded<GatewayEvent>, ProtocolError> {
        let seq = s.ok_or(ProtocolError::MissingField {
            field: "s",
            context: "dispatch",
        })?;
        match self.tracker.dispatch(seq) {
            Verdict::Duplicate => {
                tracing::debug!(seq, event = %t, "duplicate dispatch dropped");
                return Ok(Decoded::nothing());
            }
            Verdict::DeliverAfterJump { expected } => {
                tracing::warn!(seq, expected, event = %t, "sequence jumped");
            }
            Verdict::Deliver => {}
        }
        let data = d.map_or_else(RawJson::null, |d| RawJson::from_range(buf, d));
        Ok(Decoded {
            signal: None,
            item: Some(GatewayEvent::Dispatch(Dispatch {
                seq,
                event_type: t,
                data,
            })),
        })
    }

    fn checked(bytes: Vec<u8>) -> Result<Message, ProtocolError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(ProtocolError::PayloadTooLarge {
                size: bytes.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(Message::Text(Bytes::from(bytes)))
    }
}

impl Codec for DiscordCodec {
    type Item = GatewayEvent;
    type Command = Command;
    type Error = ProtocolError;

    fn url(&self, mode: OpenMode) -> String {
        let base = match mode {
            OpenMode::Resume => self
                .tracker
                .session_ids()
                .map(|(_, url)| url)
                .filter(|u| is_ws_url(u))
                .unwrap_or(&self.cfg.gateway_url),
            OpenMode::Identify => &self.cfg.gateway_url,
        };
        gateway_url(base, self.cfg.compression)
    }

    fn reset(&mut self, conn: TransportId, mode: OpenMode) {
        self.conn = Some(conn);
        self.mode = mode;
        self.resumed_here = false;
        self.extra = None;
        self.restart_asked = false;
        self.limiter.reset();
        self.decompressor =
            Decompressor::new(self.cfg.compression, self.cfg.max_decompressed_bytes)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot create a decompression context");
                    Decompressor::Failed
                });
        if mode == OpenMode::Identify {
            self.tracker.forget_session();
        }
    }

    fn decode(
        &mut self,
        _now: Instant,
        msg: Message,
    ) -> Result<Decoded<GatewayEvent>, ProtocolError> {
        let (buf, utf8_checked) = match msg {
            Message::Text(b) => (b, true),
            Message::Binary(b) if matches!(self.decompressor, Decompressor::None) => (b, false),
            Message::Binary(b) => match self.decompressor.push(&b)? {
                Some(v) => (v, false),
                None => return Ok(Decoded::nothing()),
            },
        };
        self.decode_json(&buf, utf8_checked)
    }

    fn poll_item(&mut self) -> Option<GatewayEvent> {
        self.extra.take()
    }

    fn poll_restart(&mut self) -> bool {
        if self.restart_asked || !self.decompressor.is_poisoned() {
            return false;
        }
        tracing::warn!("the decompression stream is corrupted; replacing the connection");
        self.restart_asked = true;
        true
    }

    fn encode(&mut self, now: Instant, payload: Payload) -> Result<Message, ProtocolError> {
        let bytes = match payload {
            Payload::Heartbeat => encode_payload(OpCode::Heartbeat, &self.tracker.last_seq())?,
            Payload::Handshake(OpenMode::Identify) => identify_bytes(&self.cfg)?,
            Payload::Handshake(OpenMode::Resume) => {
                let (session_id, _) = self.tracker.session_ids().ok_or(ProtocolError::NoSession)?;
                encode_payload(
                    OpCode::Resume,
                    &ResumeData {
                        token: self.cfg.token.expose_secret(),
                        session_id,
                        seq: self.tracker.last_seq(),
                    },
                )?
            }
        };
        let msg = Self::checked(bytes)?;
        self.limiter.record_priority(now);
        Ok(msg)
    }

    fn encode_command(&mut self, now: Instant, command: Command) -> Result<Message, ProtocolError> {
        let msg = Self::checked(command.to_payload()?)?;
        self.limiter.try_acquire(now)?;
        Ok(msg)
    }
}

/// The IDENTIFY payload for `cfg`.
fn identify_bytes(cfg: &GatewayConfig) -> Result<Vec<u8>, ProtocolError> {
    encode_payload(
        OpCode::Identify,
        &IdentifyData {
            token: cfg.token.expose_secret(),
            properties: &cfg.properties,
            intents: cfg.intents,
            shard: cfg.shard,
            presence: cfg.presence.as_ref(),
            large_threshold: cfg.large_threshold,
        },
    )
}

fn is_ws_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("ws://") && lower.len() > 5)
        || (lower.starts_with("wss://") && lower.len() > 6)
}

/// `base` with `v=10&encoding=json` and, when compressing, `compress=...`; other query
/// parameters of `base` are kept, its own `v`, `encoding` and `compress` are replaced.
pub fn gateway_url(base: &str, compression: Compression) -> String {
    let (path, query) = base.split_once('?').unwrap_or((base, ""));
    let mut url = String::with_capacity(base.len() + 48);
    url.push_str(path);
    let authority_start = path.find("://").map_or(0, |i| i + 3);
    if !path[authority_start..].contains('/') {
        url.push('/');
    }
    url.push_str("?v=");
    url.push_str(&API_VERSION.to_string());
    url.push_str("&encoding=json");
    if let Some(c) = compression.query_value() {
        url.push_str("&compress=");
        url.push_str(c);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or_default();
        if !matches!(key, "v" | "encoding" | "compress") {
            url.push('&');
            url.push_str(pair);
        }
    }
    url
}
