//! Timers and policies, all with documented defaults.

use std::time::Duration;

use crate::types::CloseRules;

/// Configuration of a [`Connection`](crate::Connection): every timer and policy, each with a
/// documented default.
///
/// The heartbeat interval is not configured here: the peer announces it
/// ([`Signal::Hello`](crate::Signal::Hello)). The first beat is sent after a random fraction of
/// one interval (drawn from the connection's seed) so that many connections opened together do
/// not beat in step; later beats follow every interval. A heartbeat that gets no ACK within one
/// interval (while reading was never paused, see
/// [`Input::Backpressure`](crate::Input::Backpressure)) judges the connection dead: it is
/// aborted and resumed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    /// How long the driver may take to open a transport before it is aborted. Default 10 s.
    pub open_timeout: Duration,
    /// How long to wait for the peer's hello after the transport opened. Default 10 s.
    pub hello_timeout: Duration,
    /// How long the handshake (identify / resume) may take to be accepted. Default 30 s.
    pub handshake_timeout: Duration,
    /// How long an identified connection's heartbeat may wait for its ACK before the machine
    /// shows the connection [`Stale`](crate::State::Stale) and sends one probe heartbeat.
    /// Clamped to half the heartbeat interval, so the probe always goes out before the
    /// connection is judged dead (one interval after the unacknowledged heartbeat). Default
    /// 5 s.
    pub probe_grace: Duration,
    /// How long a close handshake with a live peer may take before the transport is aborted.
    /// A connection judged dead is never waited for: it is aborted at once. Default 1 s.
    pub drain_deadline: Duration,
    /// Reconnect spacing from the second consecutive failed connection on.
    pub backoff: Backoff,
    /// The first reconnect after a successful session (one whose handshake was accepted and
    /// that lasted [`stable_after`](Self::stable_after)) goes out after a delay drawn uniformly
    /// in `[0, reconnect_spread]`, so a fleet whose shards lose their sockets together does not
    /// reconnect in one instant. Default 25 ms.
    pub reconnect_spread: Duration,
    /// How long a connection must have been identified (handshake accepted) when it ends for
    /// it to end the failure streak. Default zero: the accepted handshake itself (READY or
    /// RESUMED) ends it. A larger value treats sessions that keep dying young as failures, so
    /// their reconnects back off.
    pub stable_after: Duration,
    /// After the peer invalidates the session (not resumable), the new session's transport is
    /// opened no sooner than a delay drawn uniformly in
    /// `[invalid_session_wait_min, invalid_session_wait_max]` after the invalidation was heard
    /// (Discord: "wait a random amount of time, between 1 and 5 seconds, then send a fresh
    /// IDENTIFY"). Default 1 s.
    pub invalid_session_wait_min: Duration,
    /// Upper bound of the wait after a non-resumable invalidation. Default 5 s.
    pub invalid_session_wait_max: Duration,
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
            drain_deadline: Duration::from_secs(1),
            backoff: Backoff::default(),
            reconnect_spread: Duration::from_millis(25),
            stable_after: Duration::ZERO,
            invalid_session_wait_min: Duration::from_secs(1),
            invalid_session_wait_max: Duration::from_secs(5),
            max_attempts: None,
            close_rules: CloseRules::default(),
            gate_new_sessions: false,
        }
    }
}

/// Exponential backoff with full jitter above a floor, for connections that keep failing.
///
/// After `n` consecutive failed connections (counting from 1; a connection fails when it ends
/// without having ended the streak, see [`Config::stable_after`]), the delay before the next
/// one is uniform in `[min(floor, c), c]` where `c = min(cap, base * 2^(n-1))`. The first
/// reconnect after a successful session is not backed off (see
/// [`Config::reconnect_spread`]).
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
    /// Upper bound of the delay after `n` consecutive failed connections (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }
}
