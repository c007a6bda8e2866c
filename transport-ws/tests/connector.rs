//! A connector in place of TCP: the driver runs its WebSocket over in-memory byte streams, and
//! under a paused tokio clock its timers and the core's deadlines run in virtual time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::LineCodec;
use handover_core::{Config, Connection, State, TransportId};
use handover_transport_ws::{
    Connector, ConnectorFuture, Driver, DriverEvent, SharedConnector, TransportConfig,
    TransportEvent,
};

/// How the in-memory server treats heartbeats.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Answers every heartbeat.
    Acks,
    /// Never answers one (a zombie connection).
    Silent,
}

/// Each connect makes a duplex pipe and serves a line-protocol WebSocket on its far end.
struct MemoryNet {
    server: Server,
    dialed: Dialed,
}

impl Connector for MemoryNet {
    fn connect(&self, conn: TransportId, host: &str, port: u16) -> ConnectorFuture {
        self.dialed
            .lock()
            .expect("lock")
            .push((conn, host.to_owned(), port));
        let (client, far) = tokio::io::duplex(64 << 10);
        let server = self.server;
        tokio::spawn(common::lines::serve_lines(
            far,
            1000,
            server == Server::Acks,
        ));
        Box::pin(async move { Ok(Box::new(client) as handover_transport_ws::BoxByteStream) })
    }
}

/// What the connector was asked to dial: socket, host, port.
type Dialed = Arc<Mutex<Vec<(TransportId, String, u16)>>>;

fn spawn(
    server: Server,
) -> (
    handover_transport_ws::DriverHandle<LineCodec>,
    handover_transport_ws::DriverEvents<LineCodec>,
    Dialed,
) {
    let dialed = Arc::new(Mutex::new(Vec::new()));
    let transport = TransportConfig {
        connector: Some(SharedConnector::new(MemoryNet {
            server,
            dialed: dialed.clone(),
        })),
        ..TransportConfig::default()
    };
    let core = Connection::new(Config::default(), 7);
    let codec = LineCodec::new("ws://gateway.invalid:4242/?v=10");
    let (handle, events) = Driver::spawn(core, codec, transport, None);
    (handle, events, dialed)
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_heartbeats_passes_in_virtual_time() {
    let (handle, mut events, dialed) = spawn(Server::Acks);
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    handle.start().await.expect("driver runs");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let status = handle.status();
    assert_eq!(status.state, State::Identified, "{status:?}");
    let mut opened = 0;
    while let Some(ev) = events.try_next_event() {
        if let DriverEvent::Transport(TransportEvent::Opened { .. }) = ev {
            opened += 1;
        }
    }
    assert_eq!(opened, 1, "one socket for the whole hour");
    assert!(tokio::time::Instant::now() - started >= Duration::from_secs(3600));
    // Virtual time: an hour of 1 s heartbeats does not take an hour (bounded generously).
    assert!(wall.elapsed() < Duration::from_secs(600));
    let dialed = dialed.lock().expect("lock").clone();
    assert_eq!(dialed.len(), 1);
    assert_eq!(
        (dialed[0].1.as_str(), dialed[0].2),
        ("gateway.invalid", 4242)
    );
}

#[tokio::test(start_paused = true)]
async fn a_zombie_is_judged_by_the_virtual_clock() {
    let (handle, mut events, dialed) = spawn(Server::Silent);
    handle.start().await.expect("driver runs");
    // Unanswered heartbeats (1 s interval) are judged within a few intervals; the core then
    // closes that socket and opens another, over the same connector.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut ends = 0;
    while let Some(ev) = events.try_next_event() {
        if let DriverEvent::Transport(TransportEvent::Closed { .. }) = ev {
            ends += 1;
        }
    }
    assert!(ends >= 1, "the silent socket was ended");
    assert!(dialed.lock().expect("lock").len() >= 2, "and replaced");
}

/// The planted close-path bug is real: with it, the far end sees the old socket still open
/// when the next one connects. (The simulation's checker must catch this; see tests/.)
#[cfg(feature = "planted-faults")]
#[tokio::test(start_paused = true)]
async fn the_planted_fault_keeps_a_reported_socket_open() {
    use handover_transport_ws::PlantedFault;
    let dialed: Dialed = Arc::new(Mutex::new(Vec::new()));
    let transport = TransportConfig {
        connector: Some(SharedConnector::new(MemoryNet {
            server: Server::Silent,
            dialed: dialed.clone(),
        })),
        planted_fault: Some(PlantedFault::ReportGoneBeforeDrop),
        ..TransportConfig::default()
    };
    let core = Connection::new(Config::default(), 7);
    let (handle, _events) = Driver::spawn(core, LineCodec::new("ws://g.invalid/"), transport, None);
    handle.start().await.expect("driver runs");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(dialed.lock().expect("lock").len() >= 2);
    assert!(
        handle.live_transports() >= 2,
        "reported sockets are still alive"
    );
}
