//! Verification keys, kept by family so that a token is only ever checked against keys of its algorithm's family.

use std::path::Path;

use aws_lc_rs::signature::{
    ParsedPublicKey, RsaParameters, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::algorithms::algorithm_name;
use super::{AuthConfig, AuthConfigError};

/// Largest public key file read (a PEM public key is a few KB at most).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// RSA modulus sizes the verifier accepts (aws-lc's RSA_PKCS1_2048_8192 / RSA_PSS_2048_8192).
const RSA_MIN_BITS: u32 = 2048;
const RSA_MAX_BITS: u32 = 8192;

/// Uncompressed SEC1 point lengths.
const P256_POINT_LEN: usize = 65;
const P384_POINT_LEN: usize = 97;

/// The keys of a verifier, by family (and curve for EC).
#[derive(Default)]
pub(super) struct KeySet {
    hmac: Option<DecodingKey>,
    rsa: Vec<DecodingKey>,
    ec_p256: Vec<DecodingKey>,
    ec_p384: Vec<DecodingKey>,
    ed25519: Vec<DecodingKey>,
}

impl KeySet {
    /// Builds the key set: the HMAC secret (if any) and every public key of every configured file; then checks
    /// that each allowed algorithm has at least one key it can use (asymmetric ones only without a key set).
    pub(super) fn load(
        cfg: &AuthConfig,
        algorithms: &[Algorithm],
    ) -> Result<KeySet, AuthConfigError> {
        let mut set = KeySet::default();
        if let Some(secret) = &cfg.hs_secret {
            set.hmac = Some(DecodingKey::from_secret(secret.expose().as_bytes()));
        }
        for path in &cfg.public_key_files {
            set.load_file(path)?;
        }
        for alg in algorithms {
            // With a key set configured, asymmetric keys may come from it (checked when it is loaded).
            if cfg.uses_jwks() && alg.family() != AlgorithmFamily::Hmac {
                continue;
            }
            if set.for_algorithm(*alg).is_empty() {
                if alg.family() == AlgorithmFamily::Hmac {
                    return Err(AuthConfigError::MissingHsSecret {
                        alg: algorithm_name(*alg),
                    });
                }
                return Err(AuthConfigError::NoKeyForAlgorithm {
                    alg: algorithm_name(*alg),
                    kind: key_kind(*alg),
                });
            }
        }
        set.warn_unused(algorithms);
        Ok(set)
    }

    /// The keys a token signed with `alg` may be checked against: never a key of another family.
    pub(super) fn for_algorithm(&self, alg: Algorithm) -> &[DecodingKey] {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_slice(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => &self.rsa,
            Algorithm::ES256 => &self.ec_p256,
            Algorithm::ES384 => &self.ec_p384,
            Algorithm::EdDSA => &self.ed25519,
            // `Algorithm` is non-exhaustive: an algorithm this code does not know has no keys.
            #[allow(unreachable_patterns)]
            _ => &[],
        }
    }

    /// Counts for logging: (rsa, p256, p384, ed25519).
    pub(super) fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.rsa.len(),
            self.ec_p256.len(),
            self.ec_p384.len(),
            self.ed25519.len(),
        )
    }

    fn warn_unused(&self, algorithms: &[Algorithm]) {
        let allows = |family: AlgorithmFamily| algorithms.iter().any(|a| a.family() == family);
        if self.hmac.is_some() && !allows(AlgorithmFamily::Hmac) {
            tracing::warn!(
                "an HMAC secret is configured but no HS* algorithm is allowed; it is unused"
            );
        }
        if !self.rsa.is_empty() && !allows(AlgorithmFamily::Rsa) {
            tracing::warn!("RSA public keys are configured but no RS*/PS* algorithm is allowed; they are unused");
        }
        if !self.ec_p256.is_empty() && !algorithms.contains(&Algorithm::ES256) {
            tracing::warn!(
                "P-256 public keys are configured but ES256 is not allowed; they are unused"
            );
        }
        if !self.ec_p384.is_empty() && !algorithms.contains(&Algorithm::ES384) {
            tracing::warn!(
                "P-384 public keys are configured but ES384 is not allowed; they are unused"
            );
        }
        if !self.ed25519.is_empty() && !allows(AlgorithmFamily::Ed) {
            tracing::warn!(
                "Ed25519 public keys are configured but EdDSA is not allowed; they are unused"
            );
        }
    }

    fn load_file(&mut self, path: &Path) -> Result<(), AuthConfigError> {
        let read_err = |source| AuthConfigError::ReadKeyFile {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(AuthConfigError::BadKey {
                path: path.to_owned(),
                index: 0,
                reason: format!("the file is larger than {MAX_KEY_FILE_BYTES} bytes"),
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| AuthConfigError::NoKeysInFile {
            path: path.to_owned(),
        })?;

        let mut found = 0usize;
        for block in pem_blocks(&text) {
            let index = found + 1;
            let bad = |reason: String| AuthConfigError::BadKey {
                path: path.to_owned(),
                index,
                reason,
            };
            let block = block.map_err(bad)?;
            match block.label {
                "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                    self.add_public_key(block.label, block.text.as_bytes())
                        .map_err(bad)?;
                    found += 1;
                }
                label if label.contains("PRIVATE KEY") => {
                    return Err(AuthConfigError::PrivateKeyInFile {
                        path: path.to_owned(),
                    });
                }
                "CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE" => {
                    return Err(AuthConfigError::CertificateInFile {
                        path: path.to_owned(),
                    });
                }
                other => {
                    tracing::debug!(path = %path.display(), label = other, "skipping PEM block that is not a public key");
                }
            }
        }
        if found == 0 {
            return Err(AuthConfigError::NoKeysInFile {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// Parses one PEM public key, checks it with aws-lc, and files it under its family.
    fn add_public_key(&mut self, label: &str, pem: &[u8]) -> Result<(), String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            let der = key
                .try_get_as_bytes()
                .map_err(|_| "unreadable RSA key".to_owned())?;
            let bits = RsaParameters::public_modulus_len(der)
                .map_err(|_| "not a valid RSA public key".to_owned())?;
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(format!(
                    "RSA key of {bits} bits; keys of {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are supported"
                ));
            }
            self.rsa.push(key);
            return Ok(());
        }
        if label == "RSA PUBLIC KEY" {
            return Err("not a valid RSA public key".to_owned());
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let point = key
                .try_get_as_bytes()
                .map_err(|_| "unreadable EC key".to_owned())?;
            let (curve, list) = match point.len() {
                P256_POINT_LEN => (&ECDSA_P256_SHA256_FIXED, &mut self.ec_p256),
                P384_POINT_LEN => (&ECDSA_P384_SHA384_FIXED, &mut self.ec_p384),
                _ => {
                    return Err(
                        "unsupported elliptic curve (P-256 and P-384 are supported)".to_owned()
                    )
                }
            };
            ParsedPublicKey::new(curve, point)
                .map_err(|_| "not a valid P-256 or P-384 public key".to_owned())?;
            list.push(key);
            return Ok(());
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            let raw = key
                .try_get_as_bytes()
                .map_err(|_| "unreadable Ed25519 key".to_owned())?;
            ParsedPublicKey::new(&ED25519, raw)
                .map_err(|_| "not a valid Ed25519 public key".to_owned())?;
            self.ed25519.push(key);
            return Ok(());
        }
        Err("unsupported public key (RSA, EC P-256/P-384 and Ed25519 are supported)".to_owned())
    }
}

/// What kind of key an algorithm needs, for error messages.
fn key_kind(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "EC P-256",
        Algorithm::ES384 => "EC P-384",
        Algorithm::EdDSA => "Ed25519",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "HMAC",
        _ => "RSA",
    }
}

/// One PEM block: its label and its full text (BEGIN and END lines included).
pub(super) struct PemBlock<'a> {
    pub(super) label: &'a str,
    pub(super) text: String,
}

/// The PEM blocks of a file, in order; text outside blocks is ignored. An unterminated block is an error.
pub(super) fn pem_blocks(text: &str) -> impl Iterator<Item = Result<PemBlock<'_>, String>> {
    let mut lines = text.lines();
    std::iter::from_fn(move || {
        let label = loop {
            let line = lines.next()?.trim();
            if let Some(label) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                break label;
            }
        };
        let mut body = format!("-----BEGIN {label}-----\n");
        for line in lines.by_ref() {
            let line = line.trim();
            body.push_str(line);
            body.push('\n');
            if line
                .strip_prefix("-----END ")
                .and_then(|l| l.strip_suffix("-----"))
                == Some(label)
            {
                return Some(Ok(PemBlock { label, text: body }));
            }
            if line.starts_with("-----BEGIN ") {
                break;
            }
        }
        Some(Err(format!(
            "PEM block \"{label}\" has no matching END line"
        )))
    })
}
