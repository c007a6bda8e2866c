//! Gateway opcodes and close codes, as Discord documents them
//! (<https://discord.com/developers/docs/topics/opcodes-and-status-codes>).

use handover_core::{CloseClass, CloseRules};

/// Gateway opcodes (the `op` field of every payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpCode {
    /// 0, receive: an event was dispatched.
    Dispatch,
    /// 1, send and receive: heartbeat (from the server: "send one now").
    Heartbeat,
    /// 2, send: start a new session.
    Identify,
    /// 3, send: update presence.
    PresenceUpdate,
    /// 4, send: join, move or leave voice channels.
    VoiceStateUpdate,
    /// 6, send: resume a previous session.
    Resume,
    /// 7, receive: reconnect and resume.
    Reconnect,
    /// 8, send: request guild members.
    RequestGuildMembers,
    /// 9, receive: the session was invalidated; `d` says whether it is resumable.
    InvalidSession,
    /// 10, receive: first message on a connection, carries the heartbeat interval.
    Hello,
    /// 11, receive: heartbeat acknowledged.
    HeartbeatAck,
    /// 31, send: request soundboard sounds.
    RequestSoundboardSounds,
}

impl OpCode {
    /// The wire number.
    pub const fn code(self) -> u8 {
        match self {
            OpCode::Dispatch => 0,
            OpCode::Heartbeat => 1,
            OpCode::Identify => 2,
            OpCode::PresenceUpdate => 3,
            OpCode::VoiceStateUpdate => 4,
            OpCode::Resume => 6,
            OpCode::Reconnect => 7,
            OpCode::RequestGuildMembers => 8,
            OpCode::InvalidSession => 9,
            OpCode::Hello => 10,
            OpCode::HeartbeatAck => 11,
            OpCode::RequestSoundboardSounds => 31,
        }
    }

    /// The opcode for a wire number, if Discord defines it.
    pub const fn from_code(code: u64) -> Option<OpCode> {
        Some(match code {
            0 => OpCode::Dispatch,
            1 => OpCode::Heartbeat,
            2 => OpCode::Identify,
            3 => OpCode::PresenceUpdate,
            4 => OpCode::VoiceStateUpdate,
            6 => OpCode::Resume,
            7 => OpCode::Reconnect,
            8 => OpCode::RequestGuildMembers,
            9 => OpCode::InvalidSession,
            10 => OpCode::Hello,
            11 => OpCode::HeartbeatAck,
            31 => OpCode::RequestSoundboardSounds,
            _ => return None,
        })
    }
}

/// Gateway close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 4000: unknown error; reconnect.
    UnknownError,
    /// 4001: we sent an invalid opcode; reconnect.
    UnknownOpcode,
    /// 4002: we sent an invalid payload; reconnect.
    DecodeError,
    /// 4003: we sent a payload before identifying; reconnect.
    NotAuthenticated,
    /// 4004: the token is invalid; fatal.
    AuthenticationFailed,
    /// 4005: we identified twice; reconnect.
    AlreadyAuthenticated,
    /// 4007: invalid seq on resume; reconnect with a new session.
    InvalidSeq,
    /// 4008: we sent too fast; reconnect.
    RateLimited,
    /// 4009: the session timed out; reconnect with a new session.
    SessionTimedOut,
    /// 4010: invalid shard; fatal.
    InvalidShard,
    /// 4011: sharding required; fatal.
    ShardingRequired,
    /// 4012: invalid API version; fatal.
    InvalidApiVersion,
    /// 4013: invalid intents; fatal.
    InvalidIntents,
    /// 4014: disallowed (privileged, not enabled) intents; fatal.
    DisallowedIntents,
}

impl CloseCode {
    /// Every Discord gateway close code.
    pub const ALL: [CloseCode; 14] = [
        CloseCode::UnknownError,
        CloseCode::UnknownOpcode,
        CloseCode::DecodeError,
        CloseCode::NotAuthenticated,
        CloseCode::AuthenticationFailed,
        CloseCode::AlreadyAuthenticated,
        CloseCode::InvalidSeq,
        CloseCode::RateLimited,
        CloseCode::SessionTimedOut,
        CloseCode::InvalidShard,
        CloseCode::ShardingRequired,
        CloseCode::InvalidApiVersion,
        CloseCode::InvalidIntents,
        CloseCode::DisallowedIntents,
    ];

    /// The wire number.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::UnknownError => 4000,
            CloseCode::UnknownOpcode => 4001,
            CloseCode::DecodeError => 4002,
            CloseCode::NotAuthenticated => 4003,
            CloseCode::AuthenticationFailed => 4004,
            CloseCode::AlreadyAuthenticated => 4005,
            CloseCode::InvalidSeq => 4007,
            CloseCode::RateLimited => 4008,
            CloseCode::SessionTimedOut => 4009,
            CloseCode::InvalidShard => 4010,
            CloseCode::ShardingRequired => 4011,
            CloseCode::InvalidApiVersion => 4012,
            CloseCode::InvalidIntents => 4013,
            CloseCode::DisallowedIntents => 4014,
        }
    }

    /// The close code for a wire number, if Discord defines it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// What the lifecycle does after the server closes with this code.
    pub fn class(self) -> CloseClass {
        CLOSE_RULES.classify(Some(self.code()))
    }

    /// Short lowercase description, for logs and status.
    pub const fn description(self) -> &'static str {
        match self {
            CloseCode::UnknownError => "unknown error",
            CloseCode::UnknownOpcode => "unknown opcode",
            CloseCode::DecodeError => "decode error",
            CloseCode::NotAuthenticated => "not authenticated",
            CloseCode::AuthenticationFailed => "authentication failed",
            CloseCode::AlreadyAuthenticated => "already authenticated",
            CloseCode::InvalidSeq => "invalid seq",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SessionTimedOut => "session timed out",
            CloseCode::InvalidShard => "invalid shard",
            CloseCode::ShardingRequired => "sharding required",
            CloseCode::InvalidApiVersion => "invalid api version",
            CloseCode::InvalidIntents => "invalid intent(s)",
            CloseCode::DisallowedIntents => "disallowed intent(s)",
        }
    }
}

/// Discord's close-code rules for the lifecycle core: 4007 and 4009 need a new session;
/// 4004, 4010-4014 are fatal; every other code (and a drop without close) resumes. We close
/// with 1000 to end a session and 4000 to keep it resumable.
pub const CLOSE_RULES: CloseRules = CloseRules {
    new_session: &[4007, 4009],
    fatal: &[4004, 4010, 4011, 4012, 4013, 4014],
    end_session_code: 1000,
    keep_resumable_code: 4000,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_classify_as_documented() {
        let resume = [4000, 4001, 4002, 4003, 4005, 4008];
        let new_session = [4007, 4009];
        let fatal = [4004, 4010, 4011, 4012, 4013, 4014];
        for c in CloseCode::ALL {
            let n = c.code();
            let expected = if resume.contains(&n) {
                CloseClass::Resume
            } else if new_session.contains(&n) {
                CloseClass::NewSession
            } else {
                assert!(fatal.contains(&n), "{n} unlisted");
                CloseClass::Fatal
            };
            assert_eq!(c.class(), expected, "{n}");
            assert_eq!(CloseCode::from_code(n), Some(c));
        }
        assert_eq!(CLOSE_RULES.classify(None), CloseClass::Resume);
    }

    #[test]
    fn opcodes_round_trip() {
        for n in 0..64u64 {
            if let Some(op) = OpCode::from_code(n) {
                assert_eq!(u64::from(op.code()), n);
            }
        }
        assert_eq!(OpCode::from_code(5), None);
    }
}
