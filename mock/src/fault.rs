//! Faults, targets and event streams the tests script through the mock.

use std::fmt;
use std::time::Duration;

use handover_core::TransportId;

/// One shard of one token: the key of every per-shard counter and the address of dispatches.
///
/// `token` is the index of the token in [`MockConfig::tokens`](crate::MockConfig::tokens),
/// never the token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardKey {
    /// Index of the token in the mock's configuration.
    pub token: usize,
    /// Shard id (the first element of IDENTIFY's `shard` array; 0 when absent).
    pub shard: u32,
}

impl ShardKey {
    /// Shard `shard` of the token at index `token`.
    pub const fn new(token: usize, shard: u32) -> ShardKey {
        ShardKey { token, shard }
    }
}

impl From<u32> for ShardKey {
    /// Shard `shard` of the first token, the common single-bot case.
    fn from(shard: u32) -> ShardKey {
        ShardKey { token: 0, shard }
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token#{}/shard {}", self.token, self.shard)
    }
}

/// Which connections a fault applies to. The set is taken when the fault is injected; later
/// connections are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// Every open connection counted for this shard (it sent an accepted IDENTIFY or RESUME),
    /// including one whose session was since resumed elsewhere.
    Shard(ShardKey),
    /// Every open connection counted for a shard of the token at this index (in
    /// [`MockConfig::tokens`](crate::MockConfig::tokens)).
    Token(usize),
    /// One connection.
    Connection(TransportId),
    /// Every open connection, identified or not.
    All,
}

impl From<ShardKey> for Target {
    fn from(key: ShardKey) -> Target {
        Target::Shard(key)
    }
}

impl From<u32> for Target {
    /// Every socket of shard `shard` of the first token.
    fn from(shard: u32) -> Target {
        Target::Shard(ShardKey::from(shard))
    }
}

impl From<TransportId> for Target {
    fn from(conn: TransportId) -> Target {
        Target::Connection(conn)
    }
}

/// Which kind of garbage frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Garbage {
    /// A text frame that is not valid JSON (sent uncompressed even on a compressed connection).
    Text,
    /// A binary frame of random bytes (on a zlib/zstd connection it corrupts the stream).
    Binary,
}

/// Something the mock does to a connection on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// Stop ACKing and send nothing more, ever (no dispatches, no pong, no close reply), while
    /// keeping TCP open and reading. Only [`Fault::DropTcp`] still has an effect afterwards.
    Zombie,
    /// Stop ACKing heartbeats; everything else keeps flowing.
    StopAcks,
    /// Drop TCP now, without a close frame (anything delayed is discarded).
    DropTcp,
    /// Never answer the client's close frame: no close reply, TCP kept open until the client
    /// drops it.
    IgnoreCloseFrames,
    /// Send op 7 RECONNECT.
    Reconnect,
    /// Send op 9 INVALID_SESSION. `resumable: true` detaches the session (it stays resumable for
    /// the window); `false` ends it. Either way the connection may IDENTIFY or RESUME again.
    InvalidSession {
        /// The `d` field.
        resumable: bool,
    },
    /// Close with this code. The session stays resumable unless the code is 4004, 4007, 4009 or
    /// 4010-4014.
    Close(u16),
    /// Hold every later frame of the connection for this long (order is kept; zero ends the
    /// delay for frames produced afterwards).
    Delay(Duration),
    /// Send one garbage frame.
    Garbage(Garbage),
    /// Send op 1: ask the client for a heartbeat now.
    RequestHeartbeat,
}

/// How fast a stream emits its dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamRate {
    /// One dispatch every interval (the first one immediately).
    Every(Duration),
    /// As fast as the client reads: a batch of
    /// [`MockConfig::stream_batch`](crate::MockConfig::stream_batch) dispatches, and the
    /// next batch only once the socket has written the previous one.
    AsFastAsRead,
}

/// A bounded stream of identical dispatches to one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// The shard (all its live sessions receive each dispatch).
    pub shard: ShardKey,
    /// The event name (`t`).
    pub event: String,
    /// The event data (`d`).
    pub data: serde_json::Value,
    /// How many dispatches in total.
    pub count: u64,
    /// How fast.
    pub rate: StreamRate,
}

/// Names a running stream, to cancel it or ask what it has left to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);
