//! A client someone else wrote (twilight-gateway) through the proxy to the mock gateway: it is
//! dropped and restarted 50 times during a stream, resumes each time with its session id
//! and seq, and sees every event exactly once; upstream, the mock saw one IDENTIFY and no
//! reconnect. And twilight-cache-inmemory fed through the proxy after a fresh IDENTIFY holds
//! what the same cache fed straight from the mock holds.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_proxy::server::Proxy;
use serde_json::{Value, json};
use twilight_gateway::{ConfigBuilder, Message, Session, Shard, ShardId};

/// Events dispatched upstream during the test.
const EVENTS: u64 = 900;
/// Clients reading at once, each with its own session.
const CLIENTS: usize = 2;
/// Restarts of each client during the stream. twilight-gateway 0.18 opens a new `Shard`'s
/// first connection at once (0.16 waited a second before every connection, its first too).
const RESTARTS: usize = 50;

async fn start() -> (MockServer, Proxy, String) {
    common::start(|_| {}).await
}

fn twilight_shard(url: &str, session: Option<(&str, u64)>) -> Shard {
    // twilight adds the `Bot ` prefix itself.
    let mut builder = ConfigBuilder::new(
        DEFAULT_TOKEN.to_owned(),
        twilight_gateway::Intents::GUILDS | twilight_gateway::Intents::GUILD_MESSAGES,
    )
    .proxy_url(url.to_owned());
    if let Some((id, seq)) = session {
        builder = builder
            .session(Session::new(seq, id.to_owned()))
            .resume_url(url.to_owned());
    }
    Shard::with_config(ShardId::ONE, builder.build())
}

/// What one client saw: the `n` of every event in order, how many times it resumed.
struct Seen {
    events: Vec<u64>,
    resumed: usize,
    readies: usize,
}

async fn client(url: String, index: usize, ready_tx: tokio::sync::mpsc::Sender<()>) -> Seen {
    let mut rng = fastrand::Rng::with_seed(index as u64 + 1);
    let mut seen = Seen {
        events: Vec::new(),
        resumed: 0,
        readies: 0,
    };
    let mut session: Option<(String, u64)> = None;
    let mut restarts = 0;
    // Bounded: each incarnation ends after a number of events, or at the last one.
    while restarts <= RESTARTS {
        let mut shard = twilight_shard(&url, session.as_ref().map(|(id, s)| (id.as_str(), *s)));
        let quota = if restarts == RESTARTS {
            u64::MAX
        } else {
            rng.u64(5..15)
        };
        let mut got = 0;
        while got < quota {
            let Some(message) = shard.next().await else {
                panic!("client {index}: stream ended");
            };
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(frame)) => panic!("client {index}: closed {frame:?}"),
                Err(e) => panic!("client {index}: {e}"),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["op"] == 9 {
                panic!("client {index}: invalid session after {restarts} restarts");
            }
            if v["op"] != 0 {
                continue;
            }
            let seq = v["s"].as_u64().unwrap();
            match v["t"].as_str().unwrap() {
                "READY" => {
                    seen.readies += 1;
                    let id = v["d"]["session_id"].as_str().unwrap().to_owned();
                    session = Some((id, seq));
                    let _ = ready_tx.send(()).await;
                }
                "RESUMED" => seen.resumed += 1,
                "E" => {
                    let n = v["d"]["n"].as_u64().unwrap();
                    seen.events.push(n);
                    if let Some((_, s)) = session.as_mut() {
                        *s = seq;
                    }
                    got += 1;
                    if n == EVENTS {
                        return seen;
                    }
                }
                _ => {}
            }
        }
        // Killed: the socket is dropped without a close frame, the way a crashed process
        // leaves; the next incarnation starts a little later (as a restarted process does,
        // so it misses events) and resumes with what this one processed.
        drop(shard);
        tokio::time::sleep(Duration::from_millis(rng.u64(10..40))).await;
        restarts += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_clients_restarted_during_a_stream_see_every_event_exactly_once() {
    let (mock, proxy, url) = start().await;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(url.clone(), i, ready_tx.clone())))
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
            .await
            .expect("a client never got READY");
    }
    let mock_handle = mock.handle();
    let producer = tokio::spawn(async move {
        for n in 1..=EVENTS {
            mock_handle.dispatch(0, "E", &json!({ "n": n }));
            tokio::time::sleep(Duration::from_millis(9)).await;
        }
    });
    for (i, c) in clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(90), c)
            .await
            .expect("client did not finish in time")
            .unwrap();
        let expected: Vec<u64> = (1..=EVENTS).collect();
        assert_eq!(
            seen.events, expected,
            "client {i}: every event once, in order"
        );
        assert_eq!(seen.readies, 1, "client {i} identified once");
        // An incarnation killed during its replay never reads RESUMED; the proxy's count of
        // accepted resumes below is the one that must match.
        assert!(seen.resumed <= RESTARTS, "client {i}");
    }
    producer.await.unwrap();
    common::assert_upstream_untouched(&mock);
    let stats = proxy.handle().stats();
    assert_eq!(
        stats.resumes,
        (CLIENTS * RESTARTS) as u64,
        "every restart resumed"
    );
    assert!(
        stats.replayed > 0,
        "restarts missed events that were replayed"
    );
    assert_eq!(stats.resumes_refused, 0);
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
}

// ---- cache equality --------------------------------------------------------------------------

/// Guilds in the cache-equality test.
const GUILDS: u64 = 3;

/// A GUILD_CREATE as Discord sends it, with `g` varying the ids: text channels, roles, members
/// (users) and emojis, so every kind the cache keeps from a GUILD_CREATE is compared.
fn guild_create(g: u64) -> Value {
    let guild = 5_000_000_000 + g * 1_000;
    let id = |i: u64| (guild + i).to_string();
    let channels: Vec<Value> = (1..=3)
        .map(|c| {
            json!({
                "id": id(c), "type": 0, "guild_id": id(0), "name": format!("chan-{c}"),
                "position": c, "permission_overwrites": [], "nsfw": false, "topic": null,
                "last_message_id": null, "parent_id": null, "rate_limit_per_user": 0
            })
        })
        .collect();
    let roles: Vec<Value> = (0..3)
        .map(|r| {
            // The @everyone role has the guild's id.
            json!({
                "id": id(if r == 0 { 0 } else { 10 + r }), "name": format!("role-{r}"),
                "color": r * 4096,
                "colors": { "primary_color": r * 4096, "secondary_color": null, "tertiary_color": null },
                "hoist": r == 2, "icon": null, "unicode_emoji": null,
                "position": r, "permissions": "104324673", "managed": false,
                "mentionable": false, "flags": 0
            })
        })
        .collect();
    let members: Vec<Value> = (0..4)
        .map(|m| {
            json!({
                "user": {
                    "id": (9_000_000 + g * 100 + m).to_string(),
                    "username": format!("user-{g}-{m}"), "discriminator": "0",
                    "global_name": null, "avatar": null
                },
                "nick": if m == 1 { json!("nick") } else { Value::Null },
                "avatar": null, "roles": [id(11)], "joined_at": "2026-01-01T00:00:00.000000+00:00",
                "premium_since": null, "deaf": false, "mute": false, "flags": 0, "pending": false
            })
        })
        .collect();
    let emojis: Vec<Value> = (0..2)
        .map(|e| {
            json!({
                "id": id(20 + e), "name": format!("emoji{e}"), "roles": [],
                "require_colons": true, "managed": false, "animated": e == 1, "available": true
            })
        })
        .collect();
    json!({
        "id": id(0), "name": format!("guild {g}"), "icon": null, "splash": null,
        "discovery_splash": null, "banner": null, "description": null, "owner_id": "9000000",
        "afk_channel_id": null, "afk_timeout": 300, "application_id": null,
        "default_message_notifications": 1, "explicit_content_filter": 0, "features": [],
        "emojis": emojis, "stickers": [], "stage_instances": [], "roles": roles,
        "mfa_level": 0, "nsfw_level": 0, "verification_level": 0, "preferred_locale": "en-US",
        "premium_progress_bar_enabled": false, "premium_tier": 0,
        "public_updates_channel_id": null, "rules_channel_id": null, "system_channel_flags": 0,
        "system_channel_id": null, "vanity_url_code": null,
        "joined_at": "2026-01-01T00:00:00.000000+00:00", "large": false, "unavailable": false,
        "member_count": 4, "members": members, "presences": [], "voice_states": [],
        "threads": [], "guild_scheduled_events": [], "channels": channels
    })
}

type Cache = twilight_cache_inmemory::DefaultInMemoryCache;

/// Everything the cache exposes, each kind as its entries' `Debug` sorted by key, so two
/// caches compare equal exactly when they hold the same resources.
fn snapshot(cache: &Cache) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    fn sorted<K: std::fmt::Debug, V: std::fmt::Debug>(
        entries: impl Iterator<Item = (K, V)>,
    ) -> Vec<String> {
        let mut v: Vec<String> = entries.map(|(k, v)| format!("{k:?} => {v:?}")).collect();
        v.sort();
        v
    }
    let iter = cache.iter();
    let mut kinds = std::collections::BTreeMap::new();
    kinds.insert(
        "guilds",
        sorted(iter.guilds().map(|r| (*r.key(), r.value().clone()))),
    );
    kinds.insert(
        "channels",
        sorted(iter.channels().map(|r| (*r.key(), r.value().clone()))),
    );
    kinds.insert(
        "roles",
        sorted(iter.roles().map(|r| (*r.key(), format!("{:?}", r.value())))),
    );
    kinds.insert(
        "members",
        sorted(iter.members().map(|r| (*r.key(), r.value().clone()))),
    );
    kinds.insert(
        "emojis",
        sorted(
            iter.emojis()
                .map(|r| (*r.key(), format!("{:?}", r.value()))),
        ),
    );
    kinds.insert(
        "users",
        sorted(iter.users().map(|r| (*r.key(), r.value().clone()))),
    );
    kinds.insert(
        "voice_states",
        sorted(
            iter.voice_states()
                .map(|r| (*r.key(), format!("{:?}", r.value()))),
        ),
    );
    kinds.insert(
        "presences",
        sorted(
            iter.presences()
                .map(|r| (*r.key(), format!("{:?}", r.value()))),
        ),
    );
    kinds.insert(
        "stickers",
        sorted(
            iter.stickers()
                .map(|r| (*r.key(), format!("{:?}", r.value()))),
        ),
    );
    kinds.insert("current_user", vec![format!("{:?}", cache.current_user())]);
    let mut guild_sets = Vec::new();
    for g in iter.guilds() {
        let id = *g.key();
        guild_sets.push(format!(
            "{id:?} channels={:?} roles={:?} members={:?} emojis={:?}",
            cache
                .guild_channels(id)
                .map(|s| sorted_ids(s.iter().copied())),
            cache.guild_roles(id).map(|s| sorted_ids(s.iter().copied())),
            cache
                .guild_members(id)
                .map(|s| sorted_ids(s.iter().copied())),
            cache
                .guild_emojis(id)
                .map(|s| sorted_ids(s.iter().copied())),
        ));
    }
    guild_sets.sort();
    kinds.insert("guild_indexes", guild_sets);
    kinds
}

fn sorted_ids<T: Ord + Copy + std::fmt::Debug>(ids: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = ids.collect();
    v.sort();
    v
}

/// Reads `shard` into `cache` until `done(cache)`, bounded by `within`.
async fn feed(shard: &mut Shard, cache: &Cache, within: Duration, done: impl Fn(&Cache) -> bool) {
    use twilight_gateway::{EventTypeFlags, StreamExt as _};
    tokio::time::timeout(within, async {
        while !done(cache) {
            match shard.next_event(EventTypeFlags::all()).await {
                Some(Ok(event)) => cache.update(&event),
                Some(Err(e)) => panic!("twilight: {e}: {:?}", std::error::Error::source(&e)),
                None => panic!("twilight: stream ended"),
            }
        }
    })
    .await
    .expect("the cache did not fill in time");
}

fn twilight_to(url: &str) -> Shard {
    let config = ConfigBuilder::new(
        DEFAULT_TOKEN.to_owned(),
        twilight_gateway::Intents::GUILDS | twilight_gateway::Intents::GUILD_MESSAGES,
    )
    .proxy_url(url.to_owned())
    .build();
    Shard::with_config(ShardId::ONE, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_cache_through_the_proxy_after_identify_equals_the_cache_fed_directly() {
    // The proxy's upstream is on `mock`; the direct client on `direct`, a second mock that
    // plays the same guilds (one mock session per shard).
    let (mock, proxy, url) = start().await;
    let direct_mock = MockServer::start(MockConfig::default()).await.unwrap();
    let direct_cache = Cache::new();
    let mut direct = twilight_to(&direct_mock.url());
    feed(&mut direct, &direct_cache, Duration::from_secs(20), |c| {
        c.current_user().is_some()
    })
    .await;

    for g in 0..GUILDS {
        let data = guild_create(g);
        mock.handle().dispatch(0, "GUILD_CREATE", &data);
        direct_mock.handle().dispatch(0, "GUILD_CREATE", &data);
    }
    feed(&mut direct, &direct_cache, Duration::from_secs(20), |c| {
        c.iter().guilds().count() == GUILDS as usize
    })
    .await;
    let handle = proxy.handle();
    for _ in 0..500 {
        if handle.status().shards.first().map(|s| s.guilds) == Some(GUILDS as usize) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A fresh IDENTIFY through the proxy: READY (the guilds unavailable), then one
    // GUILD_CREATE per guild from the proxy's cache.
    let proxied_cache = Cache::new();
    let mut proxied = twilight_to(&url);
    feed(&mut proxied, &proxied_cache, Duration::from_secs(20), |c| {
        c.iter().guilds().count() == GUILDS as usize
    })
    .await;

    let (want, got) = (snapshot(&direct_cache), snapshot(&proxied_cache));
    assert_eq!(want["guilds"].len(), GUILDS as usize);
    assert_eq!(want["channels"].len(), 3 * GUILDS as usize);
    assert_eq!(want["members"].len(), 4 * GUILDS as usize);
    for (kind, entries) in &want {
        assert_eq!(entries, &got[kind], "cache kind {kind} differs");
    }
    assert_eq!(want, got);

    drop((direct, proxied));
    if let Some(fleet) = proxy.stop().await {
        fleet
            .shutdown(handover_core::StopIntent::KeepResumable)
            .await;
    }
    mock.shutdown().await;
    direct_mock.shutdown().await;
}
