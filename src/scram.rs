//! SCRAM-SHA-256 (RFC 5802 / 7677) as PostgreSQL uses it: the client side, for upstream logins as tenant
//! roles, and the stored-verifier form, so pgtenant can set a role's password without the cleartext ever
//! reaching PostgreSQL or its logs.

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::num::NonZeroU32;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// PostgreSQL's default iteration count, for verifiers of passwords people choose.
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("server does not offer SCRAM-SHA-256")]
    MechanismNotOffered,
    #[error("malformed SCRAM server message")]
    Malformed,
    #[error("server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server signature does not verify: the server does not know the password")]
    BadServerSignature,
    #[error("iteration count out of range")]
    BadIterations,
}

pub fn salted_password(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        &mut out,
    );
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The verifier PostgreSQL stores in `pg_authid.rolpassword` for a SCRAM-SHA-256 password:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn verifier(password: &str, salt: &[u8; 16], iterations: NonZeroU32) -> String {
    let salted = salted_password(password.as_bytes(), salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "{MECHANISM}${}:{}${}:{}",
        iterations.get(),
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Whether `password` is the one `verifier` (as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`) was made from. Anything else: false.
pub fn verifier_matches(password: &str, verifier: &str) -> bool {
    let Some(rest) = verifier
        .strip_prefix(MECHANISM)
        .and_then(|r| r.strip_prefix('$'))
    else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, _))) =
        (params.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let (Some(iterations), Ok(salt), Ok(stored_key)) = (
        iterations.parse::<u32>().ok().and_then(NonZeroU32::new),
        B64.decode(salt),
        B64.decode(stored_key),
    ) else {
        return false;
    };
    let salted = salted_password(password.as_bytes(), &salt, iterations);
    sha256(&hmac_sha256(&salted, b"Client Key")).as_slice() == stored_key.as_slice()
}

/// A fresh random salt.
pub fn random_salt() -> [u8; 16] {
    rand::random()
}

/// The client side of one SCRAM exchange.
pub struct ScramClient {
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new() -> Self {
        let nonce_bytes: [u8; 18] = rand::random();
        let client_nonce = B64.encode(nonce_bytes);
        // PostgreSQL takes the user name from the startup packet and ignores `n=`.
        let client_first_bare = format!("n=,r={client_nonce}");
        Self {
            client_nonce,
            client_first_bare,
            expected_server_signature: None,
        }
    }

    /// The client-first-message (no channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes the server-first-message and returns the client-final-message. `salted` lets the caller cache
    /// the expensive PBKDF2 step per (password, salt, iterations).
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        salted: impl FnOnce(&[u8], NonZeroU32) -> [u8; 32],
    ) -> Result<String, ScramError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed)?);
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().map_err(|_| ScramError::Malformed)?);
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) => (n, s, i),
            _ => return Err(ScramError::Malformed),
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !(1..=1_000_000).contains(&iterations) {
            return Err(ScramError::BadIterations);
        }
        let iterations = NonZeroU32::new(iterations).ok_or(ScramError::BadIterations)?;
        let salted = salted(&salt, iterations);
        let client_final_without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, client_final_without_proof
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature.iter()) {
            *p ^= s;
        }
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.expected_server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!(
            "{client_final_without_proof},p={}",
            B64.encode(proof)
        ))
    }

    /// Checks the server-final-message, proving the server knew the verifier.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        let signature = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or(ScramError::Malformed)?;
        let signature = B64.decode(signature).map_err(|_| ScramError::Malformed)?;
        match &self.expected_server_signature {
            Some(expected) if expected.as_slice() == signature.as_slice() => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

impl Default for ScramClient {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verifiers_match_only_their_password() {
        let iterations = NonZeroU32::new(16).expect("nonzero");
        let v = verifier("right horse", &[7u8; 16], iterations);
        assert!(verifier_matches("right horse", &v));
        assert!(!verifier_matches("wrong horse", &v));
        for garbage in [
            "",
            "md5abc",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$16:!!$x:y",
        ] {
            assert!(!verifier_matches("right horse", garbage), "{garbage}");
        }
    }

    use super::*;

    /// Plays the server side from a stored verifier, as PostgreSQL does, to check both halves agree.
    #[test]
    fn client_proof_verifies_against_the_stored_verifier() {
        let salt = random_salt();
        let stored = verifier(
            "s3cret",
            &salt,
            NonZeroU32::new(DEFAULT_ITERATIONS).expect("nonzero"),
        );
        let parts: Vec<&str> = stored.split(['$', ':']).collect();
        assert_eq!(parts[0], "SCRAM-SHA-256");
        assert_eq!(parts[1], "4096");
        let stored_key = B64.decode(parts[3]).expect("b64");
        let server_key = B64.decode(parts[4]).expect("b64");

        let mut client = ScramClient::new();
        let client_first = client.client_first();
        let client_nonce = client_first.rsplit("r=").next().expect("nonce").to_string();
        let server_first = format!("r={client_nonce}SERVERNONCE,s={},i=4096", parts[2]);
        let client_final = client
            .client_final(server_first.as_bytes(), |s, i| {
                salted_password(b"s3cret", s, i)
            })
            .expect("final");
        let (without_proof, proof) = client_final.rsplit_once(",p=").expect("proof");
        let auth_message = format!("{},{},{}", &client_first[3..], server_first, without_proof);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = B64.decode(proof).expect("b64");
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(sha256(&client_key).as_slice(), stored_key.as_slice());

        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        let server_final = format!("v={}", B64.encode(server_signature));
        client
            .verify_server_final(server_final.as_bytes())
            .expect("server verifies");
        assert!(client.verify_server_final(b"v=AAAA").is_err());
    }

    #[test]
    fn server_nonce_must_extend_client_nonce() {
        let mut client = ScramClient::new();
        let err = client.client_final(b"r=other,s=AAAA,i=4096", |s, i| salted_password(b"x", s, i));
        assert!(matches!(err, Err(ScramError::NonceMismatch)));
    }
}
