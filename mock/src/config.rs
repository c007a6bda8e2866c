//! Configuration of the mock gateway, with Discord's documented numbers as defaults.

use std::fmt;
use std::time::Duration;

use handover_protocol::SessionStartLimit;

/// Every intent bit Discord documents for gateway v10 (bits 0-16, 20, 21, 24, 25). An IDENTIFY
/// with any other bit set is closed with 4013.
pub const DOCUMENTED_INTENTS: u64 = 0x1_FFFF | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);

/// The privileged intents: GUILD_MEMBERS (1 << 1), GUILD_PRESENCES (1 << 8) and MESSAGE_CONTENT
/// (1 << 15). An IDENTIFY asking for one that [`MockConfig::allowed_privileged_intents`] does not
/// enable is closed with 4014.
pub const PRIVILEGED_INTENTS: u64 = (1 << 1) | (1 << 8) | (1 << 15);

/// The token [`MockConfig::default`] accepts (index 0). It is a test value, not a secret, but the
/// mock still never prints it.
pub const DEFAULT_TOKEN: &str = "mock-token";

/// A seed from the operating system's randomness: the standard library's hash keys, which it
/// draws from the OS for each thread and steps for each new hasher, run through SipHash. A
/// different value for every call, in every process; it is not a secret, only unpredictable.
pub fn os_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x6d6f_636b_u64)
}

/// How the mock gateway behaves. Every field has Discord's documented value (or a documented
/// choice of ours) as its default; tests shrink the intervals and windows so they run in
/// milliseconds.
///
/// Tokens are secrets in real life, so the mock keys everything by a token's index in
/// [`tokens`](MockConfig::tokens) and `Debug` never prints them.
#[derive(Clone)]
pub struct MockConfig {
    /// Bot tokens the mock accepts (in IDENTIFY, RESUME and `Authorization: Bot <token>`). Counters
    /// name a token by its index here. Default: `[DEFAULT_TOKEN]`.
    pub tokens: Vec<String>,
    /// Recommended shard count reported by `GET /gateway/bot`. Default 1.
    pub shards: u32,
    /// An IDENTIFY whose shard count is below this is closed with 4011 (sharding required).
    /// Default 1 (never).
    pub min_shards: u32,
    /// `heartbeat_interval` sent in HELLO. Default 41.25 s.
    pub heartbeat_interval: Duration,
    /// The mock closes a connection (code 4000, session kept resumable) when no heartbeat arrived
    /// within `heartbeat_interval + grace` of HELLO or of the previous heartbeat. `None` never
    /// times a client out. Default 5 s.
    pub heartbeat_grace: Option<Duration>,
    /// How long a disconnected session stays resumable. Default 180 s ("a few minutes").
    pub resume_window: Duration,
    /// Identify rate-limit window per concurrency bucket. Default 5 s.
    pub identify_window: Duration,
    /// The daily session-start budget, per token, and the concurrency buckets, as `GET
    /// /gateway/bot` reports them: `remaining` is what is left when the mock starts, the budget
    /// refills to `total` every `reset_after`; shard `id` belongs to bucket `id %
    /// max_concurrency`, each bucket allows one IDENTIFY per `identify_window` and more get
    /// op 9 d=false (`max_concurrency` 0 is treated as 1). Default: Discord's (1000 a day, one
    /// bucket).
    pub session_start: SessionStartLimit,
    /// Privileged intent bits the application has enabled (a subset of [`PRIVILEGED_INTENTS`]).
    /// Default: none.
    pub allowed_privileged_intents: u64,
    /// Payloads a client may send per `send_window` on one connection; one more closes with 4008.
    /// Default 120.
    pub send_limit: u32,
    /// The send-rate window. Default 60 s.
    pub send_window: Duration,
    /// Largest payload a client may send, in bytes; larger closes with 4002. Default 4096.
    pub max_payload: usize,
    /// Dispatches kept per session for replay on RESUME; a RESUME older than the oldest kept one
    /// gets op 9 d=false. Default [`MockConfig::DEFAULT_REPLAY_BUFFER`] (1000); any size works
    /// (memory is the only bound).
    pub replay_buffer: usize,
    /// After the mock sends a close frame, how long it waits for the client's reply (or EOF)
    /// before dropping TCP. Default 5 s.
    pub close_timeout: Duration,
    /// Dispatches emitted per step by a stream running as fast as the client reads. Default 32.
    pub stream_batch: usize,
    /// Seed for everything random in the mock (session ids, garbage frames). Same seed and same
    /// inputs give the same outputs. Default: drawn from the operating system's randomness for
    /// every configuration ([`os_seed`]), so two mocks never hand out the same session ids
    /// and a client cannot resume one mock's session on another; set it for a reproducible
    /// run.
    pub seed: u64,
    /// TCP port on 127.0.0.1 for [`MockServer`](crate::MockServer). Default 0 (any free port).
    pub port: u16,
}

impl MockConfig {
    /// The default of [`replay_buffer`](MockConfig::replay_buffer): 1000 dispatches per
    /// session. Discord does not document its own; raise it for tests in which a client stops
    /// reading while more events than this are dispatched.
    pub const DEFAULT_REPLAY_BUFFER: usize = 1000;
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            tokens: vec![DEFAULT_TOKEN.to_owned()],
            shards: 1,
            min_shards: 1,
            heartbeat_interval: Duration::from_millis(41_250),
            heartbeat_grace: Some(Duration::from_secs(5)),
            resume_window: Duration::from_secs(180),
            identify_window: Duration::from_secs(5),
            session_start: SessionStartLimit::default(),
            allowed_privileged_intents: 0,
            send_limit: 120,
            send_window: Duration::from_secs(60),
            max_payload: 4096,
            replay_buffer: MockConfig::DEFAULT_REPLAY_BUFFER,
            close_timeout: Duration::from_secs(5),
            stream_batch: 32,
            seed: os_seed(),
            port: 0,
        }
    }
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("shards", &self.shards)
            .field("min_shards", &self.min_shards)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_grace", &self.heartbeat_grace)
            .field("resume_window", &self.resume_window)
            .field("identify_window", &self.identify_window)
            .field("session_start", &self.session_start)
            .field(
                "allowed_privileged_intents",
                &self.allowed_privileged_intents,
            )
            .field("send_limit", &self.send_limit)
            .field("send_window", &self.send_window)
            .field("max_payload", &self.max_payload)
            .field("replay_buffer", &self.replay_buffer)
            .field("close_timeout", &self.close_timeout)
            .field("stream_batch", &self.stream_batch)
            .field("seed", &self.seed)
            .field("port", &self.port)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_tokens() {
        let config = MockConfig {
            tokens: vec!["super-secret-a".into(), "super-secret-b".into()],
            ..MockConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("2 redacted"), "{text}");
    }

    #[test]
    fn default_seeds_differ() {
        let seeds: std::collections::BTreeSet<u64> =
            (0..64).map(|_| MockConfig::default().seed).collect();
        assert_eq!(seeds.len(), 64);
        assert_ne!(os_seed(), os_seed());
    }

    #[test]
    fn intent_sets_match_the_documentation() {
        for bit in [0, 1, 2, 8, 9, 15, 16, 20, 21, 24, 25] {
            assert_ne!(DOCUMENTED_INTENTS & (1 << bit), 0, "bit {bit}");
        }
        for bit in [17, 18, 19, 22, 23, 26, 40] {
            assert_eq!(DOCUMENTED_INTENTS & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(PRIVILEGED_INTENTS & !DOCUMENTED_INTENTS, 0);
        assert_eq!(PRIVILEGED_INTENTS.count_ones(), 3);
    }
}
