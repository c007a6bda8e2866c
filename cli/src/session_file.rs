//! The session file: what a drained `handover run` hands to the next process so it resumes
//! instead of identifying.
//!
//! Format (JSON, mode 0600):
//!
//! ```json
//! {"version":1,"saved_at_ms":1764080000000,"total":1,
//!  "sessions":[{"shard":0,"session_id":"...","resume_gateway_url":"wss://...","seq":42}]}
//! ```
//!
//! A session file is used once: [`take`] reads and removes it, so a process that crashes later
//! never resumes a session twice, and a stale file never lingers. It holds no token (a session
//! id is useless without it).
//!
//! Safety rules, for a file that sits in a directory other users or processes may write:
//!
//! - [`save`] writes a fresh temporary file beside `PATH`, created exclusively under a random
//!   name (never through an existing file or symbolic link), forced to mode 0600 whatever the
//!   umask, synced, renamed over `PATH`, and the directory synced. `PATH` itself is never
//!   replaced when it is a symbolic link or anything but a regular file.
//! - [`take`] opens `PATH` without following a symbolic link and without blocking (a FIFO never
//!   holds the start), and uses it only if it is a regular file of at most [`MAX_FILE_BYTES`],
//!   owned by the process's effective user and not writable by group or others. A file refused
//!   for what it is (link, FIFO, owner, permissions) is left where it is; a file refused for
//!   its content (stale, malformed, other shard count, from the future) is removed.
//! - [`check_usable`] finds, before anything starts, a path [`save`] could not write.
//! - [`trust_resume_urls`] keeps the token from going where the file says: a
//!   `resume_gateway_url` is used only on a Discord gateway host or the configured gateway.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::ws_url;
use handover_protocol::Session;

/// Largest session file read, in bytes (a few hundred bytes per shard).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Current format version.
pub const VERSION: u32 = 1;

/// How far in the future `saved_at_ms` may be (clocks of two hosts, or a clock stepped back
/// between two processes) before the file is refused as invalid.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

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

/// Why a session file was not used or cannot be written.
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
        /// The file (or its directory).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path cannot hold a session file (no file name, no such directory...).
    #[error("{path} cannot be a session file: {reason}")]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The path is a symbolic link: a session file is never read or replaced through one.
    #[error("{path} is a symbolic link; a session file is never read or replaced through one")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The path is a directory, a FIFO, a socket or a device.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file belongs to another user.
    #[error("{path} is owned by uid {owner}, not by this process's user (uid {user})")]
    NotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The process's effective user.
        user: u32,
    },
    /// Group or others may write the file: anyone of them could have edited it.
    #[error("{path} is writable by group or others (mode {mode:o}); it should be 600")]
    WritableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
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
    /// Written later than now, beyond [`MAX_CLOCK_SKEW`]: its age cannot be known.
    #[error("{path} claims to be written {ahead:?} in the future (more than {MAX_CLOCK_SKEW:?})")]
    FromTheFuture {
        /// The file.
        path: PathBuf,
        /// How far ahead of now its `saved_at_ms` is.
        ahead: Duration,
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

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.NAME.` : the prefix of the temporary files written beside `NAME`.
fn temp_prefix(path: &Path) -> Result<OsString, SessionFileError> {
    let name = path.file_name().ok_or_else(|| SessionFileError::Unusable {
        path: path.to_owned(),
        reason: "it names no file",
    })?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    Ok(prefix)
}

/// Refuses a `path` that exists as anything but a regular file (not following a link).
fn check_existing(path: &Path) -> Result<(), SessionFileError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(SessionFileError::Symlink {
            path: path.to_owned(),
        }),
        Ok(m) if !m.is_file() => Err(SessionFileError::NotAFile {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SessionFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Checks, before anything starts, that [`save`] can write `path`: it names a file, its
/// directory exists and accepts a new file (a probe file is created there and removed), and
/// `path` is not a symbolic link, a directory or another non-regular file.
pub fn check_usable(path: &Path) -> Result<(), SessionFileError> {
    let prefix = temp_prefix(path)?;
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SessionFileError::Unusable {
                path: path.to_owned(),
                reason: "its parent is not a directory",
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SessionFileError::Unusable {
                path: path.to_owned(),
                reason: "its directory does not exist",
            });
        }
        Err(source) => {
            return Err(SessionFileError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    }
    check_existing(path)?;
    // Removed when dropped.
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".probe")
        .tempfile_in(dir)
        .map_err(|source| SessionFileError::Write {
            path: dir.to_owned(),
            source,
        })?;
    Ok(())
}

/// Reads the session file at `path` and removes it. `Ok(None)` when there is none.
///
/// The sessions are returned by shard id when the file is fresh (written at most `max_age`
/// before `now_ms`, and not more than [`MAX_CLOCK_SKEW`] after it) and was written for `total`
/// shards; otherwise a typed error says why. See the module docs for which refused files are
/// removed.
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
    check_existing(path)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        // Replaced by a link since the check above.
        Err(rustix::io::Errno::LOOP) => {
            return Err(SessionFileError::Symlink {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(read_err(e.into())),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SessionFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let user = rustix::process::geteuid().as_raw();
    if meta.uid() != user {
        return Err(SessionFileError::NotOwned {
            path: path.to_owned(),
            owner: meta.uid(),
            user,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SessionFileError::WritableByOthers {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    let result = if meta.len() > MAX_FILE_BYTES {
        Err(SessionFileError::TooLarge {
            path: path.to_owned(),
        })
    } else {
        let mut bytes = Vec::new();
        // Bounded even if the file grows after the size was read.
        match (&file).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() as u64 > MAX_FILE_BYTES => Err(SessionFileError::TooLarge {
                path: path.to_owned(),
            }),
            Ok(_) => parse(path, &bytes, total, max_age, now_ms),
            Err(e) => Err(read_err(e)),
        }
    };
    drop(file);
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
    let skew_ms = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
    if file.saved_at_ms > now_ms.saturating_add(skew_ms) {
        return Err(SessionFileError::FromTheFuture {
            path: path.to_owned(),
            ahead: Duration::from_millis(file.saved_at_ms - now_ms),
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

/// Makes every session's `resume_gateway_url` one a RESUME (which carries the token) may be
/// sent to: kept if it is `wss://` on a Discord gateway host or on the scheme, host and port of
/// `configured` (the gateway URL in use), replaced by `configured` otherwise, so the session is
/// resumed through the configured gateway. Returns the shards whose URL was replaced.
pub fn trust_resume_urls(sessions: &mut BTreeMap<u32, Session>, configured: &str) -> Vec<u32> {
    let mut replaced = Vec::new();
    for (&shard, session) in sessions.iter_mut() {
        if !ws_url::resume_url_trusted(&session.resume_gateway_url, configured) {
            session.resume_gateway_url = configured.to_owned();
            replaced.push(shard);
        }
    }
    replaced
}

/// Writes the sessions to `path` as described in the module docs: a fresh temporary file
/// beside it (exclusive, random name, mode 0600), synced, renamed over `path`, the directory
/// synced. Refuses to replace a `path` that is a symbolic link or not a regular file.
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
    let prefix = temp_prefix(path)?;
    check_existing(path)?;
    let dir = parent_dir(path);
    // Created with O_EXCL under a random name; removed when dropped unless persisted.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    // fchmod: exactly 0600, whatever the umask took away or a previous file had.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o600))
        .map_err(write_err)?;
    tmp.write_all(&bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    // A link or a directory put at `path` while the file was written is not replaced either.
    check_existing(path)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SessionFileError::Write {
            path: dir.to_owned(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(seq: u64) -> Session {
        Session {
            session_id: "abc".into(),
            resume_gateway_url: "wss://gateway-us-east1-b.discord.gg".into(),
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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn write_json(path: &Path, saved_at_ms: u64) {
        std::fs::write(
            path,
            serde_json::json!({"version":1,"saved_at_ms":saved_at_ms,"total":1,"sessions":[
                {"shard":0,"session_id":"abc","resume_gateway_url":"wss://gateway.discord.gg","seq":1}
            ]})
            .to_string(),
        )
        .unwrap();
        std::fs::set_permissions(path, Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn round_trip_and_taken_once() {
        let path = temp("round-trip");
        let sessions = BTreeMap::from([(0, session(7)), (1, session(9))]);
        save(&path, 2, &sessions, 1_000_000).unwrap();
        assert_eq!(mode(&path), 0o600);
        let got = take(&path, 2, Duration::from_secs(60), 1_030_000).unwrap();
        assert_eq!(got, Some(sessions));
        assert!(!path.exists(), "taken once");
        assert!(
            take(&path, 2, Duration::from_secs(60), 1_030_000)
                .unwrap()
                .is_none()
        );
        // Nothing but the file is left in the directory.
        let left: Vec<_> = std::fs::read_dir(parent_dir(&path)).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
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
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let err = take(&path, 1, Duration::from_secs(60), 0).unwrap_err();
        assert!(matches!(err, SessionFileError::Malformed { .. }));
        assert!(!err.to_string().contains("secret-ish"));
        assert!(!path.exists());
    }

    #[test]
    fn a_file_from_the_future_is_refused_beyond_the_skew() {
        let path = temp("future");
        let now = 1_000_000;
        let max_age = Duration::from_secs(180);
        write_json(&path, now + 5_000);
        assert!(
            take(&path, 1, max_age, now).unwrap().is_some(),
            "within the skew"
        );
        write_json(&path, now + 5_001);
        let err = take(&path, 1, max_age, now).unwrap_err();
        assert!(
            matches!(err, SessionFileError::FromTheFuture { ahead, .. } if ahead == Duration::from_millis(5_001)),
            "{err}"
        );
        assert!(!path.exists(), "refused for its content: removed");
        write_json(&path, u64::MAX);
        assert!(matches!(
            take(&path, 1, max_age, now),
            Err(SessionFileError::FromTheFuture { .. })
        ));
    }

    /// The old writer used `PATH.tmp`, opened with create+truncate: a link placed there sent
    /// the write to its target.
    #[test]
    fn a_link_at_the_old_temporary_name_redirects_nothing() {
        let path = temp("tmp-link");
        let victim = parent_dir(&path).join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let mut old_tmp = path.as_os_str().to_owned();
        old_tmp.push(".tmp");
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        save(&path, 1, &BTreeMap::from([(0, session(3))]), 5).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(mode(&path), 0o600);
    }

    /// The old writer reused a pre-existing `PATH.tmp`, keeping its mode.
    #[test]
    fn the_file_is_0600_whatever_existed_before() {
        let path = temp("tmp-mode");
        let mut old_tmp = path.as_os_str().to_owned();
        old_tmp.push(".tmp");
        std::fs::write(&old_tmp, b"").unwrap();
        std::fs::set_permissions(&old_tmp, Permissions::from_mode(0o666)).unwrap();
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        save(&path, 1, &BTreeMap::from([(0, session(3))]), 5).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(std::fs::read(&path).unwrap().starts_with(b"{"));
    }

    #[test]
    fn a_symlinked_session_file_is_neither_replaced_nor_read() {
        let path = temp("path-link");
        let victim = parent_dir(&path).join("victim");
        write_json(&victim, 0);
        let before = std::fs::read(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        let err = save(&path, 1, &BTreeMap::from([(0, session(3))]), 5).unwrap_err();
        assert!(matches!(err, SessionFileError::Symlink { .. }), "{err}");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&victim).unwrap(), before);

        let err = take(&path, 1, Duration::from_secs(60), 0).unwrap_err();
        assert!(matches!(err, SessionFileError::Symlink { .. }), "{err}");
        assert!(
            victim.exists() && std::fs::symlink_metadata(&path).is_ok(),
            "left alone"
        );
        assert!(matches!(
            check_usable(&path),
            Err(SessionFileError::Symlink { .. })
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let path = temp("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(take(&p, 1, Duration::from_secs(60), 0));
        });
        // Bounded: a blocking open would never answer.
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("take returned instead of blocking on the fifo");
        assert!(
            matches!(got, Err(SessionFileError::NotAFile { .. })),
            "{got:?}"
        );
        assert!(matches!(
            check_usable(&path),
            Err(SessionFileError::NotAFile { .. })
        ));
        assert!(path.exists(), "refused for what it is: left in place");
    }

    #[test]
    fn a_file_others_may_write_is_refused_and_kept() {
        let path = temp("perms");
        write_json(&path, 0);
        std::fs::set_permissions(&path, Permissions::from_mode(0o620)).unwrap();
        let err = take(&path, 1, Duration::from_secs(60), 0).unwrap_err();
        assert!(
            matches!(err, SessionFileError::WritableByOthers { mode: 0o620, .. }),
            "{err}"
        );
        assert!(path.exists());
        std::fs::set_permissions(&path, Permissions::from_mode(0o602)).unwrap();
        assert!(matches!(
            take(&path, 1, Duration::from_secs(60), 0),
            Err(SessionFileError::WritableByOthers { .. })
        ));
        // Readable by others is fine (a session id is useless without the token).
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(
            take(&path, 1, Duration::from_secs(60), 0)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        let path = temp("owner");
        write_json(&path, 0);
        let me = rustix::process::geteuid().as_raw();
        // Only root can give a file away (CI runs as root); as another user this checks the
        // own-file case only.
        if me == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let err = take(&path, 1, Duration::from_secs(60), 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    SessionFileError::NotOwned {
                        owner: 4242,
                        user: 0,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(path.exists());
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        assert!(
            take(&path, 1, Duration::from_secs(60), 0)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn unusable_paths_are_found_before_anything_starts() {
        let path = temp("usable");
        let dir = parent_dir(&path).to_owned();
        check_usable(&path).unwrap();
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "probe removed"
        );
        write_json(&path, 0);
        check_usable(&path).unwrap();

        assert!(matches!(
            check_usable(&dir),
            Err(SessionFileError::NotAFile { .. })
        ));
        assert!(matches!(
            check_usable(&dir.join("missing").join("sessions.json")),
            Err(SessionFileError::Unusable { .. })
        ));
        assert!(matches!(
            check_usable(&path.join("sessions.json")),
            Err(SessionFileError::Unusable { .. })
        ));
        assert!(matches!(
            check_usable(Path::new("/")),
            Err(SessionFileError::Unusable { .. })
        ));
        // A directory no file can be created in, even by root.
        let err = check_usable(Path::new("/proc/handover-sessions.json")).unwrap_err();
        assert!(matches!(err, SessionFileError::Write { .. }), "{err}");
    }

    #[test]
    fn resume_urls_are_kept_only_when_trusted() {
        let configured = "ws://127.0.0.1:4000";
        let mut sessions = BTreeMap::from([
            (0, session(1)),
            (
                1,
                Session {
                    resume_gateway_url: "ws://127.0.0.1:4001".into(),
                    ..session(2)
                },
            ),
            (
                2,
                Session {
                    resume_gateway_url: "ws://127.0.0.1:4000/?v=10".into(),
                    ..session(3)
                },
            ),
            (
                3,
                Session {
                    resume_gateway_url: "wss://evil.example".into(),
                    ..session(4)
                },
            ),
        ]);
        assert_eq!(trust_resume_urls(&mut sessions, configured), vec![1, 3]);
        assert_eq!(
            sessions[&0].resume_gateway_url,
            "wss://gateway-us-east1-b.discord.gg"
        );
        assert_eq!(sessions[&1].resume_gateway_url, configured);
        assert_eq!(sessions[&2].resume_gateway_url, "ws://127.0.0.1:4000/?v=10");
        assert_eq!(sessions[&3].resume_gateway_url, configured);
        assert_eq!(sessions[&3].seq, 4, "the session itself is kept");
    }

    #[test]
    fn the_format_is_documented() {
        let path = temp("format");
        save(&path, 1, &BTreeMap::from([(0, session(42))]), 5).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":1,"saved_at_ms":5,"total":1,"sessions":[
                {"shard":0,"session_id":"abc","resume_gateway_url":"wss://gateway-us-east1-b.discord.gg","seq":42}
            ]})
        );
    }
}
