//! What the mock counts: a plain snapshot, readable at any time.

use std::collections::BTreeMap;

use crate::ShardKey;

/// Everything the mock counted so far. A snapshot: later activity does not change it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// WebSocket connections accepted since start.
    pub connections_accepted: u64,
    /// Open sockets now, identified or not (until the transport is gone).
    pub live_sockets: usize,
    /// The most sockets ever open at once.
    pub max_live_sockets: usize,
    /// Close frames received from clients on any socket, codes in arrival order (1005 when the
    /// frame carried no code).
    pub close_frames: Vec<u16>,
    /// Sessions that expired: disconnected longer than the resume window.
    pub sessions_expired: u64,
    /// RESUMEs naming a session id the mock never issued.
    pub resumes_unknown_session: u64,
    /// HTTP requests answered.
    pub http_requests: u64,
    /// Per (token, shard).
    pub shards: BTreeMap<ShardKey, ShardCounters>,
}

impl Counters {
    /// The counters of one shard (all zero if it was never seen).
    pub fn shard(&self, key: impl Into<ShardKey>) -> ShardCounters {
        self.shards.get(&key.into()).cloned().unwrap_or_default()
    }
}

/// Counters of one (token, shard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardCounters {
    /// Sockets counted for this shard now: from an accepted IDENTIFY or RESUME until the socket
    /// is gone. Two means two connections are alive for one shard.
    pub live_sockets: usize,
    /// The most sockets ever counted for this shard at once.
    pub max_live_sockets: usize,
    /// IDENTIFY payloads received for this shard with a valid token (accepted or not).
    pub identifies: u64,
    /// Sessions started (READY sent); each one spent from the session-start budget.
    pub sessions_started: u64,
    /// RESUMEs accepted (RESUMED sent).
    pub resumes_ok: u64,
    /// RESUMEs refused (op 9 or close 4007) for a session of this shard.
    pub resumes_failed: u64,
    /// Op 9 INVALID_SESSION frames sent.
    pub invalid_sessions_sent: u64,
    /// Op 7 RECONNECT frames sent.
    pub reconnects_sent: u64,
    /// Heartbeats received on this shard's sockets (ACKed or not).
    pub heartbeats_received: u64,
    /// Heartbeat ACKs sent.
    pub acks_sent: u64,
    /// Close frames received from clients on this shard's sockets, codes in arrival order.
    pub close_frames: Vec<u16>,
    /// Close codes the mock sent on this shard's sockets, in order.
    pub server_closes: Vec<u16>,
    /// Per session id: the dispatches written for it.
    pub sessions: BTreeMap<String, SessionCounters>,
}

/// The dispatches written to sockets for one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Dispatch frames written (READY, events, replays, RESUMED).
    pub sent: u64,
    /// Of those, frames written again by a RESUME replay.
    pub replayed: u64,
    /// Seqs written, in write order, as runs of consecutive numbers (`(first, last)`).
    runs: Vec<(u64, u64)>,
}

impl SessionCounters {
    /// Every seq written, in write order (a replayed seq appears again).
    pub fn seqs(&self) -> Vec<u64> {
        self.runs.iter().flat_map(|&(a, b)| a..=b).collect()
    }

    /// The seqs written as runs of consecutive numbers, `(first, last)` inclusive.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    pub(crate) fn record(&mut self, seq: u64, replay: bool) {
        self.sent += 1;
        if replay {
            self.replayed += 1;
        }
        match self.runs.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => self.runs.push((seq, seq)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_kept_as_runs_in_write_order() {
        let mut s = SessionCounters::default();
        for seq in [1, 2, 3, 2, 3, 4, 7] {
            s.record(seq, false);
        }
        assert_eq!(s.seqs(), vec![1, 2, 3, 2, 3, 4, 7]);
        assert_eq!(s.runs(), &[(1, 3), (2, 4), (7, 7)]);
        assert_eq!(s.sent, 7);
    }
}
