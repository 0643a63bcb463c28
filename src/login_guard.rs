//! The checks a login passes besides the token's signature and the directory, and what is kept of it: the
//! failed-login limits ([`crate::auth::limiter`]), the revocation list ([`crate::auth::revocation`]), the
//! per-tenant login rate, and the audit line and counters ([`crate::auth::audit`]). `session::login` calls
//! these at the matching steps; each refusal notes its reason on the [`LoginAttempt`].

use crate::auth::audit::{loggable, LoginAttempt, Reason};
use crate::auth::limiter::{LimitKind, Limited};
use crate::auth::revocation::{self, AsyncLoad, RevocationError, Revoked, Rows};
use crate::auth::{Claims, TokenError};
use crate::directory::{Directory, User};
use crate::error::UserFacing;
use crate::protocol::{sqlstate, PgError};
use crate::proxy::Proxy;
use crate::refusal::Refusal;
use std::time::{Duration, Instant};

/// The facts of the login token a session keeps (expiry, revocation).
#[derive(Clone, Debug, Default)]
pub struct TokenFacts {
    pub expires_at: u64,
    pub issued_at: Option<u64>,
    pub jti: Option<String>,
}

impl TokenFacts {
    pub fn of(claims: &Claims) -> Self {
        TokenFacts {
            expires_at: claims.expires_at,
            issued_at: claims.issued_at,
            jti: claims.jti.clone(),
        }
    }
}

fn limited_error(limited: Limited) -> PgError {
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let what = match limited.kind {
        LimitKind::Address => "too many failed logins from this address",
        LimitKind::Identity => "too many failed logins for this user name",
        LimitKind::Tenant => "too many logins for this organization right now",
    };
    Refusal::LoginsLimited {
        what,
        retry_secs: secs,
    }
    .to_fatal()
}

/// Before the token is asked for: refused while the address or the user name has used up its failed logins.
pub fn check_limits(proxy: &Proxy, attempt: &mut LoginAttempt) -> Result<(), PgError> {
    let config = proxy.config();
    proxy
        .limiter
        .check(
            &config.login,
            attempt.peer,
            &attempt.user_name,
            Instant::now(),
        )
        .map_err(|limited| {
            let reason = match limited.kind {
                LimitKind::Identity => Reason::RateLimitedIdentity,
                _ => Reason::RateLimitedAddress,
            };
            attempt.refuse(reason, limited_error(limited))
        })
}

/// The reason of a token the verifier refused.
pub fn token_refused(attempt: &mut LoginAttempt, error: &TokenError, token: &str) -> PgError {
    let (kid, jti) = crate::auth::audit::unverified_ids(token);
    attempt.kid = kid;
    attempt.jti = jti;
    let reason = match error {
        TokenError::Expired => Reason::Expired,
        TokenError::UnknownKey { .. } => Reason::UnknownKey,
        _ => Reason::BadToken,
    };
    attempt.refuse(reason, crate::error::UserFacing::to_fatal(error))
}

struct FromDirectory<'a>(&'a Directory);

impl AsyncLoad for FromDirectory<'_> {
    async fn load(self) -> Result<Rows, RevocationError> {
        let conn = self.0.admin().await.map_err(|e| match e {
            crate::directory::DirectoryError::Unavailable(reason) => {
                RevocationError::Unreachable(reason)
            }
            other => RevocationError::Unavailable(other.to_string()),
        })?;
        revocation::load_rows(&conn).await
    }
}

fn revoked_error(revoked: Revoked) -> PgError {
    Refusal::TokenRevoked {
        whole_user: revoked == Revoked::User,
    }
    .to_fatal()
}

/// After the signature: the token is not revoked by its `jti`. Notes the token's ids on the attempt.
pub async fn check_token(
    proxy: &Proxy,
    attempt: &mut LoginAttempt,
    claims: &Claims,
) -> Result<(), PgError> {
    attempt.jti = claims.jti.as_deref().map(loggable);
    attempt.kid = claims.kid.as_deref().map(loggable);
    attempt.admin = claims.is_admin;
    let refresh = Duration::from_secs(proxy.config().auth.revocation_refresh_secs);
    if let Err(e) = proxy
        .revocations
        .ensure_fresh(refresh, FromDirectory(&proxy.directory))
        .await
    {
        tracing::error!(error = %e, "revocation list unavailable");
        // Why it cannot connect (server down, TLS refused) helps the client; a failed query's text stays
        // in the log.
        let why = match e {
            RevocationError::Unreachable(reason) => Some(reason),
            RevocationError::Unavailable(_) => None,
        };
        let refusal = Refusal::DirectoryUnreachable { why }.to_fatal();
        return Err(attempt.refuse(Reason::Unavailable, refusal));
    }
    match proxy.revocations.token_revoked(claims.jti.as_deref()) {
        Some(revoked) => Err(attempt.refuse(Reason::Revoked, revoked_error(revoked))),
        None => Ok(()),
    }
}

/// After the directory: the user's tokens are not revoked, and the tenant's login rate has room.
pub fn check_user(
    proxy: &Proxy,
    attempt: &mut LoginAttempt,
    user: &User,
    claims: &Claims,
) -> Result<(), PgError> {
    attempt.tenant = Some(user.tenant.slug.clone());
    attempt.user_id = Some(user.id);
    if let Some(revoked) = proxy.revocations.user_revoked(user.id, claims.issued_at) {
        return Err(attempt.refuse(Reason::Revoked, revoked_error(revoked)));
    }
    proxy
        .limiter
        .tenant_login(&proxy.config().login, user.tenant.id, Instant::now())
        .map_err(|limited| attempt.refuse(Reason::RateLimitedTenant, limited_error(limited)))
}

/// The reason of a refusal whose site did not note one, from its SQLSTATE.
fn reason_of(code: &str) -> Reason {
    match code {
        sqlstate::INVALID_PASSWORD => Reason::BadToken,
        sqlstate::INVALID_AUTHORIZATION => Reason::UnknownUser,
        sqlstate::INSUFFICIENT_PRIVILEGE => Reason::NotAdmin,
        sqlstate::CANNOT_CONNECT_NOW => Reason::TenantClosed,
        sqlstate::INVALID_CATALOG_NAME => Reason::UnknownDatabase,
        sqlstate::TOO_MANY_CONNECTIONS => Reason::TooManyClients,
        sqlstate::CONNECTION_FAILURE => Reason::Unavailable,
        _ => Reason::Other,
    }
}

/// Logs and counts the login's outcome; a credential failure also counts against the limits.
pub fn record(proxy: &Proxy, attempt: &mut LoginAttempt, refused: Option<&PgError>) {
    let config = proxy.config();
    if let Some(error) = refused {
        let reason = *attempt.reason.get_or_insert_with(|| reason_of(&error.code));
        if reason.is_credential_failure() {
            proxy.limiter.failed(
                &config.login,
                attempt.peer,
                &attempt.user_name,
                Instant::now(),
            );
        }
    }
    proxy.logins.record(
        attempt,
        refused.map(|e| e.code.as_ref()),
        config.login.recent_refusals,
    );
}
