//! What an idle driver keeps on the heap: its task (future and state) and the small shared
//! state of its queues, nothing sized for traffic. A global allocator counting the live bytes
//! of the current thread gives a byte count, not a timing. The drivers here are never started
//! (no socket), so the count is the driver's own, whatever the socket layers keep.

mod common;
#[path = "../../protocol/tests/live_bytes/mod.rs"]
mod live_bytes;

use common::LineCodec;
use handover_core::{Config, Connection};
use handover_transport_ws::{Driver, TransportConfig};
use live_bytes::{LiveBytes, live};

#[global_allocator]
static ALLOC: LiveBytes = LiveBytes;

const DRIVERS: usize = 64;

/// Live bytes per idle, parked driver task with its handle and event receiver.
///
/// Measured: 2.5 KiB with this codec (the task's state, about 1.1 KiB, once; the parked
/// future's locals; the task header; the small shared states of the command queue, the event
/// queue and the status watch). The bound, 3 KiB, leaves room for dependency updates but not
/// for either of two things this test caught: a tokio mpsc command channel allocates a first
/// block of 32 command slots when created (3.7 KiB more), and an async fn taking the task by
/// value kept it twice in the future, once as the argument and once as the local it is moved
/// into (1.1 KiB more).
#[test]
fn an_idle_driver_keeps_its_state_once_and_no_command_slots() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let state = std::mem::size_of::<Connection>() + std::mem::size_of::<LineCodec>();
    let per_driver = runtime.block_on(async {
        // Warm up: the runtime's own first allocations (timer wheel, task lists) are not the
        // driver's.
        let warm = spawn_parked(4).await;
        drop(warm);
        let before = live();
        let drivers = spawn_parked(DRIVERS).await;
        let after = live();
        drop(drivers);
        (after - before) / DRIVERS as i64
    });
    let bound = 3 * 1024;
    assert!(
        per_driver <= bound,
        "an idle driver keeps {per_driver} B of heap, more than {bound} B \
         (connection + codec: {state} B)"
    );
}

/// Spawns `n` drivers (never started) and lets every task run until it parks.
async fn spawn_parked(n: usize) -> Vec<impl Send> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let core = Connection::new(Config::default(), 7);
        let codec = LineCodec::new("ws://127.0.0.1:9/");
        all.push(Driver::spawn(core, codec, TransportConfig::default(), None));
    }
    // Bounded: each task needs one poll to park; a few rounds leave slack.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    all
}

/// Connected drivers measured here.
const SOCKETS: usize = 16;

/// Live bytes per open, idle socket (identified, nothing arriving): the stream and the
/// socket's state, no receive or send buffer. The server runs on another thread, so only the
/// client side is counted.
///
/// Measured: 798 B (tokio's registration of the stream, the socket with its frame reader, the
/// upgrade and read-ahead wrappers, all empty); 4,615 B with tungstenite's `WebSocket`. The bound, 2 KiB, fails with the 4 KiB receive buffer that
/// tungstenite's `WebSocket` keeps for a socket's life (the transport's frame reader lets its
/// buffer go whenever the socket runs dry).
#[test]
fn an_idle_open_socket_holds_no_receive_buffer() {
    // The server runs on a thread of its own, so its allocations are not counted.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a server runtime builds");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds on loopback");
            let addr = listener.local_addr().expect("a bound address");
            let _ = url_tx.send(format!("ws://{addr}/"));
            tokio::select! {
                _ = stop_rx => {}
                () = serve_lines(listener) => {}
            }
        });
    });
    let url = url_rx.recv().expect("the server starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let per_socket = runtime.block_on(async {
        // Warm up: the runtime's I/O driver and the first connection's one-time allocations
        // (the TLS-less connect path, the reactor's slab page) are not a socket's.
        let mut warm = connect_idle(&url, 2).await;
        warm.clear();
        let before = live();
        let mut drivers = spawn_started(&url, SOCKETS).await;
        settle(&mut drivers).await;
        let started = live() - before;
        for (handle, _) in &drivers {
            let _ = handle.stop(handover_core::StopIntent::EndSession).await;
        }
        drop(drivers);
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        // The same drivers without a socket: their own state (the test above bounds it).
        let before = live();
        let parked = spawn_parked(SOCKETS).await;
        let unstarted = live() - before;
        drop(parked);
        (started - unstarted) / SOCKETS as i64
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    let bound = 2 * 1024;
    assert!(
        per_socket <= bound,
        "an idle open socket keeps {per_socket} B of heap, more than {bound} B"
    );
}

/// Serves the line protocol to any number of clients until each goes.
async fn serve_lines(listener: tokio::net::TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(common::lines::serve_lines(tcp, 60_000, true));
    }
}

type Started = (
    handover_transport_ws::DriverHandle<LineCodec>,
    handover_transport_ws::DriverEvents<LineCodec>,
);

/// Spawns and starts `n` drivers against `url`.
async fn spawn_started(url: &str, n: usize) -> Vec<Started> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let core = Connection::new(Config::default(), 7);
        let (handle, events) =
            Driver::spawn(core, LineCodec::new(url), TransportConfig::default(), None);
        handle.start().await.expect("the driver runs");
        all.push((handle, events));
    }
    all
}

/// Waits (bounded) until every driver is identified, then lets each go quiet.
async fn settle(drivers: &mut [Started]) {
    use handover_core::Event;
    use handover_transport_ws::DriverEvent;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for (_, events) in drivers.iter_mut() {
        loop {
            match tokio::time::timeout_at(deadline, events.next_event()).await {
                Ok(Some(DriverEvent::Core(Event::Ready { .. }))) => break,
                Ok(Some(_)) => {}
                other => panic!("a driver never identified (timed out: {})", other.is_err()),
            }
        }
    }
    // Nothing more arrives (heartbeats are a minute apart): let every task park.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for (_, events) in drivers.iter_mut() {
        while events.try_next_event().is_some() {}
    }
}

/// `n` identified, idle drivers (for warming up).
async fn connect_idle(url: &str, n: usize) -> Vec<Started> {
    let mut drivers = spawn_started(url, n).await;
    settle(&mut drivers).await;
    drivers
}
