//! The `[auth]` section of the configuration: its fields, their defaults, and a `Debug` that hides the
//! secret.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{
    DEFAULT_ADMIN_CLAIM, DEFAULT_JWKS_CONNECT_TIMEOUT_MS, DEFAULT_JWKS_FILE_CHECK_MS,
    DEFAULT_JWKS_LOGIN_WAIT_MS, DEFAULT_JWKS_REFETCH_INTERVAL_SECS, DEFAULT_JWKS_REFRESH_SECS,
    DEFAULT_JWKS_STALE_SECS, DEFAULT_JWKS_TIMEOUT_MS, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_REVOCATION_REFRESH_SECS,
};

#[cfg(doc)]
use super::{Claims, Identity};

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

/// The `[auth]` section of the config file.
#[derive(Clone, Deserialize, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Allowed algorithms, e.g. `["HS256"]` (default `["HS256"]`). JWA names: "HS256", "HS384", "HS512", "RS256",
    /// "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA". "none" or an unknown name is a
    /// configuration error.
    pub algorithms: Vec<String>,
    /// HMAC secret for HS* (literal bytes of the string). Overridden by the environment variable
    /// `PGTENANT_JWT_SECRET` (see [`AuthConfig::apply_env`]). At least 32 bytes for HS256 (48 for HS384, 64 for
    /// HS512).
    pub hs_secret: Option<crate::secret::Secret>,
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
