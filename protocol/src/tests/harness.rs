//! A driver for core + codec in virtual time: no socket, no tokio, no sleeping.

use std::time::Instant;

use handover_core::{
    Codec, Config, Connection, Event, Input, Message, OpenMode, Output, RestartReason, TransportId,
};
use serde_json::Value;

use super::fixtures::{GATEWAY, TOKEN};
use crate::{
    CLOSE_RULES, DiscordCodec, GatewayConfig, GatewayEvent, Intents, ProtocolError, Token,
};

pub(super) fn config() -> GatewayConfig {
    let mut cfg = GatewayConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    );
    cfg.gateway_url = GATEWAY.to_owned();
    cfg
}

pub(super) fn codec() -> DiscordCodec {
    DiscordCodec::new(config()).unwrap()
}

/// Everything the driver saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seen {
    Open(TransportId, OpenMode, String),
    Sent(TransportId, Value),
    Close(TransportId, u16),
    Abort(TransportId),
    Permit(TransportId),
    Core(Event),
    App(GatewayEvent),
}

pub(super) struct Harness {
    pub(super) core: Connection,
    pub(super) codec: DiscordCodec,
    pub(super) now: Instant,
    pub(super) seen: Vec<Seen>,
}

impl Harness {
    pub(super) fn new(codec: DiscordCodec) -> Self {
        let cfg = Config {
            close_rules: CLOSE_RULES,
            ..Config::default()
        };
        Harness {
            core: Connection::new(cfg, 42),
            codec,
            now: Instant::now(),
            seen: Vec::new(),
        }
    }

    /// Carries out every output of the core, as a driver would.
    pub(super) fn pump(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Open { conn, mode } => {
                    self.codec.reset(conn, mode);
                    let url = self.codec.url(mode);
                    self.seen.push(Seen::Open(conn, mode, url));
                }
                Output::Send { conn, payload } => {
                    let msg = self.codec.encode(self.now, payload).unwrap();
                    let v: Value = serde_json::from_slice(msg.as_bytes()).unwrap();
                    self.seen.push(Seen::Sent(conn, v));
                }
                Output::Close { conn, code } => self.seen.push(Seen::Close(conn, code)),
                Output::Abort { conn } => self.seen.push(Seen::Abort(conn)),
                Output::AcquirePermit { conn } => self.seen.push(Seen::Permit(conn)),
                Output::Event(e) => self.seen.push(Seen::Core(e)),
            }
        }
    }

    pub(super) fn input(&mut self, input: Input) {
        self.core.handle_input(self.now, input);
        self.pump();
    }

    /// A server message arrives on `conn`; returns the decode result.
    /// As the codec contract asks: the first item, then every item of `poll_item`; after an
    /// error, a restart when `poll_restart` asks for one.
    pub(super) fn server_msg(
        &mut self,
        conn: TransportId,
        msg: Message,
    ) -> Result<(), ProtocolError> {
        let d = match self.codec.decode(self.now, msg) {
            Ok(d) => d,
            Err(e) => {
                while let Some(item) = self.codec.poll_item() {
                    self.seen.push(Seen::App(item));
                }
                if self.codec.poll_restart() {
                    self.input(Input::Restart(RestartReason::TransportFault));
                }
                return Err(e);
            }
        };
        if let Some(item) = d.item {
            self.seen.push(Seen::App(item));
        }
        while let Some(item) = self.codec.poll_item() {
            self.seen.push(Seen::App(item));
        }
        if let Some(signal) = d.signal {
            self.input(Input::Signal { conn, signal });
        }
        Ok(())
    }

    pub(super) fn server(&mut self, conn: TransportId, json: &str) {
        self.server_msg(conn, Message::text(json)).unwrap();
    }

    /// Jumps virtual time to the core's next deadline.
    pub(super) fn advance_to_deadline(&mut self) {
        let at = self.core.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.core.handle_timeout(self.now);
        self.pump();
    }

    pub(super) fn take(&mut self) -> Vec<Seen> {
        std::mem::take(&mut self.seen)
    }

    pub(super) fn last_open(&self) -> Option<(TransportId, OpenMode, String)> {
        self.seen.iter().rev().find_map(|s| match s {
            Seen::Open(c, m, u) => Some((*c, *m, u.clone())),
            _ => None,
        })
    }

    pub(super) fn sent(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Sent(_, v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn app(&self) -> Vec<GatewayEvent> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::App(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Start, open, HELLO, IDENTIFY, READY: returns the identified connection.
    pub(super) fn identified(&mut self, session: &str) -> TransportId {
        self.input(Input::Start);
        let (conn, mode, _) = self.last_open().unwrap();
        assert_eq!(mode, OpenMode::Identify);
        self.input(Input::Opened(conn));
        self.server(conn, &super::fixtures::hello(41_250));
        self.server(conn, &super::fixtures::ready(session, 1));
        assert_eq!(self.core.sendable_transport(), Some(conn));
        conn
    }

    /// The transport of `conn` is gone (after our close or the peer's).
    pub(super) fn closed(&mut self, conn: TransportId, code: Option<u16>) {
        self.input(Input::Closed { conn, code });
    }

    /// Waits out the backoff and opens the next transport; returns it.
    pub(super) fn reconnect(&mut self) -> (TransportId, OpenMode, String) {
        self.advance_to_deadline();
        let (conn, mode, url) = self.last_open().unwrap();
        self.input(Input::Opened(conn));
        (conn, mode, url)
    }
}
