//! The Redis Streams sink of `handover run --sink redis`: each dispatch becomes one entry of its shard's stream
//! `<prefix>events:<shard>`, with the fields `shard`, `seq`, `type`, `data` (the raw JSON) and
//! `session`.
//!
//! The entry id is derived from the event: `<epoch>-<seq>`, where `epoch` is a number fixed
//! once per (shard, session) in Redis (the first publisher of a session picks it, larger than
//! any epoch of that shard before) and `seq` is Discord's sequence number. A publish retried
//! after a failover, or the same event published by two processes during a handoff, carries
//! the same id and Redis refuses it as not above the stream's last id: it lands once. That
//! rests on each publisher publishing a session's events in order, which a shard's sink does.
//!
//! One stream per shard, because ids must grow within a stream and only a shard's own
//! sequence numbers are ordered. Consumers read every shard's stream with one `XREADGROUP`.

use std::collections::HashMap;

use redis::Script;

use handover_runtime::redis::{CoordinationError, RedisCoordinator};
use handover_runtime::{ShardEvent, ShardEventKind};

/// Publishes a batch of dispatches; each: shard, session, seq, type, data. Returns
/// `{added, duplicates}`.
const PUBLISH: &str = r#"
local p = ARGV[1]
local cap = ARGV[2]
local epochs = {}
local added = 0
local dup = 0
for i = 3, #ARGV, 5 do
  local shard = ARGV[i]
  local session = ARGV[i + 1]
  local ek = shard .. '/' .. session
  local epoch = epochs[ek]
  if not epoch then
    local h = p .. 'epochs:' .. shard
    epoch = redis.call('HGET', h, session)
    if not epoch then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      local last = tonumber(redis.call('GET', p .. 'epoch_last:' .. shard) or '0')
      if now <= last then now = last + 1 end
      epoch = tostring(now)
      redis.call('HSET', h, session, epoch)
      redis.call('SET', p .. 'epoch_last:' .. shard, epoch)
      redis.call('PEXPIRE', h, 604800000)
    end
    epochs[ek] = epoch
  end
  local ok = redis.pcall('XADD', p .. 'events:' .. shard, 'MAXLEN', '~', cap,
    epoch .. '-' .. ARGV[i + 2],
    'shard', shard, 'seq', ARGV[i + 2], 'type', ARGV[i + 3], 'data', ARGV[i + 4],
    'session', session)
  if type(ok) == 'table' and ok.err then dup = dup + 1 else added = added + 1 end
end
return {added, dup}
"#;

/// What one [`StreamSink::publish`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Entries added.
    pub added: u64,
    /// Events already in their stream (published before, by this process or another).
    pub duplicates: u64,
}

/// Publishes dispatches to the bot's per-shard streams. Events count as taken (confirm their
/// receipts) only once [`publish`](Self::publish) returned `Ok`: Redis acknowledged the XADDs.
pub struct StreamSink {
    coordinator: RedisCoordinator,
    script: Script,
    max_len: u64,
    sessions: HashMap<u32, String>,
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl StreamSink {
    /// A sink on the coordinator's server and key prefix; each stream is capped near `max_len`
    /// entries (`MAXLEN ~`).
    pub fn new(coordinator: &RedisCoordinator, max_len: u64) -> StreamSink {
        StreamSink {
            coordinator: coordinator.clone(),
            script: Script::new(PUBLISH),
            max_len: max_len.max(1),
            sessions: HashMap::new(),
        }
    }

    /// The session a shard's next dispatches belong to: call it for the session a shard was
    /// started with (a resume) and at every READY.
    pub fn set_session(&mut self, shard: u32, session_id: &str) {
        self.sessions.insert(shard, session_id.to_owned());
    }

    /// The stream of one shard.
    pub fn stream_key(&self, shard: u32) -> String {
        format!("{}events:{shard}", self.coordinator.prefix())
    }

    /// Publishes the dispatches among `events`, in order, in one round trip; a READY among
    /// them sets its shard's session for the dispatches after it. A dispatch of a shard with
    /// no known session is published under the session `unknown`.
    pub async fn publish(&mut self, events: &[ShardEvent]) -> Result<Published, CoordinationError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(self.coordinator.prefix()).arg(self.max_len);
        let mut any = false;
        for ev in events {
            match &ev.kind {
                ShardEventKind::Ready(r) => {
                    self.sessions.insert(ev.shard, r.session_id.clone());
                }
                ShardEventKind::Dispatch(d) => {
                    let session = self
                        .sessions
                        .get(&ev.shard)
                        .map_or("unknown", String::as_str);
                    inv.arg(ev.shard)
                        .arg(session)
                        .arg(d.seq)
                        .arg(d.event_type.as_str())
                        .arg(d.data.as_bytes());
                    any = true;
                }
                _ => {}
            }
        }
        if !any {
            return Ok(Published::default());
        }
        let (added, duplicates): (u64, u64) = inv
            .invoke_async(&mut self.coordinator.connection())
            .await
            .map_err(|e| CoordinationError::Unreachable {
                reason: e.to_string(),
            })?;
        Ok(Published { added, duplicates })
    }
}
