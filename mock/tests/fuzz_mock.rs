//! Property-based fuzzing of the sans-IO mock gateway ([`MockGateway`]).
//!
//! A random client side drives the model through its [`MemoryPeer`] methods on several
//! connections at once: connects to good and bad URLs (plain, zlib-stream, zstd-stream),
//! valid, mutated and arbitrary frames (IDENTIFY, RESUME with sessions the mock handed out,
//! heartbeats, commands, client-only and unknown opcodes, oversize payloads, garbage), close
//! frames with any code, disconnects, random time advances, scripted dispatches and every fault
//! on demand. The harness keeps the `MemoryPeer` contract (connect first, nothing after the
//! client's own close frame, exactly one disconnect, the disconnect at once after the peer's
//! `Drop`, timeouts never later than `poll_timeout`). Properties after every call:
//!
//! - nothing panics;
//! - the mock never acts on a connection it never accepted, nor writes a frame (or a second
//!   close) on one it closed, dropped or saw disconnected;
//! - its counters stay consistent: live sockets equal the connections accepted and not yet
//!   disconnected, never exceed the connections accepted, and the maximum is at least the live
//!   count; per shard the same, and shards never count more live sockets than exist;
//! - `poll_timeout` moves on after `handle_timeout` at it (no deadline stuck in the past).
//!
//! Runs are deterministic: a fixed RNG seed, no failure files written. Raise the number of cases
//! by hand with `PROPTEST_CASES=2000 cargo test -p handover-mock --test fuzz_mock` (and pick
//! another seed with `PROPTEST_RNG_SEED=<n>`).

#[path = "../../protocol/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover_core::{Message, TransportId};
use handover_mock::{
    DEFAULT_TOKEN, Fault, Garbage, MockConfig, MockGateway, SessionStartLimit, ShardKey, Target,
};
use handover_protocol::{ZlibStreamDecoder, ZstdStreamDecoder};
use handover_transport_ws::memory::{MemoryPeer, PeerAction};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// The seed used unless `PROPTEST_RNG_SEED` says otherwise, so CI runs are reproducible.
const DEFAULT_SEED: u64 = 0x6d6f_636b_6761_7465;

/// Timeout calls at one instant before a deadline counts as stuck.
const MAX_TIMEOUTS_PER_STEP: usize = 1000;

fn proptest_config() -> ProptestConfig {
    fuzz_common::proptest_config(DEFAULT_CASES, DEFAULT_SEED, 2048)
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Short timers so that heartbeat timeouts, resume windows, identify buckets and close
/// timeouts all happen within a run.
fn mock_config(seed: u64) -> MockConfig {
    MockConfig {
        shards: 2,
        heartbeat_interval: ms(40),
        heartbeat_grace: Some(ms(10)),
        resume_window: ms(150),
        identify_window: ms(30),
        session_start: SessionStartLimit {
            total: 6,
            remaining: 6,
            reset_after: ms(400),
            max_concurrency: 1,
        },
        send_limit: 6,
        send_window: ms(50),
        replay_buffer: 8,
        close_timeout: ms(20),
        seed,
        ..MockConfig::default()
    }
}

/// A connection id relative to the connections made so far.
#[derive(Debug, Clone, Copy)]
enum ConnPick {
    /// One of the connections made so far (any state).
    Made(Index),
    /// The latest one on which neither side has started closing (else the latest one).
    Latest,
    /// An id never used.
    Unknown,
}

#[derive(Debug, Clone)]
enum Frame {
    Identify {
        good_token: bool,
        /// The token written as `Bot <token>` (Discord accepts both forms).
        bot_prefix: bool,
        intents: u64,
        shard: [u32; 2],
    },
    Resume {
        good_token: bool,
        /// The token written as `Bot <token>`.
        bot_prefix: bool,
        session: Option<Index>,
        seq: Option<u64>,
    },
    Heartbeat(Option<u64>),
    Presence,
    RequestMembers,
    /// A client sending a server-only or unknown opcode.
    Opcode(u64),
    Oversize,
    Arbitrary(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
}

#[derive(Debug, Clone)]
enum Op {
    /// To one of the three good URLs, or to a random one of all.
    Connect(Option<usize>),
    Send {
        conn: ConnPick,
        frame: Frame,
        mutations: Vec<Mutation>,
        binary: bool,
    },
    /// What a client does after losing a connection: connect to a good URL and at once send
    /// a RESUME of a session the mock handed out (or an IDENTIFY when it handed out none).
    Reconnect(usize, Index, u64),
    CloseFrame(ConnPick, u16),
    Disconnect(ConnPick),
    /// Let time pass: this long, in steps no longer than the mock's deadlines.
    Advance(Duration),
    /// Advance exactly to the mock's next deadline.
    ToDeadline,
    Dispatch(u32),
    Fault(TargetPick, Fault),
    DisconnectAll,
}

#[derive(Debug, Clone, Copy)]
enum TargetPick {
    Conn(ConnPick),
    Shard(u32),
    /// Every socket counted for a shard of the (only) token.
    Token,
    All,
}

const URLS: &[&str] = &[
    "ws://mock/?v=10&encoding=json",
    "ws://mock/?v=10&encoding=json&compress=zlib-stream",
    "ws://mock/?v=10&encoding=json&compress=zstd-stream",
    "ws://mock/?v=9&encoding=json",
    "ws://mock/?v=10&encoding=etf",
    "ws://mock/?v=10&encoding=json&compress=brotli",
    "ws://mock/",
    "not a url at all ?&&==&v",
];

fn conn_pick() -> impl Strategy<Value = ConnPick> {
    prop_oneof![
        4 => Just(ConnPick::Latest),
        4 => any::<Index>().prop_map(ConnPick::Made),
        1 => Just(ConnPick::Unknown),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.25),
            prop_oneof![6 => Just(513u64), 1 => Just(1 << 1), 1 => Just(1 << 30), 1 => any::<u64>()],
            prop_oneof![Just([0, 2]), Just([1, 2]), Just([0, 1]), Just([3, 2])],
        )
            .prop_map(|(good_token, bot_prefix, intents, shard)| Frame::Identify {
                good_token,
                bot_prefix,
                intents,
                shard,
            }),
        2 => (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.25),
            prop::option::weighted(0.8, any::<Index>()),
            // Mostly within what a session has sent (a seq above it is closed with 4007).
            prop::option::weighted(0.9, prop_oneof![4 => 0u64..3, 1 => 0u64..20]),
        )
            .prop_map(|(good_token, bot_prefix, session, seq)| Frame::Resume {
                good_token,
                bot_prefix,
                session,
                seq,
            }),
        6 => prop::option::of(0u64..20).prop_map(Frame::Heartbeat),
        1 => Just(Frame::Presence),
        1 => Just(Frame::RequestMembers),
        1 => prop_oneof![Just(0u64), Just(7), Just(9), Just(10), Just(11), Just(5), Just(99), any::<u64>()]
            .prop_map(Frame::Opcode),
        1 => Just(Frame::Oversize),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Frame::Arbitrary),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Zombie),
        Just(Fault::StopAcks),
        Just(Fault::DropTcp),
        Just(Fault::IgnoreCloseFrames),
        Just(Fault::Reconnect),
        any::<bool>().prop_map(|resumable| Fault::InvalidSession { resumable }),
        prop_oneof![
            Just(1000u16),
            Just(4000),
            Just(4004),
            Just(4007),
            Just(4009),
            Just(4014),
            any::<u16>()
        ]
        .prop_map(Fault::Close),
        (0u64..30).prop_map(|n| Fault::Delay(ms(n))),
        prop_oneof![Just(Garbage::Text), Just(Garbage::Binary)].prop_map(Fault::Garbage),
        Just(Fault::RequestHeartbeat),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![
            4 => (0usize..3).prop_map(|i| Op::Connect(Some(i))),
            1 => Just(Op::Connect(None)),
        ],
        16 => (
            conn_pick(),
            frame(),
            prop_oneof![8 => Just(Vec::new()), 1 => prop::collection::vec(mutation(), 1..3)],
            prop::bool::weighted(0.2),
        )
            .prop_map(|(conn, frame, mutations, binary)| Op::Send {
                conn,
                frame,
                mutations,
                binary,
            }),
        2 => (0usize..3, any::<Index>(), 0u64..3).prop_map(|(u, s, q)| Op::Reconnect(u, s, q)),
        2 => (
            conn_pick(),
            prop_oneof![Just(1000u16), Just(1001), Just(4000), Just(4321), any::<u16>()],
        )
            .prop_map(|(c, code)| Op::CloseFrame(c, code)),
        2 => conn_pick().prop_map(Op::Disconnect),
        5 => (0u64..60).prop_map(|n| Op::Advance(ms(n))),
        3 => Just(Op::ToDeadline),
        2 => (0u32..3).prop_map(Op::Dispatch),
        3 => (
            prop_oneof![
                3 => conn_pick().prop_map(TargetPick::Conn),
                1 => (0u32..3).prop_map(TargetPick::Shard),
                1 => Just(TargetPick::Token),
                1 => Just(TargetPick::All),
            ],
            fault(),
        )
            .prop_map(|(t, f)| Op::Fault(t, f)),
        1 => Just(Op::DisconnectAll),
    ]
}

/// What the client side knows about one connection.
#[derive(Debug, Default)]
struct Side {
    accepted: bool,
    /// The client sent its close frame: it sends nothing more.
    client_closed: bool,
    /// The mock sent a close frame: it writes nothing more but may still drop TCP.
    server_closed: bool,
    /// The mock dropped the socket, or the client went away: everything is over.
    gone: bool,
    /// The client's decompression context, on a compressed connection.
    inflate: Option<Inflate>,
}

/// The client's side of the transport compression, to read the session ids of READY.
enum Inflate {
    Zlib(ZlibStreamDecoder),
    Zstd(ZstdStreamDecoder),
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Inflate::Zlib(_) => "zlib",
            Inflate::Zstd(_) => "zstd",
        })
    }
}

struct Harness {
    gw: MockGateway,
    base: Instant,
    now: Duration,
    next_id: u64,
    conns: BTreeMap<TransportId, Side>,
    sessions: Vec<String>,
    log: Vec<String>,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        Harness {
            gw: MockGateway::new(mock_config(seed)),
            base: Instant::now(),
            now: Duration::ZERO,
            next_id: 1,
            conns: BTreeMap::new(),
            sessions: Vec::new(),
            log: Vec::new(),
        }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn pick(&self, p: ConnPick) -> TransportId {
        let ids: Vec<TransportId> = self.conns.keys().copied().collect();
        match p {
            _ if ids.is_empty() => TransportId(self.next_id + 1000),
            ConnPick::Made(i) => *i.get(&ids),
            ConnPick::Latest => self
                .conns
                .iter()
                .rev()
                .find(|(_, s)| s.accepted && !s.gone && !s.client_closed && !s.server_closed)
                .map_or(ids[ids.len() - 1], |(id, _)| *id),
            ConnPick::Unknown => TransportId(self.next_id + 1000),
        }
    }

    /// A connection the client may still use (accepted, not closed by it, not gone).
    fn usable(&self, id: TransportId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|s| s.accepted && !s.client_closed && !s.gone)
    }

    fn frame_bytes(&self, frame: &Frame) -> Vec<u8> {
        let token = |good: bool, prefix: bool| {
            let text = if good { DEFAULT_TOKEN } else { "wrong-token" };
            if prefix {
                format!("Bot {text}")
            } else {
                text.to_owned()
            }
        };
        let v: Value = match frame {
            Frame::Identify {
                good_token,
                bot_prefix,
                intents,
                shard,
            } => json!({"op": 2, "d": {
                "token": token(*good_token, *bot_prefix),
                "intents": intents,
                "properties": {"os": "linux", "browser": "fuzz", "device": "fuzz"},
                "shard": shard,
            }}),
            Frame::Resume {
                good_token,
                bot_prefix,
                session,
                seq,
            } => {
                let sid = session
                    .filter(|_| !self.sessions.is_empty())
                    .map_or("no-such-session".to_owned(), |i| {
                        i.get(&self.sessions).clone()
                    });
                json!({"op": 6, "d": {"token": token(*good_token, *bot_prefix), "session_id": sid, "seq": seq}})
            }
            Frame::Heartbeat(seq) => json!({"op": 1, "d": seq}),
            Frame::Presence => json!({"op": 3, "d": {
                "since": null, "activities": [], "status": "online", "afk": false
            }}),
            Frame::RequestMembers => {
                json!({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}})
            }
            Frame::Opcode(op) => json!({"op": op, "d": null}),
            Frame::Oversize => json!({"op": 3, "d": {"pad": "x".repeat(5000)}}),
            Frame::Arbitrary(bytes) => return bytes.clone(),
        };
        serde_json::to_vec(&v).expect("a value serializes")
    }

    /// Drains the mock's actions, checking each one and keeping the contract.
    fn drain(&mut self) -> Result<(), String> {
        while let Some((id, action)) = self.gw.poll_action() {
            let Some(side) = self.conns.get_mut(&id) else {
                return Err(format!("{action:?} on {id}, which never connected"));
            };
            if !side.accepted {
                return Err(format!("{action:?} on {id}, which was refused"));
            }
            if side.gone {
                return Err(format!("{action:?} on {id}, which is gone"));
            }
            match action {
                PeerAction::Send(msg) => {
                    if side.server_closed {
                        return Err(format!("data frame on {id} after the mock's close frame"));
                    }
                    let text = match (&msg, &mut side.inflate) {
                        (Message::Binary(b), Some(Inflate::Zlib(z))) => z.push(b).ok().flatten(),
                        (Message::Binary(b), Some(Inflate::Zstd(z))) => z.push(b).ok(),
                        (m, _) => Some(m.as_bytes().to_vec()),
                    };
                    if let Some(t) = text
                        && let Ok(v) = serde_json::from_slice::<Value>(&t)
                        && v["t"] == "READY"
                        && let Some(sid) = v["d"]["session_id"].as_str()
                    {
                        self.sessions.push(sid.to_owned());
                    }
                }
                PeerAction::Close(code) => {
                    if side.server_closed {
                        return Err(format!("second close frame ({code}) on {id}"));
                    }
                    side.server_closed = true;
                }
                PeerAction::Drop => {
                    // The harness reports the disconnect at once, as the contract says.
                    side.gone = true;
                    self.gw.on_disconnect(self.base + self.now, id);
                }
            }
        }
        self.check_counters()
    }

    fn check_counters(&self) -> Result<(), String> {
        let c = self.gw.counters();
        let open = self
            .conns
            .values()
            .filter(|s| s.accepted && !s.gone)
            .count();
        let accepted = self.conns.values().filter(|s| s.accepted).count() as u64;
        if c.live_sockets != open {
            return Err(format!(
                "live sockets {} but {open} connections are open",
                c.live_sockets
            ));
        }
        if c.connections_accepted != accepted {
            return Err(format!(
                "{} connections accepted by the counters, {accepted} seen",
                c.connections_accepted
            ));
        }
        if c.live_sockets as u64 > c.connections_accepted || c.max_live_sockets < c.live_sockets {
            return Err(format!("inconsistent counters: {c:?}"));
        }
        let mut shard_live = 0;
        for (key, s) in &c.shards {
            if s.max_live_sockets < s.live_sockets {
                return Err(format!("shard {key}: max below live: {s:?}"));
            }
            shard_live += s.live_sockets;
        }
        if shard_live > c.live_sockets {
            return Err(format!(
                "shards count {shard_live} live sockets, {} exist",
                c.live_sockets
            ));
        }
        if self.gw.connections().len() != open {
            return Err(format!(
                "{} connections listed, {open} open",
                self.gw.connections().len()
            ));
        }
        Ok(())
    }

    /// Moves time to `target`, calling `handle_timeout` at every deadline on the way.
    fn advance_to(&mut self, target: Duration) -> Result<(), String> {
        for _ in 0..MAX_TIMEOUTS_PER_STEP {
            let due = self
                .gw
                .poll_timeout()
                .map(|at| at.saturating_duration_since(self.base));
            match due {
                Some(d) if d <= target => {
                    self.now = self.now.max(d);
                    self.gw.handle_timeout(self.at());
                    self.drain()?;
                    if self.gw.poll_timeout().is_some_and(|next| next <= self.at()) {
                        // Streams read "as fast as read" are due at once; none run here.
                        return Err(format!("deadline stuck at {:?}", self.now));
                    }
                }
                _ => {
                    self.now = self.now.max(target);
                    self.gw.handle_timeout(self.at());
                    return self.drain();
                }
            }
        }
        Err(format!(
            "more than {MAX_TIMEOUTS_PER_STEP} deadlines in one step"
        ))
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let now = self.at();
        match op {
            Op::Connect(url) => {
                let id = TransportId(self.next_id);
                self.next_id += 1;
                let url = URLS[url.unwrap_or(self.next_id as usize % URLS.len())];
                let accepted = self.gw.on_connect(now, id, url);
                let inflate = if url.ends_with("zlib-stream") {
                    Some(Inflate::Zlib(ZlibStreamDecoder::new(1 << 20)))
                } else if url.ends_with("zstd-stream") {
                    ZstdStreamDecoder::new(1 << 20).ok().map(Inflate::Zstd)
                } else {
                    None
                };
                self.conns.insert(
                    id,
                    Side {
                        accepted,
                        inflate,
                        ..Side::default()
                    },
                );
            }
            Op::Send {
                conn,
                frame,
                mutations,
                binary,
            } => {
                let id = self.pick(*conn);
                if !self.usable(id) {
                    return Ok(());
                }
                let mut bytes = self.frame_bytes(frame);
                for m in mutations {
                    let len = bytes.len();
                    match *m {
                        Mutation::Flip(i, b) if len > 0 => bytes[i.index(len)] ^= 1 << b,
                        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
                        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), b),
                        _ => {}
                    }
                }
                let msg = match String::from_utf8(bytes) {
                    Ok(s) if !binary => Message::text(s),
                    Ok(s) => Message::Binary(Bytes::from(s.into_bytes())),
                    Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
                };
                self.gw.on_message(now, id, msg);
            }
            Op::Reconnect(url, session, seq) => {
                self.apply(&Op::Connect(Some(*url)))?;
                let frame = if self.sessions.is_empty() {
                    Frame::Identify {
                        good_token: true,
                        bot_prefix: false,
                        intents: 513,
                        shard: [0, 2],
                    }
                } else {
                    Frame::Resume {
                        good_token: true,
                        bot_prefix: false,
                        session: Some(*session),
                        seq: Some(*seq),
                    }
                };
                let conn = ConnPick::Latest;
                let (mutations, binary) = (Vec::new(), false);
                return self.apply(&Op::Send {
                    conn,
                    frame,
                    mutations,
                    binary,
                });
            }
            Op::CloseFrame(conn, code) => {
                let id = self.pick(*conn);
                if !self.usable(id) {
                    return Ok(());
                }
                if let Some(s) = self.conns.get_mut(&id) {
                    s.client_closed = true;
                }
                self.gw.on_close_frame(now, id, *code);
            }
            Op::Disconnect(conn) => {
                let id = self.pick(*conn);
                match self.conns.get_mut(&id) {
                    Some(s) if s.accepted && !s.gone => {
                        s.gone = true;
                        self.gw.on_disconnect(now, id);
                    }
                    _ => return Ok(()),
                }
            }
            Op::Advance(d) => return self.advance_to(self.now + *d),
            Op::ToDeadline => {
                let target = self
                    .gw
                    .poll_timeout()
                    .map_or(self.now, |at| at.saturating_duration_since(self.base));
                return self.advance_to(target.max(self.now));
            }
            Op::Dispatch(shard) => {
                self.gw.dispatch(
                    now,
                    ShardKey::new(0, *shard),
                    "MESSAGE_CREATE",
                    &json!({"content": "fuzz"}),
                );
            }
            Op::Fault(target, fault) => {
                let target = match *target {
                    TargetPick::Conn(c) => Target::Connection(self.pick(c)),
                    TargetPick::Shard(s) => Target::Shard(ShardKey::new(0, s)),
                    TargetPick::Token => Target::Token(0),
                    TargetPick::All => Target::All,
                };
                self.gw.inject(now, target, *fault);
            }
            Op::DisconnectAll => {
                // The server shuts down: it forgets every socket, and nothing more happens on
                // any of them (no disconnect is reported afterwards).
                self.gw.disconnect_all(now);
                for s in self.conns.values_mut() {
                    s.gone = true;
                }
            }
        }
        self.drain()
    }
}

fn run(seed: u64, ops: &[Op]) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new(seed);
    for (i, op) in ops.iter().enumerate() {
        h.log.push(format!("{op:?}"));
        h.apply(op)
            .map_err(|e| TestCaseError::fail(format!("step {i} ({op:?}): {e}")))?;
    }
    // Everything ends: the client goes away from every open socket.
    let open: Vec<TransportId> = h
        .conns
        .iter()
        .filter(|(_, s)| s.accepted && !s.gone)
        .map(|(id, _)| *id)
        .collect();
    for id in open {
        if let Some(s) = h.conns.get_mut(&id) {
            s.gone = true;
        }
        h.gw.on_disconnect(h.at(), id);
        h.drain().map_err(TestCaseError::fail)?;
    }
    prop_assert_eq!(h.gw.counters().live_sockets, 0);
    Ok(h)
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_clients_and_faults_keep_the_mock_consistent(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(seed, &ops)?;
    }
}

/// The generator reaches the interesting parts of the mock: sessions started and resumed,
/// heartbeats acknowledged, closes of its own, and more than one socket live at once.
#[test]
fn the_generated_runs_reach_sessions_resumes_and_closes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..proptest_config()
    });
    let strategy = (any::<u64>(), prop::collection::vec(op(), 1..120));
    let (mut started, mut resumed, mut acks, mut server_closes, mut max_live) = (0, 0, 0, 0, 0);
    for _ in 0..48 {
        let (seed, ops) = strategy
            .new_tree(&mut runner)
            .expect("the strategy has no filter")
            .current();
        let h = run(seed, &ops).expect("checked by the property test");
        let c = h.gw.counters();
        max_live = max_live.max(c.max_live_sockets);
        for s in c.shards.values() {
            started += s.sessions_started;
            resumed += s.resumes_ok;
            acks += s.acks_sent;
            server_closes += s.server_closes.len();
        }
    }
    assert!(started > 0, "no session started");
    assert!(resumed > 0, "no session resumed");
    assert!(acks > 0, "no heartbeat acknowledged");
    assert!(server_closes > 0, "the mock never closed a socket itself");
    assert!(max_live > 1, "never two sockets at once");
}

/// The checks can fail: a frame written on a socket the client believes gone is reported.
#[test]
fn the_harness_reports_a_frame_on_a_closed_socket() {
    let mut h = Harness::new(7);
    h.apply(&Op::Connect(Some(0)))
        .expect("a good url is accepted");
    let id = TransportId(1);
    assert!(h.usable(id));
    // Pretend the socket went away without telling the mock: its next frame is a violation.
    if let Some(s) = h.conns.get_mut(&id) {
        s.gone = true;
    }
    let err = h
        .apply(&Op::Fault(
            TargetPick::Conn(ConnPick::Made(any_index())),
            Fault::RequestHeartbeat,
        ))
        .expect_err("a frame on a gone socket must be reported");
    assert!(err.contains("which is gone"), "{err}");
}

fn any_index() -> Index {
    use proptest::strategy::ValueTree;
    any::<Index>()
        .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
        .expect("no filter")
        .current()
}
