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
//! Redis coordinator of `handover_runtime::redis`, behind the `redis` feature) through
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::{Fleet, FleetConfig, ShardEventKind, ShardSelection};
    use handover_mock::{MockConfig, MockServer};
    use handover_protocol::{GatewayConfig, Intents, Token};

    /// Grants shard 0, refuses every other shard, and counts the asks.
    struct Picky {
        asks: Arc<AtomicU32>,
    }

    struct PickyShard {
        shard: u32,
        asks: Arc<AtomicU32>,
    }

    impl PermitSource for PickyShard {
        fn acquire(&self) -> PermitFuture {
            self.asks.fetch_add(1, Ordering::SeqCst);
            let shard = self.shard;
            Box::pin(async move {
                if shard == 0 {
                    Ok(())
                } else {
                    Err(PermitDenied::new("not this one"))
                }
            })
        }
    }

    impl IdentifyCoordinator for Picky {
        fn permits_for(&self, shard: u32, total: u32) -> Arc<dyn PermitSource> {
            assert_eq!(total, 2);
            Arc::new(PickyShard {
                shard,
                asks: self.asks.clone(),
            })
        }
    }

    #[tokio::test]
    async fn a_fleet_asks_the_coordinator_it_is_given_for_every_identify() {
        let mock = MockServer::start(MockConfig {
            shards: 2,
            identify_window: Duration::from_millis(1),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let token = Token::new(handover_mock::DEFAULT_TOKEN).unwrap();
        let mut gateway = GatewayConfig::new(token, Intents::GUILDS);
        gateway.gateway_url = mock.url();
        let config = FleetConfig::new(gateway, ShardSelection::All { total: 2 });
        let asks = Arc::new(AtomicU32::new(0));
        let coordinator = Arc::new(Picky { asks: asks.clone() });
        let mut fleet = Fleet::start_with(config, coordinator).unwrap();
        let (mut ready, mut gave_up) = (None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ready.is_none() || gave_up.is_none() {
            let ev = tokio::time::timeout_at(deadline, fleet.next_event())
                .await
                .expect("both shards settle in time")
                .expect("the fleet runs");
            match ev.kind {
                ShardEventKind::Ready(_) => ready = Some(ev.shard),
                ShardEventKind::GaveUp { reason } => gave_up = Some((ev.shard, reason)),
                _ => {}
            }
        }
        assert_eq!(ready, Some(0));
        let (shard, reason) = gave_up.unwrap();
        assert_eq!(shard, 1);
        assert_eq!(reason, handover_core::GiveUpReason::PermitDenied);
        assert_eq!(asks.load(Ordering::SeqCst), 2, "one ask per identify");
        assert_eq!(mock.handle().counters().shard(1).identifies, 0);
        fleet.shutdown(handover_core::StopIntent::EndSession).await;
    }
}
