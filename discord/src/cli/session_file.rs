//! The session file: what a drained `handover run` hands to the next process so it resumes
//! instead of identifying.
//!
//! Format (JSON, written atomically with mode 0600):
//!
//! ```json
//! {"version":1,"saved_at_ms":1764080000000,"total":1,
//!  "sessions":[{"shard":0,"session_id":"...","resume_gateway_url":"wss://...","seq":42}]}
//! ```
//!
//! A session file is used once: [`take`] reads and removes it, so a process that crashes later
//! never resumes a session twice, and a stale file never lingers. It holds no token (a session
//! id is useless without it).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::protocol::Session;

/// Largest session file read, in bytes (a few hundred bytes per shard).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Current format version.
pub const VERSION: u32 = 1;

/// One saved shard session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// The shard id.
    pub shard: u32,
    /// What a RESUME needs.
    #[serde(flatten)]
    pub session: Session,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFile {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When it was written, Unix milliseconds.
    pub saved_at_ms: u64,
    /// The bot's total shard count when it was written; a session is only valid for the same
    /// shard of the same total.
    pub total: u32,
    /// The sessions.
    pub sessions: Vec<SavedSession>,
}

/// Why a session file was not used (the process then identifies; never fatal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionFileError {
    /// Reading or removing failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not the JSON described in the module docs (category and position only).
    #[error("{path} is not a session file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another version.
    #[error("{path} has version {found}, expected {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Older than the allowed age: the gateway has most likely forgotten the sessions.
    #[error("{path} is {age:?} old, older than {max:?}")]
    Stale {
        /// The file.
        path: PathBuf,
        /// Its age.
        age: Duration,
        /// The limit.
        max: Duration,
    },
    /// Written for another shard count.
    #[error("{path} was written for {found} shards, this process runs shards of {expected}")]
    OtherTotal {
        /// The file.
        path: PathBuf,
        /// Its total.
        found: u32,
        /// Ours.
        expected: u32,
    },
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads the session file at `path` and removes it. `Ok(None)` when there is none.
///
/// The sessions are returned by shard id when the file is fresh (written at most `max_age`
/// before `now_ms`) and was written for `total` shards; otherwise a typed error says why (the
/// file is removed all the same).
pub fn take(
    path: &Path,
    total: u32,
    max_age: Duration,
    now_ms: u64,
) -> Result<Option<BTreeMap<u32, Session>>, SessionFileError> {
    let read_err = |source| SessionFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let result = if meta.len() > MAX_FILE_BYTES {
        Err(SessionFileError::TooLarge {
            path: path.to_owned(),
        })
    } else {
        std::fs::read(path)
            .map_err(read_err)
            .and_then(|bytes| parse(path, &bytes, total, max_age, now_ms))
    };
    std::fs::remove_file(path).map_err(read_err)?;
    result.map(Some)
}

fn parse(
    path: &Path,
    bytes: &[u8],
    total: u32,
    max_age: Duration,
    now_ms: u64,
) -> Result<BTreeMap<u32, Session>, SessionFileError> {
    let file: SessionFile =
        serde_json::from_slice(bytes).map_err(|e| SessionFileError::Malformed {
            path: path.to_owned(),
            reason: format!("error at line {} column {}", e.line(), e.column()),
        })?;
    if file.version != VERSION {
        return Err(SessionFileError::Version {
            path: path.to_owned(),
            found: file.version,
        });
    }
    let age = Duration::from_millis(now_ms.saturating_sub(file.saved_at_ms));
    if age > max_age {
        return Err(SessionFileError::Stale {
            path: path.to_owned(),
            age,
            max: max_age,
        });
    }
    if file.total != total {
        return Err(SessionFileError::OtherTotal {
            path: path.to_owned(),
            found: file.total,
            expected: total,
        });
    }
    Ok(file
        .sessions
        .into_iter()
        .map(|s| (s.shard, s.session))
        .collect())
}

/// Writes the sessions to `path` atomically (a temporary file beside it, synced, then renamed)
/// with mode 0600 on Unix.
pub fn save(
    path: &Path,
    total: u32,
    sessions: &BTreeMap<u32, Session>,
    now_ms: u64,
) -> Result<(), SessionFileError> {
    let file = SessionFile {
        version: VERSION,
        saved_at_ms: now_ms,
        total,
        sessions: sessions
            .iter()
            .map(|(&shard, session)| SavedSession {
                shard,
                session: session.clone(),
            })
            .collect(),
    };
    let write_err = |source| SessionFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut bytes =
        serde_json::to_vec(&file).map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    bytes.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(seq: u64) -> Session {
        Session {
            session_id: "abc".into(),
            resume_gateway_url: "wss://resume.example".into(),
            seq,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "handover-session-file-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("sessions.json")
    }

    #[test]
    fn round_trip_and_taken_once() {
        let path = temp("round-trip");
        let sessions = BTreeMap::from([(0, session(7)), (1, session(9))]);
        save(&path, 2, &sessions, 1_000_000).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let got = take(&path, 2, Duration::from_secs(60), 1_030_000).unwrap();
        assert_eq!(got, Some(sessions));
        assert!(!path.exists(), "taken once");
        assert!(
            take(&path, 2, Duration::from_secs(60), 1_030_000)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn stale_other_total_and_garbage_are_refused_and_removed() {
        let path = temp("refused");
        let one = BTreeMap::from([(0, session(1))]);
        save(&path, 1, &one, 0).unwrap();
        let err = take(&path, 1, Duration::from_secs(60), 61_000).unwrap_err();
        assert!(matches!(err, SessionFileError::Stale { .. }), "{err}");
        assert!(!path.exists());

        save(&path, 1, &one, 0).unwrap();
        let err = take(&path, 2, Duration::from_secs(60), 0).unwrap_err();
        assert!(matches!(
            err,
            SessionFileError::OtherTotal {
                found: 1,
                expected: 2,
                ..
            }
        ));

        std::fs::write(&path, b"{\"version\":1, secret-ish").unwrap();
        let err = take(&path, 1, Duration::from_secs(60), 0).unwrap_err();
        assert!(matches!(err, SessionFileError::Malformed { .. }));
        assert!(!err.to_string().contains("secret-ish"));
        assert!(!path.exists());
    }

    #[test]
    fn the_format_is_documented() {
        let path = temp("format");
        save(&path, 1, &BTreeMap::from([(0, session(42))]), 5).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":1,"saved_at_ms":5,"total":1,"sessions":[
                {"shard":0,"session_id":"abc","resume_gateway_url":"wss://resume.example","seq":42}
            ]})
        );
    }
}
