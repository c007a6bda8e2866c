//! Gateway intents: which groups of events a session receives.
//!
//! Source: <https://discord.com/developers/docs/events/gateway#gateway-intents>.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

bitflags::bitflags! {
    /// The `intents` bit set sent in IDENTIFY.
    ///
    /// Named flags cover every documented intent; bits Discord adds later can be passed with
    /// [`Intents::from_bits_retain`] and are sent unchanged. Three intents are privileged
    /// ([`Intents::PRIVILEGED`]): they must be enabled for the application in the developer
    /// portal, or the gateway closes with 4014.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct Intents: u64 {
        /// 1 << 0: guild, role, channel, thread and stage instance events.
        const GUILDS = 1 << 0;
        /// 1 << 1 (privileged): guild member add, update, remove.
        const GUILD_MEMBERS = 1 << 1;
        /// 1 << 2: audit log entries and bans.
        const GUILD_MODERATION = 1 << 2;
        /// 1 << 3: emojis, stickers and soundboard sounds.
        const GUILD_EXPRESSIONS = 1 << 3;
        /// 1 << 4: integrations.
        const GUILD_INTEGRATIONS = 1 << 4;
        /// 1 << 5: webhooks.
        const GUILD_WEBHOOKS = 1 << 5;
        /// 1 << 6: invites.
        const GUILD_INVITES = 1 << 6;
        /// 1 << 7: voice states and voice channel effects.
        const GUILD_VOICE_STATES = 1 << 7;
        /// 1 << 8 (privileged): presence updates.
        const GUILD_PRESENCES = 1 << 8;
        /// 1 << 9: guild messages.
        const GUILD_MESSAGES = 1 << 9;
        /// 1 << 10: guild message reactions.
        const GUILD_MESSAGE_REACTIONS = 1 << 10;
        /// 1 << 11: typing in guilds.
        const GUILD_MESSAGE_TYPING = 1 << 11;
        /// 1 << 12: direct messages.
        const DIRECT_MESSAGES = 1 << 12;
        /// 1 << 13: direct message reactions.
        const DIRECT_MESSAGE_REACTIONS = 1 << 13;
        /// 1 << 14: typing in direct messages.
        const DIRECT_MESSAGE_TYPING = 1 << 14;
        /// 1 << 15 (privileged): message content fields in message events.
        const MESSAGE_CONTENT = 1 << 15;
        /// 1 << 16: scheduled events.
        const GUILD_SCHEDULED_EVENTS = 1 << 16;
        /// 1 << 20: auto moderation rule changes.
        const AUTO_MODERATION_CONFIGURATION = 1 << 20;
        /// 1 << 21: auto moderation actions.
        const AUTO_MODERATION_EXECUTION = 1 << 21;
        /// 1 << 24: poll votes in guilds.
        const GUILD_MESSAGE_POLLS = 1 << 24;
        /// 1 << 25: poll votes in direct messages.
        const DIRECT_MESSAGE_POLLS = 1 << 25;
    }
}

impl Intents {
    /// The privileged intents: `GUILD_MEMBERS`, `GUILD_PRESENCES`, `MESSAGE_CONTENT`.
    pub const PRIVILEGED: Intents = Intents::GUILD_MEMBERS
        .union(Intents::GUILD_PRESENCES)
        .union(Intents::MESSAGE_CONTENT);

    /// Every documented intent that needs no approval.
    pub const NON_PRIVILEGED: Intents = Intents::all().difference(Intents::PRIVILEGED);

    /// The privileged intents in this set (to check against what the application has enabled
    /// before identifying, so a 4014 close does not come as a surprise).
    pub const fn privileged(self) -> Intents {
        self.intersection(Intents::PRIVILEGED)
    }

    /// Whether any privileged intent is set.
    pub const fn is_privileged(self) -> bool {
        self.intersects(Intents::PRIVILEGED)
    }

    /// Parses `"GUILDS | GUILD_MESSAGES"`-style names or a decimal number of raw bits (for
    /// command lines and configuration files).
    pub fn parse(text: &str) -> Option<Intents> {
        let text = text.trim();
        if let Ok(bits) = text.parse::<u64>() {
            return Some(Intents::from_bits_retain(bits));
        }
        bitflags::parser::from_str::<Intents>(text).ok()
    }
}

impl Serialize for Intents {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.bits())
    }
}

impl<'de> Deserialize<'de> for Intents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Intents::from_bits_retain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_bits() {
        // The identify example in Discord's docs: GUILDS | GUILD_MESSAGES = 513.
        assert_eq!((Intents::GUILDS | Intents::GUILD_MESSAGES).bits(), 513);
        assert_eq!(Intents::MESSAGE_CONTENT.bits(), 32768);
        assert_eq!(Intents::DIRECT_MESSAGE_POLLS.bits(), 1 << 25);
        assert_eq!(Intents::PRIVILEGED.bits(), (1 << 1) | (1 << 8) | (1 << 15));
    }

    #[test]
    fn privileged_subset() {
        let i = Intents::GUILDS | Intents::MESSAGE_CONTENT;
        assert_eq!(i.privileged(), Intents::MESSAGE_CONTENT);
        assert!(i.is_privileged());
        assert!(!Intents::NON_PRIVILEGED.is_privileged());
    }

    #[test]
    fn raw_bits_survive_serialization() {
        let i = Intents::from_bits_retain((1 << 30) | 1);
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            ((1u64 << 30) | 1).to_string()
        );
        let back: Intents = serde_json::from_str("1073741825").unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn parse_names_and_numbers() {
        assert_eq!(
            Intents::parse("GUILDS | GUILD_MESSAGES"),
            Some(Intents::GUILDS | Intents::GUILD_MESSAGES)
        );
        assert_eq!(Intents::parse("513"), Some(Intents::from_bits_retain(513)));
        assert_eq!(Intents::parse("NOT_AN_INTENT"), None);
    }
}
