//! Payloads shared by the Discord benchmarks: a realistic MESSAGE_CREATE of about 1 KiB and the
//! dispatch envelope exactly as the mock gateway writes it.

use serde_json::{Value, json};

/// Words the message texts are drawn from, so consecutive messages differ the way real chat
/// does (a compressor sees new text in every message, not one payload repeated).
const WORDS: [&str; 24] = [
    "the", "deploy", "is", "green", "again", "after", "rollback", "of", "shard", "seven", "can",
    "someone", "check", "latency", "graphs", "please", "thanks", "looks", "fine", "here", "ping",
    "me", "when", "done",
];

/// Usernames the authors are drawn from.
const USERS: [&str; 6] = ["orbit", "ferris", "maple", "quill", "juniper", "basalt"];

/// A MESSAGE_CREATE `d` of about 1 KiB with the fields Discord sends for a guild text message.
/// `i` varies the ids, the timestamp, the author and the text.
pub(crate) fn message_create(i: u64) -> Value {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        // xorshift64: cheap, deterministic variety.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = 12 + (next() % 14) as usize;
    let content: Vec<&str> = (0..words)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect();
    let user = (next() % USERS.len() as u64) as usize;
    let user_id = 200_000_000_000_000_000u64 + user as u64 * 7919;
    let message_id = 1_350_000_000_000_000_000u64 + i * 4_194_304;
    let seconds = i % 60;
    json!({
        "type": 0,
        "tts": false,
        "timestamp": format!("2025-03-14T09:26:{seconds:02}.589000+00:00"),
        "pinned": false,
        "nonce": (message_id + 1).to_string(),
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": false,
        "member": {
            "roles": ["1100000000000000001", "1100000000000000002", "1100000000000000003"],
            "premium_since": null,
            "pending": false,
            "nick": null,
            "mute": false,
            "joined_at": "2023-06-01T12:00:00.000000+00:00",
            "flags": 0,
            "deaf": false,
            "communication_disabled_until": null,
            "banner": null,
            "avatar": null
        },
        "id": message_id.to_string(),
        "flags": 0,
        "embeds": [],
        "edited_timestamp": null,
        "content": content.join(" "),
        "components": [],
        "channel_id": "1200000000000000042",
        "author": {
            "username": USERS[user],
            "public_flags": 0,
            "id": user_id.to_string(),
            "global_name": USERS[user].to_uppercase(),
            "discriminator": "0",
            "clan": null,
            "avatar_decoration_data": null,
            "avatar": format!("a_{:032x}", u128::from(user_id) * 0x1_0000_0001),
            "primary_guild": null
        },
        "attachments": [],
        "guild_id": "1000000000000000007",
        "channel_type": 0
    })
}

/// The dispatch payload as the mock gateway writes it: `{"op":0,"t":..,"s":..,"d":..}`.
pub(crate) fn envelope(seq: u64, event: &str, data: &str) -> String {
    format!("{{\"op\":0,\"t\":\"{event}\",\"s\":{seq},\"d\":{data}}}")
}
