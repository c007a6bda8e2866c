//! `idle-twilight SHARDS URL LIFE_SECS`: N twilight-gateway 0.18 shards of one bot sharing one
//! in-memory identify queue, one task each, on a current-thread tokio runtime, with the
//! transport compression this binary was built with (feature `zlib` or `zstd`). Prints `ready`
//! once every shard is READY, then idles for `LIFE_SECS`. The bot token is read from the
//! `IDLE_TWILIGHT_TOKEN` environment variable (the mock gateway's token), never from the
//! command line. The same shape as the `twilight` child of `idle_shards`, which runs plain.

use std::time::Duration;

use twilight_gateway::queue::InMemoryQueue;
use twilight_gateway::{ConfigBuilder, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};
use twilight_model::gateway::event::Event;

const READY_BASE: Duration = Duration::from_secs(20);
const READY_PER_SHARD: Duration = Duration::from_millis(50);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(n), Some(url), Some(life)) = (
        args.first().and_then(|s| s.parse::<u32>().ok()),
        args.get(1),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: idle-twilight SHARDS URL LIFE_SECS");
        std::process::exit(2);
    };
    let Ok(token) = std::env::var("IDLE_TWILIGHT_TOKEN") else {
        eprintln!("idle-twilight: IDLE_TWILIGHT_TOKEN is not set");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let life = Duration::from_secs(life);
    let result = rt.block_on(async {
        if n == 0 {
            // The baseline: the same process, runtime and libraries, no shard.
            println!("ready");
            tokio::time::sleep(life).await;
            return Ok(());
        }
        run(n, url, token, life).await
    });
    if let Err(e) = result {
        eprintln!("idle-twilight: {e}");
        std::process::exit(1);
    }
}

async fn run(n: u32, url: &str, token: String, life: Duration) -> Result<(), String> {
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
    let deadline = tokio::time::Instant::now() + READY_BASE + READY_PER_SHARD * n;
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
