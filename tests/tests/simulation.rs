//! Deterministic simulation: the core, the Discord codec and the mock gateway in memory, in
//! virtual time, under thousands of seeded fault schedules. See `docs/simulation.md`.
//!
//! - `SIM_SEED=<n>` runs exactly that seed and prints its whole trace (use `--nocapture`).
//! - `SIM_SEEDS=<count>` runs that many seeds instead of the default (for longer soaks).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handover_core::{CloseRules, Codec, Decoded, Message, OpenMode, Payload, TransportId};
use handover_mock::Fault;
use handover_protocol::{CLOSE_RULES, Compression, GatewayEvent};
use handover_tests::sim::{
    Action, DEFAULT_SEEDS, Options, Outcome, RunResult, Scenario, Timers, run, run_with, shrink,
};

/// Wall-clock budget of the seed sweep; past it the sweep stops early and says so.
const WALL_BUDGET: Duration = Duration::from_secs(20);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn fail(scenario: &Scenario, result: &RunResult) -> String {
    let short = shrink(scenario, &Options::default(), |c| c, 200);
    let mut msg = result.report(scenario);
    if short.schedule.len() < scenario.schedule.len() {
        let again = run(&short);
        msg.push_str(&format!(
            "\nshrunk to {} of {} actions, still failing:\n{}",
            short.schedule.len(),
            scenario.schedule.len(),
            again.report(&short)
        ));
    }
    msg
}

#[test]
fn every_seed_holds_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let scenario = Scenario::generate(seed);
        let result = run(&scenario);
        println!("{}", result.trace());
        println!("{}", result.report(&scenario));
        assert!(result.passed(), "{}", fail(&scenario, &result));
        return;
    }
    // A soak asked for by hand runs every seed; the default sweep keeps to its budget.
    let soak = env_u64("SIM_SEEDS");
    let count = soak.unwrap_or(DEFAULT_SEEDS);
    let budget = if soak.is_some() {
        Duration::MAX
    } else {
        WALL_BUDGET
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let failures: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let totals: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if started.elapsed() > budget {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= count {
                        return;
                    }
                    let scenario = Scenario::generate(seed);
                    let result = run(&scenario);
                    if !result.passed() {
                        failures.lock().unwrap().push(seed);
                    }
                    totals.lock().unwrap().push(result.outcome);
                }
            });
        }
    });
    let totals = totals.into_inner().unwrap();
    let ran = totals.len() as u64;
    let wall = started.elapsed();
    let sum = |f: fn(&Outcome) -> u64| totals.iter().map(f).sum::<u64>();
    let recovery = totals
        .iter()
        .filter_map(|o| o.recovery)
        .max()
        .unwrap_or_default();
    let failed = totals.iter().filter(|o| o.final_phase == "failed").count();
    println!(
        "simulation: {ran} seeds in {wall:.1?} on {threads} threads; {} virtual hours, {} steps, \
         {} opens, {} identifies, {} resumes, {} dispatches delivered, {} lost sessions \
         reported, {} fault hits, {} RESUMED replayed; {failed} runs ended given up; slowest \
         recovery {recovery:.1?} (virtual)",
        sum(|o| o.elapsed.as_secs()) / 3600,
        sum(|o| o.steps),
        sum(|o| o.opens),
        sum(|o| o.identifies),
        sum(|o| o.resumes),
        sum(|o| o.delivered),
        sum(|o| o.gaps),
        sum(|o| o.faults_hit),
        sum(|o| o.resumed_replayed),
    );
    if ran < count {
        println!(
            "simulation: stopped early after {ran} of {count} seeds: the wall-clock budget of \
             {budget:?} ran out (run with SIM_SEEDS=<n> for a longer soak)"
        );
    }
    let mut failures = failures.into_inner().unwrap();
    failures.sort_unstable();
    if let Some(&seed) = failures.first() {
        let scenario = Scenario::generate(seed);
        let result = run(&scenario);
        panic!(
            "{} of {ran} seeds failed: {failures:?}\nfirst failure, reproduce with \
             SIM_SEED={seed}:\n{}",
            failures.len(),
            fail(&scenario, &result)
        );
    }
    assert!(
        ran >= 100.min(count),
        "only {ran} seeds ran within the budget"
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [0, 1, 17, 99, 1234, 4242] {
        let scenario = Scenario::generate(seed);
        assert_eq!(
            scenario,
            Scenario::generate(seed),
            "seed {seed}: schedule differs"
        );
        let a = run(&scenario);
        let b = run(&scenario);
        assert!(a.passed(), "{}", a.report(&scenario));
        assert_eq!(a.outcome, b.outcome, "seed {seed} ran differently twice");
        assert_eq!(a.trace(), b.trace(), "seed {seed}: traces differ");
        assert!(a.outcome.steps > 0 && a.outcome.opens > 0);
    }
    // Different seeds give different runs.
    let hashes: std::collections::BTreeSet<u64> = (0..20)
        .map(|seed| run(&Scenario::generate(seed)).outcome.trace_hash)
        .collect();
    assert_eq!(hashes.len(), 20);
}

/// Test-only codec that loses every `n`th dispatch after decoding it (its sequence number is
/// counted, the event never reaches the application).
struct DropsDispatches<C> {
    inner: C,
    every: u64,
    seen: u64,
}

/// Test-only codec that delivers an already delivered dispatch again in place of the next
/// heartbeat ACK's empty item, like a broken replay filter.
struct Redelivers<C> {
    inner: C,
    every: u64,
    seen: u64,
    held: Option<GatewayEvent>,
}

macro_rules! forward_codec {
    ($ty:ident, $decode:item) => {
        impl<C: Codec<Item = GatewayEvent>> Codec for $ty<C> {
            type Item = GatewayEvent;
            type Command = C::Command;
            type Error = C::Error;

            fn url(&self, mode: OpenMode) -> String {
                self.inner.url(mode)
            }

            fn reset(&mut self, conn: TransportId, mode: OpenMode) {
                self.inner.reset(conn, mode);
            }

            $decode

            fn encode(&mut self, now: Instant, payload: Payload) -> Result<Message, C::Error> {
                self.inner.encode(now, payload)
            }

            fn encode_command(
                &mut self,
                now: Instant,
                command: C::Command,
            ) -> Result<Message, C::Error> {
                self.inner.encode_command(now, command)
            }
        }
    };
}

forward_codec!(
    DropsDispatches,
    fn decode(&mut self, now: Instant, msg: Message) -> Result<Decoded<GatewayEvent>, C::Error> {
        let mut d = self.inner.decode(now, msg)?;
        if matches!(d.item, Some(GatewayEvent::Dispatch(_))) {
            self.seen += 1;
            if self.seen.is_multiple_of(self.every) {
                d.item = None;
            }
        }
        Ok(d)
    }
);

forward_codec!(
    Redelivers,
    fn decode(&mut self, now: Instant, msg: Message) -> Result<Decoded<GatewayEvent>, C::Error> {
        let mut d = self.inner.decode(now, msg)?;
        match &d.item {
            Some(item @ GatewayEvent::Dispatch(_)) => {
                self.seen += 1;
                if self.seen.is_multiple_of(self.every) {
                    self.held = Some(item.clone());
                }
            }
            None => {
                if d.signal.is_some() {
                    d.item = self.held.take();
                }
            }
            Some(_) => {}
        }
        Ok(d)
    }
);

/// Runs seeds with a broken piece until one is caught; returns the seed and its report.
fn first_caught(
    seeds: impl Iterator<Item = u64>,
    run_one: impl Fn(&Scenario) -> RunResult,
) -> Option<(u64, String)> {
    seeds.into_iter().find_map(|seed| {
        let scenario = Scenario::generate(seed);
        let result = run_one(&scenario);
        (!result.passed()).then(|| {
            let text = result.report(&scenario);
            assert!(text.starts_with(&format!("SIM_SEED={seed} ")), "{text}");
            eprintln!(
                "caught at seed {seed}:\n{}",
                text.lines().take(3).collect::<Vec<_>>().join("\n")
            );
            (seed, text)
        })
    })
}

#[test]
fn the_checker_catches_a_codec_that_loses_dispatches() {
    let caught = first_caught(0..200, |s| {
        run_with(s, &Options::default(), |c| DropsDispatches {
            inner: c,
            every: 50,
            seen: 0,
        })
    });
    let (seed, report) = caught.expect("no seed caught a codec dropping every 50th dispatch");
    assert!(report.contains("missing"), "seed {seed}:\n{report}");
}

#[test]
fn the_checker_catches_a_codec_that_redelivers() {
    let caught = first_caught(0..200, |s| {
        run_with(s, &Options::default(), |c| Redelivers {
            inner: c,
            every: 20,
            seen: 0,
            held: None,
        })
    });
    let (seed, report) = caught.expect("no seed caught a codec delivering dispatches twice");
    assert!(report.contains("delivered again"), "seed {seed}:\n{report}");
}

#[test]
fn the_checker_catches_close_codes_resumed_after_the_session_ended() {
    // 4007 and 4009 treated as resumable: the client resumes a session Discord ended.
    let broken = Options {
        close_rules: CloseRules {
            new_session: &[],
            ..CLOSE_RULES
        },
    };
    let caught = first_caught(0..400, |s| run_with(s, &broken, |c| c));
    let (seed, report) = caught.expect("no seed caught 4007/4009 classified as resumable");
    assert!(
        report.contains("resumes although the session was lost"),
        "seed {seed}:\n{report}"
    );
}

#[test]
fn the_checker_catches_an_identify_spent_for_nothing() {
    // 4000 (our own resumable close, echoed back) treated as the end of the session.
    let broken = Options {
        close_rules: CloseRules {
            new_session: &[4000, 4007, 4009],
            ..CLOSE_RULES
        },
    };
    let caught = first_caught(0..200, |s| run_with(s, &broken, |c| c));
    let (seed, report) = caught.expect("no seed caught 4000 classified as the end of the session");
    assert!(
        report.contains("an identify spent for nothing"),
        "seed {seed}:\n{report}"
    );
}

#[test]
fn the_checker_catches_a_fatal_close_retried() {
    // 4004 treated as a plain reconnect: the client keeps opening after a fatal close.
    let broken = Options {
        close_rules: CloseRules {
            fatal: &[4010, 4011, 4012, 4013, 4014],
            ..CLOSE_RULES
        },
    };
    let closes_4004 = |seed: &u64| {
        Scenario::generate(*seed).schedule.iter().any(|a| {
            matches!(
                a.action,
                Action::Fault(Fault::Close(4004)) | Action::ShardFault(Fault::Close(4004))
            )
        })
    };
    let caught = first_caught((0..DEFAULT_SEEDS).filter(closes_4004), |s| {
        run_with(s, &broken, |c| c)
    });
    let (seed, report) = caught.expect("no seed caught 4004 classified as resumable");
    assert!(
        report.contains("fatal close code did not make the client give up"),
        "seed {seed}:\n{report}"
    );
}

#[test]
fn schedules_cover_every_fault_and_action() {
    let mut seen = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    for seed in 0..DEFAULT_SEEDS {
        let scenario = Scenario::generate(seed);
        let p = &scenario.params;
        for (kind, on) in [
            ("no session-losing fault", !scenario.may_lose_sessions()),
            ("fatal closes", p.fatal),
            ("gated identifies", p.permits.is_some()),
            (
                "permit budget",
                p.permits.is_some_and(|g| g.budget.is_some()),
            ),
            ("max attempts", p.max_attempts.is_some()),
            ("compressed", p.compression != Compression::None),
            ("latency", !p.latency.is_zero()),
            ("test timers", p.timers == Timers::Tight),
            ("small replay buffer", p.replay_buffer < 100),
        ] {
            *kinds.entry(kind).or_default() += u64::from(on);
        }
        for a in scenario.schedule {
            let name = match a.action {
                Action::Fault(f) | Action::ShardFault(f) | Action::FaultOn { fault: f, .. } => {
                    match f {
                        Fault::Close(c) if [4007, 4009].contains(&c) => "close new-session".into(),
                        Fault::Close(c) if c == 4004 || (4010..=4014).contains(&c) => {
                            "close fatal".into()
                        }
                        Fault::Close(_) => "close resumable".into(),
                        Fault::Delay(_) => "delay".into(),
                        Fault::Garbage(_) => "garbage".into(),
                        other => format!("{other:?}"),
                    }
                }
                Action::RestartOn(on) => format!("restart on {on:?}"),
                Action::Stream { .. } => "stream".into(),
                Action::Dispatch(_) => "dispatch".into(),
                Action::Stop(i) => format!("stop {i:?}"),
                other => format!("{other:?}"),
            };
            seen.insert(name);
        }
    }
    for want in [
        "Zombie",
        "StopAcks",
        "DropTcp",
        "IgnoreCloseFrames",
        "Reconnect",
        "InvalidSession { resumable: true }",
        "InvalidSession { resumable: false }",
        "close resumable",
        "close new-session",
        "close fatal",
        "delay",
        "garbage",
        "RequestHeartbeat",
        "dispatch",
        "stream",
        "Restart",
        "stop KeepResumable",
        "stop EndSession",
        "Start",
        "Presence",
        "restart on Opened",
        "restart on Handshake",
        "restart on Accepted",
    ] {
        assert!(seen.contains(want), "no schedule has {want}; seen {seen:?}");
    }
    // Every kind of run is well represented (each is at least 2 % of the seeds).
    for (kind, n) in &kinds {
        assert!(
            n * 50 >= DEFAULT_SEEDS,
            "only {n} seeds with {kind}: {kinds:?}"
        );
    }
}
