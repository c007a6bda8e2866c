//! The per-connection send rate limit, with slots kept for heartbeats.
//!
//! Source: <https://discord.com/developers/docs/events/gateway#rate-limiting> (120 events per
//! connection every 60 seconds; over it the gateway disconnects with 4008).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ProtocolError;

/// Send limit settings. The defaults are Discord's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitConfig {
    /// Sends allowed per window, all payloads counted. Default 120.
    pub limit: u32,
    /// The window. Default 60 s.
    pub window: Duration,
    /// Slots of each window that application commands may not use, so heartbeats (and the
    /// handshake) always fit. `None` (the default) derives it from the heartbeat interval once
    /// HELLO is known: the beats that fit in one window, plus two (a beat the server asks for,
    /// and the handshake), never more than half the limit. Before HELLO it assumes 4.
    pub heartbeat_reserve: Option<u32>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            limit: 120,
            window: Duration::from_secs(60),
            heartbeat_reserve: None,
        }
    }
}

/// A sliding-window send counter for one connection.
///
/// Every payload sent is recorded. Heartbeats and handshakes are never refused (refusing them
/// would kill the connection); application commands are refused once they would eat into the
/// reserve, with the exact time at which a slot frees up.
#[derive(Debug, Clone)]
pub struct SendLimiter {
    cfg: RateLimitConfig,
    sent: VecDeque<Instant>,
    heartbeat_interval: Option<Duration>,
}

impl SendLimiter {
    /// A limiter with an empty window.
    pub fn new(cfg: RateLimitConfig) -> Self {
        SendLimiter {
            cfg,
            // Grown as sends happen: an idle connection sends a heartbeat or two per window,
            // and a full window reserved up front cost every shard 16 bytes per allowed send.
            sent: VecDeque::new(),
            heartbeat_interval: None,
        }
    }

    /// Forgets every send: a new connection starts a new window.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.heartbeat_interval = None;
    }

    /// Tells the limiter the heartbeat interval of this connection (from HELLO).
    pub fn set_heartbeat_interval(&mut self, interval: Duration) {
        self.heartbeat_interval = Some(interval);
    }

    /// Slots of the window kept for heartbeats and the handshake.
    pub fn reserved(&self) -> u32 {
        if let Some(n) = self.cfg.heartbeat_reserve {
            return n.min(self.cfg.limit);
        }
        let beats = match self.heartbeat_interval {
            Some(iv) if !iv.is_zero() => {
                let w = self.cfg.window.as_nanos();
                let i = iv.as_nanos();
                u32::try_from(w.div_ceil(i)).unwrap_or(u32::MAX)
            }
            Some(_) => u32::MAX,
            None => 2,
        };
        beats.saturating_add(2).min(self.cfg.limit / 2)
    }

    /// Sends recorded within the window ending at `now`.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.expire(now);
        u32::try_from(self.sent.len()).unwrap_or(u32::MAX)
    }

    /// Records a heartbeat or handshake: always allowed, always counted.
    pub fn record_priority(&mut self, now: Instant) {
        self.expire(now);
        self.push(now);
    }

    /// Takes a slot for an application command, or says how long to wait. Nothing is recorded
    /// when refused.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), ProtocolError> {
        self.expire(now);
        let allowed = self.cfg.limit.saturating_sub(self.reserved()) as usize;
        let used = self.sent.len();
        if used < allowed {
            self.push(now);
            return Ok(());
        }
        // The slot frees when enough of the oldest sends leave the window that `used` drops
        // below `allowed`: the (used - allowed)-th oldest send, counting from zero.
        let retry_after = self
            .sent
            .get(used - allowed)
            .map(|&t| (t + self.cfg.window).saturating_duration_since(now))
            .unwrap_or(self.cfg.window);
        Err(ProtocolError::RateLimited { retry_after })
    }

    fn push(&mut self, now: Instant) {
        self.sent.push_back(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.sent.front() {
            if now.saturating_duration_since(t) >= self.cfg.window {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discord() -> SendLimiter {
        let mut l = SendLimiter::new(RateLimitConfig::default());
        l.set_heartbeat_interval(Duration::from_millis(41_250));
        l
    }

    #[test]
    fn reserve_follows_the_heartbeat_interval() {
        let mut l = discord();
        // ceil(60 / 41.25) = 2 beats, plus 2.
        assert_eq!(l.reserved(), 4);
        l.set_heartbeat_interval(Duration::from_secs(10));
        assert_eq!(l.reserved(), 8);
        l.set_heartbeat_interval(Duration::from_millis(1));
        assert_eq!(l.reserved(), 60, "capped at half the limit");
        let fixed = SendLimiter::new(RateLimitConfig {
            heartbeat_reserve: Some(7),
            ..RateLimitConfig::default()
        });
        assert_eq!(fixed.reserved(), 7);
    }

    #[test]
    fn commands_stop_at_limit_minus_reserve_in_virtual_time() {
        let t0 = Instant::now();
        let mut l = discord();
        // 116 commands, one every 100 ms, all fit.
        for i in 0..116u64 {
            l.try_acquire(t0 + Duration::from_millis(100 * i)).unwrap();
        }
        let now = t0 + Duration::from_millis(11_600);
        let Err(ProtocolError::RateLimited { retry_after }) = l.try_acquire(now) else {
            panic!("117th command in the window was accepted");
        };
        // The first send (t0) leaves the window at t0 + 60 s.
        assert_eq!(retry_after, Duration::from_millis(60_000 - 11_600));
        // Heartbeats still go through, up to and past the reserve.
        for _ in 0..4 {
            l.record_priority(now);
        }
        assert_eq!(l.used(now), 120);
        // At the advertised time the first command leaves the window: 119 sends remain (115
        // commands, 4 beats), still over the 116 allowed to commands.
        let later = now + retry_after;
        assert_eq!(later, t0 + Duration::from_secs(60));
        assert_eq!(l.used(later), 119);
        let Err(ProtocolError::RateLimited { retry_after }) = l.try_acquire(later) else {
            panic!("beats must count against commands too");
        };
        // Three more sends must leave: the one at 0.4 s is the last of them.
        assert_eq!(retry_after, Duration::from_millis(400));
        assert!(
            l.try_acquire(later + retry_after - Duration::from_millis(1))
                .is_err()
        );
        l.try_acquire(later + retry_after).unwrap();
        assert_eq!(l.used(later + retry_after), 116);
    }

    #[test]
    fn window_slides_and_reset_clears() {
        let t0 = Instant::now();
        let mut l = discord();
        for _ in 0..116 {
            l.try_acquire(t0).unwrap();
        }
        assert!(l.try_acquire(t0 + Duration::from_millis(59_999)).is_err());
        l.try_acquire(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(l.used(t0 + Duration::from_secs(60)), 1);
        for _ in 0..50 {
            l.record_priority(t0 + Duration::from_secs(61));
        }
        l.reset();
        assert_eq!(l.used(t0 + Duration::from_secs(61)), 0);
        l.try_acquire(t0 + Duration::from_secs(61)).unwrap();
    }
}
