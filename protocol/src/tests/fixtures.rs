//! Server payloads in the shapes Discord documents
//! (<https://discord.com/developers/docs/events/gateway-events>).

use serde_json::json;

pub(super) const TOKEN: &str = "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs";
pub(super) const GATEWAY: &str = "wss://gateway.discord.gg";
pub(super) const RESUME_URL: &str = "wss://gateway-us-east1-b.discord.gg";
pub(super) const SESSION: &str = "9b3d5e7f0a1c2e4f6a8b0c2d4e6f8a0b";

pub(super) fn hello(interval_ms: u64) -> String {
    json!({"op": 10, "d": {"heartbeat_interval": interval_ms}, "s": null, "t": null}).to_string()
}

pub(super) fn heartbeat_ack() -> String {
    json!({"op": 11}).to_string()
}

pub(super) fn heartbeat_request() -> String {
    json!({"op": 1, "d": null}).to_string()
}

pub(super) fn reconnect() -> String {
    json!({"op": 7, "d": null}).to_string()
}

pub(super) fn invalid_session(resumable: bool) -> String {
    json!({"op": 9, "d": resumable}).to_string()
}

pub(super) fn ready(session_id: &str, seq: u64) -> String {
    json!({
        "op": 0,
        "s": seq,
        "t": "READY",
        "d": {
            "v": 10,
            "user": {"id": "80351110224678912", "username": "Nelly", "discriminator": "0", "bot": true, "avatar": null},
            "guilds": [{"id": "41771983423143937", "unavailable": true}],
            "session_id": session_id,
            "resume_gateway_url": RESUME_URL,
            "shard": [0, 1],
            "application": {"id": "80351110224678912", "flags": 0}
        }
    })
    .to_string()
}

pub(super) fn resumed(seq: u64) -> String {
    json!({"op": 0, "s": seq, "t": "RESUMED", "d": {}}).to_string()
}

pub(super) fn message_create(seq: u64, content: &str) -> String {
    json!({
        "op": 0,
        "s": seq,
        "t": "MESSAGE_CREATE",
        "d": {
            "id": "334385199974967042",
            "channel_id": "290926798999357250",
            "guild_id": "41771983423143937",
            "author": {"id": "53908099506183680", "username": "mason", "discriminator": "0"},
            "content": content,
            "timestamp": "2017-07-11T17:27:07.299000+00:00",
            "edited_timestamp": null,
            "tts": false,
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": false,
            "type": 0
        }
    })
    .to_string()
}
