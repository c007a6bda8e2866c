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
