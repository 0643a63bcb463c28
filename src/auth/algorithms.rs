//! The JWA algorithms pgtenant knows (RFC 7518), by name, and the HMAC secret length each HS* one needs.

use jsonwebtoken::Algorithm;

use super::MIN_HS_SECRET_BYTES;

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
pub(super) fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The JWA name of an algorithm.
pub(super) fn algorithm_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map(|(n, _)| *n)
        .unwrap_or("unknown")
}

/// Minimum HMAC secret length for an HS* algorithm (the hash output size).
pub(super) fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_HS_SECRET_BYTES,
    }
}
