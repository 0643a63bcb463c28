//! Revoking tokens and disabling users, shared by the CLI (`pgtenant token revoke`, `pgtenant user …`) and the
//! admin channel (`REVOKE TOKEN | USER`, `DISABLE | ENABLE USER`). Each writes the directory only: the triggers
//! of shared migration V009 announce the change on the directory channel in the same transaction, and every
//! running pgtenant acts on the announcement (see `Proxy::on_directory_event`).

use crate::auth::revocation::Revocation;
use tokio_postgres::GenericClient;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no user with email \"{0}\"")]
    NoSuchUser(String),
    #[error("a token id (jti) must be 1 to 256 characters")]
    BadJti,
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Revokes the token whose `jti` this is; with `end_sessions`, the sessions it opened end too.
pub async fn revoke_token(
    client: &impl GenericClient,
    jti: &str,
    end_sessions: bool,
    by: &str,
) -> Result<Revocation, RevokeError> {
    if jti.is_empty() || jti.chars().count() > 256 {
        return Err(RevokeError::BadJti);
    }
    client
        .execute(
            "INSERT INTO pgtenant.revoked_tokens (jti, end_sessions, revoked_by) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO UPDATE SET end_sessions = EXCLUDED.end_sessions,
                 revoked_at = now(), revoked_by = EXCLUDED.revoked_by",
            &[&jti, &end_sessions, &by],
        )
        .await?;
    Ok(Revocation::Token {
        jti: jti.to_string(),
        end_sessions,
    })
}

/// Revokes every token issued until now to the user with this email (each of its memberships); with
/// `end_sessions`, its sessions end too. Returns one revocation per membership.
pub async fn revoke_user(
    client: &impl GenericClient,
    email: &str,
    end_sessions: bool,
    by: &str,
) -> Result<Vec<Revocation>, RevokeError> {
    let rows = client
        .query(
            "INSERT INTO pgtenant.revoked_tokens (user_id, revoked_before, end_sessions, revoked_by)
             SELECT id, now(), $2, $3 FROM pgtenant.users WHERE lower(email) = lower($1)
             ON CONFLICT (user_id) DO UPDATE SET revoked_before = EXCLUDED.revoked_before,
                 end_sessions = EXCLUDED.end_sessions, revoked_at = now(),
                 revoked_by = EXCLUDED.revoked_by
             RETURNING user_id, ceil(extract(epoch FROM revoked_before))::bigint",
            &[&email, &end_sessions, &by],
        )
        .await?;
    if rows.is_empty() {
        return Err(RevokeError::NoSuchUser(email.to_string()));
    }
    Ok(rows
        .iter()
        .map(|r| Revocation::User {
            user_id: r.get(0),
            before: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            end_sessions,
        })
        .collect())
}

/// Disables (or enables) every membership of the user with this email. Returns the user ids changed.
pub async fn set_user_disabled(
    client: &impl GenericClient,
    email: &str,
    disabled: bool,
) -> Result<Vec<Uuid>, RevokeError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pgtenant.users WHERE lower(email) = lower($1) LIMIT 1",
            &[&email],
        )
        .await?;
    if exists.is_none() {
        return Err(RevokeError::NoSuchUser(email.to_string()));
    }
    let rows = client
        .query(
            "UPDATE pgtenant.users SET disabled = $2
             WHERE lower(email) = lower($1) AND disabled IS DISTINCT FROM $2 RETURNING id",
            &[&email, &disabled],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
