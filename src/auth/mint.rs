//! Minting development tokens (`pgtenant token`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::validate::check_admin_claim;
use super::{TokenError, MIN_HS_SECRET_BYTES};

/// What to put in a development token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The `sub` claim (must not be empty).
    pub sub: String,
    /// The `email` claim, if any.
    pub email: Option<String>,
    /// Lifetime: `exp` = now + ttl (at least one second).
    pub ttl: Duration,
    /// Sets the admin claim to `true`.
    pub admin: bool,
    /// The `aud` claim, if any.
    pub audience: Option<String>,
    /// The `iss` claim, if any.
    pub issuer: Option<String>,
}

/// Mints an HS256 token with `secret` (at least 32 bytes): claims `sub`, `iat`, `exp`, a random `jti`, and
/// `email`, `aud`, `iss`, `<admin_claim>: true` when requested.
pub fn mint_hs256(
    secret: &[u8],
    req: &MintRequest,
    admin_claim: &str,
) -> Result<String, TokenError> {
    if secret.len() < MIN_HS_SECRET_BYTES {
        return Err(TokenError::Mint(format!(
            "the secret must be at least {MIN_HS_SECRET_BYTES} bytes"
        )));
    }
    if req.sub.trim().is_empty() {
        return Err(TokenError::Mint(
            "the subject (sub) must not be empty".to_owned(),
        ));
    }
    if req.ttl.as_secs() == 0 {
        return Err(TokenError::Mint(
            "the lifetime must be at least one second".to_owned(),
        ));
    }
    if req.admin {
        check_admin_claim(admin_claim).map_err(|e| TokenError::Mint(e.to_string()))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Mint("the system clock is before 1970".to_owned()))?
        .as_secs();
    let exp = now
        .checked_add(req.ttl.as_secs())
        .ok_or_else(|| TokenError::Mint("the lifetime is too long".to_owned()))?;

    let mut claims = Map::new();
    claims.insert("sub".to_owned(), Value::from(req.sub.clone()));
    if let Some(email) = &req.email {
        claims.insert("email".to_owned(), Value::from(email.clone()));
    }
    if let Some(aud) = &req.audience {
        claims.insert("aud".to_owned(), Value::from(aud.clone()));
    }
    if let Some(iss) = &req.issuer {
        claims.insert("iss".to_owned(), Value::from(iss.clone()));
    }
    claims.insert("iat".to_owned(), Value::from(now));
    // A token id, so one token can be revoked (`pgtenant token revoke --jti`).
    claims.insert(
        "jti".to_owned(),
        Value::from(uuid::Uuid::new_v4().simple().to_string()),
    );
    claims.insert("exp".to_owned(), Value::from(exp));
    if req.admin {
        claims.insert(admin_claim.to_owned(), Value::Bool(true));
    }

    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| TokenError::Mint(format!("signing failed ({:?})", e.kind())))
}
