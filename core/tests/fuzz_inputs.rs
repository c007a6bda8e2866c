//! Property-based fuzzing of the lifecycle machine with long random input sequences.
//!
//! The model check (`model_check.rs`) explores every interleaving up to a small depth; this test
//! goes the other way: sequences of up to 200 steps, drawn at random, mixing every [`Input`]
//! (connection ids drawn from the previous, current and next transport or at random, close codes
//! of each class, every [`Signal`], extreme heartbeat intervals) with time advances (to the
//! deadline, just before it, after it, or by a random amount). A tiny driver model tracks which
//! transports are live from the outside (from `Open` until the driver reports `Closed` or
//! `OpenFailed` for that id) and every step is checked:
//!
//! - an `Open` is never emitted while a transport is live, and carries a fresh, greater id;
//! - `Draining` leaves only to `Closed`;
//! - inputs naming an id other than `live_transport()` change nothing, and emit nothing
//!   unless they break the driver contract: a second `Closed`/`OpenFailed` for a transport
//!   the driver already reported gone, or any input for an id no `Open` carried, emits exactly
//!   one `InputRejected` with that reason and counts in `rejected_inputs()`; no other input
//!   is ever rejected (the prediction comes from the driver model's own bookkeeping);
//! - a connection is judged dead (aborted on a timeout while a heartbeat runs) only while
//!   reading is not paused;
//! - after `Stop` (or after giving up), no `Open` until `Start` or `Restart`;
//! - every `Send`, `Close`, `AcquirePermit` and `Abort` names the live transport;
//! - after `handle_timeout(now)`, `poll_timeout()` is never at or before `now`;
//! - nothing panics.
//!
//! Runs are deterministic: a fixed RNG seed, no failure files written. Raise the number of
//! sequences by hand with `PROPTEST_CASES=5000 cargo test -p handover-core --test fuzz_inputs`
//! (and pick another seed with `PROPTEST_RNG_SEED=<n>`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use handover_core::{
    Backoff, Config, ConnectingPhase, Connection, Event, Input, Output, Phase, RejectedInput,
    Rejection, RestartReason, Signal, State, StopIntent, TransportId,
};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, RngSeed};

use common::{FATAL_CODE, NEW_SESSION_CODE, RESUME_CODE, RULES};

/// Sequences per run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// The seed used unless `PROPTEST_RNG_SEED` says otherwise, so CI runs are reproducible.
const DEFAULT_SEED: u64 = 0x6861_6e64_6f76_6572;

fn proptest_config() -> ProptestConfig {
    // `ProptestConfig::default()` already reads PROPTEST_CASES and PROPTEST_RNG_SEED.
    let base = ProptestConfig::default();
    let env = |name| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if env("PROPTEST_CASES") {
            base.cases
        } else {
            DEFAULT_CASES
        },
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: if env("PROPTEST_RNG_SEED") {
            base.rng_seed
        } else {
            RngSeed::Fixed(DEFAULT_SEED)
        },
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..base
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Which connection id an input names, relative to the latest `Open`.
#[derive(Debug, Clone, Copy)]
enum IdPick {
    Previous,
    Current,
    Next,
    Raw(u64),
}

/// Which close code a `Closed` input carries.
#[derive(Debug, Clone, Copy)]
enum CodePick {
    NoFrame,
    Resume,
    NewSession,
    Fatal,
    Raw(u16),
}

/// When the driver calls `handle_timeout`.
#[derive(Debug, Clone, Copy)]
enum TimePick {
    /// Exactly at `poll_timeout` (or now if there is none).
    Due,
    /// This long before the deadline (a no-op that lets time pass), never before now.
    Early(Duration),
    /// This long after the deadline (a driver that fell behind).
    Late(Duration),
    /// This long after now, whatever the deadline.
    Forward(Duration),
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Start,
    Stop(StopIntent),
    Restart(RestartReason),
    Opened(IdPick),
    OpenFailed(IdPick),
    Closed(IdPick, CodePick),
    PermitGranted(IdPick),
    PermitDenied(IdPick),
    Backpressure(IdPick, bool),
    Signal(IdPick, Signal),
    Time(TimePick),
    /// What a well-behaved driver and peer would do next in the current phase (open, greet,
    /// grant, accept, acknowledge, confirm a close, or let the deadline pass), so sequences
    /// get deep into the lifecycle between the disruptions.
    Cooperate,
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        8 => Just(IdPick::Current),
        1 => Just(IdPick::Previous),
        1 => Just(IdPick::Next),
        1 => (0u64..10).prop_map(IdPick::Raw),
    ]
}

fn code_pick() -> impl Strategy<Value = CodePick> {
    prop_oneof![
        Just(CodePick::NoFrame),
        Just(CodePick::Resume),
        Just(CodePick::NewSession),
        Just(CodePick::Fatal),
        any::<u16>().prop_map(CodePick::Raw),
    ]
}

fn interval() -> impl Strategy<Value = Duration> {
    prop_oneof![
        8 => (1u64..12).prop_map(ms),
        1 => Just(Duration::ZERO),
        // The largest interval a Discord HELLO can announce.
        1 => Just(ms(u64::MAX)),
    ]
}

fn signal() -> impl Strategy<Value = Signal> {
    prop_oneof![
        interval().prop_map(|interval| Signal::Hello { interval }),
        any::<bool>().prop_map(|resumed| Signal::HandshakeAccepted { resumed }),
        Just(Signal::HeartbeatAck),
        Just(Signal::HeartbeatRequested),
        Just(Signal::ReconnectRequested),
        any::<bool>().prop_map(|resumable| Signal::SessionInvalidated { resumable }),
    ]
}

fn time_pick() -> impl Strategy<Value = TimePick> {
    prop_oneof![
        4 => Just(TimePick::Due),
        1 => (1u64..4).prop_map(|n| TimePick::Early(ms(n))),
        1 => (1u64..8).prop_map(|n| TimePick::Late(ms(n))),
        1 => (0u64..30).prop_map(|n| TimePick::Forward(ms(n))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Start),
        1 => prop_oneof![Just(StopIntent::EndSession), Just(StopIntent::KeepResumable)]
            .prop_map(Step::Stop),
        1 => prop_oneof![
            Just(RestartReason::Requested),
            Just(RestartReason::HealthMonitor),
            Just(RestartReason::ProtocolError),
            Just(RestartReason::TransportFault),
        ]
        .prop_map(Step::Restart),
        4 => id_pick().prop_map(Step::Opened),
        1 => id_pick().prop_map(Step::OpenFailed),
        2 => (id_pick(), code_pick()).prop_map(|(i, c)| Step::Closed(i, c)),
        2 => id_pick().prop_map(Step::PermitGranted),
        1 => id_pick().prop_map(Step::PermitDenied),
        2 => (id_pick(), any::<bool>()).prop_map(|(i, p)| Step::Backpressure(i, p)),
        8 => (id_pick(), signal()).prop_map(|(i, s)| Step::Signal(i, s)),
        8 => time_pick().prop_map(Step::Time),
        12 => Just(Step::Cooperate),
    ]
}

/// The fixed timers with each permit policy and attempt limit.
fn config() -> impl Strategy<Value = Config> {
    (any::<bool>(), prop::option::of(1u32..4)).prop_map(|(gate_new_sessions, max_attempts)| {
        Config {
            max_attempts,
            gate_new_sessions,
            ..config_fixed()
        }
    })
}

/// What the outside world knows, tracked independently of the machine.
struct Driver {
    base: Instant,
    /// Virtual time of the last call.
    now: Duration,
    /// Transports from their `Open` until `Closed`/`OpenFailed` was reported for them.
    live: BTreeSet<TransportId>,
    /// Highest id an `Open` carried.
    last_id: u64,
    /// A `Stop` (or a give-up) came after the last `Start`/`Restart`.
    held: bool,
    /// The driver reported reading of the live transport paused (and not resumed since).
    paused: bool,
    outputs: Vec<Output>,
    /// Rejections seen: second end reports, ids never opened.
    rejected: (u64, u64),
}

impl Driver {
    fn new() -> Driver {
        Driver {
            base: Instant::now(),
            now: Duration::ZERO,
            live: BTreeSet::new(),
            last_id: 0,
            held: false,
            paused: false,
            outputs: Vec::new(),
            rejected: (0, 0),
        }
    }

    fn id(&self, pick: IdPick) -> TransportId {
        TransportId(match pick {
            IdPick::Previous => self.last_id.saturating_sub(1),
            IdPick::Current => self.last_id,
            IdPick::Next => self.last_id + 1,
            IdPick::Raw(n) => n,
        })
    }

    /// The rejection the driver contract predicts for `input`, from this model's own
    /// bookkeeping (before the input updates it): an id no `Open` carried, or an end report
    /// for a transport already reported gone.
    fn breach(&self, input: Input) -> Option<Rejection> {
        let c = tagged(input)?;
        if c.0 == 0 || c.0 > self.last_id {
            Some(Rejection::NeverOpened)
        } else if !self.live.contains(&c)
            && matches!(input, Input::Closed { .. } | Input::OpenFailed(_))
        {
            Some(Rejection::SecondEndReport)
        } else {
            None
        }
    }

    /// The step a well-behaved driver and peer would take now.
    fn cooperate(&self, conn: &Connection) -> Step {
        let current = IdPick::Current;
        match conn.phase() {
            Phase::Connecting => Step::Opened(current),
            Phase::AwaitingHello => Step::Signal(current, Signal::Hello { interval: ms(4) }),
            Phase::AwaitingPermit => Step::PermitGranted(current),
            Phase::Identifying => {
                Step::Signal(current, Signal::HandshakeAccepted { resumed: false })
            }
            Phase::Resuming => Step::Signal(current, Signal::HandshakeAccepted { resumed: true }),
            Phase::Receiving | Phase::Stale
                if self
                    .outputs
                    .iter()
                    .any(|o| matches!(o, Output::Send { .. })) =>
            {
                Step::Signal(current, Signal::HeartbeatAck)
            }
            Phase::Draining => Step::Closed(current, CodePick::NoFrame),
            Phase::NotConnected | Phase::Stopped | Phase::Failed => Step::Start,
            _ => Step::Time(TimePick::Due),
        }
    }

    fn input(&self, step: Step) -> Option<Input> {
        let code = |c| match c {
            CodePick::NoFrame => None,
            CodePick::Resume => Some(RESUME_CODE),
            CodePick::NewSession => Some(NEW_SESSION_CODE),
            CodePick::Fatal => Some(FATAL_CODE),
            CodePick::Raw(n) => Some(n),
        };
        Some(match step {
            Step::Start => Input::Start,
            Step::Stop(intent) => Input::Stop(intent),
            Step::Restart(reason) => Input::Restart(reason),
            Step::Opened(i) => Input::Opened(self.id(i)),
            Step::OpenFailed(i) => Input::OpenFailed(self.id(i)),
            Step::Closed(i, c) => Input::Closed {
                conn: self.id(i),
                code: code(c),
            },
            Step::PermitGranted(i) => Input::PermitGranted(self.id(i)),
            Step::PermitDenied(i) => Input::PermitDenied(self.id(i)),
            Step::Backpressure(i, paused) => Input::Backpressure {
                conn: self.id(i),
                paused,
            },
            Step::Signal(i, signal) => Input::Signal {
                conn: self.id(i),
                signal,
            },
            Step::Time(_) | Step::Cooperate => return None,
        })
    }

    /// The virtual time of a timeout call.
    fn time(&self, conn: &Connection, pick: TimePick) -> Duration {
        let due = conn
            .poll_timeout()
            .map(|at| at.saturating_duration_since(self.base));
        let t = match (pick, due) {
            (TimePick::Due, Some(d)) => d,
            (TimePick::Early(e), Some(d)) => d.saturating_sub(e),
            (TimePick::Late(l), Some(d)) => d.saturating_add(l),
            (TimePick::Forward(f), _) => self.now + f,
            (_, None) => self.now,
        };
        t.max(self.now)
    }
}

fn tagged(input: Input) -> Option<TransportId> {
    match input {
        Input::Start | Input::Stop(_) | Input::Restart(_) => None,
        Input::Opened(c)
        | Input::OpenFailed(c)
        | Input::PermitGranted(c)
        | Input::PermitDenied(c)
        | Input::Closed { conn: c, .. }
        | Input::Signal { conn: c, .. }
        | Input::Backpressure { conn: c, .. } => Some(c),
    }
}

/// Applies one step and checks every property on it. `Err` names the violated property.
fn apply(d: &mut Driver, conn: &mut Connection, step: Step) -> Result<(), String> {
    let step = match step {
        Step::Cooperate => d.cooperate(conn),
        step => step,
    };
    let before = conn.clone();
    let before_state = conn.state();
    let mut timeout_at = None;
    let mut stale = None;
    let mut expected_rejection = None;
    match d.input(step) {
        Some(input) => {
            expected_rejection = d.breach(input).map(|reason| {
                Output::Event(Event::InputRejected {
                    input: RejectedInput {
                        kind: input.kind(),
                        conn: tagged(input).expect("only tagged inputs are rejected"),
                    },
                    reason,
                })
            });
            // The driver's knowledge changes with the report, whatever the machine does with it.
            if let Input::Closed { conn: c, .. } | Input::OpenFailed(c) = input {
                d.live.remove(&c);
            }
            match input {
                Input::Start | Input::Restart(_) => d.held = false,
                Input::Stop(_) => d.held = true,
                Input::Backpressure { conn: c, paused } if Some(c) == before.live_transport() => {
                    d.paused = paused;
                }
                _ => {}
            }
            conn.handle_input(d.base + d.now, input);
            if let Some(c) = tagged(input)
                && Some(c) != before.live_transport()
            {
                stale = Some((input, c));
            }
        }
        None => {
            let Step::Time(pick) = step else {
                unreachable!("only time steps have no input")
            };
            d.now = d.time(conn, pick);
            timeout_at = Some(d.base + d.now);
            conn.handle_timeout(d.base + d.now);
        }
    }

    d.outputs.clear();
    d.outputs.extend(std::iter::from_fn(|| conn.poll_output()));
    if let Some((input, c)) = stale
        && *conn != before
    {
        return Err(format!(
            "{input:?} names {c}, not the live {:?}, yet changed the machine",
            before.live_transport()
        ));
    }
    let rejections: Vec<Output> = d
        .outputs
        .iter()
        .copied()
        .filter(|o| matches!(o, Output::Event(Event::InputRejected { .. })))
        .collect();
    if rejections.as_slice() != expected_rejection.as_slice() {
        return Err(format!(
            "rejections {rejections:?}, the contract predicts {expected_rejection:?}"
        ));
    }
    if let Some(rejection) = expected_rejection {
        if d.outputs != [rejection] {
            return Err(format!("a rejected input also emitted {:?}", d.outputs));
        }
        match rejection {
            Output::Event(Event::InputRejected {
                reason: Rejection::SecondEndReport,
                ..
            }) => d.rejected.0 += 1,
            _ => d.rejected.1 += 1,
        }
    }
    let counted = conn.rejected_inputs().checked_sub(before.rejected_inputs());
    if counted != Some(u64::from(expected_rejection.is_some())) {
        return Err(format!(
            "rejected_inputs() went from {} to {} on one step",
            before.rejected_inputs(),
            conn.rejected_inputs()
        ));
    }
    if let Some(now) = timeout_at
        && let Some(next) = conn.poll_timeout()
        && next <= now
    {
        return Err(format!(
            "poll_timeout {:?} is not after handle_timeout({:?})",
            next.saturating_duration_since(d.base),
            d.now
        ));
    }
    let heartbeating = matches!(
        before_state,
        State::Identified
            | State::Stale
            | State::Connecting(ConnectingPhase::AwaitingPermit | ConnectingPhase::Handshaking)
    );
    if timeout_at.is_some()
        && heartbeating
        && d.paused
        && d.outputs.iter().any(|o| matches!(o, Output::Abort { .. }))
    {
        return Err("judged dead while reading is paused".into());
    }
    for out in &d.outputs {
        match *out {
            Output::Open { conn: id, .. } => {
                d.paused = false;
                if !d.live.is_empty() {
                    return Err(format!("{id} opened while {:?} is live", d.live));
                }
                if id.0 <= d.last_id {
                    return Err(format!("{id} is not above the last id {}", d.last_id));
                }
                if d.held {
                    return Err(format!("{id} opened after stop or give-up, before a start"));
                }
                d.last_id = id.0;
                d.live.insert(id);
            }
            Output::Send { conn: id, .. }
            | Output::Close { conn: id, .. }
            | Output::Abort { conn: id }
            | Output::AcquirePermit { conn: id } => {
                if !d.live.contains(&id) {
                    return Err(format!("{out:?} names {id}, which is not live"));
                }
            }
            Output::Event(Event::StateChanged { from, to }) => {
                if from == State::Draining && to != State::Closed {
                    return Err(format!("draining left to {to:?}"));
                }
            }
            Output::Event(Event::GaveUp(_)) => d.held = true,
            Output::Event(_) => {}
        }
    }
    let after_state = conn.state();
    if before_state == State::Draining && !matches!(after_state, State::Draining | State::Closed) {
        return Err(format!("draining became {after_state:?}"));
    }
    if d.live.len() > 1 {
        return Err(format!("two transports live: {:?}", d.live));
    }
    if let Some(c) = conn.live_transport()
        && c.0 > d.last_id
    {
        return Err(format!("live connection {c} was never opened"));
    }
    if (after_state == State::Closed) != conn.live_transport().is_none() {
        return Err(format!(
            "state {after_state:?} with live connection {:?}",
            conn.live_transport()
        ));
    }
    Ok(())
}

fn run(cfg: Config, seed: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut conn = Connection::new(cfg, seed);
    let mut d = Driver::new();
    for (i, step) in steps.iter().enumerate() {
        apply(&mut d, &mut conn, *step)
            .map_err(|e| TestCaseError::fail(format!("step {i} ({step:?}): {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_input_sequences_keep_the_invariants(
        cfg in config(),
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..200),
    ) {
        run(cfg, seed, &steps)?;
    }

    /// Same, from a machine restored with a resumable session.
    #[test]
    fn random_sequences_from_a_restored_session(
        cfg in config(),
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut conn = Connection::with_restored_session(cfg, seed);
        prop_assert!(conn.is_resumable());
        let mut d = Driver::new();
        for (i, step) in steps.iter().enumerate() {
            apply(&mut d, &mut conn, *step)
                .map_err(|e| TestCaseError::fail(format!("step {i} ({step:?}): {e}")))?;
        }
    }
}

/// The generator is worth its cases: the sequences it draws reach every phase of the machine
/// and every kind of output.
#[test]
fn the_generated_sequences_reach_every_phase() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        ..proptest_config()
    });
    let strategy = (
        config(),
        any::<u64>(),
        prop::collection::vec(step(), 1..200),
    );
    let mut phases = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    let mut rejected = (0, 0);
    for _ in 0..64 {
        let (cfg, seed, steps) = strategy
            .new_tree(&mut runner)
            .expect("the strategy has no filter")
            .current();
        let mut conn = Connection::new(cfg, seed);
        let mut d = Driver::new();
        for step in steps {
            apply(&mut d, &mut conn, step).expect("checked by the property tests");
            phases.insert(conn.phase().name());
            for out in &d.outputs {
                outputs.insert(match out {
                    Output::Open { .. } => "open",
                    Output::AcquirePermit { .. } => "acquire_permit",
                    Output::Send { .. } => "send",
                    Output::Close { .. } => "close",
                    Output::Abort { .. } => "abort",
                    Output::Event(Event::GaveUp(_)) => "gave_up",
                    Output::Event(_) => "event",
                });
            }
        }
        rejected.0 += d.rejected.0;
        rejected.1 += d.rejected.1;
    }
    // Both kinds of contract breach are drawn, so the rejection rules are fuzzed too.
    assert!(rejected.0 > 0 && rejected.1 > 0, "rejections: {rejected:?}");
    let all_phases = [
        "not_connected",
        "connecting",
        "awaiting_hello",
        "awaiting_permit",
        "identifying",
        "resuming",
        "receiving",
        "stale",
        "draining",
        "backing_off",
        "stopped",
        "failed",
    ];
    let missing: Vec<_> = all_phases.iter().filter(|p| !phases.contains(*p)).collect();
    assert!(missing.is_empty(), "phases never reached: {missing:?}");
    assert_eq!(outputs.len(), 7, "output kinds seen: {outputs:?}");
}

/// The properties can fail: a driver model fed a second `Open` while one is live reports it.
#[test]
fn the_checker_rejects_an_overlapping_open() {
    let mut conn = Connection::new(config_fixed(), 1);
    let mut d = Driver::new();
    apply(&mut d, &mut conn, Step::Start).expect("start is fine");
    assert_eq!(d.live.len(), 1);
    // Pretend the driver forgot to report the first transport gone: the machine thinks it is
    // closed (it was told `Closed` for it), so a later `Open` must be flagged by the model.
    d.live.insert(TransportId(99));
    let err = apply(
        &mut d,
        &mut conn,
        Step::Closed(IdPick::Current, CodePick::Resume),
    )
    .and_then(|()| apply(&mut d, &mut conn, Step::Time(TimePick::Due)))
    .expect_err("an open while a transport is live must be reported");
    assert!(err.contains("opened while"), "{err}");
}

/// The timers every run uses: short, so every state is reached within a few hundred steps.
fn config_fixed() -> Config {
    Config {
        open_timeout: ms(3),
        hello_timeout: ms(3),
        handshake_timeout: ms(5),
        probe_grace: ms(2),
        drain_deadline: ms(2),
        backoff: Backoff {
            floor: ms(1),
            base: ms(2),
            cap: ms(8),
        },
        reconnect_spread: ms(1),
        stable_after: ms(10),
        invalid_session_wait_min: ms(1),
        invalid_session_wait_max: ms(5),
        max_attempts: None,
        close_rules: RULES,
        gate_new_sessions: false,
    }
}
