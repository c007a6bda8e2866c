//! Shared test fixtures: a tiny line protocol (codec and in-memory peer), a loopback WebSocket
//! server that counts concurrent sockets, and event-log helpers.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod lines;
pub mod peer;
pub mod server;

use std::time::{Duration, Instant};

use handover_core::{Decoded, Message, OpenMode, Payload, Signal, TransportId};
use handover_transport_ws::{Codec, DriverEvent, TransportEvent};

/// The line protocol.
///
/// Server -> client: `hello <interval_ms>`, `ready`, `resumed`, `ack`, `hbreq`, `reconnect`,
/// `invalid <true|false>`, `event <text>` (an item for the application).
/// Client -> server: `identify`, `resume`, `hb`, `cmd <text>`.
#[derive(Debug, Clone)]
pub struct LineCodec {
    pub url: String,
    pub resets: Vec<(TransportId, OpenMode)>,
    /// Longest `cmd` text the codec accepts.
    pub max_command: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("unknown line")]
    Unknown,
    #[error("command too long")]
    TooLong,
}

impl LineCodec {
    pub fn new(url: impl Into<String>) -> Self {
        LineCodec {
            url: url.into(),
            resets: Vec::new(),
            max_command: 32,
        }
    }
}

impl Codec for LineCodec {
    type Item = String;
    type Command = String;
    type Error = LineError;

    fn url(&self, _mode: OpenMode) -> String {
        self.url.clone()
    }

    fn reset(&mut self, conn: TransportId, mode: OpenMode) {
        self.resets.push((conn, mode));
    }

    fn decode(&mut self, _now: Instant, msg: Message) -> Result<Decoded<String>, LineError> {
        let text = std::str::from_utf8(msg.as_bytes()).map_err(|_| LineError::Unknown)?;
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let signal = |s| {
            Ok(Decoded {
                signal: Some(s),
                item: None,
            })
        };
        match word {
            "hello" => {
                let ms: u64 = rest.parse().map_err(|_| LineError::Unknown)?;
                signal(Signal::Hello {
                    interval: Duration::from_millis(ms),
                })
            }
            "ready" => signal(Signal::HandshakeAccepted { resumed: false }),
            "resumed" => signal(Signal::HandshakeAccepted { resumed: true }),
            "ack" => signal(Signal::HeartbeatAck),
            "hbreq" => signal(Signal::HeartbeatRequested),
            "reconnect" => signal(Signal::ReconnectRequested),
            "invalid" => signal(Signal::SessionInvalidated {
                resumable: rest == "true",
            }),
            "event" => Ok(Decoded {
                signal: None,
                item: Some(rest.to_owned()),
            }),
            _ => Err(LineError::Unknown),
        }
    }

    fn encode(&mut self, _now: Instant, payload: Payload) -> Result<Message, LineError> {
        Ok(Message::text(match payload {
            Payload::Handshake(OpenMode::Identify) => "identify",
            Payload::Handshake(OpenMode::Resume) => "resume",
            Payload::Heartbeat => "hb",
        }))
    }

    fn encode_command(&mut self, _now: Instant, command: String) -> Result<Message, LineError> {
        if command.len() > self.max_command {
            return Err(LineError::TooLong);
        }
        Ok(Message::text(format!("cmd {command}")))
    }
}

/// The transport lifecycle facts among `events`.
pub fn transport_events<T>(events: &[DriverEvent<T>]) -> Vec<TransportEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Transport(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// Checks the contract on a sequence of transport facts: every `Opening` is followed by exactly
/// one end (`OpenFailed`, or `Opened` then `Closed`) before the next `Opening`. Returns the
/// number of transports that ended.
pub fn check_one_end_per_transport(facts: &[TransportEvent]) -> usize {
    let mut live: Option<(TransportId, bool)> = None;
    let mut ended = 0;
    for fact in facts {
        match *fact {
            TransportEvent::Opening { conn } => {
                assert!(
                    live.is_none(),
                    "opening {conn} while {live:?} is live: {facts:?}"
                );
                live = Some((conn, false));
            }
            TransportEvent::Opened { conn } => {
                assert_eq!(
                    live,
                    Some((conn, false)),
                    "opened {conn} out of order: {facts:?}"
                );
                live = Some((conn, true));
            }
            TransportEvent::OpenFailed { conn } => {
                assert_eq!(
                    live,
                    Some((conn, false)),
                    "open failure of {conn} out of order: {facts:?}"
                );
                live = None;
                ended += 1;
            }
            TransportEvent::Closed { conn, .. } => {
                assert_eq!(
                    live,
                    Some((conn, true)),
                    "close of {conn} out of order: {facts:?}"
                );
                live = None;
                ended += 1;
            }
            other => panic!("unexpected fact {other:?}"),
        }
    }
    ended
}

/// Counts the ends (`OpenFailed` or `Closed`) reported for `conn`.
pub fn ends_of(facts: &[TransportEvent], conn: TransportId) -> usize {
    facts
        .iter()
        .filter(|f| {
            matches!(f, TransportEvent::OpenFailed { conn: c } | TransportEvent::Closed { conn: c, .. } if *c == conn)
        })
        .count()
}
