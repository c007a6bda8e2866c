//! The NDJSON formats of `handover run`: one event per line on stdout, one command per line on
//! stdin.
//!
//! Event lines carry `"shard"` and `"type"`; dispatch and READY data is copied byte for byte
//! from what the gateway sent (never parsed into a tree and serialized again). Lines without a
//! `"shard"` are about the adapter itself (`started`, `ok`, `error`, `status`).
//!
//! Command lines are JSON objects with an `"op"`; see [`parse_command`] and
//! `docs/operations.md`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use handover_core::OpenMode;
use handover_protocol::{
    Activity, Command, PresenceStatus, ProtocolError, RawJson, RequestGuildMembers,
    RequestSoundboardSounds, Snowflake, UpdatePresence, UpdateVoiceState,
};
use handover_runtime::{ShardEvent, ShardEventKind, ShardStatus};

/// Longest command line read from stdin, in bytes. A gateway payload is at most 4096 bytes;
/// the rest is room for the envelope and whitespace.
pub const MAX_COMMAND_LINE: usize = 64 * 1024;

/// Appends one event as a JSON line (ending with `\n`) to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &ShardEvent) {
    out.extend_from_slice(b"{\"shard\":");
    push_u64(out, u64::from(event.shard));
    match &event.kind {
        ShardEventKind::Dispatch(d) => {
            out.extend_from_slice(b",\"type\":\"dispatch\",\"seq\":");
            push_u64(out, d.seq);
            out.extend_from_slice(b",\"event\":");
            push_str(out, &d.event_type);
            out.extend_from_slice(b",\"data\":");
            push_raw(out, d.data.as_bytes());
        }
        ShardEventKind::Ready(r) => {
            out.extend_from_slice(b",\"type\":\"ready\",\"session_id\":");
            push_str(out, &r.session_id);
            out.extend_from_slice(b",\"seq\":");
            push_opt_u64(out, r.seq);
            out.extend_from_slice(b",\"data\":");
            push_raw(out, r.data.as_bytes());
        }
        ShardEventKind::Resumed(r) => {
            out.extend_from_slice(b",\"type\":\"resumed\",\"session_id\":");
            push_str(out, &r.session_id);
            out.extend_from_slice(b",\"seq\":");
            push_opt_u64(out, r.seq);
        }
        ShardEventKind::Gap(g) => {
            out.extend_from_slice(b",\"type\":\"gap\",\"session_id\":");
            push_str(out, &g.session_id);
            out.extend_from_slice(b",\"last_seq\":");
            push_u64(out, g.last_seq);
            out.extend_from_slice(b",\"delivered\":");
            push_u64(out, g.delivered);
        }
        ShardEventKind::StateChanged { from, to } => {
            out.extend_from_slice(b",\"type\":\"state\",\"from\":");
            push_str(out, from.name());
            out.extend_from_slice(b",\"to\":");
            push_str(out, to.name());
        }
        ShardEventKind::SocketOpened => out.extend_from_slice(b",\"type\":\"socket_opened\""),
        ShardEventKind::SocketClosed { code } => {
            out.extend_from_slice(b",\"type\":\"socket_closed\",\"code\":");
            push_opt_u64(out, code.map(u64::from));
        }
        ShardEventKind::Reconnecting { mode, delay } => {
            out.extend_from_slice(b",\"type\":\"reconnecting\",\"mode\":");
            push_str(out, mode_name(*mode));
            out.extend_from_slice(b",\"delay_ms\":");
            push_u64(out, u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        ShardEventKind::GaveUp { reason } => {
            out.extend_from_slice(b",\"type\":\"gave_up\",\"reason\":");
            push_str(out, &handover_runtime::describe_give_up(*reason));
        }
        ShardEventKind::Warning { message } => {
            out.extend_from_slice(b",\"type\":\"warning\",\"message\":");
            push_str(out, message);
        }
        // A kind a newer runtime adds before this writer knows it.
        _ => out.extend_from_slice(b",\"type\":\"other\""),
    }
    out.extend_from_slice(b"}\n");
}

/// `"identify"` or `"resume"`.
pub fn mode_name(mode: OpenMode) -> &'static str {
    match mode {
        OpenMode::Identify => "identify",
        OpenMode::Resume => "resume",
    }
}

/// Appends the `started` line: the shards this process runs and the control address.
pub fn write_started(out: &mut Vec<u8>, shards: &[u32], total: u32, http: Option<&str>) {
    #[derive(serde::Serialize)]
    struct Started<'a> {
        r#type: &'static str,
        shards: &'a [u32],
        total: u32,
        http: Option<&'a str>,
    }
    let line = Started {
        r#type: "started",
        shards,
        total,
        http,
    };
    // Serializing numbers and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

/// Appends the reply to a command that carried an `id` and succeeded.
pub fn write_ok(out: &mut Vec<u8>, line: u64, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"type\":\"ok\",\"line\":");
    push_u64(out, line);
    push_id(out, id);
    out.extend_from_slice(b"}\n");
}

/// Appends the error line for a refused command.
pub fn write_error(out: &mut Vec<u8>, line: u64, id: Option<&RawValue>, error: &CommandError) {
    out.extend_from_slice(b"{\"type\":\"error\",\"line\":");
    push_u64(out, line);
    push_id(out, id);
    if let Some(shard) = error.shard() {
        out.extend_from_slice(b",\"shard\":");
        push_u64(out, u64::from(shard));
    }
    out.extend_from_slice(b",\"error\":");
    push_str(out, &error.to_string());
    out.extend_from_slice(b"}\n");
}

/// Appends the answer to a `status` command: every shard's snapshot.
pub fn write_status(out: &mut Vec<u8>, line: u64, id: Option<&RawValue>, shards: &[ShardStatus]) {
    out.extend_from_slice(b"{\"type\":\"status\",\"line\":");
    push_u64(out, line);
    push_id(out, id);
    out.extend_from_slice(b",\"shards\":");
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, shards);
    out.extend_from_slice(b"}\n");
}

fn push_id(out: &mut Vec<u8>, id: Option<&RawValue>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        push_raw(out, id.get().as_bytes());
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

fn push_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Copies raw JSON. Line breaks can only be whitespace between tokens in valid JSON (inside
/// strings they are escaped), so turning them into spaces keeps the value and the one-line
/// framing.
fn push_raw(out: &mut Vec<u8>, raw: &[u8]) {
    let start = out.len();
    out.extend_from_slice(raw);
    // Checked with `memchr` (word- and SIMD-wide): a byte-by-byte look was most of the cost of
    // formatting a 1 KiB dispatch line.
    if memchr::memchr2(b'\n', b'\r', raw).is_some() {
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// Which shard(s) a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// This shard.
    Shard(u32),
    /// Every shard of this process.
    All,
    /// The shard of this guild: `(guild_id >> 22) % total`, Discord's formula.
    Guild(Snowflake),
    /// One shard, which must be named when the process runs several.
    Single,
}

/// A command read from stdin.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StdinCommand {
    /// Send a gateway command.
    Send {
        /// Where to.
        route: Route,
        /// What (already checked for shape).
        command: Command,
    },
    /// Hot-restart a shard (`Route::Shard`) or every shard (`Route::All`).
    Restart {
        /// Which.
        route: Route,
    },
    /// Print every shard's status as a `status` line.
    Status,
}

/// Why a command line was refused. The line is skipped; the process goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The line is longer than [`MAX_COMMAND_LINE`].
    #[error("command line longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The line is not the JSON object expected (category and position only, never content).
    #[error("malformed command: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// No `op` field.
    #[error("missing field `op`")]
    MissingOp,
    /// An `op` this adapter does not know.
    #[error(
        "unknown op `{op}` (expected presence, request_guild_members, voice_state, request_soundboard_sounds, raw, restart or status)"
    )]
    UnknownOp {
        /// The op given (cut to 40 characters).
        op: String,
    },
    /// The gateway command was refused before sending (shape, identify through `raw`...).
    #[error("invalid command: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// A `raw` payload with an opcode that may not be sent through `raw`: one the lifecycle
    /// owns (heartbeat, identify, resume) or one Discord does not accept from a client, which
    /// would get the connection closed with 4001. See [`Command::RAW_OPCODES`].
    #[error("raw op {op} refused: {}", raw_refusal(*.op))]
    RawOpcode {
        /// The opcode given.
        op: u64,
    },
    /// The process runs several shards and the command did not say which.
    #[error("`shard` is required for this op when several shards run")]
    ShardRequired,
    /// No such shard runs in this process.
    #[error("no shard {shard} in this process")]
    NoSuchShard {
        /// The shard named.
        shard: u32,
    },
    /// The shard refused to send it (not identified, over the rate, queue full...).
    #[error("shard {shard} did not send it: {reason}")]
    Send {
        /// The shard.
        shard: u32,
        /// Why.
        reason: String,
    },
    /// The shard's task has ended.
    #[error("shard {shard} has stopped")]
    ShardGone {
        /// The shard.
        shard: u32,
    },
}

/// Why a `raw` opcode is refused (for [`CommandError::RawOpcode`]'s message).
fn raw_refusal(op: u64) -> &'static str {
    let lifecycle = u8::try_from(op).is_ok_and(|op| Command::LIFECYCLE_OPCODES.contains(&op));
    if lifecycle {
        "heartbeat, identify and resume are sent by the shard itself"
    } else {
        "not an opcode a client may send (3, 4, 8, 31 or 43)"
    }
}

impl CommandError {
    /// The shard the error is about, if any.
    pub fn shard(&self) -> Option<u32> {
        match self {
            CommandError::NoSuchShard { shard }
            | CommandError::Send { shard, .. }
            | CommandError::ShardGone { shard } => Some(*shard),
            _ => None,
        }
    }

    /// A gateway command the protocol layer refused to build. Its own message already says
    /// "invalid command", so only the reason is kept: one prefix per line.
    fn invalid(e: &ProtocolError) -> CommandError {
        let reason = match e {
            ProtocolError::InvalidCommand { reason } => (*reason).to_owned(),
            other => other.to_string(),
        };
        CommandError::Invalid { reason }
    }

    fn malformed(e: &serde_json::Error) -> CommandError {
        // serde_json's messages may quote the input: keep the category and the position.
        let category = match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        let hint = match e.classify() {
            serde_json::error::Category::Data => " (a field is missing or has the wrong type)",
            _ => "",
        };
        CommandError::Malformed {
            reason: format!(
                "{category} error at line {} column {}{hint}",
                e.line(),
                e.column()
            ),
        }
    }
}

/// A parsed line: its optional `id` (echoed in the reply) and the command or the error.
#[derive(Debug)]
pub struct ParsedLine<'a> {
    /// The `id` field, raw, if any.
    pub id: Option<&'a RawValue>,
    /// The command, or why it was refused.
    pub command: Result<StdinCommand, CommandError>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    shard: Option<u32>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Presence {
    status: PresenceStatus,
    #[serde(default)]
    activities: Vec<Activity>,
    #[serde(default)]
    afk: bool,
    #[serde(default)]
    since: Option<u64>,
}

#[derive(Deserialize)]
struct Voice {
    guild_id: Snowflake,
    #[serde(default)]
    channel_id: Option<Snowflake>,
    #[serde(default)]
    self_mute: bool,
    #[serde(default)]
    self_deaf: bool,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct RawPayload<'a> {
    op: u64,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// Parses one stdin line (without its line break).
///
/// Ops: `presence` (`status`, optional `activities`, `afk`, `since`; every shard unless
/// `shard` is given), `request_guild_members` and `voice_state` (Discord's fields; routed to
/// the guild's shard unless `shard` is given), `request_soundboard_sounds` (`guild_ids`), `raw`
/// (`payload: {"op": N, "d": ...}`, N one of [`Command::RAW_OPCODES`]), `restart` (one shard or
/// every shard), `status`. Gateway commands are checked for shape here, so a bad one is
/// refused before anything is sent.
pub fn parse_command(line: &str) -> ParsedLine<'_> {
    let head: Head<'_> = match serde_json::from_str(line) {
        Ok(h) => h,
        Err(e) => {
            return ParsedLine {
                id: None,
                command: Err(if line.trim_start().starts_with('{') {
                    CommandError::malformed(&e)
                } else {
                    CommandError::Malformed {
                        reason: "a command is a json object".into(),
                    }
                }),
            };
        }
    };
    ParsedLine {
        id: head.id,
        command: parse_body(line, head.op.as_deref(), head.shard),
    }
}

fn parse_body(
    line: &str,
    op: Option<&str>,
    shard: Option<u32>,
) -> Result<StdinCommand, CommandError> {
    let named = shard.map(Route::Shard);
    let send = |route: Route, command: Command| -> Result<StdinCommand, CommandError> {
        command
            .to_payload()
            .map_err(|e| CommandError::invalid(&e))?;
        Ok(StdinCommand::Send { route, command })
    };
    let of = |e: serde_json::Error| CommandError::malformed(&e);
    match op {
        None => Err(CommandError::MissingOp),
        Some("presence") => {
            let p: Presence = serde_json::from_str(line).map_err(of)?;
            let presence = UpdatePresence {
                since: p.since,
                activities: p.activities,
                status: p.status,
                afk: p.afk,
            };
            send(
                named.unwrap_or(Route::All),
                Command::UpdatePresence(presence),
            )
        }
        Some("request_guild_members") => {
            let r: RequestGuildMembers = serde_json::from_str(line).map_err(of)?;
            let route = named.unwrap_or(Route::Guild(r.guild_id));
            send(route, Command::RequestGuildMembers(r))
        }
        Some("voice_state") => {
            let v: Voice = serde_json::from_str(line).map_err(of)?;
            let route = named.unwrap_or(Route::Guild(v.guild_id));
            send(
                route,
                Command::UpdateVoiceState(UpdateVoiceState {
                    guild_id: v.guild_id,
                    channel_id: v.channel_id,
                    self_mute: v.self_mute,
                    self_deaf: v.self_deaf,
                }),
            )
        }
        Some("request_soundboard_sounds") => {
            let r: RequestSoundboardSounds = serde_json::from_str(line).map_err(of)?;
            send(
                named.unwrap_or(Route::Single),
                Command::RequestSoundboardSounds(r),
            )
        }
        Some("raw") => {
            let r: Raw<'_> = serde_json::from_str(line).map_err(of)?;
            let p: RawPayload<'_> = serde_json::from_str(r.payload.get()).map_err(of)?;
            // Checked before anything else: the opcode decides whether the payload may be sent
            // at all (`Command::RAW_OPCODES`, taken from Discord's opcode table).
            let op = u8::try_from(p.op)
                .ok()
                .filter(|op| Command::RAW_OPCODES.contains(op))
                .ok_or(CommandError::RawOpcode { op: p.op })?;
            let d = match p.d {
                Some(d) => RawJson::parse(d.get()).map_err(|e| CommandError::invalid(&e))?,
                None => RawJson::null(),
            };
            send(named.unwrap_or(Route::Single), Command::Raw { op, d })
        }
        Some("restart") => Ok(StdinCommand::Restart {
            route: named.unwrap_or(Route::All),
        }),
        Some("status") => Ok(StdinCommand::Status),
        Some(other) => Err(CommandError::UnknownOp {
            op: other.chars().take(40).collect(),
        }),
    }
}

/// The shard of a guild: `(guild_id >> 22) % total`.
pub fn guild_shard(guild: Snowflake, total: u32) -> u32 {
    let total = u64::from(total.max(1));
    // The remainder is below `total`, itself a u32.
    u32::try_from((guild.0 >> 22) % total).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_core::{GiveUpReason, State};
    use handover_protocol::{Dispatch, Gap, Ready, Resumed};
    use std::time::Duration;

    fn line(kind: ShardEventKind) -> serde_json::Value {
        let mut out = Vec::new();
        write_event(&mut out, &ShardEvent { shard: 3, kind });
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn dispatch_data_is_copied_verbatim() {
        let data =
            RawJson::parse(r#"{"content":"hi","n":1.50,"big":12345678901234567890}"#).unwrap();
        let mut out = Vec::new();
        write_event(
            &mut out,
            &ShardEvent {
                shard: 0,
                kind: ShardEventKind::Dispatch(Dispatch {
                    seq: 5,
                    event_type: "MESSAGE_CREATE".into(),
                    data,
                }),
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            concat!(
                r#"{"shard":0,"type":"dispatch","seq":5,"event":"MESSAGE_CREATE","data":"#,
                r#"{"content":"hi","n":1.50,"big":12345678901234567890}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn line_breaks_in_raw_data_never_split_a_line() {
        let data = RawJson::parse("{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}").unwrap();
        let v = line(ShardEventKind::Dispatch(Dispatch {
            seq: 1,
            event_type: "X".into(),
            data,
        }));
        assert_eq!(v["data"]["a"], "x\ny");
        assert_eq!(v["data"]["b"], serde_json::json!([1, 2]));
    }

    #[test]
    fn every_kind_has_a_type() {
        let ready = line(ShardEventKind::Ready(Ready {
            session_id: "s1".into(),
            resume_gateway_url: "wss://r".into(),
            seq: Some(1),
            data: RawJson::parse(r#"{"v":10}"#).unwrap(),
        }));
        assert_eq!(ready["type"], "ready");
        assert_eq!(ready["shard"], 3);
        assert_eq!(ready["data"]["v"], 10);
        assert_eq!(ready["session_id"], "s1");
        let resumed = line(ShardEventKind::Resumed(Resumed {
            session_id: "s1".into(),
            seq: None,
        }));
        assert_eq!(resumed["type"], "resumed");
        assert!(resumed["seq"].is_null());
        let gap = line(ShardEventKind::Gap(Gap {
            session_id: "s1".into(),
            last_seq: 9,
            delivered: 4,
        }));
        assert_eq!(
            (gap["type"].as_str(), gap["last_seq"].as_u64()),
            (Some("gap"), Some(9))
        );
        let state = line(ShardEventKind::StateChanged {
            from: State::Identified,
            to: State::Draining,
        });
        assert_eq!(
            (state["from"].as_str(), state["to"].as_str()),
            (Some("identified"), Some("draining"))
        );
        assert_eq!(line(ShardEventKind::SocketOpened)["type"], "socket_opened");
        let closed = line(ShardEventKind::SocketClosed { code: Some(4000) });
        assert_eq!(closed["code"], 4000);
        assert!(line(ShardEventKind::SocketClosed { code: None })["code"].is_null());
        let r = line(ShardEventKind::Reconnecting {
            mode: OpenMode::Resume,
            delay: Duration::from_micros(12_900),
        });
        assert_eq!(
            (r["mode"].as_str(), r["delay_ms"].as_u64()),
            (Some("resume"), Some(12))
        );
        let g = line(ShardEventKind::GaveUp {
            reason: GiveUpReason::FatalClose { code: Some(4004) },
        });
        assert_eq!(g["reason"], "authentication failed (close code 4004)");
        let w = line(ShardEventKind::Warning {
            message: "w \"x\"".into(),
        });
        assert_eq!(
            (w["type"].as_str(), w["message"].as_str()),
            (Some("warning"), Some("w \"x\""))
        );
    }

    #[test]
    fn presence_defaults_and_routes() {
        let p = parse_command(r#"{"op":"presence","status":"idle"}"#);
        assert!(p.id.is_none());
        match p.command.unwrap() {
            StdinCommand::Send {
                route: Route::All,
                command: Command::UpdatePresence(u),
            } => assert_eq!(u, UpdatePresence::status(PresenceStatus::Idle)),
            other => panic!("{other:?}"),
        }
        let p = parse_command(r#"{"shard":2,"op":"presence","status":"dnd","id":"p1"}"#);
        assert_eq!(p.id.map(RawValue::get), Some(r#""p1""#));
        assert!(matches!(
            p.command.unwrap(),
            StdinCommand::Send {
                route: Route::Shard(2),
                ..
            }
        ));
    }

    #[test]
    fn raw_payloads_map_to_raw_commands() {
        let p = parse_command(
            r#"{"op":"raw","shard":0,"payload":{"op":3,"d":{"status":"online","afk":false,"since":null,"activities":[]}}}"#,
        );
        match p.command.unwrap() {
            StdinCommand::Send {
                route: Route::Shard(0),
                command: Command::Raw { op: 3, d },
            } => assert!(d.as_str().contains("\"online\"")),
            other => panic!("{other:?}"),
        }
        let no_d = parse_command(r#"{"op":"raw","payload":{"op":43}}"#);
        assert!(matches!(
            no_d.command.unwrap(),
            StdinCommand::Send {
                route: Route::Single,
                command: Command::Raw { op: 43, .. }
            }
        ));
        for op in Command::RAW_OPCODES {
            let line = format!(r#"{{"op":"raw","payload":{{"op":{op},"d":null}}}}"#);
            assert!(parse_command(&line).command.is_ok(), "op {op}");
        }
    }

    #[test]
    fn raw_payloads_with_an_opcode_clients_may_not_send_are_refused() {
        // Lifecycle opcodes, receive-only ones, gaps in Discord's table, and numbers beyond a
        // byte: each refused by number, before its `d` is even looked at.
        for op in [
            0u64,
            1,
            2,
            5,
            6,
            7,
            9,
            10,
            11,
            12,
            30,
            32,
            42,
            44,
            99,
            255,
            256,
            1 << 40,
        ] {
            let line = format!(r#"{{"op":"raw","shard":0,"payload":{{"op":{op},"d":{{"x":1}}}}}}"#);
            assert_eq!(
                parse_command(&line).command,
                Err(CommandError::RawOpcode { op }),
                "op {op}"
            );
        }
    }

    #[test]
    fn every_error_message_exactly_with_one_prefix() {
        let parsed = |line: &str| parse_command(line).command.unwrap_err().to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                CommandError::TooLong {
                    limit: MAX_COMMAND_LINE,
                }
                .to_string(),
                "command line longer than 65536 bytes",
            ),
            (
                parsed("not json"),
                "malformed command: a command is a json object",
            ),
            (
                parsed(r#"{"op":"presence""#),
                "malformed command: eof error at line 1 column 16",
            ),
            (parsed(r#"{"shard":1}"#), "missing field `op`"),
            (
                parsed(r#"{"op":"fly"}"#),
                "unknown op `fly` (expected presence, request_guild_members, voice_state, request_soundboard_sounds, raw, restart or status)",
            ),
            (
                parsed(r#"{"op":"request_guild_members","guild_id":"1"}"#),
                "invalid command: request guild members needs a query or user ids",
            ),
            (
                parsed(r#"{"op":"request_guild_members","guild_id":"1","query":"a"}"#),
                "invalid command: request guild members with a query needs a limit",
            ),
            (
                parsed(r#"{"op":"raw","payload":{"op":99,"d":null}}"#),
                "raw op 99 refused: not an opcode a client may send (3, 4, 8, 31 or 43)",
            ),
            (
                parsed(r#"{"op":"raw","payload":{"op":2,"d":{}}}"#),
                "raw op 2 refused: heartbeat, identify and resume are sent by the shard itself",
            ),
            (
                CommandError::ShardRequired.to_string(),
                "`shard` is required for this op when several shards run",
            ),
            (
                CommandError::NoSuchShard { shard: 5 }.to_string(),
                "no shard 5 in this process",
            ),
            (
                CommandError::Send {
                    shard: 1,
                    reason: "not identified".into(),
                }
                .to_string(),
                "shard 1 did not send it: not identified",
            ),
            (
                CommandError::ShardGone { shard: 2 }.to_string(),
                "shard 2 has stopped",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn guild_commands_route_to_the_guild_shard() {
        let p = parse_command(
            r#"{"op":"request_guild_members","guild_id":"41771983423143937","query":"","limit":0}"#,
        );
        let StdinCommand::Send {
            route: Route::Guild(g),
            ..
        } = p.command.unwrap()
        else {
            panic!()
        };
        assert_eq!(g, Snowflake(41771983423143937));
        assert_eq!(guild_shard(g, 1), 0);
        assert_eq!(
            guild_shard(g, 16),
            ((41771983423143937u64 >> 22) % 16) as u32
        );
        let bad = parse_command(r#"{"op":"request_guild_members","guild_id":"1"}"#);
        assert!(
            matches!(bad.command, Err(CommandError::Invalid { .. })),
            "{bad:?}"
        );
        let v = parse_command(r#"{"op":"voice_state","guild_id":"5","channel_id":null}"#);
        assert!(v.command.is_ok());
    }

    #[test]
    fn malformed_lines_are_typed_and_quote_nothing() {
        let cases = [
            ("not json at all secret-ish", "a command is a json object"),
            (r#"{"op":"presence","status":"secret-ish"}"#, "data error"),
            (r#"{"op": 12}"#, "data error"),
            (r#"{"op":"presence""#, "eof error"),
        ];
        for (text, want) in cases {
            let err = parse_command(text).command.unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{text}: {msg}");
            assert!(!msg.contains("secret-ish"), "{msg}");
        }
        assert_eq!(
            parse_command(r#"{"shard":1}"#).command,
            Err(CommandError::MissingOp)
        );
        let unknown = parse_command(r#"{"op":"fly"}"#).command.unwrap_err();
        assert_eq!(unknown, CommandError::UnknownOp { op: "fly".into() });
        assert!(matches!(
            parse_command(r#"{"op":"restart","shard":-1}"#).command,
            Err(CommandError::Malformed { .. })
        ));
    }

    #[test]
    fn replies_echo_the_id() {
        let p = parse_command(r#"{"op":"status","id":{"n":[1,2]}}"#);
        let mut out = Vec::new();
        write_ok(&mut out, 7, p.id);
        write_error(
            &mut out,
            8,
            p.id,
            &CommandError::Send {
                shard: 1,
                reason: "not identified".into(),
            },
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "ok");
        assert_eq!(lines[0]["id"]["n"][1], 2);
        assert_eq!(lines[1]["type"], "error");
        assert_eq!(lines[1]["shard"], 1);
        assert_eq!(lines[1]["line"], 8);
    }
}
