//! The steady-state heartbeat/ACK path allocates nothing: a counting global allocator proves
//! it with a count, not a timing.

use std::time::{Duration, Instant};

use handover_core::{
    Config, Connection, Event, Input, Output, Payload, Signal, State, TransportId,
};

mod counting_alloc;

use counting_alloc::allocations;

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn heartbeat_and_ack_allocate_nothing() {
    let mut conn = Connection::new(Config::default(), 99);
    let mut now = Instant::now();
    conn.handle_input(now, Input::Start);
    let Some(Output::Open { conn: id, .. }) = conn.poll_output() else {
        panic!("open expected")
    };
    for input in [
        Input::Opened(id),
        Input::Signal {
            conn: id,
            signal: Signal::Hello {
                interval: Duration::from_millis(41_250),
            },
        },
        Input::Signal {
            conn: id,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
    ] {
        conn.handle_input(now, input);
        while conn.poll_output().is_some() {}
    }
    assert_eq!(conn.state(), State::Identified);

    let mut cycle = |now: &mut Instant| {
        let at = conn.poll_timeout().expect("next beat");
        *now = at;
        conn.handle_timeout(at);
        let mut beats = 0;
        while let Some(out) = conn.poll_output() {
            if let Output::Send {
                payload: Payload::Heartbeat,
                ..
            } = out
            {
                beats += 1;
            }
        }
        let ack_at = at + Duration::from_millis(30);
        conn.handle_input(
            ack_at,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatAck,
            },
        );
        // A server-requested beat and its ACK, the other steady-state path.
        conn.handle_input(
            ack_at,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatRequested,
            },
        );
        while conn.poll_output().is_some() {}
        conn.handle_input(
            ack_at,
            Input::Signal {
                conn: id,
                signal: Signal::HeartbeatAck,
            },
        );
        let _ = conn.status();
        beats
    };
    // Warm up.
    for _ in 0..10 {
        cycle(&mut now);
    }
    let before = allocations();
    let mut beats = 0;
    for _ in 0..10_000 {
        beats += cycle(&mut now);
    }
    let allocated = allocations() - before;
    assert_eq!(beats, 10_000);
    assert_eq!(conn.state(), State::Identified);
    assert_eq!(allocated, 0, "allocations on the heartbeat/ack path");
}

/// A driver that breaks the contract does not make the core allocate either: a rejected input
/// only queues one event in the room reserved at construction.
#[test]
fn rejecting_inputs_allocates_nothing() {
    let mut conn = Connection::new(Config::default(), 99);
    let now = Instant::now();
    conn.handle_input(now, Input::Start);
    let Some(Output::Open { conn: id, .. }) = conn.poll_output() else {
        panic!("open expected")
    };
    while conn.poll_output().is_some() {}
    let never = TransportId(id.0 + 1);
    let before = allocations();
    for _ in 0..10_000 {
        conn.handle_input(
            now,
            Input::Closed {
                conn: never,
                code: None,
            },
        );
        let rejected = conn.poll_output();
        assert!(
            matches!(rejected, Some(Output::Event(Event::InputRejected { .. }))),
            "{rejected:?}"
        );
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations while rejecting inputs"
    );
    assert_eq!(conn.rejected_inputs(), 10_000);
    assert_eq!(conn.live_transport(), Some(id));
}
