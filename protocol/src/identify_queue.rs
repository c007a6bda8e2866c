//! Pacing of IDENTIFY across shards, sans-IO with time injected.
//!
//! Sources:
//! - concurrency buckets `shard_id % max_concurrency`, one identify per bucket per 5 s:
//!   <https://discord.com/developers/docs/events/gateway#sharding-max-concurrency> and
//!   <https://discord.com/developers/docs/events/gateway#rate-limiting>;
//! - the daily session start limit (1000 identifies a day; past it Discord resets the token):
//!   <https://discord.com/developers/docs/events/gateway#identifying> and
//!   <https://discord.com/developers/docs/events/gateway#session-start-limit-object>.
//!
//! The lifecycle core asks for a permit before every identify
//! ([`Output::AcquirePermit`](handover_core::Output::AcquirePermit)); a runtime answers it with
//! this queue: [`IdentifyQueue::request`] on the ask, then [`IdentifyQueue::poll_ready`] at
//! [`IdentifyQueue::poll_timeout`] until the ticket is granted
//! ([`Input::PermitGranted`](handover_core::Input::PermitGranted)); a refused request becomes
//! [`Input::PermitDenied`](handover_core::Input::PermitDenied), so the shard stops with a clear
//! reason instead of spending the daily budget.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `session_start_limit` object of `GET /gateway/bot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionStartLimit {
    /// Session starts allowed per period (1000 for most bots).
    pub total: u32,
    /// Session starts left in the current period.
    pub remaining: u32,
    /// Time until `remaining` goes back to `total`.
    pub reset_after: Duration,
    /// Identifies allowed per 5 s, one per bucket `shard_id % max_concurrency`.
    pub max_concurrency: u32,
}

impl Default for SessionStartLimit {
    /// What Discord gives most bots: 1000 session starts a day, all left, one bucket.
    fn default() -> Self {
        SessionStartLimit {
            total: 1000,
            remaining: 1000,
            reset_after: Duration::from_secs(24 * 60 * 60),
            max_concurrency: 1,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SessionStartLimitWire {
    total: u32,
    remaining: u32,
    reset_after: u64,
    max_concurrency: u32,
}

impl Serialize for SessionStartLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SessionStartLimitWire {
            total: self.total,
            remaining: self.remaining,
            reset_after: u64::try_from(self.reset_after.as_millis()).unwrap_or(u64::MAX),
            max_concurrency: self.max_concurrency,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SessionStartLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = SessionStartLimitWire::deserialize(deserializer)?;
        Ok(SessionStartLimit {
            total: w.total,
            remaining: w.remaining,
            reset_after: Duration::from_millis(w.reset_after),
            max_concurrency: w.max_concurrency,
        })
    }
}

/// The identify budget guard: at most `max_identifies` identifies for one shard within `per`.
///
/// A healthy shard identifies once and then resumes; a shard that identifies over and over is
/// caught in a storm (a restart loop, a bad token, a session that never becomes resumable)
/// that would otherwise burn the daily budget of 1000 and get the token reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentifyBudget {
    /// Identifies allowed for one shard within `per`. Default 10.
    pub max_identifies: u32,
    /// The sliding window. Default 10 minutes.
    pub per: Duration,
}

impl Default for IdentifyBudget {
    fn default() -> Self {
        IdentifyBudget {
            max_identifies: 10,
            per: Duration::from_secs(600),
        }
    }
}

/// Settings of an [`IdentifyQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentifyQueueConfig {
    /// Concurrency buckets (from `session_start_limit.max_concurrency`). Default 1.
    pub max_concurrency: u32,
    /// Spacing of identifies in one bucket. Default 5 s (Discord's); shorten it in tests.
    pub bucket_window: Duration,
    /// The per-shard budget guard; `None` disables it. Default 10 identifies in 10 minutes.
    pub budget: Option<IdentifyBudget>,
    /// The length of a session-start period, used to schedule the next reset after one
    /// passes (Discord's is a day). Default 24 h.
    pub start_limit_period: Duration,
}

impl Default for IdentifyQueueConfig {
    fn default() -> Self {
        IdentifyQueueConfig {
            max_concurrency: 1,
            bucket_window: Duration::from_secs(5),
            budget: Some(IdentifyBudget::default()),
            start_limit_period: Duration::from_secs(24 * 3600),
        }
    }
}

/// Names one identify request until it is granted or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A granted identify: the shard may send IDENTIFY now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The ticket [`IdentifyQueue::request`] returned.
    pub ticket: Ticket,
    /// The shard it was for.
    pub shard_id: u32,
}

/// Why an identify request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifyError {
    /// The shard identified `identifies` times within `within`: an identify storm. The shard
    /// must stop (and be looked at) instead of spending more of the daily budget.
    #[error(
        "identify budget exceeded: shard {shard_id} identified {identifies} times within {within:?}"
    )]
    BudgetExceeded {
        /// The shard.
        shard_id: u32,
        /// Identifies granted within the window.
        identifies: u32,
        /// The guard's window.
        within: Duration,
        /// When the oldest of them leaves the window.
        retry_at: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ticket: Ticket,
    shard_id: u32,
}

#[derive(Debug, Clone, Copy)]
struct StartLimit {
    total: u32,
    remaining: u32,
    reset_at: Instant,
}

/// Pacing of identifies for every shard of one bot token. Pure and deterministic: no clock,
/// no I/O; `now` is passed in.
///
/// Rules, all documented by Discord:
/// - bucket `shard_id % max_concurrency`; one identify per bucket per `bucket_window`;
///   requests are granted first come, first served, a request in a free bucket does not wait
///   for one in a busy bucket;
/// - `session_start_limit` honoured: when `remaining` is 0, requests **wait** until the reset
///   (they are not refused: waiting heals by itself, identifying would get the token reset);
///   [`poll_timeout`](Self::poll_timeout) then points at the reset;
/// - the budget guard refuses a request for a shard that already identified
///   `max_identifies` times within `per`, with [`IdentifyError::BudgetExceeded`].
#[derive(Debug, Clone)]
pub struct IdentifyQueue {
    cfg: IdentifyQueueConfig,
    epoch: Instant,
    next_ticket: u64,
    waiting: VecDeque<Pending>,
    bucket_free_at: Vec<Instant>,
    limit: Option<StartLimit>,
    history: HashMap<u32, VecDeque<Instant>>,
    granted: u64,
}

impl IdentifyQueue {
    /// An empty queue. `now` is the caller's clock at construction; every bucket is free.
    pub fn new(cfg: IdentifyQueueConfig, now: Instant) -> Self {
        let buckets = cfg.max_concurrency.max(1) as usize;
        IdentifyQueue {
            cfg,
            epoch: now,
            next_ticket: 1,
            waiting: VecDeque::new(),
            bucket_free_at: vec![now; buckets],
            limit: None,
            history: HashMap::new(),
            granted: 0,
        }
    }

    /// Applies a `session_start_limit` fresh from `GET /gateway/bot`: its `max_concurrency`
    /// replaces the configured one, and `remaining` / `reset_after` start counting from `now`.
    pub fn set_session_start_limit(&mut self, limit: SessionStartLimit, now: Instant) {
        let buckets = limit.max_concurrency.max(1) as usize;
        if buckets != self.bucket_free_at.len() {
            // Keys change meaning: be conservative, every new bucket waits for the latest.
            let latest = self.bucket_free_at.iter().copied().max().unwrap_or(now);
            self.bucket_free_at = vec![latest; buckets];
        }
        self.cfg.max_concurrency = limit.max_concurrency.max(1);
        self.limit = Some(StartLimit {
            total: limit.total,
            remaining: limit.remaining,
            reset_at: now + limit.reset_after,
        });
    }

    /// The bucket of a shard: `shard_id % max_concurrency`.
    pub fn bucket_of(&self, shard_id: u32) -> u32 {
        shard_id % self.cfg.max_concurrency.max(1)
    }

    /// Asks to identify `shard_id`. Asking again while a request of the same shard waits
    /// returns the same ticket. Refused by the budget guard with
    /// [`IdentifyError::BudgetExceeded`].
    pub fn request(&mut self, shard_id: u32, now: Instant) -> Result<Ticket, IdentifyError> {
        if let Some(p) = self.waiting.iter().find(|p| p.shard_id == shard_id) {
            return Ok(p.ticket);
        }
        if let Some(budget) = self.cfg.budget {
            let h = self.history.entry(shard_id).or_default();
            while h
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= budget.per)
            {
                h.pop_front();
            }
            let identifies = u32::try_from(h.len()).unwrap_or(u32::MAX);
            if identifies >= budget.max_identifies {
                let retry_at = h.front().map_or(now, |&t| t + budget.per);
                tracing::warn!(
                    shard = shard_id,
                    identifies,
                    within_s = budget.per.as_secs(),
                    "identify budget exceeded"
                );
                return Err(IdentifyError::BudgetExceeded {
                    shard_id,
                    identifies,
                    within: budget.per,
                    retry_at,
                });
            }
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.waiting.push_back(Pending { ticket, shard_id });
        Ok(ticket)
    }

    /// Withdraws a waiting request (the shard stopped). Returns whether it was waiting.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|p| p.ticket != ticket);
        before != self.waiting.len()
    }

    /// The next request that may identify now, if any. Call until `None` after every
    /// `request` and at every [`poll_timeout`](Self::poll_timeout).
    pub fn poll_ready(&mut self, now: Instant) -> Option<Grant> {
        self.refresh_limit(now);
        if self.limit.is_some_and(|l| l.remaining == 0) {
            return None;
        }
        let idx = self
            .waiting
            .iter()
            .position(|p| self.bucket_free_at[self.bucket_index(p.shard_id)] <= now)?;
        let p = self.waiting.remove(idx)?;
        let b = self.bucket_index(p.shard_id);
        self.bucket_free_at[b] = now + self.cfg.bucket_window;
        if let Some(l) = self.limit.as_mut() {
            l.remaining -= 1;
        }
        if self.cfg.budget.is_some() {
            self.history.entry(p.shard_id).or_default().push_back(now);
        }
        self.granted += 1;
        tracing::debug!(shard = p.shard_id, bucket = b, "identify granted");
        Some(Grant {
            ticket: p.ticket,
            shard_id: p.shard_id,
        })
    }

    /// When [`poll_ready`](Self::poll_ready) may next grant something, if anything waits.
    /// An instant in the past means "now".
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        if let Some(l) = self.limit
            && l.remaining == 0
        {
            return Some(l.reset_at);
        }
        self.waiting
            .iter()
            .map(|p| self.bucket_free_at[self.bucket_index(p.shard_id)])
            .min()
            .map(|t| t.max(self.epoch))
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Identifies granted since construction.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Session starts left in the current period, if a `session_start_limit` was applied.
    pub fn remaining(&self) -> Option<u32> {
        self.limit.map(|l| l.remaining)
    }

    fn bucket_index(&self, shard_id: u32) -> usize {
        (shard_id % self.bucket_free_at.len().max(1) as u32) as usize
    }

    fn refresh_limit(&mut self, now: Instant) {
        let period = self.cfg.start_limit_period.max(Duration::from_millis(1));
        if let Some(l) = self.limit.as_mut()
            && now >= l.reset_at
        {
            l.remaining = l.total;
            // Next reset: the first period boundary after now.
            let behind = now.saturating_duration_since(l.reset_at);
            let periods = behind.as_nanos() / period.as_nanos() + 1;
            let step = period.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX));
            l.reset_at += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(5);

    fn drain(q: &mut IdentifyQueue, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| q.poll_ready(now))
            .map(|g| g.shard_id)
            .collect()
    }

    /// Runs the queue in virtual time until nothing waits; returns (time offset, shard) grants.
    fn run(q: &mut IdentifyQueue, t0: Instant) -> Vec<(Duration, u32)> {
        let mut out = Vec::new();
        let mut now = t0;
        for _ in 0..1000 {
            for s in drain(q, now) {
                out.push((now - t0, s));
            }
            match q.poll_timeout() {
                Some(at) => now = at.max(now),
                None => return out,
            }
        }
        panic!("queue did not drain");
    }

    #[test]
    fn one_bucket_spaces_identifies_by_the_window() {
        let t0 = Instant::now();
        let mut q = IdentifyQueue::new(IdentifyQueueConfig::default(), t0);
        for s in 0..3 {
            q.request(s, t0).unwrap();
        }
        let grants = run(&mut q, t0);
        assert_eq!(grants, vec![(Duration::ZERO, 0), (W, 1), (W * 2, 2)]);
    }

    #[test]
    fn buckets_by_shard_modulo_max_concurrency_in_order() {
        // Discord's example: 32 shards, max_concurrency 16 -> 0..15 together, then 16..31.
        let t0 = Instant::now();
        let cfg = IdentifyQueueConfig {
            max_concurrency: 16,
            ..IdentifyQueueConfig::default()
        };
        let mut q = IdentifyQueue::new(cfg, t0);
        for s in 0..32 {
            q.request(s, t0).unwrap();
        }
        let grants = run(&mut q, t0);
        let first: Vec<u32> = grants
            .iter()
            .filter(|g| g.0.is_zero())
            .map(|g| g.1)
            .collect();
        let second: Vec<u32> = grants.iter().filter(|g| g.0 == W).map(|g| g.1).collect();
        assert_eq!(first, (0..16).collect::<Vec<_>>());
        assert_eq!(second, (16..32).collect::<Vec<_>>());
        assert_eq!(q.bucket_of(17), 1);
    }

    #[test]
    fn a_free_bucket_does_not_wait_for_a_busy_one() {
        let t0 = Instant::now();
        let cfg = IdentifyQueueConfig {
            max_concurrency: 2,
            ..IdentifyQueueConfig::default()
        };
        let mut q = IdentifyQueue::new(cfg, t0);
        q.request(0, t0).unwrap();
        assert_eq!(drain(&mut q, t0), vec![0]);
        q.request(2, t0).unwrap(); // bucket 0, busy until t0 + 5 s
        q.request(1, t0).unwrap(); // bucket 1, free
        assert_eq!(drain(&mut q, t0), vec![1]);
        assert_eq!(q.poll_timeout(), Some(t0 + W));
        assert_eq!(
            drain(&mut q, t0 + W - Duration::from_millis(1)),
            Vec::<u32>::new()
        );
        assert_eq!(drain(&mut q, t0 + W), vec![2]);
    }

    #[test]
    fn configurable_window_for_tests() {
        let t0 = Instant::now();
        let cfg = IdentifyQueueConfig {
            bucket_window: Duration::from_millis(10),
            ..IdentifyQueueConfig::default()
        };
        let mut q = IdentifyQueue::new(cfg, t0);
        q.request(0, t0).unwrap();
        q.request(1, t0).unwrap();
        let grants = run(&mut q, t0);
        assert_eq!(
            grants,
            vec![(Duration::ZERO, 0), (Duration::from_millis(10), 1)]
        );
    }

    #[test]
    fn same_shard_twice_gets_the_same_ticket_and_cancel_withdraws() {
        let t0 = Instant::now();
        let mut q = IdentifyQueue::new(IdentifyQueueConfig::default(), t0);
        q.request(9, t0).unwrap();
        drain(&mut q, t0);
        let a = q.request(3, t0).unwrap();
        assert_eq!(q.request(3, t0).unwrap(), a);
        assert_eq!(q.waiting(), 1);
        assert!(q.cancel(a));
        assert!(!q.cancel(a));
        assert_eq!(q.poll_timeout(), None);
        assert_eq!(drain(&mut q, t0 + W), Vec::<u32>::new());
    }

    #[test]
    fn session_start_limit_zero_waits_for_the_reset() {
        let t0 = Instant::now();
        let mut q = IdentifyQueue::new(IdentifyQueueConfig::default(), t0);
        q.set_session_start_limit(
            SessionStartLimit {
                total: 1000,
                remaining: 1,
                reset_after: Duration::from_secs(3600),
                max_concurrency: 1,
            },
            t0,
        );
        q.request(0, t0).unwrap();
        assert_eq!(drain(&mut q, t0), vec![0]);
        assert_eq!(q.remaining(), Some(0));
        q.request(1, t0 + W).unwrap();
        assert_eq!(q.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
        assert_eq!(
            drain(&mut q, t0 + Duration::from_secs(3599)),
            Vec::<u32>::new()
        );
        assert_eq!(drain(&mut q, t0 + Duration::from_secs(3600)), vec![1]);
        assert_eq!(q.remaining(), Some(999));
    }

    #[test]
    fn session_start_limit_sets_concurrency() {
        let t0 = Instant::now();
        let mut q = IdentifyQueue::new(IdentifyQueueConfig::default(), t0);
        q.set_session_start_limit(
            SessionStartLimit {
                total: 1000,
                remaining: 500,
                reset_after: Duration::from_secs(60),
                max_concurrency: 4,
            },
            t0,
        );
        for s in 0..8 {
            q.request(s, t0).unwrap();
        }
        assert_eq!(drain(&mut q, t0), vec![0, 1, 2, 3]);
        assert_eq!(drain(&mut q, t0 + W), vec![4, 5, 6, 7]);
        assert_eq!(q.remaining(), Some(492));
    }

    #[test]
    fn budget_guard_stops_an_identify_storm() {
        let t0 = Instant::now();
        let cfg = IdentifyQueueConfig {
            budget: Some(IdentifyBudget {
                max_identifies: 3,
                per: Duration::from_secs(60),
            }),
            ..IdentifyQueueConfig::default()
        };
        let mut q = IdentifyQueue::new(cfg, t0);
        let mut now = t0;
        for _ in 0..3 {
            q.request(7, now).unwrap();
            assert_eq!(drain(&mut q, now), vec![7]);
            now += W;
        }
        let err = q.request(7, now).unwrap_err();
        assert_eq!(
            err,
            IdentifyError::BudgetExceeded {
                shard_id: 7,
                identifies: 3,
                within: Duration::from_secs(60),
                retry_at: t0 + Duration::from_secs(60),
            }
        );
        assert!(err.to_string().starts_with("identify budget exceeded"));
        // Other shards are unaffected.
        q.request(8, now).unwrap();
        // Once the first identify leaves the window, the shard may identify again.
        q.request(7, t0 + Duration::from_secs(60)).unwrap();
    }
}
