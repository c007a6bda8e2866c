//! The session a connection resumes, and exactly-once, in-order delivery of dispatches.
//!
//! Sources: <https://discord.com/developers/docs/events/gateway#ready-event>,
//! <https://discord.com/developers/docs/events/gateway#resuming> and the `s` field in
//! <https://discord.com/developers/docs/events/gateway-events#payload-structure>.

use serde::{Deserialize, Serialize};

/// What a resume needs: the session id and resume URL from READY, and the last sequence
/// number received. Serializable so a process restart can resume from a session file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// `session_id` from READY.
    pub session_id: String,
    /// `resume_gateway_url` from READY.
    pub resume_gateway_url: String,
    /// The last sequence number received in this session.
    pub seq: u64,
}

/// A session that was lost after it had delivered events: the events between its last
/// sequence number and the new session's READY were never delivered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gap {
    /// The lost session.
    pub session_id: String,
    /// Its last sequence number delivered.
    pub last_seq: u64,
    /// Dispatches it delivered in this process (0 for a session restored from an earlier
    /// process that was lost before it resumed).
    pub delivered: u64,
}

/// Delivery counters of a codec, across sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeliveryStats {
    /// Dispatches delivered (READY and RESUMED included).
    pub delivered: u64,
    /// Dispatches dropped because their sequence number was already delivered in the session
    /// (replays).
    pub duplicates: u64,
    /// Times a sequence number skipped ahead within a session (the events in between were
    /// never received; the later one is still delivered).
    pub seq_jumps: u64,
    /// Sessions lost after delivering events, each reported once as a [`Gap`].
    pub sessions_lost: u64,
}

/// What to do with a dispatch, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Deliver,
    Duplicate,
    /// Deliver; `expected` was the next number due.
    DeliverAfterJump {
        expected: u64,
    },
}

/// The session and sequence bookkeeping of one shard, across its connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// id and resume URL, once READY arrived.
    ids: Option<(String, String)>,
    /// Last sequence number of the current session (also before READY, for heartbeats).
    last_seq: Option<u64>,
    /// Dispatches delivered in the current session.
    delivered_in_session: u64,
    pending_gap: Option<Gap>,
    /// The session came from an earlier process, where it had delivered events.
    restored_with_events: bool,
    pub(crate) stats: DeliveryStats,
}

impl Tracker {
    pub(crate) fn session(&self) -> Option<Session> {
        let (id, url) = self.ids.as_ref()?;
        Some(Session {
            session_id: id.clone(),
            resume_gateway_url: url.clone(),
            seq: self.last_seq.unwrap_or(0),
        })
    }

    pub(crate) fn session_ids(&self) -> Option<(&str, &str)> {
        self.ids.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// A session saved by an earlier process. If it had delivered anything there (`seq > 0`)
    /// and is lost before it resumes, the loss is reported as a gap like any other.
    pub(crate) fn restore(&mut self, s: Session) {
        self.ids = Some((s.session_id, s.resume_gateway_url));
        self.last_seq = Some(s.seq);
        self.delivered_in_session = 0;
        self.restored_with_events = s.seq > 0;
    }

    /// A new session is about to start (identify): the held one, if it delivered anything, is
    /// lost and will be reported once.
    pub(crate) fn forget_session(&mut self) {
        let ids = self.ids.take();
        let last = self.last_seq.take();
        let delivered = std::mem::take(&mut self.delivered_in_session);
        let restored = std::mem::take(&mut self.restored_with_events);
        if self.pending_gap.is_none()
            && (delivered > 0 || restored)
            && let Some((session_id, _)) = ids
        {
            self.stats.sessions_lost += 1;
            self.pending_gap = Some(Gap {
                session_id,
                last_seq: last.unwrap_or(0),
                delivered,
            });
        }
    }

    pub(crate) fn take_gap(&mut self) -> Option<Gap> {
        self.pending_gap.take()
    }

    /// READY: a new session with its first sequence number.
    pub(crate) fn ready(&mut self, session_id: String, resume_url: String, seq: Option<u64>) {
        if self.ids.is_some() {
            // READY without our identify having forgotten the old session (for example a
            // server answering a resume with READY): the old one is lost all the same.
            self.forget_session();
        }
        self.ids = Some((session_id, resume_url));
        self.last_seq = seq;
        self.delivered_in_session = 1;
        self.stats.delivered += 1;
    }

    /// RESUMED (a handshake marker, never dropped as a duplicate).
    pub(crate) fn resumed(&mut self, seq: Option<u64>) {
        if let Some(s) = seq {
            self.last_seq = Some(self.last_seq.map_or(s, |l| l.max(s)));
        }
        self.delivered_in_session += 1;
        self.stats.delivered += 1;
    }

    /// Any other dispatch.
    pub(crate) fn dispatch(&mut self, seq: u64) -> Verdict {
        let verdict = match self.last_seq {
            Some(last) if seq <= last => Verdict::Duplicate,
            Some(last) if seq > last.saturating_add(1) => {
                Verdict::DeliverAfterJump { expected: last + 1 }
            }
            _ => Verdict::Deliver,
        };
        match verdict {
            Verdict::Duplicate => self.stats.duplicates += 1,
            Verdict::DeliverAfterJump { .. } => self.stats.seq_jumps += 1,
            Verdict::Deliver => {}
        }
        if verdict != Verdict::Duplicate {
            self.last_seq = Some(seq);
            self.delivered_in_session += 1;
            self.stats.delivered += 1;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut t = Tracker::default();
        t.ready("a".into(), "wss://r".into(), Some(1));
        assert_eq!(t.dispatch(2), Verdict::Deliver);
        assert_eq!(t.dispatch(3), Verdict::Deliver);
        assert_eq!(t.dispatch(2), Verdict::Duplicate);
        assert_eq!(t.dispatch(3), Verdict::Duplicate);
        assert_eq!(t.dispatch(1), Verdict::Duplicate);
        assert_eq!(t.dispatch(4), Verdict::Deliver);
        assert_eq!(t.stats.duplicates, 3);
        assert_eq!(t.stats.delivered, 4);
        assert_eq!(t.last_seq(), Some(4));
    }

    #[test]
    fn jumps_are_counted_and_delivered() {
        let mut t = Tracker::default();
        t.ready("a".into(), "wss://r".into(), Some(1));
        assert_eq!(t.dispatch(5), Verdict::DeliverAfterJump { expected: 2 });
        assert_eq!(
            t.dispatch(4),
            Verdict::Duplicate,
            "late arrivals are not reordered"
        );
        assert_eq!(t.stats.seq_jumps, 1);
        assert_eq!(t.last_seq(), Some(5));
    }

    #[test]
    fn lost_session_is_reported_once() {
        let mut t = Tracker::default();
        t.ready("a".into(), "wss://r".into(), Some(1));
        t.dispatch(2);
        t.forget_session();
        assert_eq!(t.session(), None);
        assert_eq!(t.last_seq(), None);
        // A second identify before the gap was reported keeps the first report.
        t.forget_session();
        assert_eq!(
            t.take_gap(),
            Some(Gap {
                session_id: "a".into(),
                last_seq: 2,
                delivered: 2
            })
        );
        assert_eq!(t.take_gap(), None);
        assert_eq!(t.stats.sessions_lost, 1);
    }

    #[test]
    fn a_restored_session_is_a_gap_only_if_it_had_delivered_events() {
        let mut t = Tracker::default();
        t.restore(Session {
            session_id: "a".into(),
            resume_gateway_url: "wss://r".into(),
            seq: 0,
        });
        t.forget_session();
        assert_eq!(t.take_gap(), None);
        // Delivered up to seq 9 by an earlier process, then lost before it resumed here.
        t.restore(Session {
            session_id: "b".into(),
            resume_gateway_url: "wss://r".into(),
            seq: 9,
        });
        t.forget_session();
        assert_eq!(
            t.take_gap(),
            Some(Gap {
                session_id: "b".into(),
                last_seq: 9,
                delivered: 0,
            })
        );
        assert_eq!(t.stats.sessions_lost, 1);
    }

    #[test]
    fn resumed_never_drops_and_keeps_the_highest_seq() {
        let mut t = Tracker::default();
        t.ready("a".into(), "wss://r".into(), Some(1));
        t.dispatch(2);
        t.resumed(Some(2));
        assert_eq!(t.last_seq(), Some(2));
        t.resumed(None);
        assert_eq!(t.dispatch(3), Verdict::Deliver);
        assert_eq!(t.stats.delivered, 5);
    }
}
