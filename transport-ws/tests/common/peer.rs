//! An in-memory server speaking the line protocol, with fault knobs.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use handover_core::{Message, TransportId};
use handover_transport_ws::memory::{MemoryPeer, PeerAction};

#[derive(Debug, Default)]
pub struct LinePeer {
    pub interval_ms: u64,
    /// Refuse every connection.
    pub refuse: bool,
    /// Never answer a client's close frame.
    pub ignore_close: bool,
    /// Never acknowledge heartbeats.
    pub zombie: bool,
    /// A session exists that `resume` continues.
    pub session: bool,
    pub actions: VecDeque<(TransportId, PeerAction)>,
    /// Actions scheduled for the connection current at their time.
    pub scheduled: Vec<(Instant, PeerAction)>,
    pub current: Option<TransportId>,
    pub connects: u32,
    pub identifies: u32,
    pub resumes: u32,
    pub heartbeats: u32,
    pub close_frames: Vec<(TransportId, u16)>,
    pub disconnects: Vec<TransportId>,
    pub live: BTreeSet<TransportId>,
    pub max_live: usize,
    pub received: Vec<(TransportId, String)>,
}

impl LinePeer {
    pub fn new(interval_ms: u64) -> Self {
        LinePeer {
            interval_ms,
            ..LinePeer::default()
        }
    }

    fn send(&mut self, conn: TransportId, text: impl Into<String>) {
        self.actions
            .push_back((conn, PeerAction::Send(Message::text(text))));
    }

    /// Queue an action for the current connection now.
    pub fn act(&mut self, action: PeerAction) {
        if let Some(conn) = self.current {
            self.actions.push_back((conn, action));
        }
    }
}

impl MemoryPeer for LinePeer {
    fn on_connect(&mut self, _now: Instant, conn: TransportId, _url: &str) -> bool {
        self.connects += 1;
        if self.refuse {
            return false;
        }
        self.live.insert(conn);
        self.max_live = self.max_live.max(self.live.len());
        self.current = Some(conn);
        let hello = format!("hello {}", self.interval_ms);
        self.send(conn, hello);
        true
    }

    fn on_message(&mut self, _now: Instant, conn: TransportId, msg: Message) {
        let text = String::from_utf8_lossy(msg.as_bytes()).into_owned();
        self.received.push((conn, text.clone()));
        match text.as_str() {
            "identify" => {
                self.identifies += 1;
                self.session = true;
                self.send(conn, "ready");
            }
            "resume" => {
                self.resumes += 1;
                if self.session {
                    self.send(conn, "resumed");
                } else {
                    self.send(conn, "invalid false");
                }
            }
            "hb" => {
                self.heartbeats += 1;
                if !self.zombie {
                    self.send(conn, "ack");
                }
            }
            _ => {}
        }
    }

    fn on_close_frame(&mut self, _now: Instant, conn: TransportId, code: u16) {
        self.close_frames.push((conn, code));
        if !self.ignore_close {
            self.actions.push_back((conn, PeerAction::Close(code)));
        }
    }

    fn on_disconnect(&mut self, _now: Instant, conn: TransportId) {
        assert!(self.live.remove(&conn), "disconnect of unknown {conn}");
        self.disconnects.push(conn);
        if self.current == Some(conn) {
            self.current = None;
        }
    }

    fn poll_action(&mut self) -> Option<(TransportId, PeerAction)> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.scheduled.iter().map(|s| s.0).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.scheduled.drain(..).partition(|s| s.0 <= now);
        self.scheduled = later;
        for (_, action) in due {
            self.act(action);
        }
    }
}
