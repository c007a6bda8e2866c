//! A driver of your own for the lifecycle core, on plain threads and channels (no async
//! runtime): the loop every driver has, whatever its I/O.
//!
//! 1. Carry out every output (`poll_output` until `None`) after every mutation.
//! 2. Wait for the next transport event or the next deadline (`poll_timeout`), whichever
//!    comes first.
//! 3. Feed what happened (`handle_input` or `handle_timeout`) with the current time.
//!
//! The "transport" here is a thread that plays a tiny gateway over a channel, so the example
//! needs no network. It survives a zombie gateway and a dropped connection, runs for a few
//! heartbeats (a short interval), then stops the connection and returns once the transport
//! is confirmed gone.
//!
//! The driver is generic over [`Core`]: the bare [`Connection`] when it runs, and
//! [`handover_check::Checker`] under `cargo test`, where the tests at the bottom run it
//! against seeded misbehaving gateways and check every step against the core's invariants,
//! and show that the checker catches a deliberately broken variant of the driver.
//!
//! Run: `cargo run -p handover-core --example custom_driver`

use std::convert::Infallible;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use handover_core::{
    Config, Connection, Input, OpenMode, Output, Payload, Phase, Signal, StopIntent, TransportId,
};

/// What the driver needs from the core. The bare machine never fails; a checker wrapping it
/// (in the tests) fails with the first broken invariant.
trait Core {
    /// Why a call failed.
    type Error;
    fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), Self::Error>;
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error>;
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn phase(&self) -> Phase;
    /// The driver created the socket of `conn` (a checker holds it to its sockets).
    fn socket_opened(&mut self, _conn: TransportId) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The driver dropped the socket of `conn`.
    fn socket_dropped(&mut self, _conn: TransportId) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl Core for Connection {
    type Error = Infallible;
    fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), Infallible> {
        Connection::handle_input(self, now, input);
        Ok(())
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Infallible> {
        Connection::handle_timeout(self, now);
        Ok(())
    }
    fn poll_output(&mut self) -> Option<Output> {
        Connection::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Connection::poll_timeout(self)
    }
    fn phase(&self) -> Phase {
        Connection::phase(self)
    }
}

/// What the driver sends down to a transport.
enum Down {
    Send(Payload),
    Close(u16),
    Abort,
}

/// How the fake gateway behind one transport behaves.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// Answers every handshake, heartbeat and close.
    Healthy,
    /// Acknowledges this many heartbeats, then goes silent: no more ACKs and no answer to a
    /// close frame (only an abort ends it).
    Zombie { acks: u32 },
    /// Drops the connection without a close frame after this many messages from the driver.
    Drops { after: u32 },
}

/// A fake transport: answers like a gateway would, reports back as core inputs. Its last act
/// is to report the transport gone; after that nothing of it is left.
fn transport(
    conn: TransportId,
    peer: Peer,
    interval: Duration,
    down: Receiver<Down>,
    up: Sender<Input>,
) {
    let signal = |signal| Input::Signal { conn, signal };
    if up.send(Input::Opened(conn)).is_err() || up.send(signal(Signal::Hello { interval })).is_err()
    {
        return;
    }
    let (mut acks, mut received) = (0, 0);
    for msg in down {
        received += 1;
        let silent = matches!(peer, Peer::Zombie { acks: n } if acks >= n);
        let reply = match msg {
            _ if matches!(peer, Peer::Drops { after } if received > after) => {
                Some(Input::Closed { conn, code: None })
            }
            Down::Send(_) if silent => None,
            Down::Send(Payload::Handshake(mode)) => Some(signal(Signal::HandshakeAccepted {
                resumed: mode == OpenMode::Resume,
            })),
            Down::Send(Payload::Heartbeat) => {
                acks += 1;
                Some(signal(Signal::HeartbeatAck))
            }
            Down::Close(_) if silent => None,
            // The peer answers the close frame; the socket is then gone.
            Down::Close(code) => Some(Input::Closed {
                conn,
                code: Some(code),
            }),
            // An abort is reported at once.
            Down::Abort => Some(Input::Closed { conn, code: None }),
        };
        let Some(reply) = reply else { continue };
        let gone = matches!(reply, Input::Closed { .. });
        if up.send(reply).is_err() || gone {
            return;
        }
    }
}

/// A defect planted in the driver, to show that the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// "Aborting is local, so the socket is as good as gone": reports `Closed` to the core
    /// as soon as it orders the abort, while the transport still runs.
    #[cfg_attr(not(test), allow(dead_code))]
    ClosedBeforeDrop,
}

/// What one run did.
#[derive(Debug, Default)]
struct Report {
    opens: u32,
    heartbeats: u32,
    stopped: bool,
}

/// Runs the driver loop: starts, restarts once after `restart_after` heartbeats (if any),
/// stops after `stop_after` heartbeats, and returns once the stop is confirmed. `peer(n)`
/// says how the gateway behind the `n`-th transport behaves.
fn run<C: Core>(
    mut core: C,
    interval: Duration,
    peer: impl Fn(u32) -> Peer,
    restart_after: Option<u32>,
    stop_after: u32,
    flaw: Flaw,
) -> Result<Report, C::Error> {
    let (up_tx, up_rx) = mpsc::channel::<Input>();
    // The one transport that may be live, as the core's outputs describe it.
    let mut socket: Option<(TransportId, Sender<Down>)> = None;
    let mut report = Report::default();
    let mut restarted = false;
    let mut stopping = false;

    core.handle_input(Instant::now(), Input::Start)?;
    // Bounded: a few heartbeats at a short interval, then the stop.
    for _ in 0..10_000 {
        // 1. Mutate-then-drain: carry out everything the core asked for, in order.
        while let Some(out) = core.poll_output() {
            match out {
                Output::Open { conn: id, mode } => {
                    println!("open {id} ({mode:?})");
                    report.opens += 1;
                    let (down_tx, down_rx) = mpsc::channel();
                    let up = up_tx.clone();
                    let behaviour = peer(report.opens);
                    core.socket_opened(id)?;
                    thread::spawn(move || transport(id, behaviour, interval, down_rx, up));
                    socket = Some((id, down_tx));
                }
                Output::Send { conn: id, payload } => {
                    if payload == Payload::Heartbeat {
                        report.heartbeats += 1;
                    }
                    println!("send {payload:?} on {id}");
                    down(&socket, id, Down::Send(payload));
                }
                Output::Close { conn: id, code } => {
                    println!("close {id} with {code}");
                    down(&socket, id, Down::Close(code));
                }
                Output::Abort { conn: id } => {
                    println!("abort {id}");
                    down(&socket, id, Down::Abort);
                    if flaw == Flaw::ClosedBeforeDrop {
                        core.handle_input(
                            Instant::now(),
                            Input::Closed {
                                conn: id,
                                code: None,
                            },
                        )?;
                    }
                }
                // This driver has no identify queue: grant at once.
                Output::AcquirePermit { conn: id } => {
                    core.handle_input(Instant::now(), Input::PermitGranted(id))?;
                }
                Output::Event(event) => println!("event {event:?}"),
            }
        }
        if stopping && core.phase() == Phase::Stopped {
            println!("stopped: the transport is confirmed gone");
            report.stopped = true;
            return Ok(report);
        }
        if restart_after.is_some_and(|n| report.heartbeats >= n) && !restarted {
            restarted = true;
            let reason = handover_core::RestartReason::HealthMonitor;
            core.handle_input(Instant::now(), Input::Restart(reason))?;
            continue;
        }
        if report.heartbeats >= stop_after && !stopping {
            stopping = true;
            core.handle_input(Instant::now(), Input::Stop(StopIntent::EndSession))?;
            continue;
        }

        // 2. Wait for the transport or the next deadline.
        let wait = core
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        // 3. Feed the fact in, with the current time.
        match up_rx.recv_timeout(wait) {
            Ok(input) => {
                if let Input::Closed { conn: id, .. } | Input::OpenFailed(id) = input
                    && socket.as_ref().is_some_and(|(live, _)| *live == id)
                {
                    // The transport's last act was this report: drop its end, then say so.
                    socket = None;
                    core.socket_dropped(id)?;
                }
                core.handle_input(Instant::now(), input)?;
            }
            Err(RecvTimeoutError::Timeout) => core.handle_timeout(Instant::now())?,
            Err(RecvTimeoutError::Disconnected) => return Ok(report),
        }
    }
    Ok(report)
}

/// Hands a command to the transport `id`, if it is the live one.
fn down(socket: &Option<(TransportId, Sender<Down>)>, id: TransportId, msg: Down) {
    if let Some((live, tx)) = socket
        && *live == id
    {
        // A transport that already ended dropped its receiver; its `Closed` is on the way.
        let _ = tx.send(msg);
    }
}

fn main() {
    let conn = Connection::new(Config::default(), 7);
    let interval = Duration::from_millis(20);
    // The first gateway goes silent after two ACKs (a zombie: judged and aborted one interval
    // later), the second drops the connection, the third is healthy.
    let peer = |n| match n {
        1 => Peer::Zombie { acks: 2 },
        2 => Peer::Drops { after: 4 },
        _ => Peer::Healthy,
    };
    let Ok(report) = run(conn, interval, peer, None, 10, Flaw::None);
    if !report.stopped {
        eprintln!("did not stop in time");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    //! The driver under the contract checker: every call it makes into the core, and every
    //! socket it creates and drops, is checked against invariants 1-8.

    use super::*;
    use handover_check::{Checker, Invariant, Violation};

    /// Under test, the driver calls the checker where it would call the machine, and reports
    /// its sockets.
    impl Core for Checker {
        type Error = Violation;
        fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), Violation> {
            Checker::handle_input(self, now, input)
        }
        fn handle_timeout(&mut self, now: Instant) -> Result<(), Violation> {
            Checker::handle_timeout(self, now)
        }
        fn poll_output(&mut self) -> Option<Output> {
            Checker::poll_output(self)
        }
        fn poll_timeout(&self) -> Option<Instant> {
            Checker::poll_timeout(self)
        }
        fn phase(&self) -> Phase {
            self.machine().phase()
        }
        fn socket_opened(&mut self, conn: TransportId) -> Result<(), Violation> {
            Checker::socket_opened(self, conn)
        }
        fn socket_dropped(&mut self, conn: TransportId) -> Result<(), Violation> {
            Checker::socket_dropped(self, conn)
        }
    }

    /// Short timers, so a run with a zombie, a drop and a restart takes a few hundred ms.
    fn config() -> Config {
        Config {
            open_timeout: Duration::from_millis(500),
            hello_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_millis(500),
            drain_deadline: Duration::from_millis(50),
            reconnect_spread: Duration::from_millis(2),
            ..Config::default()
        }
    }

    const INTERVAL: Duration = Duration::from_millis(10);

    /// A gateway per seed: each transport drawn healthy, zombie or dropping, the first one
    /// always a zombie (so every run aborts at least once).
    fn peers(seed: u64) -> impl Fn(u32) -> Peer {
        move |n| {
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1000) + u64::from(n));
            match (n, rng.u8(0..3)) {
                (1, _) => Peer::Zombie {
                    acks: rng.u32(0..3),
                },
                (_, 0) => Peer::Healthy,
                (_, 1) => Peer::Zombie {
                    acks: rng.u32(0..3),
                },
                _ => Peer::Drops {
                    after: rng.u32(1..6),
                },
            }
        }
    }

    #[test]
    fn the_driver_keeps_the_contract_against_misbehaving_gateways() {
        for seed in 0..6 {
            let checker = Checker::new(config(), seed);
            let restart = (seed % 2 == 0).then_some(4);
            match run(checker, INTERVAL, peers(seed), restart, 12, Flaw::None) {
                Ok(report) => {
                    assert!(report.stopped, "seed {seed}: did not stop");
                    assert!(
                        report.opens >= 2,
                        "seed {seed}: the zombie was not replaced"
                    );
                }
                Err(violation) => panic!("seed {seed}: {violation:#}"),
            }
        }
    }

    #[test]
    fn the_checker_catches_closed_reported_before_the_socket_is_dropped() {
        let checker = Checker::new(config(), 1);
        let violation = run(
            checker,
            INTERVAL,
            peers(1),
            None,
            12,
            Flaw::ClosedBeforeDrop,
        )
        .expect_err("the planted flaw must be caught");
        assert_eq!(
            violation.invariant,
            Invariant::OneTransport,
            "{violation:#}"
        );
        assert!(
            matches!(
                violation.step,
                handover_check::Step::Input {
                    input: Input::Closed { .. },
                    ..
                }
            ),
            "{violation:#}"
        );
        // The history shows the abort that came before.
        assert!(!violation.history.is_empty());
    }
}
