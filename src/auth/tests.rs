use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

pub(super) const SECRET: &str = "test-secret-0123456789abcdef-0123456789abcdef";
const OTHER_SECRET: &str = "other-secret-0123456789abcdef-0123456789abcdef";

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(super) fn hs_cfg() -> AuthConfig {
    AuthConfig {
        hs_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

pub(super) fn verifier(cfg: &AuthConfig) -> TokenVerifier {
    TokenVerifier::new(cfg).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

pub(super) fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Standard valid claims.
pub(super) fn claims_for(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 600 })
}

/// A temporary file, removed on drop.
pub(super) struct TempFile(pub(super) PathBuf);

impl TempFile {
    pub(super) fn new(contents: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pgtenant-auth-test-{}-{n}.pem", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// (private key PEM, public key PEM)
pub(super) struct Pair {
    pub(super) private_pem: String,
    pub(super) public_pem: String,
}

pub(super) fn gen(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    Pair {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
    }
}

pub(super) fn rsa() -> &'static Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| gen(&rcgen::PKCS_RSA_SHA256))
}

pub(super) fn rsa_other() -> &'static Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| gen(&rcgen::PKCS_RSA_SHA256))
}

pub(super) fn p256() -> &'static Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| gen(&rcgen::PKCS_ECDSA_P256_SHA256))
}

pub(super) fn p384() -> &'static Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| gen(&rcgen::PKCS_ECDSA_P384_SHA384))
}

pub(super) fn ed25519() -> &'static Pair {
    static KEY: OnceLock<Pair> = OnceLock::new();
    KEY.get_or_init(|| gen(&rcgen::PKCS_ED25519))
}

fn asym_cfg(algs: &[&str], file: &TempFile) -> AuthConfig {
    AuthConfig {
        algorithms: algs.iter().map(|s| s.to_string()).collect(),
        public_key_files: vec![file.0.clone()],
        ..AuthConfig::default()
    }
}

pub(super) fn expect_err(v: &TokenVerifier, token: &str) -> TokenError {
    match v.verify(token) {
        Ok(c) => panic!("token unexpectedly accepted: {c:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HS256 basics

#[test]
fn valid_hs256() {
    let v = verifier(&hs_cfg());
    let exp = now() + 600;
    let token = hs256(&json!({ "sub": "user-42", "email": "a@example.com", "exp": exp }));
    let c = v.verify(&token).unwrap();
    assert_eq!(c.identity, Identity::UserId("user-42".to_owned()));
    assert_eq!(c.email.as_deref(), Some("a@example.com"));
    assert!(!c.is_admin);
    assert_eq!(c.expires_at, exp);
}

#[test]
fn surrounding_whitespace_is_ignored() {
    let v = verifier(&hs_cfg());
    let token = format!("  {}\n", hs256(&claims_for("u")));
    assert_eq!(
        v.verify(&token).unwrap().identity,
        Identity::UserId("u".to_owned())
    );
}

#[test]
fn expired() {
    let v = verifier(&hs_cfg());
    let token = hs256(&json!({ "sub": "u", "exp": now() - 3600 }));
    assert_eq!(expect_err(&v, &token), TokenError::Expired);
}

#[test]
fn expired_within_leeway_is_accepted() {
    let v = verifier(&AuthConfig {
        leeway_secs: 30,
        ..hs_cfg()
    });
    let token = hs256(&json!({ "sub": "u", "exp": now() - 5 }));
    assert!(v.verify(&token).is_ok());
    let v0 = verifier(&AuthConfig {
        leeway_secs: 0,
        ..hs_cfg()
    });
    assert_eq!(expect_err(&v0, &token), TokenError::Expired);
}

#[test]
fn missing_exp() {
    let v = verifier(&hs_cfg());
    let token = hs256(&json!({ "sub": "u" }));
    assert_eq!(expect_err(&v, &token), TokenError::MissingExpiry);
}

#[test]
fn exp_of_wrong_type_is_no_expiry() {
    let v = verifier(&hs_cfg());
    for exp in [json!("tomorrow"), json!(-5), json!(null)] {
        let token = hs256(&json!({ "sub": "u", "exp": exp }));
        assert_eq!(expect_err(&v, &token), TokenError::MissingExpiry, "{exp}");
    }
}

#[test]
fn nbf_of_wrong_type_is_malformed() {
    let v = verifier(&hs_cfg());
    let token = hs256(&json!({ "sub": "u", "exp": now() + 600, "nbf": "later" }));
    assert_eq!(expect_err(&v, &token), TokenError::Malformed);
}

#[test]
fn nbf_in_future() {
    let v = verifier(&hs_cfg());
    let token = hs256(&json!({ "sub": "u", "exp": now() + 7200, "nbf": now() + 3600 }));
    assert_eq!(expect_err(&v, &token), TokenError::NotYetValid);
    // nbf slightly ahead (clock skew) is within the leeway.
    let token = hs256(&json!({ "sub": "u", "exp": now() + 7200, "nbf": now() + 5 }));
    assert!(v.verify(&token).is_ok());
}

#[test]
fn wrong_signature() {
    let v = verifier(&hs_cfg());
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(OTHER_SECRET.as_bytes()),
        &claims_for("u"),
    );
    assert_eq!(expect_err(&v, &token), TokenError::BadSignature);
}

#[test]
fn tampered_payload() {
    let v = verifier(&hs_cfg());
    let token = hs256(&claims_for("user"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&claims_for("admin")), parts[2]);
    assert_eq!(expect_err(&v, &forged), TokenError::BadSignature);
    // Signature stripped.
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(expect_err(&v, &stripped), TokenError::BadSignature);
}

#[test]
fn alg_none_is_refused() {
    let v = verifier(&hs_cfg());
    let payload = b64(&claims_for("admin"));
    for header in [
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "alg": "None", "typ": "JWT" }),
        json!({ "alg": "NONE" }),
    ] {
        let h = b64(&header);
        for token in [
            format!("{h}.{payload}."),
            format!("{h}.{payload}.c2lnbmF0dXJl"),
        ] {
            assert_eq!(
                expect_err(&v, &token),
                TokenError::AlgorithmNotAllowed("none".to_owned()),
                "{header}"
            );
        }
    }
}

#[test]
fn unknown_alg_is_refused() {
    let v = verifier(&hs_cfg());
    let token = format!(
        "{}.{}.c2ln",
        b64(&json!({ "alg": "XX999-evil" })),
        b64(&claims_for("u"))
    );
    let err = expect_err(&v, &token);
    assert_eq!(
        err,
        TokenError::AlgorithmNotAllowed("unrecognized".to_owned())
    );
    assert!(!err.to_string().contains("XX999"));
}

#[test]
fn crit_header_is_refused() {
    let v = verifier(&hs_cfg());
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp-ext".to_owned()]);
    let token = jsonwebtoken::encode(
        &header,
        &claims_for("u"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(expect_err(&v, &token), TokenError::Malformed);
}

// ---------------------------------------------------------------------------------------------------------------
// Algorithm confusion

#[test]
fn hs256_signed_with_rsa_public_key_when_rs256_and_hs256_allowed() {
    let file = TempFile::new(&rsa().public_pem);
    let cfg = AuthConfig {
        hs_secret: Some(SECRET.into()),
        ..asym_cfg(&["RS256", "HS256"], &file)
    };
    let v = verifier(&cfg);
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa().public_pem.as_bytes()),
        &claims_for("admin"),
    );
    assert_eq!(expect_err(&v, &token), TokenError::BadSignature);
    // Also with the exact bytes of the file and with the DER-less trimmed PEM.
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa().public_pem.trim().as_bytes()),
        &claims_for("admin"),
    );
    assert_eq!(expect_err(&v, &token), TokenError::BadSignature);
    // The same verifier still accepts genuine tokens of both kinds.
    assert!(v.verify(&hs256(&claims_for("u"))).is_ok());
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(rsa().private_pem.as_bytes()).unwrap(),
        &claims_for("u"),
    );
    assert!(v.verify(&rs).is_ok());
}

#[test]
fn hs256_signed_with_rsa_public_key_when_only_rs256_allowed() {
    let file = TempFile::new(&rsa().public_pem);
    let v = verifier(&asym_cfg(&["RS256"], &file));
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa().public_pem.as_bytes()),
        &claims_for("admin"),
    );
    assert_eq!(
        expect_err(&v, &token),
        TokenError::AlgorithmNotAllowed("HS256".to_owned())
    );
}

#[test]
fn rs256_token_when_only_hs256_allowed() {
    let v = verifier(&hs_cfg());
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(rsa().private_pem.as_bytes()).unwrap(),
        &claims_for("u"),
    );
    assert_eq!(
        expect_err(&v, &token),
        TokenError::AlgorithmNotAllowed("RS256".to_owned())
    );
}

#[test]
fn es256_token_is_not_checked_against_rsa_keys() {
    // RS256 and ES256 allowed, but only an RSA key: config error (no P-256 key).
    let file = TempFile::new(&rsa().public_pem);
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256", "ES256"], &file)),
        Err(AuthConfigError::NoKeyForAlgorithm { alg: "ES256", .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Asymmetric algorithms

#[test]
fn rs256_valid() {
    let file = TempFile::new(&rsa().public_pem);
    let v = verifier(&asym_cfg(&["RS256"], &file));
    let key = EncodingKey::from_rsa_pem(rsa().private_pem.as_bytes()).unwrap();
    let c = v
        .verify(&sign(Algorithm::RS256, &key, &claims_for("rsa-user")))
        .unwrap();
    assert_eq!(c.identity, Identity::UserId("rsa-user".to_owned()));
}

#[test]
fn ps256_and_rs512_valid_with_same_key() {
    let file = TempFile::new(&rsa().public_pem);
    let v = verifier(&asym_cfg(&["PS256", "RS512"], &file));
    let key = EncodingKey::from_rsa_pem(rsa().private_pem.as_bytes()).unwrap();
    assert!(v
        .verify(&sign(Algorithm::PS256, &key, &claims_for("u")))
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::RS512, &key, &claims_for("u")))
        .is_ok());
    // RS256 is not in the list.
    assert_eq!(
        expect_err(&v, &sign(Algorithm::RS256, &key, &claims_for("u"))),
        TokenError::AlgorithmNotAllowed("RS256".to_owned())
    );
}

#[test]
fn rs256_signed_by_another_key() {
    let file = TempFile::new(&rsa().public_pem);
    let v = verifier(&asym_cfg(&["RS256"], &file));
    let key = EncodingKey::from_rsa_pem(rsa_other().private_pem.as_bytes()).unwrap();
    assert_eq!(
        expect_err(&v, &sign(Algorithm::RS256, &key, &claims_for("u"))),
        TokenError::BadSignature
    );
}

#[test]
fn several_keys_in_one_file_are_all_tried() {
    let file = TempFile::new(&format!(
        "# rotation\n{}\n{}",
        rsa().public_pem,
        rsa_other().public_pem
    ));
    let v = verifier(&asym_cfg(&["RS256"], &file));
    for pair in [rsa(), rsa_other()] {
        let key = EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("ignored-kid".to_owned());
        let token = jsonwebtoken::encode(&header, &claims_for("u"), &key).unwrap();
        assert!(v.verify(&token).is_ok());
    }
}

#[test]
fn es256_valid() {
    let file = TempFile::new(&p256().public_pem);
    let v = verifier(&asym_cfg(&["ES256"], &file));
    let key = EncodingKey::from_ec_pem(p256().private_pem.as_bytes()).unwrap();
    let c = v
        .verify(&sign(Algorithm::ES256, &key, &claims_for("ec-user")))
        .unwrap();
    assert_eq!(c.identity, Identity::UserId("ec-user".to_owned()));
}

#[test]
fn es384_valid_and_curves_are_kept_apart() {
    let file = TempFile::new(&format!("{}{}", p256().public_pem, p384().public_pem));
    let v = verifier(&asym_cfg(&["ES256", "ES384"], &file));
    let k256 = EncodingKey::from_ec_pem(p256().private_pem.as_bytes()).unwrap();
    let k384 = EncodingKey::from_ec_pem(p384().private_pem.as_bytes()).unwrap();
    assert!(v
        .verify(&sign(Algorithm::ES384, &k384, &claims_for("u")))
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::ES256, &k256, &claims_for("u")))
        .is_ok());

    // ES384 allowed with only a P-256 key: configuration error.
    let only256 = TempFile::new(&p256().public_pem);
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["ES384"], &only256)),
        Err(AuthConfigError::NoKeyForAlgorithm { alg: "ES384", .. })
    ));
}

#[test]
fn eddsa_valid() {
    let file = TempFile::new(&ed25519().public_pem);
    let v = verifier(&asym_cfg(&["EdDSA"], &file));
    let key = EncodingKey::from_ed_pem(ed25519().private_pem.as_bytes()).unwrap();
    assert!(v
        .verify(&sign(Algorithm::EdDSA, &key, &claims_for("u")))
        .is_ok());
    let other = gen(&rcgen::PKCS_ED25519);
    let key = EncodingKey::from_ed_pem(other.private_pem.as_bytes()).unwrap();
    assert_eq!(
        expect_err(&v, &sign(Algorithm::EdDSA, &key, &claims_for("u"))),
        TokenError::BadSignature
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Audience and issuer

#[test]
fn wrong_audience() {
    let v = verifier(&AuthConfig {
        audience: Some("pgtenant".to_owned()),
        ..hs_cfg()
    });
    let ok = hs256(&json!({ "sub": "u", "exp": now() + 600, "aud": "pgtenant" }));
    assert!(v.verify(&ok).is_ok());
    let ok_list = hs256(&json!({ "sub": "u", "exp": now() + 600, "aud": ["other", "pgtenant"] }));
    assert!(v.verify(&ok_list).is_ok());
    let wrong = hs256(&json!({ "sub": "u", "exp": now() + 600, "aud": "other-service" }));
    assert_eq!(expect_err(&v, &wrong), TokenError::WrongAudience);
    let missing = hs256(&claims_for("u"));
    assert_eq!(expect_err(&v, &missing), TokenError::WrongAudience);
}

#[test]
fn audience_unset_accepts_any_aud() {
    let v = verifier(&hs_cfg());
    let token = hs256(&json!({ "sub": "u", "exp": now() + 600, "aud": "whatever" }));
    assert!(v.verify(&token).is_ok());
}

#[test]
fn wrong_issuer() {
    let v = verifier(&AuthConfig {
        issuer: Some("https://idp.example".to_owned()),
        ..hs_cfg()
    });
    let ok = hs256(&json!({ "sub": "u", "exp": now() + 600, "iss": "https://idp.example" }));
    assert!(v.verify(&ok).is_ok());
    let wrong = hs256(&json!({ "sub": "u", "exp": now() + 600, "iss": "https://evil.example" }));
    assert_eq!(expect_err(&v, &wrong), TokenError::WrongIssuer);
    let missing = hs256(&claims_for("u"));
    assert_eq!(expect_err(&v, &missing), TokenError::WrongIssuer);
    let wrong_type = hs256(&json!({ "sub": "u", "exp": now() + 600, "iss": 42 }));
    assert_eq!(expect_err(&v, &wrong_type), TokenError::WrongIssuer);
}

// ---------------------------------------------------------------------------------------------------------------
// Shape and size

/// A token whose signature is genuine but whose payload is `payload` bytes (not necessarily JSON).
fn hs256_raw_payload(payload: &[u8]) -> String {
    let header = b64(&json!({ "alg": "HS256", "typ": "JWT" }));
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

#[test]
fn garbage() {
    let v = verifier(&hs_cfg());
    let good = hs256(&claims_for("u"));
    let parts: Vec<&str> = good.split('.').collect();
    let cases = vec![
        String::new(),
        "password123".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        "!!!.###.$$$".to_owned(),
        "..".to_owned(),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(b"not json"),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64(&json!({ "typ": "JWT" })),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.{}", b64(&json!({ "alg": 256 })), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!(["HS256"])), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "sig+with/std=b64"),
        // Genuinely signed, but the payload is not a JSON object.
        hs256_raw_payload(b"not json at all"),
        hs256_raw_payload(b"[1,2,3]"),
        hs256_raw_payload(b"\"just a string\""),
    ];
    for token in cases {
        assert_eq!(
            expect_err(&v, &token),
            TokenError::Malformed,
            "token {token:?}"
        );
    }
}

#[test]
fn oversized() {
    let v = verifier(&AuthConfig {
        max_token_bytes: 100,
        ..hs_cfg()
    });
    let token = hs256(&claims_for("u"));
    assert!(token.len() > 100);
    assert_eq!(expect_err(&v, &token), TokenError::TooLarge);

    let v = verifier(&hs_cfg());
    let big = hs256(&json!({ "sub": "u", "exp": now() + 600, "pad": "x".repeat(9000) }));
    assert_eq!(expect_err(&v, &big), TokenError::TooLarge);
    // Oversized garbage is refused before it is looked at.
    assert_eq!(
        expect_err(&v, &"x".repeat(DEFAULT_MAX_TOKEN_BYTES + 1)),
        TokenError::TooLarge
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Identity and admin

#[test]
fn missing_identity() {
    let v = verifier(&hs_cfg());
    for claims in [
        json!({ "exp": now() + 600 }),
        json!({ "sub": "", "exp": now() + 600 }),
        json!({ "sub": "   ", "exp": now() + 600 }),
        json!({ "sub": 12345, "exp": now() + 600 }),
        json!({ "sub": null, "exp": now() + 600 }),
        json!({ "sub": "a\u{0}b", "exp": now() + 600 }),
        // An email is no substitute when the identity claim is `sub`.
        json!({ "email": "a@example.com", "exp": now() + 600 }),
    ] {
        assert_eq!(
            expect_err(&v, &hs256(&claims)),
            TokenError::MissingIdentity,
            "{claims}"
        );
    }
}

#[test]
fn email_identity() {
    let v = verifier(&AuthConfig {
        identity_claim: IdentityClaim::Email,
        ..hs_cfg()
    });
    let c = v
        .verify(&hs256(
            &json!({ "sub": "auth0|123", "email": "Jane@Example.com", "exp": now() + 600 }),
        ))
        .unwrap();
    assert_eq!(c.identity, Identity::Email("Jane@Example.com".to_owned()));
    assert_eq!(c.email.as_deref(), Some("Jane@Example.com"));

    let c = v
        .verify(&hs256(
            &json!({ "email": "j@example.com", "email_verified": true, "exp": now() + 600 }),
        ))
        .unwrap();
    assert_eq!(c.identity.value(), "j@example.com");

    let no_email = hs256(&json!({ "sub": "auth0|123", "exp": now() + 600 }));
    assert_eq!(expect_err(&v, &no_email), TokenError::MissingIdentity);
    let empty = hs256(&json!({ "sub": "auth0|123", "email": "", "exp": now() + 600 }));
    assert_eq!(expect_err(&v, &empty), TokenError::MissingIdentity);
    let unverified =
        hs256(&json!({ "email": "j@example.com", "email_verified": false, "exp": now() + 600 }));
    assert_eq!(expect_err(&v, &unverified), TokenError::EmailNotVerified);
}

#[test]
fn admin_claim_detection() {
    let v = verifier(&hs_cfg());
    let admin = |extra: Value| {
        let mut claims = claims_for("u");
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        v.verify(&hs256(&claims)).unwrap().is_admin
    };
    assert!(admin(json!({ "pgtenant_admin": true })));
    assert!(admin(json!({ "pgtenant_admin": "true" })));
    assert!(admin(json!({ "roles": ["reader", "pgtenant_admin"] })));
    assert!(!admin(json!({})));
    assert!(!admin(json!({ "pgtenant_admin": false })));
    assert!(!admin(json!({ "pgtenant_admin": "yes" })));
    assert!(!admin(json!({ "pgtenant_admin": 1 })));
    assert!(!admin(json!({ "roles": "pgtenant_admin" })));
    assert!(!admin(json!({ "roles": ["reader"] })));
    assert!(!admin(json!({ "other_admin": true })));

    let custom = verifier(&AuthConfig {
        admin_claim: "https://example.com/admin".to_owned(),
        ..hs_cfg()
    });
    let t = hs256(&json!({ "sub": "u", "exp": now() + 600, "https://example.com/admin": true }));
    assert!(custom.verify(&t).unwrap().is_admin);
    let t = hs256(&json!({ "sub": "u", "exp": now() + 600, "pgtenant_admin": true }));
    assert!(!custom.verify(&t).unwrap().is_admin);
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets and tokens never leak

#[test]
fn secret_not_in_debug_output() {
    let cfg = hs_cfg();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    let dbg_alt = format!("{cfg:#?}");
    assert!(!dbg_alt.contains(SECRET));
    let v = verifier(&cfg);
    let vdbg = format!("{v:?}");
    assert!(!vdbg.contains(SECRET), "{vdbg}");
    let none = format!("{:?}", AuthConfig::default());
    assert!(none.contains("hs_secret: None"), "{none}");
}

#[test]
fn token_text_not_in_any_error_display() {
    let marker = "attacker-controlled-SUBJECT-text";
    let file = TempFile::new(&rsa().public_pem);
    let cfg = AuthConfig {
        hs_secret: Some(SECRET.into()),
        audience: Some("aud-x".to_owned()),
        issuer: Some("iss-x".to_owned()),
        max_token_bytes: 2000,
        ..asym_cfg(&["HS256", "RS256"], &file)
    };
    let v = verifier(&cfg);
    let base = |extra: Value| {
        let mut c = json!({ "sub": marker, "exp": now() + 600, "aud": "aud-x", "iss": "iss-x" });
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    };
    let good = hs256(&base(json!({})));
    let gp: Vec<&str> = good.split('.').collect();
    let tokens = vec![
        hs256(&base(json!({ "exp": now() - 3600 }))),
        hs256(&base(json!({ "nbf": now() + 3600 }))),
        hs256(&base(json!({ "aud": marker }))),
        hs256(&base(json!({ "iss": marker }))),
        hs256(&base(json!({ "sub": "" , "email": marker }))),
        hs256(&json!({ "sub": marker, "aud": "aud-x", "iss": "iss-x" })),
        hs256(&base(json!({ "pad": marker.repeat(100) }))),
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(OTHER_SECRET.as_bytes()),
            &base(json!({})),
        ),
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(rsa().public_pem.as_bytes()),
            &base(json!({})),
        ),
        format!("{}.{}.", b64(&json!({ "alg": "none" })), gp[1]),
        format!("{}.{}.{}", b64(&json!({ "alg": marker })), gp[1], gp[2]),
        format!("{}.{}.{}", b64(&json!({ "alg": "ES256" })), gp[1], gp[2]),
        format!("{marker}.{marker}.{marker}"),
        format!("{}.{}.{}", gp[0], URL_SAFE_NO_PAD.encode(marker), gp[2]),
        marker.to_owned(),
    ];
    for token in &tokens {
        let err = expect_err(&v, token);
        let msg = err.to_string();
        let dbg = format!("{err:?}");
        for text in [&msg, &dbg] {
            assert!(!text.contains(token.as_str()), "{text}");
            for segment in token.split('.').filter(|s| s.len() >= 6) {
                assert!(!text.contains(segment), "{text} contains a token segment");
            }
            assert!(!text.contains(marker), "{text}");
            assert!(!text.contains(SECRET), "{text}");
        }
        assert_eq!(err.sqlstate(), "28P01");
    }
}

#[test]
fn every_error_has_sqlstate_28p01() {
    for e in [
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::AlgorithmNotAllowed("none".to_owned()),
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::WrongIssuer,
        TokenError::MissingExpiry,
        TokenError::MissingIdentity,
        TokenError::EmailNotVerified,
        TokenError::UnknownKey {
            refresh_failing: true,
        },
        TokenError::KidRequired,
        TokenError::Mint("x".to_owned()),
    ] {
        assert_eq!(e.sqlstate(), "28P01");
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration

#[test]
fn config_from_toml_defaults_and_unknown_fields() {
    let cfg: AuthConfig = toml::from_str("").unwrap();
    assert_eq!(cfg.algorithms, vec!["HS256".to_owned()]);
    assert_eq!(cfg.identity_claim, IdentityClaim::Sub);
    assert_eq!(cfg.max_token_bytes, 8192);
    assert_eq!(cfg.leeway_secs, 30);
    assert_eq!(cfg.admin_claim, "pgtenant_admin");
    assert!(cfg.hs_secret.is_none() && cfg.audience.is_none() && cfg.issuer.is_none());

    let cfg: AuthConfig = toml::from_str(
        r#"
        algorithms = ["RS256", "ES256"]
        public_key_files = ["/etc/pgtenant/jwt.pem"]
        identity_claim = "email"
        audience = "pgtenant"
        issuer = "https://idp.example"
        max_token_bytes = 4096
        leeway_secs = 10
        admin_claim = "is_admin"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.identity_claim, IdentityClaim::Email);
    assert_eq!(
        cfg.public_key_files,
        vec![PathBuf::from("/etc/pgtenant/jwt.pem")]
    );
    assert_eq!(cfg.max_token_bytes, 4096);

    assert!(toml::from_str::<AuthConfig>("algoritms = [\"HS256\"]").is_err());
    assert!(toml::from_str::<AuthConfig>("identity_claim = \"name\"").is_err());
}

#[test]
fn config_errors() {
    let with_algs = |algs: &[&str]| AuthConfig {
        algorithms: algs.iter().map(|s| s.to_string()).collect(),
        ..hs_cfg()
    };
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["none"])),
        Err(AuthConfigError::NoneAlgorithm)
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["HS256", "None"])),
        Err(AuthConfigError::NoneAlgorithm)
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["HS1"])),
        Err(AuthConfigError::UnknownAlgorithm(_))
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["hs256"])),
        Err(AuthConfigError::UnknownAlgorithm(_))
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&[])),
        Err(AuthConfigError::NoAlgorithms)
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig::default()),
        Err(AuthConfigError::MissingHsSecret { alg: "HS256" })
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig {
            hs_secret: Some("short".into()),
            ..AuthConfig::default()
        }),
        Err(AuthConfigError::HsSecretTooShort {
            alg: "HS256",
            min: 32
        })
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["HS512"])),
        Err(AuthConfigError::HsSecretTooShort {
            alg: "HS512",
            min: 64
        })
    ));
    assert!(matches!(
        TokenVerifier::new(&with_algs(&["RS256"])),
        Err(AuthConfigError::NoKeyForAlgorithm { alg: "RS256", .. })
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig {
            max_token_bytes: 0,
            ..hs_cfg()
        }),
        Err(AuthConfigError::Invalid {
            field: "max_token_bytes",
            ..
        })
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig {
            leeway_secs: 999_999,
            ..hs_cfg()
        }),
        Err(AuthConfigError::Invalid {
            field: "leeway_secs",
            ..
        })
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig {
            admin_claim: "sub".to_owned(),
            ..hs_cfg()
        }),
        Err(AuthConfigError::Invalid {
            field: "admin_claim",
            ..
        })
    ));
    assert!(matches!(
        TokenVerifier::new(&AuthConfig {
            audience: Some(String::new()),
            ..hs_cfg()
        }),
        Err(AuthConfigError::Invalid {
            field: "audience",
            ..
        })
    ));
    // Config error messages never print the secret.
    let err = TokenVerifier::new(&with_algs(&["HS512"])).unwrap_err();
    assert!(!err.to_string().contains(SECRET));
}

#[test]
fn key_file_errors() {
    let missing = PathBuf::from("/nonexistent/pgtenant/jwt.pem");
    let cfg = AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        public_key_files: vec![missing],
        ..AuthConfig::default()
    };
    assert!(matches!(
        TokenVerifier::new(&cfg),
        Err(AuthConfigError::ReadKeyFile { .. })
    ));

    let private = TempFile::new(&rsa().private_pem);
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &private)),
        Err(AuthConfigError::PrivateKeyInFile { .. })
    ));

    let empty = TempFile::new("just some text\n");
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &empty)),
        Err(AuthConfigError::NoKeysInFile { .. })
    ));

    let broken = TempFile::new("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &broken)),
        Err(AuthConfigError::BadKey { .. })
    ));

    let unterminated = TempFile::new("-----BEGIN PUBLIC KEY-----\nAAAA\n");
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &unterminated)),
        Err(AuthConfigError::BadKey { .. })
    ));

    let cert = TempFile::new("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &cert)),
        Err(AuthConfigError::CertificateInFile { .. })
    ));

    // A P-256 key does not satisfy RS256.
    let ec = TempFile::new(&p256().public_pem);
    assert!(matches!(
        TokenVerifier::new(&asym_cfg(&["RS256"], &ec)),
        Err(AuthConfigError::NoKeyForAlgorithm { alg: "RS256", .. })
    ));
}

#[test]
fn apply_env_overrides_secret() {
    let mut cfg = AuthConfig {
        hs_secret: Some("from-file".into()),
        ..AuthConfig::default()
    };
    cfg.apply_env_from(|name| (name == JWT_SECRET_ENV).then(|| OsString::from(SECRET)));
    assert_eq!(
        cfg.hs_secret.as_ref().map(crate::secret::Secret::expose),
        Some(SECRET)
    );

    let mut cfg = AuthConfig {
        hs_secret: Some("from-file".into()),
        ..AuthConfig::default()
    };
    cfg.apply_env_from(|_| Some(OsString::new()));
    assert_eq!(
        cfg.hs_secret.as_ref().map(crate::secret::Secret::expose),
        Some("from-file")
    );

    let mut cfg = AuthConfig::default();
    cfg.apply_env_from(|_| None);
    assert_eq!(cfg.hs_secret, None);
}

// ---------------------------------------------------------------------------------------------------------------
// Minting

#[test]
fn mint_roundtrip() {
    let v = verifier(&AuthConfig {
        audience: Some("pgtenant".to_owned()),
        issuer: Some("pgtenant-dev".to_owned()),
        ..hs_cfg()
    });
    let req = MintRequest {
        sub: "dev-user".to_owned(),
        email: Some("dev@example.com".to_owned()),
        ttl: Duration::from_secs(3600),
        admin: true,
        audience: Some("pgtenant".to_owned()),
        issuer: Some("pgtenant-dev".to_owned()),
    };
    let token = mint_hs256(SECRET.as_bytes(), &req, DEFAULT_ADMIN_CLAIM).unwrap();
    let c = v.verify(&token).unwrap();
    assert_eq!(c.identity, Identity::UserId("dev-user".to_owned()));
    assert_eq!(c.email.as_deref(), Some("dev@example.com"));
    assert!(c.is_admin);
    assert!(c.expires_at >= now() + 3590 && c.expires_at <= now() + 3600);
    // Minted tokens carry iat and a random jti (revocation), and the verifier reads them.
    let issued = c.issued_at.expect("iat");
    assert!(issued + 5 >= now() && issued <= now());
    let jti = c.jti.clone().expect("jti");
    assert_eq!(jti.len(), 32);
    let again = v
        .verify(&mint_hs256(SECRET.as_bytes(), &req, DEFAULT_ADMIN_CLAIM).unwrap())
        .unwrap();
    assert_ne!(again.jti, Some(jti));
    assert_eq!(c.kid, None);

    let plain = MintRequest {
        admin: false,
        email: None,
        audience: None,
        issuer: None,
        ..req.clone()
    };
    let c = verifier(&hs_cfg())
        .verify(&mint_hs256(SECRET.as_bytes(), &plain, DEFAULT_ADMIN_CLAIM).unwrap())
        .unwrap();
    assert!(!c.is_admin);
    assert_eq!(c.email, None);
}

#[test]
fn mint_errors() {
    let req = MintRequest {
        sub: "u".to_owned(),
        email: None,
        ttl: Duration::from_secs(60),
        admin: false,
        audience: None,
        issuer: None,
    };
    let short = mint_hs256(b"short", &req, DEFAULT_ADMIN_CLAIM).unwrap_err();
    assert!(matches!(short, TokenError::Mint(_)));
    assert!(!short.to_string().contains("short\""));
    let empty_sub = MintRequest {
        sub: String::new(),
        ..req.clone()
    };
    assert!(matches!(
        mint_hs256(SECRET.as_bytes(), &empty_sub, DEFAULT_ADMIN_CLAIM),
        Err(TokenError::Mint(_))
    ));
    let zero_ttl = MintRequest {
        ttl: Duration::ZERO,
        ..req.clone()
    };
    assert!(matches!(
        mint_hs256(SECRET.as_bytes(), &zero_ttl, DEFAULT_ADMIN_CLAIM),
        Err(TokenError::Mint(_))
    ));
    let bad_admin = MintRequest { admin: true, ..req };
    let err = mint_hs256(SECRET.as_bytes(), &bad_admin, "exp").unwrap_err();
    assert!(matches!(err, TokenError::Mint(_)));
    assert!(!err.to_string().contains(SECRET));
}

#[test]
fn a_token_verified_before_is_still_refused_once_expired() {
    let v = verifier(&AuthConfig {
        leeway_secs: 0,
        ..hs_cfg()
    });
    let token = hs256(&json!({ "sub": "u", "exp": now() + 1 }));
    let first = v.verify(&token).expect("valid for a second");
    // Verified again from what was kept: the same claims.
    assert_eq!(v.verify(&token).expect("still valid"), first);
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(expect_err(&v, &token), TokenError::Expired);
}
