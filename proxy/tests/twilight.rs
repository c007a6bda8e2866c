//! A client someone else wrote (twilight-gateway) through the proxy to the mock gateway: it is
//! dropped and restarted many times during a stream, resumes each time with its session id
//! and seq, and sees every event exactly once; upstream, the mock saw one IDENTIFY and no
//! reconnect.

use std::time::Duration;

use futures_util::StreamExt;
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_protocol::{GatewayConfig, Intents, Token};
use handover_proxy::server::Proxy;
use handover_proxy::{HubConfig, ProxyConfig};
use handover_runtime::{Fleet, FleetConfig, ShardSelection};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use twilight_gateway::{ConfigBuilder, Message, Session, Shard, ShardId};

/// Events dispatched upstream during the test.
const EVENTS: u64 = 900;
/// Clients reading at once, each with its own session.
const CLIENTS: usize = 2;
/// Restarts of each client during the stream. twilight-gateway waits at least one second
/// before every connection it opens, so each restart costs a second of test time.
const RESTARTS: usize = 6;

async fn start() -> (MockServer, Proxy, String) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let intents = Intents::GUILDS | Intents::GUILD_MESSAGES;
    let mut gateway = GatewayConfig::new(Token::new(DEFAULT_TOKEN).unwrap(), intents);
    gateway.gateway_url = mock.url();
    let fleet = Fleet::start(FleetConfig::new(gateway, ShardSelection::All { total: 1 })).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let hub = HubConfig::new(
        Token::new(DEFAULT_TOKEN).unwrap(),
        intents,
        vec![0],
        1,
        url.clone(),
    );
    let proxy = Proxy::start(listener, fleet, ProxyConfig::new(hub)).unwrap();
    let handle = proxy.handle();
    for _ in 0..500 {
        if handle.upstream_ready(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        handle.upstream_ready(0),
        "the upstream shard never got READY"
    );
    (mock, proxy, url)
}

fn twilight_shard(url: &str, session: Option<(&str, u64)>) -> Shard {
    // twilight adds the `Bot ` prefix itself.
    let mut builder = ConfigBuilder::new(
        DEFAULT_TOKEN.to_owned(),
        twilight_gateway::Intents::GUILDS | twilight_gateway::Intents::GUILD_MESSAGES,
    )
    .proxy_url(url.to_owned());
    if let Some((id, seq)) = session {
        builder = builder
            .session(Session::new(seq, id.to_owned()))
            .resume_url(url.to_owned());
    }
    Shard::with_config(ShardId::ONE, builder.build())
}

/// What one client saw: the `n` of every event in order, how many times it resumed.
struct Seen {
    events: Vec<u64>,
    resumed: usize,
    readies: usize,
}

async fn client(url: String, index: usize, ready_tx: tokio::sync::mpsc::Sender<()>) -> Seen {
    let mut rng = fastrand::Rng::with_seed(index as u64 + 1);
    let mut seen = Seen {
        events: Vec::new(),
        resumed: 0,
        readies: 0,
    };
    let mut session: Option<(String, u64)> = None;
    let mut restarts = 0;
    // Bounded: each incarnation ends after a number of events, or at the last one.
    while restarts <= RESTARTS {
        let mut shard = twilight_shard(&url, session.as_ref().map(|(id, s)| (id.as_str(), *s)));
        let quota = if restarts == RESTARTS {
            u64::MAX
        } else {
            rng.u64(40..110)
        };
        let mut got = 0;
        while got < quota {
            let Some(message) = shard.next().await else {
                panic!("client {index}: stream ended");
            };
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(frame)) => panic!("client {index}: closed {frame:?}"),
                Err(e) => panic!("client {index}: {e}"),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["op"] == 9 {
                panic!("client {index}: invalid session after {restarts} restarts");
            }
            if v["op"] != 0 {
                continue;
            }
            let seq = v["s"].as_u64().unwrap();
            match v["t"].as_str().unwrap() {
                "READY" => {
                    seen.readies += 1;
                    let id = v["d"]["session_id"].as_str().unwrap().to_owned();
                    session = Some((id, seq));
                    let _ = ready_tx.send(()).await;
                }
                "RESUMED" => seen.resumed += 1,
                "E" => {
                    let n = v["d"]["n"].as_u64().unwrap();
                    seen.events.push(n);
                    if let Some((_, s)) = session.as_mut() {
                        *s = seq;
                    }
                    got += 1;
                    if n == EVENTS {
                        return seen;
                    }
                }
                _ => {}
            }
        }
        // Killed: the socket is dropped without a close frame, the way a crashed process
        // leaves; the next incarnation resumes with what this one processed.
        drop(shard);
        restarts += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_clients_restarted_during_a_stream_see_every_event_exactly_once() {
    let (mock, proxy, url) = start().await;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(url.clone(), i, ready_tx.clone())))
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
            .await
            .expect("a client never got READY");
    }
    let mock_handle = mock.handle();
    let producer = tokio::spawn(async move {
        for n in 1..=EVENTS {
            mock_handle.dispatch(0, "E", &json!({ "n": n }));
            tokio::time::sleep(Duration::from_millis(9)).await;
        }
    });
    for (i, c) in clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(90), c)
            .await
            .expect("client did not finish in time")
            .unwrap();
        let expected: Vec<u64> = (1..=EVENTS).collect();
        assert_eq!(
            seen.events, expected,
            "client {i}: every event once, in order"
        );
        assert_eq!(seen.readies, 1, "client {i} identified once");
        // An incarnation killed during its replay never reads RESUMED; the proxy's count of
        // accepted resumes below is the one that must match.
        assert!(seen.resumed <= RESTARTS, "client {i}");
    }
    producer.await.unwrap();
    let counters = mock.handle().counters();
    let shard = counters.shard(0);
    assert_eq!(shard.identifies, 1, "upstream: one identify");
    assert_eq!(
        shard.resumes_ok + shard.resumes_failed,
        0,
        "upstream: no reconnect"
    );
    assert_eq!(counters.connections_accepted, 1, "upstream: one socket");
    let stats = proxy.handle().stats();
    assert_eq!(
        stats.resumes,
        (CLIENTS * RESTARTS) as u64,
        "every restart resumed"
    );
    assert!(
        stats.replayed > 0,
        "restarts missed events that were replayed"
    );
    assert_eq!(stats.resumes_refused, 0);
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}
