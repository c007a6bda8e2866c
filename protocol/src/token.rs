//! The bot token, a secret that never reaches logs, Debug output or error text.

use std::fmt;

use super::ProtocolError;

/// Longest token accepted, in bytes.
///
/// A Discord bot token is about 70 bytes (the base64 user id, a timestamp and an HMAC, joined
/// by dots). IDENTIFY carries the token and must fit in the gateway's 4096-byte payload limit
/// together with the properties, the intents, the shard and the initial presence. At 512 bytes
/// a token takes at most 1 KiB of it even when JSON escaping doubles every byte (`"` and `\`),
/// which leaves 3 KiB for the rest; a longer value is not a token, and refusing it here turns
/// an IDENTIFY that could never be encoded into an error at start.
pub const MAX_TOKEN_BYTES: usize = 512;

/// A Discord bot token.
///
/// `Debug` and `Display` print `Token(<redacted>)`. Only the IDENTIFY and RESUME encoders and
/// the `Authorization` header of the HTTP client read the secret; nothing else in this crate
/// can. Compare with [`Token::matches`] (for example in a mock gateway) instead of reading it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Box<str>);

impl Token {
    /// Wraps a token after a basic format check: non-empty, at most [`MAX_TOKEN_BYTES`] bytes,
    /// no whitespace, no control characters. Pass the bare token, without the `Bot ` prefix.
    pub fn new(token: impl Into<String>) -> Result<Token, ProtocolError> {
        let token: String = token.into();
        if token.is_empty() {
            return Err(ProtocolError::InvalidToken {
                reason: "token is empty",
            });
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ProtocolError::InvalidToken {
                reason: "token is longer than 512 bytes (a discord bot token is about 70)",
            });
        }
        if token.chars().any(char::is_whitespace) {
            return Err(ProtocolError::InvalidToken {
                reason: "token contains whitespace (pass it without the `Bot ` prefix)",
            });
        }
        if token.chars().any(char::is_control) {
            return Err(ProtocolError::InvalidToken {
                reason: "token contains control characters",
            });
        }
        Ok(Token(token.into_boxed_str()))
    }

    /// Whether `candidate` is this token. The comparison takes the same time wherever the
    /// first difference is, so it leaks nothing through timing beyond the length.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The secret itself, for the code that must put it on the wire (IDENTIFY and RESUME, the
    /// `Authorization` header of `GET /gateway/bot`) or derive a non-secret value from it (a
    /// hash). Never log, print or store what it returns.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_checked() {
        assert!(Token::new("abc.def-ghi_jkl").is_ok());
        for bad in ["", "Bot abc", "abc\n", "a\tb", "a\u{7}b", " abc"] {
            assert!(
                matches!(Token::new(bad), Err(ProtocolError::InvalidToken { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn length_is_bounded() {
        assert!(Token::new("a".repeat(MAX_TOKEN_BYTES)).is_ok());
        let err = Token::new("b".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidToken { reason } if reason.contains("512")),
            "{err}"
        );
        assert!(Token::new("c".repeat(10 * 1024)).is_err());
        // The reason names the bound it checks.
        assert!(format!("{err}").contains(&MAX_TOKEN_BYTES.to_string()));
    }

    /// The bound is chosen so that IDENTIFY always fits in the gateway's payload limit: the
    /// longest token, made of characters JSON escapes, with a presence and a large shard id.
    #[test]
    fn the_longest_token_still_fits_in_an_identify() {
        use crate::{
            Activity, DiscordCodec, GatewayConfig, Intents, MAX_PAYLOAD_BYTES, PresenceStatus,
            ShardId, UpdatePresence,
        };
        use handover_core::{Codec, Message, OpenMode, Payload};

        let token = Token::new("\"".repeat(MAX_TOKEN_BYTES)).unwrap();
        let mut cfg = GatewayConfig::new(token, Intents::all());
        cfg.shard = ShardId {
            id: u32::MAX - 1,
            count: u32::MAX,
        };
        cfg.large_threshold = Some(250);
        let mut presence = UpdatePresence::status(PresenceStatus::Online);
        presence.activities = vec![Activity {
            name: "x".repeat(128),
            kind: 0,
            url: None,
            state: Some("y".repeat(128)),
        }];
        cfg.presence = Some(presence);
        let mut codec = DiscordCodec::new(cfg).unwrap();
        let msg = codec
            .encode(
                std::time::Instant::now(),
                Payload::Handshake(OpenMode::Identify),
            )
            .unwrap();
        let Message::Text(bytes) = msg else {
            panic!("identify is text")
        };
        assert!(bytes.len() <= MAX_PAYLOAD_BYTES - 2048, "{}", bytes.len());
    }

    #[test]
    fn debug_and_display_redact() {
        let t = Token::new("super-secret-value").unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{t}"), "Token(<redacted>)");
        assert_eq!(format!("{t:#?}"), "Token(<redacted>)");
    }

    #[test]
    fn matches_compares_exactly() {
        let t = Token::new("abc123").unwrap();
        assert!(t.matches("abc123"));
        assert!(!t.matches("abc124"));
        assert!(!t.matches("abc12"));
        assert!(!t.matches("abc1234"));
    }
}
