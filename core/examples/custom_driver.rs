//! A driver of your own for the lifecycle core, on plain threads and channels (no async
//! runtime): the loop every driver has, whatever its I/O.
//!
//! 1. Carry out every output (`poll_output` until `None`) after every mutation.
//! 2. Wait for the next transport event or the next deadline (`poll_timeout`), whichever
//!    comes first.
//! 3. Feed what happened (`handle_input` or `handle_timeout`) with the current time.
//!
//! The "transport" here is a thread that plays a tiny gateway over a channel, so the example
//! needs no network. It runs for a few heartbeats (a short interval), then stops the
//! connection and returns once the transport is confirmed gone.
//!
//! Run: `cargo run -p handover-core --example custom_driver`

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use handover_core::{
    Config, Connection, ConnectionId, Input, OpenMode, Output, Payload, Phase, Signal, StopIntent,
};

/// What the driver sends down to a transport.
enum Down {
    Send(Payload),
    Close(u16),
    Abort,
}

/// A fake transport: answers like a gateway would, reports back as core inputs.
fn transport(conn: ConnectionId, down: Receiver<Down>, up: Sender<Input>) {
    let signal = |signal| Input::Signal { conn, signal };
    let interval = Duration::from_millis(20);
    if up.send(Input::Opened(conn)).is_err() || up.send(signal(Signal::Hello { interval })).is_err()
    {
        return;
    }
    for msg in down {
        let reply = match msg {
            Down::Send(Payload::Handshake(mode)) => signal(Signal::HandshakeAccepted {
                resumed: mode == OpenMode::Resume,
            }),
            Down::Send(Payload::Heartbeat) => signal(Signal::HeartbeatAck),
            // The peer answers the close frame; the socket is then gone.
            Down::Close(code) => Input::Closed {
                conn,
                code: Some(code),
            },
            // An abort is reported at once.
            Down::Abort => Input::Closed { conn, code: None },
        };
        let gone = matches!(reply, Input::Closed { .. });
        if up.send(reply).is_err() || gone {
            return;
        }
    }
}

fn main() {
    let mut conn = Connection::new(Config::default(), 7);
    let (up_tx, up_rx) = mpsc::channel::<Input>();
    // The one transport that may be live, as the core's outputs describe it.
    let mut socket: Option<(ConnectionId, Sender<Down>)> = None;
    let mut heartbeats = 0;
    let mut stopping = false;

    conn.handle_input(Instant::now(), Input::Start);
    // Bounded: a few heartbeats at 20 ms, then the stop.
    for _ in 0..10_000 {
        // 1. Mutate-then-drain: carry out everything the core asked for, in order.
        while let Some(out) = conn.poll_output() {
            match out {
                Output::Open { conn: id, mode } => {
                    println!("open {id} ({mode:?})");
                    let (down_tx, down_rx) = mpsc::channel();
                    let up = up_tx.clone();
                    thread::spawn(move || transport(id, down_rx, up));
                    socket = Some((id, down_tx));
                }
                Output::Send { conn: id, payload } => {
                    if payload == Payload::Heartbeat {
                        heartbeats += 1;
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
                }
                // This driver has no identify queue: grant at once.
                Output::AcquirePermit { conn: id } => {
                    conn.handle_input(Instant::now(), Input::PermitGranted(id));
                }
                Output::Event(event) => println!("event {event:?}"),
            }
        }
        if stopping && conn.phase() == Phase::Stopped {
            println!("stopped: the transport is confirmed gone");
            return;
        }
        if heartbeats >= 3 && !stopping {
            stopping = true;
            conn.handle_input(Instant::now(), Input::Stop(StopIntent::EndSession));
            continue;
        }

        // 2. Wait for the transport or the next deadline.
        let wait = conn
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        // 3. Feed the fact in, with the current time.
        match up_rx.recv_timeout(wait) {
            Ok(input) => {
                if let Input::Closed { conn: id, .. } | Input::OpenFailed(id) = input
                    && socket.as_ref().is_some_and(|(live, _)| *live == id)
                {
                    socket = None;
                }
                conn.handle_input(Instant::now(), input);
            }
            Err(RecvTimeoutError::Timeout) => conn.handle_timeout(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
    eprintln!("did not stop in time");
    std::process::exit(1);
}

/// Hands a command to the transport `id`, if it is the live one.
fn down(socket: &Option<(ConnectionId, Sender<Down>)>, id: ConnectionId, msg: Down) {
    if let Some((live, tx)) = socket
        && *live == id
    {
        // A transport that already ended dropped its receiver; its `Closed` is on the way.
        let _ = tx.send(msg);
    }
}
