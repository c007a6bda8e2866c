//! Scenario tests in virtual time: one `Connection` driven by a small scripted peer, never
//! sleeping. Time jumps straight to the next scheduled input or `poll_timeout`.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use handover_core::{
    Backoff, Config, Connection, Event, GiveUpReason, Input, InputKind, OpenMode, Output, Payload,
    Phase, RejectedInput, Rejection, RestartReason, Signal, State, StopIntent, TransportId,
};

use common::{FATAL_CODE as FATAL, NEW_SESSION_CODE as NEW_SESSION, RULES};
const INTERVAL: Duration = Duration::from_millis(41_250);

fn config() -> Config {
    Config {
        close_rules: RULES,
        ..Config::default()
    }
}

/// How the scripted peer behaves. Fields may change between steps.
#[derive(Debug, Clone)]
struct Peer {
    /// One-way delay of everything the peer or the driver reports.
    latency: Duration,
    /// Answer heartbeats (false: a zombie).
    ack: bool,
    /// Answer close frames (false: the close handshake hangs).
    answer_close: bool,
    /// Accept opens (false: every open fails).
    accept_open: bool,
    /// How long after an `Abort` the driver reports the transport gone.
    abort_confirm: Duration,
    /// Grant permits.
    grant_permits: bool,
    /// The driver does not read the socket (a slow application): ACKs wait unread until
    /// reading resumes.
    paused: bool,
}

impl Default for Peer {
    fn default() -> Self {
        Peer {
            latency: Duration::from_millis(20),
            ack: true,
            answer_close: true,
            accept_open: true,
            abort_confirm: Duration::ZERO,
            grant_permits: true,
            paused: false,
        }
    }
}

/// A driver plus a scripted peer around one machine, in virtual time.
struct Sim {
    conn: Connection,
    base: Instant,
    now: Instant,
    peer: Peer,
    /// Inputs the driver will report, in time order.
    pending: VecDeque<(Instant, Input)>,
    /// Every output, with the virtual time it was drained at.
    log: Vec<(Duration, Output)>,
    /// Transports opened and not yet reported gone (the driver's view).
    live: BTreeSet<TransportId>,
    max_live: usize,
    /// Each transport the driver reported gone, with the length of `log` at that moment (so
    /// its place among the outputs is known).
    gone: Vec<(usize, TransportId)>,
    /// ACKs that arrived while reading was paused, unread in the socket.
    unread: Vec<Input>,
    /// The test feeds inputs that break the driver contract on purpose; otherwise an
    /// `InputRejected` fails the test at once (this driver follows the contract).
    breaks_contract: bool,
}

impl Sim {
    fn new(cfg: Config, seed: u64) -> Self {
        let base = Instant::now();
        Sim {
            conn: Connection::new(cfg, seed),
            base,
            now: base,
            peer: Peer::default(),
            pending: VecDeque::new(),
            log: Vec::new(),
            live: BTreeSet::new(),
            max_live: 0,
            gone: Vec::new(),
            unread: Vec::new(),
            breaks_contract: false,
        }
    }

    /// The driver stops (or resumes) reading the live transport; on resuming, the ACKs that
    /// waited in the socket are read at once.
    fn set_paused(&mut self, paused: bool) {
        self.peer.paused = paused;
        if let Some(conn) = self.conn.live_transport() {
            self.input(Input::Backpressure { conn, paused });
        }
        if !paused {
            for input in std::mem::take(&mut self.unread) {
                self.deliver(input);
            }
        }
    }

    fn at(&self) -> Duration {
        self.now - self.base
    }

    fn schedule(&mut self, after: Duration, input: Input) {
        let at = self.now + after;
        let i = self.pending.partition_point(|(t, _)| *t <= at);
        self.pending.insert(i, (at, input));
    }

    /// Feeds an input now and carries out the outputs.
    fn input(&mut self, input: Input) {
        self.deliver(input);
    }

    fn deliver(&mut self, input: Input) {
        if let Input::Closed { conn, .. } | Input::OpenFailed(conn) = input {
            self.live.remove(&conn);
            self.gone.push((self.log.len(), conn));
        }
        if self.peer.paused
            && matches!(
                input,
                Input::Signal {
                    signal: Signal::HeartbeatAck,
                    ..
                }
            )
        {
            self.unread.push(input);
            return;
        }
        self.conn.handle_input(self.now, input);
        self.drain();
    }

    /// Mutate-then-drain: carries out every output the way a driver would.
    fn drain(&mut self) {
        let lat = self.peer.latency;
        while let Some(out) = self.conn.poll_output() {
            self.log.push((self.at(), out));
            assert!(
                self.breaks_contract || !matches!(out, Output::Event(Event::InputRejected { .. })),
                "a driver following the contract got {out:?}"
            );
            match out {
                Output::Open { conn, .. } => {
                    self.live.insert(conn);
                    self.max_live = self.max_live.max(self.live.len());
                    if self.peer.accept_open {
                        self.schedule(lat, Input::Opened(conn));
                        let hello = Signal::Hello { interval: INTERVAL };
                        self.schedule(
                            2 * lat,
                            Input::Signal {
                                conn,
                                signal: hello,
                            },
                        );
                    } else {
                        self.schedule(lat, Input::OpenFailed(conn));
                    }
                }
                Output::AcquirePermit { conn } => {
                    if self.peer.grant_permits {
                        self.schedule(lat, Input::PermitGranted(conn));
                    } else {
                        self.schedule(lat, Input::PermitDenied(conn));
                    }
                }
                Output::Send { conn, payload } => {
                    let signal = match payload {
                        Payload::Handshake(mode) => Signal::HandshakeAccepted {
                            resumed: mode == OpenMode::Resume,
                        },
                        Payload::Heartbeat if self.peer.ack => Signal::HeartbeatAck,
                        Payload::Heartbeat => continue,
                    };
                    self.schedule(2 * lat, Input::Signal { conn, signal });
                }
                Output::Close { conn, code } => {
                    if self.peer.answer_close {
                        let code = Some(code);
                        self.schedule(2 * lat, Input::Closed { conn, code });
                    }
                }
                Output::Abort { conn } => {
                    self.schedule(self.peer.abort_confirm, Input::Closed { conn, code: None });
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Runs until virtual time `until` (relative to the start), delivering scheduled inputs and
    /// timeouts in time order. Bounded in steps.
    fn run_until(&mut self, until: Duration) {
        let end = self.base + until;
        for _ in 0..100_000 {
            let next_input = self.pending.front().map(|(t, _)| *t);
            let next_timeout = self.conn.poll_timeout();
            let next = match (next_input, next_timeout) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_input == Some(next) {
                let (_, input) = self.pending.pop_front().expect("front exists");
                // The driver dropped that socket when it reported it gone (after an abort,
                // say): the peer's answer to the close frame sent just before can no longer
                // reach it, so it has nothing more to report.
                if input.is_end_report()
                    && let Some(c) = input.conn()
                    && self.gone.iter().any(|(_, g)| *g == c)
                {
                    continue;
                }
                self.deliver(input);
            } else {
                self.conn.handle_timeout(self.now);
                self.drain();
            }
        }
        self.now = self.now.max(end);
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.at() + d;
        self.run_until(until);
    }

    /// Runs until the machine is identified (bounded).
    fn run_until_identified(&mut self) {
        for _ in 0..1000 {
            if self.conn.state() == State::Identified {
                return;
            }
            self.run_for(Duration::from_millis(10));
        }
        panic!("never identified: {:?}", self.conn.status());
    }

    fn outputs_since(&self, t: Duration) -> impl Iterator<Item = (Duration, Output)> + '_ {
        self.log.iter().copied().filter(move |(at, _)| *at >= t)
    }

    fn opens(&self) -> Vec<(Duration, TransportId, OpenMode)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Open { conn, mode } => Some((*t, *conn, *mode)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, pred: impl Fn(&Output) -> bool) -> usize {
        self.log.iter().filter(|(_, o)| pred(o)).count()
    }
}

fn is_identify(o: &Output) -> bool {
    matches!(
        o,
        Output::Send {
            payload: Payload::Handshake(OpenMode::Identify),
            ..
        }
    )
}

fn is_resume(o: &Output) -> bool {
    matches!(
        o,
        Output::Send {
            payload: Payload::Handshake(OpenMode::Resume),
            ..
        }
    )
}

fn is_heartbeat(o: &Output) -> bool {
    matches!(
        o,
        Output::Send {
            payload: Payload::Heartbeat,
            ..
        }
    )
}

#[test]
fn a_zombie_is_aborted_one_interval_after_its_unanswered_heartbeat_and_resumed_at_once() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 1);
    sim.input(Input::Start);
    sim.run_until_identified();
    sim.run_for(INTERVAL * 3);
    let first = sim.conn.live_transport().expect("live");

    sim.peer.ack = false;
    let stopped_acking = sim.at();
    // Until the zombie is aborted (bounded), then the peer answers again.
    for _ in 0..10_000 {
        if sim.count(|o| *o == Output::Abort { conn: first }) > 0 {
            break;
        }
        sim.run_for(Duration::from_millis(100));
    }
    sim.peer.ack = true;
    sim.run_for(INTERVAL * 2);
    // The first heartbeat that got no ACK, the probe within the interval, and the abort.
    let first_unanswered = sim
        .outputs_since(stopped_acking)
        .find(|(_, o)| is_heartbeat(o))
        .map(|(t, _)| t)
        .expect("a heartbeat after the ACKs stopped");
    let probe = sim
        .outputs_since(first_unanswered + Duration::from_nanos(1))
        .find(|(_, o)| is_heartbeat(o))
        .map(|(t, _)| t)
        .expect("a probe");
    assert_eq!(
        probe,
        first_unanswered + cfg.probe_grace,
        "probe after the grace"
    );
    let judged: Vec<_> = sim
        .outputs_since(stopped_acking)
        .filter(|(_, o)| {
            matches!(o, Output::Close { conn, .. } | Output::Abort { conn } if *conn == first)
        })
        .collect();
    assert_eq!(
        judged,
        vec![
            (
                first_unanswered + INTERVAL,
                Output::Close {
                    conn: first,
                    code: RULES.keep_resumable_code
                }
            ),
            (first_unanswered + INTERVAL, Output::Abort { conn: first }),
        ],
        "judged dead exactly one interval after the unanswered heartbeat, aborted at once"
    );

    // The abort's confirmation came before the next Open, and the resume went out at once.
    let opens = sim.opens();
    assert_eq!(opens.len(), 2);
    let open_index = sim
        .log
        .iter()
        .position(|(_, o)| matches!(o, Output::Open { conn, .. } if *conn == opens[1].1))
        .expect("the second open is logged");
    let (gone_index, _) = sim
        .gone
        .iter()
        .find(|(_, c)| *c == first)
        .copied()
        .expect("the zombie was confirmed gone");
    assert!(
        gone_index <= open_index,
        "confirmed gone before the next open"
    );
    assert_eq!(opens[1].2, OpenMode::Resume);
    assert!(opens[1].0 - (first_unanswered + INTERVAL) <= cfg.reconnect_spread);
    sim.peer.ack = true;
    sim.run_until_identified();
    assert_eq!(sim.count(is_identify), 1);
    assert_eq!(sim.count(is_resume), 1);
    assert_eq!(sim.max_live, 1);
}

#[test]
fn a_late_ack_within_the_interval_returns_from_stale() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 21);
    // ACKs take longer than the probe grace but less than an interval.
    sim.input(Input::Start);
    sim.run_until_identified();
    sim.peer.latency = Duration::from_secs(4);
    sim.run_for(INTERVAL * 4);
    assert!(sim.log.iter().any(|(_, o)| matches!(
        o,
        Output::Event(Event::StateChanged {
            to: State::Stale,
            ..
        })
    )));
    assert_eq!(sim.count(|o| matches!(o, Output::Abort { .. })), 0);
    assert_eq!(sim.opens().len(), 1);
    assert_eq!(sim.conn.state(), State::Identified);
}

#[test]
fn a_drain_deadline_aborts_and_only_the_drivers_confirmation_closes() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 2);
    sim.input(Input::Start);
    sim.run_until_identified();
    let first = sim.conn.live_transport().expect("live");

    sim.peer.answer_close = false;
    sim.peer.abort_confirm = Duration::from_secs(30);
    let restart_at = sim.at();
    sim.input(Input::Restart(RestartReason::HealthMonitor));
    assert_eq!(sim.conn.state(), State::Draining);

    // Just before the deadline: still draining, no abort yet.
    sim.run_for(cfg.drain_deadline - Duration::from_millis(1));
    assert_eq!(sim.conn.state(), State::Draining);
    assert_eq!(sim.count(|o| matches!(o, Output::Abort { .. })), 0);

    sim.run_for(Duration::from_millis(1));
    let aborts: Vec<_> = sim
        .outputs_since(restart_at)
        .filter(|(_, o)| matches!(o, Output::Abort { .. }))
        .collect();
    assert_eq!(
        aborts,
        vec![(
            restart_at + cfg.drain_deadline,
            Output::Abort { conn: first }
        )]
    );

    // The driver takes 30 s to confirm: the machine waits in Draining, with no deadline of its
    // own, whatever else happens meanwhile.
    for i in 0..10 {
        sim.run_for(Duration::from_secs(2));
        sim.input(Input::Restart(RestartReason::HealthMonitor));
        if i % 3 == 0 {
            sim.input(Input::Start);
        }
        assert_eq!(sim.conn.state(), State::Draining);
        assert_eq!(sim.conn.poll_timeout(), None);
    }
    assert_eq!(sim.opens().len(), 1, "no open before the confirmation");

    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.conn.state(), State::Identified);
    let opens = sim.opens();
    assert_eq!(opens.len(), 2);
    // The restarted session was a successful one: the reconnect follows the confirmation at
    // once (within the spread).
    let confirmed_at = restart_at + cfg.drain_deadline + Duration::from_secs(30);
    assert!(opens[1].0 >= confirmed_at);
    assert!(opens[1].0 <= confirmed_at + cfg.reconnect_spread);
    assert_eq!(opens[1].2, OpenMode::Resume);
    assert_eq!(sim.max_live, 1);
}

#[test]
fn late_frames_from_an_old_connection_change_nothing() {
    let mut sim = Sim::new(config(), 3);
    sim.input(Input::Start);
    sim.run_until_identified();
    let old = sim.conn.live_transport().expect("live");
    sim.input(Input::Restart(RestartReason::Requested));
    sim.run_for(Duration::from_millis(1));
    sim.run_until_identified();
    let new = sim.conn.live_transport().expect("live");
    assert!(new > old);

    let before = sim.conn.clone();
    let status = sim.conn.status();
    let log_len = sim.log.len();
    assert_eq!(sim.conn.rejected_inputs(), 0);
    // The second end reports below break the contract; the rest are frames in flight.
    sim.breaks_contract = true;
    for input in [
        Input::Opened(old),
        Input::OpenFailed(old),
        Input::Closed {
            conn: old,
            code: None,
        },
        Input::Closed {
            conn: old,
            code: Some(FATAL),
        },
        Input::Closed {
            conn: old,
            code: Some(NEW_SESSION),
        },
        Input::PermitGranted(old),
        Input::PermitDenied(old),
        Input::Signal {
            conn: old,
            signal: Signal::ReconnectRequested,
        },
        Input::Signal {
            conn: old,
            signal: Signal::SessionInvalidated { resumable: false },
        },
        Input::Signal {
            conn: old,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
        Input::Signal {
            conn: old,
            signal: Signal::HeartbeatRequested,
        },
        Input::Signal {
            conn: old,
            signal: Signal::Hello {
                interval: Duration::from_millis(1),
            },
        },
        Input::Backpressure {
            conn: old,
            paused: true,
        },
    ] {
        sim.input(input);
    }
    assert_eq!(sim.conn, before);
    assert_eq!(sim.conn.status(), status);
    // A dead socket's frames emit nothing; each second end report for it (one `OpenFailed`,
    // three `Closed`) emits one rejection, in order, and nothing else.
    let rejected: Vec<_> = sim.log[log_len..].iter().map(|(_, o)| *o).collect();
    let second = |kind| {
        Output::Event(Event::InputRejected {
            input: RejectedInput { kind, conn: old },
            reason: Rejection::SecondEndReport,
        })
    };
    assert_eq!(
        rejected,
        [
            second(InputKind::OpenFailed),
            second(InputKind::Closed),
            second(InputKind::Closed),
            second(InputKind::Closed),
        ]
    );
    assert_eq!(sim.conn.rejected_inputs(), 4);
}

#[test]
fn inputs_for_a_transport_never_opened_are_rejected_and_change_nothing() {
    let mut sim = Sim::new(config(), 3);
    sim.breaks_contract = true;
    let never = |kind, conn| {
        Output::Event(Event::InputRejected {
            input: RejectedInput { kind, conn },
            reason: Rejection::NeverOpened,
        })
    };
    // Before the first `Open`, every id is unissued (the first one will be 1).
    let fresh = sim.conn.clone();
    sim.input(Input::Opened(TransportId(1)));
    sim.input(Input::Signal {
        conn: TransportId(1),
        signal: Signal::Hello { interval: INTERVAL },
    });
    assert_eq!(sim.conn, fresh);
    assert_eq!(
        sim.log.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        [
            never(InputKind::Opened, TransportId(1)),
            never(InputKind::Signal, TransportId(1)),
        ]
    );

    sim.breaks_contract = false;
    sim.input(Input::Start);
    sim.run_until_identified();
    let live = sim.conn.live_transport().expect("live");
    assert_eq!(live, TransportId(1), "the first id issued is 1");
    let before = sim.conn.clone();
    let status = sim.conn.status();
    let log_len = sim.log.len();
    sim.breaks_contract = true;
    // Id 0 is never issued; the next id is not issued yet, whatever the input.
    let next = TransportId(live.0 + 1);
    for input in [
        Input::Closed {
            conn: TransportId(0),
            code: None,
        },
        Input::Signal {
            conn: next,
            signal: Signal::ReconnectRequested,
        },
        Input::Closed {
            conn: next,
            code: Some(FATAL),
        },
        Input::Backpressure {
            conn: TransportId(u64::MAX),
            paused: true,
        },
    ] {
        sim.input(input);
    }
    assert_eq!(sim.conn, before);
    assert_eq!(sim.conn.status(), status);
    assert_eq!(sim.conn.live_transport(), Some(live));
    assert_eq!(
        sim.log[log_len..]
            .iter()
            .map(|(_, o)| *o)
            .collect::<Vec<_>>(),
        [
            never(InputKind::Closed, TransportId(0)),
            never(InputKind::Signal, next),
            never(InputKind::Closed, next),
            never(InputKind::Backpressure, TransportId(u64::MAX)),
        ]
    );
    assert_eq!(sim.conn.rejected_inputs(), 6);
    // The live connection carries on as before.
    sim.breaks_contract = false;
    sim.run_for(3 * INTERVAL);
    assert_eq!(sim.conn.state(), State::Identified);
    assert_eq!(sim.conn.rejected_inputs(), 6);
}

#[test]
fn a_hundred_restarts_in_a_millisecond_give_one_transport_and_spaced_reconnects() {
    // Sessions that die young count as failures here, so a monitor restarting in a loop is
    // backed off (with the default, each accepted handshake ends the streak).
    let cfg = Config {
        stable_after: Duration::from_secs(60),
        ..config()
    };
    let mut sim = Sim::new(cfg, 4);
    // Fast peer, so that the storm meets several states within its millisecond.
    sim.peer.latency = Duration::from_micros(3);
    sim.input(Input::Start);
    sim.run_until_identified();
    let storm_at = sim.at();
    for _ in 0..100 {
        sim.input(Input::Restart(RestartReason::HealthMonitor));
        sim.run_for(Duration::from_micros(10));
    }
    assert!(sim.at() - storm_at <= Duration::from_millis(1));
    sim.run_for(Duration::from_secs(5));

    // One drain for the whole storm, one reconnect after the backoff, resumed.
    assert_eq!(sim.max_live, 1);
    let opens = sim.opens();
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert!(opens[1].0 - storm_at >= cfg.backoff.floor);
    assert_eq!(opens[1].2, OpenMode::Resume);
    assert_eq!(sim.count(is_identify), 1);
    assert_eq!(sim.count(|o| matches!(o, Output::Close { .. })), 1);
    assert_eq!(sim.conn.state(), State::Identified);

    // A monitor that keeps restarting every millisecond for a minute: never two transports,
    // and reconnects spaced by a backoff that grows to its cap.
    for _ in 0..60_000 {
        sim.input(Input::Restart(RestartReason::HealthMonitor));
        sim.run_for(Duration::from_millis(1));
    }
    assert_eq!(sim.max_live, 1);
    let opens = sim.opens();
    assert!(opens.len() > 5, "{}", opens.len());
    for pair in opens.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= cfg.backoff.floor, "{pair:?}");
    }
    let delays: Vec<Duration> = sim
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
            _ => None,
        })
        .collect();
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = cfg.backoff.ceiling(n as u32 + 1);
        assert!(
            *delay >= cfg.backoff.floor && *delay <= ceiling,
            "{n}: {delay:?}"
        );
    }
    assert!(
        delays.iter().any(|d| *d > cfg.backoff.base * 4),
        "backoff grew"
    );
    // Every connection resumed the one session.
    assert_eq!(sim.count(is_identify), 1);
}

#[test]
fn a_fatal_close_ends_in_closed_with_a_reason_and_no_further_open() {
    let mut sim = Sim::new(config(), 5);
    sim.input(Input::Start);
    sim.run_until_identified();
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Closed {
        conn,
        code: Some(FATAL),
    });
    assert_eq!(sim.conn.state(), State::Closed);
    assert_eq!(sim.conn.phase(), Phase::Failed);
    let reason = GiveUpReason::FatalClose { code: Some(FATAL) };
    assert_eq!(sim.conn.status().gave_up, Some(reason));
    assert_eq!(sim.conn.status().last_close_code, Some(FATAL));
    assert!(!sim.conn.is_resumable());

    // Restarts and stops do not re-arm it; nothing is scheduled.
    for _ in 0..10 {
        sim.input(Input::Restart(RestartReason::HealthMonitor));
        sim.input(Input::Stop(StopIntent::KeepResumable));
        sim.run_for(Duration::from_secs(600));
    }
    assert_eq!(sim.conn.poll_timeout(), None);
    assert_eq!(sim.opens().len(), 1);
    let gave_up = sim.count(|o| matches!(o, Output::Event(Event::GaveUp(_))));
    assert_eq!(gave_up, 1, "given up once");
    assert_eq!(
        sim.log.iter().rev().find_map(|(_, o)| match o {
            Output::Event(Event::GaveUp(r)) => Some(*r),
            _ => None,
        }),
        Some(reason)
    );

    // Only Start re-arms, with a new session.
    sim.input(Input::Start);
    sim.run_until_identified();
    let opens = sim.opens();
    assert_eq!(opens.len(), 2);
    assert_eq!(opens[1].2, OpenMode::Identify);
    assert_eq!(sim.conn.status().gave_up, None);
}

#[test]
fn a_fatal_code_answering_our_own_close_is_not_retried() {
    let mut sim = Sim::new(config(), 6);
    sim.input(Input::Start);
    sim.run_until_identified();
    let conn = sim.conn.live_transport().expect("live");
    sim.peer.answer_close = false;
    sim.input(Input::Restart(RestartReason::HealthMonitor));
    // The peer's fatal close crossed our close frame.
    sim.input(Input::Closed {
        conn,
        code: Some(FATAL),
    });
    assert_eq!(sim.conn.phase(), Phase::Failed);
    sim.run_for(Duration::from_secs(600));
    assert_eq!(sim.opens().len(), 1);
}

#[test]
fn resumable_cases_resume_and_the_others_identify() {
    // (what happens on an identified connection, expected mode of the next open)
    type Case = (&'static str, fn(TransportId) -> Input, OpenMode);
    let cases: [Case; 8] = [
        (
            "reconnect requested",
            |conn| Input::Signal {
                conn,
                signal: Signal::ReconnectRequested,
            },
            OpenMode::Resume,
        ),
        (
            "invalid session, resumable",
            |conn| Input::Signal {
                conn,
                signal: Signal::SessionInvalidated { resumable: true },
            },
            OpenMode::Resume,
        ),
        (
            "invalid session, not resumable",
            |conn| Input::Signal {
                conn,
                signal: Signal::SessionInvalidated { resumable: false },
            },
            OpenMode::Identify,
        ),
        (
            "drop without close",
            |conn| Input::Closed { conn, code: None },
            OpenMode::Resume,
        ),
        (
            "reconnectable close code",
            |conn| Input::Closed {
                conn,
                code: Some(4000),
            },
            OpenMode::Resume,
        ),
        (
            "new-session close code",
            |conn| Input::Closed {
                conn,
                code: Some(NEW_SESSION),
            },
            OpenMode::Identify,
        ),
        (
            "hot restart",
            |_| Input::Restart(RestartReason::HealthMonitor),
            OpenMode::Resume,
        ),
        (
            "stop ending the session, then start",
            |_| Input::Stop(StopIntent::EndSession),
            OpenMode::Identify,
        ),
    ];
    for (name, input, expected) in cases {
        let mut sim = Sim::new(config(), 7);
        sim.input(Input::Start);
        sim.run_until_identified();
        let conn = sim.conn.live_transport().expect("live");
        sim.input(input(conn));
        sim.run_for(Duration::from_secs(1));
        if sim.conn.phase() == Phase::Stopped {
            sim.input(Input::Start);
        }
        sim.run_until_identified();
        let opens = sim.opens();
        assert_eq!(opens.len(), 2, "{name}");
        assert_eq!(opens[1].2, expected, "{name}");
        let identifies = if expected == OpenMode::Identify { 2 } else { 1 };
        assert_eq!(sim.count(is_identify), identifies, "{name}");
        assert_eq!(sim.max_live, 1, "{name}");
    }
}

#[test]
fn backoff_grows_to_its_cap_and_a_stable_session_resets_it() {
    let cfg = Config {
        backoff: Backoff {
            floor: Duration::from_millis(100),
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
        },
        ..config()
    };
    let mut sim = Sim::new(cfg, 8);
    sim.peer.accept_open = false;
    sim.input(Input::Start);
    sim.run_for(Duration::from_secs(120));
    let delays: Vec<Duration> = sim
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
            _ => None,
        })
        .collect();
    assert!(delays.len() >= 10, "{}", delays.len());
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = cfg.backoff.ceiling(n as u32 + 1);
        assert!(ceiling <= cfg.backoff.cap);
        assert!(
            *delay >= cfg.backoff.floor && *delay <= ceiling,
            "{n}: {delay:?}"
        );
    }
    let opens = sim.opens();
    for pair in opens.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= cfg.backoff.floor);
    }
    let failed_attempts = sim.conn.status().attempts;
    assert!(failed_attempts >= 10);

    // Opens succeed again; with `stable_after` set, a session shorter than it does not reset
    // the count...
    let cfg = Config {
        stable_after: Duration::from_secs(60),
        ..cfg
    };
    let mut sim = Sim::new(cfg, 8);
    sim.peer.accept_open = false;
    sim.input(Input::Start);
    sim.run_for(Duration::from_secs(120));
    let failed_attempts = sim.conn.status().attempts;
    sim.peer.accept_open = true;
    sim.run_until_identified();
    sim.run_for(cfg.stable_after / 2);
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Closed { conn, code: None });
    assert_eq!(sim.conn.status().attempts, failed_attempts + 1);
    // ...a stable one does.
    sim.run_until_identified();
    sim.run_for(cfg.stable_after);
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Closed { conn, code: None });
    assert_eq!(sim.conn.status().attempts, 0);
    let delay = sim.log.iter().rev().find_map(|(_, o)| match o {
        Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
        _ => None,
    });
    assert!(delay.is_some_and(|d| d <= cfg.reconnect_spread));
}

#[test]
fn the_first_reconnect_after_a_session_goes_at_once_and_backoff_starts_at_the_second_failure() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 22);
    sim.input(Input::Start);
    sim.run_until_identified();
    // Ten resumed sessions, each dropped a few seconds after it was accepted: every reconnect
    // goes out within the spread, however close together the drops are.
    for _ in 0..10 {
        sim.run_for(Duration::from_secs(3));
        let conn = sim.conn.live_transport().expect("live");
        let dropped_at = sim.at();
        sim.input(Input::Closed { conn, code: None });
        assert_eq!(sim.conn.status().attempts, 0);
        sim.run_until_identified();
        let open = *sim.opens().last().expect("reopened");
        assert!(open.0 - dropped_at <= cfg.reconnect_spread, "{open:?}");
        assert_eq!(open.2, OpenMode::Resume);
    }
    // A drop, then a reconnect that fails: the first waits nothing, the second is backed off,
    // and they grow from there.
    let conn = sim.conn.live_transport().expect("live");
    sim.peer.accept_open = false;
    sim.input(Input::Closed { conn, code: None });
    sim.run_for(Duration::from_secs(30));
    let delays: Vec<Duration> = sim
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
            _ => None,
        })
        .skip(10)
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    assert!(delays[0] <= cfg.reconnect_spread, "{delays:?}");
    for (n, delay) in delays.iter().enumerate().skip(1) {
        let ceiling = cfg.backoff.ceiling(n as u32);
        assert!(
            *delay >= cfg.backoff.floor.min(ceiling) && *delay <= ceiling,
            "{n}: {delay:?}"
        );
    }
    // A successful resume ends the streak.
    sim.peer.accept_open = true;
    sim.run_for(cfg.backoff.cap);
    sim.run_until_identified();
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Closed { conn, code: None });
    assert_eq!(sim.conn.status().attempts, 0);
}

#[test]
fn a_non_resumable_invalid_session_waits_one_to_five_seconds_before_identifying() {
    let cfg = config();
    for seed in 0..20 {
        let mut sim = Sim::new(cfg, 100 + seed);
        sim.input(Input::Start);
        sim.run_until_identified();
        let conn = sim.conn.live_transport().expect("live");
        let invalidated_at = sim.at();
        sim.input(Input::Signal {
            conn,
            signal: Signal::SessionInvalidated { resumable: false },
        });
        sim.run_for(Duration::from_secs(6));
        let opens = sim.opens();
        assert_eq!(opens.len(), 2);
        let wait = opens[1].0 - invalidated_at;
        assert!(
            wait >= cfg.invalid_session_wait_min && wait <= cfg.invalid_session_wait_max,
            "seed {seed}: {wait:?}"
        );
        assert_eq!(opens[1].2, OpenMode::Identify);
    }
}

#[test]
fn a_reconnect_request_or_a_resumable_invalid_session_resumes_at_once() {
    let cfg = config();
    for signal in [
        Signal::ReconnectRequested,
        Signal::SessionInvalidated { resumable: true },
    ] {
        let mut sim = Sim::new(cfg, 23);
        sim.input(Input::Start);
        sim.run_until_identified();
        let conn = sim.conn.live_transport().expect("live");
        sim.input(Input::Signal { conn, signal });
        sim.run_for(Duration::from_secs(1));
        let (closed_at, _) = *sim.gone.last().expect("closed");
        let _ = closed_at;
        let opens = sim.opens();
        assert_eq!(opens.len(), 2, "{signal:?}");
        assert_eq!(opens[1].2, OpenMode::Resume);
        // The close answered after one round trip, then the reconnect within the spread.
        assert!(
            opens[1].1 > conn
                && opens[1].0
                    <= 2 * sim.peer.latency + cfg.reconnect_spread + opens[0].0 + sim.at(),
        );
        let close_at = sim
            .log
            .iter()
            .find_map(|(t, o)| matches!(o, Output::Close { .. }).then_some(*t))
            .expect("a close");
        assert!(opens[1].0 - close_at <= 2 * sim.peer.latency + cfg.reconnect_spread);
        // With a close that is never answered, the drain deadline bounds it.
        let mut sim = Sim::new(cfg, 24);
        sim.input(Input::Start);
        sim.run_until_identified();
        sim.peer.answer_close = false;
        let conn = sim.conn.live_transport().expect("live");
        let at = sim.at();
        sim.input(Input::Signal { conn, signal });
        sim.run_for(Duration::from_secs(2));
        let opens = sim.opens();
        assert_eq!(opens.len(), 2);
        assert!(opens[1].0 - at >= cfg.drain_deadline);
        assert!(opens[1].0 - at <= cfg.drain_deadline + cfg.reconnect_spread);
    }
}

#[test]
fn a_paused_reader_is_never_judged_and_a_dead_peer_is_judged_once_reading_resumes() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 25);
    sim.input(Input::Start);
    sim.run_until_identified();
    sim.run_for(INTERVAL * 2);
    let beats_before = sim.count(is_heartbeat);

    // The application falls behind: the driver stops reading; every ACK waits in the socket.
    sim.set_paused(true);
    sim.run_for(INTERVAL * 10);
    assert_eq!(sim.opens().len(), 1, "a paused reader is not a dead peer");
    assert_eq!(
        sim.count(|o| matches!(o, Output::Abort { .. } | Output::Close { .. })),
        0
    );
    assert!(matches!(sim.conn.state(), State::Identified | State::Stale));
    // Heartbeats kept going out on schedule.
    let beats = sim.count(is_heartbeat) - beats_before;
    assert!(beats >= 10, "{beats} heartbeats in 10 intervals");
    assert!(!sim.unread.is_empty(), "ACKs were waiting unread");

    // Reading resumes: the waiting ACKs are read, nothing is judged.
    sim.set_paused(false);
    sim.run_for(INTERVAL * 2);
    assert_eq!(sim.conn.state(), State::Identified);
    assert_eq!(sim.opens().len(), 1);

    // A pause, a dead peer, then reading resumes: judged within two intervals of resuming (the
    // next heartbeat within one, its missing ACK one interval later).
    sim.set_paused(true);
    sim.peer.ack = false;
    sim.run_for(INTERVAL * 3);
    assert_eq!(sim.opens().len(), 1);
    let resumed_at = sim.at();
    sim.set_paused(false);
    sim.run_for(INTERVAL * 3);
    let aborted_at = sim
        .outputs_since(resumed_at)
        .find_map(|(t, o)| matches!(o, Output::Abort { .. }).then_some(t))
        .expect("the dead peer was judged");
    assert!(
        aborted_at - resumed_at <= INTERVAL * 2,
        "{:?}",
        aborted_at - resumed_at
    );
    assert!(
        aborted_at - resumed_at >= INTERVAL,
        "not before a whole interval of reading"
    );
    assert_eq!(sim.max_live, 1);
}

#[test]
fn a_pause_since_the_oldest_unanswered_heartbeat_forgives_it() {
    let cfg = config();
    let mut sim = Sim::new(cfg, 26);
    sim.input(Input::Start);
    sim.run_until_identified();
    sim.peer.ack = false;
    // Just after an unanswered heartbeat, reading pauses for a moment and resumes.
    let at = sim.conn.poll_timeout().expect("next beat") - sim.base;
    sim.run_until(at + Duration::from_millis(1));
    assert!(
        sim.log
            .last()
            .is_some_and(|(t, o)| *t == at && is_heartbeat(o))
    );
    sim.set_paused(true);
    sim.run_for(Duration::from_millis(10));
    sim.set_paused(false);
    // One interval after that heartbeat: not judged (its ACK may have been waiting unread).
    sim.run_until(at + INTERVAL + Duration::from_millis(1));
    assert_eq!(sim.count(|o| matches!(o, Output::Abort { .. })), 0);
    // The heartbeat sent at that beat, after reading resumed, is judged one interval later.
    sim.run_until(at + INTERVAL * 2 + Duration::from_millis(1));
    let aborts: Vec<_> = sim
        .log
        .iter()
        .filter(|(_, o)| matches!(o, Output::Abort { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(aborts, vec![at + INTERVAL * 2]);
}

#[test]
fn a_transport_fault_restarts_a_connecting_transport_and_other_reasons_are_absorbed() {
    let cfg = Config {
        gate_new_sessions: true,
        ..config()
    };
    // Steps into the connecting phases: opened (awaiting hello), greeted (awaiting the
    // permit), permitted (handshaking).
    for phase in [
        Phase::AwaitingHello,
        Phase::AwaitingPermit,
        Phase::Identifying,
    ] {
        for reason in [
            RestartReason::Requested,
            RestartReason::HealthMonitor,
            RestartReason::ProtocolError,
            RestartReason::TransportFault,
        ] {
            let mut sim = Sim::new(cfg, 27);
            // Nothing answers on its own: the test walks the phases by hand.
            let t0 = sim.now;
            sim.conn.handle_input(t0, Input::Start);
            let Some(Output::Open { conn: id, .. }) = sim.conn.poll_output() else {
                panic!("open expected")
            };
            sim.conn.handle_input(t0, Input::Opened(id));
            if phase != Phase::AwaitingHello {
                let hello = Signal::Hello { interval: INTERVAL };
                sim.conn.handle_input(
                    t0,
                    Input::Signal {
                        conn: id,
                        signal: hello,
                    },
                );
            }
            if phase == Phase::Identifying {
                sim.conn.handle_input(t0, Input::PermitGranted(id));
            }
            while sim.conn.poll_output().is_some() {}
            assert_eq!(sim.conn.phase(), phase);
            sim.conn.handle_input(t0, Input::Restart(reason));
            let outputs: Vec<_> = std::iter::from_fn(|| sim.conn.poll_output()).collect();
            if reason == RestartReason::TransportFault {
                assert_eq!(sim.conn.state(), State::Draining, "{phase:?}");
                assert!(outputs.contains(&Output::Close {
                    conn: id,
                    code: RULES.keep_resumable_code
                }));
                sim.conn.handle_input(
                    t0,
                    Input::Closed {
                        conn: id,
                        code: None,
                    },
                );
                assert_eq!(sim.conn.phase(), Phase::BackingOff);
                let at = sim.conn.poll_timeout().expect("a reconnect is scheduled");
                sim.conn.handle_timeout(at);
                let reopened = std::iter::from_fn(|| sim.conn.poll_output())
                    .any(|o| matches!(o, Output::Open { conn, .. } if conn > id));
                assert!(reopened, "{phase:?}: a new transport after the fault");
            } else {
                assert_eq!(sim.conn.phase(), phase, "{reason:?} is absorbed");
                assert!(outputs.is_empty());
            }
        }
    }
}

#[test]
fn max_attempts_gives_up_once() {
    let cfg = Config {
        max_attempts: Some(3),
        ..config()
    };
    let mut sim = Sim::new(cfg, 9);
    sim.peer.accept_open = false;
    sim.input(Input::Start);
    sim.run_for(Duration::from_secs(600));
    assert_eq!(sim.opens().len(), 3);
    assert_eq!(sim.conn.phase(), Phase::Failed);
    assert_eq!(
        sim.conn.status().gave_up,
        Some(GiveUpReason::MaxAttempts { attempts: 3 })
    );
    assert_eq!(
        sim.count(|o| matches!(o, Output::Event(Event::GaveUp(_)))),
        1
    );
}

#[test]
fn stop_reaches_closed_in_bounded_time_from_every_state_and_stays() {
    let cfg = config();
    // Stop at every step of a connection's life, with a peer that never answers closes.
    for step in 0..12 {
        for intent in [StopIntent::EndSession, StopIntent::KeepResumable] {
            let mut sim = Sim::new(cfg, 10);
            sim.peer.answer_close = false;
            sim.input(Input::Start);
            for _ in 0..step {
                sim.run_for(sim.peer.latency);
            }
            let state = sim.conn.state();
            sim.input(Input::Stop(intent));
            sim.run_for(cfg.drain_deadline);
            assert_eq!(sim.conn.state(), State::Closed, "stop in {state:?}");
            assert!(sim.live.is_empty());
            sim.run_for(Duration::from_secs(3600));
            assert_eq!(sim.conn.state(), State::Closed, "stays closed");
            assert_eq!(sim.conn.poll_timeout(), None);
            assert_eq!(sim.opens().len(), 1, "no open after stop ({state:?})");
            if intent == StopIntent::EndSession {
                assert!(!sim.conn.is_resumable());
            }
        }
    }
    // Stale (ACKs stopped) and Draining (a restart under way): the same bound.
    for draining in [false, true] {
        let mut sim = Sim::new(cfg, 10);
        sim.input(Input::Start);
        sim.run_until_identified();
        sim.peer.answer_close = false;
        sim.peer.ack = false;
        for _ in 0..1000 {
            if sim.conn.state() == State::Stale {
                break;
            }
            sim.run_for(Duration::from_millis(100));
        }
        assert_eq!(sim.conn.state(), State::Stale);
        if draining {
            sim.input(Input::Restart(RestartReason::HealthMonitor));
            assert_eq!(sim.conn.state(), State::Draining);
        }
        sim.input(Input::Stop(StopIntent::KeepResumable));
        sim.run_for(cfg.drain_deadline);
        assert_eq!(sim.conn.state(), State::Closed);
        sim.run_for(Duration::from_secs(3600));
        assert_eq!(sim.conn.state(), State::Closed);
        assert_eq!(sim.opens().len(), 1);
        assert!(sim.conn.is_resumable());
    }
}

#[test]
fn the_permit_gate_holds_identifies_but_not_resumes() {
    let cfg = Config {
        gate_new_sessions: true,
        ..config()
    };
    let mut sim = Sim::new(cfg, 11);
    sim.input(Input::Start);
    sim.run_until_identified();
    let permit_at = sim
        .log
        .iter()
        .position(|(_, o)| matches!(o, Output::AcquirePermit { .. }))
        .expect("a permit was asked");
    let identify_at = sim
        .log
        .iter()
        .position(|(_, o)| is_identify(o))
        .expect("identify");
    assert!(permit_at < identify_at);

    // A resume does not ask.
    sim.input(Input::Restart(RestartReason::Requested));
    sim.run_until_identified();
    assert_eq!(sim.count(|o| matches!(o, Output::AcquirePermit { .. })), 1);

    // A refused permit closes with the end-session code and gives up.
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Signal {
        conn,
        signal: Signal::SessionInvalidated { resumable: false },
    });
    sim.peer.grant_permits = false;
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.conn.phase(), Phase::Failed);
    assert_eq!(sim.conn.status().gave_up, Some(GiveUpReason::PermitDenied));
    assert_eq!(sim.count(is_identify), 1);
    assert_eq!(sim.max_live, 1);
}

#[test]
fn heartbeats_flow_while_waiting_for_a_permit() {
    let cfg = Config {
        gate_new_sessions: true,
        ..config()
    };
    let mut conn = Connection::new(cfg, 12);
    let t0 = Instant::now();
    conn.handle_input(t0, Input::Start);
    let Some(Output::Open { conn: id, .. }) = conn.poll_output() else {
        panic!("open expected")
    };
    conn.handle_input(t0, Input::Opened(id));
    let hello = Signal::Hello { interval: INTERVAL };
    conn.handle_input(
        t0,
        Input::Signal {
            conn: id,
            signal: hello,
        },
    );
    while conn.poll_output().is_some() {}
    assert_eq!(conn.phase(), Phase::AwaitingPermit);
    // Ten intervals without a permit: a beat each time, each answered.
    let mut beats = 0;
    for _ in 0..10 {
        let at = conn.poll_timeout().expect("next beat");
        conn.handle_timeout(at);
        while let Some(out) = conn.poll_output() {
            if matches!(
                out,
                Output::Send {
                    payload: Payload::Heartbeat,
                    ..
                }
            ) {
                beats += 1;
            }
        }
        conn.handle_input(
            at,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatAck,
            },
        );
    }
    assert_eq!(beats, 10);
    assert_eq!(conn.phase(), Phase::AwaitingPermit);
}

#[test]
fn spurious_and_early_timeouts_change_nothing() {
    let mut sim = Sim::new(config(), 13);
    sim.input(Input::Start);
    sim.run_until_identified();
    let at = sim.conn.poll_timeout().expect("next beat");
    let before = sim.conn.clone();
    for t in [
        sim.now,
        at - Duration::from_millis(1),
        at - Duration::from_nanos(1),
    ] {
        sim.conn.handle_timeout(t);
        assert_eq!(sim.conn.poll_output(), None);
        assert_eq!(sim.conn, before);
    }
    // Due: one beat; the same call repeated does nothing more.
    sim.conn.handle_timeout(at);
    assert!(matches!(
        sim.conn.poll_output(),
        Some(Output::Send {
            payload: Payload::Heartbeat,
            ..
        })
    ));
    let after = sim.conn.clone();
    sim.conn.handle_timeout(at);
    assert_eq!(sim.conn.poll_output(), None);
    assert_eq!(sim.conn, after);
}

#[test]
fn the_seed_decides_every_random_choice() {
    let run = |seed| {
        let mut sim = Sim::new(config(), seed);
        sim.peer.accept_open = false;
        sim.input(Input::Start);
        sim.run_for(Duration::from_secs(30));
        sim.log
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn a_restored_session_resumes_first_and_identifies_only_if_refused() {
    let mut sim = Sim::new(config(), 13);
    sim.conn = Connection::with_restored_session(config(), 13);
    assert!(sim.conn.is_resumable());
    sim.input(Input::Start);
    sim.run_for(Duration::from_millis(100));
    let opens = sim.opens();
    assert_eq!(opens.len(), 1);
    assert_eq!(
        opens[0].2,
        OpenMode::Resume,
        "the first connection must resume"
    );

    // The peer forgot the session: invalid, not resumable. The next connection identifies.
    let conn = sim.conn.live_transport().expect("live");
    sim.input(Input::Signal {
        conn,
        signal: Signal::SessionInvalidated { resumable: false },
    });
    sim.run_until_identified();
    let opens = sim.opens();
    assert_eq!(opens.last().map(|o| o.2), Some(OpenMode::Identify));
    assert_eq!(sim.max_live, 1);

    // Without a restored session the first connection identifies.
    let mut fresh = Sim::new(config(), 13);
    fresh.input(Input::Start);
    fresh.run_for(Duration::from_millis(100));
    assert_eq!(fresh.opens()[0].2, OpenMode::Identify);
}
