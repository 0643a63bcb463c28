//! Unit tests of key sets: parsing a document, choosing a key by `kid`, the URL and address rules of fetching,
//! the refetch gate, claim paths and the organization claim. (Fetching over HTTP is tested in tests/jwks.rs.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk as LibJwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use super::claim_path::ClaimPath;
use super::jwks::{self, JwksError, KeyType};
use super::jwks_fetch::{check_url, is_link_local_or_metadata};
use super::jwks_store::{JwksSettings, JwksSource, JwksStore};
use super::tests::{
    claims_for, ed25519, expect_err, gen, hs256, hs_cfg, now, p256, p384, rsa, rsa_other, verifier,
    Pair, TempFile,
};
use super::*;

fn encoding_key(alg: Algorithm, pair: &Pair) -> EncodingKey {
    let pem = pair.private_pem.as_bytes();
    match KeyType::for_algorithm(alg).expect("asymmetric") {
        KeyType::Rsa => EncodingKey::from_rsa_pem(pem),
        KeyType::P256 | KeyType::P384 => EncodingKey::from_ec_pem(pem),
        KeyType::Ed25519 => EncodingKey::from_ed_pem(pem),
    }
    .expect("private key")
}

/// The public JWK of `pair` for `alg`, with `kid` (or none) and its `alg` member.
fn jwk(alg: Algorithm, pair: &Pair, kid: Option<&str>) -> Value {
    if alg == Algorithm::EdDSA {
        // jsonwebtoken cannot read rcgen's PKCS#8 v2 Ed25519 keys; the public key is the SPKI's last 32 bytes.
        let b64: String = pair
            .public_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("pem");
        let x = URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let mut value = json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA" });
        if let Some(kid) = kid {
            value["kid"] = json!(kid);
        }
        return value;
    }
    let mut jwk = LibJwk::from_encoding_key(&encoding_key(alg, pair), alg).expect("jwk");
    jwk.common.key_id = kid.map(str::to_owned);
    serde_json::to_value(&jwk).expect("json")
}

/// `jwk` without its `alg` member (many providers leave it out).
fn jwk_without_alg(alg: Algorithm, pair: &Pair, kid: Option<&str>) -> Value {
    let mut value = jwk(alg, pair, kid);
    value.as_object_mut().expect("object").remove("alg");
    value
}

fn with(mut key: Value, extra: Value) -> Value {
    if let (Value::Object(k), Value::Object(e)) = (&mut key, extra) {
        k.extend(e);
    }
    key
}

fn set(keys: Vec<Value>) -> String {
    json!({ "keys": keys }).to_string()
}

fn sign_kid(alg: Algorithm, pair: &Pair, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, pair)).expect("sign")
}

/// A verifier whose only keys are the key set file `doc`.
fn file_verifier(algs: &[&str], doc: &str) -> (TokenVerifier, TempFile) {
    let file = TempFile::new(doc);
    let cfg = AuthConfig {
        algorithms: algs.iter().map(|s| s.to_string()).collect(),
        jwks_file: Some(file.0.clone()),
        ..AuthConfig::default()
    };
    (verifier(&cfg), file)
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing

#[test]
fn parses_rsa_ec_and_okp_keys() {
    let doc = set(vec![
        jwk(Algorithm::RS256, rsa(), Some("rsa-1")),
        jwk(Algorithm::ES256, p256(), Some("ec-256")),
        jwk(Algorithm::ES384, p384(), Some("ec-384")),
        jwk(Algorithm::EdDSA, ed25519(), Some("ed")),
        jwk_without_alg(Algorithm::RS256, rsa_other(), None),
    ]);
    let parsed = jwks::parse(doc.as_bytes()).unwrap();
    assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
    let types: Vec<(Option<&str>, KeyType)> = parsed
        .keys
        .iter()
        .map(|k| (k.kid.as_deref(), k.key_type))
        .collect();
    assert_eq!(
        types,
        vec![
            (Some("rsa-1"), KeyType::Rsa),
            (Some("ec-256"), KeyType::P256),
            (Some("ec-384"), KeyType::P384),
            (Some("ed"), KeyType::Ed25519),
            (None, KeyType::Rsa),
        ]
    );
    // `alg` restricts a key; no `alg` lets it serve every algorithm of its type.
    assert!(parsed.keys[0].usable_for(Algorithm::RS256));
    assert!(!parsed.keys[0].usable_for(Algorithm::PS256));
    assert!(parsed.keys[4].usable_for(Algorithm::PS512));
    assert!(!parsed.keys[4].usable_for(Algorithm::ES256));
    assert!(parsed.keys[3].usable_for(Algorithm::EdDSA));
}

#[test]
fn keys_that_cannot_verify_are_skipped_with_a_reason() {
    let good = jwk(Algorithm::RS256, rsa(), Some("good"));
    let base = jwk_without_alg(Algorithm::RS256, rsa(), Some("x"));
    let cases = vec![
        (
            with(base.clone(), json!({ "kid": "enc", "use": "enc" })),
            "use is \"enc\"",
        ),
        (
            with(
                base.clone(),
                json!({ "kid": "ops", "key_ops": ["encrypt"] }),
            ),
            "key_ops does not contain \"verify\"",
        ),
        (
            with(base.clone(), json!({ "kid": "mismatch", "alg": "ES256" })),
            "alg ES256 does not fit a RSA key",
        ),
        (
            with(
                base.clone(),
                json!({ "kid": "unknown-alg", "alg": "RSA-OAEP" }),
            ),
            "not a signature algorithm",
        ),
        (
            json!({ "kid": "sym", "kty": "oct", "k": "c2VjcmV0" }),
            "symmetric (oct) key",
        ),
        (
            json!({ "kid": "p521", "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }),
            "curve \"P-521\" is not supported",
        ),
        (
            json!({ "kid": "x448", "kty": "OKP", "crv": "X448", "x": "AA" }),
            "curve \"X448\" is not supported",
        ),
        (json!({ "kid": "weird", "kty": "XYZ" }), "key type \"XYZ\""),
        (
            json!({ "kid": "short", "kty": "RSA", "n": "AQAB", "e": "AQAB" }),
            "RSA key of 17 bits",
        ),
        (
            with(base.clone(), json!({ "kid": "bad-e", "e": "AAAC" })),
            "exponent is not valid",
        ),
        (
            json!({ "kid": "bad-point", "kty": "EC", "crv": "P-256",
                    "x": "A".repeat(43), "y": "A".repeat(43) }),
            "not a valid P-256 public key",
        ),
        (
            with(base.clone(), json!({ "kid": "b64", "n": "!!!" })),
            "\"n\" is not base64url",
        ),
        (json!("just a string"), "not a JSON object"),
    ];
    let mut keys = vec![good];
    keys.extend(cases.iter().map(|(k, _)| k.clone()));
    let parsed = jwks::parse(set(keys).as_bytes()).unwrap();
    assert_eq!(parsed.keys.len(), 1);
    assert_eq!(parsed.keys[0].kid.as_deref(), Some("good"));
    assert_eq!(parsed.skipped.len(), cases.len(), "{:#?}", parsed.skipped);
    for ((_, want), got) in cases.iter().zip(&parsed.skipped) {
        assert!(got.contains(want), "{got:?} should say {want:?}");
    }
    // `use: sig` and `key_ops: [verify]` are fine; padded base64 too.
    let ok = with(
        base,
        json!({ "use": "sig", "key_ops": ["verify"], "e": "AQAB==" }),
    );
    assert_eq!(jwks::parse(set(vec![ok]).as_bytes()).unwrap().keys.len(), 1);
}

#[test]
fn unusable_documents_are_errors() {
    assert_eq!(jwks::parse(b"not json").unwrap_err(), JwksError::NotJson);
    assert_eq!(jwks::parse(b"[1, 2]").unwrap_err(), JwksError::NotJson);
    assert_eq!(
        jwks::parse(br#"{"keys": {}}"#).unwrap_err(),
        JwksError::NoKeysArray
    );
    let empty = jwks::parse(br#"{"keys": []}"#).unwrap_err();
    assert!(matches!(empty, JwksError::NoUsableKey { .. }));
    assert!(empty.to_string().contains("it is empty"), "{empty}");
    let only_enc = set(vec![with(
        jwk(Algorithm::RS256, rsa(), Some("e")),
        json!({ "use": "enc" }),
    )]);
    let err = jwks::parse(only_enc.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("use is \"enc\""), "{err}");
    let big = format!(
        r#"{{"keys": [], "pad": "{}"}}"#,
        "x".repeat(jwks::MAX_JWKS_BYTES)
    );
    assert_eq!(
        jwks::parse(big.as_bytes()).unwrap_err(),
        JwksError::TooLarge
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Choosing a key

#[test]
fn tokens_are_verified_with_the_key_their_kid_names() {
    let doc = set(vec![
        jwk(Algorithm::RS256, rsa(), Some("one")),
        jwk(Algorithm::RS256, rsa_other(), Some("two")),
        jwk(Algorithm::ES256, p256(), Some("ec")),
        jwk(Algorithm::EdDSA, ed25519(), Some("ed")),
    ]);
    let (v, _file) = file_verifier(&["RS256", "ES256", "EdDSA"], &doc);
    for (alg, pair, kid) in [
        (Algorithm::RS256, rsa(), "one"),
        (Algorithm::RS256, rsa_other(), "two"),
        (Algorithm::ES256, p256(), "ec"),
        (Algorithm::EdDSA, ed25519(), "ed"),
    ] {
        let token = sign_kid(alg, pair, Some(kid), &claims_for("u"));
        assert_eq!(v.verify(&token).unwrap().identity.value(), "u", "{kid}");
    }
    // The kid names a key, the signature is another's: bad signature, not "unknown key".
    let swapped = sign_kid(Algorithm::RS256, rsa_other(), Some("one"), &claims_for("u"));
    assert_eq!(expect_err(&v, &swapped), TokenError::BadSignature);
    // A kid of a key of another type is no key for this token.
    let cross = sign_kid(Algorithm::ES256, p256(), Some("one"), &claims_for("u"));
    assert!(matches!(
        expect_err(&v, &cross),
        TokenError::UnknownKey { .. }
    ));
}

#[test]
fn an_unknown_kid_is_refused_without_echoing_it() {
    let doc = set(vec![jwk(Algorithm::RS256, rsa(), Some("known"))]);
    let (v, _file) = file_verifier(&["RS256"], &doc);
    let kid = "attacker-chosen-kid-0123456789";
    let token = sign_kid(Algorithm::RS256, rsa(), Some(kid), &claims_for("u"));
    let err = expect_err(&v, &token);
    assert_eq!(
        err,
        TokenError::UnknownKey {
            refresh_failing: false
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("does not know"), "{msg}");
    assert!(
        !msg.contains(kid) && !format!("{err:?}").contains(kid),
        "{msg}"
    );
    assert_eq!(err.sqlstate(), "28P01");
    let failing = TokenError::UnknownKey {
        refresh_failing: true,
    };
    assert!(
        failing.to_string().contains("cannot be fetched"),
        "{failing}"
    );
}

#[test]
fn a_token_without_kid_needs_exactly_one_candidate_key() {
    let one = set(vec![jwk(Algorithm::RS256, rsa(), Some("only"))]);
    let (v, _f1) = file_verifier(&["RS256"], &one);
    let no_kid = sign_kid(Algorithm::RS256, rsa(), None, &claims_for("u"));
    assert!(v.verify(&no_kid).is_ok());

    // Two RSA keys: a kid-less RS256 token is ambiguous, but a kid-less ES256 token has one candidate.
    let two = set(vec![
        jwk(Algorithm::RS256, rsa(), Some("a")),
        jwk(Algorithm::RS256, rsa_other(), Some("b")),
        jwk(Algorithm::ES256, p256(), Some("ec")),
    ]);
    let (v, _f2) = file_verifier(&["RS256", "ES256"], &two);
    assert_eq!(expect_err(&v, &no_kid), TokenError::KidRequired);
    let ec = sign_kid(Algorithm::ES256, p256(), None, &claims_for("u"));
    assert!(v.verify(&ec).is_ok());

    // A key restricted to RS384 is no candidate for RS256.
    let restricted = set(vec![
        jwk(Algorithm::RS256, rsa(), Some("a")),
        jwk(Algorithm::RS384, rsa_other(), Some("b")),
    ]);
    let (v, _f3) = file_verifier(&["RS256", "RS384"], &restricted);
    assert!(v.verify(&no_kid).is_ok());
    let rs256_by_b = sign_kid(Algorithm::RS256, rsa_other(), Some("b"), &claims_for("u"));
    assert!(matches!(
        expect_err(&v, &rs256_by_b),
        TokenError::UnknownKey { .. }
    ));
}

#[test]
fn the_algorithm_allowlist_applies_to_key_set_keys() {
    let doc = set(vec![
        jwk(Algorithm::RS256, rsa(), Some("rsa")),
        jwk(Algorithm::ES256, p256(), Some("ec")),
    ]);
    let (v, _file) = file_verifier(&["RS256"], &doc);
    let ec = sign_kid(Algorithm::ES256, p256(), Some("ec"), &claims_for("u"));
    assert_eq!(
        expect_err(&v, &ec),
        TokenError::AlgorithmNotAllowed("ES256".to_owned())
    );
    // HS256 signed with the bytes of a key set member: HS256 is not allowed, and never checked against it.
    let n = jwk(Algorithm::RS256, rsa(), None)["n"]
        .as_str()
        .unwrap()
        .to_owned();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_for("admin"),
        &EncodingKey::from_secret(n.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        expect_err(&v, &confused),
        TokenError::AlgorithmNotAllowed("HS256".to_owned())
    );
}

#[test]
fn pem_keys_and_key_sets_work_side_by_side() {
    let pem = TempFile::new(&rsa_other().public_pem);
    let doc = TempFile::new(&set(vec![jwk(Algorithm::RS256, rsa(), Some("set"))]));
    let v = verifier(&AuthConfig {
        algorithms: vec!["RS256".to_owned(), "HS256".to_owned()],
        public_key_files: vec![pem.0.clone()],
        jwks_file: Some(doc.0.clone()),
        ..hs_cfg()
    });
    assert!(v
        .verify(&sign_kid(
            Algorithm::RS256,
            rsa(),
            Some("set"),
            &claims_for("u")
        ))
        .is_ok());
    // PEM keys have no kid: a token signed by one is accepted whatever kid it names.
    assert!(v
        .verify(&sign_kid(
            Algorithm::RS256,
            rsa_other(),
            Some("pem?"),
            &claims_for("u")
        ))
        .is_ok());
    // Without kid, two RSA keys could have signed it.
    assert_eq!(
        expect_err(
            &v,
            &sign_kid(Algorithm::RS256, rsa(), None, &claims_for("u"))
        ),
        TokenError::KidRequired
    );
    // HS256 is untouched by key sets.
    assert!(v.verify(&hs256(&claims_for("u"))).is_ok());
    // Unknown kid, and no PEM key verifies it: unknown key.
    let stranger = gen(&rcgen::PKCS_RSA_SHA256);
    assert!(matches!(
        expect_err(
            &v,
            &sign_kid(Algorithm::RS256, &stranger, Some("new"), &claims_for("u"))
        ),
        TokenError::UnknownKey { .. }
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration

#[test]
fn key_set_configuration() {
    let cfg: AuthConfig = toml::from_str(
        r#"
        algorithms = ["RS256"]
        jwks_url = "https://idp.example.com/.well-known/jwks.json"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.jwks_url.len(), 1);
    assert_eq!(cfg.jwks_refresh_secs, DEFAULT_JWKS_REFRESH_SECS);
    assert_eq!(cfg.jwks_refetch_interval_secs, 30);
    // A key set stands in for PEM files: no key is needed at startup.
    let v = TokenVerifier::new(&cfg).unwrap();
    assert_eq!(v.jwks_status().len(), 1);

    let cfg: AuthConfig = toml::from_str(
        r#"
        algorithms = ["RS256", "ES256"]
        jwks_url = ["https://a.example.com/jwks", "https://b.example.com/jwks", "https://a.example.com/jwks"]
        issuer = "https://idp.example.com/"
        discover = true
        "#,
    )
    .unwrap();
    let sources = cfg.jwks_sources().unwrap();
    assert_eq!(sources.len(), 3, "duplicates are dropped: {sources:?}");
    assert_eq!(
        sources[2],
        JwksSource::Discovery {
            issuer: "https://idp.example.com/".to_owned(),
            document: "https://idp.example.com/.well-known/openid-configuration"
                .parse()
                .unwrap(),
        }
    );

    let invalid = |cfg: AuthConfig, field: &str| match TokenVerifier::new(&cfg) {
        Err(AuthConfigError::Invalid { field: f, reason }) => {
            assert_eq!(f, field, "{reason}");
            reason
        }
        other => panic!("expected an error about {field}, got {other:?}"),
    };
    let rs = || AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        ..AuthConfig::default()
    };
    let reason = invalid(
        AuthConfig {
            jwks_url: vec!["https://idp.example.com/jwks".to_owned()],
            ..hs_cfg()
        },
        "algorithms",
    );
    assert!(reason.contains("RS*/PS*/ES*/EdDSA"), "{reason}");
    let reason = invalid(
        AuthConfig {
            discover: true,
            ..rs()
        },
        "discover",
    );
    assert!(reason.contains("auth.issuer"), "{reason}");
    for url in [
        "http://idp.example.com/jwks",
        "ftp://idp.example.com/jwks",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pw@idp.example.com/jwks",
        "not a url",
    ] {
        invalid(
            AuthConfig {
                jwks_url: vec![url.to_owned()],
                ..rs()
            },
            "jwks_url",
        );
    }
    invalid(
        AuthConfig {
            jwks_url: vec!["https://idp.example.com/jwks".to_owned()],
            jwks_refresh_secs: 0,
            ..rs()
        },
        "jwks_refresh_secs",
    );
    invalid(
        AuthConfig {
            org_claim: Some("org..id".to_owned()),
            ..hs_cfg()
        },
        "org_claim",
    );
    invalid(
        AuthConfig {
            user_claim: Some(" ".to_owned()),
            ..hs_cfg()
        },
        "user_claim",
    );
    // The allow switches open what they say.
    assert!(TokenVerifier::new(&AuthConfig {
        jwks_url: vec!["http://idp.internal/jwks".to_owned()],
        jwks_allow_http: true,
        ..rs()
    })
    .is_ok());
    assert!(TokenVerifier::new(&AuthConfig {
        jwks_url: vec!["https://169.254.169.254/jwks".to_owned()],
        jwks_allow_link_local: true,
        ..rs()
    })
    .is_ok());
}

#[test]
fn a_broken_key_set_file_is_a_configuration_error() {
    let missing = AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        jwks_file: Some("/nonexistent/pgtenant/jwks.json".into()),
        ..AuthConfig::default()
    };
    let err = TokenVerifier::new(&missing).unwrap_err();
    assert!(matches!(err, AuthConfigError::JwksFile { .. }), "{err}");
    let file = TempFile::new(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#);
    let err = TokenVerifier::new(&AuthConfig {
        jwks_file: Some(file.0.clone()),
        ..missing
    })
    .unwrap_err();
    assert!(err.to_string().contains("symmetric"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// URLs and addresses

#[test]
fn url_rules() {
    let ok = |url: &str| check_url(url, false, false).unwrap();
    let refused = |url: &str| check_url(url, false, false).unwrap_err();
    ok("https://idp.example.com/.well-known/jwks.json");
    ok("http://127.0.0.1:8080/jwks");
    ok("http://127.1.2.3/jwks");
    ok("http://[::1]:9000/jwks");
    ok("http://localhost:9000/jwks");
    ok("https://10.0.0.5/jwks");
    assert!(refused("http://idp.example.com/jwks").contains("loopback"));
    assert!(refused("http://10.0.0.5/jwks").contains("jwks_allow_http"));
    assert!(refused("https://169.254.169.254/").contains("link-local"));
    assert!(refused("https://[fd00:ec2::254]/").contains("link-local"));
    assert!(refused("https://[::ffff:169.254.169.254]/").contains("link-local"));
    // The URL parser reads 0xa9fea9fe as 169.254.169.254.
    assert!(refused("https://0xa9fea9fe/").contains("link-local"));
    assert!(refused("file:///etc/passwd").contains("scheme"));
    assert!(refused("https://u:p@idp.example.com/").contains("credentials"));
    assert!(check_url("http://idp.example.com/jwks", true, false).is_ok());
    assert!(check_url("https://169.254.169.254/", false, true).is_ok());
}

#[test]
fn link_local_and_metadata_addresses() {
    let forbidden = |ip: &str| is_link_local_or_metadata(ip.parse::<IpAddr>().unwrap());
    for ip in [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "febf::1",
        "fd00:ec2::254",
        "fdff::1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ] {
        assert!(forbidden(ip), "{ip}");
    }
    for ip in [
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "8.8.8.8",
        "169.253.255.255",
        "169.255.0.1",
        "::1",
        "fc00::1",
        "fec0::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
    ] {
        assert!(!forbidden(ip), "{ip}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The refetch gate

fn settings(refetch_interval: Duration, login_wait: Duration) -> JwksSettings {
    JwksSettings {
        refresh: Duration::from_secs(300),
        refetch_interval,
        stale_after: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        login_wait,
        file_check: Duration::from_secs(1),
        allow_http: false,
        allow_link_local: false,
    }
}

/// A stand-in for the fetcher: every wake-up is one round, counted.
fn fake_fetcher(store: &Arc<JwksStore>) -> Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let rounds = Arc::new(AtomicUsize::new(0));
    let (store, counter) = (store.clone(), rounds.clone());
    tokio::spawn(async move {
        // The first round, as the real fetcher does at start.
        store.end_round();
        loop {
            store.wake.notified().await;
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.end_round();
        }
    });
    rounds
}

fn url_store(refetch_interval: Duration, login_wait: Duration) -> Arc<JwksStore> {
    let url = "https://idp.example.com/jwks".parse().unwrap();
    Arc::new(JwksStore::new(
        vec![JwksSource::Url(url)],
        settings(refetch_interval, login_wait),
    ))
}

/// A refetch for an unknown key that succeeds as soon as anything changes.
async fn refetch(store: &JwksStore) -> bool {
    store.refetch_until(|| Some(())).await.is_some()
}

/// Waits (at most 10 s) for the round the fetcher runs at start to end.
async fn first_round_done(store: &JwksStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.round_in_flight() {
        assert!(std::time::Instant::now() < deadline, "no first round");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn unknown_keys_cause_at_most_one_refetch_per_interval() {
    use std::sync::atomic::Ordering;
    let store = url_store(Duration::from_secs(30), Duration::from_secs(10));
    let rounds = fake_fetcher(&store);
    first_round_done(&store).await;

    // Many logins at once: one refetch, and all of them wait for it.
    let waits: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { refetch(&store).await })
        })
        .collect();
    for wait in waits {
        assert!(wait.await.unwrap(), "every login saw the refetch complete");
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 1);
    assert_eq!(store.forced_refetches(), 1);

    // Within the interval: refused at once, no fetch.
    for _ in 0..1000 {
        assert!(!refetch(&store).await);
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 1);
    assert_eq!(store.forced_refetches(), 1);
}

#[tokio::test]
async fn after_the_interval_an_unknown_key_may_refetch_again() {
    use std::sync::atomic::Ordering;
    let store = url_store(Duration::from_millis(200), Duration::from_secs(10));
    let rounds = fake_fetcher(&store);
    first_round_done(&store).await;
    assert!(refetch(&store).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !refetch(&store).await {
        assert!(std::time::Instant::now() < deadline, "no second refetch");
        tokio::task::yield_now().await;
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_waiting_login_tries_again_when_a_source_delivers_and_gives_up_when_the_round_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // No fetcher: the test plays it. The store starts with its first round in flight.
    let store = url_store(Duration::from_secs(30), Duration::from_secs(30));
    let delivered = AtomicBool::new(false);
    let attempt = || delivered.load(Ordering::SeqCst).then_some("verified");
    let source_delivers = async {
        tokio::task::yield_now().await;
        delivered.store(true, Ordering::SeqCst);
        let doc = set(vec![jwk(Algorithm::RS256, rsa(), Some("k"))]);
        store.record_success(0, jwks::parse(doc.as_bytes()).unwrap(), None);
    };
    // The round is still running (another source may be slow): the login goes on at once.
    let (result, ()) = tokio::join!(store.refetch_until(attempt), source_delivers);
    assert_eq!(result, Some("verified"));
    assert!(store.round_in_flight());
}

#[tokio::test]
async fn a_login_during_a_periodic_round_asks_once_more_when_it_ends_without_the_key() {
    use std::sync::atomic::Ordering;
    let store = url_store(Duration::from_secs(30), Duration::from_secs(30));
    let rounds = fake_fetcher(&store);
    first_round_done(&store).await;
    // A periodic refresh is running (it may have started before the new key was published).
    store.begin_round();
    let round_ends = async {
        tokio::task::yield_now().await;
        store.end_round();
    };
    // Nothing helps: after that round, one refetch of its own, then the login gives up (not at login_wait).
    let (result, ()) = tokio::join!(store.refetch_until(|| None::<()>), round_ends);
    assert_eq!(result, None);
    assert_eq!(rounds.load(Ordering::SeqCst), 1);
    assert_eq!(store.forced_refetches(), 1);
    // And that refetch counts for the rate limit.
    assert!(!refetch(&store).await);
}

#[tokio::test]
async fn a_login_waits_for_a_refetch_only_so_long() {
    // No fetcher answers: the first round never ends, and the login gives up after login_wait.
    let store = url_store(Duration::from_secs(30), Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert!(!refetch(&store).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // File-only stores never refetch.
    let file_only = JwksStore::new(
        vec![JwksSource::File("/x".into())],
        settings(Duration::from_secs(30), Duration::from_secs(5)),
    );
    assert!(!refetch(&file_only).await);
}

// ---------------------------------------------------------------------------------------------------------------
// Claim paths, user and organization claims

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn claim_paths_take_the_longest_matching_name() {
    let claims = object(json!({
        "sub": "auth0|1",
        "https://app.example.com/claims": { "user_id": "u-1", "org": { "id": "o-1" } },
        "org": { "id": "nested" },
        "org.id": "flat",
        "app_metadata": { "tenant.v2": { "id": "t-2" } },
        "n": 7,
    }));
    let at = |path: &str| ClaimPath::parse(path).unwrap().resolve(&claims).cloned();
    assert_eq!(at("sub"), Some(json!("auth0|1")));
    assert_eq!(
        at("https://app.example.com/claims.user_id"),
        Some(json!("u-1"))
    );
    assert_eq!(
        at("https://app.example.com/claims.org.id"),
        Some(json!("o-1"))
    );
    assert_eq!(at("org.id"), Some(json!("flat")), "an exact name wins");
    assert_eq!(at("app_metadata.tenant.v2.id"), Some(json!("t-2")));
    assert_eq!(at("n"), Some(json!(7)));
    assert_eq!(at("sub.x"), None, "a string has no members");
    assert_eq!(at("missing"), None);
    assert_eq!(at("https://app.example.com/claims.nope"), None);
    for bad in ["", " ", ".a", "a.", "a..b", " a"] {
        assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn user_claim_path_and_org_claim() {
    let v = verifier(&AuthConfig {
        user_claim: Some("https://app.example.com/claims.user_id".to_owned()),
        org_claim: Some("org_id".to_owned()),
        ..hs_cfg()
    });
    let token = hs256(&json!({
        "sub": "auth0|abc",
        "https://app.example.com/claims": { "user_id": "7a0e…" },
        "org_id": "org_123",
        "exp": now() + 600,
    }));
    let c = v.verify(&token).unwrap();
    assert_eq!(c.identity, Identity::UserId("7a0e…".to_owned()));
    assert_eq!(c.organization, OrgClaim::Named("org_123".to_owned()));
    // The path is required; `sub` is no fallback.
    let no_user = hs256(&json!({ "sub": "auth0|abc", "org_id": "o", "exp": now() + 600 }));
    assert_eq!(expect_err(&v, &no_user), TokenError::MissingIdentity);
    // Without the org claim the token verifies; the login then refuses it (see directory::choose_membership).
    let no_org = hs256(&json!({
        "https://app.example.com/claims": { "user_id": "u" }, "exp": now() + 600,
    }));
    assert_eq!(v.verify(&no_org).unwrap().organization, OrgClaim::Missing);
    let numeric = hs256(&json!({
        "https://app.example.com/claims": { "user_id": "u" }, "org_id": 42, "exp": now() + 600,
    }));
    assert_eq!(
        v.verify(&numeric).unwrap().organization,
        OrgClaim::Named("42".to_owned())
    );
    // Not configured: not looked at.
    let plain = verifier(&hs_cfg());
    assert_eq!(
        plain.verify(&hs256(&claims_for("u"))).unwrap().organization,
        OrgClaim::NotConfigured
    );

    // An email at a custom path; email_verified: false still refuses.
    let by_email = verifier(&AuthConfig {
        identity_claim: IdentityClaim::Email,
        user_claim: Some("https://app.example.com/email".to_owned()),
        ..hs_cfg()
    });
    let t = hs256(&json!({ "https://app.example.com/email": "j@example.com", "exp": now() + 600 }));
    assert_eq!(
        by_email.verify(&t).unwrap().identity,
        Identity::Email("j@example.com".to_owned())
    );
    let t = hs256(&json!({
        "https://app.example.com/email": "j@example.com", "email_verified": false, "exp": now() + 600,
    }));
    assert_eq!(expect_err(&by_email, &t), TokenError::EmailNotVerified);
}
