//! What the core's test files share: close rules with exactly one code of each class.

use handover_core::CloseRules;

/// The code we close with to keep a session; also a resumable code from the peer.
pub(crate) const RESUME_CODE: u16 = 4000;
/// A peer close code after which the session is gone.
pub(crate) const NEW_SESSION_CODE: u16 = 4007;
/// A peer close code after which retrying cannot help.
pub(crate) const FATAL_CODE: u16 = 4004;

/// One new-session code and one fatal code; every other code is resumable.
pub(crate) const RULES: CloseRules = CloseRules {
    new_session: &[NEW_SESSION_CODE],
    fatal: &[FATAL_CODE],
    end_session_code: 1000,
    keep_resumable_code: RESUME_CODE,
};
