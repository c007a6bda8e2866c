//! Per-shard status snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use handover_core::ConnectionStatus;
use serde::Serialize;

use super::delivery::Taken;
use handover_protocol::{CloseCode, DeliveryStats};

/// What the runtime observes next to the core, as of one moment (see [`Observer`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub(crate) last_event_at: Option<Instant>,
    pub(crate) delivery: DeliveryStats,
    pub(crate) last_error: Option<String>,
    pub(crate) session_id: Option<String>,
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
/// the monotonic clock). The token never appears here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    /// Shard id.
    pub shard: u32,
    /// Phase: not_connected, connecting, awaiting_hello, awaiting_permit, identifying,
    /// resuming, receiving, stale, draining, backing_off, stopped, failed.
    pub phase: &'static str,
    /// Whether a session is held that a reconnect would resume.
    pub resumable: bool,
    /// The current session id, if any (not a secret: it is useless without the token).
    pub session_id: Option<String>,
    /// When the current connection's handshake was accepted.
    pub connected_since_ms: Option<u64>,
    /// When the last heartbeat ACK arrived.
    pub last_heartbeat_ack_ms: Option<u64>,
    /// Heartbeat round trip of the last ACK, in milliseconds.
    pub latency_ms: Option<u64>,
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
    /// Why the shard gave up, if it did.
    pub gave_up: Option<String>,
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
            phase: core.phase.name(),
            resumable: core.resumable,
            session_id: observed.session_id.clone().filter(|_| core.resumable),
            connected_since_ms: core.identified_since.map(|t| clock.unix_ms(t)),
            last_heartbeat_ack_ms: core.last_ack_at.map(|t| clock.unix_ms(t)),
            latency_ms: core
                .latency
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
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
            gave_up: core.gave_up.map(describe_give_up),
            live_sockets: live,
        }
    }
}

/// A readable reason, naming Discord's close code meaning when there is one.
pub(crate) fn describe_give_up(reason: handover_core::GiveUpReason) -> String {
    match reason {
        handover_core::GiveUpReason::FatalClose { code: Some(c) } => {
            match CloseCode::from_code(c) {
                Some(cc) => format!("{} (close code {c})", cc.description()),
                None => format!("fatal close code {c}"),
            }
        }
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
