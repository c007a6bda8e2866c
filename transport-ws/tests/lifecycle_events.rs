//! Lifecycle events are never dropped, and never pile up without bound, while the application
//! does not read: a gateway that fails every connection makes the driver reconnect again and
//! again; once the application is far behind, the next reconnect waits for it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{LineCodec, check_one_end_per_transport, transport_events};
use handover_core::{Backoff, Config, Connection};
use handover_transport_ws::{Driver, TransportConfig};

/// Accepts TCP on 127.0.0.1 and closes every connection at once (every WebSocket upgrade
/// fails). Counts the connections.
async fn refusing_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_application_holds_reconnects_instead_of_losing_events() {
    let (url, accepted) = refusing_listener().await;
    let core = Config {
        backoff: Backoff {
            floor: Duration::from_millis(1),
            base: Duration::from_millis(2),
            cap: Duration::from_millis(5),
        },
        ..Config::default()
    };
    let transport = TransportConfig {
        event_capacity: 4,
        max_pending_events: 4,
        ..TransportConfig::default()
    };
    let (handle, mut events) = Driver::spawn(
        Connection::new(core, 3),
        LineCodec::new(url),
        transport,
        None,
    );
    handle.start().await.unwrap();

    // Read nothing for a while: with a reconnect every few milliseconds, hundreds of cycles
    // would fit in this time. The driver holds a few and then waits for the application.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let while_unread = accepted.load(Ordering::SeqCst);
    assert!(while_unread >= 1, "it did connect: {while_unread}");
    assert!(
        while_unread <= 8,
        "reconnects went on with nobody reading: {while_unread}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), while_unread, "held");

    // Now read: every transport that opened has exactly one end, none was dropped, and the
    // reconnects go on.
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) < while_unread + 20 {
        match tokio::time::timeout_at(deadline, events.next_event()).await {
            Ok(Some(ev)) => log.push(ev),
            other => panic!("events ended: {other:?}"),
        }
    }
    handle.shutdown().await;
    while let Some(ev) = events.next_event().await {
        log.push(ev);
    }
    let facts = transport_events(&log);
    let ended = check_one_end_per_transport(&facts);
    assert!(ended >= while_unread + 20, "{ended} ends for {facts:?}");
}
