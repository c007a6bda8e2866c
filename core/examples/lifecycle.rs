//! One `Connection` through a bad day, in virtual time, with no network and no sleeping.
//!
//! A tiny in-process peer plays the gateway. The story: a normal identify; the peer stops
//! answering heartbeats (a zombie), which is detected and resumed; a restart whose close the
//! peer never answers (the drain deadline aborts it); a storm of 100 restarts inside one
//! millisecond; and finally a fatal close code. The timeline prints every state change and
//! output; the summary checks that no two transports were ever live, and the process exits
//! non-zero if an invariant broke.
//!
//! Run: `cargo run -p handover-core --example lifecycle`

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use handover_core::{
    CloseRules, Config, Connection, Event, Input, OpenMode, Output, Payload, Phase, RestartReason,
    Signal, TransportId,
};

const FATAL: u16 = 4004;
const HEARTBEAT: Duration = Duration::from_millis(41_250);
const LATENCY: Duration = Duration::from_millis(40);

/// The driver and the fake peer, with a virtual clock.
struct World {
    conn: Connection,
    start: Instant,
    now: Instant,
    /// Inputs the driver will report, with when (kept sorted).
    inbox: Vec<(Instant, Input)>,
    /// Peer behaviour, changed by the story.
    acks: bool,
    answers_close: bool,
    /// What the driver saw.
    live: BTreeSet<TransportId>,
    max_live: usize,
    opens: u32,
    identifies: u32,
    resumes: u32,
    broken: Vec<String>,
}

impl World {
    fn later(&mut self, after: Duration, input: Input) {
        let at = self.now + after;
        let i = self.inbox.partition_point(|(t, _)| *t <= at);
        self.inbox.insert(i, (at, input));
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        let ms = (self.now - self.start).as_secs_f64() * 1000.0;
        println!("{ms:>12.3} ms  {what}");
    }

    /// Mutate, then drain: every output is carried out before anything else happens.
    fn drain(&mut self) {
        while let Some(out) = self.conn.poll_output() {
            match out {
                Output::Open { conn, mode } => {
                    if !self.live.is_empty() {
                        self.broken
                            .push(format!("{conn} opened while {:?} live", self.live));
                    }
                    self.live.insert(conn);
                    self.max_live = self.max_live.max(self.live.len());
                    self.opens += 1;
                    self.log(format_args!("{conn} open ({mode:?})"));
                    self.later(LATENCY, Input::Opened(conn));
                    let hello = Signal::Hello {
                        interval: HEARTBEAT,
                    };
                    self.later(
                        2 * LATENCY,
                        Input::Signal {
                            conn,
                            signal: hello,
                        },
                    );
                }
                Output::Send { conn, payload } => {
                    let reply = match payload {
                        Payload::Handshake(mode) => {
                            match mode {
                                OpenMode::Identify => self.identifies += 1,
                                OpenMode::Resume => self.resumes += 1,
                            }
                            self.log(format_args!("{conn} send {mode:?}"));
                            Some(Signal::HandshakeAccepted {
                                resumed: mode == OpenMode::Resume,
                            })
                        }
                        Payload::Heartbeat => {
                            let answer = if self.acks { "" } else { " (no ack will come)" };
                            self.log(format_args!("{conn} heartbeat{answer}"));
                            self.acks.then_some(Signal::HeartbeatAck)
                        }
                    };
                    if let Some(signal) = reply {
                        self.later(2 * LATENCY, Input::Signal { conn, signal });
                    }
                }
                Output::Close { conn, code } => {
                    let answer = if self.answers_close {
                        ""
                    } else {
                        " (never answered)"
                    };
                    self.log(format_args!("{conn} close {code}{answer}"));
                    if self.answers_close {
                        let code = Some(code);
                        self.later(2 * LATENCY, Input::Closed { conn, code });
                    }
                }
                Output::Abort { conn } => {
                    self.log(format_args!("{conn} abort"));
                    self.later(Duration::ZERO, Input::Closed { conn, code: None });
                }
                Output::AcquirePermit { conn } => self.later(LATENCY, Input::PermitGranted(conn)),
                Output::Event(Event::StateChanged { from, to }) => {
                    self.log(format_args!("    {} -> {}", from.name(), to.name()));
                }
                Output::Event(event) => self.log(format_args!("    event {event:?}")),
            }
        }
    }

    fn input(&mut self, input: Input) {
        if let Input::Closed { conn, .. } | Input::OpenFailed(conn) = input {
            self.live.remove(&conn);
        }
        self.conn.handle_input(self.now, input);
        self.drain();
    }

    /// Advances virtual time by `d`, jumping from one scheduled input or timeout to the next.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000 {
            let input_at = self.inbox.first().map(|(t, _)| *t);
            let next = match (input_at, self.conn.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if input_at == Some(next) {
                let (_, input) = self.inbox.remove(0);
                self.input(input);
            } else {
                self.conn.handle_timeout(self.now);
                self.drain();
            }
        }
        self.now = end;
    }
}

fn main() -> ExitCode {
    let config = Config {
        close_rules: CloseRules {
            fatal: &[FATAL],
            ..CloseRules::GENERIC
        },
        ..Config::default()
    };
    let start = Instant::now();
    let mut w = World {
        conn: Connection::new(config, 2024),
        start,
        now: start,
        inbox: Vec::new(),
        acks: true,
        answers_close: true,
        live: BTreeSet::new(),
        max_live: 0,
        opens: 0,
        identifies: 0,
        resumes: 0,
        broken: Vec::new(),
    };

    println!("== 1. start: a normal identify");
    w.input(Input::Start);
    w.run(Duration::from_secs(90));

    println!("\n== 2. the peer stops acknowledging heartbeats (a zombie)");
    w.acks = false;
    let zombie = w.conn.live_transport();
    for _ in 0..10_000 {
        if w.conn.live_transport() != zombie {
            break;
        }
        w.run(Duration::from_millis(100));
    }
    // The zombie is gone; the next socket is healthy.
    w.acks = true;
    w.run(Duration::from_secs(60));

    println!("\n== 3. a restart whose close is never answered");
    w.answers_close = false;
    w.input(Input::Restart(RestartReason::Requested));
    w.run(Duration::from_secs(10));
    w.answers_close = true;

    println!("\n== 4. a health monitor restarts 100 times within one millisecond");
    let opens_before = w.opens;
    for _ in 0..100 {
        w.input(Input::Restart(RestartReason::HealthMonitor));
        w.run(Duration::from_micros(10));
    }
    w.run(Duration::from_secs(10));
    if w.opens - opens_before != 1 {
        w.broken.push(format!(
            "storm opened {} transports",
            w.opens - opens_before
        ));
    }

    println!("\n== 5. the peer closes with fatal code {FATAL}");
    let opens_before = w.opens;
    if let Some(conn) = w.conn.live_transport() {
        w.input(Input::Closed {
            conn,
            code: Some(FATAL),
        });
    }
    w.input(Input::Restart(RestartReason::HealthMonitor));
    w.run(Duration::from_secs(600));
    if w.opens != opens_before || w.conn.phase() != Phase::Failed {
        w.broken.push("a fatal close was retried".into());
    }

    let status = w.conn.status();
    println!("\n== summary");
    println!("max live transports: {}", w.max_live);
    println!("transports opened:   {}", w.opens);
    println!("identifies:          {}", w.identifies);
    println!("resumes:             {}", w.resumes);
    println!("final phase:         {}", status.phase.name());
    if let Some(reason) = status.gave_up {
        println!("gave up:             {reason}");
    }
    if w.max_live != 1 {
        w.broken
            .push(format!("{} transports live at once", w.max_live));
    }
    if (w.identifies, w.resumes) != (1, 3) {
        w.broken.push(format!(
            "expected 1 identify and 3 resumes, saw {} and {}",
            w.identifies, w.resumes
        ));
    }
    if w.broken.is_empty() {
        println!("invariants held");
        ExitCode::SUCCESS
    } else {
        for b in &w.broken {
            eprintln!("invariant broken: {b}");
        }
        ExitCode::FAILURE
    }
}
