//! Per-shard status snapshots.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use handover_core::{ConnectionStatus, GiveUpReason, Phase};
use serde::{Serialize, Serializer};

use super::delivery::Taken;
use handover_protocol::{CloseCode, DeliveryStats};

/// What the runtime observes next to the core, as of one moment (see [`Observer`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub(crate) last_event_at: Option<Instant>,
    pub(crate) delivery: DeliveryStats,
    pub(crate) last_error: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) latency: Latency,
}

/// How many heartbeat round trips [`Latency::recent`] keeps.
pub const RECENT_LATENCIES: usize = 5;

/// Heartbeat round trips of one shard: the time from a heartbeat sent to its ACK.
///
/// Measured by the shard as it sends heartbeats and decodes their ACKs (a heartbeat the
/// gateway never acknowledges gives no sample).
///
/// ```
/// use std::time::Duration;
/// use handover_runtime::Latency;
///
/// let latency = Latency::default();
/// assert_eq!(latency.last(), None);
/// assert_eq!(latency.average(), None);
/// assert!(latency.recent().is_empty());
/// # let _ = Duration::ZERO;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    last: Option<Duration>,
    /// Sum and count of the current connection's round trips.
    total: Duration,
    count: u32,
    recent: VecDeque<Duration>,
}

impl Latency {
    /// The round trip of the last ACK (on this connection or an earlier one); `None` before
    /// the first.
    pub fn last(&self) -> Option<Duration> {
        self.last
    }

    /// The mean round trip over the current connection; `None` until its first ACK (a new
    /// connection, possibly to another gateway node, starts a new average).
    pub fn average(&self) -> Option<Duration> {
        (self.count > 0).then(|| self.total / self.count)
    }

    /// Heartbeats acknowledged on the current connection.
    pub fn heartbeats(&self) -> u32 {
        self.count
    }

    /// The last [`RECENT_LATENCIES`] round trips, oldest first, across connections.
    pub fn recent(&self) -> &VecDeque<Duration> {
        &self.recent
    }

    pub(crate) fn record(&mut self, sample: Duration) {
        self.last = Some(sample);
        self.total = self.total.saturating_add(sample);
        self.count = self.count.saturating_add(1);
        if self.recent.len() == RECENT_LATENCIES {
            self.recent.pop_front();
        }
        self.recent.push_back(sample);
    }

    /// A new connection: a new average (the last and recent samples stay).
    pub(crate) fn new_connection(&mut self) {
        self.total = Duration::ZERO;
        self.count = 0;
    }
}

/// The shard's observation record, written by the shard's task as it decodes and read by status
/// snapshots from any task. The per-frame fields are atomics (no lock on the event path); the
/// session id and the last error, which change rarely, sit behind a lock taken only when they
/// change or a snapshot is taken.
#[derive(Debug)]
pub(crate) struct Observer {
    /// The instant `last_event_us` counts from.
    base: Instant,
    /// Microseconds after `base` of the last event, plus one (0: none yet).
    last_event_us: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    seq_jumps: AtomicU64,
    sessions_lost: AtomicU64,
    rare: Mutex<Rare>,
}

#[derive(Debug, Default)]
struct Rare {
    last_error: Option<String>,
    session_id: Option<String>,
    latency: Latency,
}

impl Observer {
    pub(crate) fn new(session_id: Option<String>) -> Observer {
        Observer {
            base: tokio::time::Instant::now().into_std(),
            last_event_us: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            seq_jumps: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
            rare: Mutex::new(Rare {
                last_error: None,
                session_id,
                latency: Latency::default(),
            }),
        }
    }

    /// An event was decoded at `now`.
    pub(crate) fn event_at(&self, now: Instant) {
        let us = u64::try_from(now.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX - 1);
        self.last_event_us.store(us + 1, Ordering::Relaxed);
    }

    pub(crate) fn set_stats(&self, stats: DeliveryStats) {
        self.delivered.store(stats.delivered, Ordering::Relaxed);
        self.duplicates.store(stats.duplicates, Ordering::Relaxed);
        self.seq_jumps.store(stats.seq_jumps, Ordering::Relaxed);
        self.sessions_lost
            .store(stats.sessions_lost, Ordering::Relaxed);
    }

    pub(crate) fn set_session(&self, id: &str) {
        let mut rare = self.lock();
        if rare.session_id.as_deref() != Some(id) {
            rare.session_id = Some(id.to_owned());
        }
    }

    pub(crate) fn set_error(&self, error: String) {
        self.lock().last_error = Some(error);
    }

    /// A heartbeat ACK arrived `latency` after its heartbeat (a few per minute: the lock is
    /// not on the event path).
    pub(crate) fn heartbeat_acked(&self, latency: Duration) {
        self.lock().latency.record(latency);
    }

    /// A new connection is being made.
    pub(crate) fn new_connection(&self) {
        self.lock().latency.new_connection();
    }

    pub(crate) fn snapshot(&self) -> Observed {
        let rare = self.lock();
        let last = self.last_event_us.load(Ordering::Relaxed);
        Observed {
            last_event_at: last
                .checked_sub(1)
                .map(|us| self.base + std::time::Duration::from_micros(us)),
            delivery: DeliveryStats {
                delivered: self.delivered.load(Ordering::Relaxed),
                duplicates: self.duplicates.load(Ordering::Relaxed),
                seq_jumps: self.seq_jumps.load(Ordering::Relaxed),
                sessions_lost: self.sessions_lost.load(Ordering::Relaxed),
            },
            last_error: rare.last_error.clone(),
            session_id: rare.session_id.clone(),
            latency: rare.latency.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rare> {
        // Plain values: a panic while holding the lock cannot leave them inconsistent.
        self.rare.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A serializable snapshot of one shard, for status pages, metrics and logs.
///
/// Times are Unix milliseconds (wall clock at the moment the snapshot was taken, projected from
/// the monotonic clock); durations are [`Duration`]s, serialized as whole milliseconds under a
/// `_ms` name. The phase serializes as its [`Phase::name`] and the give-up reason as its
/// readable [`describe_give_up`] text. The token never appears here.
///
/// ```
/// use handover_runtime::{GiveUpReason, Phase, ShardStatus};
///
/// fn needs_a_new_token(status: &ShardStatus) -> bool {
///     status.phase == Phase::Failed
///         && status.gave_up == Some(GiveUpReason::FatalClose { code: Some(4004) })
/// }
/// # let _ = needs_a_new_token;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    /// Shard id.
    pub shard: u32,
    /// Phase; serialized as its name: not_connected, connecting, awaiting_hello,
    /// awaiting_permit, identifying, resuming, receiving, stale, draining, backing_off,
    /// stopped, failed.
    #[serde(serialize_with = "phase_name")]
    pub phase: Phase,
    /// Whether a session is held that a reconnect would resume.
    pub resumable: bool,
    /// The current session id, if any (not a secret: it is useless without the token).
    pub session_id: Option<String>,
    /// When the current connection's handshake was accepted.
    pub connected_since_ms: Option<u64>,
    /// When the last heartbeat ACK arrived.
    pub last_heartbeat_ack_ms: Option<u64>,
    /// Heartbeat round trip of the last ACK (serialized as `latency_ms`).
    #[serde(rename = "latency_ms", serialize_with = "opt_millis")]
    pub latency: Option<Duration>,
    /// Mean heartbeat round trip over the current connection (serialized as
    /// `latency_average_ms`); `None` until its first ACK.
    #[serde(rename = "latency_average_ms", serialize_with = "opt_millis")]
    pub latency_average: Option<Duration>,
    /// The last [`RECENT_LATENCIES`] heartbeat round trips, oldest first (serialized as
    /// `latency_recent_ms`, a list of milliseconds).
    #[serde(rename = "latency_recent_ms", serialize_with = "millis_list")]
    pub latency_recent: Vec<Duration>,
    /// When the last event (dispatch, ready, resumed) arrived.
    pub last_event_ms: Option<u64>,
    /// When the next reconnect is due, while backing off.
    pub reconnect_at_ms: Option<u64>,
    /// Reconnects scheduled.
    pub reconnects: u64,
    /// IDENTIFY payloads sent.
    pub identifies: u64,
    /// RESUME payloads sent.
    pub resumes: u64,
    /// Dispatches (READY and RESUMED included) the application's sink took: returned by
    /// `next_event()`, or confirmed through a receipt (see the sink contract in
    /// `runtime::delivery`). For `handover run`: written to stdout.
    pub delivered: u64,
    /// Dispatches (READY and RESUMED included) received from the gateway, once each; those not
    /// yet `delivered` are queued for the sink.
    pub received: u64,
    /// Replayed dispatches dropped because they were already delivered.
    pub duplicates_dropped: u64,
    /// Sessions lost after delivering events (each reported as a gap event).
    pub gaps: u64,
    /// Close code of the last close frame received from the gateway (a close it started, or
    /// its answer to ours).
    pub last_close_code: Option<u16>,
    /// What that code means, when Discord defines it.
    pub last_close_reason: Option<&'static str>,
    /// The last transport or protocol error seen.
    pub last_error: Option<String>,
    /// Why the shard gave up, if it did (serialized as its [`describe_give_up`] text).
    #[serde(serialize_with = "opt_give_up")]
    pub gave_up: Option<GiveUpReason>,
    /// Sockets live right now (0 or 1).
    pub live_sockets: usize,
}

impl ShardStatus {
    pub(crate) fn build(
        shard: u32,
        core: &ConnectionStatus,
        observed: &Observed,
        taken: &Taken,
        live: usize,
    ) -> Self {
        let clock = Clock::now();
        ShardStatus {
            shard,
            phase: core.phase,
            resumable: core.resumable,
            session_id: observed.session_id.clone().filter(|_| core.resumable),
            connected_since_ms: core.identified_since.map(|t| clock.unix_ms(t)),
            last_heartbeat_ack_ms: core.last_ack_at.map(|t| clock.unix_ms(t)),
            latency: observed.latency.last(),
            latency_average: observed.latency.average(),
            latency_recent: observed.latency.recent().iter().copied().collect(),
            last_event_ms: observed.last_event_at.map(|t| clock.unix_ms(t)),
            reconnect_at_ms: core.reconnect_at.map(|t| clock.unix_ms(t)),
            reconnects: core.reconnects,
            identifies: core.identifies,
            resumes: core.resumes,
            delivered: taken.delivered,
            received: observed.delivery.delivered,
            duplicates_dropped: observed.delivery.duplicates,
            gaps: observed.delivery.sessions_lost,
            last_close_code: core.last_close_code,
            last_close_reason: core
                .last_close_code
                .and_then(CloseCode::from_code)
                .map(CloseCode::description),
            last_error: observed.last_error.clone(),
            gave_up: core.gave_up,
            live_sockets: live,
        }
    }
}

/// A duration as whole milliseconds (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn phase_name<S: Serializer>(phase: &Phase, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(phase.name())
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(millis).serialize(s)
}

fn millis_list<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().copied().map(millis))
}

fn opt_give_up<S: Serializer>(r: &Option<GiveUpReason>, s: S) -> Result<S::Ok, S::Error> {
    r.map(describe_give_up).serialize(s)
}

/// A readable give-up reason, naming Discord's meaning of a fatal close code when there is
/// one: the text of `gave_up` in the status JSON and of `reason` in `handover run`'s
/// `gave_up` lines.
///
/// ```
/// use handover_runtime::{GiveUpReason, describe_give_up};
///
/// let r = GiveUpReason::FatalClose { code: Some(4004) };
/// assert_eq!(describe_give_up(r), "authentication failed (close code 4004)");
/// assert_eq!(describe_give_up(GiveUpReason::PermitDenied), "permit to start a new session refused");
/// ```
pub fn describe_give_up(reason: GiveUpReason) -> String {
    match reason {
        GiveUpReason::FatalClose { code: Some(c) } => match CloseCode::from_code(c) {
            Some(cc) => format!("{} (close code {c})", cc.description()),
            None => format!("fatal close code {c}"),
        },
        other => other.to_string(),
    }
}

/// Projects monotonic instants onto the wall clock, once per snapshot.
struct Clock {
    mono: Instant,
    wall_ms: u64,
}

impl Clock {
    fn now() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            mono: tokio::time::Instant::now().into_std(),
            wall_ms,
        }
    }

    fn unix_ms(&self, t: Instant) -> u64 {
        if t <= self.mono {
            let ago = u64::try_from((self.mono - t).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_sub(ago)
        } else {
            let ahead = u64::try_from((t - self.mono).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_add(ahead)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ShardStatus {
        ShardStatus {
            shard: 3,
            phase: Phase::Failed,
            resumable: false,
            session_id: None,
            connected_since_ms: Some(1_700_000_000_000),
            last_heartbeat_ack_ms: Some(1_700_000_000_500),
            latency: Some(Duration::from_micros(41_900)),
            latency_average: Some(Duration::from_millis(40)),
            latency_recent: vec![Duration::from_millis(38), Duration::from_micros(41_900)],
            last_event_ms: None,
            reconnect_at_ms: None,
            reconnects: 2,
            identifies: 1,
            resumes: 1,
            delivered: 40,
            received: 45,
            duplicates_dropped: 3,
            gaps: 0,
            last_close_code: Some(4004),
            last_close_reason: Some("authentication failed"),
            last_error: Some("boom".into()),
            gave_up: Some(GiveUpReason::FatalClose { code: Some(4004) }),
            live_sockets: 0,
        }
    }

    /// The typed fields serialize as the strings and milliseconds the binary's JSON has
    /// always carried (the latency average and recent samples are additions).
    #[test]
    fn typed_fields_serialize_as_before() {
        let json = serde_json::to_string(&status()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"shard":3,"phase":"failed","resumable":false,"session_id":null,"#,
                r#""connected_since_ms":1700000000000,"last_heartbeat_ack_ms":1700000000500,"#,
                r#""latency_ms":41,"latency_average_ms":40,"latency_recent_ms":[38,41],"#,
                r#""last_event_ms":null,"reconnect_at_ms":null,"reconnects":2,"identifies":1,"#,
                r#""resumes":1,"delivered":40,"received":45,"duplicates_dropped":3,"gaps":0,"#,
                r#""last_close_code":4004,"last_close_reason":"authentication failed","#,
                r#""last_error":"boom","gave_up":"authentication failed (close code 4004)","#,
                r#""live_sockets":0}"#
            )
        );
        let mut none = status();
        none.latency = None;
        none.latency_average = None;
        none.latency_recent.clear();
        none.gave_up = Some(GiveUpReason::MaxAttempts { attempts: 7 });
        let v: serde_json::Value = serde_json::to_value(&none).unwrap();
        assert_eq!(v["latency_ms"], serde_json::Value::Null);
        assert_eq!(v["latency_average_ms"], serde_json::Value::Null);
        assert_eq!(v["latency_recent_ms"], serde_json::json!([]));
        assert_eq!(v["gave_up"], "gave up after 7 failed attempts");
    }

    #[test]
    fn latency_keeps_last_average_and_recent() {
        let mut l = Latency::default();
        for ms in [10, 20, 30, 40, 50, 60] {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.last(), Some(Duration::from_millis(60)));
        assert_eq!(l.average(), Some(Duration::from_millis(35)));
        assert_eq!(l.heartbeats(), 6);
        let recent: Vec<u64> = l.recent().iter().map(|d| millis(*d)).collect();
        assert_eq!(recent, [20, 30, 40, 50, 60], "the last five, oldest first");
        // A new connection starts a new average; the history stays.
        l.new_connection();
        assert_eq!(l.average(), None);
        assert_eq!(l.last(), Some(Duration::from_millis(60)));
        l.record(Duration::from_millis(8));
        assert_eq!(l.average(), Some(Duration::from_millis(8)));
        assert_eq!(l.recent().len(), RECENT_LATENCIES);
    }
}
