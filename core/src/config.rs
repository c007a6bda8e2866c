//! Timers and policies, all with documented defaults.

use std::time::Duration;

use crate::types::CloseRules;

/// Configuration of a [`Connection`](crate::Connection): every timer and policy, each with a
/// documented default.
///
/// The heartbeat interval is not configured here: the peer announces it
/// ([`Signal::Hello`](crate::Signal::Hello)). The first beat is sent after a random fraction of
/// one interval (drawn from the connection's seed) so that many connections opened together do
/// not beat in step; later beats follow every interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    /// How long the driver may take to open a transport before it is aborted. Default 10 s.
    pub open_timeout: Duration,
    /// How long to wait for the peer's hello after the transport opened. Default 10 s.
    pub hello_timeout: Duration,
    /// How long the handshake (identify / resume) may take to be accepted. Default 30 s.
    pub handshake_timeout: Duration,
    /// After a heartbeat goes unacknowledged, the machine sends one probe heartbeat and waits
    /// this long for any ACK before judging the connection a zombie. Default 5 s.
    pub probe_grace: Duration,
    /// How long a close handshake may take before the transport is aborted. Default 5 s.
    pub drain_deadline: Duration,
    /// Reconnect spacing.
    pub backoff: Backoff,
    /// A session identified this long resets the attempt count. Default 60 s.
    pub stable_after: Duration,
    /// Give up after this many consecutive failed attempts. Default `None` (never).
    pub max_attempts: Option<u32>,
    /// Close-code rules from the protocol layer.
    pub close_rules: CloseRules,
    /// When `true`, a handshake that starts a new session first asks the driver for a permit
    /// ([`Output::AcquirePermit`](crate::Output::AcquirePermit)). Default `false`.
    pub gate_new_sessions: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            open_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            probe_grace: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(5),
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(60),
            max_attempts: None,
            close_rules: CloseRules::default(),
            gate_new_sessions: false,
        }
    }
}

/// Exponential backoff with full jitter above a floor.
///
/// The delay before reconnect attempt `n` (counting from 1 since the last stable session) is
/// uniform in `[min(floor, c), c]` where `c = min(cap, base * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// Lower bound of every delay, so reconnects are always spaced. Default 250 ms.
    pub floor: Duration,
    /// Ceiling of the first delay; doubles per failed attempt. Default 1 s.
    pub base: Duration,
    /// Largest ceiling. Default 60 s.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            floor: Duration::from_millis(250),
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Upper bound of the delay before attempt `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }
}
