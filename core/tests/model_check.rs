//! Exhaustive model check of the lifecycle machine through its public API.
//!
//! From the initial state, every input (current, older and future connection ids, duplicate
//! closes, every signal, close codes of each class, permits, start/stop/restart) and every kind
//! of timeout (spurious, early, due, late) is applied in every order, breadth first, within a
//! virtual time horizon and a cap on connection ids. An independent observer tracks what the
//! outside world can see (live transports, whether a session is held, stop and give-up, the
//! attempt count, the oldest unanswered heartbeat) and checks invariants 1-8 of the design on
//! every state and on every (before, input, after, outputs) step. Inputs that break the driver
//! contract (a second end report, an id never opened) are explored too: each must be rejected
//! exactly as predicted here and leads nowhere. On a violation the shortest input path reaching
//! it is printed.
//!
//! The same checker runs on a deliberately broken wrapper to show it can fail, and the reachable
//! state transitions generate `docs/state-diagram.md`.

mod common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use handover_check::{self as check, Invariant, Machine, Observer, Violation};
use handover_core::{
    Backoff, Config, Connection, Event, GiveUpReason, Input, OpenMode, Output, Payload, Phase,
    RejectedInput, Rejection, RestartReason, Signal, State, StopIntent, TransportId,
};

use common::{FATAL_CODE, NEW_SESSION_CODE, RESUME_CODE, RULES};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Heartbeat interval announced by every hello in the model.
const INTERVAL: Duration = ms(4);

/// Small timers so that interesting interleavings fit in the horizon. With the permit gate off,
/// an accepted handshake ends the failure streak (the default); with it on, only a connection
/// identified for 5 ms does, so both rules are explored.
fn model_config(gate_new_sessions: bool) -> Config {
    Config {
        open_timeout: ms(3),
        hello_timeout: ms(3),
        handshake_timeout: ms(5),
        probe_grace: ms(2),
        drain_deadline: ms(2),
        backoff: Backoff {
            floor: ms(1),
            base: ms(2),
            cap: ms(4),
        },
        reconnect_spread: ms(1),
        stable_after: if gate_new_sessions { ms(5) } else { ms(0) },
        invalid_session_wait_min: ms(1),
        invalid_session_wait_max: ms(2),
        max_attempts: Some(2),
        close_rules: RULES,
        gate_new_sessions,
    }
}

/// Bounds that make the space finite.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Timeouts past this virtual time are not explored.
    horizon: Duration,
    /// States whose latest transport id is above this are checked but not expanded.
    max_conn: u64,
    /// Early or late timeout calls allowed on one path.
    skews: u8,
}

/// Two transports (so an older and a future id are always in play) and 10 ms of virtual time
/// (two and a half heartbeat intervals: enough to go stale, be judged dead, reconnect and be
/// identified again), with punctual timeout calls.
const BOUNDS: Bounds = Bounds {
    horizon: ms(10),
    max_conn: 2,
    skews: 0,
};

/// One transport over 16 ms (four heartbeat intervals), with one early or late timeout call
/// per path (a driver that falls behind; each multiplies the timelines). Together with
/// [`BOUNDS`] this keeps the run to seconds: recovery is fast, so two transports with skews
/// fit far more of their lives into a horizon than they used to.
const SKEWED_BOUNDS: Bounds = Bounds {
    horizon: ms(16),
    max_conn: 1,
    skews: 1,
};

/// With `MODEL_CHECK_DEEP=1`: three transports in 10 ms with skews (millions of states; run
/// it with `--release`). The state counts are then printed but not pinned.
const DEEP_BOUNDS: Bounds = Bounds {
    horizon: ms(10),
    max_conn: 3,
    skews: 1,
};

fn deep() -> bool {
    std::env::var_os("MODEL_CHECK_DEEP").is_some_and(|v| v == "1")
}

/// One step of the driver: an input, or a timeout call at an absolute virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Input(Input),
    Timeout(Duration),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Node<S> {
    sut: S,
    obs: Observer,
    now: Duration,
    /// Early or late timeout calls taken on the way here.
    skews: u8,
}

/// What a full exploration found.
#[derive(Debug, Clone)]
struct Explored {
    states: usize,
    transitions: usize,
    /// Reachable (from, to) pairs of [`State::name`], from `StateChanged` events.
    edges: BTreeSet<(&'static str, &'static str)>,
    /// Names of every reachable state.
    names: BTreeSet<&'static str>,
    /// Kinds of output seen (see [`output_kind`]).
    outputs: BTreeSet<&'static str>,
    /// Inputs rejected as a broken driver contract: second end reports, ids never opened.
    /// They are explored like any input but lead nowhere (the machine is left as it was).
    rejected: (usize, usize),
}

/// A label per kind of output, to show which behaviours the bounds reach.
fn output_kind(out: &Output) -> &'static str {
    match out {
        Output::Open {
            mode: OpenMode::Identify,
            ..
        } => "open identify",
        Output::Open {
            mode: OpenMode::Resume,
            ..
        } => "open resume",
        Output::AcquirePermit { .. } => "acquire permit",
        Output::Send {
            payload: Payload::Handshake(OpenMode::Identify),
            ..
        } => "send identify",
        Output::Send {
            payload: Payload::Handshake(OpenMode::Resume),
            ..
        } => "send resume",
        Output::Send {
            payload: Payload::Heartbeat,
            ..
        } => "send heartbeat",
        Output::Close { code: 1000, .. } => "close end session",
        Output::Close { .. } => "close keep resumable",
        Output::Abort { .. } => "abort",
        Output::Event(Event::StateChanged { .. }) => "state changed",
        Output::Event(Event::Ready { .. }) => "ready",
        Output::Event(Event::Resumed { .. }) => "resumed",
        Output::Event(Event::ReconnectScheduled {
            mode: OpenMode::Identify,
            ..
        }) => "reconnect identify",
        Output::Event(Event::ReconnectScheduled {
            mode: OpenMode::Resume,
            ..
        }) => "reconnect resume",
        Output::Event(Event::GaveUp(GiveUpReason::FatalClose { .. })) => "gave up fatal",
        Output::Event(Event::GaveUp(GiveUpReason::PermitDenied)) => "gave up permit denied",
        Output::Event(Event::GaveUp(GiveUpReason::MaxAttempts { .. })) => "gave up max attempts",
        Output::Event(_) => "other event",
    }
}

/// A property violation with the shortest input path from the initial state.
#[derive(Debug)]
struct Counterexample {
    violation: Box<Violation>,
    path: Vec<Step>,
    outputs: Vec<Output>,
}

impl std::fmt::Display for Counterexample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "violation: {}", self.violation)?;
        writeln!(f, "shortest path ({} steps):", self.path.len())?;
        let mut now = Duration::ZERO;
        for (i, step) in self.path.iter().enumerate() {
            match step {
                Step::Input(input) => writeln!(f, "  {i:>3}. at {now:?}: input {input:?}")?,
                Step::Timeout(t) => {
                    now = now.max(*t);
                    writeln!(f, "  {i:>3}. handle_timeout({t:?})")?
                }
            }
        }
        writeln!(f, "outputs of the last step: {:?}", self.outputs)
    }
}

/// Every step explored from a node.
fn steps<S: Machine>(node: &Node<S>, base: Instant, bounds: Bounds) -> Vec<Step> {
    let mut steps = vec![
        Step::Input(Input::Start),
        Step::Input(Input::Stop(StopIntent::EndSession)),
        Step::Input(Input::Stop(StopIntent::KeepResumable)),
        Step::Input(Input::Restart(RestartReason::HealthMonitor)),
        Step::Input(Input::Restart(RestartReason::TransportFault)),
    ];
    let last = node.obs.last_id();
    let mut ids = vec![TransportId(last), TransportId(last + 1)];
    if last > 1 {
        ids.push(TransportId(last - 1));
    }
    for conn in ids.into_iter().filter(|c| c.0 > 0) {
        steps.extend(
            [
                Input::Opened(conn),
                Input::OpenFailed(conn),
                Input::Closed { conn, code: None },
                Input::Closed {
                    conn,
                    code: Some(RESUME_CODE),
                },
                Input::Closed {
                    conn,
                    code: Some(NEW_SESSION_CODE),
                },
                Input::Closed {
                    conn,
                    code: Some(FATAL_CODE),
                },
                Input::PermitGranted(conn),
                Input::PermitDenied(conn),
                Input::Backpressure { conn, paused: true },
                Input::Backpressure {
                    conn,
                    paused: false,
                },
            ]
            .map(Step::Input),
        );
        for signal in [
            Signal::Hello { interval: INTERVAL },
            Signal::HandshakeAccepted { resumed: false },
            Signal::HandshakeAccepted { resumed: true },
            Signal::HeartbeatAck,
            Signal::HeartbeatRequested,
            Signal::ReconnectRequested,
            Signal::SessionInvalidated { resumable: true },
            Signal::SessionInvalidated { resumable: false },
        ] {
            steps.push(Step::Input(Input::Signal { conn, signal }));
        }
    }
    // Spurious (or exactly due) at the current time.
    steps.push(Step::Timeout(node.now));
    if let Some(at) = node.sut.poll_timeout() {
        let due = at.saturating_duration_since(base);
        // Due; and, once per path, 1 ms early (a no-op that moves time) or 3 ms late (a
        // driver that falls behind and must catch up).
        steps.push(Step::Timeout(due));
        if node.skews < bounds.skews {
            steps.extend([due.saturating_sub(ms(1)), due + ms(3)].map(Step::Timeout));
        }
        steps.retain(|s| !matches!(s, Step::Timeout(t) if *t != node.now && (*t <= node.now || *t > bounds.horizon)));
    }
    steps
}

/// Applies `step` to `before`, checks it with the observer, and returns the successor.
fn check_step<S: Machine>(
    before: &Node<S>,
    step: Step,
    base: Instant,
    cfg: &Config,
    outputs: &mut Vec<Output>,
) -> Result<Node<S>, Violation> {
    let mut after = before.clone();
    outputs.clear();
    let checked = match step {
        Step::Timeout(t) => {
            if t > before.now && before.sut.poll_timeout() != Some(base + t) {
                after.skews += 1;
            }
            after.now = after.now.max(t);
            after.sut.handle_timeout(base + t);
            check::Step::Timeout { at: base + t }
        }
        Step::Input(input) => {
            after.sut.handle_input(base + after.now, input);
            check::Step::Input {
                at: base + after.now,
                input,
            }
        }
    };
    while let Some(out) = after.sut.poll_output() {
        outputs.push(out);
    }
    after
        .obs
        .check_step(cfg, checked, &before.sut, &after.sut, outputs)?;
    Ok(after)
}

/// The rejection the driver contract predicts for `input` in `node`, worked out here from the
/// ids opened so far (the observer's `last_id`) and the live one: an input for a transport
/// that is not live is a breach if it names an id no `Open` carried, or if it reports a
/// transport gone a second time.
fn predicted_rejection<S>(node: &Node<S>, input: Input) -> Option<Output> {
    let conn = input.conn()?;
    if Some(conn) == node.obs.live() {
        return None;
    }
    let reason = if !(1..=node.obs.last_id()).contains(&conn.0) {
        Rejection::NeverOpened
    } else if matches!(input, Input::Closed { .. } | Input::OpenFailed(_)) {
        Rejection::SecondEndReport
    } else {
        return None;
    };
    Some(Output::Event(Event::InputRejected {
        input: RejectedInput {
            kind: input.kind(),
            conn,
        },
        reason,
    }))
}

/// A multiply-rotate hasher: SipHash dominates the run time of a debug build, and nothing
/// here needs protection from adversarial keys.
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// A guard against a change that makes the space explode (memory, not only time).
const MAX_STATES: usize = 1_000_000;

/// Breadth-first exploration of every reachable state from `root`.
fn explore<S: Machine + Eq + Hash>(
    root: S,
    cfg: &Config,
    bounds: Bounds,
) -> Result<Explored, Counterexample> {
    let base = Instant::now();
    let root = Node {
        sut: root,
        obs: Observer::default(),
        now: Duration::ZERO,
        skews: 0,
    };
    let mut edges = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut index: FastMap<Node<S>, u32> = FastMap::default();
    // Parent link and the step that led here, per state index.
    let mut links: Vec<(u32, Option<Step>)> = vec![(0, None)];
    let mut queue = VecDeque::new();
    let mut outputs = Vec::new();
    let mut transitions = 0usize;
    let mut rejected_count = (0usize, 0usize);
    let path_to = |links: &Vec<(u32, Option<Step>)>, mut i: u32| {
        let mut path = Vec::new();
        while let (parent, Some(step)) = links[i as usize] {
            path.push(step);
            i = parent;
        }
        path.reverse();
        path
    };
    if let Err(violation) = root.obs.check_state(&root.sut, base) {
        return Err(Counterexample {
            violation: Box::new(violation),
            path: Vec::new(),
            outputs: Vec::new(),
        });
    }
    names.insert(root.sut.state().name());
    index.insert(root.clone(), 0);
    queue.push_back((root, 0u32));
    while let Some((node, id)) = queue.pop_front() {
        if node.obs.last_id() > bounds.max_conn || node.now > bounds.horizon {
            continue;
        }
        if index.len() > MAX_STATES {
            panic!("more than {MAX_STATES} states: the bounds no longer keep the space small");
        }
        for step in steps(&node, base, bounds) {
            transitions += 1;
            let predicted = match step {
                Step::Input(input) => predicted_rejection(&node, input),
                Step::Timeout(_) => None,
            };
            let result = check_step(&node, step, base, cfg, &mut outputs);
            // A breach of the driver contract must be rejected by the core, exactly as
            // predicted, and named by the observer as the driver's fault; nothing else may be.
            let rejected = matches!(&result, Err(v) if v.invariant == Invariant::Driver);
            if rejected || predicted.is_some() {
                if rejected && predicted.is_some() && outputs.as_slice() == predicted.as_slice() {
                    match predicted {
                        Some(Output::Event(Event::InputRejected {
                            reason: Rejection::SecondEndReport,
                            ..
                        })) => rejected_count.0 += 1,
                        _ => rejected_count.1 += 1,
                    }
                    continue;
                }
                let mut path = path_to(&links, id);
                path.push(step);
                let violation = match result {
                    Err(v) => Box::new(v),
                    Ok(_) => Box::new(Violation {
                        invariant: Invariant::Driver,
                        message: format!("expected {predicted:?}, the observer saw no breach"),
                        step: match step {
                            Step::Input(input) => check::Step::Input {
                                at: base + node.now,
                                input,
                            },
                            Step::Timeout(t) => check::Step::Timeout { at: base + t },
                        },
                        outputs: outputs.clone(),
                        history: Vec::new(),
                    }),
                };
                return Err(Counterexample {
                    violation,
                    path,
                    outputs: outputs.clone(),
                });
            }
            match result {
                Ok(next) => {
                    kinds.extend(outputs.iter().map(output_kind));
                    edges.extend(outputs.iter().filter_map(|o| match o {
                        Output::Event(Event::StateChanged { from, to }) => {
                            Some((from.name(), to.name()))
                        }
                        _ => None,
                    }));
                    if index.contains_key(&next) {
                        continue;
                    }
                    let next_id = u32::try_from(links.len()).expect("state count fits u32");
                    links.push((id, Some(step)));
                    names.insert(next.sut.state().name());
                    index.insert(next.clone(), next_id);
                    queue.push_back((next, next_id));
                }
                Err(violation) => {
                    let mut path = path_to(&links, id);
                    path.push(step);
                    return Err(Counterexample {
                        violation: Box::new(violation),
                        path,
                        outputs: outputs.clone(),
                    });
                }
            }
        }
    }
    Ok(Explored {
        states: index.len(),
        transitions,
        edges,
        names,
        outputs: kinds,
        rejected: rejected_count,
    })
}

/// Both configurations (permit gate off and on), explored once per test binary under each
/// set of bounds: `[off, on]` for [`BOUNDS`] (or the deep bounds), then `[off, on]` for
/// [`SKEWED_BOUNDS`].
fn explored() -> &'static [Explored; 4] {
    static RESULT: OnceLock<[Explored; 4]> = OnceLock::new();
    RESULT.get_or_init(|| {
        let run = |gate: bool, bounds: Bounds| {
            let cfg = model_config(gate);
            let started = std::time::Instant::now();
            let result = explore(Connection::new(cfg, 0x5eed), &cfg, bounds);
            match result {
                Ok(e) => {
                    println!(
                        "gate_new_sessions={gate}, {bounds:?}: {} states, {} transitions \
                         ({} second end reports and {} ids never opened rejected) in {:?}",
                        e.states,
                        e.transitions,
                        e.rejected.0,
                        e.rejected.1,
                        started.elapsed()
                    );
                    e
                }
                Err(cx) => panic!("gate_new_sessions={gate}, {bounds:?}:\n{cx}"),
            }
        };
        let main = if deep() { DEEP_BOUNDS } else { BOUNDS };
        std::thread::scope(|s| {
            let on = s.spawn(|| (run(true, main), run(true, SKEWED_BOUNDS)));
            let off = (run(false, main), run(false, SKEWED_BOUNDS));
            let on = on.join().expect("gated exploration");
            [off.0, on.0, off.1, on.1]
        })
    })
}

#[test]
fn every_reachable_state_keeps_the_invariants() {
    let [off, on, skewed_off, skewed_on] = explored();
    // Pinned: a change that explodes or collapses the space must be looked at.
    let counts = (off.states, on.states, skewed_off.states, skewed_on.states);
    assert!(
        deep() || counts == (146_013, 176_464, 15_192, 20_524),
        "reachable state counts changed (permit gate off, on; skewed off, on): {counts:?}"
    );
    let all_states = [
        "closed",
        "opening",
        "awaiting_hello",
        "handshaking",
        "identified",
        "stale",
        "draining",
    ];
    let all_outputs = [
        "open identify",
        "open resume",
        "send identify",
        "send resume",
        "send heartbeat",
        "close end session",
        "close keep resumable",
        "abort",
        "state changed",
        "ready",
        "resumed",
        "reconnect identify",
        "reconnect resume",
        "gave up fatal",
        "gave up max attempts",
    ];
    for e in [off, on] {
        for name in all_states {
            assert!(e.names.contains(name), "{name} never reached");
        }
        for kind in all_outputs {
            assert!(
                e.outputs.contains(kind),
                "no {kind} output within the bounds"
            );
        }
    }
    for kind in ["acquire permit", "gave up permit denied"] {
        assert!(on.outputs.contains(kind), "gate on: no {kind}");
        assert!(!off.outputs.contains(kind), "gate off: {kind}");
    }
    // Out-of-contract inputs (a second end report, an id never opened) are explored in every
    // state and each was rejected as predicted; the in-contract ones never were.
    for e in [off, on, skewed_off, skewed_on] {
        assert!(
            e.rejected.0 > 0 && e.rejected.1 > 0,
            "rejections: {:?}",
            e.rejected
        );
    }
    assert!(on.names.contains("awaiting_permit"));
    assert!(!off.names.contains("awaiting_permit"));
    // The skewed exploration reaches the liveness judgment with late and early drivers.
    for e in [skewed_off, skewed_on] {
        assert!(e.names.contains("stale") && e.outputs.contains("abort"));
    }
}

/// A machine with a planted bug: when the drain deadline fires it also opens a new transport,
/// as a naive "hot restart" would.
#[derive(Clone, PartialEq, Eq, Hash)]
struct OpensOnDrainDeadline {
    inner: Connection,
    out: VecDeque<Output>,
}

impl OpensOnDrainDeadline {
    fn pull(&mut self) {
        while let Some(out) = self.inner.poll_output() {
            self.out.push_back(out);
        }
    }
}

impl Machine for OpensOnDrainDeadline {
    fn handle_input(&mut self, now: Instant, input: Input) {
        self.inner.handle_input(now, input);
        self.pull();
    }
    fn handle_timeout(&mut self, now: Instant) {
        let draining = self.inner.state() == State::Draining;
        self.inner.handle_timeout(now);
        let before = self.out.len();
        self.pull();
        let aborted = self.out.iter().skip(before).find_map(|o| match o {
            Output::Abort { conn } => Some(*conn),
            _ => None,
        });
        if let (true, Some(conn)) = (draining, aborted) {
            self.out.push_back(Output::Open {
                conn: TransportId(conn.0 + 100),
                mode: OpenMode::Identify,
            });
        }
    }
    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn state(&self) -> State {
        self.inner.state()
    }
    fn phase(&self) -> Phase {
        self.inner.phase()
    }
    fn live_transport(&self) -> Option<TransportId> {
        self.inner.live_transport()
    }
    fn is_resumable(&self) -> bool {
        self.inner.is_resumable()
    }
}

#[test]
fn the_checker_finds_a_planted_overlap() {
    let cfg = model_config(false);
    let broken = OpensOnDrainDeadline {
        inner: Connection::new(cfg, 0x5eed),
        out: VecDeque::new(),
    };
    let cx = explore(broken, &cfg, BOUNDS).expect_err("the planted bug must be found");
    println!("{cx}");
    assert_eq!(
        cx.violation.invariant,
        Invariant::OneTransport,
        "unexpected violation: {}",
        cx.violation
    );
    // Shortest path: start, opened, a drain ordered, the drain deadline.
    assert_eq!(cx.path.len(), 4, "not the shortest path:\n{cx}");
    assert!(matches!(cx.path[3], Step::Timeout(_)));
    assert!(
        cx.outputs.iter().any(|o| matches!(o, Output::Abort { .. }))
            && cx.outputs.iter().any(|o| matches!(o, Output::Open { .. }))
    );
}

/// The mermaid diagram of every reachable state change, sorted so the text is stable.
fn render_diagram(edges: &BTreeSet<(&'static str, &'static str)>) -> String {
    let mut text = String::from(
        "# State diagram\n\n\
         Every state change the model checker (`core/tests/model_check.rs`) reaches from the \
         initial state, with the permit gate off and on, named by `State::name()`. The file is \
         generated; a test fails when it is stale. Regenerate with:\n\n\
         ```sh\n\
         UPDATE_STATE_DIAGRAM=1 cargo test -p handover-core --test model_check\n\
         ```\n\n\
         The four `Connecting` phases are `opening`, `awaiting_hello`, `awaiting_permit` and \
         `handshaking`. See [architecture.md](architecture.md) for what each state means.\n\n\
         ```mermaid\nstateDiagram-v2\n    [*] --> closed\n",
    );
    for (from, to) in edges {
        text.push_str(&format!("    {from} --> {to}\n"));
    }
    text.push_str("```\n");
    text
}

#[test]
fn state_diagram_is_up_to_date() {
    let edges: BTreeSet<_> = explored()
        .iter()
        .flat_map(|e| e.edges.iter().copied())
        .collect();
    // Structural facts the diagram must show.
    for (from, to) in &edges {
        if *from == "draining" {
            assert_eq!(*to, "closed", "draining leaves only to closed");
        }
        if *to == "opening" {
            assert_eq!(*from, "closed", "a transport is opened only from closed");
        }
    }
    let text = render_diagram(&edges);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/state-diagram.md");
    if std::env::var_os("UPDATE_STATE_DIAGRAM").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("write docs/state-diagram.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "docs/state-diagram.md is stale (or missing). Regenerate it with:\n  \
         UPDATE_STATE_DIAGRAM=1 cargo test -p handover-core --test model_check\n\
         expected:\n{text}"
    );
}
