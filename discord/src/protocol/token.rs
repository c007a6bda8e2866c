//! The bot token, a secret that never reaches logs, Debug output or error text.

use std::fmt;

use super::ProtocolError;

/// A Discord bot token.
///
/// `Debug` and `Display` print `Token(<redacted>)`. Only the IDENTIFY and RESUME encoders and
/// the `Authorization` header of the HTTP client read the secret; nothing else in this crate
/// can. Compare with [`Token::matches`] (for example in a mock gateway) instead of reading it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Box<str>);

impl Token {
    /// Wraps a token after a basic format check: non-empty, no whitespace, no control
    /// characters. Pass the bare token, without the `Bot ` prefix.
    pub fn new(token: impl Into<String>) -> Result<Token, ProtocolError> {
        let token: String = token.into();
        if token.is_empty() {
            return Err(ProtocolError::InvalidToken {
                reason: "token is empty",
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

    /// The secret, for the encoders that must put it on the wire.
    pub(crate) fn secret(&self) -> &str {
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
