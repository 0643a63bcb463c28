//! JWT verification of the password a client sends.
//!
//! A client logs in with a JSON Web Token as its password. [`TokenVerifier`] is built once at startup from the
//! `[auth]` section of the configuration ([`AuthConfig`]) and checks, for every login:
//!
//! 1. the size limit (`max_token_bytes`), before anything is decoded;
//! 2. the shape (three base64url segments, a JSON header with a string `alg`);
//! 3. the algorithm against the allowlist: `none` and anything unlisted are refused before any key is touched;
//! 4. the signature, against the keys of that algorithm's family only (an HS* token is only ever checked against
//!    the HMAC secret, never against the bytes of a public key; an RS*/PS* token against RSA keys only; ES256
//!    against P-256 keys, ES384 against P-384 keys, EdDSA against Ed25519 keys). Keys come from PEM files
//!    (`public_key_files`, no `kid`: every key of the family is tried) and from key sets (JWKS: `jwks_url`,
//!    `jwks_file`, or the issuer's discovery document), where the token's `kid` picks the key; a token without
//!    `kid` is only accepted when exactly one key could have signed it;
//! 5. the claims: `exp` required, `nbf` honoured, `aud` / `iss` when configured (with `leeway_secs` of clock
//!    skew);
//! 6. the identity: the claim at `user_claim` (default `sub`, or `email` with `identity_claim = "email"`), a
//!    non-empty string; and the organization at `org_claim`, when configured.
//!
//! Verifying stays synchronous: key sets are fetched by a background task (`jwks_fetch`) into a store
//! ([`JwksStore`]) the verifier only reads. A token naming a key the store does not have may wait for one
//! rate-limited refetch ([`TokenVerifier::verify_login`]).
//!
//! Error messages ([`TokenError`]'s `Display`) are sent to PostgreSQL clients: they never contain the token, any
//! part of it (its `kid` included), or the secret.
//!
//! [`mint_hs256`] mints development tokens (`pgtenant token`).
//!
//! The `[auth]` section is in `config` (its types and defaults) and `validate` (environment overrides,
//! checks, what the verifier is built from); `algorithms` names the JWA algorithms; `error` holds the
//! errors of the configuration and of a token.

mod algorithms;
pub mod audit;
mod claim_path;
mod config;
mod error;
mod jwks;
mod jwks_fetch;
mod jwks_store;
mod keys;
pub mod limiter;
mod mint;
pub mod revocation;
mod validate;
mod verified;
mod verify;

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod tests;

pub use config::{AuthConfig, IdentityClaim, SessionExpiry};
pub use error::{AuthConfigError, TokenError};
pub use jwks_store::{JwksSource, JwksSourceStatus, JwksStore};
pub use mint::{mint_hs256, MintRequest};
pub use verify::{Claims, Identity, OrgClaim, TokenVerifier};

/// Environment variable that overrides [`AuthConfig::hs_secret`].
pub const JWT_SECRET_ENV: &str = "PGTENANT_JWT_SECRET";

/// Default for [`AuthConfig::admin_claim`].
pub const DEFAULT_ADMIN_CLAIM: &str = "pgtenant_admin";

/// Default for [`AuthConfig::max_token_bytes`].
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;

/// Default for [`AuthConfig::leeway_secs`].
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Largest accepted [`AuthConfig::leeway_secs`] (one hour).
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// Smallest HMAC secret accepted for HS256 (RFC 7518 §3.2: at least the hash output size). HS384 needs 48 bytes,
/// HS512 64 bytes.
pub const MIN_HS_SECRET_BYTES: usize = 32;

/// Defaults of the key set settings (`jwks_*`).
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
pub const DEFAULT_JWKS_REFETCH_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_JWKS_STALE_SECS: u64 = 3600;
pub const DEFAULT_JWKS_CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_JWKS_LOGIN_WAIT_MS: u64 = 3_000;
pub const DEFAULT_JWKS_FILE_CHECK_MS: u64 = 2_000;

/// Default for [`AuthConfig::revocation_refresh_secs`].
pub const DEFAULT_REVOCATION_REFRESH_SECS: u64 = 60;
