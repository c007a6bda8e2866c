//! The downstream protocol, sans-IO: IDENTIFY checks, READY and the guild cache, RESUME replays,
//! lagging clients and upstream session loss.

use handover_protocol::{Intents, RawJson, Token};
use std::collections::BTreeMap;

use handover_proxy::{Action, ClientId, Frame, Hub, HubConfig, Upstream};
use serde_json::{Value, json};

const TOKEN: &str = "proxy-test-token";

fn hub_with(shards: Vec<u32>, total: u32, capacity: usize) -> Hub {
    let mut config = HubConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
        shards,
        total,
        "ws://127.0.0.1:9".into(),
    );
    config.replay_capacity = capacity;
    config.seed = 7;
    Hub::new(config)
}

fn raw(v: &Value) -> RawJson {
    RawJson::parse(v.to_string()).unwrap()
}

fn ready(hub: &mut Hub, shard: u32, session: &str, guilds: &[&str]) -> Vec<Action> {
    let guilds: Vec<Value> = guilds
        .iter()
        .map(|id| json!({"id": id, "unavailable": true}))
        .collect();
    let data = json!({
        "v": 10, "user": {"id": "1", "username": "bot", "bot": true},
        "application": {"id": "1", "flags": 0}, "guilds": guilds,
        "session_id": session, "resume_gateway_url": "wss://upstream.invalid", "shard": [shard, 1]
    });
    let mut out = Vec::new();
    hub.upstream(
        Upstream::Ready {
            shard,
            session_id: session.into(),
            data: raw(&data),
        },
        &mut out,
    );
    out
}

fn dispatch(hub: &mut Hub, shard: u32, event: &str, data: Value) -> Vec<Action> {
    let mut out = Vec::new();
    hub.upstream(
        Upstream::Dispatch {
            shard,
            event_type: event.into(),
            data: raw(&data),
        },
        &mut out,
    );
    out
}

fn send(hub: &mut Hub, client: ClientId, payload: Value) -> Vec<Action> {
    let mut out = Vec::new();
    hub.client_text(client, payload.to_string().as_bytes(), &mut out);
    out
}

fn identify(token: &str, shard: Option<[u32; 2]>, intents: u64) -> Value {
    let mut d = json!({"token": token, "intents": intents, "properties": {"os": "linux", "browser": "t", "device": "t"}});
    if let Some(s) = shard {
        d["shard"] = json!(s);
    }
    json!({"op": 2, "d": d})
}

fn frames_to(out: &[Action], client: ClientId) -> Vec<Value> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { client: c, frames } if *c == client => Some(frames.clone()),
            _ => None,
        })
        .flatten()
        .map(|f: Frame| serde_json::from_slice(&f.to_vec()).unwrap())
        .collect()
}

fn close_of(out: &[Action], client: ClientId) -> Option<u16> {
    out.iter().find_map(|a| match a {
        Action::Close {
            client: c, code, ..
        } if *c == client => Some(*code),
        _ => None,
    })
}

#[test]
fn identify_is_checked_the_way_discord_checks_it() {
    let cases: Vec<(Value, Option<u16>)> = vec![
        (identify("wrong", Some([0, 2]), 1), Some(4004)),
        (
            json!({"op": 2, "d": {"token": 5, "intents": 1}}),
            Some(4004),
        ),
        (identify(TOKEN, Some([5, 2]), 1), Some(4010)),
        (identify(TOKEN, Some([0, 3]), 1), Some(4010)),
        (identify(TOKEN, Some([1, 2]), 1), Some(4010)),
        (identify(TOKEN, None, 1), Some(4011)),
        (identify(TOKEN, Some([0, 2]), 1 << 1), Some(4014)),
        (identify(TOKEN, Some([0, 2]), 1 << 40), Some(4013)),
        (json!({"op": 2}), Some(4002)),
        (json!({"op": 3, "d": {}}), Some(4003)),
        (json!({"op": 99}), Some(4001)),
        (identify(TOKEN, Some([0, 2]), 1), None),
        (identify(&format!("Bot {TOKEN}"), Some([0, 2]), 513), None),
    ];
    // The proxy runs shard 0 of 2 only.
    let mut hub = hub_with(vec![0], 2, 16);
    ready(&mut hub, 0, "up-1", &[]);
    for (payload, expected) in cases {
        let (client, _) = hub.connect();
        let out = send(&mut hub, client, payload.clone());
        assert_eq!(close_of(&out, client), expected, "{payload}");
        if expected.is_none() {
            let f = frames_to(&out, client);
            assert_eq!(f[0]["t"], "READY", "{payload}");
            // A second IDENTIFY on the same connection.
            let again = send(&mut hub, client, identify(TOKEN, Some([0, 2]), 1));
            assert_eq!(close_of(&again, client), Some(4005));
        }
    }
    let mut out = Vec::new();
    hub.client_text(ClientId(1_000), b"{", &mut out);
    assert!(out.is_empty(), "unknown client");
    let (client, _) = hub.connect();
    hub.client_text(client, b"not json", &mut out);
    assert_eq!(close_of(&out, client), Some(4002));
}

#[test]
fn heartbeats_are_acknowledged() {
    let mut hub = hub_with(vec![0], 1, 16);
    let (client, hello) = hub.connect();
    let hello: Value = serde_json::from_slice(&hello.to_vec()).unwrap();
    assert_eq!(hello["op"], 10);
    assert_eq!(hello["d"]["heartbeat_interval"], 41_250);
    for d in [json!(null), json!(42)] {
        let out = send(&mut hub, client, json!({"op": 1, "d": d}));
        assert_eq!(frames_to(&out, client)[0]["op"], 11);
    }
    let out = send(&mut hub, client, json!({"op": 1, "d": "x"}));
    assert_eq!(close_of(&out, client), Some(4002));
}

#[test]
fn ready_is_the_clients_own_and_guilds_come_from_the_cache() {
    let mut hub = hub_with(vec![0], 1, 16);
    let (early, _) = hub.connect();
    let out = send(&mut hub, early, identify(TOKEN, Some([0, 1]), 1));
    assert!(out.is_empty(), "waits for the upstream READY: {out:?}");
    let out = ready(&mut hub, 0, "up-1", &["10", "11"]);
    let f = frames_to(&out, early);
    assert_eq!(f.len(), 1, "no GUILD_CREATE cached yet: {f:?}");
    assert_eq!(f[0]["s"], 1);
    assert_eq!(
        f[0]["d"]["guilds"],
        json!([{"id":"10","unavailable":true},{"id":"11","unavailable":true}])
    );
    dispatch(
        &mut hub,
        0,
        "GUILD_CREATE",
        json!({"id": "10", "name": "first"}),
    );
    dispatch(
        &mut hub,
        0,
        "GUILD_CREATE",
        json!({"id": "10", "name": "renamed"}),
    );
    dispatch(
        &mut hub,
        0,
        "GUILD_CREATE",
        json!({"id": "11", "name": "second"}),
    );
    dispatch(&mut hub, 0, "GUILD_DELETE", json!({"id": "11"}));
    dispatch(
        &mut hub,
        0,
        "GUILD_CREATE",
        json!({"id": "12", "name": "third"}),
    );

    let (client, _) = hub.connect();
    let out = send(&mut hub, client, identify(TOKEN, Some([0, 1]), 1));
    let f = frames_to(&out, client);
    let d = &f[0]["d"];
    assert_eq!(f[0]["t"], "READY");
    assert_eq!(d["resume_gateway_url"], "ws://127.0.0.1:9");
    assert_eq!(d["user"]["username"], "bot");
    assert_eq!(d["application"]["id"], "1");
    assert_eq!(d["shard"], json!([0, 1]));
    let early_session = frames_to(&ready(&mut hub_with(vec![0], 1, 1), 0, "x", &[]), early);
    assert!(early_session.is_empty());
    assert_ne!(d["session_id"], "up-1", "never the upstream session id");
    let creates: Vec<(&Value, &Value)> =
        f[1..].iter().map(|f| (&f["s"], &f["d"]["name"])).collect();
    assert_eq!(
        creates,
        [(&json!(2), &json!("renamed")), (&json!(3), &json!("third"))]
    );
}

/// Client seqs of the dispatches among `frames`, with their event data's `n`.
fn events(frames: &[Value]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter(|f| f["t"] == "E")
        .map(|f| (f["s"].as_u64().unwrap(), f["d"]["n"].as_u64().unwrap()))
        .collect()
}

#[test]
fn resume_replays_exactly_the_missed_events_then_resumed() {
    let mut hub = hub_with(vec![0], 1, 8);
    ready(&mut hub, 0, "up-1", &["10"]);
    dispatch(&mut hub, 0, "GUILD_CREATE", json!({"id": "10"}));
    let (a, _) = hub.connect();
    let (b, _) = hub.connect();
    let ra = frames_to(&send(&mut hub, a, identify(TOKEN, None, 1)), a);
    let rb = frames_to(&send(&mut hub, b, identify(TOKEN, None, 0)), b);
    let session = ra[0]["d"]["session_id"].as_str().unwrap().to_owned();
    assert_ne!(session, rb[0]["d"]["session_id"].as_str().unwrap());
    let mut seen_a = Vec::new();
    for n in 1..=3 {
        let out = dispatch(&mut hub, 0, "E", json!({"n": n}));
        seen_a.extend(events(&frames_to(&out, a)));
        assert_eq!(
            events(&frames_to(&out, b)).len(),
            1,
            "every client of the shard"
        );
    }
    // READY is 1, the GUILD_CREATE 2: the events are 3, 4, 5 for this client.
    assert_eq!(seen_a, [(3, 1), (4, 2), (5, 3)]);
    // `a` dies having processed seq 4; events 4..=6 flow meanwhile.
    hub.client_gone(a);
    for n in 4..=6 {
        let out = dispatch(&mut hub, 0, "E", json!({"n": n}));
        assert!(frames_to(&out, a).is_empty());
    }
    let (a2, _) = hub.connect();
    let resume =
        |seq: u64| json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": seq}});
    let out = send(&mut hub, a2, resume(4));
    let f = frames_to(&out, a2);
    assert_eq!(events(&f), [(5, 3), (6, 4), (7, 5), (8, 6)]);
    assert_eq!(f.last().unwrap()["t"], "RESUMED");
    assert_eq!(f.last().unwrap()["s"], 8);
    // Live again, with its own numbering.
    let out = dispatch(&mut hub, 0, "E", json!({"n": 7}));
    assert_eq!(events(&frames_to(&out, a2)), [(9, 7)]);

    // A seq it was never sent, and the synthesized prefix, cannot be resumed.
    for seq in [10, 1] {
        hub.client_gone(a2);
        let (c, _) = hub.connect();
        let f = frames_to(&send(&mut hub, c, resume(seq)), c);
        assert_eq!(
            f,
            [json!({"op": 9, "s": null, "t": null, "d": false})],
            "seq {seq}"
        );
        // op 9 leaves the connection able to IDENTIFY.
        let f = frames_to(&send(&mut hub, c, identify(TOKEN, None, 1)), c);
        assert_eq!(f[0]["t"], "READY");
    }
    let stats = hub.stats();
    assert_eq!(
        (stats.resumes, stats.resumes_refused, stats.replayed),
        (1, 2, 4)
    );
}

#[test]
fn a_seq_older_than_the_buffer_or_an_unknown_session_gets_op_9() {
    let mut hub = hub_with(vec![0], 1, 4);
    ready(&mut hub, 0, "up-1", &[]);
    let (a, _) = hub.connect();
    let f = frames_to(&send(&mut hub, a, identify(TOKEN, None, 1)), a);
    let session = f[0]["d"]["session_id"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        dispatch(&mut hub, 0, "E", json!({"n": n}));
    }
    hub.client_gone(a);
    for (id, seq) in [(session.as_str(), 1), ("nope", 1)] {
        let (c, _) = hub.connect();
        let out = send(
            &mut hub,
            c,
            json!({"op": 6, "d": {"token": TOKEN, "session_id": id, "seq": seq}}),
        );
        assert_eq!(frames_to(&out, c)[0]["op"], 9, "{id}");
    }
    // Seq 2 (event 1 seen): events 2..=5 are all still kept.
    let (c, _) = hub.connect();
    let out = send(
        &mut hub,
        c,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": 2}}),
    );
    assert_eq!(events(&frames_to(&out, c)).len(), 4);
    let (d, _) = hub.connect();
    let out = send(
        &mut hub,
        d,
        json!({"op": 6, "d": {"token": "bad", "session_id": session, "seq": 2}}),
    );
    assert_eq!(close_of(&out, d), Some(4004));
}

#[test]
fn a_lagging_client_is_closed_resumable_and_resumes() {
    let mut hub = hub_with(vec![0], 1, 16);
    ready(&mut hub, 0, "up-1", &[]);
    let (a, _) = hub.connect();
    let f = frames_to(&send(&mut hub, a, identify(TOKEN, None, 1)), a);
    let session = f[0]["d"]["session_id"].as_str().unwrap().to_owned();
    dispatch(&mut hub, 0, "E", json!({"n": 1}));
    // The shell could not queue event 2.
    dispatch(&mut hub, 0, "E", json!({"n": 2}));
    let mut out = Vec::new();
    hub.client_lagged(a, &mut out);
    assert_eq!(close_of(&out, a), Some(4000));
    assert!(frames_to(&dispatch(&mut hub, 0, "E", json!({"n": 3})), a).is_empty());
    let (a2, _) = hub.connect();
    let out = send(
        &mut hub,
        a2,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": 2}}),
    );
    assert_eq!(events(&frames_to(&out, a2)), [(3, 2), (4, 3)]);
    assert_eq!(hub.stats().lagged, 1);
}

#[test]
fn a_lost_upstream_session_invalidates_the_clients_and_a_resume_does_not() {
    let mut hub = hub_with(vec![0], 1, 16);
    ready(&mut hub, 0, "up-1", &["10"]);
    let (a, _) = hub.connect();
    let (b, _) = hub.connect();
    send(&mut hub, a, identify(TOKEN, None, 1));
    let f = frames_to(&send(&mut hub, b, identify(TOKEN, None, 1)), b);
    let b_session = f[0]["d"]["session_id"].as_str().unwrap().to_owned();
    hub.client_gone(b);
    // The same upstream session again (a resume upstream shows no READY; a repeated one is
    // ignored): nothing for the clients.
    assert!(ready(&mut hub, 0, "up-1", &["10"]).is_empty());
    let mut out = Vec::new();
    hub.upstream(Upstream::Lost { shard: 0 }, &mut out);
    assert_eq!(
        frames_to(&out, a),
        [json!({"op": 9, "s": null, "t": null, "d": false})]
    );
    let (c, _) = hub.connect();
    let out = send(
        &mut hub,
        c,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": b_session, "seq": 1}}),
    );
    assert_eq!(frames_to(&out, c)[0]["op"], 9);
    // `a` identifies again on the same connection once the new upstream session is ready.
    assert!(send(&mut hub, a, identify(TOKEN, None, 1)).is_empty());
    let out = ready(&mut hub, 0, "up-2", &["10"]);
    assert_eq!(frames_to(&out, a)[0]["t"], "READY");
    // A new upstream session without a Lost first (READY with another id) does the same.
    let out = ready(&mut hub, 0, "up-3", &["10"]);
    assert_eq!(frames_to(&out, a)[0]["op"], 9);
}

/// Each shard's client sessions are its own: an event reaches only the clients of its
/// shard, a lost upstream session invalidates only its shard's sessions, and the per-shard
/// bound evicts only among the shard's own detached sessions.
#[test]
fn sessions_belong_to_their_shard_for_events_losses_and_eviction() {
    let mut config = HubConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
        vec![0, 1],
        2,
        "ws://127.0.0.1:9".into(),
    );
    config.replay_capacity = 16;
    config.max_sessions_per_shard = 3;
    config.seed = 7;
    let mut hub = Hub::new(config);
    ready(&mut hub, 0, "up-0", &[]);
    ready(&mut hub, 1, "up-1", &[]);
    let identify_on = |hub: &mut Hub, shard: u32| {
        let (client, _) = hub.connect();
        let out = send(hub, client, identify(TOKEN, Some([shard, 2]), 1 << 9));
        let id = frames_to(&out, client)[0]["d"]["session_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (client, id)
    };
    let (a, _) = identify_on(&mut hub, 0);
    let (b, b_session) = identify_on(&mut hub, 1);
    let out = dispatch(&mut hub, 0, "E", json!({"n": 1}));
    assert_eq!(events(&frames_to(&out, a)), [(2, 1)]);
    assert!(
        frames_to(&out, b).is_empty(),
        "shard 1's client got shard 0's event"
    );
    let out = dispatch(&mut hub, 1, "E", json!({"n": 2}));
    assert!(
        frames_to(&out, a).is_empty(),
        "shard 0's client got shard 1's event"
    );
    assert_eq!(events(&frames_to(&out, b)), [(2, 2)]);
    // b goes (its session is now the oldest detached one); shard 0's detached sessions fill
    // its bound of three and evict among themselves only.
    hub.client_gone(b);
    for _ in 0..3 {
        let (c, _) = identify_on(&mut hub, 0);
        hub.client_gone(c);
    }
    assert_eq!(hub.stats().sessions, 4, "three of shard 0, one of shard 1");
    // Shard 0's upstream session is lost: a learns it, shard 1's session stays resumable.
    let mut out = Vec::new();
    hub.upstream(Upstream::Lost { shard: 0 }, &mut out);
    assert_eq!(
        frames_to(&out, a),
        [json!({"op": 9, "s": null, "t": null, "d": false})]
    );
    assert_eq!(hub.stats().sessions, 1);
    dispatch(&mut hub, 1, "E", json!({"n": 3}));
    let (b2, _) = hub.connect();
    let out = send(
        &mut hub,
        b2,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": b_session, "seq": 2}}),
    );
    let frames = frames_to(&out, b2);
    assert_eq!(events(&frames), [(3, 3)], "{frames:?}");
    assert_eq!(frames.last().unwrap()["t"], "RESUMED");
    let status = hub.status();
    assert_eq!(status.sessions.len(), 1);
    assert_eq!(status.sessions[0].shard, 1);
}

#[test]
fn client_commands_are_forwarded_and_over_budget_closes_4008() {
    use handover_proxy::CommandOutcome;
    let mut hub = hub_with(vec![0, 1], 2, 16);
    // Shard 0 has no upstream READY yet: a command of a client waiting for it is dropped.
    let (w, _) = hub.connect();
    assert!(send(&mut hub, w, identify(TOKEN, Some([0, 2]), 1)).is_empty());
    let waiting = send(&mut hub, w, json!({"op": 3, "d": {"status": "idle"}}));
    assert!(waiting.is_empty(), "{waiting:?}");
    assert_eq!(hub.stats().commands_dropped, 1);
    ready(&mut hub, 1, "up-1", &[]);
    let (a, _) = hub.connect();
    let presence =
        json!({"op": 3, "d": {"since": null, "activities": [], "status": "online", "afk": false}});
    let out = send(&mut hub, a, presence.clone());
    assert_eq!(close_of(&out, a), Some(4003), "before IDENTIFY");
    let (a, _) = hub.connect();
    send(&mut hub, a, identify(TOKEN, Some([1, 2]), 1));
    let out = send(&mut hub, a, presence.clone());
    match &out[..] {
        [
            Action::Forward {
                client,
                shard,
                op,
                d,
                from_identify: false,
            },
        ] => {
            assert_eq!((*client, *shard, *op), (a, 1, 3));
            assert_eq!(
                serde_json::from_str::<Value>(d.as_str()).unwrap(),
                presence["d"]
            );
        }
        other => panic!("{other:?}"),
    }
    let mut out = Vec::new();
    hub.command_sent(a, CommandOutcome::Sent, &mut out);
    hub.command_sent(a, CommandOutcome::Dropped, &mut out);
    assert!(out.is_empty());
    hub.command_sent(a, CommandOutcome::OverBudget, &mut out);
    assert_eq!(close_of(&out, a), Some(4008));
    let s = hub.stats();
    assert_eq!(
        (s.forwarded, s.commands_dropped, s.commands_refused),
        (1, 2, 1)
    );
    let (b, _) = hub.connect();
    let big = json!({"op": 1, "d": null, "pad": "x".repeat(4096)});
    assert_eq!(close_of(&send(&mut hub, b, big), b), Some(4002));
}

/// A client of the random-interleaving test: one bot that connects, identifies, resumes,
/// reads part of what it was sent and disappears, again and again.
#[derive(Default)]
struct Bot {
    intents: u64,
    conn: Option<ClientId>,
    session: Option<String>,
    last_seq: u64,
    /// Frames sent to its connection, not read yet (lost when the connection goes).
    inbox: std::collections::VecDeque<Value>,
    /// Event numbers received in its session, in order.
    got: Vec<u64>,
    /// What the model says the session must receive, in order.
    expected: Vec<u64>,
    /// Its identify is answered: it may send commands.
    attached: bool,
    resumes: u64,
    chunks: u64,
    /// Identifies so far: which session a request was made in.
    generation: u64,
    /// The model knows the session is gone (the bot has not read its op 9 yet).
    dead: bool,
}

/// Which intents let a session see the test's event kinds (Discord's table, restated).
fn model_admits(kind: &str, in_guild: bool, intents: u64) -> bool {
    let need = match (kind, in_guild) {
        ("MESSAGE_CREATE", true) => Intents::GUILD_MESSAGES,
        ("MESSAGE_CREATE", false) => Intents::DIRECT_MESSAGES,
        ("GUILD_MEMBER_ADD", _) => Intents::GUILD_MEMBERS,
        ("CHANNEL_UPDATE", _) => Intents::GUILDS,
        _ => return true,
    };
    intents & need.bits() != 0
}

#[test]
fn random_interleavings_give_each_session_its_own_stream_across_restarts() {
    let upstream_intents = Intents::GUILDS
        | Intents::GUILD_MESSAGES
        | Intents::DIRECT_MESSAGES
        | Intents::GUILD_MEMBERS;
    let bot_intents = [
        upstream_intents.bits(),
        (Intents::GUILDS | Intents::GUILD_MESSAGES).bits(),
        Intents::DIRECT_MESSAGES.bits(),
        Intents::GUILD_MEMBERS.bits(),
    ];
    let mut total_resumes = 0;
    let mut total_chunks = 0;
    let mut total_events = 0;
    for seed in 0..40u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let capacity = [32, 256, 4096][rng.usize(..3)];
        let mut config = HubConfig::new(
            Token::new(TOKEN).unwrap(),
            upstream_intents,
            vec![0],
            1,
            "ws://127.0.0.1:9".into(),
        );
        config.replay_capacity = capacity;
        config.seed = seed;
        let mut hub = Hub::new(config);
        let mut upstream_session = 0;
        ready(&mut hub, 0, "up-0", &[]);
        let mut bots: Vec<Bot> = bot_intents
            .iter()
            .map(|&intents| Bot {
                intents,
                ..Bot::default()
            })
            .collect();
        // Upstream nonce -> (bot, its session then, the client's nonce): the model of routing.
        let mut requests: BTreeMap<String, (usize, u64, Option<String>, u64, u64)> =
            BTreeMap::new();
        let mut next_event = 0u64;
        // Bounded: a fixed number of steps per seed.
        for _ in 0..600 {
            let mut out = Vec::new();
            let roll = rng.u32(..100);
            let b = rng.usize(..bots.len());
            match roll {
                0..=39 => {
                    next_event += 1;
                    let (kind, in_guild) = [
                        ("MESSAGE_CREATE", true),
                        ("MESSAGE_CREATE", false),
                        ("GUILD_MEMBER_ADD", true),
                        ("CHANNEL_UPDATE", true),
                        ("INTERACTION_CREATE", true),
                    ][rng.usize(..5)];
                    let mut data = json!({"n": next_event, "channel_id": "5"});
                    if in_guild {
                        data["guild_id"] = json!("1");
                    }
                    for bot in bots.iter_mut().filter(|b| b.session.is_some() && !b.dead) {
                        if model_admits(kind, in_guild, bot.intents) {
                            bot.expected.push(next_event);
                        }
                    }
                    out = dispatch(&mut hub, 0, kind, data);
                }
                40..=59 => {
                    // The bot reads some of what it was sent.
                    let n = rng.usize(..12);
                    read(&mut bots[b], n);
                }
                60..=67 => {
                    if let Some(conn) = bots[b].conn.take() {
                        hub.client_gone(conn);
                        bots[b].inbox.clear();
                        bots[b].attached = false;
                    }
                }
                68..=69 => {
                    if let Some(conn) = bots[b].conn.take() {
                        hub.client_lagged(conn, &mut out);
                        bots[b].inbox.clear();
                        bots[b].attached = false;
                    }
                }
                70..=79 => {
                    if bots[b].conn.is_none() {
                        let (conn, _hello) = hub.connect();
                        let bot = &mut bots[b];
                        bot.conn = Some(conn);
                        // A READY it never read gave it no session to resume.
                        if bot.session.as_deref() == Some("") {
                            bot.session = None;
                        }
                        let payload = match &bot.session {
                            Some(id) => {
                                json!({"op": 6, "d": {"token": TOKEN, "session_id": id, "seq": bot.last_seq}})
                            }
                            None => identify(TOKEN, None, bot.intents),
                        };
                        if bot.session.is_none() {
                            bot.got.clear();
                            bot.expected.clear();
                            bot.generation += 1;
                            bot.dead = false;
                            // The session exists from here on: events after this are its.
                            bot.session = Some(String::new());
                        }
                        bot.attached = true;
                        out = send(&mut hub, conn, payload);
                    }
                }
                80..=89 => {
                    let bot = &bots[b];
                    if let (Some(conn), true, Some(_)) = (bot.conn, bot.attached, &bot.session) {
                        let generation = bot.generation;
                        // Every bot uses the same nonce, or none.
                        let nonce = rng.bool().then(|| "same".to_owned());
                        let mut d = json!({"guild_id": "1", "query": "", "limit": 0});
                        if let Some(n) = &nonce {
                            d["nonce"] = json!(n);
                        }
                        out = send(&mut hub, conn, json!({"op": 8, "d": d}));
                        for a in &out {
                            if let Action::Forward { op: 8, d, .. } = a {
                                let d: Value = serde_json::from_str(d.as_str()).unwrap();
                                let up = d["nonce"].as_str().unwrap().to_owned();
                                let count = 1 + rng.u64(..3);
                                requests.insert(up, (b, generation, nonce.clone(), 0, count));
                            }
                        }
                    }
                }
                90..=97 => {
                    // Discord answers one open request with its next chunk.
                    if let Some(up) = requests
                        .keys()
                        .nth(rng.usize(..requests.len().max(1)))
                        .cloned()
                    {
                        let (who, generation, nonce, index, count) = requests[&up].clone();
                        next_event += 1;
                        let data = json!({"guild_id": "1", "members": [], "chunk_index": index,
                            "chunk_count": count, "nonce": up, "n": next_event});
                        if index + 1 == count {
                            requests.remove(&up);
                        } else if let Some(r) = requests.get_mut(&up) {
                            r.3 += 1;
                        }
                        let bot = &mut bots[who];
                        if bot.generation == generation && bot.session.is_some() && !bot.dead {
                            bot.expected.push(next_event);
                            bot.chunks += 1;
                        }
                        let mut expect_nonce = std::collections::HashMap::new();
                        expect_nonce.insert(next_event, nonce);
                        out = dispatch(&mut hub, 0, "GUILD_MEMBERS_CHUNK", data);
                        for f in out.iter().flat_map(|a| match a {
                            Action::Send { frames, .. } => frames.clone(),
                            _ => Vec::new(),
                        }) {
                            let v: Value = serde_json::from_slice(&f.to_vec()).unwrap();
                            assert_eq!(
                                v["d"].get("nonce").and_then(Value::as_str),
                                expect_nonce[&next_event].as_deref(),
                                "the client's own nonce comes back"
                            );
                        }
                    }
                }
                _ if rng.u32(..8) != 0 => {}
                _ => {
                    upstream_session += 1;
                    let mut lost = Vec::new();
                    hub.upstream(Upstream::Lost { shard: 0 }, &mut lost);
                    out = lost;
                    out.extend(ready(&mut hub, 0, &format!("up-{upstream_session}"), &[]));
                    requests.clear();
                    for bot in &mut bots {
                        bot.dead = true;
                    }
                }
            }
            deliver(&mut bots, &out);
            for bot in &bots {
                assert!(
                    bot.got.len() <= bot.expected.len(),
                    "seed {seed}: more than sent"
                );
                assert_eq!(bot.got[..], bot.expected[..bot.got.len()], "seed {seed}");
            }
        }
        // Every bot comes back, resumes (or identifies) and reads everything.
        for bot in &mut bots {
            if let Some(conn) = bot.conn.take() {
                hub.client_gone(conn);
                bot.inbox.clear();
            }
            let Some(id) = bot.session.clone() else {
                continue;
            };
            let (conn, _) = hub.connect();
            bot.conn = Some(conn);
            let out = send(
                &mut hub,
                conn,
                json!({"op": 6, "d": {"token": TOKEN, "session_id": id, "seq": bot.last_seq}}),
            );
            let mut tmp = vec![std::mem::take(bot)];
            deliver(&mut tmp, &out);
            *bot = tmp.pop().unwrap();
            read(bot, usize::MAX);
            if bot.session.is_some() {
                assert_eq!(bot.got, bot.expected, "seed {seed}: the whole stream, once");
            }
            total_resumes += bot.resumes;
            total_chunks += bot.chunks;
            total_events += bot.got.len();
        }
    }
    assert!(total_resumes > 150, "resumes exercised: {total_resumes}");
    assert!(total_chunks > 500, "chunks routed: {total_chunks}");
    assert!(total_events > 3000, "events checked: {total_events}");
}

fn deliver(bots: &mut [Bot], out: &[Action]) {
    for a in out {
        match a {
            Action::Send { client, frames } => {
                if let Some(bot) = bots.iter_mut().find(|b| b.conn == Some(*client)) {
                    for f in frames {
                        bot.inbox
                            .push_back(serde_json::from_slice(&f.to_vec()).unwrap());
                    }
                }
            }
            Action::Close { client, .. } => {
                if let Some(bot) = bots.iter_mut().find(|b| b.conn == Some(*client)) {
                    bot.conn = None;
                    bot.inbox.clear();
                    bot.attached = false;
                }
            }
            _ => {}
        }
    }
}

/// The bot reads up to `n` frames, as a library would: checks each seq follows the last.
fn read(bot: &mut Bot, n: usize) {
    for _ in 0..n {
        let Some(f) = bot.inbox.pop_front() else {
            return;
        };
        match (f["op"].as_u64(), f["t"].as_str()) {
            (Some(9), _) => {
                bot.session = None;
                bot.dead = false;
                bot.got.clear();
                bot.expected.clear();
                bot.attached = false;
            }
            (Some(0), Some("READY")) => {
                bot.session = Some(f["d"]["session_id"].as_str().unwrap().to_owned());
                bot.last_seq = f["s"].as_u64().unwrap();
            }
            (Some(0), Some("GUILD_CREATE")) => bot.last_seq = f["s"].as_u64().unwrap(),
            (Some(0), Some("RESUMED")) => {
                assert_eq!(
                    f["s"].as_u64(),
                    Some(bot.last_seq),
                    "RESUMED repeats the last seq"
                );
                bot.resumes += 1;
            }
            (Some(0), Some(_)) => {
                let s = f["s"].as_u64().unwrap();
                assert_eq!(s, bot.last_seq + 1, "seqs follow one another: {f}");
                bot.last_seq = s;
                bot.got.push(f["d"]["n"].as_u64().unwrap());
            }
            _ => {}
        }
    }
}

/// Resource arrays sorted by their ids, so that two GUILD_CREATEs compare as Discord's
/// clients read them (the order of a guild's channels, roles... carries no meaning).
fn normalised(mut guild: Value) -> Value {
    let key = |field: &str, v: &Value| -> String {
        let id = match field {
            "members" | "presences" => &v["user"]["id"],
            "voice_states" => &v["user_id"],
            "soundboard_sounds" => &v["sound_id"],
            _ => &v["id"],
        };
        id.as_str().unwrap_or_default().to_owned()
    };
    if let Value::Object(fields) = &mut guild {
        for (field, v) in fields.iter_mut() {
            if let Value::Array(items) = v {
                items.sort_by_key(|item| key(field, item));
            }
        }
    }
    guild
}

fn guild_creates_of(hub: &mut Hub, intents: u64, large_threshold: Option<u64>) -> Vec<Value> {
    let (client, _) = hub.connect();
    let mut payload = identify(TOKEN, None, intents);
    if let Some(t) = large_threshold {
        payload["d"]["large_threshold"] = json!(t);
    }
    let out = send(hub, client, payload);
    frames_to(&out, client)
        .into_iter()
        .filter(|f| f["t"] == "GUILD_CREATE")
        .map(|f| normalised(f["d"].clone()))
        .collect()
}

fn member(id: &str, nick: Option<&str>) -> Value {
    json!({"user": {"id": id, "username": format!("u{id}")}, "roles": [], "nick": nick, "joined_at": "2020-01-01T00:00:00Z"})
}

/// The guild of the cache test, as its GUILD_CREATE first arrives.
fn first_guild() -> Value {
    json!({
        "id": "10", "name": "before", "owner_id": "1", "member_count": 2, "large": false,
        "joined_at": "2020-01-01T00:00:00Z", "unknown_new_field": {"kept": true},
        "channels": [{"id": "100", "type": 0, "name": "general"}, {"id": "101", "type": 2, "name": "voice"}],
        "threads": [{"id": "300", "type": 11, "parent_id": "100", "name": "t1", "thread_metadata": {"archived": false}}],
        "roles": [{"id": "10", "name": "@everyone", "permissions": "0"}],
        "emojis": [{"id": "500", "name": "e"}],
        "stickers": [],
        "members": [member("1", None), member("2", None)],
        "voice_states": [],
        "presences": [{"user": {"id": "2"}, "status": "online", "activities": [], "client_status": {}}],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": []
    })
}

/// The updates of the cache test, in order.
fn guild_updates() -> Vec<(&'static str, Value)> {
    vec![
        (
            "GUILD_UPDATE",
            json!({"id": "10", "name": "after", "owner_id": "1",
            "roles": [{"id": "10", "name": "@everyone", "permissions": "8"}],
            "emojis": [{"id": "500", "name": "e"}], "stickers": []}),
        ),
        (
            "CHANNEL_CREATE",
            json!({"id": "102", "guild_id": "10", "type": 0, "name": "new"}),
        ),
        (
            "CHANNEL_UPDATE",
            json!({"id": "100", "guild_id": "10", "type": 0, "name": "renamed"}),
        ),
        (
            "CHANNEL_DELETE",
            json!({"id": "101", "guild_id": "10", "type": 2, "name": "voice"}),
        ),
        (
            "THREAD_CREATE",
            json!({"id": "301", "guild_id": "10", "type": 11, "parent_id": "102", "name": "t2", "newly_created": true, "thread_metadata": {"archived": false}}),
        ),
        (
            "THREAD_UPDATE",
            json!({"id": "300", "guild_id": "10", "type": 11, "parent_id": "100", "name": "t1", "thread_metadata": {"archived": true}}),
        ),
        (
            "THREAD_CREATE",
            json!({"id": "302", "guild_id": "10", "type": 11, "parent_id": "100", "name": "t3", "thread_metadata": {"archived": false}}),
        ),
        (
            "THREAD_DELETE",
            json!({"id": "302", "guild_id": "10", "type": 11, "parent_id": "100"}),
        ),
        (
            "THREAD_LIST_SYNC",
            json!({"guild_id": "10", "channel_ids": ["100"], "threads": [
            {"id": "303", "guild_id": "10", "type": 11, "parent_id": "100", "name": "t4", "thread_metadata": {"archived": false}}], "members": []}),
        ),
        (
            "GUILD_ROLE_CREATE",
            json!({"guild_id": "10", "role": {"id": "11", "name": "mod", "permissions": "4"}}),
        ),
        (
            "GUILD_ROLE_CREATE",
            json!({"guild_id": "10", "role": {"id": "12", "name": "gone", "permissions": "0"}}),
        ),
        (
            "GUILD_ROLE_UPDATE",
            json!({"guild_id": "10", "role": {"id": "11", "name": "moderator", "permissions": "4"}}),
        ),
        (
            "GUILD_ROLE_DELETE",
            json!({"guild_id": "10", "role_id": "12"}),
        ),
        ("GUILD_MEMBER_ADD", {
            let mut m = member("3", None);
            m["guild_id"] = json!("10");
            m
        }),
        (
            "GUILD_MEMBER_UPDATE",
            json!({"guild_id": "10", "user": {"id": "3", "username": "u3"}, "roles": ["11"], "nick": "three"}),
        ),
        (
            "GUILD_MEMBER_REMOVE",
            json!({"guild_id": "10", "user": {"id": "2", "username": "u2"}}),
        ),
        (
            "GUILD_EMOJIS_UPDATE",
            json!({"guild_id": "10", "emojis": [{"id": "501", "name": "f"}]}),
        ),
        (
            "GUILD_STICKERS_UPDATE",
            json!({"guild_id": "10", "stickers": [{"id": "600", "name": "s"}]}),
        ),
        (
            "VOICE_STATE_UPDATE",
            json!({"guild_id": "10", "user_id": "3", "channel_id": "102", "session_id": "v", "mute": false}),
        ),
        (
            "VOICE_STATE_UPDATE",
            json!({"guild_id": "10", "user_id": "1", "channel_id": "102", "session_id": "w", "mute": false}),
        ),
        (
            "VOICE_STATE_UPDATE",
            json!({"guild_id": "10", "user_id": "1", "channel_id": null, "session_id": "w", "mute": false}),
        ),
        (
            "PRESENCE_UPDATE",
            json!({"guild_id": "10", "user": {"id": "3"}, "status": "idle", "activities": [], "client_status": {}}),
        ),
        (
            "PRESENCE_UPDATE",
            json!({"guild_id": "10", "user": {"id": "2"}, "status": "offline", "activities": [], "client_status": {}}),
        ),
        (
            "STAGE_INSTANCE_CREATE",
            json!({"id": "700", "guild_id": "10", "channel_id": "102", "topic": "a"}),
        ),
        (
            "STAGE_INSTANCE_UPDATE",
            json!({"id": "700", "guild_id": "10", "channel_id": "102", "topic": "b"}),
        ),
        (
            "STAGE_INSTANCE_CREATE",
            json!({"id": "701", "guild_id": "10", "channel_id": "102", "topic": "c"}),
        ),
        (
            "STAGE_INSTANCE_DELETE",
            json!({"id": "701", "guild_id": "10", "channel_id": "102", "topic": "c"}),
        ),
        (
            "GUILD_SCHEDULED_EVENT_CREATE",
            json!({"id": "800", "guild_id": "10", "name": "x", "status": 1}),
        ),
        (
            "GUILD_SCHEDULED_EVENT_UPDATE",
            json!({"id": "800", "guild_id": "10", "name": "y", "status": 2}),
        ),
        (
            "GUILD_SCHEDULED_EVENT_CREATE",
            json!({"id": "801", "guild_id": "10", "name": "z", "status": 1}),
        ),
        (
            "GUILD_SCHEDULED_EVENT_DELETE",
            json!({"id": "801", "guild_id": "10", "name": "z", "status": 3}),
        ),
        (
            "GUILD_SOUNDBOARD_SOUND_CREATE",
            json!({"sound_id": "900", "guild_id": "10", "name": "boom"}),
        ),
        // A guild the cache never had: ignored.
        (
            "CHANNEL_CREATE",
            json!({"id": "199", "guild_id": "99", "type": 0, "name": "elsewhere"}),
        ),
        // Not about guilds.
        (
            "MESSAGE_CREATE",
            json!({"id": "1000", "guild_id": "10", "channel_id": "100", "content": "hi"}),
        ),
    ]
}

/// What Discord sends for the guild after those updates, written out by hand.
fn guild_after_updates() -> Value {
    json!({
        "id": "10", "name": "after", "owner_id": "1", "member_count": 2, "large": false,
        "joined_at": "2020-01-01T00:00:00Z", "unknown_new_field": {"kept": true},
        "channels": [{"id": "100", "type": 0, "name": "renamed"}, {"id": "102", "type": 0, "name": "new"}],
        "threads": [
            {"id": "301", "guild_id": "10", "type": 11, "parent_id": "102", "name": "t2", "thread_metadata": {"archived": false}},
            {"id": "303", "guild_id": "10", "type": 11, "parent_id": "100", "name": "t4", "thread_metadata": {"archived": false}}],
        "roles": [{"id": "10", "name": "@everyone", "permissions": "8"}, {"id": "11", "name": "moderator", "permissions": "4"}],
        "emojis": [{"id": "501", "name": "f"}],
        "stickers": [{"id": "600", "name": "s"}],
        "members": [member("1", None), {"user": {"id": "3", "username": "u3"}, "roles": ["11"], "nick": "three", "joined_at": "2020-01-01T00:00:00Z"}],
        "voice_states": [{"user_id": "3", "channel_id": "102", "session_id": "v", "mute": false}],
        "presences": [{"user": {"id": "3"}, "status": "idle", "activities": [], "client_status": {}}],
        "stage_instances": [{"id": "700", "guild_id": "10", "channel_id": "102", "topic": "b"}],
        "guild_scheduled_events": [{"id": "800", "guild_id": "10", "name": "y", "status": 2}],
        "soundboard_sounds": [{"sound_id": "900", "guild_id": "10", "name": "boom"}]
    })
}

#[test]
fn a_fresh_identify_gets_the_guilds_patched_by_every_update() {
    let mut hub = hub_with(vec![0], 1, 64);
    ready(&mut hub, 0, "up-1", &["10", "11"]);
    dispatch(&mut hub, 0, "GUILD_CREATE", first_guild());
    dispatch(
        &mut hub,
        0,
        "GUILD_CREATE",
        json!({"id": "11", "unavailable": true}),
    );
    assert_eq!(
        guild_creates_of(&mut hub, Intents::GUILDS.bits(), None),
        [normalised(first_guild())]
    );
    for (event, data) in guild_updates() {
        dispatch(&mut hub, 0, event, data);
    }
    assert_eq!(
        guild_creates_of(&mut hub, Intents::GUILDS.bits(), None),
        [normalised(guild_after_updates())]
    );
    // A guild that goes away is not sent; one that comes back is.
    dispatch(
        &mut hub,
        0,
        "GUILD_DELETE",
        json!({"id": "10", "unavailable": true}),
    );
    assert!(guild_creates_of(&mut hub, Intents::GUILDS.bits(), None).is_empty());
    dispatch(&mut hub, 0, "GUILD_CREATE", first_guild());
    assert_eq!(
        guild_creates_of(&mut hub, Intents::GUILDS.bits(), None).len(),
        1
    );
    // Without GUILDS, no GUILD_CREATE at all (it is a GUILDS event).
    assert!(guild_creates_of(&mut hub, Intents::GUILD_MESSAGES.bits(), None).is_empty());
}

#[test]
fn resource_kinds_not_cached_are_sent_empty() {
    let mut config = HubConfig::new(
        Token::new(TOKEN).unwrap(),
        Intents::GUILDS,
        vec![0],
        1,
        "ws://127.0.0.1:9".into(),
    );
    config.cache = handover_proxy::CacheKinds::parse("channels,roles").unwrap();
    let mut hub = Hub::new(config);
    ready(&mut hub, 0, "up-1", &["10"]);
    dispatch(&mut hub, 0, "GUILD_CREATE", first_guild());
    for (event, data) in guild_updates() {
        dispatch(&mut hub, 0, event, data);
    }
    let mut expected = guild_after_updates();
    for field in [
        "threads",
        "emojis",
        "stickers",
        "members",
        "voice_states",
        "presences",
        "stage_instances",
        "guild_scheduled_events",
        "soundboard_sounds",
    ] {
        expected[field] = json!([]);
    }
    assert_eq!(
        guild_creates_of(&mut hub, Intents::GUILDS.bits(), None),
        [normalised(expected)]
    );
}

#[test]
fn an_identify_presence_goes_upstream_and_over_budget_is_only_dropped() {
    let mut hub = hub_with(vec![0], 1, 16);
    let (client, _) = hub.connect();
    let presence = json!({"since": null, "activities": [{"name": "x", "type": 0}], "status": "dnd", "afk": false});
    let mut payload = identify(TOKEN, None, 1);
    payload["d"]["presence"] = presence.clone();
    // Before the upstream READY: nothing goes upstream yet.
    let out = send(&mut hub, client, payload);
    assert!(out.is_empty(), "{out:?}");
    let out = ready(&mut hub, 0, "up-1", &[]);
    let forwarded: Vec<(u8, Value, bool)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Forward {
                client: c,
                op,
                d,
                from_identify,
                ..
            } if *c == client => Some((
                *op,
                serde_json::from_str(d.as_str()).unwrap(),
                *from_identify,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, [(3, presence, true)]);
    assert_eq!(frames_to(&out, client)[0]["t"], "READY");
    let mut out = Vec::new();
    hub.identify_presence_sent(handover_proxy::CommandOutcome::OverBudget);
    assert_eq!(close_of(&out, client), None);
    assert_eq!(hub.stats().commands_dropped, 1);
    // Without a presence, nothing is forwarded.
    let (other, _) = hub.connect();
    hub.client_text(
        other,
        identify(TOKEN, None, 1).to_string().as_bytes(),
        &mut out,
    );
    assert!(!out.iter().any(|a| matches!(a, Action::Forward { .. })));
}

#[test]
fn large_threshold_trims_the_members_of_a_large_guild() {
    let mut hub = hub_with(vec![0], 1, 64);
    ready(&mut hub, 0, "up-1", &["10"]);
    let mut guild = first_guild();
    guild["members"] = json!([member("1", None), member("2", None), member("3", None)]);
    guild["member_count"] = json!(3);
    guild["voice_states"] = json!([{"user_id": "3", "channel_id": "101", "session_id": "v"}]);
    dispatch(&mut hub, 0, "GUILD_CREATE", guild.clone());
    let ids = |g: &Value| -> Vec<String> {
        g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let full = guild_creates_of(&mut hub, Intents::GUILDS.bits(), None);
    assert_eq!(ids(&full[0]), ["1", "2", "3"]);
    assert_eq!(
        full[0]["large"], false,
        "the upstream's own flag without a threshold"
    );
    let small = guild_creates_of(&mut hub, Intents::GUILDS.bits(), Some(250));
    assert_eq!(ids(&small[0]), ["1", "2", "3"]);
    assert_eq!(small[0]["large"], false);
    // Above the threshold: the online member (2, a presence) and the one in voice (3).
    let large = guild_creates_of(&mut hub, Intents::GUILDS.bits(), Some(2));
    assert_eq!(ids(&large[0]), ["2", "3"]);
    assert_eq!(large[0]["large"], true);
}

#[test]
fn a_burst_of_dispatches_is_one_batch_per_client_in_seq_order() {
    let mut hub = hub_with(vec![0], 1, 64);
    ready(&mut hub, 0, "up-1", &[]);
    let (a, _) = hub.connect();
    let (b, _) = hub.connect();
    let seq_a = frames_to(&send(&mut hub, a, identify(TOKEN, None, 513)), a)[0]["s"]
        .as_u64()
        .unwrap();
    frames_to(&send(&mut hub, b, identify(TOKEN, None, 513)), b);
    // What the shell's pump does with the events ready at once: one `out` for all of them.
    let out = burst(&mut hub, 10);
    // Each dispatch sends to a then b, so a's frames are not merged across b's: per client,
    // every frame is there once and in order; consecutive frames for one client share an
    // action (the single-client case is one action for the burst).
    for client in [a, b] {
        let f = frames_to(&out, client);
        let ns: Vec<u64> = f.iter().map(|v| v["d"]["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, (0..10).collect::<Vec<_>>());
        let seqs: Vec<u64> = f.iter().map(|v| v["s"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    assert_eq!(frames_to(&out, a)[0]["s"].as_u64().unwrap(), seq_a + 1);
    hub.client_gone(b);
    let out = burst(&mut hub, 10);
    assert_eq!(out.len(), 1, "one client: one batch for the burst");
    assert_eq!(frames_to(&out, a).len(), 10);
}

#[test]
fn soundboard_sounds_go_to_the_session_that_asked() {
    let mut hub = hub_with(vec![0], 1, 64);
    ready(&mut hub, 0, "up-1", &[]);
    let (a, _) = hub.connect();
    let (b, _) = hub.connect();
    send(&mut hub, a, identify(TOKEN, None, 513));
    send(&mut hub, b, identify(TOKEN, None, 513));
    let asked = send(
        &mut hub,
        a,
        json!({"op": 31, "d": {"guild_ids": ["5", "6"]}}),
    );
    assert!(
        matches!(
            &asked[..],
            [Action::Forward {
                op: 31,
                shard: 0,
                ..
            }]
        ),
        "{asked:?}"
    );
    let sounds = |g: &str| json!({"guild_id": g, "soundboard_sounds": []});
    // One reply per guild asked for, to the asker only; b sees neither.
    for g in ["6", "5"] {
        let out = dispatch(&mut hub, 0, "SOUNDBOARD_SOUNDS", sounds(g));
        let to_a = frames_to(&out, a);
        assert_eq!(to_a.len(), 1, "{out:?}");
        assert_eq!(to_a[0]["d"]["guild_id"], g);
        assert!(frames_to(&out, b).is_empty(), "{out:?}");
    }
    // No request open for the guild: every session gets it, as any other dispatch.
    let out = dispatch(&mut hub, 0, "SOUNDBOARD_SOUNDS", sounds("5"));
    assert_eq!(frames_to(&out, a).len(), 1);
    assert_eq!(frames_to(&out, b).len(), 1);
}

/// `count` dispatches `{"n": 0..count}` on shard 0, handled as the pump handles the events
/// ready at once: one action list for all of them.
fn burst(hub: &mut Hub, count: u64) -> Vec<Action> {
    let mut out = Vec::new();
    for n in 0..count {
        hub.upstream(
            Upstream::Dispatch {
                shard: 0,
                event_type: "E".into(),
                data: raw(&json!({"n": n})),
            },
            &mut out,
        );
    }
    out
}
