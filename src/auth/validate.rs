//! Checking the `[auth]` section: environment overrides, the algorithm list, the HMAC secret, the claim
//! paths, the key set sources and settings the verifier is built from.

use std::ffi::OsString;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::algorithms::{algorithm_from_name, algorithm_name, min_secret_len};
use super::claim_path::ClaimPath;
use super::jwks_store::{JwksSettings, JwksSource};
use super::{jwks, jwks_fetch, AuthConfig, AuthConfigError, JWT_SECRET_ENV, MAX_LEEWAY_SECS};

#[cfg(doc)]
use super::TokenVerifier;

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
            Ok(s) => self.hs_secret = Some(s.into()),
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
                    .as_ref()
                    .map(crate::secret::Secret::expose)
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
    pub(super) fn claim_paths(&self) -> Result<(ClaimPath, Option<ClaimPath>), AuthConfigError> {
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

    pub(super) fn jwks_settings(&self) -> JwksSettings {
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
    pub(super) fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, AuthConfigError> {
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
pub(super) fn check_admin_claim(name: &str) -> Result<(), AuthConfigError> {
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
