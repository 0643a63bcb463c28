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

pub mod audit;
mod claim_path;
mod jwks;
mod jwks_fetch;
mod jwks_store;
mod keys;
pub mod limiter;
mod mint;
pub mod revocation;
mod verify;

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer};

use claim_path::ClaimPath;
use jwks_store::JwksSettings;

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

/// What happens to a session whose token expires after the login (`auth.session_expiry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionExpiry {
    /// The token is checked at login only, as PostgreSQL and RDS check a password (or an IAM token).
    #[default]
    Ignore,
    /// The session ends at its first idle point (between transactions) once `exp` + `leeway_secs` has
    /// passed, with a FATAL `28P01`.
    End,
}

impl SessionExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionExpiry::Ignore => "ignore",
            SessionExpiry::End => "end",
        }
    }
}

/// Default for [`AuthConfig::revocation_refresh_secs`].
pub const DEFAULT_REVOCATION_REFRESH_SECS: u64 = 60;

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
    /// Where the user's id (or email, with `identity_claim = "email"`) is in the token, as a claim path
    /// (`https://app.example.com/claims.user_id`; see `claim_path`). Default: `sub`, or `email`.
    pub user_claim: Option<String>,
    /// Claim path naming the user's organization (e.g. `org_id`): when set, tokens must carry it and it must name
    /// (by id or slug) an organization the user belongs to.
    pub org_claim: Option<String>,
    /// Key set (JWKS) URLs: one string or a list. `https://`; `http://` only to loopback unless
    /// `jwks_allow_http`.
    #[serde(deserialize_with = "one_or_many")]
    pub jwks_url: Vec<String>,
    /// A key set (JWKS JSON) file, re-read when it changes and on RELOAD.
    pub jwks_file: Option<PathBuf>,
    /// Find the key set URL in `<issuer>/.well-known/openid-configuration` (needs `issuer`).
    pub discover: bool,
    /// Background refresh of fetched key sets, in seconds (default 300).
    pub jwks_refresh_secs: u64,
    /// At most one refetch per this many seconds for tokens naming an unknown key (default 30).
    pub jwks_refetch_interval_secs: u64,
    /// A key set that could not be fetched for this long is reported with errors, not warnings (default 3600).
    pub jwks_stale_secs: u64,
    /// Connect timeout of a fetch, in milliseconds (default 3000).
    pub jwks_connect_timeout_ms: u64,
    /// Whole-request timeout of a fetch, body included, in milliseconds (default 10000).
    pub jwks_timeout_ms: u64,
    /// How long a login whose token names an unknown key waits for the refetch (default 3000).
    pub jwks_login_wait_ms: u64,
    /// How often `jwks_file` is checked for changes, in milliseconds (default 2000).
    pub jwks_file_check_ms: u64,
    /// Allow `http://` key set URLs to hosts other than loopback (default false).
    pub jwks_allow_http: bool,
    /// Allow key set URLs that are or resolve to link-local / metadata addresses (default false).
    pub jwks_allow_link_local: bool,
    /// A session outliving its token: "ignore" (default) or "end" (at its next idle point).
    pub session_expiry: SessionExpiry,
    /// The revocation list (`pgtenant.revoked_tokens`) is re-read by the next login after this many seconds,
    /// besides the announcements that update it at once (default 60).
    pub revocation_refresh_secs: u64,
}

/// `"one"` or `["one", "two"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
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
            user_claim: None,
            org_claim: None,
            jwks_url: Vec::new(),
            jwks_file: None,
            discover: false,
            jwks_refresh_secs: DEFAULT_JWKS_REFRESH_SECS,
            jwks_refetch_interval_secs: DEFAULT_JWKS_REFETCH_INTERVAL_SECS,
            jwks_stale_secs: DEFAULT_JWKS_STALE_SECS,
            jwks_connect_timeout_ms: DEFAULT_JWKS_CONNECT_TIMEOUT_MS,
            jwks_timeout_ms: DEFAULT_JWKS_TIMEOUT_MS,
            jwks_login_wait_ms: DEFAULT_JWKS_LOGIN_WAIT_MS,
            jwks_file_check_ms: DEFAULT_JWKS_FILE_CHECK_MS,
            jwks_allow_http: false,
            jwks_allow_link_local: false,
            session_expiry: SessionExpiry::Ignore,
            revocation_refresh_secs: DEFAULT_REVOCATION_REFRESH_SECS,
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
            .field("user_claim", &self.user_claim)
            .field("org_claim", &self.org_claim)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_file", &self.jwks_file)
            .field("discover", &self.discover)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field(
                "jwks_refetch_interval_secs",
                &self.jwks_refetch_interval_secs,
            )
            .field("jwks_stale_secs", &self.jwks_stale_secs)
            .field("jwks_connect_timeout_ms", &self.jwks_connect_timeout_ms)
            .field("jwks_timeout_ms", &self.jwks_timeout_ms)
            .field("jwks_login_wait_ms", &self.jwks_login_wait_ms)
            .field("jwks_file_check_ms", &self.jwks_file_check_ms)
            .field("jwks_allow_http", &self.jwks_allow_http)
            .field("jwks_allow_link_local", &self.jwks_allow_link_local)
            .field("session_expiry", &self.session_expiry)
            .field("revocation_refresh_secs", &self.revocation_refresh_secs)
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
        self.claim_paths()?;
        let sources = self.jwks_sources()?;
        if !sources.is_empty()
            && !algs
                .iter()
                .any(|a| jwks::KeyType::for_algorithm(*a).is_some())
        {
            return Err(AuthConfigError::Invalid {
                field: "algorithms",
                reason: "allows no RS*/PS*/ES*/EdDSA algorithm, so the key set (jwks_url, jwks_file, \
                         discover) would never be used: list the algorithms your identity provider signs with"
                    .to_owned(),
            });
        }
        let ranges: [(&'static str, u64, u64); 7] = [
            ("jwks_refresh_secs", self.jwks_refresh_secs, 1),
            (
                "jwks_refetch_interval_secs",
                self.jwks_refetch_interval_secs,
                1,
            ),
            ("jwks_stale_secs", self.jwks_stale_secs, 1),
            ("jwks_connect_timeout_ms", self.jwks_connect_timeout_ms, 10),
            ("jwks_timeout_ms", self.jwks_timeout_ms, 10),
            ("jwks_login_wait_ms", self.jwks_login_wait_ms, 0),
            ("jwks_file_check_ms", self.jwks_file_check_ms, 10),
        ];
        for (field, value, min) in ranges {
            if value < min {
                return Err(AuthConfigError::Invalid {
                    field,
                    reason: format!("must be at least {min}"),
                });
            }
        }
        Ok(())
    }

    /// The user and organization claim paths.
    fn claim_paths(&self) -> Result<(ClaimPath, Option<ClaimPath>), AuthConfigError> {
        let parse = |field: &'static str, text: &str| {
            ClaimPath::parse(text).map_err(|reason| AuthConfigError::Invalid { field, reason })
        };
        let user = match &self.user_claim {
            Some(path) => parse("user_claim", path)?,
            None => parse("user_claim", self.identity_claim.claim_name())?,
        };
        let org = match &self.org_claim {
            Some(path) => Some(parse("org_claim", path)?),
            None => None,
        };
        Ok((user, org))
    }

    /// Where key sets come from, with every URL checked (scheme, loopback for http, no link-local literal).
    pub fn jwks_sources(&self) -> Result<Vec<JwksSource>, AuthConfigError> {
        let mut sources = Vec::new();
        for text in &self.jwks_url {
            let url = jwks_fetch::check_url(
                text.trim(),
                self.jwks_allow_http,
                self.jwks_allow_link_local,
            )
            .map_err(|reason| AuthConfigError::Invalid {
                field: "jwks_url",
                reason,
            })?;
            let source = JwksSource::Url(url);
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
        if self.discover {
            let issuer = self
                .issuer
                .as_deref()
                .ok_or_else(|| AuthConfigError::Invalid {
                    field: "discover",
                    reason: "needs auth.issuer (the discovery document is <issuer>/.well-known/openid-configuration)"
                        .to_owned(),
                })?;
            let document = format!(
                "{}{}",
                issuer.trim_end_matches('/'),
                jwks_fetch::DISCOVERY_PATH
            );
            let document =
                jwks_fetch::check_url(&document, self.jwks_allow_http, self.jwks_allow_link_local)
                    .map_err(|reason| AuthConfigError::Invalid {
                        field: "issuer",
                        reason: format!("cannot be used for discovery: {reason}"),
                    })?;
            sources.push(JwksSource::Discovery {
                issuer: issuer.to_owned(),
                document,
            });
        }
        if let Some(path) = &self.jwks_file {
            sources.push(JwksSource::File(path.clone()));
        }
        Ok(sources)
    }

    fn jwks_settings(&self) -> JwksSettings {
        JwksSettings {
            refresh: Duration::from_secs(self.jwks_refresh_secs),
            refetch_interval: Duration::from_secs(self.jwks_refetch_interval_secs),
            stale_after: Duration::from_secs(self.jwks_stale_secs),
            connect_timeout: Duration::from_millis(self.jwks_connect_timeout_ms),
            timeout: Duration::from_millis(self.jwks_timeout_ms),
            login_wait: Duration::from_millis(self.jwks_login_wait_ms),
            file_check: Duration::from_millis(self.jwks_file_check_ms),
            allow_http: self.jwks_allow_http,
            allow_link_local: self.jwks_allow_link_local,
        }
    }

    /// Whether any key set source (URL, discovery, file) is configured.
    pub fn uses_jwks(&self) -> bool {
        !self.jwks_url.is_empty() || self.discover || self.jwks_file.is_some()
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
