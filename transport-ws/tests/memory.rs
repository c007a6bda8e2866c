//! The in-memory transport: the same contract as the WebSocket driver, in virtual time.

mod common;

use std::time::{Duration, Instant};

use common::peer::LinePeer;
use common::{LineCodec, check_one_end_per_transport, ends_of, transport_events};
use handover_core::{
    Config, Connection, Event, GiveUpReason, RestartReason, State, StopIntent, TransportId,
};
use handover_transport_ws::memory::{MemoryConfig, MemoryDriver, PeerAction, PermitDecision};
use handover_transport_ws::{DriverEvent, Message, SendError, TransportError, TransportEvent};

type Sim = MemoryDriver<LineCodec, LinePeer>;

fn sim_with(config: Config, mem: MemoryConfig, peer: LinePeer) -> Sim {
    let core = Connection::new(config, 7);
    MemoryDriver::new(core, LineCodec::new("ws://sim/"), peer, mem, Instant::now())
}

fn sim(peer: LinePeer) -> Sim {
    sim_with(Config::default(), MemoryConfig::default(), peer)
}

fn identified(s: &Sim) -> bool {
    s.core().state() == State::Identified
}

fn items(events: &[DriverEvent<String>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Item(i) => Some(i.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn clean_close_handshake_reports_the_peer_code_once() {
    let mut s = sim(LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    assert_eq!(s.peer().identifies, 1);

    s.stop(StopIntent::EndSession).unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), Sim::is_stopped)
            .unwrap()
    );

    let events = s.take_events();
    let facts = transport_events(&events);
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(1000)
        })
    );
    assert_eq!(s.peer().close_frames, vec![(TransportId(1), 1000)]);
    assert_eq!(s.peer().disconnects, vec![TransportId(1)]);
    assert_eq!(s.max_live_transports(), 1);
    assert_eq!(s.max_peer_connections(), 1);
    assert_eq!(s.live_transports(), 0);
}

#[test]
fn unanswered_close_is_aborted_at_the_drain_deadline() {
    let config = Config {
        drain_deadline: Duration::from_secs(3),
        ..Config::default()
    };
    let mut peer = LinePeer::new(1000);
    peer.ignore_close = true;
    let mut s = sim_with(config, MemoryConfig::default(), peer);
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    let stop_at = s.now();
    s.stop(StopIntent::KeepResumable).unwrap();
    // The peer keeps talking after our close frame: those messages must not be decoded.
    s.peer_mut()
        .act(PeerAction::Send(Message::text("event late")));
    assert!(
        s.run_until_condition(Duration::from_secs(10), Sim::is_stopped)
            .unwrap()
    );
    assert_eq!(s.now() - stop_at, Duration::from_secs(3));

    let events = s.take_events();
    assert!(
        items(&events).is_empty(),
        "data after our close was decoded"
    );
    let facts = transport_events(&events);
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert_eq!(ends_of(&facts, TransportId(1)), 1);
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: None
        })
    );
    assert_eq!(s.peer().close_frames, vec![(TransportId(1), 4000)]);
    assert_eq!(s.peer().disconnects, vec![TransportId(1)]);
}

#[test]
fn peer_drop_without_close_resumes_on_a_new_transport() {
    let mut s = sim(LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.peer_mut().act(PeerAction::Drop);
    s.step().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(30), |s| {
            identified(s) && s.core().live_transport() == Some(TransportId(2))
        })
        .unwrap()
    );

    let events = s.take_events();
    let facts = transport_events(&events);
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert!(facts.contains(&TransportEvent::Closed {
        conn: TransportId(1),
        code: None
    }));
    assert!(events.iter().any(|e| matches!(
        e,
        DriverEvent::Core(Event::Resumed {
            conn: TransportId(2)
        })
    )));
    assert_eq!((s.peer().identifies, s.peer().resumes), (1, 1));
    assert_eq!(s.peer().disconnects, vec![TransportId(1)]);
    assert_eq!(s.max_peer_connections(), 1);
}

#[test]
fn a_fault_injected_between_steps_acts_at_once_not_at_the_next_deadline() {
    let mut s = sim(LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.take_events();
    // The next heartbeat is up to a second away; the drop must not wait for it.
    s.peer_mut().act(PeerAction::Drop);
    s.run_for(Duration::from_millis(1)).unwrap();
    let facts = transport_events(&s.take_events());
    assert!(
        facts.contains(&TransportEvent::Closed {
            conn: TransportId(1),
            code: None
        }),
        "{facts:?}"
    );
}

#[test]
fn peer_close_frame_is_answered_and_reported_with_its_code() {
    let mut s = sim(LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.peer_mut().act(PeerAction::Close(4009));
    s.step().unwrap();
    let facts = transport_events(&s.take_events());
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(4009)
        })
    );
    // The peer got our close reply, then the disconnect.
    s.run_for(Duration::ZERO).unwrap();
    assert_eq!(s.peer().close_frames, vec![(TransportId(1), 4009)]);
    assert_eq!(s.peer().disconnects, vec![TransportId(1)]);
    assert_eq!(s.status().last_close_code, Some(4009));
}

#[test]
fn refused_connections_fail_to_open_then_back_off() {
    let mut peer = LinePeer::new(1000);
    peer.refuse = true;
    let mut s = sim(peer);
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), |s| s.peer().connects >= 3)
            .unwrap()
    );
    s.peer_mut().refuse = false;
    assert!(
        s.run_until_condition(Duration::from_secs(120), identified)
            .unwrap()
    );

    let facts = transport_events(&s.take_events());
    let failed = facts
        .iter()
        .filter(|f| matches!(f, TransportEvent::OpenFailed { .. }))
        .count();
    assert!(failed >= 3, "{facts:?}");
    assert_eq!(check_one_end_per_transport(&facts), failed);
    // Refused connections were never accepted, so the peer saw no disconnects.
    assert!(s.peer().disconnects.is_empty());
}

#[test]
fn zombie_peer_is_detected_and_replaced() {
    let config = Config {
        probe_grace: Duration::from_secs(1),
        drain_deadline: Duration::from_secs(1),
        ..Config::default()
    };
    let mut s = sim_with(config, MemoryConfig::default(), LinePeer::new(500));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.peer_mut().zombie = true;
    assert!(
        s.run_until_condition(Duration::from_secs(10), |s| s.peer().connects == 2)
            .unwrap()
    );
    s.peer_mut().zombie = false;
    assert!(
        s.run_until_condition(Duration::from_secs(10), identified)
            .unwrap()
    );
    let events = s.take_events();
    assert!(events.iter().any(|e| matches!(
        e,
        DriverEvent::Core(Event::StateChanged {
            to: State::Stale,
            ..
        })
    )));
    assert_eq!(check_one_end_per_transport(&transport_events(&events)), 1);
    assert_eq!(s.peer().resumes, 1);
    assert_eq!(s.max_peer_connections(), 1);
}

#[test]
fn latency_delays_every_delivery() {
    let mem = MemoryConfig {
        latency: Duration::from_millis(50),
        ..MemoryConfig::default()
    };
    let mut s = sim_with(Config::default(), mem, LinePeer::new(10_000));
    let t0 = s.now();
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(1), |s| {
            s.core().state() != State::Connecting(handover_core::ConnectingPhase::Opening)
        })
        .unwrap()
    );
    // Connect to the peer and accept back: one round trip.
    assert_eq!(s.now() - t0, Duration::from_millis(100));
    assert!(
        s.run_until_condition(Duration::from_secs(1), identified)
            .unwrap()
    );
    // Hello arrives with the accept's latency, identify goes out, ready comes back.
    assert_eq!(s.now() - t0, Duration::from_millis(200));

    let stop_at = s.now();
    s.stop(StopIntent::EndSession).unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(1), Sim::is_stopped)
            .unwrap()
    );
    assert_eq!(s.now() - stop_at, Duration::from_millis(100));
}

#[test]
fn abort_while_connecting_reports_open_failed_and_the_peer_sees_it_gone() {
    let config = Config {
        open_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let mem = MemoryConfig {
        latency: Duration::from_millis(200),
        ..MemoryConfig::default()
    };
    let mut s = sim_with(config, mem, LinePeer::new(1000));
    s.start().unwrap();
    s.run_for(Duration::from_millis(300)).unwrap();
    let facts = transport_events(&s.take_events());
    assert_eq!(
        facts,
        vec![
            TransportEvent::Opening {
                conn: TransportId(1)
            },
            TransportEvent::OpenFailed {
                conn: TransportId(1)
            }
        ]
    );
    // The connect had reached the peer; the disconnect follows one latency after the abort.
    s.run_for(Duration::from_millis(200)).unwrap();
    assert_eq!(s.peer().disconnects, vec![TransportId(1)]);
    assert!(s.peer().live.is_empty());
}

#[test]
fn oversize_message_is_a_typed_error_and_ends_the_transport() {
    let mem = MemoryConfig {
        max_message_size: 64,
        ..MemoryConfig::default()
    };
    let mut s = sim_with(Config::default(), mem, LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.peer_mut().act(PeerAction::Send(Message::text(format!(
        "event {}",
        "x".repeat(100)
    ))));
    s.step().unwrap();
    let events = s.take_events();
    assert!(events.iter().any(|e| matches!(
        e,
        DriverEvent::Error(TransportError::TooLarge {
            size: 106,
            max: 64,
            ..
        })
    )));
    assert!(items(&events).is_empty());
    let facts = transport_events(&events);
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: None
        })
    );
    assert!(
        s.run_until_condition(Duration::from_secs(30), identified)
            .unwrap()
    );
    assert_eq!(s.peer().resumes, 1);
}

#[test]
fn decode_errors_are_reported_and_not_fatal() {
    let mut s = sim(LinePeer::new(1000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.peer_mut().act(PeerAction::Send(Message::text("garbage")));
    s.peer_mut()
        .act(PeerAction::Send(Message::text("event after")));
    s.step().unwrap();
    let events = s.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DriverEvent::Error(TransportError::Decode { .. })))
    );
    assert_eq!(items(&events), vec!["after".to_owned()]);
    assert!(identified(&s));
}

#[test]
fn send_follows_the_driver_rules() {
    let mut s = sim(LinePeer::new(1000));
    assert!(matches!(
        s.send("early".into()),
        Err(SendError::NotIdentified)
    ));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(5), identified)
            .unwrap()
    );
    s.send("hi".into()).unwrap();
    assert!(matches!(s.send("x".repeat(100)), Err(SendError::Codec(_))));
    s.run_for(Duration::ZERO).unwrap();
    let cmds: Vec<_> = s
        .peer()
        .received
        .iter()
        .filter(|(_, t)| t.starts_with("cmd"))
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(cmds, vec!["cmd hi".to_owned()]);
}

#[test]
fn permits_delay_or_deny_new_sessions() {
    let config = Config {
        gate_new_sessions: true,
        ..Config::default()
    };
    let mut s = sim_with(config, MemoryConfig::default(), LinePeer::new(60_000));
    s.set_permits(|_| PermitDecision::GrantAfter(Duration::from_secs(2)));
    let t0 = s.now();
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(10), identified)
            .unwrap()
    );
    assert_eq!(s.now() - t0, Duration::from_secs(2));

    let mut s = sim_with(config, MemoryConfig::default(), LinePeer::new(60_000));
    s.set_permits(|_| PermitDecision::Deny);
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(10), Sim::is_stopped)
            .unwrap()
    );
    assert_eq!(s.status().gave_up, Some(GiveUpReason::PermitDenied));
    assert_eq!(s.peer().identifies, 0);
    assert_eq!(
        check_one_end_per_transport(&transport_events(&s.take_events())),
        1
    );
}

/// Restarts, stops and peer faults at pseudo-random virtual instants: never two transports, and
/// exactly one end per transport.
fn storm(seed: u64) -> (Vec<String>, Duration) {
    let config = Config {
        drain_deadline: Duration::from_millis(400),
        probe_grace: Duration::from_millis(300),
        ..Config::default()
    };
    let mem = MemoryConfig {
        latency: Duration::from_millis(7),
        ..MemoryConfig::default()
    };
    let mut s = sim_with(config, mem, LinePeer::new(250));
    let mut rng = fastrand_like(seed);
    s.start().unwrap();
    for _ in 0..300 {
        s.run_for(Duration::from_millis(rng() % 200)).unwrap();
        match rng() % 10 {
            0..=3 => s.restart(RestartReason::HealthMonitor).unwrap(),
            4 => s.stop(StopIntent::KeepResumable).unwrap(),
            5 => s.start().unwrap(),
            6 => s.peer_mut().act(PeerAction::Drop),
            7 => s.peer_mut().ignore_close = !s.peer().ignore_close,
            8 => s.peer_mut().zombie = !s.peer().zombie,
            _ => s.peer_mut().act(PeerAction::Close(4000)),
        }
    }
    s.peer_mut().ignore_close = false;
    s.stop(StopIntent::EndSession).unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(10), Sim::is_stopped)
            .unwrap()
    );
    s.run_for(Duration::from_secs(1)).unwrap();
    let events = s.take_events();
    let facts = transport_events(&events);
    let ended = check_one_end_per_transport(&facts);
    assert!(ended > 10, "storm too quiet: {ended} transports");
    assert_eq!(s.max_live_transports(), 1);
    assert_eq!(s.max_peer_connections(), 1);
    assert_eq!(s.peer().max_live, 1);
    assert!(s.peer().live.is_empty());
    let trace = events.iter().map(|e| format!("{e:?}")).collect();
    (trace, s.elapsed())
}

/// A tiny deterministic generator (xorshift), so the test needs no extra dependency.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn restart_storm_never_overlaps_transports() {
    for seed in 0..20 {
        storm(seed);
    }
}

#[test]
fn same_seed_same_run() {
    let a = storm(42);
    let b = storm(42);
    assert_eq!(a, b);
    let c = storm(43);
    assert_ne!(a.0, c.0);
}

/// The peer closes; returns the instant it did and the run, with the client still lingering.
fn peer_closes(mem: MemoryConfig) -> (Sim, Instant) {
    let mut s = sim_with(Config::default(), mem, LinePeer::new(10_000));
    s.start().unwrap();
    assert!(
        s.run_until_condition(Duration::from_secs(1), identified)
            .unwrap()
    );
    s.take_events();
    let t0 = s.now();
    s.peer_mut().act(PeerAction::Close(4009));
    // The frame arrives one latency later; the reply is out, the link still lives.
    s.run_for(Duration::from_millis(60)).unwrap();
    assert_eq!(
        s.peer().close_frames,
        vec![],
        "the reply is still on its way"
    );
    assert_eq!(
        s.live_transports(),
        1,
        "the client lingers for the peer's EOF"
    );
    assert_eq!(
        ends_of(&transport_events(&s.take_events()), TransportId(1)),
        0
    );
    (s, t0)
}

#[test]
fn after_a_peer_close_the_link_lingers_until_the_peer_eof() {
    let mem = MemoryConfig {
        latency: Duration::from_millis(50),
        ..MemoryConfig::default()
    };
    let (mut s, t0) = peer_closes(mem);
    assert!(
        s.run_until_condition(Duration::from_secs(1), |s| s.live_transports() == 0)
            .unwrap()
    );
    // Frame out (50 ms), reply back (100 ms: the peer closes TCP), EOF in (150 ms).
    assert_eq!(s.now() - t0, Duration::from_millis(150));
    let conn = TransportId(1);
    let facts = transport_events(&s.take_events());
    let code = Some(4009);
    assert_eq!(facts.first(), Some(&TransportEvent::Closed { conn, code }));
    assert_eq!(s.peer().close_frames, vec![(conn, 4009)]);
    assert_eq!(s.peer().disconnects, vec![conn]);
}

#[test]
fn after_a_peer_close_the_link_is_dropped_at_close_timeout_without_eof() {
    let mem = MemoryConfig {
        latency: Duration::from_millis(50),
        close_timeout: Duration::from_millis(30),
        ..MemoryConfig::default()
    };
    let (mut s, t0) = peer_closes(mem);
    s.run_for(Duration::from_millis(20)).unwrap();
    // Frame in at 50 ms, linger deadline at 80 ms; the EOF would come at 150 ms.
    assert_eq!(s.live_transports(), 0);
    assert_eq!(s.now() - t0, Duration::from_millis(80));
    let conn = TransportId(1);
    let facts = transport_events(&s.take_events());
    let code = Some(4009);
    assert_eq!(facts, vec![TransportEvent::Closed { conn, code }]);
    s.run_for(Duration::from_millis(200)).unwrap();
    assert_eq!(s.peer().disconnects[0], conn, "the peer sees it gone once");
    assert_eq!(
        s.peer().disconnects.iter().filter(|c| **c == conn).count(),
        1
    );
    assert_eq!(s.max_peer_connections(), 1);
}
