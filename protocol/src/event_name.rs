//! [`EventName`]: a dispatch's `t`, kept without a copy per event.
//!
//! Discord documents a fixed set of dispatch names; a received name from that set is held as a
//! `&'static str` (no allocation, no reference count). Any other name (a new event Discord has
//! not documented yet, a test gateway's own) is held as a slice of the received message buffer,
//! which the dispatch's data shares anyway. Only a name written with JSON escapes is copied
//! (decoded) into a buffer of its own.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

use crate::ProtocolError;
use crate::envelope::scan_error;
use crate::scan::{StrAt, decode_str};

/// The name of a dispatched event (`t`), for example `MESSAGE_CREATE`.
///
/// It reads as a `&str` ([`as_str`](EventName::as_str), `Deref`, `Display`) and compares with
/// `str` and `String`. Building one from a `&str` or `String` copies it; the codec builds them
/// without a copy.
#[derive(Clone)]
pub struct EventName(Repr);

#[derive(Clone)]
enum Repr {
    /// One of Discord's documented names.
    Known(&'static str),
    /// UTF-8 text (invariant: every constructor takes it from a `&str`).
    Shared(Bytes),
}

impl EventName {
    /// The name for `name`: the static copy when Discord documents it, else a copy of `name`.
    pub fn new(name: &str) -> EventName {
        match known(name) {
            Some(k) => EventName(Repr::Known(k)),
            None => EventName(Repr::Shared(Bytes::copy_from_slice(name.as_bytes()))),
        }
    }

    /// The name whose text lies at `at` in `buf`, the received message, between its quotes:
    /// the static copy when Discord documents it (matched as bytes), else a slice of `buf`
    /// checked as UTF-8 here (the codec does not check a text message whole a second time), or,
    /// for a name written with escapes, its decoded copy.
    pub(crate) fn from_message(buf: &Bytes, at: &StrAt) -> Result<EventName, ProtocolError> {
        if !at.escaped
            && let Some(k) = buf.get(at.range.clone()).and_then(known_bytes)
        {
            return Ok(EventName(Repr::Known(k)));
        }
        Ok(match decode_str(buf, at).map_err(scan_error)? {
            Cow::Borrowed(_) => EventName(Repr::Shared(buf.slice(at.range.clone()))),
            Cow::Owned(name) => EventName::new(&name),
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Known(s) => s,
            // Invariant: `Shared` bytes always come from a `&str`, so they are UTF-8; the
            // fallback is never taken.
            Repr::Shared(b) => std::str::from_utf8(b).unwrap_or(""),
        }
    }

    /// Whether the name is one Discord documents (held without any buffer).
    pub fn is_documented(&self) -> bool {
        matches!(self.0, Repr::Known(_))
    }
}

impl Deref for EventName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for EventName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for EventName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for EventName {
    fn eq(&self, other: &EventName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventName {}

impl Hash for EventName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for EventName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for EventName {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<EventName> for str {
    fn eq(&self, other: &EventName) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<EventName> for &str {
    fn eq(&self, other: &EventName) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<EventName> for String {
    fn eq(&self, other: &EventName) -> bool {
        self == other.as_str()
    }
}

impl From<&str> for EventName {
    fn from(name: &str) -> EventName {
        EventName::new(name)
    }
}

impl From<String> for EventName {
    fn from(name: String) -> EventName {
        match known(&name) {
            Some(k) => EventName(Repr::Known(k)),
            None => EventName(Repr::Shared(Bytes::from(name))),
        }
    }
}

impl From<EventName> for String {
    fn from(name: EventName) -> String {
        name.as_str().to_owned()
    }
}

/// Discord's documented dispatch names, as of API v10.
///
/// Source: <https://discord.com/developers/docs/events/gateway-events#receive-events>.
const DOCUMENTED: &[&str] = &[
    "READY",
    "RESUMED",
    "APPLICATION_COMMAND_PERMISSIONS_UPDATE",
    "AUTO_MODERATION_RULE_CREATE",
    "AUTO_MODERATION_RULE_UPDATE",
    "AUTO_MODERATION_RULE_DELETE",
    "AUTO_MODERATION_ACTION_EXECUTION",
    "CHANNEL_CREATE",
    "CHANNEL_UPDATE",
    "CHANNEL_DELETE",
    "CHANNEL_PINS_UPDATE",
    "THREAD_CREATE",
    "THREAD_UPDATE",
    "THREAD_DELETE",
    "THREAD_LIST_SYNC",
    "THREAD_MEMBER_UPDATE",
    "THREAD_MEMBERS_UPDATE",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_UPDATE",
    "ENTITLEMENT_DELETE",
    "GUILD_CREATE",
    "GUILD_UPDATE",
    "GUILD_DELETE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",
    "GUILD_BAN_ADD",
    "GUILD_BAN_REMOVE",
    "GUILD_EMOJIS_UPDATE",
    "GUILD_STICKERS_UPDATE",
    "GUILD_INTEGRATIONS_UPDATE",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_MEMBER_UPDATE",
    "GUILD_MEMBERS_CHUNK",
    "GUILD_ROLE_CREATE",
    "GUILD_ROLE_UPDATE",
    "GUILD_ROLE_DELETE",
    "GUILD_SCHEDULED_EVENT_CREATE",
    "GUILD_SCHEDULED_EVENT_UPDATE",
    "GUILD_SCHEDULED_EVENT_DELETE",
    "GUILD_SCHEDULED_EVENT_USER_ADD",
    "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    "GUILD_SOUNDBOARD_SOUND_CREATE",
    "GUILD_SOUNDBOARD_SOUND_UPDATE",
    "GUILD_SOUNDBOARD_SOUND_DELETE",
    "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    "SOUNDBOARD_SOUNDS",
    "INTEGRATION_CREATE",
    "INTEGRATION_UPDATE",
    "INTEGRATION_DELETE",
    "INTERACTION_CREATE",
    "INVITE_CREATE",
    "INVITE_DELETE",
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "MESSAGE_DELETE_BULK",
    "MESSAGE_REACTION_ADD",
    "MESSAGE_REACTION_REMOVE",
    "MESSAGE_REACTION_REMOVE_ALL",
    "MESSAGE_REACTION_REMOVE_EMOJI",
    "PRESENCE_UPDATE",
    "STAGE_INSTANCE_CREATE",
    "STAGE_INSTANCE_UPDATE",
    "STAGE_INSTANCE_DELETE",
    "SUBSCRIPTION_CREATE",
    "SUBSCRIPTION_UPDATE",
    "SUBSCRIPTION_DELETE",
    "TYPING_START",
    "USER_UPDATE",
    "VOICE_CHANNEL_EFFECT_SEND",
    "VOICE_STATE_UPDATE",
    "VOICE_SERVER_UPDATE",
    "WEBHOOKS_UPDATE",
    "MESSAGE_POLL_VOTE_ADD",
    "MESSAGE_POLL_VOTE_REMOVE",
];

/// The documented name equal to `name`, if any. The busiest names come first.
fn known(name: &str) -> Option<&'static str> {
    known_bytes(name.as_bytes())
}

fn known_bytes(name: &[u8]) -> Option<&'static str> {
    if name == b"MESSAGE_CREATE" {
        return Some("MESSAGE_CREATE");
    }
    DOCUMENTED.iter().copied().find(|k| k.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names_need_no_buffer() {
        let buf = Bytes::from_static(br#"{"t":"MESSAGE_CREATE"}"#);
        let name = EventName::from_message(&buf, &at(6..20, false)).unwrap();
        assert!(name.is_documented());
        assert_eq!(name, "MESSAGE_CREATE");
        assert_eq!(
            format!("{name} {name:?}"),
            "MESSAGE_CREATE \"MESSAGE_CREATE\""
        );
    }

    #[test]
    fn other_names_share_the_buffer() {
        let buf = Bytes::from(br#"{"t":"SIM_FLUSH"}"#.to_vec());
        let name = EventName::from_message(&buf, &at(6..15, false)).unwrap();
        assert!(!name.is_documented());
        assert_eq!(name.as_str(), "SIM_FLUSH");
        let inner = name.as_ptr() as usize;
        let outer = buf.as_ptr() as usize;
        assert!(inner > outer && inner < outer + buf.len(), "copied");
        // A name built from a `str` is a copy, and equal.
        let other = EventName::new("SIM_FLUSH");
        assert_eq!(other, name);
    }

    #[test]
    fn escaped_names_are_decoded_and_bad_ones_refused() {
        let buf = Bytes::from_static(br#"{"t":"MESSAGE_\u0043REATE"}"#);
        let name = EventName::from_message(&buf, &at(6..25, true)).unwrap();
        assert!(name.is_documented());
        assert_eq!(name, "MESSAGE_CREATE");
        let buf = Bytes::from_static(br#"{"t":"X\ud800"}"#);
        assert!(matches!(
            EventName::from_message(&buf, &at(6..13, true)),
            Err(ProtocolError::MalformedJson { .. })
        ));
        let buf = Bytes::from_static(b"{\"t\":\"X\xff\"}");
        assert!(matches!(
            EventName::from_message(&buf, &at(6..8, false)),
            Err(ProtocolError::MalformedJson { .. })
        ));
    }

    fn at(range: std::ops::Range<usize>, escaped: bool) -> StrAt {
        StrAt { range, escaped }
    }

    #[test]
    fn compares_like_a_string() {
        let a = EventName::from("X_EVENT");
        let b = EventName::from(String::from("X_EVENT"));
        assert_eq!(a, b);
        assert_eq!(a, "X_EVENT");
        assert_eq!("X_EVENT", a);
        assert_eq!(a, *"X_EVENT");
        assert_eq!(String::from("X_EVENT"), a);
        assert_eq!(String::from(a.clone()), "X_EVENT");
        assert_eq!(&*a, "X_EVENT");
        assert_ne!(EventName::from("READY"), EventName::from("RESUMED"));
    }
}
