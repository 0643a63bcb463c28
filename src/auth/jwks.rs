//! JSON Web Key Sets (RFC 7517): a provider's key document turned into verification keys, each filed under the
//! one key type it can verify.
//!
//! The document is parsed here rather than with `jsonwebtoken::jwk::JwkSet`, because that refuses a whole document
//! when one key is of a kind it does not know, and providers publish encryption keys and newer key types next to
//! their signing keys. Each key is taken or skipped on its own, and a skipped key has a reason (it is logged):
//!
//! - `kty` `RSA` (2048 to 8192 bits), `EC` with `crv` `P-256` or `P-384`, `OKP` with `crv` `Ed25519`. Never `oct`:
//!   a key set is public, and a symmetric key in it would let anyone sign tokens.
//! - `use`, when present, must be `sig`; `key_ops`, when present, must contain `verify`.
//! - `alg`, when present, restricts the key to that one algorithm, and must fit the key type (`RS256` on an EC key
//!   is a broken key, not a hint). The configured algorithm allowlist is checked before any key is looked at.
//!
//! A document with no usable key is an error: a provider that briefly serves an empty set must not wipe the keys
//! pgtenant already has (the fetcher keeps the last good set).

use std::fmt;

use aws_lc_rs::signature::{
    ParsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::algorithms::{algorithm_from_name, algorithm_name};

/// Largest key set document read, from a URL or a file (64 KiB: a provider's set is a few KB).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Most keys taken from one document; the rest are skipped.
const MAX_KEYS: usize = 100;

/// RSA modulus sizes accepted (as for PEM keys: aws-lc's RSA_PKCS1_2048_8192 / RSA_PSS_2048_8192).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// The key types pgtenant verifies with; each algorithm needs exactly one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    /// The key type an algorithm verifies with; `None` for HMAC (never from a key set).
    pub(super) fn for_algorithm(alg: Algorithm) -> Option<KeyType> {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(KeyType::Rsa),
            Algorithm::ES256 => Some(KeyType::P256),
            Algorithm::ES384 => Some(KeyType::P384),
            Algorithm::EdDSA => Some(KeyType::Ed25519),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::P256 => "EC P-256",
            KeyType::P384 => "EC P-384",
            KeyType::Ed25519 => "Ed25519",
        }
    }
}

/// One verification key of a key set.
pub(super) struct Jwk {
    /// The key's `kid`, when it has one.
    pub(super) kid: Option<String>,
    pub(super) key_type: KeyType,
    /// The key's `alg`: when set, the only algorithm it verifies.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl Jwk {
    /// Whether a token signed with `alg` may be checked against this key.
    pub(super) fn usable_for(&self, alg: Algorithm) -> bool {
        KeyType::for_algorithm(alg) == Some(self.key_type) && self.alg.is_none_or(|a| a == alg)
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg.map(algorithm_name))
            .finish_non_exhaustive()
    }
}

/// The keys of one document, and why the others were skipped.
#[derive(Debug, Default)]
pub(super) struct ParsedJwks {
    pub(super) keys: Vec<Jwk>,
    /// One line per skipped key, e.g. `key "enc-1": use is "enc", not "sig"`.
    pub(super) skipped: Vec<String>,
}

/// A key set document that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not a JSON object")]
    NotJson,
    #[error("the key set has no \"keys\" array")]
    NoKeysArray,
    #[error("the key set has no key pgtenant can verify tokens with{}", first_reason(.skipped))]
    NoUsableKey { skipped: Vec<String> },
}

fn first_reason(skipped: &[String]) -> String {
    match skipped {
        [] => " (it is empty)".to_owned(),
        [only] => format!(" ({only})"),
        [first, rest @ ..] => format!(" ({first}; and {} more)", rest.len()),
    }
}

/// Parses a key set document (`{"keys": [...]}`).
pub(super) fn parse(bytes: &[u8]) -> Result<ParsedJwks, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let doc: Map<String, Value> = serde_json::from_slice(bytes).map_err(|_| JwksError::NotJson)?;
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err(JwksError::NoKeysArray);
    };
    let mut parsed = ParsedJwks::default();
    for (index, entry) in entries.iter().enumerate() {
        let label = key_label(entry, index);
        if parsed.keys.len() == MAX_KEYS {
            parsed
                .skipped
                .push(format!("{label}: more than {MAX_KEYS} keys in one set"));
            continue;
        }
        match parse_key(entry) {
            Ok(key) => parsed.keys.push(key),
            Err(reason) => parsed.skipped.push(format!("{label}: {reason}")),
        }
    }
    if parsed.keys.is_empty() {
        return Err(JwksError::NoUsableKey {
            skipped: parsed.skipped,
        });
    }
    Ok(parsed)
}

/// `key "kid"` or `key #3`, for messages (a kid comes from the provider's document, never from a token).
fn key_label(entry: &Value, index: usize) -> String {
    match entry.get("kid").and_then(Value::as_str) {
        Some(kid) => format!("key {:?}", truncated(kid)),
        None => format!("key #{}", index + 1),
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

fn parse_key(entry: &Value) -> Result<Jwk, String> {
    let Value::Object(key) = entry else {
        return Err("not a JSON object".to_owned());
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        match key.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let kid = text("kid")?.map(str::to_owned);
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(format!("use is {:?}, not \"sig\"", truncated(usage)));
        }
    }
    if let Some(ops) = key.get("key_ops") {
        let Value::Array(ops) = ops else {
            return Err("\"key_ops\" is not an array".to_owned());
        };
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err("key_ops does not contain \"verify\"".to_owned());
        }
    }
    let alg = match text("alg")? {
        None => None,
        // RFC 9864's fully-specified name for EdDSA with Ed25519.
        Some("Ed25519") => Some(Algorithm::EdDSA),
        Some(name) => Some(algorithm_from_name(name).ok_or_else(|| {
            format!(
                "alg {:?} is not a signature algorithm pgtenant knows",
                truncated(name)
            )
        })?),
    };
    let kty = text("kty")?.ok_or("no \"kty\"")?;
    let crv = text("crv")?;
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("no \"{name}\""))?;
        decode_b64url(value).ok_or_else(|| format!("\"{name}\" is not base64url"))
    };
    let (key_type, decoding_key) = match (kty, crv) {
        ("RSA", _) => {
            let n = field("n")?;
            let e = field("e")?;
            check_rsa(&n, &e)?;
            (
                KeyType::Rsa,
                DecodingKey::from_rsa_raw_components(strip_zeros(&n), strip_zeros(&e)),
            )
        }
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let (key_type, len, verify_alg) = if curve == "P-256" {
                (KeyType::P256, 32, &ECDSA_P256_SHA256_FIXED)
            } else {
                (KeyType::P384, 48, &ECDSA_P384_SHA384_FIXED)
            };
            let x = field("x")?;
            let y = field("y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("{curve} coordinates must be {len} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(verify_alg, &point)
                .map_err(|_| format!("not a valid {curve} public key"))?;
            (key_type, DecodingKey::from_ec_der(&point))
        }
        ("EC", curve) => {
            return Err(format!(
                "curve {:?} is not supported (P-256 and P-384 are)",
                truncated(curve.unwrap_or("none"))
            ))
        }
        ("OKP", Some("Ed25519")) => {
            let x = field("x")?;
            ParsedPublicKey::new(&ED25519, &x)
                .map_err(|_| "not a valid Ed25519 public key".to_owned())?;
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        ("OKP", curve) => {
            return Err(format!(
                "curve {:?} is not supported (Ed25519 is)",
                truncated(curve.unwrap_or("none"))
            ))
        }
        ("oct", _) => {
            return Err(
                "a symmetric (oct) key in a public key set is never used for verification"
                    .to_owned(),
            )
        }
        (other, _) => {
            return Err(format!(
                "key type {:?} is not supported (RSA, EC and OKP are)",
                truncated(other)
            ))
        }
    };
    if let Some(alg) = alg {
        if KeyType::for_algorithm(alg) != Some(key_type) {
            return Err(format!(
                "alg {} does not fit a {} key",
                algorithm_name(alg),
                key_type.name()
            ));
        }
    }
    Ok(Jwk {
        kid,
        key_type,
        alg,
        key: decoding_key,
    })
}

/// base64url without padding, as RFC 7518 says; trailing `=` (seen in the wild) is tolerated.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_zeros(n);
    let bits = match n.first() {
        None => 0,
        Some(top) => n.len() * 8 - top.leading_zeros() as usize,
    };
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits; keys of {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are supported"
        ));
    }
    let e = strip_zeros(e);
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    if e.is_empty() || e.len() > 4 || e == [1] || !odd {
        return Err("the RSA public exponent is not valid".to_owned());
    }
    Ok(())
}
