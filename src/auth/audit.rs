//! The login audit: one structured `tracing` line per login attempt (target `pgtenant::audit`: tenant, user
//! id, source address, outcome, reason, the token's `jti` and `kid`, never the token), counters of refusals by
//! reason (`/metrics`), and a bounded ring of recent refusals (admin `SHOW LOGINS`).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;
use uuid::Uuid;

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Too many failed logins from the source address.
    RateLimitedAddress,
    /// Too many failed logins for the user name, from anywhere.
    RateLimitedIdentity,
    /// The tenant's logins per second (`login.tenant_logins_per_sec`).
    RateLimitedTenant,
    /// A token sent over unencrypted TCP from the network.
    Plaintext,
    /// The token did not verify (signature, shape, size, algorithm, audience, issuer, claims).
    BadToken,
    Expired,
    /// Signed by a key this server does not know.
    UnknownKey,
    Revoked,
    /// No such user, or not a member of the organization the token names.
    UnknownUser,
    DisabledUser,
    /// Suspended, archived or still being set up.
    TenantClosed,
    /// An ordinary token at the admin database.
    NotAdmin,
    /// A database name that is not the user's.
    UnknownDatabase,
    /// Too many clients, or no server connection in time.
    TooManyClients,
    /// The directory or the upstream cannot be reached.
    Unavailable,
    /// Anything else (protocol errors, bad startup options).
    Other,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::RateLimitedAddress,
        Reason::RateLimitedIdentity,
        Reason::RateLimitedTenant,
        Reason::Plaintext,
        Reason::BadToken,
        Reason::Expired,
        Reason::UnknownKey,
        Reason::Revoked,
        Reason::UnknownUser,
        Reason::DisabledUser,
        Reason::TenantClosed,
        Reason::NotAdmin,
        Reason::UnknownDatabase,
        Reason::TooManyClients,
        Reason::Unavailable,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimitedAddress => "rate_limited_address",
            Reason::RateLimitedIdentity => "rate_limited_identity",
            Reason::RateLimitedTenant => "rate_limited_tenant",
            Reason::Plaintext => "plaintext",
            Reason::BadToken => "bad_token",
            Reason::Expired => "expired",
            Reason::UnknownKey => "unknown_key",
            Reason::Revoked => "revoked",
            Reason::UnknownUser => "unknown_user",
            Reason::DisabledUser => "disabled_user",
            Reason::TenantClosed => "tenant_closed",
            Reason::NotAdmin => "not_admin",
            Reason::UnknownDatabase => "unknown_database",
            Reason::TooManyClients => "too_many_clients",
            Reason::Unavailable => "unavailable",
            Reason::Other => "other",
        }
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// A failure that counts toward the login limits: the client could not prove who it is. Refusals by the
    /// limits themselves, and those that are pgtenant's or the tenant's state, do not.
    pub fn is_credential_failure(self) -> bool {
        matches!(
            self,
            Reason::BadToken
                | Reason::Expired
                | Reason::UnknownKey
                | Reason::Revoked
                | Reason::UnknownUser
                | Reason::DisabledUser
                | Reason::NotAdmin
        )
    }
}

/// What is known of one login attempt, filled in as the login goes (never the token itself).
#[derive(Clone, Debug)]
pub struct LoginAttempt {
    pub peer: IpAddr,
    /// The startup packet's `user` (at most 128 characters kept).
    pub user_name: String,
    pub tenant: Option<String>,
    pub user_id: Option<Uuid>,
    pub jti: Option<String>,
    pub kid: Option<String>,
    pub admin: bool,
    /// Set where a login is refused.
    pub reason: Option<Reason>,
}

/// A token id for logs and `SHOW LOGINS`: at most 128 characters, printable ASCII only.
pub fn loggable(id: &str) -> String {
    const MAX: usize = 128;
    if id.len() <= MAX && id.bytes().all(|b| b.is_ascii_graphic()) {
        return id.to_string();
    }
    id.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX)
        .collect()
}

impl LoginAttempt {
    pub fn new(peer: IpAddr) -> Self {
        LoginAttempt {
            peer,
            user_name: String::new(),
            tenant: None,
            user_id: None,
            jti: None,
            kid: None,
            admin: false,
            reason: None,
        }
    }

    pub fn set_user_name(&mut self, name: &str) {
        let end = name
            .char_indices()
            .nth(128)
            .map_or(name.len(), |(at, _)| at);
        self.user_name = name[..end].to_string();
    }

    /// Notes the refusal's reason and hands the error back (for `return Err(attempt.refuse(…))`).
    pub fn refuse<E>(&mut self, reason: Reason, error: E) -> E {
        self.reason = Some(reason);
        error
    }
}

/// One refused login, as `SHOW LOGINS` lists it.
#[derive(Clone, Debug)]
pub struct RefusedLogin {
    pub at: SystemTime,
    pub reason: Reason,
    pub sqlstate: String,
    pub peer: IpAddr,
    pub user_name: String,
    pub tenant: Option<String>,
    pub jti: Option<String>,
    pub kid: Option<String>,
}

/// Counters and the ring of recent refusals of one pgtenant process.
pub struct LoginAudit {
    accepted: AtomicU64,
    refused: [AtomicU64; Reason::ALL.len()],
    recent: Mutex<VecDeque<RefusedLogin>>,
}

impl Default for LoginAudit {
    fn default() -> Self {
        LoginAudit {
            accepted: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl LoginAudit {
    /// Logs the attempt's line and counts it; a refusal (with `sqlstate`) is also kept among the `keep` most
    /// recent ones.
    pub fn record(&self, attempt: &LoginAttempt, refused_with: Option<&str>, keep: usize) {
        let outcome = if refused_with.is_some() {
            "refused"
        } else {
            "ok"
        };
        let reason = attempt.reason.map(Reason::as_str).unwrap_or("");
        let mut user_id_text = uuid::Uuid::encode_buffer();
        let user_id: &str = match attempt.user_id {
            Some(id) => id.hyphenated().encode_lower(&mut user_id_text),
            None => "",
        };
        tracing::info!(
            target: "pgtenant::audit",
            peer = %crate::addr_text::AddrText::ip(attempt.peer),
            // Text as &str, written quoted and escaped as `?` would (a visitor's record_str, no Debug call).
            user_name = attempt.user_name.as_str(),
            tenant = attempt.tenant.as_deref().unwrap_or(""),
            user_id = %user_id,
            admin = attempt.admin,
            outcome,
            reason,
            sqlstate = refused_with.unwrap_or(""),
            jti = attempt.jti.as_deref().unwrap_or(""),
            kid = attempt.kid.as_deref().unwrap_or(""),
            "login"
        );
        let Some(sqlstate) = refused_with else {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let reason = attempt.reason.unwrap_or(Reason::Other);
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        if keep == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent.len() >= keep {
            recent.pop_front();
        }
        recent.push_back(RefusedLogin {
            at: SystemTime::now(),
            reason,
            sqlstate: sqlstate.to_string(),
            peer: attempt.peer,
            user_name: attempt.user_name.clone(),
            tenant: attempt.tenant.clone(),
            jti: attempt.jti.clone(),
            kid: attempt.kid.clone(),
        });
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Refusals so far, by reason (every reason, zeros included).
    pub fn refused(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.refused[r.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// The recent refusals, newest first.
    pub fn recent(&self) -> Vec<RefusedLogin> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

/// The `kid` and `jti` a token claims, read without verifying it: for the audit line of a refused token only
/// (made loggable; `None` when the token is not even shaped like a JWT).
pub fn unverified_ids(token: &str) -> (Option<String>, Option<String>) {
    use base64::Engine;
    let mut parts = token.trim().split('.');
    let decode = |part: Option<&str>| -> Option<serde_json::Map<String, serde_json::Value>> {
        let part = part?;
        if part.len() > 16 * 1024 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    };
    let header = decode(parts.next());
    let payload = decode(parts.next());
    let field = |map: &Option<serde_json::Map<String, serde_json::Value>>, name: &str| {
        map.as_ref()
            .and_then(|m| m.get(name))
            .and_then(|v| v.as_str())
            .map(loggable)
            .filter(|s| !s.is_empty())
    };
    (field(&header, "kid"), field(&payload, "jti"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::{with_subscriber, Captured};

    fn attempt(reason: Option<Reason>) -> LoginAttempt {
        LoginAttempt {
            reason,
            ..LoginAttempt::new("127.0.0.1".parse().expect("ip"))
        }
    }

    #[test]
    fn refusals_are_counted_by_reason_and_the_ring_is_bounded() {
        // It logs through the callsite `one_structured_line_per_login` captures.
        let _one_at_a_time = crate::log_capture::exclusive();
        let audit = LoginAudit::default();
        for _ in 0..5 {
            audit.record(&attempt(Some(Reason::BadToken)), Some("28P01"), 3);
        }
        audit.record(&attempt(Some(Reason::RateLimitedAddress)), Some("53300"), 3);
        audit.record(&attempt(None), None, 3);
        assert_eq!(audit.accepted(), 1);
        let counts: std::collections::HashMap<_, _> = audit.refused().into_iter().collect();
        assert_eq!(counts[&Reason::BadToken], 5);
        assert_eq!(counts[&Reason::RateLimitedAddress], 1);
        assert_eq!(counts[&Reason::Expired], 0);
        let recent = audit.recent();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0].reason, Reason::RateLimitedAddress);
        assert_eq!(recent[0].sqlstate, "53300");
    }

    #[test]
    fn ids_of_a_token_are_read_unverified_and_made_loggable() {
        use base64::Engine;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"key-1\nforged line"}"#),
            enc(r#"{"jti":"abc","sub":"x"}"#)
        );
        assert_eq!(
            unverified_ids(&token),
            (Some("key-1forgedline".into()), Some("abc".into()))
        );
        assert_eq!(unverified_ids("garbage"), (None, None));
        assert_eq!(unverified_ids(""), (None, None));
    }

    #[test]
    fn logged_ids_and_names_are_bounded_to_128_characters() {
        assert_eq!(loggable("plain-id"), "plain-id");
        assert_eq!(loggable(&"a".repeat(200)), "a".repeat(128));
        assert_eq!(loggable("a b\u{e9}c"), "abc");
        let mut attempt = attempt(None);
        attempt.set_user_name("alice");
        assert_eq!(attempt.user_name, "alice");
        attempt.set_user_name(&"\u{e9}".repeat(130));
        assert_eq!(attempt.user_name, "\u{e9}".repeat(128));
    }

    #[test]
    fn one_structured_line_per_login() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let audit = LoginAudit::default();
        let user_id = Uuid::new_v4();
        with_subscriber(subscriber.into(), || {
            let mut attempt = attempt(Some(Reason::Revoked));
            attempt.set_user_name("ann@example.com");
            attempt.tenant = Some("acme".into());
            attempt.user_id = Some(user_id);
            attempt.jti = Some("jti-1".into());
            attempt.kid = Some("kid-1".into());
            audit.record(&attempt, Some("28P01"), 10);
        });
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        for field in [
            "pgtenant::audit",
            "login",
            "peer=127.0.0.1",
            "user_name=\"ann@example.com\"",
            "tenant=\"acme\"",
            &format!("user_id={user_id}"),
            "outcome=\"refused\"",
            "reason=\"revoked\"",
            "sqlstate=\"28P01\"",
            "jti=\"jti-1\"",
            "kid=\"kid-1\"",
        ] {
            assert!(text.contains(field), "{field} missing: {text}");
        }
    }

    #[test]
    fn only_credential_failures_count_toward_limits() {
        assert!(Reason::BadToken.is_credential_failure());
        assert!(!Reason::RateLimitedAddress.is_credential_failure());
        assert!(!Reason::Unavailable.is_credential_failure());
        assert_eq!(Reason::ALL.len(), Reason::ALL.map(Reason::as_str).len());
    }
}
