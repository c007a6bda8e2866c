//! The hub's fan-out alone, without sockets: one upstream dispatch handed to the clients of
//! its shard, in a proxy running 16 shards with 4 attached client sessions each (a bot and
//! its helpers, say). Prints criterion's time per event.
//!
//! `cargo bench -p handover-proxy --bench hub`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use handover_protocol::{EventName, Intents, RawJson, Token};
use handover_proxy::{Hub, HubConfig, Upstream};
use serde_json::json;

const TOKEN: &str = "proxy-hub-bench-token";
const SHARDS: u32 = 16;
const CLIENTS_PER_SHARD: u32 = 4;

fn hub() -> Hub {
    let mut config = HubConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
        (0..SHARDS).collect(),
        SHARDS,
        "ws://127.0.0.1:9".into(),
    );
    config.replay_capacity = 256;
    config.seed = 1;
    let mut hub = Hub::new(config);
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        let ready = json!({"v": 10, "user": {"id": "1"}, "application": {"id": "1"},
            "guilds": [], "session_id": format!("up{shard}"),
            "resume_gateway_url": "wss://upstream.invalid", "shard": [shard, SHARDS]});
        hub.upstream(
            Upstream::Ready {
                shard,
                session_id: format!("up{shard}"),
                data: RawJson::parse(ready.to_string()).unwrap(),
            },
            &mut out,
        );
        for _ in 0..CLIENTS_PER_SHARD {
            let (client, _) = hub.connect();
            let identify = json!({"op": 2, "d": {"token": TOKEN,
                "intents": (Intents::GUILDS | Intents::GUILD_MESSAGES).bits(),
                "shard": [shard, SHARDS]}});
            hub.client_text(client, identify.to_string().as_bytes(), &mut out);
        }
    }
    assert_eq!(
        hub.stats().sessions,
        (SHARDS * CLIENTS_PER_SHARD) as usize,
        "every client identified"
    );
    hub
}

fn bench(c: &mut Criterion) {
    let mut hub = hub();
    let name = EventName::new("MESSAGE_CREATE");
    let data =
        RawJson::parse(r#"{"id":"5","channel_id":"6","guild_id":"7","content":"x"}"#).unwrap();
    let mut out = Vec::with_capacity(64);
    let mut shard = 0;
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(1));
    group.bench_function("dispatch_16_shards_4_clients_each", |b| {
        b.iter(|| {
            shard = (shard + 1) % SHARDS;
            hub.upstream(
                Upstream::Dispatch {
                    shard,
                    event_type: name.clone(),
                    data: data.clone(),
                },
                &mut out,
            );
            let sent = out.len();
            out.clear();
            sent
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
