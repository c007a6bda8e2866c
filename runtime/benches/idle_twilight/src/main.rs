//! `idle-twilight SHARDS URL LIFE_SECS`: N twilight-gateway 0.18 shards of one bot sharing one
//! in-memory identify queue, one task each, on a current-thread tokio runtime, with the
//! transport compression this binary was built with (feature `zlib` or `zstd`). Prints `ready`
//! once every shard is READY, then idles for `LIFE_SECS`. The bot token is read from the
//! `IDLE_TWILIGHT_TOKEN` environment variable (the mock gateway's token), never from the
//! command line. The client itself is `client.rs`, which the plain `twilight` child of `idle_shards` compiles in too.

mod client;

use std::time::Duration;

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
        client::run(n, url, token, life, READY_BASE + READY_PER_SHARD * n).await
    });
    if let Err(e) = result {
        eprintln!("idle-twilight: {e}");
        std::process::exit(1);
    }
}
