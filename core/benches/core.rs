//! Benchmarks for the lifecycle core: one steady-state input, one heartbeat cycle, and a full
//! connection life (open -> identified -> drain -> closed).
//!
//! Run: `cargo bench -p handover-core --bench core`. Results are recorded in
//! `docs/benchmarks.md` ("Core").

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use handover_core::{Config, Connection, Input, Output, Signal, State, StopIntent, TransportId};

const INTERVAL: Duration = Duration::from_millis(41_250);

fn drain(conn: &mut Connection) -> Option<TransportId> {
    let mut opened = None;
    while let Some(out) = conn.poll_output() {
        if let Output::Open { conn, .. } = out {
            opened = Some(conn);
        }
        black_box(out);
    }
    opened
}

/// A connection in `Identified`, and its transport id.
fn identified(now: Instant) -> (Connection, TransportId) {
    let mut conn = Connection::new(Config::default(), 1);
    conn.handle_input(now, Input::Start);
    let id = drain(&mut conn).expect("open");
    for input in [
        Input::Opened(id),
        Input::Signal {
            conn: id,
            signal: Signal::Hello { interval: INTERVAL },
        },
        Input::Signal {
            conn: id,
            signal: Signal::HandshakeAccepted { resumed: false },
        },
    ] {
        conn.handle_input(now, input);
        drain(&mut conn);
    }
    assert_eq!(conn.state(), State::Identified);
    (conn, id)
}

fn steady_state(c: &mut Criterion) {
    let now = Instant::now();
    let (mut conn, id) = identified(now);
    let ack = Input::Signal {
        conn: id,
        signal: Signal::HeartbeatAck,
    };
    c.bench_function("heartbeat_ack_input", |b| {
        b.iter(|| {
            conn.handle_input(black_box(now), black_box(ack));
            black_box(conn.poll_output())
        })
    });

    let (mut conn, id) = identified(now);
    let ack = Input::Signal {
        conn: id,
        signal: Signal::HeartbeatAck,
    };
    c.bench_function("heartbeat_cycle", |b| {
        b.iter(|| {
            let at = conn.poll_timeout().expect("next beat");
            conn.handle_timeout(black_box(at));
            drain(&mut conn);
            conn.handle_input(at, black_box(ack));
        })
    });
}

fn full_cycle(c: &mut Criterion) {
    let now = Instant::now();
    let mut conn = Connection::new(Config::default(), 2);
    c.bench_function("full_cycle_open_identified_drain_closed", |b| {
        b.iter(|| {
            conn.handle_input(now, Input::Start);
            let id = drain(&mut conn).expect("open");
            for input in [
                Input::Opened(id),
                Input::Signal {
                    conn: id,
                    signal: Signal::Hello { interval: INTERVAL },
                },
                Input::Signal {
                    conn: id,
                    signal: Signal::HandshakeAccepted { resumed: true },
                },
                Input::Stop(StopIntent::KeepResumable),
                Input::Closed {
                    conn: id,
                    code: Some(4000),
                },
            ] {
                conn.handle_input(now, black_box(input));
                drain(&mut conn);
            }
            debug_assert_eq!(conn.state(), State::Closed);
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = steady_state, full_cycle
}
criterion_main!(benches);
