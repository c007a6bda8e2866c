//! A bot that keeps a twilight cache fed from typed events and answers `!ping`.
//!
//! Runs against a mock gateway started in-process, so it needs no token and no network:
//!
//! ```sh
//! cargo run -p handover-runtime --features twilight --example cache_bot
//! ```
//!
//! The mock plays Discord: after READY it dispatches a GUILD_CREATE (one guild with a
//! `#general` channel) and a stream of MESSAGE_CREATE in that channel, the last one `!ping`.
//! The bot turns every event into a twilight-model event
//! ([`handover_runtime::twilight::typed`], parsed only because the bot asks) and feeds it to a
//! `twilight-cache-inmemory` cache.
//!
//! Answering: Discord's answer to a message is a REST call (`POST
//! /channels/{channel.id}/messages`), not a gateway command, and the mock has no REST API. So
//! the bot builds the request it would send, with the channel's and guild's names taken from the
//! cache (the message itself only carries ids), prints it, and stops: it exits 0 after
//! answering, or non-zero if no `!ping` came within 10 seconds.

use std::time::Duration;

use handover_core::StopIntent;
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_protocol::{GatewayConfig, Intents, Token};
use handover_runtime::twilight::twilight_cache_inmemory::DefaultInMemoryCache;
use handover_runtime::twilight::twilight_model::gateway::event::Event;
use handover_runtime::twilight::{TypedError, typed};
use handover_runtime::{Shard, ShardConfig, ShardEventKind};

/// A GUILD_CREATE as Discord sends it (trimmed to one text channel), and a MESSAGE_CREATE in
/// that channel; the tests of `handover_runtime::twilight` use the same payloads.
const GUILD_CREATE: &str = include_str!("../tests/data/guild_create.json");
const MESSAGE_CREATE: &str = include_str!("../tests/data/message_create.json");
/// How many chat messages come before `!ping`.
const CHATTER: u64 = 20;
/// The whole run is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reading message content takes the privileged MESSAGE_CONTENT intent, which the bot must
    // be allowed in the developer portal; the mock allows it here.
    let mock = MockServer::start(MockConfig {
        allowed_privileged_intents: Intents::MESSAGE_CONTENT.bits(),
        ..MockConfig::default()
    })
    .await?;
    let mut gateway = GatewayConfig::new(
        Token::new(DEFAULT_TOKEN)?,
        Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT,
    );
    gateway.gateway_url = mock.url();
    let mut shard = Shard::start(ShardConfig::new(gateway))?;
    let cache = DefaultInMemoryCache::new();

    let mut messages = 0;
    let answer = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = shard.next_event().await {
            if let ShardEventKind::Ready(_) = event.kind {
                play_discord(&mock)?;
            }
            let typed = match typed(&event) {
                None => continue, // the runtime's own events: sockets, states...
                Some(Ok(typed)) => typed,
                // Discord adds events; the raw dispatch is still in `event`.
                Some(Err(TypedError::Unknown { event_type })) => {
                    println!("skipping {event_type}: not modelled by twilight-model");
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
            };
            cache.update(&typed);
            if let Event::MessageCreate(message) = &typed {
                messages += 1;
                if message.content == "!ping" {
                    return answer_ping(&cache, message).map(Some);
                }
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(None)
    })
    .await;

    shard.stop(StopIntent::EndSession).await?;
    match answer {
        Ok(Ok(Some(request))) => {
            println!("{request}");
            let stats = cache.stats();
            println!(
                "cache: {} guild(s), {} channel(s); {messages} message(s) seen; stopped",
                stats.guilds(),
                stats.channels(),
            );
            Ok(())
        }
        Ok(Ok(None)) => Err("the shard ended before !ping".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no !ping within {DEADLINE:?}").into()),
    }
}

/// What Discord would send after READY: the guild, then chatter, then `!ping`.
fn play_discord(mock: &MockServer) -> Result<(), serde_json::Error> {
    let handle = mock.handle();
    handle.dispatch(0, "GUILD_CREATE", &serde_json::from_str(GUILD_CREATE)?);
    let template: serde_json::Value = serde_json::from_str(MESSAGE_CREATE)?;
    for i in 0..=CHATTER {
        let mut message = template.clone();
        message["id"] = (4_194_304_200 + i).to_string().into();
        message["content"] = if i == CHATTER {
            "!ping".into()
        } else {
            format!("chatter {i}").into()
        };
        handle.dispatch(0, "MESSAGE_CREATE", &message);
    }
    Ok(())
}

/// The REST request that answers `message`, described with names from the cache.
fn answer_ping(
    cache: &DefaultInMemoryCache,
    message: &handover_runtime::twilight::twilight_model::gateway::payload::incoming::MessageCreate,
) -> Result<String, Box<dyn std::error::Error>> {
    let channel = cache
        .channel(message.channel_id)
        .ok_or("the message's channel is not in the cache (no GUILD_CREATE for it?)")?;
    let channel_name = channel.name.clone().unwrap_or_default();
    let guild_name = message
        .guild_id
        .and_then(|id| cache.guild(id).map(|guild| guild.name().to_owned()))
        .unwrap_or_else(|| String::from("(direct message)"));
    let body = serde_json::json!({
        "content": format!("pong, {}", message.author.name),
        "message_reference": { "message_id": message.id.to_string() },
    });
    Ok(format!(
        "answer to !ping in #{channel_name} of {guild_name}: POST /api/v10/channels/{}/messages {body}",
        message.channel_id
    ))
}
