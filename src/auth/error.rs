//! The errors of the auth module: a problem with the `[auth]` configuration, found at startup, and why a
//! token was refused (the text a client is sent).

use std::path::PathBuf;

use super::JWT_SECRET_ENV;

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
    #[error("auth.jwks_file {}: {reason}", path.display())]
    JwksFile { path: PathBuf, reason: String },
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
    /// The token's key (by `kid`) is not in the key sets pgtenant has, even after a refetch (or a refetch was not
    /// allowed yet). The `kid` itself is never shown: it is token text.
    #[error(
        "the token is signed by a key this server does not know (none of the identity provider's keys matches \
         its kid and algorithm){}",
        if *refresh_failing { "; the identity provider's key set cannot be fetched right now" } else { "" }
    )]
    UnknownKey { refresh_failing: bool },
    /// The token has no `kid` and more than one configured key could have signed it.
    #[error(
        "the token does not name its signing key (no kid) and several keys of its algorithm are configured"
    )]
    KidRequired,
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
    /// The identity claim (`user_claim`, `sub` or `email` as configured) is absent, not a string, or empty.
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
        crate::error::sqlstate::INVALID_PASSWORD
    }
}
