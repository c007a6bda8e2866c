//! The driver's clock: tokio's, so that a runtime with a paused clock (tokio's test-util
//! `start_paused`, or `tokio::time::pause`) runs the driver, its timers and the core's deadlines
//! in virtual time. On a normal runtime it reads the same monotonic clock as `Instant::now`.

use std::time::Instant;

/// Now, by the tokio clock of the current runtime.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
