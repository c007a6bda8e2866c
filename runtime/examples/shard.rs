//! Using a [`Shard`] in a tokio application: read its events as a stream, send a command
//! (waiting for send-rate capacity), let a health monitor restart it, read its status, stop
//! it. Everything but the mock comes from `handover_runtime`.
//!
//! Runs against the embedded mock gateway, so it needs no token and no network:
//!
//! ```sh
//! cargo run -p handover-runtime --example shard
//! ```
//!
//! Against Discord, build the [`GatewayConfig`] from your token (read from the environment,
//! never from a flag) and leave `gateway_url` at its default, or use
//! [`Fleet::connect`](handover_runtime::Fleet::connect) to ask `GET /gateway/bot`.

use std::time::Duration;

use futures_util::StreamExt;
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_runtime::{
    Command, GatewayConfig, Intents, PresenceStatus, RestartReason, Shard, ShardConfig,
    ShardEventKind, StopIntent, Token, UpdatePresence, describe_give_up,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockServer::start(MockConfig::default()).await?;

    // 1. Configure and start one shard.
    let mut gateway = GatewayConfig::new(
        Token::new(DEFAULT_TOKEN)?,
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    );
    gateway.gateway_url = mock.url();
    let mut shard = Shard::start(ShardConfig::new(gateway))?;

    // 2. A health monitor elsewhere holds a cloneable handle.
    let monitor = shard.handle();

    let mut restarted = false;
    // `Shard` is a `Stream` of events (`shard.next_event()` is the same thing).
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), shard.next()).await? {
        match event.kind {
            ShardEventKind::Ready(ready) => {
                println!("ready: session {}", ready.session_id);
                // 3. `send_paced` waits for send-rate capacity; `send` refuses instead, with
                //    the time to wait (`SendError::retry_after`). Both refuse with a typed
                //    error (nothing sent) when over 4096 bytes or while not identified.
                shard
                    .send_paced(Command::UpdatePresence(UpdatePresence::status(
                        PresenceStatus::Idle,
                    )))
                    .await?;
                mock.handle().dispatch(
                    0,
                    "MESSAGE_CREATE",
                    &serde_json::json!({ "content": "hello from the mock" }),
                );
            }
            ShardEventKind::Dispatch(d) => {
                println!("dispatch #{} {}: {}", d.seq, d.event_type, d.data.as_str());
                if !restarted {
                    // 4. Restart from anywhere, any number of times: never two sockets; the
                    //    session is resumed, no identify spent.
                    restarted = true;
                    monitor.restart(RestartReason::HealthMonitor).await?;
                    monitor.restart(RestartReason::HealthMonitor).await?;
                }
            }
            ShardEventKind::Resumed(r) => {
                println!("resumed: session {}", r.session_id);
                break;
            }
            // The reason is typed (`GiveUpReason::FatalClose { code: Some(4004) }`...).
            ShardEventKind::GaveUp { reason } => return Err(describe_give_up(reason).into()),
            _ => {}
        }
    }

    // 5. A serializable status snapshot (the token never appears in it).
    println!("status: {}", serde_json::to_string_pretty(&shard.status())?);

    // 6. Stop returns once the socket is confirmed gone.
    shard.stop(StopIntent::EndSession).await?;
    println!("stopped; live sockets: {}", shard.status().live_sockets);
    Ok(())
}
