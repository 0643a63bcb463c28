//! [`TokenVerifier`]: signature, algorithm allowlist, claims, identity.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::algorithms::{algorithm_from_name, algorithm_name};
use super::claim_path::ClaimPath;
use super::jwks::KeyType;
use super::jwks_store::{JwksSource, JwksSourceStatus, JwksStore};
use super::keys::KeySet;
use super::verified::VerifiedTokens;
use super::{AuthConfig, AuthConfigError, IdentityClaim, TokenError};
use jsonwebtoken::DecodingKey;

/// Who the token says the user is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The `sub` claim.
    UserId(String),
    /// The `email` claim.
    Email(String),
}

impl Identity {
    /// The claim's value.
    pub fn value(&self) -> &str {
        match self {
            Identity::UserId(v) | Identity::Email(v) => v,
        }
    }
}

/// What a token says about the user's organization (`auth.org_claim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgClaim {
    /// No `org_claim` is configured.
    NotConfigured,
    /// It is configured, and the token does not carry it (or not as a non-empty string or a number).
    Missing,
    /// Its value: an organization's id or slug.
    Named(String),
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// From the configured identity claim.
    pub identity: Identity,
    /// From the configured organization claim.
    pub organization: OrgClaim,
    /// The `email` claim, when it is a non-empty string (whatever the identity claim).
    pub email: Option<String>,
    /// The configured admin claim is `true` / `"true"`, or its name is in the `roles` array.
    pub is_admin: bool,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// `iat`, seconds since the Unix epoch, when the token has one (revocation of a user's older tokens).
    pub issued_at: Option<u64>,
    /// `jti`, when the token has one as a usable string (revocation of one token, audit lines).
    pub jti: Option<String>,
    /// The header's `kid`, when it has one (audit lines only: never sent to a client).
    pub kid: Option<String>,
}

/// Verifies client tokens. Built once at startup; cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    algorithms: Vec<Algorithm>,
    keys: KeySet,
    /// Key sets (JWKS), when configured; filled by the fetcher.
    jwks: Option<Arc<JwksStore>>,
    identity_claim: IdentityClaim,
    user_claim: ClaimPath,
    org_claim: Option<ClaimPath>,
    audience: Option<String>,
    issuer: Option<String>,
    max_token_bytes: usize,
    leeway_secs: u64,
    admin_claim: String,
    /// Tokens that passed a moment ago (see [`super::verified`]).
    verified: VerifiedTokens,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rsa, p256, p384, ed) = self.inner.keys.counts();
        f.debug_struct("TokenVerifier")
            .field(
                "algorithms",
                &self
                    .inner
                    .algorithms
                    .iter()
                    .map(|a| algorithm_name(*a))
                    .collect::<Vec<_>>(),
            )
            .field("rsa_keys", &rsa)
            .field("p256_keys", &p256)
            .field("p384_keys", &p384)
            .field("ed25519_keys", &ed)
            .field("jwks", &self.inner.jwks)
            .field("identity_claim", &self.inner.identity_claim)
            .field("user_claim", &self.inner.user_claim)
            .field("org_claim", &self.inner.org_claim)
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

/// The subset of the JOSE header looked at before the library sees the token.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Value,
    #[serde(default)]
    kid: Option<Value>,
    #[serde(default)]
    crit: Option<Value>,
}

impl TokenVerifier {
    /// Validates `cfg` (see [`AuthConfig::validate`]), reads the public key files and the key set file, and checks
    /// that every allowed algorithm has a key of its family (asymmetric ones may instead come from a key set).
    /// Key set URLs are not fetched here: see [`TokenVerifier::spawn_jwks_fetcher`].
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthConfigError> {
        Self::build(cfg, None)
    }

    /// As [`TokenVerifier::new`], for a RELOAD: fetched key sets of URLs `previous` also had keep serving until
    /// the new fetcher's first round.
    pub fn new_replacing(
        cfg: &AuthConfig,
        previous: &TokenVerifier,
    ) -> Result<Self, AuthConfigError> {
        Self::build(cfg, Some(previous))
    }

    fn build(cfg: &AuthConfig, previous: Option<&TokenVerifier>) -> Result<Self, AuthConfigError> {
        cfg.validate()?;
        let algorithms = cfg.parsed_algorithms()?;
        let keys = KeySet::load(cfg, &algorithms)?;
        let (user_claim, org_claim) = cfg.claim_paths()?;
        let sources = cfg.jwks_sources()?;
        let jwks = if sources.is_empty() {
            None
        } else {
            let store = JwksStore::new(sources, cfg.jwks_settings());
            for (i, source) in store.sources().iter().enumerate() {
                if let JwksSource::File(path) = source {
                    store
                        .load_file(i)
                        .map_err(|reason| AuthConfigError::JwksFile {
                            path: path.clone(),
                            reason,
                        })?;
                }
            }
            if let Some(old) = previous.and_then(|p| p.inner.jwks.as_ref()) {
                store.seed_from(old);
            }
            Some(Arc::new(store))
        };
        Ok(TokenVerifier {
            inner: Arc::new(Inner {
                algorithms,
                keys,
                jwks,
                identity_claim: cfg.identity_claim,
                user_claim,
                org_claim,
                audience: cfg.audience.clone(),
                issuer: cfg.issuer.clone(),
                max_token_bytes: cfg.max_token_bytes,
                leeway_secs: cfg.leeway_secs,
                admin_claim: cfg.admin_claim.clone(),
                verified: VerifiedTokens::default(),
            }),
        })
    }

    /// The allowed algorithms' JWA names (for logging).
    pub fn algorithm_names(&self) -> Vec<&'static str> {
        self.inner
            .algorithms
            .iter()
            .map(|a| algorithm_name(*a))
            .collect()
    }

    /// Starts the background task that fetches and refreshes the key sets, when URLs or a file are configured.
    /// It stops when `stop` is cancelled.
    pub fn spawn_jwks_fetcher(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.inner.jwks.clone()?;
        Some(super::jwks_fetch::spawn(store, stop))
    }

    /// The key set store, when key sets are configured.
    pub fn jwks(&self) -> Option<&Arc<JwksStore>> {
        self.inner.jwks.as_ref()
    }

    /// What each key set source serves, for SHOW CONFIG and /metrics (empty without key sets).
    pub fn jwks_status(&self) -> Vec<JwksSourceStatus> {
        self.inner
            .jwks
            .as_ref()
            .map(|s| s.status())
            .unwrap_or_default()
    }

    /// [`TokenVerifier::verify`] for a login: a token naming a key pgtenant does not have waits for one
    /// rate-limited refetch of the key sets (at most `auth.jwks_login_wait_ms`), then is verified again.
    ///
    /// Cancel-safe: dropping it only stops the waiting.
    pub async fn verify_login(&self, token: &str) -> Result<Claims, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKey { refresh_failing }) => {
                let Some(store) = &self.inner.jwks else {
                    return Err(TokenError::UnknownKey { refresh_failing });
                };
                let attempt = || match self.verify(token) {
                    Err(TokenError::UnknownKey { .. }) => None,
                    done => Some(done),
                };
                store.refetch_until(attempt).await.unwrap_or_else(|| {
                    Err(TokenError::UnknownKey {
                        refresh_failing: store.refresh_failing(),
                    })
                })
            }
            other => other,
        }
    }

    /// Verifies a token and extracts its claims. Surrounding ASCII whitespace is ignored. Never waits: a token
    /// whose key is not in the key sets yet is [`TokenError::UnknownKey`] (see [`TokenVerifier::verify_login`]).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let inner = &*self.inner;
        if token.len() > inner.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
        let key_sets = inner.jwks.as_ref().map(|store| store.keys());
        if let Some(claims) = inner.verified.get(token, &key_sets, unix_now()) {
            return Ok(claims);
        }

        let (alg, kid) = self.check_header(token)?;
        let validation = self.validation(alg);
        let payload = match (&inner.jwks, KeyType::for_algorithm(alg)) {
            (Some(store), Some(_)) => {
                self.check_with_key_sets(store, token, alg, kid.as_deref(), &validation)?
            }
            // No key sets, or an HS* token: the kid plays no part.
            _ => try_keys(token, inner.keys.for_algorithm(alg), &validation, alg)?
                .ok_or(TokenError::BadSignature)?,
        };
        let Value::Object(claims) = payload else {
            return Err(TokenError::Malformed);
        };
        let mut extracted = self.extract(&claims)?;
        extracted.kid = kid;
        inner.verified.put(token, &extracted, key_sets);
        Ok(extracted)
    }

    /// The signature check of an RS*/PS*/ES*/EdDSA token when key sets are configured: a `kid` found in the key
    /// sets names the only keys that may have signed the token; a `kid` found nowhere leaves the PEM keys (which
    /// have none), and then the key is unknown; without `kid`, exactly one key of the sets and the PEM files may
    /// fit the algorithm.
    fn check_with_key_sets(
        &self,
        store: &JwksStore,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        validation: &Validation,
    ) -> Result<Value, TokenError> {
        let pem_keys = self.inner.keys.for_algorithm(alg);
        let sets = store.keys();
        let fitting: Vec<&DecodingKey> = sets
            .iter()
            .filter(|k| k.usable_for(alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .map(|k| &k.key)
            .collect();
        let unknown = || TokenError::UnknownKey {
            refresh_failing: store.refresh_failing(),
        };
        match (kid, fitting.len()) {
            (_, 0) => match try_keys(token, pem_keys, validation, alg)? {
                Some(payload) => Ok(payload),
                None if kid.is_some() || pem_keys.is_empty() => Err(unknown()),
                None => Err(TokenError::BadSignature),
            },
            (None, n) if n + pem_keys.len() > 1 => Err(TokenError::KidRequired),
            _ => try_keys(token, fitting, validation, alg)?.ok_or(TokenError::BadSignature),
        }
    }

    /// Checks the token's shape and header, and returns its algorithm (if the allowlist has it) and its `kid`.
    fn check_header(&self, token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let is_b64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if header.is_empty()
            || payload.is_empty()
            || !is_b64url(header)
            || !is_b64url(payload)
            || !is_b64url(signature)
        {
            return Err(TokenError::Malformed);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let raw: RawHeader =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        let Value::String(alg_name) = raw.alg else {
            return Err(TokenError::Malformed);
        };
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgorithmNotAllowed("none".to_owned()));
        }
        let Some(alg) = algorithm_from_name(&alg_name) else {
            // Never echo the token's text: the name comes from a fixed vocabulary.
            return Err(TokenError::AlgorithmNotAllowed("unrecognized".to_owned()));
        };
        if !self.inner.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(
                algorithm_name(alg).to_owned(),
            ));
        }
        // RFC 7515 §4.1.11: critical extensions we do not understand (we understand none) make the token invalid.
        if raw.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        if signature.is_empty() {
            return Err(TokenError::BadSignature);
        }
        let kid = match raw.kid {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid),
            Some(_) => return Err(TokenError::Malformed),
        };
        Ok((alg, kid))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let inner = &*self.inner;
        let mut v = Validation::new(alg);
        v.leeway = inner.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &inner.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Unset: a token carrying `aud` is accepted whatever its value.
            None => v.validate_aud = false,
        }
        if let Some(iss) = &inner.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Identity, email, admin flag and expiry of a verified payload.
    fn extract(&self, claims: &Map<String, Value>) -> Result<Claims, TokenError> {
        let inner = &*self.inner;
        let email = usable_string(claims.get("email")).map(str::to_owned);
        let user = usable_string(inner.user_claim.resolve(claims))
            .ok_or(TokenError::MissingIdentity)?
            .to_owned();
        let identity = match inner.identity_claim {
            IdentityClaim::Sub => Identity::UserId(user),
            IdentityClaim::Email => {
                let email = user;
                if matches!(claims.get("email_verified"), Some(Value::Bool(false)))
                    || matches!(claims.get("email_verified"), Some(Value::String(s)) if s == "false")
                {
                    return Err(TokenError::EmailNotVerified);
                }
                Identity::Email(email)
            }
        };
        let organization = match &inner.org_claim {
            None => OrgClaim::NotConfigured,
            Some(path) => match path.resolve(claims) {
                Some(Value::Number(n)) => OrgClaim::Named(n.to_string()),
                value => match usable_string(value) {
                    Some(org) => OrgClaim::Named(org.to_owned()),
                    None => OrgClaim::Missing,
                },
            },
        };
        let is_admin = match claims.get(&inner.admin_claim) {
            Some(Value::Bool(true)) => true,
            Some(Value::String(s)) if s == "true" => true,
            _ => false,
        } || matches!(claims.get("roles"), Some(Value::Array(roles))
                if roles.iter().any(|r| r.as_str() == Some(inner.admin_claim.as_str())));
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(TokenError::MissingExpiry)?;
        Ok(Claims {
            identity,
            organization,
            email,
            is_admin,
            expires_at,
            issued_at: claims.get("iat").and_then(numeric_date),
            jti: usable_string(claims.get("jti")).map(str::to_owned),
            kid: None,
        })
    }
}

/// Checks `token` against each key in turn: the payload of the first that verifies it, `None` when none does.
/// An error that is not about the key (expired, wrong audience, …) ends the search.
fn try_keys<'k>(
    token: &str,
    keys: impl IntoIterator<Item = &'k DecodingKey>,
    validation: &Validation,
    alg: Algorithm,
) -> Result<Option<Value>, TokenError> {
    for key in keys {
        match jsonwebtoken::decode::<Value>(token, key, validation) {
            Ok(data) => return Ok(Some(data.claims)),
            Err(e) => match e.kind() {
                // Another key of the family may match (rotation, several issuers).
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidKeyFormat => continue,
                kind => return Err(map_error(kind, alg)),
            },
        }
    }
    Ok(None)
}

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A claim usable as an identity: a string, not blank, without NUL (PostgreSQL text cannot hold one).
fn usable_string(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() && !s.contains('\0') => Some(s),
        _ => None,
    }
}

/// A NumericDate as the library reads it: a non-negative integer, or a float rounded.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // The library accepted this value, so it is finite, non-negative and below u64::MAX.
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

/// The client-facing error of a library error raised after the header checks.
fn map_error(kind: &ErrorKind, alg: Algorithm) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => TokenError::WrongAudience,
            "iss" => TokenError::WrongIssuer,
            "exp" => TokenError::MissingExpiry,
            _ => TokenError::Malformed,
        },
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::AlgorithmNotAllowed(algorithm_name(alg).to_owned())
        }
        // InvalidToken, InvalidClaimFormat, Base64, Json, Utf8 and anything newer.
        _ => TokenError::Malformed,
    }
}
