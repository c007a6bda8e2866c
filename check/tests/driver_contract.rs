//! The checker names a driver that breaks its side of the contract in a way only the core can
//! see: a second end report for a transport, or an input for an id no `Open` carried.

use std::time::{Duration, Instant};

use handover_check::{Checker, Invariant, Step};
use handover_core::{
    Config, Event, Input, InputKind, Output, RejectedInput, Rejection, Signal, StopIntent,
    TransportId,
};

/// Starts a checked machine and takes its first `Open`, as a driver would.
fn started(now: Instant) -> (Checker, TransportId) {
    let mut core = Checker::new(Config::default(), 7);
    core.handle_input(now, Input::Start).expect("start");
    let mut open = None;
    while let Some(out) = core.poll_output() {
        if let Output::Open { conn, .. } = out {
            open = Some(conn);
        }
    }
    (core, open.expect("an open after start"))
}

fn drain(core: &mut Checker) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

#[test]
fn a_second_closed_is_named_as_the_drivers_fault() {
    let now = Instant::now();
    let (mut core, conn) = started(now);
    core.socket_opened(conn).expect("socket for the open");
    core.handle_input(now, Input::Opened(conn)).expect("opened");
    core.socket_dropped(conn).expect("socket dropped");
    core.handle_input(now, Input::Closed { conn, code: None })
        .expect("the first end report is the contract");
    drain(&mut core);
    // Frames decoded before the socket was dropped are harmless and pass.
    core.handle_input(
        now,
        Input::Signal {
            conn,
            signal: Signal::HeartbeatAck,
        },
    )
    .expect("a late frame from a dead socket is not a breach");
    assert!(drain(&mut core).is_empty());

    let second = Input::Closed {
        conn,
        code: Some(1000),
    };
    let violation = core
        .handle_input(now, second)
        .expect_err("a second Closed breaks the contract");
    assert_eq!(violation.invariant, Invariant::Driver);
    assert_eq!(violation.invariant.to_string(), "driver contract");
    assert!(
        violation.message.contains("rejected") && violation.message.contains(&conn.to_string()),
        "{violation}"
    );
    assert!(matches!(violation.step, Step::Input { input, .. } if input == second));
    assert_eq!(
        violation.outputs,
        [Output::Event(Event::InputRejected {
            input: RejectedInput {
                kind: InputKind::Closed,
                conn
            },
            reason: Rejection::SecondEndReport,
        })]
    );
    assert_eq!(core.machine().rejected_inputs(), 1);
    // The history shows the first report.
    assert!(violation.history.iter().any(|s| matches!(
        s,
        Step::Input {
            input: Input::Closed { code: None, .. },
            ..
        }
    )));
    // Sticky: the checker keeps answering with the same violation.
    assert_eq!(
        core.handle_input(now, Input::Stop(StopIntent::EndSession)),
        Err(violation)
    );
}

#[test]
fn an_open_failed_after_closed_is_a_second_end_report_too() {
    let now = Instant::now();
    let (mut core, conn) = started(now);
    core.handle_input(now, Input::OpenFailed(conn))
        .expect("the open failed");
    drain(&mut core);
    let violation = core
        .handle_input(now, Input::OpenFailed(conn))
        .expect_err("reported twice");
    assert_eq!(violation.invariant, Invariant::Driver);
    assert!(matches!(
        violation.outputs[..],
        [Output::Event(Event::InputRejected {
            reason: Rejection::SecondEndReport,
            ..
        })]
    ));
}

#[test]
fn an_id_never_opened_is_named_as_the_drivers_fault() {
    let now = Instant::now();
    let (mut core, conn) = started(now);
    core.handle_input(now, Input::Opened(conn)).expect("opened");
    core.handle_input(
        now,
        Input::Signal {
            conn,
            signal: Signal::Hello {
                interval: Duration::from_secs(41),
            },
        },
    )
    .expect("hello");
    drain(&mut core);
    let made_up = TransportId(conn.0 + 1);
    let violation = core
        .handle_input(
            now,
            Input::Signal {
                conn: made_up,
                signal: Signal::HeartbeatAck,
            },
        )
        .expect_err("an id no Open carried");
    assert_eq!(violation.invariant, Invariant::Driver);
    assert_eq!(
        violation.outputs,
        [Output::Event(Event::InputRejected {
            input: RejectedInput {
                kind: InputKind::Signal,
                conn: made_up
            },
            reason: Rejection::NeverOpened,
        })]
    );
    // The machine carries on with its live transport untouched.
    assert_eq!(core.machine().live_transport(), Some(conn));
}
