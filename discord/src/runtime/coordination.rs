//! Who grants identify permits: the seam between a fleet and whatever coordinates identifies
//! across shards, processes and machines.
//!
//! Discord allows one IDENTIFY per concurrency bucket (`shard_id % max_concurrency`) per 5 s
//! and a daily budget of session starts for the whole bot, whichever process spends it. A
//! [`PermitSource`] answers one shard's asks (the lifecycle core asks before every identify,
//! never before a resume); an [`IdentifyCoordinator`] hands out one permit source per shard.
//!
//! The default is [`IdentifyGate`](super::IdentifyGate), an in-process queue that knows only the
//! shards of its own process. A bot split over processes plugs in a shared one (for example the
//! Redis coordinator of `handover_discord::redis`, behind the `redis` feature) through
//! [`Fleet::start_with`](super::Fleet::start_with) or [`Shard::start_with`](super::Shard::start_with).

use std::sync::Arc;

pub use handover_transport_ws::{PermitDenied, PermitFuture, PermitSource};

/// Hands out the identify permit source of each shard of one bot.
///
/// Implementations decide pacing (one identify per bucket per window), the daily session-start
/// budget and the identify-storm guard. A permit future that is dropped unfinished (its socket
/// ended first) must count as not taken (see [`PermitSource`]). A permit source must never
/// deny a permit because its backend is unreachable: it waits (the socket keeps heartbeating)
/// until it can decide; a denial makes the shard give up.
pub trait IdentifyCoordinator: Send + Sync + 'static {
    /// The permit source for shard `shard` of `total`.
    fn permits_for(&self, shard: u32, total: u32) -> Arc<dyn PermitSource>;
}

impl IdentifyCoordinator for super::IdentifyGate {
    fn permits_for(&self, shard: u32, _total: u32) -> Arc<dyn PermitSource> {
        super::IdentifyGate::permits_for(self, shard)
    }
}
