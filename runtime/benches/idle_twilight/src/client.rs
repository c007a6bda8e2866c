//! N twilight-gateway 0.18 shards of one bot sharing one in-memory identify queue, one task
//! each, until every shard is READY, then idle: the twilight client of the `idle_shards`
//! benchmark, shared by its plain child (compiled into the bench) and by `idle-twilight` (this
//! project, built with a compression feature).

use std::time::Duration;

use twilight_gateway::queue::InMemoryQueue;
use twilight_gateway::{ConfigBuilder, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};
use twilight_model::gateway::event::Event;

/// Runs `n` shards against `url` with `token`, prints `ready` once all are READY (within
/// `ready_within`), then idles for `life`.
pub(crate) async fn run(
    n: u32,
    url: &str,
    token: String,
    life: Duration,
    ready_within: Duration,
) -> Result<(), String> {
    let concurrency = u16::try_from(n).unwrap_or(u16::MAX);
    let queue = InMemoryQueue::new(
        concurrency,
        1_000_000,
        Duration::from_secs(86_400),
        1_000_000,
    );
    let config = ConfigBuilder::new(token, Intents::GUILDS | Intents::GUILD_MESSAGES)
        .proxy_url(url.to_owned())
        .queue(queue)
        .build();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(), String>>(n as usize);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut shard = Shard::with_config(ShardId::new(i, n), config.clone());
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut told = false;
            while let Some(item) = shard.next_event(EventTypeFlags::READY).await {
                match item {
                    Ok(Event::Ready(_)) if !told => {
                        told = true;
                        let _ = tx.send(Ok(())).await;
                    }
                    Ok(_) => {}
                    Err(e) if !told => {
                        told = true;
                        let _ = tx.send(Err(format!("twilight: {e}"))).await;
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + ready_within;
    for k in 0..n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("twilight shards ended during the handshakes".to_owned()),
            Err(_) => return Err(format!("{k} of {n} shards READY in time")),
        }
    }
    println!("ready");
    tokio::time::sleep(life).await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}
