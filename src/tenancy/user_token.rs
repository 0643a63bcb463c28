//! A token for a user of the directory, signed with the configured HS256 secret: what `pgtenant token` and
//! `pgtenant dev` print for psql.

use crate::auth::{mint_hs256, MintRequest, MIN_HS_SECRET_BYTES};
use crate::config::Config;
use std::time::Duration;

/// Why no token could be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintForError {
    #[error("auth.hs_secret (or PGTENANT_JWT_SECRET) of at least {MIN_HS_SECRET_BYTES} bytes is needed to mint tokens")]
    NoSecret,
    #[error("no user with email {0}")]
    NoSuchUser(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Mint(String),
}

/// Mints a token for the user with this email (`sub` its id), valid for `ttl`, an admin token if `as_admin`.
pub async fn mint_token_for(
    admin: &tokio_postgres::Client,
    config: &Config,
    email: &str,
    ttl: Duration,
    as_admin: bool,
) -> Result<String, MintForError> {
    let secret = config
        .auth
        .hs_secret
        .as_ref()
        .map(crate::secret::Secret::expose)
        .filter(|s| s.len() >= MIN_HS_SECRET_BYTES)
        .ok_or(MintForError::NoSecret)?;
    let user_id = super::find_user_by_email(admin, email)
        .await?
        .ok_or_else(|| MintForError::NoSuchUser(email.to_string()))?;
    mint_hs256(
        secret.as_bytes(),
        &MintRequest {
            sub: user_id.to_string(),
            email: Some(email.to_string()),
            ttl,
            admin: as_admin,
            audience: config.auth.audience.clone(),
            issuer: config.auth.issuer.clone(),
        },
        &config.auth.admin_claim,
    )
    .map_err(|e| MintForError::Mint(e.to_string()))
}
