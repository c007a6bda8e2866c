//! Coordination of a bot's shards over several processes (and machines) through one Redis
//! server: identify permits per concurrency bucket, the shared daily session-start budget and
//! identify-storm guard, shard leases (one process per shard), sessions handed from a process
//! to the next. (The event sink on Redis Streams is the binary's: `handover_cli::sink`, on
//! [`RedisCoordinator::connection`].)
//!
//! Every decision that two processes could race on is one Lua script, run atomically by
//! Redis; every key that a dead process would leave behind expires by itself. The layout of
//! keys and what each guarantee rests on are in `docs/scale-out.md`.
//!
//! Behind the `redis` feature. The client is redis-rs with its reconnecting
//! [`ConnectionManager`]: when Redis is unreachable, identifies wait (no identify without a
//! permit), resumes go on (they never ask), and everything resumes by itself when it returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tracing::{debug, error, info, warn};

use crate::{IdentifyCoordinator, PermitDenied, PermitFuture, PermitSource};
use handover_protocol::{IdentifyBudget, Session, SessionStartLimit, Token};

/// Why the coordinator could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinationError {
    /// The URL is not a Redis URL.
    #[error("bad redis url: {reason}")]
    BadUrl {
        /// What is wrong (never the password).
        reason: String,
    },
    /// Redis did not answer or refused a command.
    #[error("redis unreachable: {reason}")]
    Unreachable {
        /// The client's error.
        reason: String,
    },
    /// Shards are leased by another live process.
    #[error(
        "shards {shards:?} are run by another process (its lease did not expire within {waited:?}); \
         pass --handoff to take them over"
    )]
    ShardsBusy {
        /// The shards held elsewhere.
        shards: Vec<u32>,
        /// How long this process waited for the leases.
        waited: Duration,
    },
}

fn unreachable(e: &RedisError) -> CoordinationError {
    CoordinationError::Unreachable {
        reason: e.to_string(),
    }
}

/// Settings of a [`RedisCoordinator`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`, `unix://`).
    pub url: String,
    /// Prefix of every key. Every process of one bot must use the same one, and two bots
    /// different ones. Default from [`RedisConfig::new`]: `handover:{<hash of the token>}:`
    /// (the token itself is never stored).
    pub prefix: String,
    /// Spacing of identifies in one bucket. Discord's is 5 s.
    pub bucket_window: Duration,
    /// Concurrency buckets (`session_start_limit.max_concurrency`). Default 1.
    pub max_concurrency: u32,
    /// The identify-storm guard, on the shared count of the shard's identifies (whichever
    /// process made them). `None` disables it. Default 10 in 10 minutes.
    pub budget: Option<IdentifyBudget>,
    /// How long a shard lease lives without renewal (renewed every third of it). A process
    /// killed without draining blocks its shards for at most this long. Default 10 s.
    pub lease: Duration,
    /// How long a session stored in Redis stays usable (Discord forgets sessions after a few
    /// minutes). Default 180 s.
    pub session_ttl: Duration,
    /// Bound of every Redis command and connection attempt. Default 1 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisConfig")
            .field("prefix", &self.prefix)
            .field("bucket_window", &self.bucket_window)
            .field("max_concurrency", &self.max_concurrency)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Defaults for the bot of `token`.
    pub fn new(url: impl Into<String>, token: &Token) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: default_prefix(token),
            bucket_window: Duration::from_secs(5),
            max_concurrency: 1,
            budget: Some(IdentifyBudget::default()),
            lease: Duration::from_secs(10),
            session_ttl: Duration::from_secs(180),
            timeout: Duration::from_secs(1),
        }
    }
}

/// `handover:{h}:` with `h` the first 8 bytes of the token's SHA-256, in hex: the same for
/// every process of the bot, and not the token (a one-way digest, of which only 64 bits are
/// kept, says nothing usable about a secret of some 160 random bits). The braces make every key
/// of a bot one Redis Cluster hash slot, which the scripts need.
pub fn default_prefix(token: &Token) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.expose_secret().as_bytes());
    let mut h = String::with_capacity(16);
    for b in &digest.as_ref()[..8] {
        h.push_str(&format!("{b:02x}"));
    }
    format!("handover:{{{h}}}:")
}

/// Decides one identify: the guard, the bucket order, the bucket's window, the budget. See
/// docs/scale-out.md for the keys.
const PERMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local me = ARGV[2]
local shard = ARGV[3]
local bucket = ARGV[4]
local lock = p .. 'identify:' .. bucket
local waiting = p .. 'waiting:' .. bucket
local guard = p .. 'guard:' .. shard
local budget = p .. 'budget'
local gmax = tonumber(ARGV[7])
if gmax > 0 then
  redis.call('ZREMRANGEBYSCORE', guard, '-inf', now - tonumber(ARGV[8]))
  local n = redis.call('ZCARD', guard)
  if n >= gmax then return {3, n, -1} end
end
redis.call('ZADD', waiting, tonumber(shard), shard)
redis.call('SET', p .. 'waiter:' .. shard, me, 'PX', ARGV[6])
local head = nil
for i = 1, 256 do
  local first = redis.call('ZRANGE', waiting, 0, 0)
  if #first == 0 then break end
  if first[1] == shard or redis.call('EXISTS', p .. 'waiter:' .. first[1]) == 1 then
    head = first[1]
    break
  end
  redis.call('ZREM', waiting, first[1])
end
if head ~= shard then return {1, 50, -1} end
local ttl = redis.call('PTTL', lock)
if ttl > 0 then return {1, ttl, -1} end
if redis.call('EXISTS', budget) == 0 and tonumber(ARGV[9]) >= 0 then
  local r = tonumber(ARGV[9])
  local reset = tonumber(ARGV[10])
  if reset <= 0 then
    r = tonumber(ARGV[12])
    reset = tonumber(ARGV[11])
  end
  redis.call('HSET', budget, 'remaining', r, 'total', ARGV[12])
  redis.call('PEXPIRE', budget, reset)
end
local remaining = -1
if redis.call('EXISTS', budget) == 1 then
  remaining = tonumber(redis.call('HGET', budget, 'remaining'))
  if remaining <= 0 then return {2, redis.call('PTTL', budget), 0} end
  remaining = redis.call('HINCRBY', budget, 'remaining', -1)
end
redis.call('SET', lock, me, 'PX', ARGV[5])
redis.call('ZREM', waiting, shard)
redis.call('DEL', p .. 'waiter:' .. shard)
if gmax > 0 then
  redis.call('ZADD', guard, now, me .. ':' .. shard .. ':' .. now)
  redis.call('PEXPIRE', guard, ARGV[8])
end
return {0, 0, remaining}
"#;

/// Sets the shared budget from a fresh `GET /gateway/bot`: the lower of what Redis holds and
/// what Discord reported (both count down), and Discord's reset.
const BUDGET: &str = r#"
local b = ARGV[1] .. 'budget'
if redis.call('EXISTS', b) == 1 then
  local cur = tonumber(redis.call('HGET', b, 'remaining'))
  if tonumber(ARGV[2]) < cur then redis.call('HSET', b, 'remaining', ARGV[2]) end
else
  redis.call('HSET', b, 'remaining', ARGV[2], 'total', ARGV[3])
end
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', b, ARGV[4]) end
return tonumber(redis.call('HGET', b, 'remaining'))
"#;

/// Takes (`ARGV[4] == "take"`: all or nothing) or renews the leases of shards `ARGV[7..]`
/// (pairs: shard, session JSON or ""), storing the sessions given. Returns
/// `{handoff asked, shards leased by another process}`.
const LEASE: &str = r#"
local p = ARGV[1]
local me = ARGV[2]
local take = ARGV[4] == 'take'
local busy = {}
for i = 7, #ARGV, 2 do
  local owner = redis.call('GET', p .. 'owner:' .. ARGV[i])
  if owner and owner ~= me then table.insert(busy, tonumber(ARGV[i])) end
end
if take and #busy > 0 then return {0, busy} end
local handoff = 0
for i = 7, #ARGV, 2 do
  local s = ARGV[i]
  local owner = redis.call('GET', p .. 'owner:' .. s)
  if not owner or owner == me then
    redis.call('SET', p .. 'owner:' .. s, me, 'PX', ARGV[3])
    if ARGV[i + 1] ~= '' and ARGV[6] == '1' then
      redis.call('SET', p .. 'session:' .. s, ARGV[i + 1], 'PX', ARGV[5])
    end
    local h = redis.call('GET', p .. 'handoff:' .. s)
    if h and h ~= me then handoff = 1 end
  end
end
return {handoff, busy}
"#;

/// Takes the stored sessions of shards `ARGV[3..]` (read and deleted) and clears this
/// process's handoff requests for them.
const TAKE_SESSIONS: &str = r#"
local p = ARGV[1]
local out = {}
for i = 3, #ARGV do
  local k = p .. 'session:' .. ARGV[i]
  local v = redis.call('GET', k)
  if v then
    table.insert(out, ARGV[i])
    table.insert(out, v)
    redis.call('DEL', k)
  end
  if redis.call('GET', p .. 'handoff:' .. ARGV[i]) == ARGV[2] then
    redis.call('DEL', p .. 'handoff:' .. ARGV[i])
  end
end
return out
"#;

/// Stores the final sessions of the shards this process still owns, and releases them.
const RELEASE: &str = r#"
local p = ARGV[1]
local me = ARGV[2]
local n = 0
for i = 4, #ARGV, 2 do
  local s = ARGV[i]
  if redis.call('GET', p .. 'owner:' .. s) == me then
    if ARGV[i + 1] ~= '' then
      redis.call('SET', p .. 'session:' .. s, ARGV[i + 1], 'PX', ARGV[3])
      n = n + 1
    end
    redis.call('DEL', p .. 'owner:' .. s)
  end
end
return n
"#;

struct Scripts {
    permit: Script,
    budget: Script,
    lease: Script,
    take_sessions: Script,
    release: Script,
}

/// The budget as this process last saw it, to rebuild the shared one if Redis lost it (a
/// restart without persistence).
#[derive(Debug, Clone, Copy)]
struct KnownBudget {
    remaining: u32,
    total: u32,
    reset_at: Instant,
}

struct Inner {
    conn: ConnectionManager,
    cfg: RedisConfig,
    instance: String,
    scripts: Scripts,
    reachable: AtomicBool,
    known: Mutex<Option<KnownBudget>>,
    remaining: AtomicI64,
}

/// Identify permits, budget, leases and sessions of one bot, shared through Redis by every
/// process that runs some of its shards. Cheap to clone.
#[derive(Clone)]
pub struct RedisCoordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("instance", &self.inner.instance)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// What the permit script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitAnswer {
    Granted { remaining: Option<u32> },
    Wait(Duration),
    BudgetSpent(Duration),
    Storm(u32),
}

impl RedisCoordinator {
    /// Connects (bounded by `config.timeout`). Fails if Redis cannot be reached now: a
    /// process does not start its shards without knowing who else runs them.
    pub async fn connect(config: RedisConfig) -> Result<RedisCoordinator, CoordinationError> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| CoordinationError::BadUrl {
                reason: e.to_string(),
            })?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            config.timeout * 3,
            ConnectionManager::new_with_config(client, manager),
        )
        .await
        .map_err(|_| CoordinationError::Unreachable {
            reason: "connection timed out".into(),
        })?
        .map_err(|e| unreachable(&e))?;
        let instance = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        info!(instance = %instance, prefix = %config.prefix, "redis coordination on");
        Ok(RedisCoordinator {
            inner: Arc::new(Inner {
                conn,
                cfg: config,
                instance,
                scripts: Scripts {
                    permit: Script::new(PERMIT),
                    budget: Script::new(BUDGET),
                    lease: Script::new(LEASE),
                    take_sessions: Script::new(TAKE_SESSIONS),
                    release: Script::new(RELEASE),
                },
                reachable: AtomicBool::new(true),
                known: Mutex::new(None),
                remaining: AtomicI64::new(-1),
            }),
        })
    }

    /// This process's name in leases and locks (process id and a random part).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.inner.cfg.prefix
    }

    /// Whether the last Redis command succeeded. While it is `false`, no shard identifies
    /// (resumes go on).
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// The shared session starts left, as last seen (`None` before any is known).
    pub fn remaining(&self) -> Option<u32> {
        u32::try_from(self.inner.remaining.load(Ordering::Relaxed)).ok()
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn saw(&self, ok: bool, what: &str, err: Option<&RedisError>) {
        let was = self.inner.reachable.swap(ok, Ordering::Relaxed);
        match (was, ok) {
            (true, false) => error!(
                during = what,
                error = %err.map(ToString::to_string).unwrap_or_default(),
                "redis unreachable: no identify until it returns (resumes go on)"
            ),
            (false, true) => info!(during = what, "redis reachable again"),
            _ => {}
        }
    }

    /// Applies a fresh `session_start_limit` (from `GET /gateway/bot`) to the shared budget.
    /// Returns the shared remaining count.
    pub async fn apply_limit(&self, limit: SessionStartLimit) -> Result<u32, CoordinationError> {
        let reset_ms = u64::try_from(limit.reset_after.as_millis()).unwrap_or(u64::MAX);
        let remaining: i64 = self
            .inner
            .scripts
            .budget
            .arg(&self.inner.cfg.prefix)
            .arg(limit.remaining)
            .arg(limit.total)
            .arg(reset_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unreachable(&e))?;
        let remaining = u32::try_from(remaining).unwrap_or(0);
        *lock(&self.inner.known) = Some(KnownBudget {
            remaining,
            total: limit.total,
            reset_at: Instant::now() + limit.reset_after,
        });
        self.inner
            .remaining
            .store(i64::from(remaining), Ordering::Relaxed);
        info!(
            remaining,
            reported = limit.remaining,
            "shared session start budget"
        );
        Ok(remaining)
    }

    async fn ask(&self, shard: u32) -> Result<PermitAnswer, RedisError> {
        let cfg = &self.inner.cfg;
        let known = *lock(&self.inner.known);
        let (fallback, reset_ms, total) = match known {
            Some(k) => {
                let left = k.reset_at.saturating_duration_since(Instant::now());
                let remaining = self.remaining().unwrap_or(k.remaining);
                (i64::from(remaining), ms(left), k.total)
            }
            None => (-1, 0, 0),
        };
        let (gmax, gper) = cfg.budget.map_or((0, 0), |b| (b.max_identifies, ms(b.per)));
        let bucket = shard % cfg.max_concurrency.max(1);
        // Three times the longest pause between two asks of a waiting shard (1 s).
        let waiter_ttl = 3000u64;
        let (code, value, remaining): (i64, i64, i64) = self
            .inner
            .scripts
            .permit
            .arg(&cfg.prefix)
            .arg(&self.inner.instance)
            .arg(shard)
            .arg(bucket)
            .arg(ms(cfg.bucket_window).max(1))
            .arg(waiter_ttl)
            .arg(gmax)
            .arg(gper)
            .arg(fallback)
            .arg(reset_ms)
            .arg(86_400_000u64)
            .arg(total)
            .invoke_async(&mut self.conn())
            .await?;
        let wait = Duration::from_millis(u64::try_from(value).unwrap_or(0));
        Ok(match code {
            0 => {
                if remaining >= 0 {
                    self.inner.remaining.store(remaining, Ordering::Relaxed);
                }
                PermitAnswer::Granted {
                    remaining: u32::try_from(remaining).ok(),
                }
            }
            2 => PermitAnswer::BudgetSpent(wait),
            3 => PermitAnswer::Storm(u32::try_from(value).unwrap_or(u32::MAX)),
            _ => PermitAnswer::Wait(wait),
        })
    }

    /// Waits for shard `shard`'s identify permit. Never denies for want of Redis: it retries
    /// (with a bounded pause) until Redis answers.
    async fn acquire(&self, shard: u32) -> Result<(), PermitDenied> {
        let mut outage_pause = Duration::from_millis(100);
        let mut spent_logged = false;
        loop {
            match self.ask(shard).await {
                Ok(answer) => {
                    self.saw(true, "identify permit", None);
                    outage_pause = Duration::from_millis(100);
                    match answer {
                        PermitAnswer::Granted { remaining } => {
                            debug!(shard, ?remaining, "identify permitted (redis)");
                            return Ok(());
                        }
                        PermitAnswer::Wait(d) => {
                            tokio::time::sleep(d.clamp(Duration::from_millis(5), SECOND)).await;
                        }
                        PermitAnswer::BudgetSpent(d) => {
                            if !spent_logged {
                                warn!(
                                    shard,
                                    reset_in = ?d,
                                    "the shared session start budget is spent; identify waits for the reset"
                                );
                                spent_logged = true;
                            }
                            tokio::time::sleep(d.clamp(Duration::from_millis(50), SECOND * 10))
                                .await;
                        }
                        PermitAnswer::Storm(n) => {
                            let per = self.inner.cfg.budget.map(|b| b.per).unwrap_or_default();
                            warn!(
                                shard,
                                identifies = n,
                                "identify budget exceeded (shared count)"
                            );
                            return Err(PermitDenied::new(format!(
                                "identify budget exceeded: shard {shard} identified {n} times \
                                 within {per:?} (counted over every process of the bot)"
                            )));
                        }
                    }
                }
                Err(e) => {
                    self.saw(false, "identify permit", Some(&e));
                    tokio::time::sleep(outage_pause).await;
                    outage_pause = (outage_pause * 2).min(SECOND);
                }
            }
        }
    }

    /// Leases `shards` to this process and takes their stored sessions.
    ///
    /// Shards leased by another process: with `handoff`, that process is asked to drain them
    /// (it stores their sessions and releases them); without, this waits for the leases to
    /// expire (a process that died without draining). Either way the wait is bounded by
    /// `wait`; then [`CoordinationError::ShardsBusy`].
    pub async fn claim(
        &self,
        shards: &[u32],
        handoff: bool,
        wait: Duration,
    ) -> Result<BTreeMap<u32, Session>, CoordinationError> {
        let started = Instant::now();
        let mut asked = false;
        loop {
            let busy = self
                .lease(shards, &BTreeMap::new(), true)
                .await
                .map_err(|e| unreachable(&e))?
                .1;
            if busy.is_empty() {
                break;
            }
            if started.elapsed() >= wait {
                return Err(CoordinationError::ShardsBusy {
                    shards: busy,
                    waited: wait,
                });
            }
            if handoff && !asked {
                self.ask_handoff(&busy, wait)
                    .await
                    .map_err(|e| unreachable(&e))?;
                info!(shards = ?busy, "handoff asked; waiting for the other process to drain");
                asked = true;
            } else if !asked {
                info!(shards = ?busy, "shards leased elsewhere; waiting for the leases");
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut inv = self.inner.scripts.take_sessions.prepare_invoke();
        inv.arg(&self.inner.cfg.prefix).arg(&self.inner.instance);
        for s in shards {
            inv.arg(*s);
        }
        let flat: Vec<String> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unreachable(&e))?;
        let mut sessions = BTreeMap::new();
        for pair in flat.chunks(2) {
            let [shard, json] = pair else { continue };
            let Ok(shard) = shard.parse::<u32>() else {
                continue;
            };
            match serde_json::from_str::<Session>(json) {
                Ok(s) => {
                    sessions.insert(shard, s);
                }
                Err(e) => warn!(shard, error = %e, "stored session unreadable; identifying"),
            }
        }
        info!(shards = ?shards, sessions = sessions.len(), "shards leased");
        Ok(sessions)
    }

    async fn ask_handoff(&self, shards: &[u32], ttl: Duration) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for s in shards {
            pipe.cmd("SET")
                .arg(format!("{}handoff:{s}", self.inner.cfg.prefix))
                .arg(&self.inner.instance)
                .arg("PX")
                .arg(ms(ttl).max(1))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await
    }

    /// Takes (`take`) or renews the leases, storing `sessions`. `(handoff asked, busy)`.
    async fn lease(
        &self,
        shards: &[u32],
        sessions: &BTreeMap<u32, Session>,
        take: bool,
    ) -> Result<(bool, Vec<u32>), RedisError> {
        let cfg = &self.inner.cfg;
        let mut inv = self.inner.scripts.lease.prepare_invoke();
        inv.arg(&cfg.prefix)
            .arg(&self.inner.instance)
            .arg(ms(cfg.lease).max(1))
            .arg(if take { "take" } else { "renew" })
            .arg(ms(cfg.session_ttl).max(1))
            .arg(if take { "0" } else { "1" });
        for s in shards {
            inv.arg(*s).arg(session_json(sessions.get(s)));
        }
        let (handoff, busy): (i64, Vec<u32>) = inv.invoke_async(&mut self.conn()).await?;
        Ok((handoff == 1, busy))
    }

    /// Renews the leases of `shards` and stores their current sessions (with the sink's
    /// sequence number), so that a process killed without draining is taken over with a
    /// resume. What to do next: [`Renewal`].
    pub async fn renew(&self, shards: &[u32], sessions: &BTreeMap<u32, Session>) -> Renewal {
        match self.lease(shards, sessions, false).await {
            Ok((handoff, lost)) => {
                self.saw(true, "lease renewal", None);
                if !lost.is_empty() {
                    Renewal::Lost(lost)
                } else if handoff {
                    Renewal::HandoffAsked
                } else {
                    Renewal::Held
                }
            }
            Err(e) => {
                self.saw(false, "lease renewal", Some(&e));
                Renewal::Unreachable
            }
        }
    }

    /// Stores the final sessions (taken after the sink took its last event) of the shards
    /// this process still leases, and releases every lease. Returns the sessions stored.
    pub async fn release(
        &self,
        shards: &[u32],
        sessions: &BTreeMap<u32, Session>,
    ) -> Result<usize, CoordinationError> {
        let mut inv = self.inner.scripts.release.prepare_invoke();
        inv.arg(&self.inner.cfg.prefix)
            .arg(&self.inner.instance)
            .arg(ms(self.inner.cfg.session_ttl).max(1));
        for s in shards {
            inv.arg(*s).arg(session_json(sessions.get(s)));
        }
        let n: usize = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(n)
    }

    /// The lease renewal period: a third of the lease.
    pub fn renew_every(&self) -> Duration {
        (self.inner.cfg.lease / 3).max(Duration::from_millis(10))
    }

    /// A handle on this coordinator's reconnecting connection (cheap: clones share one
    /// socket), for other commands on the same server, such as a Redis Streams sink.
    pub fn connection(&self) -> ConnectionManager {
        self.conn()
    }
}

/// What a lease renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// Every lease is held.
    Held,
    /// Another process asked to take these shards over: drain.
    HandoffAsked,
    /// These shards' leases expired and another process took them: stop running them.
    Lost(Vec<u32>),
    /// Redis did not answer (logged once per outage).
    Unreachable,
}

const SECOND: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn session_json(s: Option<&Session>) -> String {
    s.and_then(|s| serde_json::to_string(s).ok())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: a panic while holding the lock cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct RedisPermits {
    coordinator: RedisCoordinator,
    shard: u32,
}

impl PermitSource for RedisPermits {
    fn acquire(&self) -> PermitFuture {
        let coordinator = self.coordinator.clone();
        let shard = self.shard;
        Box::pin(async move { coordinator.acquire(shard).await })
    }
}

impl IdentifyCoordinator for RedisCoordinator {
    fn permits_for(&self, shard: u32, _total: u32) -> Arc<dyn PermitSource> {
        Arc::new(RedisPermits {
            coordinator: self.clone(),
            shard,
        })
    }
}
