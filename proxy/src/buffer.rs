//! The bounded replay buffer of one upstream shard.

use std::collections::VecDeque;

use handover_protocol::{EventName, RawJson};

/// One dispatch kept for replay: its proxy-side position, its event name and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffered {
    /// Position in the shard's stream as the proxy received it (1 for the first dispatch the
    /// proxy ever received on this shard; positions never repeat, not even across upstream
    /// sessions).
    pub pos: u64,
    /// The event name (`t`): static for the names Discord documents, else sharing the frame's
    /// buffer; never a copy per event.
    pub event_type: EventName,
    /// The event data (`d`), raw JSON. It shares the buffer of the frame it was received in
    /// (a GUILD_MEMBERS_CHUNK whose nonce the proxy restored is a copy).
    pub data: RawJson,
    /// Who may see it: the intent bits of which a client session needs one, and the one
    /// session it is for, if any.
    pub audience: Audience,
}

/// Which client sessions an event is for: the intents of which a session needs one (0: every
/// session, as Discord sends the events no intent governs), and the one session a reply is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audience {
    /// Intent bits, any one of which lets a session see the event; 0 for every session.
    pub intents: u64,
    /// The only session that sees it (by the hub's session key), for replies to a client's
    /// command; `None` for every session its intents allow.
    pub only: Option<u64>,
}

impl Audience {
    /// Every session.
    pub const ALL: Audience = Audience {
        intents: 0,
        only: None,
    };

    /// Whether a session with `key` and `intents` sees the event.
    pub fn admits(&self, key: u64, intents: u64) -> bool {
        (self.intents == 0 || self.intents & intents != 0) && self.only.is_none_or(|k| k == key)
    }
}

/// The last `capacity` dispatches of one upstream shard, by position.
///
/// Memory per event: the received frame's buffer (the `d` shares it, so a kept event holds the
/// whole upstream frame, about its size on the wire after decompression; the event name is
/// static or shares the same buffer) plus about 96 bytes of
/// bookkeeping (position, audience, buffer handles).
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    events: VecDeque<Buffered>,
    capacity: usize,
    /// Position of the last event pushed (0 before the first).
    last: u64,
}

impl ReplayBuffer {
    /// An empty buffer keeping at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> ReplayBuffer {
        let capacity = capacity.max(1);
        ReplayBuffer {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            last: 0,
        }
    }

    /// Appends an event, dropping the oldest one if full. Returns its position.
    pub fn push(&mut self, event_type: EventName, data: RawJson, audience: Audience) -> u64 {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.last += 1;
        self.events.push_back(Buffered {
            pos: self.last,
            event_type,
            data,
            audience,
        });
        self.last
    }

    /// Position of the last event pushed (0 before the first).
    pub fn last_pos(&self) -> u64 {
        self.last
    }

    /// Events kept now.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The most events kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops every kept event (positions keep counting).
    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// The kept events from the newest back to the oldest.
    pub fn newest_first(&self) -> impl Iterator<Item = &Buffered> {
        self.events.iter().rev()
    }

    /// Position of the oldest event kept (`last_pos() + 1` when none is).
    pub fn first_pos(&self) -> u64 {
        self.last + 1 - self.events.len() as u64
    }

    /// The events after position `after`, in order; `None` if some of them are no longer kept
    /// (or `after` lies beyond the last position).
    pub fn after(&self, after: u64) -> Option<impl Iterator<Item = &Buffered>> {
        if after > self.last {
            return None;
        }
        let first_kept = self.last + 1 - self.events.len() as u64;
        if after + 1 < first_kept {
            return None;
        }
        let skip = usize::try_from(after + 1 - first_kept).ok()?;
        Some(self.events.iter().skip(skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u64) -> RawJson {
        RawJson::parse(n.to_string()).unwrap()
    }

    #[test]
    fn keeps_the_last_events_and_says_when_a_position_is_gone() {
        let mut b = ReplayBuffer::new(3);
        assert_eq!(b.after(0).unwrap().count(), 0);
        for n in 1..=5 {
            assert_eq!(b.push(EventName::new("E"), data(n), Audience::ALL), n);
        }
        assert_eq!(b.len(), 3);
        let after2: Vec<u64> = b.after(2).unwrap().map(|e| e.pos).collect();
        assert_eq!(after2, [3, 4, 5]);
        let after4: Vec<u64> = b.after(4).unwrap().map(|e| e.pos).collect();
        assert_eq!(after4, [5]);
        assert_eq!(b.after(5).unwrap().count(), 0);
        assert!(b.after(1).is_none(), "event 2 was dropped");
        assert!(b.after(6).is_none(), "beyond the last position");
        b.clear();
        assert!(b.after(4).is_none());
        assert_eq!(b.after(5).unwrap().count(), 0);
        assert_eq!(b.push(EventName::new("E"), data(6), Audience::ALL), 6);
    }
}
