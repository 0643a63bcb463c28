//! Tokens verified a moment ago, reused at the next login with the very same token: a client that
//! reconnects with the token it had (a driver's pool, `pgbench -C`, a job run every minute) costs a hash
//! lookup instead of a signature check and a JSON parse.
//!
//! A token is reused only while nothing that decided its verification can have changed: it must be
//! byte-for-byte the token verified, not expired by its `exp` (without leeway: a token in its leeway is
//! verified afresh), and checked against the key sets as they are now (a key set fetched since, which may
//! have dropped the key, means a full check). Only tokens that passed are kept; a refused token is always
//! checked in full. The verifier a RELOAD builds starts with none. Revocation is not decided here: the
//! login checks it after the verifier, cached or not.

use super::jwks::Jwk;
use super::verify::Claims;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

/// Tokens kept at most; when full, all are forgotten (the next logins verify in full and fill it again).
const MAX_TOKENS: usize = 4096;

/// The key sets serving when a token was verified (none without key sets).
pub(super) type KeySetSnapshot = Option<Arc<[Arc<Jwk>]>>;

#[derive(Default)]
pub(super) struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Verified, SignatureHash>>,
}

/// Bytes of a token its hash is taken of: its end, the signature's text (at least 43 characters, HS256's).
/// Hashing a whole token (hundreds of bytes, keyed SipHash) was a visible part of a login's CPU. Only
/// tokens that passed their check are kept, and their signatures cannot be chosen without the key, so no
/// one can pile keys into one bucket; a lookup still compares the whole token.
const HASHED_TAIL: usize = 48;

/// The map's hasher: std's keyed SipHash of the last [`HASHED_TAIL`] bytes of what is hashed.
#[derive(Default, Clone)]
struct SignatureHash(RandomState);

impl BuildHasher for SignatureHash {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(std::collections::hash_map::DefaultHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

struct Verified {
    claims: Claims,
    key_sets: KeySetSnapshot,
}

fn same_key_sets(a: &KeySetSnapshot, b: &KeySetSnapshot) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified against `key_sets` and has not expired at `now` (seconds
    /// since the Unix epoch).
    pub(super) fn get(&self, token: &str, key_sets: &KeySetSnapshot, now: u64) -> Option<Claims> {
        let mut tokens = self.tokens.lock().ok()?;
        let verified = tokens.get(token)?;
        if now < verified.claims.expires_at && same_key_sets(&verified.key_sets, key_sets) {
            return Some(verified.claims.clone());
        }
        tokens.remove(token);
        None
    }

    /// Keeps `token`, just verified against `key_sets`, with what it says.
    pub(super) fn put(&self, token: &str, claims: &Claims, key_sets: KeySetSnapshot) {
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        if tokens.len() >= MAX_TOKENS {
            tokens.clear();
        }
        tokens.insert(
            token.into(),
            Verified {
                claims: claims.clone(),
                key_sets,
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tokens.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::verify::{Identity, OrgClaim};
    use super::*;

    fn claims(expires_at: u64) -> Claims {
        Claims {
            identity: Identity::UserId("u".into()),
            organization: OrgClaim::NotConfigured,
            email: None,
            is_admin: false,
            expires_at,
            issued_at: None,
            jti: None,
            kid: None,
        }
    }

    #[test]
    fn a_token_is_reused_only_before_it_expires() {
        let cache = VerifiedTokens::default();
        cache.put("a.b.c", &claims(1_000), None);
        assert_eq!(cache.get("a.b.c", &None, 999), Some(claims(1_000)));
        assert_eq!(cache.get("a.b.c", &None, 1_000), None);
        // The expired entry is gone: a later clock going back does not revive it.
        assert_eq!(cache.get("a.b.c", &None, 10), None);
    }

    #[test]
    fn tokens_with_the_same_end_are_told_apart() {
        let cache = VerifiedTokens::default();
        let signature = "s".repeat(HASHED_TAIL);
        let (first, second) = (format!("a.b.{signature}"), format!("x.y.{signature}"));
        cache.put(&first, &claims(1_000), None);
        assert_eq!(cache.get(&second, &None, 1), None);
        cache.put(&second, &claims(2_000), None);
        assert_eq!(cache.get(&first, &None, 1), Some(claims(1_000)));
        assert_eq!(cache.get(&second, &None, 1), Some(claims(2_000)));
        let hasher = SignatureHash::default();
        assert_eq!(
            hasher.hash_one(first.as_str()),
            hasher.hash_one(second.as_str())
        );
        assert_ne!(
            hasher.hash_one(first.as_str()),
            hasher.hash_one(format!("a.b.{signature}t").as_str()),
            "the signature's end is hashed"
        );
    }

    #[test]
    fn only_the_very_same_token_is_reused() {
        let cache = VerifiedTokens::default();
        cache.put("a.b.c", &claims(1_000), None);
        assert_eq!(cache.get("a.b.d", &None, 1), None);
        assert_eq!(cache.get("a.b.c ", &None, 1), None);
    }

    #[test]
    fn key_sets_fetched_since_mean_a_full_check() {
        let cache = VerifiedTokens::default();
        let before: Arc<[Arc<Jwk>]> = Arc::from(Vec::new());
        let after: Arc<[Arc<Jwk>]> = Arc::from(Vec::new());
        cache.put("a.b.c", &claims(1_000), Some(before.clone()));
        assert_eq!(cache.get("a.b.c", &Some(after), 1), None);
        cache.put("a.b.c", &claims(1_000), Some(before.clone()));
        assert_eq!(cache.get("a.b.c", &None, 1), None);
        cache.put("a.b.c", &claims(1_000), Some(before.clone()));
        assert!(cache.get("a.b.c", &Some(before), 1).is_some());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = VerifiedTokens::default();
        for i in 0..MAX_TOKENS {
            cache.put(&format!("t{i}"), &claims(1_000), None);
        }
        assert_eq!(cache.len(), MAX_TOKENS);
        cache.put("one more", &claims(1_000), None);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("one more", &None, 1).is_some());
    }
}
