//! The Prometheus text of shards' status: one renderer for `handover run --http` and
//! `handover proxy`'s `/metrics`.

use std::fmt::Write as _;

use handover_core::Phase;

use crate::ShardStatus;

/// A per-shard metric family: name, type, help, and the value of one shard (if known).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStatus) -> Option<u64>,
);

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn write_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A duration as whole milliseconds (saturating), as the metrics show durations.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends the per-shard families (label `shard`) to `out`: `handover_shard_phase` (1 for the
/// current `phase` label, 0 for the others), `handover_shard_reconnects_total`,
/// `handover_shard_identifies_total`, `handover_shard_resumes_total`,
/// `handover_shard_events_delivered_total`, `handover_shard_events_received_total`,
/// `handover_shard_duplicates_dropped_total`, `handover_shard_gaps_total`,
/// `handover_shard_latency_milliseconds` (the last round trip, absent until the first ACK),
/// `handover_shard_latency_average_milliseconds` (over the current connection),
/// `handover_shard_latency_recent_milliseconds{age}` (the last few, age 0 the newest),
/// `handover_shard_live_sockets`, `handover_shard_resumable`, `handover_shard_gave_up`.
pub fn write_shard_metrics(out: &mut String, statuses: &[ShardStatus]) {
    write_header(
        out,
        "handover_shard_phase",
        "gauge",
        "lifecycle phase of the shard (1 for the current phase)",
    );
    for s in statuses {
        for phase in Phase::ALL {
            let v = u8::from(s.phase == phase);
            let phase = phase.name();
            let _ = writeln!(
                out,
                "handover_shard_phase{{shard=\"{}\",phase=\"{phase}\"}} {v}",
                s.shard
            );
        }
    }
    let per_shard: [Family; 12] = [
        (
            "handover_shard_reconnects_total",
            "counter",
            "reconnects scheduled",
            |s| Some(s.reconnects),
        ),
        (
            "handover_shard_identifies_total",
            "counter",
            "IDENTIFY payloads sent (each spends from the daily session budget)",
            |s| Some(s.identifies),
        ),
        (
            "handover_shard_resumes_total",
            "counter",
            "RESUME payloads sent",
            |s| Some(s.resumes),
        ),
        (
            "handover_shard_events_delivered_total",
            "counter",
            "dispatches the sink took (for handover run: written to stdout)",
            |s| Some(s.delivered),
        ),
        (
            "handover_shard_events_received_total",
            "counter",
            "dispatches received from the gateway, once each (delivered or still queued)",
            |s| Some(s.received),
        ),
        (
            "handover_shard_duplicates_dropped_total",
            "counter",
            "replayed dispatches dropped as already delivered",
            |s| Some(s.duplicates_dropped),
        ),
        (
            "handover_shard_gaps_total",
            "counter",
            "sessions lost after delivering events (events missed)",
            |s| Some(s.gaps),
        ),
        (
            "handover_shard_latency_milliseconds",
            "gauge",
            "heartbeat round trip of the last ACK",
            |s| s.latency.map(millis),
        ),
        (
            "handover_shard_latency_average_milliseconds",
            "gauge",
            "mean heartbeat round trip over the current connection",
            |s| s.latency_average.map(millis),
        ),
        (
            "handover_shard_live_sockets",
            "gauge",
            "sockets live for the shard (0 or 1)",
            |s| u64::try_from(s.live_sockets).ok(),
        ),
        (
            "handover_shard_resumable",
            "gauge",
            "1 when a session is held that a reconnect would resume",
            |s| Some(u64::from(s.resumable)),
        ),
        (
            "handover_shard_gave_up",
            "gauge",
            "1 when the shard stopped trying on its own (fatal close code, identify budget)",
            |s| Some(u64::from(s.gave_up.is_some())),
        ),
    ];
    for (name, kind, help, get) in per_shard {
        write_header(out, name, kind, help);
        for s in statuses {
            if let Some(v) = get(s) {
                let _ = writeln!(out, "{name}{{shard=\"{}\"}} {v}", s.shard);
            }
        }
    }
    write_header(
        out,
        "handover_shard_latency_recent_milliseconds",
        "gauge",
        "the last heartbeat round trips (age 0 is the newest)",
    );
    for s in statuses {
        for (age, d) in s.latency_recent.iter().rev().enumerate() {
            let _ = writeln!(
                out,
                "handover_shard_latency_recent_milliseconds{{shard=\"{}\",age=\"{age}\"}} {}",
                s.shard,
                millis(*d)
            );
        }
    }
}
