//! The proxy's fan-out path counts its allocations: an upstream event costs none of its own
//! (its name is the runtime's `EventName`, its data shares the received buffer) and each
//! attached client only the batch its frame travels in.

#[path = "../../core/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use counting_alloc::allocations;
use handover_protocol::{EventName, Intents, RawJson, Token};
use handover_proxy::{Hub, HubConfig, Upstream};
use serde_json::json;

const TOKEN: &str = "proxy-alloc-token";
const EVENTS: u64 = 1_000;

fn hub() -> Hub {
    let mut config = HubConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
        vec![0],
        1,
        "ws://127.0.0.1:9".into(),
    );
    config.replay_capacity = 64;
    config.seed = 1;
    let mut hub = Hub::new(config);
    let ready = json!({"v": 10, "user": {"id": "1"}, "application": {"id": "1"}, "guilds": [],
        "session_id": "up", "resume_gateway_url": "wss://upstream.invalid", "shard": [0, 1]});
    let mut out = Vec::new();
    hub.upstream(
        Upstream::Ready {
            shard: 0,
            session_id: "up".into(),
            data: RawJson::parse(ready.to_string()).unwrap(),
        },
        &mut out,
    );
    hub
}

/// Allocations per upstream event once the buffer is full, over `EVENTS` events of a known
/// name and of a name Discord does not document (both shared, not copied).
fn per_event(hub: &mut Hub) -> [u64; 2] {
    let data =
        RawJson::parse(r#"{"id":"5","channel_id":"6","guild_id":"7","content":"x"}"#).unwrap();
    let mut out = Vec::with_capacity(64);
    let mut result = [0; 2];
    for (i, name) in [
        EventName::new("MESSAGE_CREATE"),
        EventName::new("SOME_NEW_EVENT"),
    ]
    .into_iter()
    .enumerate()
    {
        // Fill the buffer first: from then on each push drops the oldest.
        for _ in 0..128 {
            hub.upstream(dispatch(&name, &data), &mut out);
            out.clear();
        }
        let before = allocations();
        for _ in 0..EVENTS {
            hub.upstream(dispatch(&name, &data), &mut out);
            out.clear();
        }
        result[i] = (allocations() - before) / EVENTS;
    }
    result
}

fn dispatch(name: &EventName, data: &RawJson) -> Upstream {
    Upstream::Dispatch {
        shard: 0,
        event_type: name.clone(),
        data: data.clone(),
    }
}

#[test]
fn an_upstream_event_allocates_nothing_of_its_own() {
    let mut hub = hub();
    // A detached session (its client went away): the event is only buffered.
    let (client, _) = hub.connect();
    let mut out = Vec::new();
    let identify = json!({"op": 2, "d": {"token": TOKEN, "intents": 1 << 9}});
    hub.client_text(client, identify.to_string().as_bytes(), &mut out);
    hub.client_gone(client);
    assert_eq!(per_event(&mut hub), [0, 0], "buffered only");
    // An attached client: the batch of one, nothing for the frame (it shares the event's name
    // and data; its text is written only into the socket's send buffer). It was three (the
    // frame's text, the Bytes around it, the batch) before frames were kept in pieces.
    let (client, _) = hub.connect();
    hub.client_text(client, identify.to_string().as_bytes(), &mut out);
    let [known, unknown] = per_event(&mut hub);
    assert!(known <= 1 && unknown <= 1, "per event: {known}, {unknown}");
}
