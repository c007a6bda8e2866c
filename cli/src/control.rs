//! The HTTP control server of `handover run` (HTTP/1.1, loopback by default).
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 when every shard is receiving events, 503 otherwise; a short JSON body |
//! | `GET /status` | JSON array of every shard's [`ShardStatus`] |
//! | `GET /metrics` | Prometheus text format ([`metrics_text`]) |
//! | `POST /restart` | hot-restart every shard (close keeping the session, resume); 202 |
//! | `POST /restart/{shard}` | hot-restart one shard; 202, or 404 for a shard not in this process |
//! | anything else | 404, or 405 with `Allow` for a known path and another method |
//!
//! Nothing served here contains the token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use handover_core::{Phase, RestartReason};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info};

use handover_runtime::metrics::write_header as header;
use handover_runtime::{ShardHandle, ShardStatus};

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the adapter itself (not of a shard), shared by its tasks.
#[derive(Debug, Default)]
pub struct AdapterCounters {
    /// Event lines written to stdout.
    pub events_written: AtomicU64,
    /// Stdin commands carried out.
    pub commands_ok: AtomicU64,
    /// Stdin commands refused (malformed, unknown, not sent).
    pub commands_failed: AtomicU64,
    /// Restarts asked for (HTTP, stdin, SIGHUP), per shard restarted.
    pub restarts_requested: AtomicU64,
    /// Whether the Redis coordination answers: 0 not used, 1 reachable, 2 unreachable.
    pub redis: AtomicU8,
}

impl AdapterCounters {
    /// Records whether the Redis coordination answered at its last use.
    pub fn set_redis_reachable(&self, reachable: bool) {
        self.redis
            .store(if reachable { 1 } else { 2 }, Ordering::Relaxed);
    }
}

/// What the control server needs: the shards and the adapter's counters.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    pub(crate) shards: Arc<BTreeMap<u32, ShardHandle>>,
    pub(crate) counters: Arc<AdapterCounters>,
}

impl Control {
    fn statuses(&self) -> Vec<ShardStatus> {
        self.shards.values().map(ShardHandle::status).collect()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_end_matches('/');
        let method = req.method();
        match (path, method) {
            ("/health", &Method::GET) => {
                let (healthy, body) = health_body(&self.statuses());
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, body)
            }
            ("/status", &Method::GET) => {
                let body = serde_json::to_string(&self.statuses()).unwrap_or_else(|_| "[]".into());
                json(StatusCode::OK, body)
            }
            ("/metrics", &Method::GET) => {
                let text = metrics_text(&self.statuses(), &self.counters);
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            ("/restart", &Method::POST) => {
                let ids: Vec<u32> = self.shards.keys().copied().collect();
                self.restart(&ids).await
            }
            ("/health" | "/status" | "/metrics", _) => not_allowed("GET"),
            ("/restart", _) => not_allowed("POST"),
            _ => match path.strip_prefix("/restart/") {
                Some(id) if method == Method::POST => match id.parse::<u32>() {
                    Ok(id) if self.shards.contains_key(&id) => self.restart(&[id]).await,
                    Ok(id) => json(
                        StatusCode::NOT_FOUND,
                        format!(r#"{{"error":"no shard {id} in this process"}}"#),
                    ),
                    Err(_) => json(
                        StatusCode::BAD_REQUEST,
                        r#"{"error":"the shard id is not a number"}"#.into(),
                    ),
                },
                Some(_) => not_allowed("POST"),
                None => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
            },
        }
    }

    async fn restart(&self, ids: &[u32]) -> Response<Full<Bytes>> {
        info!(shards = ?ids, "restart requested over http");
        let mut restarted = Vec::new();
        for id in ids {
            if let Some(h) = self.shards.get(id)
                && h.restart(RestartReason::Requested).await.is_ok()
            {
                restarted.push(*id);
                self.counters
                    .restarts_requested
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "restarting": restarted }).to_string(),
        )
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"error":"method not allowed"}"#.into(),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Serves the control API on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, control: Control) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(error) => {
                debug!(%error, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(control.answer(req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(error) = served {
                debug!(%peer, %error, "control connection ended with an error");
            }
        });
    }
}

/// The `/health` verdict and body: healthy when every shard is `receiving`.
///
/// Body: `{"healthy":false,"shards":[{"shard":0,"phase":"backing_off"}]}`.
pub fn health_body(statuses: &[ShardStatus]) -> (bool, String) {
    let healthy = !statuses.is_empty() && statuses.iter().all(|s| s.phase == Phase::Receiving);
    let shards: Vec<serde_json::Value> = statuses
        .iter()
        .map(|s| serde_json::json!({ "shard": s.shard, "phase": s.phase.name() }))
        .collect();
    let body = serde_json::json!({ "healthy": healthy, "shards": shards }).to_string();
    (healthy, body)
}

/// The Prometheus text exposition of every shard's status and the adapter's counters.
///
/// Per shard (label `shard`): `handover_shard_phase` (1 for the current `phase` label, 0 for
/// the others), `handover_shard_reconnects_total`, `handover_shard_identifies_total`,
/// `handover_shard_resumes_total`, `handover_shard_events_delivered_total`, `handover_shard_events_received_total`,
/// `handover_shard_duplicates_dropped_total`, `handover_shard_gaps_total`,
/// `handover_shard_latency_milliseconds` (the last round trip, absent until the first ACK),
/// `handover_shard_latency_average_milliseconds` (over the current connection),
/// `handover_shard_latency_recent_milliseconds{age}` (the last few, age 0 the newest),
/// `handover_shard_live_sockets`, `handover_shard_resumable`, `handover_shard_gave_up`. Process:
/// `handover_events_written_total`, `handover_commands_total{result}`,
/// `handover_restarts_requested_total`.
pub fn metrics_text(statuses: &[ShardStatus], counters: &AdapterCounters) -> String {
    let mut out = String::with_capacity(2048 + statuses.len() * 1024);
    handover_runtime::metrics::write_shard_metrics(&mut out, statuses);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    header(
        &mut out,
        "handover_events_written_total",
        "counter",
        "event lines written to stdout",
    );
    let _ = writeln!(
        out,
        "handover_events_written_total {}",
        load(&counters.events_written)
    );
    header(
        &mut out,
        "handover_commands_total",
        "counter",
        "stdin commands by result",
    );
    let _ = writeln!(
        out,
        "handover_commands_total{{result=\"ok\"}} {}",
        load(&counters.commands_ok)
    );
    let _ = writeln!(
        out,
        "handover_commands_total{{result=\"error\"}} {}",
        load(&counters.commands_failed)
    );
    header(
        &mut out,
        "handover_restarts_requested_total",
        "counter",
        "shard restarts asked for over http, stdin or SIGHUP",
    );
    let _ = writeln!(
        out,
        "handover_restarts_requested_total {}",
        load(&counters.restarts_requested)
    );
    let redis = counters.redis.load(Ordering::Relaxed);
    if redis != 0 {
        header(
            &mut out,
            "handover_redis_reachable",
            "gauge",
            "1 while the redis coordination answers, 0 while it does not (no identify then)",
        );
        let _ = writeln!(out, "handover_redis_reachable {}", u8::from(redis == 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_core::GiveUpReason;
    use std::time::Duration;

    fn status(shard: u32, phase: Phase) -> ShardStatus {
        ShardStatus {
            shard,
            phase,
            resumable: true,
            session_id: Some("s".into()),
            connected_since_ms: None,
            last_heartbeat_ack_ms: None,
            latency: Some(Duration::from_millis(12)),
            latency_average: Some(Duration::from_micros(10_500)),
            latency_recent: vec![Duration::from_millis(9), Duration::from_millis(12)],
            last_event_ms: None,
            reconnect_at_ms: None,
            reconnects: 2,
            identifies: 1,
            resumes: 1,
            delivered: 40,
            received: 45,
            duplicates_dropped: 3,
            gaps: 0,
            last_close_code: None,
            last_close_reason: None,
            last_error: None,
            gave_up: None,
            live_sockets: 1,
        }
    }

    #[test]
    fn health_needs_every_shard_receiving() {
        let (ok, body) = health_body(&[status(0, Phase::Receiving), status(1, Phase::Receiving)]);
        assert!(ok, "{body}");
        let (ok, body) = health_body(&[status(0, Phase::Receiving), status(1, Phase::BackingOff)]);
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["shards"][1]["phase"], "backing_off");
        assert!(!health_body(&[]).0, "no shard is not healthy");
    }

    #[test]
    fn metrics_are_well_formed() {
        let counters = AdapterCounters::default();
        counters.events_written.store(7, Ordering::Relaxed);
        let mut s1 = status(1, Phase::Failed);
        s1.latency = None;
        s1.latency_average = None;
        s1.latency_recent.clear();
        s1.gave_up = Some(GiveUpReason::FatalClose { code: Some(4004) });
        let text = metrics_text(&[status(0, Phase::Receiving), s1], &counters);
        assert!(text.contains("handover_shard_phase{shard=\"0\",phase=\"receiving\"} 1\n"));
        assert!(text.contains("handover_shard_phase{shard=\"0\",phase=\"stale\"} 0\n"));
        assert!(text.contains("handover_shard_phase{shard=\"1\",phase=\"failed\"} 1\n"));
        assert!(text.contains("handover_shard_identifies_total{shard=\"0\"} 1\n"));
        assert!(text.contains("handover_shard_duplicates_dropped_total{shard=\"0\"} 3\n"));
        assert!(text.contains("handover_shard_latency_milliseconds{shard=\"0\"} 12\n"));
        assert!(!text.contains("handover_shard_latency_milliseconds{shard=\"1\"}"));
        assert!(text.contains("handover_shard_latency_average_milliseconds{shard=\"0\"} 10\n"));
        assert!(
            text.contains("handover_shard_latency_recent_milliseconds{shard=\"0\",age=\"0\"} 12\n")
        );
        assert!(
            text.contains("handover_shard_latency_recent_milliseconds{shard=\"0\",age=\"1\"} 9\n")
        );
        assert!(!text.contains("handover_shard_latency_average_milliseconds{shard=\"1\"}"));
        assert!(!text.contains("handover_shard_latency_recent_milliseconds{shard=\"1\""));
        assert!(text.contains("handover_shard_gave_up{shard=\"1\"} 1\n"));
        assert!(text.contains("handover_events_written_total 7\n"));
        // Every sample line is `name{labels} value` or `name value`, under a TYPE line.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(name), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
