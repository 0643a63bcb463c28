//! How long a session may last after its login: until its token expires (`auth.session_expiry = "end"`) and at
//! most `server.max_session_secs`. Either ends the session at its first idle point after the deadline (between
//! transactions, ReadyForQuery status idle, never inside a transaction), through the relays' drain signal, the
//! one a shutdown uses; the client is told why with a FATAL error.

use crate::auth::SessionExpiry;
use crate::config::Config;
use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::refusal::Refusal;
use crate::sessions::SessionHandle;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deadlines further than this (a century) are taken as this: timers and instants stay far from overflowing.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);

/// When a session must end, and what its client is told.
#[derive(Debug, Clone)]
pub struct Deadline {
    /// From the session's start.
    pub after: Duration,
    pub reason: DeadlineReason,
}

/// Why a session's deadline ends it (the client's error is made only when it does: every session with a
/// deadline holds one for its whole life).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineReason {
    TokenExpired { expired_at: u64 },
    MaxSessionDuration { secs: u64 },
}

impl DeadlineReason {
    pub fn error(self) -> PgError {
        match self {
            DeadlineReason::TokenExpired { expired_at } => {
                Refusal::TokenExpired { expired_at }.to_fatal()
            }
            DeadlineReason::MaxSessionDuration { secs } => {
                Refusal::MaxSessionDuration { secs }.to_fatal()
            }
        }
    }
}

/// The session's deadline, if it has one: the earlier of its token's expiry (with `session_expiry = "end"`: the
/// first second in which a login with the token is refused, `exp` + `auth.leeway_secs` + 1, as the verifier
/// compares whole seconds) and `server.max_session_secs` (0: none).
pub fn deadline(config: &Config, token_expires_at: u64, now: SystemTime) -> Option<Deadline> {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let expiry = (config.auth.session_expiry == SessionExpiry::End).then(|| {
        let at = token_expires_at
            .saturating_add(config.auth.leeway_secs)
            .saturating_add(1);
        Deadline {
            // Integer arithmetic and a cap: `exp` is the token's, however far ahead it says.
            after: Duration::from_secs(at)
                .saturating_sub(since_epoch)
                .min(LONGEST),
            reason: DeadlineReason::TokenExpired {
                expired_at: token_expires_at,
            },
        }
    });
    let cap = match config.server.max_session_secs {
        0 => None,
        secs => Some(Deadline {
            after: Duration::from_secs(secs).min(LONGEST),
            reason: DeadlineReason::MaxSessionDuration { secs },
        }),
    };
    match (expiry, cap) {
        (Some(e), Some(c)) => Some(if e.after <= c.after { e } else { c }),
        (e, c) => e.or(c),
    }
}

/// The relay's drain signal for one session: completes when `drain` does (shutdown), or at the deadline,
/// after noting the deadline's reason on the session (told to the client when the relay ends at the next
/// idle point).
#[allow(clippy::manual_async_fn)] // On purpose: see the block below.
pub fn drain_or_deadline<'a>(
    drain: impl Future<Output = ()> + 'a,
    deadline: Option<Deadline>,
    session: &'a SessionHandle,
) -> impl Future<Output = ()> + 'a {
    // A block, not an async fn: an async fn keeps a copy of each argument beside its body's, and this
    // future is held for the session's whole life.
    async move {
        let Some(deadline) = &deadline else {
            return drain.await;
        };
        tokio::select! {
            _ = drain => {}
            _ = tokio::time::sleep(deadline.after) => session.set_reason(deadline.reason.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(expiry: SessionExpiry, max_session_secs: u64, leeway: u64) -> Config {
        let mut c = Config::default();
        c.auth.session_expiry = expiry;
        c.auth.leeway_secs = leeway;
        c.server.max_session_secs = max_session_secs;
        c
    }

    #[test]
    fn the_earlier_of_expiry_and_cap_wins() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(deadline(&config(SessionExpiry::Ignore, 0, 30), 1_010, now).is_none());
        let d = deadline(&config(SessionExpiry::End, 0, 5), 1_010, now).expect("expiry");
        assert_eq!(d.after, Duration::from_secs(16));
        assert_eq!(d.reason.error().code, "28P01");
        let d = deadline(&config(SessionExpiry::End, 3, 5), 1_010, now).expect("cap first");
        assert_eq!(d.after, Duration::from_secs(3));
        assert_eq!(d.reason.error().code, "57P01");
        let d = deadline(&config(SessionExpiry::Ignore, 3, 5), 1_010, now).expect("cap");
        assert_eq!(d.after, Duration::from_secs(3));
        // A token that says it never expires, and a cap of u64::MAX seconds: a century.
        let d = deadline(&config(SessionExpiry::End, u64::MAX, 30), u64::MAX, now).expect("far");
        assert_eq!(d.after, LONGEST);
        // A token already past its exp (within the leeway) ends the session at its first idle point.
        let d = deadline(&config(SessionExpiry::End, 0, 0), 999, now).expect("past");
        assert_eq!(d.after, Duration::ZERO);
    }
}
