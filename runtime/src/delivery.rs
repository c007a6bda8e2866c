//! The sink contract: an event counts as delivered, and may advance the sequence number a saved
//! or handed-over session resumes from, only once the sink has taken it.
//!
//! Every shard keeps a ledger of what its sink took: the session of the last READY or
//! RESUMED taken, the last dispatch sequence number taken in it, and how many dispatches were
//! taken. [`ShardHandle::session`](super::ShardHandle::session) (and so the session file of
//! `handover run`) reads the sequence number from the ledger, never from what the socket
//! received: a process that stops with events still in its queues resumes from the last event
//! its sink took, and Discord replays the rest.
//!
//! Who advances the ledger is chosen by [`Delivery`]:
//!
//! - [`Delivery::OnReturn`] (the default): `next_event()` of the [`Shard`](super::Shard) or
//!   [`Fleet`](super::Fleet) advances it as it returns the event to the application.
//! - [`Delivery::Confirmed`]: the application takes a [`Receipt`] for each event
//!   ([`Fleet::receipt`](super::Fleet::receipt)) and confirms it once the event is safely
//!   out (written to a pipe, acknowledged by a broker). `handover run` confirms when the event's
//!   last byte is written to stdout.
//!
//! Within one process nothing else changes: a reconnect resumes from the last sequence number
//! received, since events already received stay queued for the sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::shard::{ShardEvent, ShardEventKind};
use handover_protocol::Session;

/// Who advances a shard's delivery ledger. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// An event is delivered when `next_event()` returns it.
    #[default]
    OnReturn,
    /// An event is delivered when its [`Receipt`] is confirmed.
    Confirmed,
}

/// What a shard's sink has taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Session id and resume URL of the last READY or RESUMED taken (or of the session the
    /// shard was started with).
    pub(crate) session: Option<(String, String)>,
    /// Last dispatch sequence number taken in that session.
    pub(crate) seq: u64,
    /// Dispatches taken, READY and RESUMED included, since the shard started.
    pub(crate) delivered: u64,
}

/// A shard's ledger of what its sink took; shared by the shard's handles and receipts.
///
/// A dispatch, the event path, is two plain loads and stores of atomics (no lock, no locked
/// read-modify-write); the lock guards only the session, which changes on READY, RESUMED and
/// gap reports. One writer per shard: with [`Delivery::OnReturn`] the shard's `next_event()`,
/// with [`Delivery::Confirmed`] its sink confirming receipts in order, so writes never race.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    seq: AtomicU64,
    delivered: AtomicU64,
    session: Mutex<Option<(String, String)>>,
}

impl Ledger {
    /// A ledger that starts from a session saved earlier: its sequence number is what the
    /// previous sink took.
    pub(crate) fn new(resume: Option<&Session>) -> Arc<Ledger> {
        Arc::new(Ledger {
            seq: AtomicU64::new(resume.map_or(0, |s| s.seq)),
            delivered: AtomicU64::new(0),
            session: Mutex::new(
                resume.map(|s| (s.session_id.clone(), s.resume_gateway_url.clone())),
            ),
        })
    }

    pub(crate) fn snapshot(&self) -> Taken {
        let session = self.lock().clone();
        Taken {
            session,
            seq: self.seq.load(Ordering::Acquire),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn take(&self, what: &Entry) {
        match what {
            // One writer per shard (its `next_event()` or its sink's receipts, in order), so a
            // load and a store suffice: no locked read-modify-write on the event path.
            Entry::Dispatch { seq } => {
                if *seq > self.seq.load(Ordering::Relaxed) {
                    self.seq.store(*seq, Ordering::Release);
                }
                let delivered = self.delivered.load(Ordering::Relaxed);
                self.delivered.store(delivered + 1, Ordering::Relaxed);
            }
            Entry::Session {
                id,
                resume_url,
                seq,
            } => {
                let mut session = self.lock();
                let same = session.as_ref().is_some_and(|(s, _)| s == id);
                let url = match resume_url {
                    Some(url) => url.clone(),
                    None => session.as_ref().map(|(_, u)| u.clone()).unwrap_or_default(),
                };
                // A RESUMED continues the session: replayed events came before it and were
                // taken one by one. A READY starts a new one at its own sequence number.
                let seq = match (same, resume_url) {
                    (true, None) => self.seq.load(Ordering::Acquire).max(seq.unwrap_or(0)),
                    _ => seq.unwrap_or(0),
                };
                *session = Some((id.clone(), url));
                self.seq.store(seq, Ordering::Release);
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Entry::Lost { id } => {
                // The sink has been told that this session is gone: nothing to resume.
                let mut session = self.lock();
                if session.as_ref().is_some_and(|(s, _)| s == id) {
                    *session = None;
                    self.seq.store(0, Ordering::Release);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(String, String)>> {
        // A plain value: a panic while holding the lock cannot leave it inconsistent.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What taking one event changes in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// READY (`resume_url` set) or RESUMED (`None`: the session's URL is kept).
    Session {
        id: String,
        resume_url: Option<String>,
        seq: Option<u64>,
    },
    /// A dispatch.
    Dispatch { seq: u64 },
    /// A gap report: the session is lost.
    Lost { id: String },
}

impl Entry {
    /// The ledger entry of an event, if taking it changes the ledger (lifecycle events and gap
    /// reports do not).
    pub(crate) fn of(event: &ShardEvent) -> Option<Entry> {
        match &event.kind {
            ShardEventKind::Dispatch(d) => Some(Entry::Dispatch { seq: d.seq }),
            ShardEventKind::Ready(r) => Some(Entry::Session {
                id: r.session_id.clone(),
                resume_url: Some(r.resume_gateway_url.clone()),
                seq: r.seq,
            }),
            ShardEventKind::Resumed(r) => Some(Entry::Session {
                id: r.session_id.clone(),
                resume_url: None,
                seq: r.seq,
            }),
            ShardEventKind::Gap(g) => Some(Entry::Lost {
                id: g.session_id.clone(),
            }),
            _ => None,
        }
    }

    /// Whether taking it counts one more delivered event.
    fn counts(&self) -> bool {
        !matches!(self, Entry::Lost { .. })
    }
}

/// Proof that one event reached the application, to [`confirm`](Self::confirm) once the
/// application's sink has safely taken it (with [`Delivery::Confirmed`]).
///
/// Confirm receipts of one shard in the order their events came. A receipt that is dropped
/// unconfirmed leaves the ledger where it was: a later process resumes before that event.
/// Cheap to move across threads.
#[derive(Debug)]
#[must_use = "an unconfirmed receipt leaves its event undelivered"]
pub struct Receipt {
    ledger: Arc<Ledger>,
    entry: Option<Entry>,
}

impl Receipt {
    pub(crate) fn new(ledger: Arc<Ledger>, entry: Option<Entry>) -> Receipt {
        Receipt { ledger, entry }
    }

    /// The event is out of the process's hands: count it delivered and let a saved session
    /// resume after it.
    pub fn confirm(self) {
        if let Some(entry) = &self.entry {
            self.ledger.take(entry);
        }
    }

    /// Whether confirming this receipt counts one more delivered event (it does for
    /// dispatches, READY and RESUMED; not for lifecycle events and gap reports).
    pub fn counts(&self) -> bool {
        self.entry.as_ref().is_some_and(Entry::counts)
    }
}

/// Receipts that belong to no shard, for testing a sink on its own: it hands out receipts for
/// dispatches and tells how many of them were confirmed, as a shard's ledger would count them.
#[derive(Debug, Clone)]
pub struct ReceiptBook {
    ledger: Arc<Ledger>,
}

impl Default for ReceiptBook {
    fn default() -> Self {
        ReceiptBook::new()
    }
}

impl ReceiptBook {
    /// An empty book (no session).
    pub fn new() -> ReceiptBook {
        ReceiptBook {
            ledger: Ledger::new(None),
        }
    }

    /// A receipt for the dispatch with sequence number `seq`.
    pub fn dispatch(&self, seq: u64) -> Receipt {
        Receipt::new(self.ledger.clone(), Some(Entry::Dispatch { seq }))
    }

    /// The highest sequence number confirmed, and how many receipts that count were confirmed.
    pub fn confirmed(&self) -> (u64, u64) {
        let taken = self.ledger.snapshot();
        (taken.seq, taken.delivered)
    }
}

/// The session a later process should resume: the last one the sink took a READY or RESUMED
/// of (or the shard started with), unless the sink was told it is lost.
///
/// The sink's session wins over the codec's: if the shard moved on to a newer session whose
/// READY (and the gap report before it) the sink has not taken, the sink's older, lost session
/// is returned, so that the next process fails to resume it, identifies and reports the gap,
/// instead of resuming a session whose READY and gap report the application never saw.
pub(crate) fn resumable_session(taken: &Taken) -> Option<Session> {
    let (id, url) = taken.session.clone()?;
    Some(Session {
        session_id: id,
        resume_gateway_url: url,
        seq: taken.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(id: &str, seq: u64) -> Entry {
        Entry::Session {
            id: id.into(),
            resume_url: Some(format!("wss://{id}")),
            seq: Some(seq),
        }
    }

    #[test]
    fn the_ledger_follows_what_was_taken() {
        let l = Ledger::new(None);
        l.take(&ready("a", 1));
        l.take(&Entry::Dispatch { seq: 2 });
        l.take(&Entry::Dispatch { seq: 3 });
        let t = l.snapshot();
        assert_eq!(t.seq, 3);
        assert_eq!(t.delivered, 3);
        assert_eq!(t.session, Some(("a".into(), "wss://a".into())));
        // RESUMED keeps the URL and never moves the seq back.
        l.take(&Entry::Session {
            id: "a".into(),
            resume_url: None,
            seq: Some(2),
        });
        let t = l.snapshot();
        assert_eq!((t.seq, t.delivered), (3, 4));
        assert_eq!(t.session, Some(("a".into(), "wss://a".into())));
        // A new session starts at its READY's seq.
        l.take(&ready("b", 1));
        let t = l.snapshot();
        assert_eq!((t.seq, t.session.unwrap().0.as_str()), (1, "b"));
    }

    #[test]
    fn a_restored_ledger_resumes_from_the_saved_seq() {
        let saved = Session {
            session_id: "s".into(),
            resume_gateway_url: "wss://r".into(),
            seq: 1110,
        };
        let l = Ledger::new(Some(&saved));
        assert_eq!(resumable_session(&l.snapshot()), Some(saved.clone()));
        l.take(&Entry::Dispatch { seq: 1111 });
        assert_eq!(resumable_session(&l.snapshot()).unwrap().seq, 1111);
        // Once the sink took the gap report, there is nothing to resume.
        l.take(&Entry::Lost { id: "other".into() });
        assert!(resumable_session(&l.snapshot()).is_some());
        l.take(&Entry::Lost { id: "s".into() });
        assert_eq!(resumable_session(&l.snapshot()), None);
    }

    #[test]
    fn unconfirmed_receipts_change_nothing() {
        let l = Ledger::new(None);
        let r = Receipt::new(l.clone(), Some(Entry::Dispatch { seq: 9 }));
        assert!(r.counts());
        drop(r);
        assert_eq!(l.snapshot(), Taken::default());
        Receipt::new(l.clone(), Some(Entry::Dispatch { seq: 9 })).confirm();
        assert_eq!(l.snapshot().seq, 9);
        let lifecycle = Receipt::new(l.clone(), None);
        assert!(!lifecycle.counts());
        lifecycle.confirm();
        assert_eq!(l.snapshot().delivered, 1);
    }
}
