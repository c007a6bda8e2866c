//! `handover demo` runs the tour of faults against the embedded mock and exits 0 with the table.

mod cli_common;

use cli_common::run_to_end;

const SCENARIOS: [&str; 9] = [
    "zombie socket + restart storm",
    "server asks to reconnect (op 7)",
    "tcp dropped without close",
    "close frames ignored on restart",
    "heartbeat ACKs stop",
    "invalid session, resumable (op 9 true)",
    "invalid session (op 9 false)",
    "session timed out (close 4009)",
    "token refused (close 4004)",
];

fn row<'a>(stdout: &'a str, scenario: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {scenario}")))
        .unwrap_or_else(|| panic!("no row for {scenario}:\n{stdout}"));
    line.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_demo_holds_every_invariant() {
    let (code, stdout, stderr) = run_to_end(&["demo", "--quick", "--seed", "7"], &[]).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("| scenario"), "{stdout}");
    assert!(stdout.contains("all invariants held"), "{stdout}");
    assert!(!stdout.contains("INVARIANT BROKEN"), "{stdout}");
    for s in SCENARIOS {
        let cells = row(&stdout, s);
        // scenario, outcome, identifies, resumes, max sockets, delivered, lost, duplicated
        assert_ne!(cells[1], "BROKEN", "{s}");
        assert_eq!(cells[4], "1", "{s}: max sockets");
        assert_eq!((cells[6], cells[7]), ("0", "0"), "{s}: lost, duplicated");
    }
    // Each scenario streams 60 events and ends once the last is delivered: a row counts them
    // all, plus the seq each RESUMED (or the new session's READY) takes. A scenario that ended
    // before the stream's last event was written counted one fewer, and left it to the next.
    for s in &SCENARIOS[..6] {
        let cells = row(&stdout, s);
        let resumes: u64 = cells[3].parse().expect("resumes");
        assert_eq!(cells[5], (60 + resumes).to_string(), "{s}: delivered");
    }
    for s in &SCENARIOS[6..8] {
        assert_eq!(row(&stdout, s)[5], "61", "{s}: delivered");
    }
    assert_eq!(
        row(&stdout, SCENARIOS[0])[2],
        "0",
        "the storm spent no identify"
    );
    assert_eq!(
        row(&stdout, SCENARIOS[6])[2],
        "1",
        "a lost session identifies once"
    );
    assert_eq!(row(&stdout, SCENARIOS[8])[1], "gave up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_subcommand_the_demo_runs() {
    let (code, stdout, stderr) = run_to_end(&[], &[]).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all invariants held"), "{stdout}");
    for s in SCENARIOS {
        row(&stdout, s);
    }
}
