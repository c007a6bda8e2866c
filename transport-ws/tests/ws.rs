//! The WebSocket driver against real tokio-tungstenite servers on 127.0.0.1.
//!
//! Deadlines are configured short (hundreds of milliseconds) so no test waits for wall-clock
//! seconds; every wait is on an event or a status change, bounded by a limit that only matters
//! when the test fails.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::{Action, Behavior, TestServer};
use common::{LineCodec, check_one_end_per_transport, ends_of, transport_events};
use handover_core::{
    Backoff, Config, Connection, ConnectionStatus, Event, GiveUpReason, Phase, RestartReason,
    State, StopIntent, TransportId,
};
use handover_transport_ws::{
    Driver, DriverEvent, DriverEvents, DriverGone, DriverHandle, PermitDenied, PermitSource,
    SendError, TransportConfig, TransportError, TransportEvent,
};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Generous bound for things that take milliseconds; only reached when a test fails.
const LIMIT: Duration = Duration::from_secs(10);

fn core_config() -> Config {
    Config {
        open_timeout: Duration::from_secs(5),
        hello_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        drain_deadline: Duration::from_millis(300),
        backoff: Backoff {
            floor: Duration::from_millis(5),
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        },
        ..Config::default()
    }
}

struct Client {
    handle: DriverHandle<LineCodec>,
    events: DriverEvents<LineCodec>,
    log: Vec<DriverEvent<String>>,
}

impl Client {
    fn spawn(url: String, core: Config, transport: TransportConfig) -> Client {
        Self::spawn_with_permits(url, core, transport, None)
    }

    fn spawn_with_permits(
        url: String,
        core: Config,
        transport: TransportConfig,
        permits: Option<Arc<dyn PermitSource>>,
    ) -> Client {
        let (handle, events) = Driver::spawn(
            Connection::new(core, 11),
            LineCodec::new(url),
            transport,
            permits,
        );
        Client {
            handle,
            events,
            log: Vec::new(),
        }
    }

    /// Reads events (keeping them all) until one matches, or `limit` passes.
    async fn wait_for(&mut self, pred: impl Fn(&DriverEvent<String>) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next_event()).await {
                Ok(Some(ev)) => {
                    let hit = pred(&ev);
                    self.log.push(ev);
                    if hit {
                        return true;
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
    }

    async fn wait_ready(&mut self) {
        assert!(
            self.wait_for(|e| matches!(
                e,
                DriverEvent::Core(Event::Ready { .. } | Event::Resumed { .. })
            ))
            .await,
            "never identified: {:?}",
            self.log
        );
    }

    /// Reads whatever is already queued.
    fn drain(&mut self) {
        while let Some(ev) = self.events.try_next_event() {
            self.log.push(ev);
        }
    }

    fn facts(&mut self) -> Vec<TransportEvent> {
        self.drain();
        transport_events(&self.log)
    }

    fn errors(&self) -> Vec<&TransportError> {
        self.log
            .iter()
            .filter_map(|e| match e {
                DriverEvent::Error(err) => Some(err),
                _ => None,
            })
            .collect()
    }

    fn items(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|e| match e {
                DriverEvent::Item(i) => Some(i.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn wait_status(
    handle: &DriverHandle<LineCodec>,
    pred: impl Fn(&ConnectionStatus) -> bool,
) -> bool {
    let mut rx = handle.watch_status();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if pred(&rx.borrow_and_update()) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return pred(&rx.borrow()),
        }
    }
}

#[tokio::test]
async fn clean_close_handshake() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    assert_eq!(c.handle.live_transports(), 1);

    c.handle.stop(StopIntent::EndSession).await.unwrap();
    let status = c.handle.status();
    assert_eq!(
        (status.state, status.phase),
        (State::Closed, Phase::Stopped)
    );
    assert_eq!(c.handle.live_transports(), 0);
    let facts = c.facts();
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(1000)
        })
    );
    assert!(
        server
            .wait_until(LIMIT, |s| s.live == 0 && s.ended == 1)
            .await
    );
    let counts = server.counts();
    assert_eq!(counts.close_codes, vec![Some(1000)]);
    assert_eq!(counts.max_live, 1);
}

#[tokio::test]
async fn peer_never_answers_close_so_the_deadline_aborts() {
    let server = TestServer::start(Behavior {
        answer_close: false,
        ..Behavior::default()
    })
    .await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    let began = Instant::now();
    c.handle.stop(StopIntent::KeepResumable).await.unwrap();
    // It waited for the drain deadline (300 ms), not for a reply that never comes.
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!(c.handle.status().state, State::Closed);
    let facts = c.facts();
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert_eq!(ends_of(&facts, TransportId(1)), 1);
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: None
        })
    );
    // The server got our close frame, and then saw the socket dropped.
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    assert_eq!(server.counts().close_codes, vec![Some(4000)]);
}

#[tokio::test]
async fn peer_drops_tcp_without_close_then_the_session_resumes() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    server.act(Action::Drop);
    assert!(
        c.wait_for(|e| matches!(
            e,
            DriverEvent::Core(Event::Resumed {
                conn: TransportId(2)
            })
        ))
        .await
    );
    let facts = c.facts();
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert!(facts.contains(&TransportEvent::Closed {
        conn: TransportId(1),
        code: None
    }));
    // EOF without a close frame is a close with no code, not an error.
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    let counts = server.counts();
    assert_eq!(
        (counts.identifies, counts.resumes, counts.max_live),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn peer_close_frame_is_answered_and_its_code_reported() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    server.act(Action::Close(4000));
    assert!(
        c.wait_for(|e| matches!(
            e,
            DriverEvent::Core(Event::Resumed {
                conn: TransportId(2)
            })
        ))
        .await
    );
    let facts = c.facts();
    assert!(facts.contains(&TransportEvent::Closed {
        conn: TransportId(1),
        code: Some(4000)
    }));
    assert_eq!(check_one_end_per_transport(&facts), 1);
    assert_eq!(c.handle.status().last_close_code, Some(4000));
    // The server's handler ends cleanly: it got our close reply.
    assert!(server.wait_until(LIMIT, |s| s.ended >= 1).await);
    assert_eq!(server.counts().max_live, 1);
}

#[tokio::test]
async fn peer_close_without_eof_is_dropped_after_the_close_timeout() {
    let server = TestServer::start(Behavior::default()).await;
    let transport = TransportConfig {
        close_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(server.url(), core_config(), transport);
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    let began = Instant::now();
    server.act(Action::CloseAndHold(4000));
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Transport(TransportEvent::Closed { .. })))
            .await
    );
    // The driver answered, waited for an EOF that never came, and dropped the socket itself.
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        c.facts().last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(4000)
        })
    );
    assert!(server.wait_until(LIMIT, |s| s.ended == 1).await);
    c.wait_ready().await;
    assert_eq!(server.counts().max_live, 1);
}

#[tokio::test]
async fn handshake_never_completing_hits_the_connect_timeout() {
    let server = TestServer::start(Behavior {
        upgrade: false,
        ..Behavior::default()
    })
    .await;
    let transport = TransportConfig {
        connect_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(server.url(), core_config(), transport);
    c.handle.start().await.unwrap();
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Transport(TransportEvent::OpenFailed { .. })))
            .await
    );
    assert!(matches!(
        c.errors().as_slice(),
        [TransportError::ConnectTimeout {
            conn: TransportId(1),
            ..
        }]
    ));
    // It keeps trying (backoff), one socket at a time; stop ends the attempt under way.
    assert!(server.wait_until(LIMIT, |s| s.accepted >= 2).await);
    c.handle.stop(StopIntent::EndSession).await.unwrap();
    assert_eq!(c.handle.live_transports(), 0);
    let facts = c.facts();
    assert!(
        facts
            .iter()
            .all(|f| !matches!(f, TransportEvent::Opened { .. }))
    );
    assert_eq!(
        check_one_end_per_transport(&facts),
        facts
            .iter()
            .filter(|f| matches!(f, TransportEvent::Opening { .. }))
            .count()
    );
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    assert_eq!(server.counts().max_live, 1);
}

#[tokio::test]
async fn core_open_timeout_aborts_a_hanging_connect() {
    let server = TestServer::start(Behavior {
        upgrade: false,
        ..Behavior::default()
    })
    .await;
    let core = Config {
        open_timeout: Duration::from_millis(200),
        ..core_config()
    };
    let mut c = Client::spawn(server.url(), core, TransportConfig::default());
    c.handle.start().await.unwrap();
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Transport(TransportEvent::OpenFailed { .. })))
            .await
    );
    // Aborted by the core, not timed out by the transport (whose limit is 10 s).
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    c.handle.stop(StopIntent::EndSession).await.unwrap();
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    assert_eq!(server.counts().max_live, 1);
}

#[tokio::test]
async fn stop_while_connecting_cancels_the_connect() {
    let server = TestServer::start(Behavior {
        upgrade: false,
        ..Behavior::default()
    })
    .await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    assert!(server.wait_until(LIMIT, |s| s.accepted == 1).await);
    c.handle.stop(StopIntent::EndSession).await.unwrap();
    assert_eq!(
        c.facts(),
        vec![
            TransportEvent::Opening {
                conn: TransportId(1)
            },
            TransportEvent::OpenFailed {
                conn: TransportId(1)
            }
        ]
    );
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
}

fn tls_material() -> (Vec<u8>, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "handover test ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key_der)
    .unwrap();
    (ca_cert.der().to_vec(), Arc::new(config))
}

#[tokio::test]
async fn wss_with_the_custom_root_is_accepted() {
    let (ca, tls) = tls_material();
    let server = TestServer::start_with_tls(Behavior::default(), Some(tls)).await;
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let transport = TransportConfig {
        extra_root_certificates: vec![ca],
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(url, core_config(), transport);
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    c.handle.stop(StopIntent::EndSession).await.unwrap();
    assert_eq!(
        c.facts().last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(1000)
        })
    );
    assert_eq!(server.counts().close_codes, vec![Some(1000)]);
}

#[tokio::test]
async fn wss_without_the_custom_root_is_rejected() {
    let (_ca, tls) = tls_material();
    let server = TestServer::start_with_tls(Behavior::default(), Some(tls)).await;
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let mut c = Client::spawn(url, core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Transport(TransportEvent::OpenFailed { .. })))
            .await
    );
    assert!(
        matches!(
            c.errors().as_slice(),
            [TransportError::Tls {
                conn: TransportId(1),
                ..
            }]
        ),
        "{:?}",
        c.errors()
    );
    c.handle.stop(StopIntent::EndSession).await.unwrap();
    assert_eq!(server.counts().upgraded, 0);
}

/// Reads pass through the read-ahead buffer, under TLS and without, with it off, smaller than a
/// message, and at its default: every message of a flood arrives whole and in order.
#[tokio::test]
async fn a_flood_arrives_whole_and_in_order_through_the_read_ahead() {
    const N: usize = 3_000;
    let (ca, tls) = tls_material();
    for secure in [false, true] {
        for read_ahead in [0, 700, TransportConfig::default().read_ahead_size] {
            let behavior = Behavior {
                flood: Some((N, 1024)),
                ..Behavior::default()
            };
            let server = TestServer::start_with_tls(behavior, secure.then(|| tls.clone())).await;
            let scheme = if secure { "wss" } else { "ws" };
            let url = format!("{scheme}://127.0.0.1:{}/", server.addr.port());
            let transport = TransportConfig {
                extra_root_certificates: vec![ca.clone()],
                read_ahead_size: read_ahead,
                ..TransportConfig::default()
            };
            let mut c = Client::spawn(url, core_config(), transport);
            c.handle.start().await.unwrap();
            let mut next = 0usize;
            while next < N {
                match tokio::time::timeout(LIMIT, c.events.next_event()).await {
                    Ok(Some(DriverEvent::Item(item))) => {
                        let index: usize = item.split(' ').next().unwrap().parse().unwrap();
                        assert_eq!(index, next, "{scheme}, read-ahead {read_ahead}");
                        assert!(item.len() >= 1000, "a whole message: {} bytes", item.len());
                        next += 1;
                    }
                    Ok(Some(DriverEvent::Error(e))) => panic!("{scheme}: {e}"),
                    Ok(Some(_)) => {}
                    other => panic!("{scheme}: events ended early at {next}: {other:?}"),
                }
            }
            c.handle.stop(StopIntent::EndSession).await.unwrap();
            assert_eq!(c.handle.status().opens, 1);
        }
    }
}

#[tokio::test]
async fn oversize_message_is_a_typed_error_and_the_connection_recovers() {
    let server = TestServer::start(Behavior::default()).await;
    let transport = TransportConfig {
        max_message_size: 1024,
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(server.url(), core_config(), transport);
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    server.act(Action::Send(WsMessage::text(format!(
        "event {}",
        "x".repeat(4096)
    ))));
    assert!(
        c.wait_for(|e| matches!(
            e,
            DriverEvent::Core(Event::Resumed {
                conn: TransportId(2)
            })
        ))
        .await
    );
    assert!(
        c.errors().iter().any(|e| matches!(
            e,
            TransportError::TooLarge {
                conn: TransportId(1),
                max: 1024,
                ..
            }
        )),
        "{:?}",
        c.errors()
    );
    assert!(c.items().is_empty());
    let facts = c.facts();
    assert!(facts.contains(&TransportEvent::Closed {
        conn: TransportId(1),
        code: None
    }));
    assert_eq!(check_one_end_per_transport(&facts), 1);

    // The new connection works.
    server.act(Action::Send(WsMessage::text("event small")));
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Item(i) if i == "small"))
            .await
    );
}

#[tokio::test]
async fn oversize_frame_is_a_typed_error() {
    let server = TestServer::start(Behavior::default()).await;
    let transport = TransportConfig {
        max_frame_size: 512,
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(server.url(), core_config(), transport);
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    server.act(Action::Send(WsMessage::text(format!(
        "event {}",
        "y".repeat(600)
    ))));
    assert!(
        c.wait_for(|e| matches!(e, DriverEvent::Transport(TransportEvent::Closed { .. })))
            .await
    );
    assert!(
        matches!(
            c.errors().as_slice(),
            [TransportError::TooLarge { max: 512, .. }]
        ),
        "{:?}",
        c.errors()
    );
}

#[tokio::test]
async fn decode_errors_are_reported_and_not_fatal() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    server.act(Action::Send(WsMessage::text("garbage")));
    server.act(Action::Send(WsMessage::text("event after")));
    assert!(c.wait_for(|e| matches!(e, DriverEvent::Item(_))).await);
    assert!(matches!(
        c.errors().as_slice(),
        [TransportError::Decode { .. }]
    ));
    assert_eq!(c.items(), vec!["after".to_owned()]);
    assert_eq!(c.handle.status().state, State::Identified);
}

#[tokio::test]
async fn pings_are_answered() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    server.act(Action::Send(WsMessage::Ping("are you there".into())));
    assert!(server.wait_until(LIMIT, |s| s.pongs == 1).await);
    assert_eq!(c.handle.status().state, State::Identified);
}

#[tokio::test]
async fn send_only_when_identified_and_nothing_on_error() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    assert!(matches!(
        c.handle.send("early".into()).await,
        Err(SendError::NotIdentified)
    ));
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    c.handle.send("hi".into()).await.unwrap();
    assert!(matches!(
        c.handle.send("z".repeat(100)).await,
        Err(SendError::Codec(_))
    ));
    c.handle.send("bye".into()).await.unwrap();
    assert!(server.wait_until(LIMIT, |s| s.commands.len() >= 2).await);
    assert_eq!(
        server.counts().commands,
        vec!["cmd hi".to_owned(), "cmd bye".to_owned()]
    );
}

/// Concurrent restarts from several handles, plus stop/start, while the server counts sockets:
/// never more than one at once, exactly one end per transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_never_opens_a_second_socket() {
    let server = TestServer::start(Behavior {
        interval_ms: 50,
        ..Behavior::default()
    })
    .await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;

    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let handle = c.handle.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..12u64 {
                handle.restart(RestartReason::HealthMonitor).await.unwrap();
                if (t + i) % 3 == 0 {
                    // Let a reconnect finish sometimes, so sockets really are swapped.
                    wait_status(&handle, |s| s.state == State::Identified).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let toggler = {
        let handle = c.handle.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                // Other handles keep restarting, so a socket may be live again as soon as
                // this returns; the server-side count is what proves the invariant.
                handle.stop(StopIntent::KeepResumable).await.unwrap();
                handle.start().await.unwrap();
                wait_status(&handle, |s| s.state == State::Identified).await;
            }
        })
    };
    // Read events while the storm runs, so the driver never pauses.
    let reader = async {
        for t in tasks {
            t.await.unwrap();
        }
        toggler.await.unwrap();
    };
    let mut collected = Vec::new();
    tokio::pin!(reader);
    loop {
        tokio::select! {
            () = &mut reader => break,
            Some(ev) = c.events.next_event() => collected.push(ev),
        }
    }
    c.log.extend(collected);
    c.handle.start().await.unwrap();
    assert!(wait_status(&c.handle, |s| s.state == State::Identified).await);
    c.handle.stop(StopIntent::EndSession).await.unwrap();

    assert_eq!(server.counts().max_live, 1, "{:?}", server.counts());
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    let counts = server.counts();
    assert_eq!(counts.max_live, 1, "{counts:?}");
    assert!(
        counts.accepted >= 6,
        "storm swapped too few sockets: {counts:?}"
    );
    let ended = check_one_end_per_transport(&c.facts());
    assert_eq!(ended, counts.accepted, "{counts:?}");
    assert_eq!(counts.identifies, 1, "restarts must resume: {counts:?}");
}

/// The driver hands the events of a burst over at once and the reader takes a whole batch at
/// once. With event queues far smaller than one socket read's worth of messages, batch
/// boundaries fall inside bursts and inside the reader's batches (it yields to the driver
/// every few events): no message is lost, doubled or reordered at any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_larger_than_the_event_queue_arrive_whole_and_in_order() {
    const N: usize = 4_000;
    for (capacity, pending) in [(1, 1), (3, 7), (5, 200), (64, 2)] {
        let server = TestServer::start(Behavior {
            flood: Some((N, 600)),
            ..Behavior::default()
        })
        .await;
        let transport = TransportConfig {
            event_capacity: capacity,
            max_pending_events: pending,
            ..TransportConfig::default()
        };
        let mut c = Client::spawn(server.url(), core_config(), transport);
        c.handle.start().await.unwrap();
        let mut next = 0usize;
        let mut read = 0usize;
        while next < N {
            read += 1;
            if read.is_multiple_of(7) {
                tokio::task::yield_now().await;
            }
            match tokio::time::timeout(LIMIT, c.events.next_event()).await {
                Ok(Some(DriverEvent::Item(item))) => {
                    let index: usize = item.split(' ').next().unwrap().parse().unwrap();
                    assert_eq!(index, next, "capacity {capacity}, pending {pending}");
                    next += 1;
                }
                Ok(Some(DriverEvent::Error(e))) => panic!("capacity {capacity}: {e}"),
                Ok(Some(_)) => {}
                other => panic!("capacity {capacity}: events ended early at {next}: {other:?}"),
            }
        }
        c.handle.stop(StopIntent::EndSession).await.unwrap();
        assert_eq!(
            c.handle.status().opens,
            1,
            "capacity {capacity}: no reconnect"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_pauses_the_socket_but_not_the_timers() {
    const N: usize = 24_000;
    let server = TestServer::start(Behavior {
        interval_ms: 150,
        flood: Some((N, 1024)),
        ..Behavior::default()
    })
    .await;
    let transport = TransportConfig {
        event_capacity: 4,
        max_pending_events: 4,
        ..TransportConfig::default()
    };
    let mut c = Client::spawn(server.url(), core_config(), transport);
    c.handle.start().await.unwrap();
    // Read nothing for ten heartbeat intervals. Heartbeats still go out, and the ACKs waiting
    // unread never make the core judge the connection dead (the driver reports the pause)...
    assert!(server.wait_until(LIMIT, |s| s.heartbeats >= 10).await);
    assert_eq!(
        server.counts().accepted,
        1,
        "no reconnect while not reading"
    );
    // ...while the flood is held back by TCP: far less than all of it left the server.
    let sent = server.counts().flood_sent;
    assert!(sent < N, "the driver read everything into memory: {sent}");
    assert!(
        !server
            .wait_until(Duration::from_millis(200), |s| s.flood_sent == N)
            .await
    );

    // Now read: every event arrives, in order, none lost.
    let mut next = 0usize;
    while next < N {
        match tokio::time::timeout(LIMIT, c.events.next_event()).await {
            Ok(Some(DriverEvent::Item(item))) => {
                let index: usize = item.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(index, next);
                next += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("events ended early at {next}: {other:?}"),
        }
    }
    assert_eq!(server.counts().flood_sent, N);
    assert_eq!(c.handle.status().opens, 1);
}

#[tokio::test]
async fn dropping_every_handle_stops_the_connection_and_ends_the_task() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    let Client {
        handle, mut events, ..
    } = c;
    drop(handle);
    let mut facts = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, events.next_event()).await {
            Ok(Some(DriverEvent::Transport(t))) => facts.push(t),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => panic!("task did not end"),
        }
    }
    assert_eq!(
        facts.last(),
        Some(&TransportEvent::Closed {
            conn: TransportId(1),
            code: Some(4000)
        })
    );
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    assert_eq!(server.counts().close_codes, vec![Some(4000)]);
}

#[tokio::test]
async fn shutdown_waits_for_the_task_and_later_calls_fail() {
    let server = TestServer::start(Behavior::default()).await;
    let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
    c.handle.start().await.unwrap();
    c.wait_ready().await;
    let other = c.handle.clone();
    c.handle.shutdown().await;
    assert!(other.is_finished());
    assert_eq!(other.live_transports(), 0);
    assert_eq!(other.start().await, Err(DriverGone));
    assert!(matches!(
        other.send("x".into()).await,
        Err(SendError::DriverGone(_))
    ));
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
}

#[test]
fn runtime_shutdown_drops_the_socket() {
    let outer = tokio::runtime::Runtime::new().unwrap();
    let server = outer.block_on(TestServer::start(Behavior::default()));
    let inner = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = inner.block_on(async {
        let mut c = Client::spawn(server.url(), core_config(), TransportConfig::default());
        c.handle.start().await.unwrap();
        c.wait_ready().await;
        c.handle
    });
    assert_eq!(handle.live_transports(), 1);
    // Cancel the driver task mid-connection: its socket goes with it.
    drop(inner);
    assert_eq!(handle.live_transports(), 0);
    assert!(outer.block_on(server.wait_until(LIMIT, |s| s.live == 0)));
}

struct Gate {
    open: Arc<Notify>,
    deny: bool,
    asked: Arc<AtomicUsize>,
}

impl PermitSource for Gate {
    fn acquire(&self) -> Pin<Box<dyn Future<Output = Result<(), PermitDenied>> + Send>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.deny {
            return Box::pin(async { Err(PermitDenied::new("identify budget exhausted")) });
        }
        let open = self.open.clone();
        Box::pin(async move {
            open.notified().await;
            Ok(())
        })
    }
}

fn gated(deny: bool) -> (Arc<Notify>, Arc<AtomicUsize>, Arc<dyn PermitSource>) {
    let open = Arc::new(Notify::new());
    let asked = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        open: open.clone(),
        deny,
        asked: asked.clone(),
    };
    (open, asked, Arc::new(gate))
}

#[tokio::test]
async fn permit_wait_keeps_heartbeats_flowing_and_holds_the_identify() {
    let server = TestServer::start(Behavior {
        interval_ms: 40,
        ..Behavior::default()
    })
    .await;
    let core = Config {
        gate_new_sessions: true,
        ..core_config()
    };
    let (open, asked, source) = gated(false);
    let mut c =
        Client::spawn_with_permits(server.url(), core, TransportConfig::default(), Some(source));
    c.handle.start().await.unwrap();
    assert!(wait_status(&c.handle, |s| s.phase == Phase::AwaitingPermit).await);
    assert!(server.wait_until(LIMIT, |s| s.heartbeats >= 2).await);
    assert_eq!(server.counts().identifies, 0);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    open.notify_one();
    c.wait_ready().await;
    assert_eq!(server.counts().identifies, 1);
}

#[tokio::test]
async fn permit_denied_gives_up_and_closes() {
    let server = TestServer::start(Behavior::default()).await;
    let core = Config {
        gate_new_sessions: true,
        ..core_config()
    };
    let (_open, _asked, source) = gated(true);
    let mut c =
        Client::spawn_with_permits(server.url(), core, TransportConfig::default(), Some(source));
    c.handle.start().await.unwrap();
    assert!(
        c.wait_for(|e| matches!(
            e,
            DriverEvent::Core(Event::GaveUp(GiveUpReason::PermitDenied))
        ))
        .await
    );
    assert_eq!(c.handle.status().gave_up, Some(GiveUpReason::PermitDenied));
    assert_eq!(check_one_end_per_transport(&c.facts()), 1);
    assert!(server.wait_until(LIMIT, |s| s.live == 0).await);
    let counts = server.counts();
    assert_eq!(
        (counts.identifies, counts.close_codes.clone()),
        (0, vec![Some(1000)])
    );
}
