//! The guild cache of one upstream shard: the latest GUILD_CREATE of each guild, patched by
//! the events that change it, as raw JSON, so that a client identifying later gets the
//! GUILD_CREATEs Discord would send it now.
//!
//! The guild is kept as JSON (`serde_json::Value`), not as typed twilight-model structs: a
//! field Discord adds (or one twilight-model does not model) survives the cache unchanged, and
//! the synthesised GUILD_CREATE has Discord's own shape without a conversion back. The cost:
//! a guild is kept parsed (several times its wire size) and each synthesised GUILD_CREATE is
//! serialised again. The operator chooses which resource kinds are kept ([`CacheKinds`]);
//! the guild's own fields are always kept.

use std::collections::BTreeMap;

use handover_protocol::RawJson;
use serde_json::{Map, Value};

/// A kind of resource a guild holds, cached or not by the operator's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CacheKind {
    /// `channels`: CHANNEL_CREATE/UPDATE/DELETE.
    Channels,
    /// `threads` (active ones): THREAD_CREATE/UPDATE/DELETE/LIST_SYNC.
    Threads,
    /// `roles`: GUILD_ROLE_CREATE/UPDATE/DELETE, GUILD_UPDATE.
    Roles,
    /// `emojis`: GUILD_EMOJIS_UPDATE, GUILD_UPDATE.
    Emojis,
    /// `stickers`: GUILD_STICKERS_UPDATE, GUILD_UPDATE.
    Stickers,
    /// `members`: GUILD_MEMBER_ADD/UPDATE/REMOVE.
    Members,
    /// `voice_states`: VOICE_STATE_UPDATE.
    VoiceStates,
    /// `presences` (not offline): PRESENCE_UPDATE.
    Presences,
    /// `stage_instances`: STAGE_INSTANCE_CREATE/UPDATE/DELETE.
    StageInstances,
    /// `guild_scheduled_events`: GUILD_SCHEDULED_EVENT_CREATE/UPDATE/DELETE.
    ScheduledEvents,
    /// `soundboard_sounds`: GUILD_SOUNDBOARD_SOUND_CREATE/UPDATE/DELETE.
    SoundboardSounds,
}

impl CacheKind {
    /// Every kind.
    pub const ALL: [CacheKind; 11] = [
        CacheKind::Channels,
        CacheKind::Threads,
        CacheKind::Roles,
        CacheKind::Emojis,
        CacheKind::Stickers,
        CacheKind::Members,
        CacheKind::VoiceStates,
        CacheKind::Presences,
        CacheKind::StageInstances,
        CacheKind::ScheduledEvents,
        CacheKind::SoundboardSounds,
    ];

    /// The name the `--cache` flag uses, as in GUILD_CREATE (`voice_states`...).
    pub fn name(self) -> &'static str {
        match self {
            CacheKind::Channels => "channels",
            CacheKind::Threads => "threads",
            CacheKind::Roles => "roles",
            CacheKind::Emojis => "emojis",
            CacheKind::Stickers => "stickers",
            CacheKind::Members => "members",
            CacheKind::VoiceStates => "voice_states",
            CacheKind::Presences => "presences",
            CacheKind::StageInstances => "stage_instances",
            CacheKind::ScheduledEvents => "scheduled_events",
            CacheKind::SoundboardSounds => "soundboard_sounds",
        }
    }

    /// The field of GUILD_CREATE holding the resources.
    fn field(self) -> &'static str {
        match self {
            CacheKind::ScheduledEvents => "guild_scheduled_events",
            other => other.name(),
        }
    }

    /// The id of one resource.
    fn key_of(self, v: &Value) -> Option<String> {
        let id = match self {
            CacheKind::Members | CacheKind::Presences => v.get("user")?.get("id")?,
            CacheKind::VoiceStates => v.get("user_id")?,
            CacheKind::SoundboardSounds => v.get("sound_id")?,
            _ => v.get("id")?,
        };
        id.as_str().map(str::to_owned)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The resource kinds the operator has the proxy cache (`--cache`, default all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKinds(u16);

/// A `--cache` list naming an unknown kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cache kind {0:?}; known: all, none, {known}", known = known_kinds())]
pub struct CacheKindsError(pub String);

fn known_kinds() -> String {
    CacheKind::ALL.map(CacheKind::name).join(", ")
}

impl Default for CacheKinds {
    fn default() -> Self {
        CacheKinds::all()
    }
}

impl CacheKinds {
    /// Every kind.
    pub fn all() -> CacheKinds {
        CacheKinds(CacheKind::ALL.iter().fold(0, |a, k| a | k.bit()))
    }

    /// No resources: guilds keep their own fields only.
    pub fn none() -> CacheKinds {
        CacheKinds(0)
    }

    /// Whether `kind` is cached.
    pub fn contains(self, kind: CacheKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Parses a comma-separated list of kind names (`all`, `none`, `channels,roles`...).
    pub fn parse(list: &str) -> Result<CacheKinds, CacheKindsError> {
        let mut kinds = CacheKinds::none();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => kinds = CacheKinds::all(),
                "none" => {}
                _ => {
                    let kind = CacheKind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .ok_or_else(|| CacheKindsError(name.to_owned()))?;
                    kinds.0 |= kind.bit();
                }
            }
        }
        Ok(kinds)
    }
}

/// One available guild: its own fields, and its resources by kind and id.
#[derive(Debug, Default)]
struct Guild {
    fields: Map<String, Value>,
    resources: BTreeMap<CacheKind, BTreeMap<String, Value>>,
}

/// The guilds of one upstream session, patched by event.
#[derive(Debug, Default)]
pub struct GuildCache {
    kinds: CacheKinds,
    /// By id: `None` while the guild is unavailable (or before its GUILD_CREATE).
    guilds: BTreeMap<String, Option<Guild>>,
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl GuildCache {
    /// An empty cache keeping `kinds`.
    pub fn new(kinds: CacheKinds) -> GuildCache {
        GuildCache {
            kinds,
            guilds: BTreeMap::new(),
        }
    }

    /// Guilds known (available or not).
    pub fn len(&self) -> usize {
        self.guilds.len()
    }

    /// Whether no guild is known.
    pub fn is_empty(&self) -> bool {
        self.guilds.is_empty()
    }

    /// The ids of the guilds known, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.guilds.keys().map(String::as_str)
    }

    /// A new upstream session lists these guilds: the others are forgotten, the listed ones
    /// keep what is cached (Discord sends their GUILD_CREATE again shortly).
    pub fn retain_listed(&mut self, listed: impl IntoIterator<Item = String>) {
        let mut kept = BTreeMap::new();
        for id in listed {
            let g = self.guilds.remove(&id).flatten();
            kept.insert(id, g);
        }
        self.guilds = kept;
    }

    /// The GUILD_CREATE `d` of every available guild, as Discord would send it now: the
    /// guild's fields plus, for each resource kind, its resources by id (kinds not cached:
    /// an empty array). With `large_threshold`, a guild whose `member_count` is above it is
    /// `large` and lists only the members Discord lists for a large guild: those not offline
    /// (with a cached presence) and those in a voice channel.
    pub fn guild_creates(&self, large_threshold: Option<u64>) -> Vec<String> {
        self.guilds
            .values()
            .flatten()
            .map(|g| {
                let mut d = g.fields.clone();
                let large = large_threshold.is_some_and(|t| {
                    d.get("member_count").and_then(Value::as_u64).unwrap_or(0) > t
                });
                if large_threshold.is_some() {
                    d.insert("large".into(), Value::Bool(large));
                }
                let voice = g.resources.get(&CacheKind::VoiceStates);
                let online = g.resources.get(&CacheKind::Presences);
                let listed = |id: &String| {
                    voice.is_some_and(|v| v.contains_key(id))
                        || online.is_some_and(|p| p.contains_key(id))
                };
                for kind in CacheKind::ALL {
                    let items: Vec<Value> = match g.resources.get(&kind) {
                        Some(items) if kind == CacheKind::Members && large => items
                            .iter()
                            .filter(|(id, _)| listed(id))
                            .map(|(_, v)| v.clone())
                            .collect(),
                        Some(items) => items.values().cloned().collect(),
                        None => Vec::new(),
                    };
                    d.insert(kind.field().into(), Value::Array(items));
                }
                serde_json::to_string(&Value::Object(d)).unwrap_or_else(|_| "null".to_owned())
            })
            .collect()
    }

    /// Applies an upstream dispatch to the cache (events that change no guild are ignored;
    /// malformed data changes nothing).
    pub fn apply(&mut self, event_type: &str, data: &RawJson) {
        let relevant = matches!(
            event_type,
            "GUILD_CREATE"
                | "GUILD_UPDATE"
                | "GUILD_DELETE"
                | "CHANNEL_CREATE"
                | "CHANNEL_UPDATE"
                | "CHANNEL_DELETE"
                | "THREAD_CREATE"
                | "THREAD_UPDATE"
                | "THREAD_DELETE"
                | "THREAD_LIST_SYNC"
                | "GUILD_ROLE_CREATE"
                | "GUILD_ROLE_UPDATE"
                | "GUILD_ROLE_DELETE"
                | "GUILD_MEMBER_ADD"
                | "GUILD_MEMBER_UPDATE"
                | "GUILD_MEMBER_REMOVE"
                | "GUILD_EMOJIS_UPDATE"
                | "GUILD_STICKERS_UPDATE"
                | "VOICE_STATE_UPDATE"
                | "PRESENCE_UPDATE"
                | "STAGE_INSTANCE_CREATE"
                | "STAGE_INSTANCE_UPDATE"
                | "STAGE_INSTANCE_DELETE"
                | "GUILD_SCHEDULED_EVENT_CREATE"
                | "GUILD_SCHEDULED_EVENT_UPDATE"
                | "GUILD_SCHEDULED_EVENT_DELETE"
                | "GUILD_SOUNDBOARD_SOUND_CREATE"
                | "GUILD_SOUNDBOARD_SOUND_UPDATE"
                | "GUILD_SOUNDBOARD_SOUND_DELETE"
        );
        // The busiest events, when their kind is not cached, are not even parsed.
        let uncached = match event_type {
            "PRESENCE_UPDATE" => !self.kinds.contains(CacheKind::Presences),
            "VOICE_STATE_UPDATE" => !self.kinds.contains(CacheKind::VoiceStates),
            _ => false,
        };
        // With no guild cached only a GUILD_CREATE (a guild joined) can change anything.
        if !relevant || uncached || (self.guilds.is_empty() && event_type != "GUILD_CREATE") {
            return;
        }
        let Ok(Value::Object(mut d)) = serde_json::from_slice::<Value>(data.as_bytes()) else {
            return;
        };
        match event_type {
            "GUILD_CREATE" => {
                let Some(id) = d.get("id").and_then(Value::as_str).map(str::to_owned) else {
                    return;
                };
                if d.get("unavailable").and_then(Value::as_bool) == Some(true) {
                    self.guilds.insert(id, None);
                } else {
                    let guild = self.split(d);
                    self.guilds.insert(id, Some(guild));
                }
                return;
            }
            "GUILD_DELETE" => {
                let Some(id) = d.get("id").and_then(Value::as_str).map(str::to_owned) else {
                    return;
                };
                if d.get("unavailable").and_then(Value::as_bool) == Some(true) {
                    self.guilds.insert(id, None);
                } else {
                    self.guilds.remove(&id);
                }
                return;
            }
            _ => {}
        }
        let key = if event_type == "GUILD_UPDATE" {
            "id"
        } else {
            "guild_id"
        };
        let Some(guild_id) = d.get(key).and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let kinds = self.kinds;
        let Some(Some(guild)) = self.guilds.get_mut(&guild_id) else {
            return;
        };
        match event_type {
            "GUILD_UPDATE" => {
                for (k, v) in std::mem::take(&mut d) {
                    match CacheKind::ALL.into_iter().find(|kind| kind.field() == k) {
                        Some(kind) => guild.replace(kinds, kind, v),
                        None => {
                            guild.fields.insert(k, v);
                        }
                    }
                }
            }
            "CHANNEL_CREATE" | "CHANNEL_UPDATE" => {
                // GUILD_CREATE's channels carry no guild_id.
                d.remove("guild_id");
                guild.put(kinds, CacheKind::Channels, Value::Object(d));
            }
            "CHANNEL_DELETE" => {
                guild.remove(CacheKind::Channels, d.get("id").and_then(Value::as_str))
            }
            "THREAD_CREATE" | "THREAD_UPDATE" => {
                d.remove("newly_created");
                let archived = d
                    .get("thread_metadata")
                    .and_then(|m| m.get("archived"))
                    .and_then(Value::as_bool)
                    == Some(true);
                if archived {
                    // GUILD_CREATE lists active threads only.
                    guild.remove(CacheKind::Threads, d.get("id").and_then(Value::as_str));
                } else {
                    guild.put(kinds, CacheKind::Threads, Value::Object(d));
                }
            }
            "THREAD_DELETE" => {
                guild.remove(CacheKind::Threads, d.get("id").and_then(Value::as_str))
            }
            "THREAD_LIST_SYNC" => {
                let parents: Option<Vec<String>> = d.get("channel_ids").and_then(|c| {
                    c.as_array().map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                });
                if let Some(threads) = guild.resources.get_mut(&CacheKind::Threads) {
                    threads.retain(|_, t| match (&parents, str_of(t, "parent_id")) {
                        (None, _) => false,
                        (Some(p), Some(parent)) => !p.iter().any(|x| x == parent),
                        (Some(_), None) => true,
                    });
                }
                if let Some(Value::Array(threads)) = d.remove("threads") {
                    for t in threads {
                        guild.put(kinds, CacheKind::Threads, t);
                    }
                }
            }
            "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
                if let Some(role) = d.remove("role") {
                    guild.put(kinds, CacheKind::Roles, role);
                }
            }
            "GUILD_ROLE_DELETE" => {
                guild.remove(CacheKind::Roles, d.get("role_id").and_then(Value::as_str))
            }
            "GUILD_MEMBER_ADD" => {
                d.remove("guild_id");
                guild.put(kinds, CacheKind::Members, Value::Object(d));
                guild.count_members(1);
            }
            "GUILD_MEMBER_UPDATE" => {
                d.remove("guild_id");
                let member = Value::Object(d);
                if kinds.contains(CacheKind::Members)
                    && let Some(id) = CacheKind::Members.key_of(&member)
                {
                    let members = guild.resources.entry(CacheKind::Members).or_default();
                    match members.get_mut(&id) {
                        Some(Value::Object(old)) => {
                            if let Value::Object(new) = member {
                                old.extend(new);
                            }
                        }
                        _ => {
                            members.insert(id, member);
                        }
                    }
                }
            }
            "GUILD_MEMBER_REMOVE" => {
                let id = d
                    .get("user")
                    .and_then(|u| u.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                guild.remove(CacheKind::Members, id.as_deref());
                guild.count_members(-1);
            }
            "GUILD_EMOJIS_UPDATE" => {
                if let Some(v) = d.remove("emojis") {
                    guild.replace(kinds, CacheKind::Emojis, v);
                }
            }
            "GUILD_STICKERS_UPDATE" => {
                if let Some(v) = d.remove("stickers") {
                    guild.replace(kinds, CacheKind::Stickers, v);
                }
            }
            "VOICE_STATE_UPDATE" => {
                d.remove("guild_id");
                let state = Value::Object(d);
                if state.get("channel_id").is_none_or(Value::is_null) {
                    guild.remove(CacheKind::VoiceStates, str_of(&state, "user_id"));
                } else {
                    guild.put(kinds, CacheKind::VoiceStates, state);
                }
            }
            "PRESENCE_UPDATE" => {
                d.remove("guild_id");
                let presence = Value::Object(d);
                if str_of(&presence, "status") == Some("offline") {
                    let id = CacheKind::Presences.key_of(&presence);
                    guild.remove(CacheKind::Presences, id.as_deref());
                } else {
                    guild.put(kinds, CacheKind::Presences, presence);
                }
            }
            "STAGE_INSTANCE_CREATE" | "STAGE_INSTANCE_UPDATE" => {
                guild.put(kinds, CacheKind::StageInstances, Value::Object(d));
            }
            "STAGE_INSTANCE_DELETE" => {
                guild.remove(
                    CacheKind::StageInstances,
                    d.get("id").and_then(Value::as_str),
                );
            }
            "GUILD_SCHEDULED_EVENT_CREATE" | "GUILD_SCHEDULED_EVENT_UPDATE" => {
                guild.put(kinds, CacheKind::ScheduledEvents, Value::Object(d));
            }
            "GUILD_SCHEDULED_EVENT_DELETE" => {
                guild.remove(
                    CacheKind::ScheduledEvents,
                    d.get("id").and_then(Value::as_str),
                );
            }
            "GUILD_SOUNDBOARD_SOUND_CREATE" | "GUILD_SOUNDBOARD_SOUND_UPDATE" => {
                guild.put(kinds, CacheKind::SoundboardSounds, Value::Object(d));
            }
            "GUILD_SOUNDBOARD_SOUND_DELETE" => {
                guild.remove(
                    CacheKind::SoundboardSounds,
                    d.get("sound_id").and_then(Value::as_str),
                );
            }
            _ => {}
        }
    }

    /// A GUILD_CREATE's `d` split into the guild's fields and its cached resources.
    fn split(&self, mut d: Map<String, Value>) -> Guild {
        let mut guild = Guild::default();
        for kind in CacheKind::ALL {
            if let Some(v) = d.remove(kind.field()) {
                guild.replace(self.kinds, kind, v);
            }
        }
        guild.fields = d;
        guild
    }
}

impl Guild {
    fn put(&mut self, kinds: CacheKinds, kind: CacheKind, v: Value) {
        if !kinds.contains(kind) {
            return;
        }
        if let Some(id) = kind.key_of(&v) {
            self.resources.entry(kind).or_default().insert(id, v);
        }
    }

    fn remove(&mut self, kind: CacheKind, id: Option<&str>) {
        if let (Some(items), Some(id)) = (self.resources.get_mut(&kind), id) {
            items.remove(id);
        }
    }

    fn replace(&mut self, kinds: CacheKinds, kind: CacheKind, v: Value) {
        self.resources.remove(&kind);
        if let Value::Array(items) = v {
            for item in items {
                self.put(kinds, kind, item);
            }
        }
    }

    fn count_members(&mut self, delta: i64) {
        if let Some(n) = self.fields.get("member_count").and_then(Value::as_i64) {
            self.fields
                .insert("member_count".into(), Value::from((n + delta).max(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_a_list() {
        assert_eq!(CacheKinds::parse("all"), Ok(CacheKinds::all()));
        assert_eq!(CacheKinds::parse("none"), Ok(CacheKinds::none()));
        let k = CacheKinds::parse("channels, voice_states").unwrap();
        assert!(k.contains(CacheKind::Channels) && k.contains(CacheKind::VoiceStates));
        assert!(!k.contains(CacheKind::Members));
        let e = CacheKinds::parse("channels,bogus").unwrap_err();
        assert!(e.to_string().contains("\"bogus\""), "{e}");
    }

    #[test]
    fn a_guild_joined_with_none_cached_is_kept() {
        let mut cache = GuildCache::new(CacheKinds::all());
        let data =
            RawJson::parse(r#"{"id":"7","name":"joined","channels":[]}"#.to_owned()).unwrap();
        cache.apply("GUILD_CREATE", &data);
        assert_eq!(cache.ids().collect::<Vec<_>>(), ["7"]);
        assert_eq!(cache.guild_creates(None).len(), 1);
    }
}
