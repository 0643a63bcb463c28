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
//!    against P-256 keys, ES384 against P-384 keys, EdDSA against Ed25519 keys);
//! 5. the claims: `exp` required, `nbf` honoured, `aud` / `iss` when configured (with `leeway_secs` of clock
//!    skew);
//! 6. the identity claim (`sub` or `email`), which must be a non-empty string.
//!
//! Error messages ([`TokenError`]'s `Display`) are sent to PostgreSQL clients: they never contain the token, any
//! part of it, or the secret.
//!
//! [`mint_hs256`] mints development tokens (`pgtenant token`).

mod keys;
mod mint;
mod verify;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

pub use mint::{mint_hs256, MintRequest};
pub use verify::{Claims, Identity, TokenVerifier};

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

/// Claim names that cannot serve as the admin claim (they have another meaning in a token).
const RESERVED_CLAIMS: &[&str] = &[
    "sub",
    "email",
    "email_verified",
    "exp",
    "nbf",
    "iat",
    "aud",
    "iss",
    "jti",
    "roles",
];

/// The algorithms pgtenant knows, by their JWA name (RFC 7518).
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm of a JWA name (exact, case-sensitive match); `None` for `none` and unknown names.
fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The JWA name of an algorithm.
fn algorithm_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map(|(n, _)| *n)
        .unwrap_or("unknown")
}

/// Minimum HMAC secret length for an HS* algorithm (the hash output size).
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_HS_SECRET_BYTES,
    }
}

/// Which claim names the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityClaim {
    /// The `sub` claim: [`Identity::UserId`].
    #[default]
    Sub,
    /// The `email` claim: [`Identity::Email`].
    Email,
}

impl IdentityClaim {
    /// The claim's name in a token.
    pub fn claim_name(self) -> &'static str {
        match self {
            IdentityClaim::Sub => "sub",
            IdentityClaim::Email => "email",
        }
    }
}

/// The `[auth]` section of the config file.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Allowed algorithms, e.g. `["HS256"]` (default `["HS256"]`). JWA names: "HS256", "HS384", "HS512", "RS256",
    /// "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA". "none" or an unknown name is a
    /// configuration error.
    pub algorithms: Vec<String>,
    /// HMAC secret for HS* (literal bytes of the string). Overridden by the environment variable
    /// `PGTENANT_JWT_SECRET` (see [`AuthConfig::apply_env`]). At least 32 bytes for HS256 (48 for HS384, 64 for
    /// HS512).
    pub hs_secret: Option<String>,
    /// PEM files with public keys (RSA, EC P-256/P-384, Ed25519) for RS*/PS*/ES*/EdDSA. A file may hold several
    /// `PUBLIC KEY` / `RSA PUBLIC KEY` blocks (key rotation); private keys and certificates are refused.
    pub public_key_files: Vec<PathBuf>,
    /// Claim that names the user: "sub" (default) or "email".
    pub identity_claim: IdentityClaim,
    /// When set, the token's `aud` must be present and match. When unset, a token carrying `aud` is still
    /// accepted.
    pub audience: Option<String>,
    /// When set, the token's `iss` must be present and match.
    pub issuer: Option<String>,
    /// Tokens longer than this are refused before decoding (default 8192).
    pub max_token_bytes: usize,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30, at most 3600).
    pub leeway_secs: u64,
    /// Claim marking an administrator (default "pgtenant_admin"): a top-level claim of this name that is `true` or
    /// `"true"`, or this value inside a top-level `roles` array. Exposed as [`Claims::is_admin`].
    pub admin_claim: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithms: vec!["HS256".to_owned()],
            hs_secret: None,
            public_key_files: Vec::new(),
            identity_claim: IdentityClaim::Sub,
            audience: None,
            issuer: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            admin_claim: DEFAULT_ADMIN_CLAIM.to_owned(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithms", &self.algorithms)
            .field("hs_secret", &self.hs_secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_files", &self.public_key_files)
            .field("identity_claim", &self.identity_claim)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("leeway_secs", &self.leeway_secs)
            .field("admin_claim", &self.admin_claim)
            .finish()
    }
}

impl AuthConfig {
    /// Applies environment overrides: `PGTENANT_JWT_SECRET`, when set and not empty, replaces `hs_secret`.
    /// An empty or non-UTF-8 value is ignored (with a warning).
    pub fn apply_env(&mut self) {
        self.apply_env_from(|name| std::env::var_os(name));
    }

    /// [`AuthConfig::apply_env`] with an injectable lookup (tests must not touch the process environment).
    pub(crate) fn apply_env_from(&mut self, lookup: impl Fn(&str) -> Option<OsString>) {
        let Some(value) = lookup(JWT_SECRET_ENV) else {
            return;
        };
        match value.into_string() {
            Ok(s) if s.is_empty() => {
                tracing::warn!("{JWT_SECRET_ENV} is set but empty; ignoring it");
            }
            Ok(s) => self.hs_secret = Some(s),
            Err(_) => {
                tracing::warn!("{JWT_SECRET_ENV} is not valid UTF-8; ignoring it");
            }
        }
    }

    /// Checks everything that does not need the filesystem: the algorithm list, the HMAC secret when an HS*
    /// algorithm is allowed, and the numeric and textual settings. [`TokenVerifier::new`] calls it, and also
    /// reads and checks the key files.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        let algs = self.parsed_algorithms()?;
        for alg in &algs {
            if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                let secret = self
                    .hs_secret
                    .as_deref()
                    .ok_or(AuthConfigError::MissingHsSecret {
                        alg: algorithm_name(*alg),
                    })?;
                let min = min_secret_len(*alg);
                if secret.len() < min {
                    return Err(AuthConfigError::HsSecretTooShort {
                        alg: algorithm_name(*alg),
                        min,
                    });
                }
            }
        }
        if self.max_token_bytes == 0 {
            return Err(AuthConfigError::Invalid {
                field: "max_token_bytes",
                reason: "must be greater than 0".to_owned(),
            });
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::Invalid {
                field: "leeway_secs",
                reason: format!("must be at most {MAX_LEEWAY_SECS}"),
            });
        }
        check_admin_claim(&self.admin_claim)?;
        if self
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(AuthConfigError::Invalid {
                field: "audience",
                reason: "must not be empty (leave it out to accept any audience)".to_owned(),
            });
        }
        if self.issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(AuthConfigError::Invalid {
                field: "issuer",
                reason: "must not be empty (leave it out to accept any issuer)".to_owned(),
            });
        }
        Ok(())
    }

    /// The allowed algorithms, deduplicated, in configuration order.
    fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, AuthConfigError> {
        if self.algorithms.is_empty() {
            return Err(AuthConfigError::NoAlgorithms);
        }
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            if name.trim().eq_ignore_ascii_case("none") {
                return Err(AuthConfigError::NoneAlgorithm);
            }
            let alg = algorithm_from_name(name.trim())
                .ok_or_else(|| AuthConfigError::UnknownAlgorithm(name.clone()))?;
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }
}

/// Checks an admin claim name (config and minting).
fn check_admin_claim(name: &str) -> Result<(), AuthConfigError> {
    if name.trim().is_empty() {
        return Err(AuthConfigError::Invalid {
            field: "admin_claim",
            reason: "must not be empty".to_owned(),
        });
    }
    if RESERVED_CLAIMS.contains(&name) {
        return Err(AuthConfigError::Invalid {
            field: "admin_claim",
            reason: format!("`{name}` is a reserved claim name"),
        });
    }
    Ok(())
}

/// A problem with the `[auth]` configuration, found at startup.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.algorithms is empty: list at least one algorithm, e.g. [\"HS256\"]")]
    NoAlgorithms,
    #[error("auth.algorithms must not contain \"none\": unsigned tokens are never accepted")]
    NoneAlgorithm,
    #[error(
        "auth.algorithms: unknown algorithm {0:?} (expected one of HS256, HS384, HS512, RS256, RS384, RS512, \
         PS256, PS384, PS512, ES256, ES384, EdDSA)"
    )]
    UnknownAlgorithm(String),
    #[error("auth.algorithms allows {alg} but no HMAC secret is set (auth.hs_secret or {JWT_SECRET_ENV})")]
    MissingHsSecret { alg: &'static str },
    #[error("the HMAC secret is too short for {alg}: it needs at least {min} bytes")]
    HsSecretTooShort { alg: &'static str, min: usize },
    #[error("auth.algorithms allows {alg} but auth.public_key_files has no {kind} public key")]
    NoKeyForAlgorithm {
        alg: &'static str,
        kind: &'static str,
    },
    #[error("cannot read public key file {}: {source}", path.display())]
    ReadKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("public key file {} contains no PEM public key", path.display())]
    NoKeysInFile { path: PathBuf },
    #[error(
        "public key file {} contains a private key: give pgtenant only the public key \
         (e.g. `openssl pkey -in KEY -pubout`)",
        path.display()
    )]
    PrivateKeyInFile { path: PathBuf },
    #[error(
        "public key file {} contains a certificate: extract its public key \
         (e.g. `openssl x509 -in CERT -pubkey -noout`)",
        path.display()
    )]
    CertificateInFile { path: PathBuf },
    #[error("public key file {}, key #{index}: {reason}", path.display())]
    BadKey {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("auth.{field} {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Why a token was refused (or could not be minted).
///
/// The `Display` text is sent to the PostgreSQL client: it never contains the token, any part of it, any claim
/// value, or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than `max_token_bytes`; nothing was decoded.
    #[error("the token is too large")]
    TooLarge,
    /// Not a JWT: wrong number of segments, bad base64url, bad JSON, a claim of the wrong type.
    #[error("the password is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is `none`, unknown, or not in the allowlist. Holds the algorithm's JWA name from a fixed
    /// vocabulary ("none", "HS256", …, or "unrecognized"), never text copied from the token.
    #[error("the token's signing algorithm ({0}) is not accepted by this server")]
    AlgorithmNotAllowed(String),
    /// No configured key of the algorithm's family verifies the signature.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` is missing (when an audience is configured) or does not match.
    #[error("the token's audience does not match this server")]
    WrongAudience,
    /// `iss` is missing (when an issuer is configured) or does not match.
    #[error("the token's issuer is not accepted by this server")]
    WrongIssuer,
    /// The token has no `exp` claim: tokens that never expire are refused.
    #[error("the token has no expiry (exp claim); tokens without one are refused")]
    MissingExpiry,
    /// The identity claim (`sub` or `email`, as configured) is absent, not a string, or empty.
    #[error("the token does not identify the user (its identity claim is missing or empty)")]
    MissingIdentity,
    /// Identity by `email`, and the token says `"email_verified": false`.
    #[error("the token's email address is not verified")]
    EmailNotVerified,
    /// Minting failed (development tokens only).
    #[error("cannot mint token: {0}")]
    Mint(String),
}

impl TokenError {
    /// The SQLSTATE to report to the client: `28P01` (invalid_password) for every token problem.
    pub fn sqlstate(&self) -> &'static str {
        "28P01"
    }
}
