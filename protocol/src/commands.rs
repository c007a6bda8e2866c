//! What an application may send on a gateway connection, and the handshake payloads.
//!
//! Source: <https://discord.com/developers/docs/events/gateway-events#send-events>.

use std::fmt;

use super::envelope::RawJson;
use super::{Intents, OpCode, ProtocolError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Discord id (a snowflake). Sent as a string, as Discord documents; read from a string or
/// a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Snowflake(pub u64);

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Snowflake {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            N(u64),
            S(&'a str),
            Owned(String),
        }
        let parse = |s: &str| s.parse().map(Snowflake).map_err(serde::de::Error::custom);
        match Either::deserialize(deserializer)? {
            Either::N(n) => Ok(Snowflake(n)),
            Either::S(s) => parse(s),
            Either::Owned(s) => parse(&s),
        }
    }
}

/// The shard of a connection, sent in IDENTIFY as `[shard_id, num_shards]`. `id` must be
/// below `count`: [`ShardId::new`] checks it, and so does [`DiscordCodec::new`](super::DiscordCodec::new).
///
/// Source: <https://discord.com/developers/docs/events/gateway#sharding>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "[u32; 2]", try_from = "[u32; 2]")]
pub struct ShardId {
    /// The zero-based shard id.
    pub id: u32,
    /// The total number of shards.
    pub count: u32,
}

impl ShardId {
    /// The only shard of an unsharded bot: `[0, 1]`.
    pub const ONE: ShardId = ShardId { id: 0, count: 1 };

    /// Shard `id` of `count`; refused unless `id < count`.
    pub fn new(id: u32, count: u32) -> Result<ShardId, ProtocolError> {
        if id >= count {
            return Err(ProtocolError::InvalidConfig {
                reason: format!("shard id {id} is not below the shard count {count}"),
            });
        }
        Ok(ShardId { id, count })
    }

    /// The zero-based shard id.
    pub const fn id(self) -> u32 {
        self.id
    }

    /// The total number of shards.
    pub const fn count(self) -> u32 {
        self.count
    }

    /// Whether `id < count`.
    pub const fn is_valid(self) -> bool {
        self.id < self.count
    }
}

impl From<ShardId> for [u32; 2] {
    fn from(s: ShardId) -> Self {
        [s.id, s.count]
    }
}

impl TryFrom<[u32; 2]> for ShardId {
    type Error = ProtocolError;

    fn try_from([id, count]: [u32; 2]) -> Result<Self, Self::Error> {
        ShardId::new(id, count)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.id, self.count)
    }
}

/// The `properties` object of IDENTIFY.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionProperties {
    /// Operating system.
    pub os: String,
    /// Library name.
    pub browser: String,
    /// Library name.
    pub device: String,
}

impl Default for ConnectionProperties {
    fn default() -> Self {
        ConnectionProperties {
            os: std::env::consts::OS.to_owned(),
            browser: "handover".to_owned(),
            device: "handover".to_owned(),
        }
    }
}

/// A status in a presence update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PresenceStatus {
    /// Online.
    Online,
    /// Do not disturb.
    Dnd,
    /// Away.
    Idle,
    /// Shown as offline.
    Invisible,
    /// Offline.
    Offline,
}

/// An activity in a presence update (bots may set name, type, url and state).
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#activity-object>.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Activity {
    /// Activity name.
    pub name: String,
    /// Activity type: 0 playing, 1 streaming, 2 listening, 3 watching, 4 custom, 5 competing.
    #[serde(rename = "type")]
    pub kind: u8,
    /// Stream URL (type 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Custom status text (type 4), or the party status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Update Presence (op 3), also the optional `presence` of IDENTIFY.
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#update-presence>.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdatePresence {
    /// Unix time in milliseconds since the client went idle, or `None`.
    pub since: Option<u64>,
    /// Activities.
    pub activities: Vec<Activity>,
    /// The new status.
    pub status: PresenceStatus,
    /// Whether the client is away.
    pub afk: bool,
}

impl UpdatePresence {
    /// A presence with a status and no activity.
    pub fn status(status: PresenceStatus) -> Self {
        UpdatePresence {
            since: None,
            activities: Vec::new(),
            status,
            afk: false,
        }
    }
}

/// Request Guild Members (op 8). Build it with [`RequestGuildMembers::query`] or
/// [`RequestGuildMembers::user_ids`]: one of the two is required.
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#request-guild-members>.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestGuildMembers {
    /// The guild.
    pub guild_id: Snowflake,
    /// Username prefix, or `""` for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Maximum members to send for `query` (0 with `""`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Whether to include presences (needs `GUILD_PRESENCES`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presences: bool,
    /// Specific users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<Vec<Snowflake>>,
    /// Echoed in the Guild Members Chunk answers; at most 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl RequestGuildMembers {
    /// Members whose username starts with `query` (`""` and 0: everyone).
    pub fn query(guild_id: Snowflake, query: impl Into<String>, limit: u32) -> Self {
        RequestGuildMembers {
            guild_id,
            query: Some(query.into()),
            limit: Some(limit),
            presences: false,
            user_ids: None,
            nonce: None,
        }
    }

    /// Specific members.
    pub fn user_ids(guild_id: Snowflake, ids: Vec<Snowflake>) -> Self {
        RequestGuildMembers {
            guild_id,
            query: None,
            limit: None,
            presences: false,
            user_ids: Some(ids),
            nonce: None,
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        if self.query.is_none() && self.user_ids.is_none() {
            return Err(ProtocolError::InvalidCommand {
                reason: "request guild members needs a query or user ids",
            });
        }
        if self.query.is_some() && self.limit.is_none() {
            return Err(ProtocolError::InvalidCommand {
                reason: "request guild members with a query needs a limit",
            });
        }
        if self.nonce.as_ref().is_some_and(|n| n.len() > 32) {
            return Err(ProtocolError::InvalidCommand {
                reason: "request guild members nonce is longer than 32 bytes",
            });
        }
        Ok(())
    }
}

/// Update Voice State (op 4): join, move or leave a voice channel.
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#update-voice-state>.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateVoiceState {
    /// The guild.
    pub guild_id: Snowflake,
    /// The channel to join, or `None` to leave.
    pub channel_id: Option<Snowflake>,
    /// Whether muted.
    pub self_mute: bool,
    /// Whether deafened.
    pub self_deaf: bool,
}

/// Request Soundboard Sounds (op 31).
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#request-soundboard-sounds>.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestSoundboardSounds {
    /// The guilds.
    pub guild_ids: Vec<Snowflake>,
}

/// A command from the application, sent only while the connection is identified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// op 3.
    UpdatePresence(UpdatePresence),
    /// op 8.
    RequestGuildMembers(RequestGuildMembers),
    /// op 4.
    UpdateVoiceState(UpdateVoiceState),
    /// op 31.
    RequestSoundboardSounds(RequestSoundboardSounds),
    /// A payload built by the application, for the opcodes in [`Command::RAW_OPCODES`] only
    /// (the ones a client may send, less those the lifecycle owns). Anything else is refused
    /// before sending: HEARTBEAT (1), IDENTIFY (2) and RESUME (6) belong to the lifecycle (a
    /// stray identify spends from the daily budget), and an opcode Discord does not accept from
    /// a client would get the connection closed with 4001.
    Raw {
        /// The opcode number.
        op: u8,
        /// The `d` field, as JSON (see [`RawJson::parse`]).
        d: RawJson,
    },
}

impl Command {
    /// The opcodes a [`Command::Raw`] may carry: those Discord's gateway v10 lists with the
    /// client action "Send" (<https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes>:
    /// 1 Heartbeat, 2 Identify, 3 Presence Update, 4 Voice State Update, 6 Resume, 8 Request
    /// Guild Members, 31 Request Soundboard Sounds, 43 Request Channel Info), less 1, 2 and 6,
    /// which the lifecycle sends itself.
    pub const RAW_OPCODES: [u8; 5] = [3, 4, 8, 31, 43];

    /// The opcodes a client may send that the lifecycle owns (heartbeat, identify, resume): a
    /// [`Command::Raw`] carrying one is refused.
    pub const LIFECYCLE_OPCODES: [u8; 3] = [1, 2, 6];

    /// The payload bytes, checked for shape (not yet for size or rate). A [`Command::Raw`]
    /// whose opcode is not in [`Command::RAW_OPCODES`] is refused.
    pub fn to_payload(&self) -> Result<Vec<u8>, ProtocolError> {
        use super::envelope::encode_payload;
        match self {
            Command::UpdatePresence(p) => encode_payload(OpCode::PresenceUpdate, p),
            Command::RequestGuildMembers(r) => {
                r.validate()?;
                encode_payload(OpCode::RequestGuildMembers, r)
            }
            Command::UpdateVoiceState(v) => encode_payload(OpCode::VoiceStateUpdate, v),
            Command::RequestSoundboardSounds(r) => {
                encode_payload(OpCode::RequestSoundboardSounds, r)
            }
            Command::Raw { op, d } => {
                if Command::LIFECYCLE_OPCODES.contains(op) {
                    return Err(ProtocolError::InvalidCommand {
                        reason: "heartbeat, identify and resume are sent by the lifecycle only",
                    });
                }
                if !Command::RAW_OPCODES.contains(op) {
                    return Err(ProtocolError::InvalidCommand {
                        reason: "opcode is not one a client may send (3, 4, 8, 31 or 43)",
                    });
                }
                #[derive(Serialize)]
                struct Out<'a> {
                    op: u8,
                    d: &'a RawJson,
                }
                serde_json::to_vec(&Out { op: *op, d }).map_err(|_| ProtocolError::InvalidCommand {
                    reason: "payload could not be serialized",
                })
            }
        }
    }
}

/// The `d` of IDENTIFY, borrowing everything; the token is read here and in [`ResumeData`]
/// only.
#[derive(Serialize)]
pub(crate) struct IdentifyData<'a> {
    pub(crate) token: &'a str,
    pub(crate) properties: &'a ConnectionProperties,
    pub(crate) intents: Intents,
    pub(crate) shard: ShardId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence: Option<&'a UpdatePresence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) large_threshold: Option<u8>,
}

/// The `d` of RESUME.
#[derive(Serialize)]
pub(crate) struct ResumeData<'a> {
    pub(crate) token: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn payload(c: &Command) -> Value {
        serde_json::from_slice(&c.to_payload().unwrap()).unwrap()
    }

    #[test]
    fn presence_update_matches_the_documented_example() {
        let c = Command::UpdatePresence(UpdatePresence {
            since: Some(91879201),
            activities: vec![Activity {
                name: "Save the Oxford Comma".into(),
                kind: 0,
                url: None,
                state: None,
            }],
            status: PresenceStatus::Online,
            afk: false,
        });
        assert_eq!(
            payload(&c),
            json!({"op": 3, "d": {"since": 91879201, "activities": [{"name": "Save the Oxford Comma", "type": 0}], "status": "online", "afk": false}})
        );
    }

    #[test]
    fn request_guild_members_matches_the_documented_example() {
        let c = Command::RequestGuildMembers(RequestGuildMembers::query(
            Snowflake(41771983444115456),
            "",
            0,
        ));
        assert_eq!(
            payload(&c),
            json!({"op": 8, "d": {"guild_id": "41771983444115456", "query": "", "limit": 0}})
        );
        let mut r = RequestGuildMembers::user_ids(Snowflake(1), vec![Snowflake(2), Snowflake(3)]);
        r.presences = true;
        r.nonce = Some("n".into());
        assert_eq!(
            payload(&Command::RequestGuildMembers(r)),
            json!({"op": 8, "d": {"guild_id": "1", "presences": true, "user_ids": ["2", "3"], "nonce": "n"}})
        );
    }

    #[test]
    fn request_guild_members_is_validated() {
        let mut r = RequestGuildMembers::user_ids(Snowflake(1), vec![]);
        r.user_ids = None;
        assert!(matches!(
            Command::RequestGuildMembers(r.clone()).to_payload(),
            Err(ProtocolError::InvalidCommand { .. })
        ));
        r.query = Some("a".into());
        assert!(
            Command::RequestGuildMembers(r.clone())
                .to_payload()
                .is_err()
        );
        r.limit = Some(10);
        r.nonce = Some("x".repeat(33));
        assert!(
            Command::RequestGuildMembers(r.clone())
                .to_payload()
                .is_err()
        );
        r.nonce = Some("x".repeat(32));
        assert!(Command::RequestGuildMembers(r).to_payload().is_ok());
    }

    #[test]
    fn voice_state_matches_the_documented_example() {
        let c = Command::UpdateVoiceState(UpdateVoiceState {
            guild_id: Snowflake(41771983423143937),
            channel_id: Some(Snowflake(127121515262115840)),
            self_mute: false,
            self_deaf: false,
        });
        assert_eq!(
            payload(&c),
            json!({"op": 4, "d": {"guild_id": "41771983423143937", "channel_id": "127121515262115840", "self_mute": false, "self_deaf": false}})
        );
        let leave = Command::UpdateVoiceState(UpdateVoiceState {
            guild_id: Snowflake(1),
            channel_id: None,
            self_mute: true,
            self_deaf: true,
        });
        assert_eq!(payload(&leave)["d"]["channel_id"], Value::Null);
    }

    #[test]
    fn soundboard_matches_the_documented_example() {
        let c = Command::RequestSoundboardSounds(RequestSoundboardSounds {
            guild_ids: vec![Snowflake(613425648685547541), Snowflake(81384788765712384)],
        });
        assert_eq!(
            payload(&c),
            json!({"op": 31, "d": {"guild_ids": ["613425648685547541", "81384788765712384"]}})
        );
    }

    #[test]
    fn raw_escape_hatch_refuses_handshakes_and_opcodes_clients_may_not_send() {
        let d = RawJson::parse(r#"{"x":1}"#).unwrap();
        assert!(RawJson::parse("{nope").is_err());
        for op in Command::RAW_OPCODES {
            let ok = Command::Raw { op, d: d.clone() };
            assert_eq!(payload(&ok), json!({"op": op, "d": {"x": 1}}));
        }
        for op in [1, 2, 6] {
            let c = Command::Raw { op, d: d.clone() };
            assert_eq!(
                c.to_payload(),
                Err(ProtocolError::InvalidCommand {
                    reason: "heartbeat, identify and resume are sent by the lifecycle only"
                })
            );
        }
        // Receive-only opcodes, gaps in the table and anything beyond it.
        for op in [0, 5, 7, 9, 10, 11, 12, 30, 32, 40, 42, 44, 99, 255] {
            let c = Command::Raw { op, d: d.clone() };
            assert_eq!(
                c.to_payload(),
                Err(ProtocolError::InvalidCommand {
                    reason: "opcode is not one a client may send (3, 4, 8, 31 or 43)"
                }),
                "op {op}"
            );
        }
        // The table agrees with the opcodes the protocol layer models as sendable.
        for op in [
            OpCode::PresenceUpdate,
            OpCode::VoiceStateUpdate,
            OpCode::RequestGuildMembers,
            OpCode::RequestSoundboardSounds,
        ] {
            assert!(Command::RAW_OPCODES.contains(&op.code()), "{op:?}");
        }
        for op in [OpCode::Heartbeat, OpCode::Identify, OpCode::Resume] {
            assert!(Command::LIFECYCLE_OPCODES.contains(&op.code()), "{op:?}");
        }
    }

    #[test]
    fn shard_and_snowflake_serde() {
        assert!(ShardId::new(2, 2).is_err());
        let s = ShardId::new(1, 3).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "[1,3]");
        assert!(serde_json::from_str::<ShardId>("[3,3]").is_err());
        assert_eq!(
            serde_json::from_str::<ShardId>("[0,1]").unwrap(),
            ShardId::ONE
        );
        assert_eq!(
            serde_json::from_str::<Snowflake>(r#""123""#).unwrap(),
            Snowflake(123)
        );
        assert_eq!(
            serde_json::from_str::<Snowflake>("123").unwrap(),
            Snowflake(123)
        );
        assert!(serde_json::from_str::<Snowflake>(r#""x""#).is_err());
    }
}
