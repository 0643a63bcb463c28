//! Login paths through pgtenant against a real PostgreSQL: each refusal has its SQLSTATE, and a valid token
//! lands in the tenant's schema as the tenant's role.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

async fn refused_with(proxy: &TestProxy, user: &str, token: &str) -> String {
    match proxy.try_connect(user, token).await {
        Ok(_) => panic!("login with this token should have been refused"),
        Err(e) => sqlstate(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_lands_in_the_tenant_schema_as_the_tenant_role() {
    let tenant = onboard("valid").await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&tenant).await;
    let row = client
        .query_one("SELECT current_user::text, session_user::text, current_schema()::text, (SELECT count(*) FROM employees)", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), tenant.onboarded.role.as_str());
    assert_eq!(row.get::<_, String>(1), tenant.onboarded.role.as_str());
    assert_eq!(row.get::<_, String>(2), tenant.onboarded.schema.as_str());
    assert_eq!(
        row.get::<_, i64>(3),
        1,
        "the admin user was recorded in the tenant's employees table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_identity_claim_works() {
    let tenant = onboard("email-id").await;
    let proxy =
        TestProxy::start_with(|c| c.auth.identity_claim = pgtenant::auth::IdentityClaim::Email)
            .await;
    let token = hs256(
        json!({"email": tenant.email, "exp": now() + 600}),
        JWT_SECRET.as_bytes(),
    );
    let client = proxy
        .try_connect(&tenant.email, &token)
        .await
        .expect("login by email");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), tenant.onboarded.role.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_28p01() {
    let tenant = onboard("badtok").await;
    let sub = tenant.onboarded.admin_user_id.to_string();
    let proxy = TestProxy::start().await;
    let secret = JWT_SECRET.as_bytes();

    let expired = hs256(json!({"sub": sub, "exp": now() - 3600}), secret);
    let not_yet_valid = hs256(
        json!({"sub": sub, "exp": now() + 3600, "nbf": now() + 1800}),
        secret,
    );
    let wrong_signature = hs256(
        json!({"sub": sub, "exp": now() + 3600}),
        b"another-secret-0123456789abcdef0123456789",
    );
    let no_exp = hs256(json!({"sub": sub}), secret);
    let header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64URL.encode(json!({"sub": sub, "exp": now() + 3600}).to_string());
    let alg_none = format!("{header}.{payload}.");
    let oversized = format!("{}.{}.sig", "a".repeat(5000), "b".repeat(5000));

    for (label, token) in [
        ("expired", expired),
        ("not yet valid", not_yet_valid),
        ("wrong signature", wrong_signature),
        ("no exp", no_exp),
        ("alg none", alg_none),
        ("garbage", "not-a-jwt-at-all".to_string()),
        ("oversized", oversized),
    ] {
        assert_eq!(
            refused_with(&proxy, &tenant.email, &token).await,
            "28P01",
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_is_refused() {
    // An RS256 deployment: a token signed HS256 with the public key's PEM as the HMAC secret must fail.
    let tenant = onboard("confusion").await;
    let sub = tenant.onboarded.admin_user_id.to_string();
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    let key_pair = match key_pair {
        Ok(k) => k,
        Err(_) => {
            // rcgen cannot generate RSA with aws-lc-rs on every build: use ECDSA (ES256) instead.
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key")
        }
    };
    let is_rsa = key_pair.algorithm() == &rcgen::PKCS_RSA_SHA256;
    let public_pem = key_pair.public_key_pem();
    let dir = std::env::temp_dir().join(format!("pgtenant-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem_path = dir.join("public.pem");
    std::fs::write(&pem_path, &public_pem).expect("write pem");
    let alg = if is_rsa { "RS256" } else { "ES256" };
    let proxy = TestProxy::start_with(|c| {
        c.auth.algorithms = vec![alg.to_string()];
        c.auth.hs_secret = None;
        c.auth.public_key_files = vec![pem_path.clone()];
    })
    .await;

    // A genuine token of the configured algorithm logs in.
    let private_pem = key_pair.serialize_pem();
    let (algorithm, encoding_key) = if is_rsa {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("rsa key"),
        )
    } else {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("ec key"),
        )
    };
    let claims = json!({"sub": sub, "exp": now() + 600});
    let genuine =
        jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding_key).expect("sign");
    proxy
        .try_connect(&tenant.email, &genuine)
        .await
        .expect("genuine asymmetric token logs in");

    // HS256 signed with the public key bytes: refused.
    let confused = hs256(claims.clone(), public_pem.as_bytes());
    assert_eq!(
        refused_with(&proxy, &tenant.email, &confused).await,
        "28P01"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_issuer_are_checked_when_configured() {
    let tenant = onboard("aud").await;
    let sub = tenant.onboarded.admin_user_id.to_string();
    let proxy = TestProxy::start_with(|c| {
        c.auth.audience = Some("pgtenant-tests".into());
        c.auth.issuer = Some("https://issuer.test/".into());
    })
    .await;
    let secret = JWT_SECRET.as_bytes();
    let good = hs256(
        json!({"sub": sub, "exp": now() + 600, "aud": "pgtenant-tests", "iss": "https://issuer.test/"}),
        secret,
    );
    proxy
        .try_connect(&tenant.email, &good)
        .await
        .expect("right audience and issuer");
    let wrong_aud = hs256(
        json!({"sub": sub, "exp": now() + 600, "aud": "someone-else", "iss": "https://issuer.test/"}),
        secret,
    );
    assert_eq!(
        refused_with(&proxy, &tenant.email, &wrong_aud).await,
        "28P01"
    );
    let wrong_iss = hs256(
        json!({"sub": sub, "exp": now() + 600, "aud": "pgtenant-tests", "iss": "https://evil.test/"}),
        secret,
    );
    assert_eq!(
        refused_with(&proxy, &tenant.email, &wrong_iss).await,
        "28P01"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_disabled_and_suspended_are_refused() {
    let tenant = onboard("status").await;
    let proxy = TestProxy::start().await;

    let unknown = token_for(
        &uuid::Uuid::new_v4().to_string(),
        None,
        Duration::from_secs(600),
    );
    assert_eq!(refused_with(&proxy, "nobody", &unknown).await, "28000");
    let not_a_uuid = token_for("definitely-not-a-user", None, Duration::from_secs(600));
    assert_eq!(refused_with(&proxy, "nobody", &not_a_uuid).await, "28000");

    let admin = superuser().await;
    admin
        .execute(
            "UPDATE pgtenant.users SET disabled = true WHERE id = $1",
            &[&tenant.onboarded.admin_user_id],
        )
        .await
        .expect("disable");
    assert_eq!(
        refused_with(&proxy, &tenant.email, &tenant.token()).await,
        "28000"
    );
    admin
        .execute(
            "UPDATE pgtenant.users SET disabled = false WHERE id = $1",
            &[&tenant.onboarded.admin_user_id],
        )
        .await
        .expect("enable");
    proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .expect("enabled again");

    admin
        .execute(
            "UPDATE pgtenant.organizations SET status = 'suspended' WHERE id = $1",
            &[&tenant.onboarded.organization_id],
        )
        .await
        .expect("suspend");
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .expect_err("suspended is refused");
    assert_eq!(sqlstate(&err), "28000");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("suspended"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000_and_tenant_name_is_accepted() {
    let tenant = onboard("dbname").await;
    let proxy = TestProxy::start().await;
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.dbname("no_such_database");
    let err = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => panic!("an unknown database name should be refused"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&err), "3D000");
    config.dbname(&tenant.onboarded.slug);
    let _connected = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the organization's slug is accepted as database name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_is_53300() {
    let tenant = onboard("poolwait").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.size_per_tenant = 1;
        c.pool.acquire_timeout_ms = 300;
    })
    .await;
    let _holder = proxy.connect(&tenant).await;
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .expect_err("second client waits, then 53300");
    assert_eq!(sqlstate(&err), "53300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_08006() {
    let tenant = onboard("down").await;
    let free = pgcluster::free_port().expect("port");
    let proxy = TestProxy::start_with(|c| c.upstream.port = free).await;
    // The directory is down too (same server): pgtenant says it cannot reach it.
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&err), "08006");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_error_messages() {
    let tenant = onboard("noleak").await;
    let proxy = TestProxy::start().await;
    let expired = hs256(
        json!({"sub": tenant.onboarded.admin_user_id.to_string(), "exp": now() - 3600}),
        JWT_SECRET.as_bytes(),
    );
    let err = proxy
        .try_connect(&tenant.email, &expired)
        .await
        .expect_err("refused");
    let text = format!("{err} {err:?}");
    for part in expired.split('.') {
        assert!(!text.contains(part), "token part leaked into: {text}");
    }
}
