//! Which gateway intents govern which dispatch, from Discord's intent table
//! (<https://discord.com/developers/docs/events/gateway#list-of-intents>).
//!
//! A client session sees a dispatch when it identified with one of the intents that govern it;
//! the events no intent governs (READY, RESUMED, USER_UPDATE, INTERACTION_CREATE,
//! GUILD_MEMBERS_CHUNK...) go to every session. MESSAGE_CONTENT governs no event: its effect on
//! message fields (empty `content`, `embeds`, `attachments`, `components` without it) is not
//! applied by the proxy.

use handover_protocol::Intents;

/// The intent bits of which a session needs one to see `event_type` (0: every session).
///
/// `in_guild` says whether the event belongs to a guild (has a `guild_id`); it is called only
/// for the events Discord governs by a guild intent or a direct-message intent depending on
/// it (messages, reactions, typing, pins, polls).
pub fn governing(event_type: &str, in_guild: impl FnOnce() -> bool) -> u64 {
    let by_place = |guild: Intents, direct: Intents, in_guild: bool| {
        if in_guild {
            guild.bits()
        } else {
            direct.bits()
        }
    };
    let i = match event_type {
        "GUILD_CREATE"
        | "GUILD_UPDATE"
        | "GUILD_DELETE"
        | "GUILD_ROLE_CREATE"
        | "GUILD_ROLE_UPDATE"
        | "GUILD_ROLE_DELETE"
        | "CHANNEL_CREATE"
        | "CHANNEL_UPDATE"
        | "CHANNEL_DELETE"
        | "THREAD_CREATE"
        | "THREAD_UPDATE"
        | "THREAD_DELETE"
        | "THREAD_LIST_SYNC"
        | "THREAD_MEMBER_UPDATE"
        | "STAGE_INSTANCE_CREATE"
        | "STAGE_INSTANCE_UPDATE"
        | "STAGE_INSTANCE_DELETE" => Intents::GUILDS,
        // Discord sends THREAD_MEMBERS_UPDATE with GUILDS; other users' changes need
        // GUILD_MEMBERS too. The proxy sends it to sessions with either.
        "THREAD_MEMBERS_UPDATE" => Intents::GUILDS | Intents::GUILD_MEMBERS,
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" | "GUILD_MEMBER_REMOVE" => {
            Intents::GUILD_MEMBERS
        }
        "GUILD_AUDIT_LOG_ENTRY_CREATE" | "GUILD_BAN_ADD" | "GUILD_BAN_REMOVE" => {
            Intents::GUILD_MODERATION
        }
        "GUILD_EMOJIS_UPDATE"
        | "GUILD_STICKERS_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_CREATE"
        | "GUILD_SOUNDBOARD_SOUND_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_DELETE"
        | "GUILD_SOUNDBOARD_SOUNDS_UPDATE" => Intents::GUILD_EXPRESSIONS,
        "GUILD_INTEGRATIONS_UPDATE"
        | "INTEGRATION_CREATE"
        | "INTEGRATION_UPDATE"
        | "INTEGRATION_DELETE" => Intents::GUILD_INTEGRATIONS,
        "WEBHOOKS_UPDATE" => Intents::GUILD_WEBHOOKS,
        "INVITE_CREATE" | "INVITE_DELETE" => Intents::GUILD_INVITES,
        "VOICE_STATE_UPDATE" | "VOICE_CHANNEL_EFFECT_SEND" => Intents::GUILD_VOICE_STATES,
        "PRESENCE_UPDATE" => Intents::GUILD_PRESENCES,
        "MESSAGE_DELETE_BULK" => Intents::GUILD_MESSAGES,
        "GUILD_SCHEDULED_EVENT_CREATE"
        | "GUILD_SCHEDULED_EVENT_UPDATE"
        | "GUILD_SCHEDULED_EVENT_DELETE"
        | "GUILD_SCHEDULED_EVENT_USER_ADD"
        | "GUILD_SCHEDULED_EVENT_USER_REMOVE" => Intents::GUILD_SCHEDULED_EVENTS,
        "AUTO_MODERATION_RULE_CREATE"
        | "AUTO_MODERATION_RULE_UPDATE"
        | "AUTO_MODERATION_RULE_DELETE" => Intents::AUTO_MODERATION_CONFIGURATION,
        "AUTO_MODERATION_ACTION_EXECUTION" => Intents::AUTO_MODERATION_EXECUTION,
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" => {
            return by_place(
                Intents::GUILD_MESSAGES,
                Intents::DIRECT_MESSAGES,
                in_guild(),
            );
        }
        "MESSAGE_REACTION_ADD"
        | "MESSAGE_REACTION_REMOVE"
        | "MESSAGE_REACTION_REMOVE_ALL"
        | "MESSAGE_REACTION_REMOVE_EMOJI" => {
            return by_place(
                Intents::GUILD_MESSAGE_REACTIONS,
                Intents::DIRECT_MESSAGE_REACTIONS,
                in_guild(),
            );
        }
        "TYPING_START" => {
            return by_place(
                Intents::GUILD_MESSAGE_TYPING,
                Intents::DIRECT_MESSAGE_TYPING,
                in_guild(),
            );
        }
        "CHANNEL_PINS_UPDATE" => {
            return by_place(Intents::GUILDS, Intents::DIRECT_MESSAGES, in_guild());
        }
        "MESSAGE_POLL_VOTE_ADD" | "MESSAGE_POLL_VOTE_REMOVE" => {
            return by_place(
                Intents::GUILD_MESSAGE_POLLS,
                Intents::DIRECT_MESSAGE_POLLS,
                in_guild(),
            );
        }
        _ => return 0,
    };
    i.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_discord() {
        assert_eq!(governing("GUILD_CREATE", || true), Intents::GUILDS.bits());
        assert_eq!(
            governing("MESSAGE_CREATE", || true),
            Intents::GUILD_MESSAGES.bits()
        );
        assert_eq!(
            governing("MESSAGE_CREATE", || false),
            Intents::DIRECT_MESSAGES.bits()
        );
        assert_eq!(
            governing("PRESENCE_UPDATE", || unreachable!()),
            Intents::GUILD_PRESENCES.bits()
        );
        assert_eq!(governing("GUILD_MEMBERS_CHUNK", || unreachable!()), 0);
        assert_eq!(governing("INTERACTION_CREATE", || unreachable!()), 0);
        assert_eq!(governing("READY", || unreachable!()), 0);
    }
}
