//! The shell simulation: the production Shard and Fleet over the peer host, in virtual time,
//! for many seeds (see docs/simulation.md, "The production shell").

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handover_tests::shell_sim::{DEFAULT_SEEDS, ShellOptions, ShellOutcome, run, run_with};
use handover_tests::sim::Scenario;
use handover_transport_ws::{PlantedFault, TransportConfig};

/// Wall-clock budget of the default sweep; it then stops early, saying so.
const WALL_BUDGET: Duration = Duration::from_secs(40);

/// Seeds the replay test runs twice each (`SHELL_SIM_REPLAYS` overrides).
const REPLAYS: u64 = 40;

/// The default sweep must run at least this many seeds, whatever the machine.
const MIN_SEEDS: u64 = 50;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Run `seeds` on up to 2 threads within `budget`; returns the outcomes and the failing seeds.
fn sweep(
    seeds: std::ops::Range<u64>,
    budget: Duration,
    options: &ShellOptions,
    stop_at_first_failure: bool,
) -> (Vec<ShellOutcome>, Vec<u64>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    let next = AtomicU64::new(seeds.start);
    let started = Instant::now();
    let failures = Mutex::new(Vec::new());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if started.elapsed() > budget
                        || (stop_at_first_failure && !failures.lock().unwrap().is_empty())
                    {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        return;
                    }
                    let result = run_with(&Scenario::generate(seed), options);
                    if !result.passed() {
                        failures.lock().unwrap().push(seed);
                    }
                    outcomes.lock().unwrap().push(result.outcome);
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_unstable();
    (outcomes.into_inner().unwrap(), failures)
}

#[test]
fn every_seed_holds_every_invariant_in_the_production_shell() {
    if let Some(seed) = env_u64("SHELL_SIM_SEED") {
        let result = run(&Scenario::generate(seed));
        for line in &result.trace {
            println!("{line}");
        }
        assert!(result.passed(), "{}", result.report());
        return;
    }
    let soak = env_u64("SHELL_SIM_SEEDS");
    let count = soak.unwrap_or(DEFAULT_SEEDS);
    // A soak runs every seed asked for, bounded by a wall budget proportional to its size.
    let budget = match soak {
        Some(n) => Duration::from_secs(n.max(1)),
        None => WALL_BUDGET,
    };
    let started = Instant::now();
    let (outcomes, failures) = sweep(0..count, budget, &ShellOptions::default(), false);
    let wall = started.elapsed();
    let ran = outcomes.len() as u64;
    let sum = |f: fn(&ShellOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    println!(
        "shell simulation: {ran} seeds in {wall:.1?}; {} virtual hours, {} fleets, {} sockets, \
         {} identifies, {} resumes, {} dispatches read, {} lost sessions reported, {} shards \
         ended given up; most sockets open at once for one shard: {}",
        sum(|o| o.elapsed.as_secs()) / 3600,
        outcomes.iter().filter(|o| o.shards > 1).count(),
        sum(|o| o.sockets),
        sum(|o| o.identifies),
        sum(|o| o.resumes),
        sum(|o| o.delivered),
        sum(|o| o.gaps),
        sum(|o| u64::from(o.gave_up)),
        outcomes
            .iter()
            .map(|o| o.max_open_per_shard)
            .max()
            .unwrap_or(0),
    );
    if ran < count {
        println!(
            "shell simulation: stopped early after {ran} of {count} seeds: the wall-clock budget \
             of {budget:?} ran out"
        );
    }
    if let Some(&seed) = failures.first() {
        let result = run(&Scenario::generate(seed));
        panic!(
            "{} of {ran} seeds failed: {failures:?}\nfirst failure:\n{}",
            failures.len(),
            result.report()
        );
    }
    assert!(
        ran >= MIN_SEEDS.min(count),
        "only {ran} seeds ran within the budget"
    );
}

#[test]
fn a_seed_replays_exactly_in_the_production_shell() {
    let replays = env_u64("SHELL_SIM_REPLAYS").unwrap_or(REPLAYS);
    let mut hashes = std::collections::BTreeSet::new();
    for seed in 0..replays {
        let scenario = Scenario::generate(seed);
        let a = run(&scenario);
        let b = run(&scenario);
        let first_difference = a
            .trace
            .iter()
            .zip(&b.trace)
            .position(|(x, y)| x != y)
            .unwrap_or(a.trace.len().min(b.trace.len()));
        assert!(
            a.outcome == b.outcome && a.trace == b.trace,
            "seed {seed} replayed differently from trace line {first_difference}:\n{}\n---\n{}\n{:?}\n{:?}",
            a.trace[first_difference.saturating_sub(5)..(first_difference + 5).min(a.trace.len())]
                .join("\n"),
            b.trace[first_difference.saturating_sub(5)..(first_difference + 5).min(b.trace.len())]
                .join("\n"),
            a.outcome,
            b.outcome,
        );
        hashes.insert(a.outcome.trace_hash);
    }
    assert_eq!(hashes.len() as u64, replays, "every seed runs differently");
}

fn plant_report_gone_before_drop(t: &mut TransportConfig) {
    t.planted_fault = Some(PlantedFault::ReportGoneBeforeDrop);
}

#[test]
fn the_planted_close_path_bug_is_caught_as_two_sockets_at_the_server() {
    let options = ShellOptions {
        tweak_transport: Some(plant_report_gone_before_drop),
    };
    let (_, failures) = sweep(0..DEFAULT_SEEDS, Duration::MAX, &options, true);
    let seed = *failures
        .first()
        .expect("the planted close-path bug went unnoticed for every default seed");
    let result = run_with(&Scenario::generate(seed), &options);
    println!(
        "planted close-path bug caught at seed {seed}:\n{}",
        result.report()
    );
    assert!(
        !result.passed(),
        "seed {seed} failed once and passed when replayed"
    );
    assert!(
        result
            .violations
            .iter()
            .any(|v| v.what.contains("two sockets open at the server")),
        "seed {seed} failed for another reason:\n{}",
        result.report()
    );
}
