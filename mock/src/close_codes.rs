//! What Discord does with a session when the gateway closes a connection, code by code.
//!
//! Written from Discord's documentation, not from the client: the "Gateway Close Event Codes"
//! table of <https://discord.com/developers/docs/topics/opcodes-and-status-codes> (its
//! "Reconnect" column and the descriptions of 4007 and 4009, "reconnect and start a new
//! session") and the "Resuming" section of
//! <https://discord.com/developers/docs/events/gateway> (a client may resume after any
//! disconnect except the codes it may not reconnect on). The mock decides a session's fate with
//! this table, so a client whose own table (`handover_protocol::CLOSE_RULES`) were wrong would
//! meet a gateway that disagrees with it; a test compares the two tables code by code.
//!
//! Where the documentation is silent, the choice is written next to the row:
//!
//! - A code that closes with "Reconnect: true" and no word about the session keeps it
//!   resumable (4000-4003, 4005, 4008): nothing in the docs ends it, and the "Resuming"
//!   section allows a resume.
//! - A code that closes with "Reconnect: false" ends the session: no client may come back for
//!   it.
//! - A code outside the table (the mock only sends one when a test injects it) keeps the
//!   session resumable, as an unexplained disconnect does.

/// What becomes of the session after the gateway closes its connection with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionAfterClose {
    /// The client may reconnect and RESUME the session.
    Resumable,
    /// The client may reconnect, but the session is gone: it must IDENTIFY a new one.
    NewSession,
    /// The client must not reconnect ("Reconnect: false"); the session is gone.
    NoReconnect,
}

/// One row of Discord's close-code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocumentedClose {
    /// The close code.
    pub code: u16,
    /// Discord's name for it.
    pub name: &'static str,
    /// The table's "Reconnect" column.
    pub reconnect: bool,
    /// What the gateway does with the session.
    pub session: SessionAfterClose,
}

const fn row(code: u16, name: &'static str, session: SessionAfterClose) -> DocumentedClose {
    DocumentedClose {
        code,
        name,
        reconnect: !matches!(session, SessionAfterClose::NoReconnect),
        session,
    }
}

/// Every gateway close code Discord documents, in the table's order.
pub const DISCORD_CLOSE_CODES: [DocumentedClose; 14] = {
    use SessionAfterClose::{NewSession, NoReconnect, Resumable};
    [
        row(4000, "unknown error", Resumable),
        row(4001, "unknown opcode", Resumable),
        row(4002, "decode error", Resumable),
        row(4003, "not authenticated", Resumable),
        row(4004, "authentication failed", NoReconnect),
        row(4005, "already authenticated", Resumable),
        // "The sequence sent when resuming the session was invalid. Reconnect and start a new
        // session."
        row(4007, "invalid seq", NewSession),
        // Documented as "disconnected": reconnecting is allowed and nothing says the session
        // ends, so it stays resumable.
        row(4008, "rate limited", Resumable),
        // "Your session timed out. Reconnect and start a new one."
        row(4009, "session timed out", NewSession),
        row(4010, "invalid shard", NoReconnect),
        row(4011, "sharding required", NoReconnect),
        row(4012, "invalid api version", NoReconnect),
        row(4013, "invalid intent(s)", NoReconnect),
        row(4014, "disallowed intent(s)", NoReconnect),
    ]
};

/// The row of `code`, if Discord documents it.
pub fn documented(code: u16) -> Option<&'static DocumentedClose> {
    DISCORD_CLOSE_CODES.iter().find(|r| r.code == code)
}

/// What the gateway does with the session after closing with `code`; an undocumented code
/// keeps it resumable (see the module's notes).
pub fn session_after_close(code: u16) -> SessionAfterClose {
    documented(code).map_or(SessionAfterClose::Resumable, |r| r.session)
}

#[cfg(test)]
mod tests {
    use handover_core::CloseClass;
    use handover_protocol::{CLOSE_RULES, CloseCode};

    use super::*;

    /// The mock's table (from Discord's docs) and the client's `CLOSE_RULES` agree on every
    /// documented code, and on a code outside the table. They differ nowhere on purpose: if
    /// one of them changes, this test says which code and both sides' reading.
    #[test]
    fn the_mock_and_the_client_read_every_close_code_alike() {
        for row in DISCORD_CLOSE_CODES {
            let client = CLOSE_RULES.classify(Some(row.code));
            let expected = match row.session {
                SessionAfterClose::Resumable => CloseClass::Resume,
                SessionAfterClose::NewSession => CloseClass::NewSession,
                SessionAfterClose::NoReconnect => CloseClass::Fatal,
            };
            assert_eq!(
                client, expected,
                "code {} ({}): mock says {:?}, client says {client:?}",
                row.code, row.name, row.session
            );
            let named = CloseCode::from_code(row.code)
                .unwrap_or_else(|| panic!("the client has no name for {}", row.code));
            assert_eq!(named.description(), row.name, "code {}", row.code);
        }
        // Both tables list the same codes.
        assert_eq!(CloseCode::ALL.len(), DISCORD_CLOSE_CODES.len());
        for c in CloseCode::ALL {
            assert!(documented(c.code()).is_some(), "{} undocumented", c.code());
        }
        // Outside the table: resumable for both.
        for code in [1000, 1001, 1006, 3999, 4006, 4015, 4999] {
            assert_eq!(session_after_close(code), SessionAfterClose::Resumable);
            assert_eq!(
                CLOSE_RULES.classify(Some(code)),
                CloseClass::Resume,
                "{code}"
            );
        }
    }

    #[test]
    fn reconnect_follows_the_fate() {
        for row in DISCORD_CLOSE_CODES {
            assert_eq!(
                row.reconnect,
                row.session != SessionAfterClose::NoReconnect,
                "{}",
                row.code
            );
        }
        let no_reconnect: Vec<u16> = DISCORD_CLOSE_CODES
            .iter()
            .filter(|r| !r.reconnect)
            .map(|r| r.code)
            .collect();
        assert_eq!(no_reconnect, [4004, 4010, 4011, 4012, 4013, 4014]);
    }
}
