//! The read side of `Connection`, pinned state by state: `sendable_transport`, `status`,
//! `phase`, `is_resumable`, `Debug`, and the equality and hashing that model checkers rely on to
//! deduplicate states. Also the timeout contract at the edge: a deadline fires at its instant,
//! never a nanosecond before, and one late call fires everything that came due.
//!
//! These tests were written against mutants that the scenario, fuzz and model-check suites let
//! live (see "Testing" in docs/architecture.md); each asserts behaviour through the public API.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use handover_core::{
    CloseRules, Config, Connection, Event, Input, OpenMode, Output, Phase, Signal, State,
    StopIntent, TransportId,
};

const INTERVAL: Duration = Duration::from_secs(40);

fn config() -> Config {
    Config {
        close_rules: CloseRules::GENERIC,
        ..Config::default()
    }
}

fn drain(conn: &mut Connection) -> Vec<Output> {
    std::iter::from_fn(|| conn.poll_output())
        .take(1_000)
        .collect()
}

fn hash_of(conn: &Connection) -> u64 {
    // `DefaultHasher::new` uses fixed keys: the same value always gives the same hash.
    let mut h = DefaultHasher::new();
    conn.hash(&mut h);
    h.finish()
}

fn open_id(outputs: &[Output]) -> TransportId {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Open { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("an Open among the outputs")
}

/// Start, open, hello: the handshake is sent, the connection is handshaking.
fn handshaking(conn: &mut Connection, now: Instant) -> TransportId {
    conn.handle_input(now, Input::Start);
    let id = open_id(&drain(conn));
    conn.handle_input(now, Input::Opened(id));
    conn.handle_input(
        now,
        Input::Signal {
            conn: id,
            signal: Signal::Hello { interval: INTERVAL },
        },
    );
    drain(conn);
    assert_eq!(
        conn.state(),
        State::Connecting(handover_core::ConnectingPhase::Handshaking)
    );
    id
}

/// Up to an accepted handshake at `now`.
fn identified(conn: &mut Connection, now: Instant) -> TransportId {
    let id = handshaking(conn, now);
    conn.handle_input(
        now,
        Input::Signal {
            conn: id,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
    );
    drain(conn);
    assert_eq!(conn.state(), State::Identified);
    id
}

/// Calls `handle_timeout` at every deadline until the state is `want`, at most 20 times.
fn run_until(conn: &mut Connection, want: State) -> Instant {
    for _ in 0..20 {
        let at = conn.poll_timeout().expect("a deadline while running");
        conn.handle_timeout(at);
        drain(conn);
        if conn.state() == want {
            return at;
        }
    }
    panic!("never reached {want:?}: {:?}", conn.status());
}

#[test]
fn only_an_accepted_handshake_makes_a_connection_sendable() {
    let now = Instant::now();
    let mut conn = Connection::new(config(), 1);
    assert_eq!(conn.sendable_transport(), None);
    let id = handshaking(&mut conn, now);
    assert_eq!(conn.live_transport(), Some(id));
    assert_eq!(
        conn.sendable_transport(),
        None,
        "not before the handshake is accepted"
    );
    conn.handle_input(
        now,
        Input::Signal {
            conn: id,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
    );
    drain(&mut conn);
    assert_eq!(conn.sendable_transport(), Some(id), "identified");
    // No ACK: after the probe grace the connection shows stale and stays sendable.
    run_until(&mut conn, State::Stale);
    assert_eq!(conn.sendable_transport(), Some(id), "stale");
    conn.handle_input(now, Input::Stop(StopIntent::KeepResumable));
    drain(&mut conn);
    assert_eq!(conn.state(), State::Draining);
    assert_eq!(conn.live_transport(), Some(id));
    assert_eq!(conn.sendable_transport(), None, "draining");
    conn.handle_input(
        now,
        Input::Closed {
            conn: id,
            code: None,
        },
    );
    drain(&mut conn);
    assert_eq!(conn.sendable_transport(), None, "closed");
}

#[test]
fn status_reports_identified_since_while_identified_or_stale() {
    let t0 = Instant::now();
    let mut conn = Connection::new(config(), 2);
    let id = handshaking(&mut conn, t0);
    assert_eq!(conn.status().identified_since, None);
    let accepted = t0 + Duration::from_millis(300);
    conn.handle_input(
        accepted,
        Input::Signal {
            conn: id,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
    );
    drain(&mut conn);
    let status = conn.status();
    assert_eq!(status.identified_since, Some(accepted));
    assert_eq!(status.phase, Phase::Receiving);
    assert_eq!(status.connection, Some(id));
    assert!(status.resumable);
    assert_eq!(status.ready, 1);
    run_until(&mut conn, State::Stale);
    assert_eq!(
        conn.status().identified_since,
        Some(accepted),
        "still the same session"
    );
    assert_eq!(conn.status().phase, Phase::Stale);
    let at = conn.poll_timeout().expect("a deadline while stale");
    conn.handle_input(at, Input::Restart(handover_core::RestartReason::Requested));
    drain(&mut conn);
    assert_eq!(conn.state(), State::Draining);
    assert_eq!(conn.status().identified_since, None, "not while draining");
}

#[test]
fn status_reports_when_the_reconnect_is_due() {
    let t0 = Instant::now();
    let mut conn = Connection::new(config(), 3);
    let id = identified(&mut conn, t0);
    assert_eq!(conn.status().reconnect_at, None);
    let lost = t0 + Duration::from_secs(1);
    conn.handle_input(
        lost,
        Input::Closed {
            conn: id,
            code: Some(4000),
        },
    );
    let outputs = drain(&mut conn);
    let delay = outputs
        .iter()
        .find_map(|o| match o {
            Output::Event(Event::ReconnectScheduled { delay, .. }) => Some(*delay),
            _ => None,
        })
        .expect("a reconnect is scheduled");
    let status = conn.status();
    assert_eq!(status.phase, Phase::BackingOff);
    assert_eq!(status.reconnect_at, Some(lost + delay));
    assert_eq!(status.reconnect_at, conn.poll_timeout());
    assert_eq!(status.last_close_code, Some(4000));
    conn.handle_timeout(lost + delay);
    drain(&mut conn);
    assert_eq!(conn.status().phase, Phase::Connecting);
    assert_eq!(conn.status().reconnect_at, None);
}

#[test]
fn phase_tells_never_started_from_stopped() {
    let now = Instant::now();
    let mut conn = Connection::new(config(), 4);
    assert_eq!(conn.phase(), Phase::NotConnected);
    conn.handle_input(now, Input::Start);
    let id = open_id(&drain(&mut conn));
    assert_eq!(conn.phase(), Phase::Connecting);
    conn.handle_input(now, Input::Stop(StopIntent::EndSession));
    drain(&mut conn);
    conn.handle_input(now, Input::OpenFailed(id));
    drain(&mut conn);
    assert_eq!(conn.state(), State::Closed);
    assert_eq!(conn.phase(), Phase::Stopped);
}

#[test]
fn is_resumable_follows_the_session() {
    let now = Instant::now();
    let mut fresh = Connection::new(config(), 5);
    assert!(!fresh.is_resumable());
    let id = identified(&mut fresh, now);
    assert!(fresh.is_resumable());
    fresh.handle_input(now, Input::Stop(StopIntent::EndSession));
    drain(&mut fresh);
    fresh.handle_input(
        now,
        Input::Closed {
            conn: id,
            code: None,
        },
    );
    assert!(!fresh.is_resumable());

    let mut restored = Connection::with_restored_session(config(), 5);
    assert!(restored.is_resumable());
    restored.handle_input(now, Input::Start);
    let outputs = drain(&mut restored);
    assert!(
        outputs.contains(&Output::Open {
            conn: TransportId(1),
            mode: OpenMode::Resume
        }),
        "{outputs:?}"
    );
}

#[test]
fn debug_names_the_state_and_the_session() {
    let now = Instant::now();
    let mut conn = Connection::new(config(), 6);
    identified(&mut conn, now);
    let text = format!("{conn:?}");
    assert!(text.starts_with("Connection"), "{text}");
    assert!(text.contains("Identified"), "{text}");
    assert!(text.contains("session: true"), "{text}");
    assert!(text.contains("pending_outputs: 0"), "{text}");
}

/// Builds equal-or-different pairs through the public API, for equality and hashing.
fn pairs() -> Vec<(&'static str, Connection, Connection)> {
    let now = Instant::now();
    let mut out = Vec::new();

    // Only the pending outputs differ: one was drained, the other not.
    let mut a = Connection::new(config(), 7);
    a.handle_input(now, Input::Start);
    let b = a.clone();
    drain(&mut a);
    out.push(("pending outputs", a, b));

    // Only the shared machine data differs: a session held or not, both closed and idle.
    out.push((
        "session held",
        Connection::new(config(), 7),
        Connection::with_restored_session(config(), 7),
    ));

    // Only the random generator differs (the seed).
    out.push((
        "seed",
        Connection::new(config(), 7),
        Connection::new(config(), 8),
    ));

    // Only the state's own data differs: a heartbeat out (drained) or not.
    let mut a = Connection::new(config(), 7);
    let id = identified(&mut a, now);
    let mut b = a.clone();
    b.handle_input(
        now,
        Input::Signal {
            conn: id,
            signal: Signal::HeartbeatRequested,
        },
    );
    drain(&mut b);
    assert_eq!(a.state(), b.state());
    out.push(("heartbeat outstanding", a, b));
    out
}

#[test]
fn connections_that_would_behave_differently_are_unequal_and_hash_apart() {
    for (what, a, b) in pairs() {
        assert_eq!(a, a.clone(), "{what}: a clone is equal");
        assert_eq!(
            hash_of(&a),
            hash_of(&a.clone()),
            "{what}: a clone hashes equal"
        );
        assert_ne!(a, b, "{what}");
        assert_ne!(b, a, "{what}");
        assert_ne!(hash_of(&a), hash_of(&b), "{what}");
    }
}

#[test]
fn statistics_are_neither_compared_nor_hashed() {
    // The same inputs, except that one heartbeat's ACK comes later: the latency and the last
    // ACK differ, every future behaviour is the same.
    let t0 = Instant::now();
    let run = |ack_after: Duration| {
        let mut conn = Connection::new(config(), 9);
        let id = identified(&mut conn, t0);
        conn.handle_input(
            t0,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatRequested,
            },
        );
        conn.handle_input(
            t0 + ack_after,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatAck,
            },
        );
        drain(&mut conn);
        conn
    };
    let (a, b) = (
        run(Duration::from_millis(10)),
        run(Duration::from_millis(900)),
    );
    assert_ne!(
        a.status().latency,
        b.status().latency,
        "the runs differ in statistics"
    );
    assert_eq!(a, b);
    assert_eq!(hash_of(&a), hash_of(&b));
}

#[test]
fn a_deadline_fires_at_its_instant_and_not_before() {
    let t0 = Instant::now();
    let mut conn = Connection::new(config(), 10);
    identified(&mut conn, t0);
    let at = conn.poll_timeout().expect("the first beat is scheduled");
    let before = conn.clone();
    conn.handle_timeout(at - Duration::from_nanos(1));
    assert_eq!(conn, before, "nothing is due a nanosecond early");
    assert_eq!(conn.poll_output(), None);
    conn.handle_timeout(at);
    assert!(
        drain(&mut conn)
            .iter()
            .any(|o| matches!(o, Output::Send { .. })),
        "the beat goes out at its instant"
    );
    assert!(conn.poll_timeout().is_some_and(|next| next > at));
}

#[test]
fn one_late_timeout_call_fires_every_deadline_that_came_due() {
    // Whatever the state, a single call at `now` leaves no deadline at or before `now`: the
    // machine never sleeps on a deadline already in the past.
    let t0 = Instant::now();
    for seed in 0..50 {
        let mut conn = Connection::new(config(), seed);
        identified(&mut conn, t0);
        for late in [1u64, 3, 5, 21, 39, 41, 60, 79, 81, 200] {
            let mut c = conn.clone();
            let now = t0 + Duration::from_secs(late);
            for _ in 0..4 {
                c.handle_timeout(now);
                drain(&mut c);
                assert!(
                    c.poll_timeout().is_none_or(|d| d > now),
                    "seed {seed}, {late} s: {:?} still due",
                    c.status()
                );
                // Confirm whatever was closed or aborted, as a driver must.
                match (c.state(), c.live_transport()) {
                    (State::Draining, Some(id)) => {
                        c.handle_input(
                            now,
                            Input::Closed {
                                conn: id,
                                code: None,
                            },
                        );
                        drain(&mut c);
                    }
                    _ => break,
                }
            }
        }
    }
}

#[test]
fn a_zero_drain_deadline_aborts_in_the_same_timeout_call() {
    // The hello deadline passes: the machine closes, and with no time allowed for the close
    // handshake the abort is due at once. One `handle_timeout` call must do both.
    let t0 = Instant::now();
    let cfg = Config {
        drain_deadline: Duration::ZERO,
        ..config()
    };
    let mut conn = Connection::new(cfg, 11);
    conn.handle_input(t0, Input::Start);
    let id = open_id(&drain(&mut conn));
    conn.handle_input(t0, Input::Opened(id));
    drain(&mut conn);
    let at = conn.poll_timeout().expect("the hello deadline");
    assert_eq!(at, t0 + cfg.hello_timeout);
    conn.handle_timeout(at);
    let outputs = drain(&mut conn);
    assert!(
        outputs.contains(&Output::Close {
            conn: id,
            code: 4000
        }),
        "{outputs:?}"
    );
    assert!(outputs.contains(&Output::Abort { conn: id }), "{outputs:?}");
    assert_eq!(
        conn.poll_timeout(),
        None,
        "nothing left to wait for but the confirmation"
    );
}

#[test]
fn a_zero_open_timeout_aborts_the_reconnect_in_the_same_timeout_call() {
    let t0 = Instant::now();
    let cfg = Config {
        open_timeout: Duration::ZERO,
        ..config()
    };
    let mut conn = Connection::new(cfg, 12);
    conn.handle_input(t0, Input::Start);
    let first = open_id(&drain(&mut conn));
    // The first open is aborted by the next timeout call (its deadline is `t0`).
    conn.handle_timeout(t0);
    assert!(drain(&mut conn).contains(&Output::Abort { conn: first }));
    conn.handle_input(t0, Input::OpenFailed(first));
    drain(&mut conn);
    let at = conn.poll_timeout().expect("a reconnect is scheduled");
    conn.handle_timeout(at);
    let outputs = drain(&mut conn);
    let second = open_id(&outputs);
    assert!(
        outputs.contains(&Output::Abort { conn: second }),
        "{outputs:?}"
    );
}

#[test]
fn a_late_timeout_call_keeps_the_heartbeat_schedule() {
    // Beats follow every interval from the first one: a driver that wakes up late sends the
    // beat then, but the next one stays on the original grid instead of sliding.
    let t0 = Instant::now();
    let mut conn = Connection::new(config(), 13);
    let id = identified(&mut conn, t0);
    let first = conn.poll_timeout().expect("the first beat");
    let late = Duration::from_secs(3);
    conn.handle_timeout(first + late);
    assert!(drain(&mut conn).contains(&Output::Send {
        conn: id,
        payload: handover_core::Payload::Heartbeat
    }));
    conn.handle_input(
        first + late,
        Input::Signal {
            conn: id,
            signal: Signal::HeartbeatAck,
        },
    );
    drain(&mut conn);
    assert_eq!(conn.poll_timeout(), Some(first + INTERVAL));
}

#[test]
fn restart_opens_from_idle_but_not_from_failed_or_backing_off() {
    let t0 = Instant::now();
    let restart = Input::Restart(handover_core::RestartReason::Requested);

    // Never started: a restart connects, like a start.
    let mut conn = Connection::new(config(), 14);
    conn.handle_input(t0, restart);
    assert_eq!(open_id(&drain(&mut conn)), TransportId(1));

    // Stopped: "stay closed until the next Start or Restart".
    let mut conn = Connection::new(config(), 14);
    let id = identified(&mut conn, t0);
    conn.handle_input(t0, Input::Stop(StopIntent::KeepResumable));
    conn.handle_input(
        t0,
        Input::Closed {
            conn: id,
            code: None,
        },
    );
    drain(&mut conn);
    assert_eq!(conn.phase(), Phase::Stopped);
    conn.handle_input(t0, restart);
    let outputs = drain(&mut conn);
    assert!(
        outputs.contains(&Output::Open {
            conn: TransportId(2),
            mode: OpenMode::Resume
        }),
        "{outputs:?}"
    );

    // Backing off: absorbed, the scheduled reconnect stays as it was.
    let mut conn = Connection::new(config(), 14);
    let id = identified(&mut conn, t0);
    conn.handle_input(
        t0,
        Input::Closed {
            conn: id,
            code: None,
        },
    );
    drain(&mut conn);
    assert_eq!(conn.phase(), Phase::BackingOff);
    let before = conn.clone();
    conn.handle_input(t0, restart);
    assert_eq!(conn, before);

    // Gave up: only an explicit start leaves.
    let cfg = Config {
        max_attempts: Some(1),
        ..config()
    };
    let mut conn = Connection::new(cfg, 14);
    conn.handle_input(t0, Input::Start);
    let id = open_id(&drain(&mut conn));
    conn.handle_input(t0, Input::OpenFailed(id));
    drain(&mut conn);
    assert_eq!(conn.phase(), Phase::Failed);
    conn.handle_input(t0, restart);
    assert_eq!(conn.poll_output(), None);
    assert_eq!(conn.phase(), Phase::Failed);
}

#[test]
fn a_session_invalidated_before_the_open_is_confirmed_is_forgotten() {
    // Out of contract (a signal before `Opened`), but the session is gone all the same: the
    // next connection identifies, after the documented wait.
    let t0 = Instant::now();
    let cfg = config();
    let mut conn = Connection::with_restored_session(cfg, 15);
    conn.handle_input(t0, Input::Start);
    let outputs = drain(&mut conn);
    let id = open_id(&outputs);
    assert!(outputs.contains(&Output::Open {
        conn: id,
        mode: OpenMode::Resume
    }));
    conn.handle_input(
        t0,
        Input::Signal {
            conn: id,
            signal: Signal::SessionInvalidated { resumable: false },
        },
    );
    assert!(!conn.is_resumable());
    conn.handle_input(t0, Input::OpenFailed(id));
    let outputs = drain(&mut conn);
    let (mode, delay) = outputs
        .iter()
        .find_map(|o| match o {
            Output::Event(Event::ReconnectScheduled { mode, delay }) => Some((*mode, *delay)),
            _ => None,
        })
        .expect("a reconnect is scheduled");
    assert_eq!(mode, OpenMode::Identify);
    assert!(delay >= cfg.invalid_session_wait_min, "{delay:?}");
}

#[test]
fn the_first_heartbeat_waits_a_random_fraction_of_the_interval() {
    let t0 = Instant::now();
    let mut firsts = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let mut conn = Connection::new(config(), seed);
        let id = handshaking(&mut conn, t0);
        // Nothing is due at the hello itself: no heartbeat goes out with the handshake.
        conn.handle_timeout(t0);
        assert!(
            !drain(&mut conn).contains(&Output::Send {
                conn: id,
                payload: handover_core::Payload::Heartbeat
            }),
            "seed {seed}"
        );
        let first = conn.poll_timeout().expect("the first beat");
        assert!(first >= t0 && first <= t0 + INTERVAL, "seed {seed}");
        firsts.insert(first);
    }
    assert!(firsts.len() > 10, "jittered per seed: {firsts:?}");
}
