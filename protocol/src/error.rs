//! The one error type of the protocol layer.

use std::time::Duration;

use super::OpCode;

/// Why a gateway message could not be decoded, or a payload could not be built or sent.
///
/// Every variant is a value, never a panic: input from the network and from the application
/// is untrusted. After any error except those for which
/// [`needs_reconnect`](ProtocolError::needs_reconnect) is `true`, the codec stays usable and
/// later valid messages decode normally. No variant ever carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A received message is not the JSON the gateway documents.
    #[error("malformed gateway payload: {reason}")]
    MalformedJson {
        /// The parser's error category and position (never the content).
        reason: String,
    },
    /// A received message carries an opcode Discord does not define.
    #[error("unknown opcode {op}")]
    UnknownOpcode {
        /// The number received.
        op: u64,
    },
    /// A received message carries an opcode that only clients send.
    #[error("unexpected opcode {op:?} from the gateway")]
    UnexpectedOpcode {
        /// The opcode received.
        op: OpCode,
    },
    /// A field the gateway documents as present is missing or null.
    #[error("missing field `{field}` in {context}")]
    MissingField {
        /// Which field.
        field: &'static str,
        /// In which payload.
        context: &'static str,
    },
    /// An outgoing payload is larger than the gateway accepts; nothing was sent.
    #[error("payload of {size} bytes exceeds the gateway limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The limit (4096 bytes).
        limit: usize,
    },
    /// The send rate limit of the connection is reached; nothing was sent. Retry after the delay.
    #[error("send rate limit reached, retry after {retry_after:?}")]
    RateLimited {
        /// When a slot frees up.
        retry_after: Duration,
    },
    /// The application asked to send something the codec refuses to send (for example an
    /// identify through the raw escape hatch, which would spend from the identify budget
    /// behind the lifecycle's back).
    #[error("invalid command: {reason}")]
    InvalidCommand {
        /// Why.
        reason: &'static str,
    },
    /// The transport compression stream is corrupted; the connection must be replaced.
    #[error("decompression failed: {reason}")]
    DecompressionFailed {
        /// What the decompressor reported.
        reason: String,
    },
    /// One message decompresses (or buffers) to more than the configured cap; nothing of it is
    /// delivered and the connection must be replaced.
    #[error("decompressed message exceeds {limit} bytes")]
    DecompressedTooLarge {
        /// The configured cap in bytes.
        limit: usize,
    },
    /// An earlier decompression error left the stream unusable; every message on this
    /// connection fails until a new connection resets the codec.
    #[error("compression stream unusable after an earlier error; reconnect")]
    StreamPoisoned,
    /// The configuration asks for a transport compression that this build of
    /// `handover-protocol` leaves out (its cargo feature is off); nothing was connected.
    #[error(
        "transport compression {compression} is not built in: enable the `{feature}` feature of handover-protocol"
    )]
    CompressionUnavailable {
        /// The compression asked for (`zlib-stream` or `zstd-stream`).
        compression: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// A token was rejected at construction.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// Why (never the token itself).
        reason: &'static str,
    },
    /// The configuration cannot work (for example a shard id not below the shard count).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Why.
        reason: String,
    },
    /// A resume was asked for but no session is held.
    #[error("no session to resume")]
    NoSession,
}

impl ProtocolError {
    /// Whether this connection can no longer decode anything: the caller MUST replace the
    /// connection (for example with a restart of the lifecycle) to recover.
    pub fn needs_reconnect(&self) -> bool {
        matches!(
            self,
            ProtocolError::DecompressionFailed { .. }
                | ProtocolError::DecompressedTooLarge { .. }
                | ProtocolError::StreamPoisoned
        )
    }

    pub(crate) fn malformed(err: &serde_json::Error) -> Self {
        // serde_json's own message may quote received values; keep only the category and
        // the position so no content ends up in logs.
        let category = match err.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        ProtocolError::MalformedJson {
            reason: format!(
                "{category} error at line {} column {}",
                err.line(),
                err.column()
            ),
        }
    }
}
