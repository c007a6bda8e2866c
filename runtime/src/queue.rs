//! The identify queue shared by a fleet's shards, as a tokio task around the sans-IO
//! [`IdentifyQueue`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use handover_transport_ws::{PermitDenied, PermitFuture, PermitSource};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use handover_protocol::{
    IdentifyError, IdentifyQueue, IdentifyQueueConfig, SessionStartLimit, Ticket,
};

type Reply = oneshot::Sender<Result<(), IdentifyError>>;

struct Request {
    shard: u32,
    reply: Reply,
}

/// Paces IDENTIFY across shards: one per concurrency bucket per window, within the daily
/// session-start budget, and refuses identify storms (the budget guard).
///
/// One gate serves every shard of a bot token. Each shard gets a [`PermitSource`] from
/// [`permits_for`](Self::permits_for); the lifecycle core asks it before every identify, never
/// before a resume.
#[derive(Debug, Clone)]
pub struct IdentifyGate {
    requests: mpsc::Sender<Request>,
}

impl IdentifyGate {
    /// Spawns the queue's task. Must be called within a tokio runtime. The task ends when the
    /// gate and every permit source made from it are dropped.
    pub fn spawn(config: IdentifyQueueConfig, limit: Option<SessionStartLimit>) -> IdentifyGate {
        let mut queue = IdentifyQueue::new(config, tokio::time::Instant::now().into_std());
        if let Some(limit) = limit {
            queue.set_session_start_limit(limit, tokio::time::Instant::now().into_std());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run(queue, rx));
        IdentifyGate { requests: tx }
    }

    /// The permit source for one shard.
    pub fn permits_for(&self, shard: u32) -> Arc<dyn PermitSource> {
        Arc::new(ShardPermits {
            requests: self.requests.clone(),
            shard,
        })
    }
}

struct ShardPermits {
    requests: mpsc::Sender<Request>,
    shard: u32,
}

impl PermitSource for ShardPermits {
    fn acquire(&self) -> PermitFuture {
        let requests = self.requests.clone();
        let shard = self.shard;
        Box::pin(async move {
            let gone = || PermitDenied::new("identify queue has stopped");
            let (reply, answer) = oneshot::channel();
            requests
                .send(Request { shard, reply })
                .await
                .map_err(|_| gone())?;
            match answer.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(PermitDenied::new(e.to_string())),
                Err(_) => Err(gone()),
            }
        })
    }
}

async fn run(mut queue: IdentifyQueue, mut requests: mpsc::Receiver<Request>) {
    let mut waiting: HashMap<Ticket, Vec<Reply>> = HashMap::new();
    loop {
        // Withdraw requests whose shard stopped waiting (its transport ended), so a bucket slot
        // is never spent on nobody.
        waiting.retain(|ticket, replies| {
            replies.retain(|r| !r.is_closed());
            if replies.is_empty() {
                queue.cancel(*ticket);
                false
            } else {
                true
            }
        });
        let now = tokio::time::Instant::now().into_std();
        while let Some(grant) = queue.poll_ready(now) {
            debug!(shard = grant.shard_id, "identify permitted");
            for reply in waiting.remove(&grant.ticket).unwrap_or_default() {
                let _ = reply.send(Ok(()));
            }
        }
        let wake = queue.poll_timeout();
        // Fixed order (`biased`): a run replays exactly under a paused clock.
        tokio::select! {
            biased;
            req = requests.recv() => {
                let Some(Request { shard, reply }) = req else { return };
                match queue.request(shard, tokio::time::Instant::now().into_std()) {
                    Ok(ticket) => waiting.entry(ticket).or_default().push(reply),
                    Err(e) => {
                        warn!(shard, error = %e, "identify refused");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
