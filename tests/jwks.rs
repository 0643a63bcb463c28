//! Keys from the identity provider, against a real PostgreSQL: key sets (JWKS) served by a small HTTP server on
//! loopback that this test starts and counts requests at; RS256, ES256 and EdDSA logins; rotation without a
//! restart; a flood of unknown `kid`s costing at most a few fetches; the provider going down; redirecting,
//! oversized and slow endpoints, and an https one with an untrusted certificate; a stalled source beside a good
//! one; OpenID discovery; a key set file re-read on change and on RELOAD; claim paths and the organization claim.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgtenant::auth::{mint_hs256, IdentityClaim, MintRequest};
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------------------------
// A key set server: answers HTTP/1.1 by hand, one request per connection, and counts requests per path.

#[derive(Clone)]
enum Reply {
    Json(String),
    Redirect(String),
    /// A 200 whose body is larger than pgtenant reads; with or without Content-Length.
    Huge {
        content_length: bool,
    },
    /// Headers, then the body never comes.
    Stall,
}

struct Stub {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start() -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        let addr = listener.local_addr().expect("addr");
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(stream, r.clone(), h.clone()));
            }
        });
        Stub {
            addr,
            routes,
            hits,
            accept,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn set(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    fn serve_keys(&self, path: &str, keys: &[&TestKey]) {
        let doc = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        self.set(path, Reply::Json(doc.to_string()));
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// The provider goes away: its port refuses connections from now on.
    fn stop(&self) {
        self.accept.abort();
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let reply = routes.lock().unwrap().get(&path).cloned();
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
    };
    let _ = match reply {
        None => {
            stream
                .write_all(&head("404 Not Found", "Content-Length: 0\r\n"))
                .await
        }
        Some(Reply::Json(body)) => {
            let mut out = head(
                "200 OK",
                &format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            );
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out).await
        }
        Some(Reply::Redirect(location)) => {
            stream
                .write_all(&head(
                    "302 Found",
                    &format!("Location: {location}\r\nContent-Length: 0\r\n"),
                ))
                .await
        }
        Some(Reply::Huge { content_length }) => {
            let body = format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(100_000));
            let extra = if content_length {
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
            } else {
                "Content-Type: application/json\r\n".to_owned()
            };
            let mut out = head("200 OK", &extra);
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out).await
        }
        Some(Reply::Stall) => {
            let _ = stream
                .write_all(&head(
                    "200 OK",
                    "Content-Type: application/json\r\nContent-Length: 1000\r\n",
                ))
                .await;
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
    };
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and tokens

struct TestKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn new(alg: Algorithm, kid: &str) -> TestKey {
        let (rcgen_alg, pem_kind) = match alg {
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, "rsa"),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "ec"),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, "ed"),
            other => panic!("no test key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key pair");
        let pem = pair.serialize_pem();
        let encoding = match pem_kind {
            "rsa" => EncodingKey::from_rsa_pem(pem.as_bytes()),
            "ec" => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .expect("encoding key");
        let mut jwk = if alg == Algorithm::EdDSA {
            use base64::Engine;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
            json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig" })
        } else {
            let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg).expect("jwk");
            serde_json::to_value(&jwk).expect("json")
        };
        jwk["kid"] = json!(kid);
        TestKey {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk,
        }
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A token for `tenant`'s admin user, with this key's kid.
    fn token_for(&self, tenant: &TestTenant) -> String {
        self.sign(Some(&self.kid), &user_claims(tenant))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn user_claims(tenant: &TestTenant) -> Value {
    json!({ "sub": tenant.onboarded.admin_user_id.to_string(), "exp": now() + 600 })
}

fn algorithms(c: &mut Config) {
    c.auth.algorithms = ["HS256", "RS256", "ES256", "EdDSA"]
        .iter()
        .map(|s| s.to_string())
        .collect();
}

/// A proxy taking keys from `urls`; `adjust` tunes it further.
async fn proxy_with_jwks(urls: &[String], adjust: impl FnOnce(&mut Config)) -> TestProxy {
    let urls = urls.to_vec();
    TestProxy::start_with(|c| {
        algorithms(c);
        c.auth.jwks_url = urls;
        adjust(c);
    })
    .await
}

/// Logs in and says which role the session runs as.
async fn login(proxy: &TestProxy, tenant: &TestTenant, token: &str) -> Result<String, String> {
    match proxy.try_connect(&tenant.email, token).await {
        Ok(client) => Ok(client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0)),
        Err(e) => Err(format!(
            "{} {}",
            sqlstate(&e),
            e.as_db_error().map(|d| d.message()).unwrap_or_default()
        )),
    }
}

async fn login_ok(proxy: &TestProxy, tenant: &TestTenant, token: &str) {
    match login(proxy, tenant, token).await {
        Ok(role) => assert_eq!(role, tenant.onboarded.role.as_str()),
        Err(e) => panic!("login refused: {e}"),
    }
}

/// Polls `check` until it holds, for at most 20 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status line of the key set source whose name contains `source`.
fn source_status(proxy: &TestProxy, source: &str) -> pgtenant::auth::JwksSourceStatus {
    proxy
        .proxy
        .verifier()
        .jwks_status()
        .into_iter()
        .find(|s| s.source.contains(source))
        .unwrap_or_else(|| panic!("no key set source {source}"))
}

fn admin_token() -> String {
    mint_hs256(
        JWT_SECRET.as_bytes(),
        &MintRequest {
            sub: "platform-operator".into(),
            email: None,
            ttl: Duration::from_secs(600),
            admin: true,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint")
}

/// SHOW CONFIG through the admin channel, as (key, value) pairs.
async fn show_config(proxy: &TestProxy) -> HashMap<String, String> {
    let mut config = proxy.client_config("ops", &admin_token());
    config.dbname("pgtenant");
    let client = connect(config).await;
    let mut out = HashMap::new();
    for message in client
        .simple_query("SHOW CONFIG")
        .await
        .expect("SHOW CONFIG")
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            out.insert(
                row.get(0).unwrap_or_default().to_owned(),
                row.get(1).unwrap_or_default().to_owned(),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Log capture: the reasons for refusing an endpoint must be in the log.

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_env_filter("pgtenant=info")
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_tokens_log_in_with_keys_from_a_jwks_url() {
    let tenant = onboard("jwks-algs").await;
    let rsa = TestKey::new(Algorithm::RS256, "rsa-1");
    let ec = TestKey::new(Algorithm::ES256, "ec-1");
    let ed = TestKey::new(Algorithm::EdDSA, "ed-1");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&rsa, &ec, &ed]);
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |_| {}).await;

    for key in [&rsa, &ec, &ed] {
        login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;
    }
    // HS256 still works beside the key set.
    login_ok(&proxy, &tenant, &tenant.token()).await;
    // A key of the right type that is not in the set: refused, with a clear message and no token text.
    let stranger = TestKey::new(Algorithm::ES256, "ec-1");
    let err = login(&proxy, &tenant, &stranger.token_for(&tenant))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("28P01") && err.contains("signature is invalid"),
        "{err}"
    );
    let config = show_config(&proxy).await;
    let keys = config
        .iter()
        .find(|(k, _)| k.starts_with("jwks[") && k.ends_with("].keys"))
        .map(|(_, v)| v.clone())
        .expect("a jwks row in SHOW CONFIG");
    assert_eq!(keys, "3 (rsa-1, ec-1, ed-1)");
    assert_eq!(
        config.get("auth.jwks_url").map(String::as_str),
        Some(stub.url("/jwks").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kid_works_at_once_without_restart() {
    let tenant = onboard("jwks-rotate").await;
    let old = TestKey::new(Algorithm::RS256, "2024-01");
    let new = TestKey::new(Algorithm::RS256, "2024-07");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&old]);
    // The background refresh is far away: only the unknown-kid refetch can find the new key.
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |c| c.auth.jwks_refresh_secs = 3600).await;
    login_ok(&proxy, &tenant, &old.token_for(&tenant)).await;
    assert_eq!(stub.hits("/jwks"), 1);

    stub.serve_keys("/jwks", &[&old, &new]);
    login_ok(&proxy, &tenant, &new.token_for(&tenant)).await;
    assert_eq!(stub.hits("/jwks"), 2, "one refetch for the new kid");
    login_ok(&proxy, &tenant, &old.token_for(&tenant)).await;
    login_ok(&proxy, &tenant, &new.token_for(&tenant)).await;
    assert_eq!(stub.hits("/jwks"), 2, "known keys need no fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_stops_working_after_the_refresh() {
    let tenant = onboard("jwks-remove").await;
    let old = TestKey::new(Algorithm::RS256, "old");
    let new = TestKey::new(Algorithm::ES256, "new");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&old, &new]);
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |c| c.auth.jwks_refresh_secs = 1).await;
    login_ok(&proxy, &tenant, &old.token_for(&tenant)).await;

    stub.serve_keys("/jwks", &[&new]);
    let fetched = stub.hits("/jwks");
    eventually("a refresh after the key was removed", async || {
        stub.hits("/jwks") > fetched && source_status(&proxy, "/jwks").keys == 1
    })
    .await;
    let err = login(&proxy, &tenant, &old.token_for(&tenant))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("28P01") && err.contains("does not know"),
        "{err}"
    );
    assert!(!err.contains("old\""), "{err}");
    login_ok(&proxy, &tenant, &new.token_for(&tenant)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_causes_at_most_a_few_fetches() {
    let tenant = onboard("jwks-flood").await;
    let key = TestKey::new(Algorithm::RS256, "real");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&key]);
    // Default refetch interval (30 s) and refresh (5 min). The failed-login limits would refuse this flood from
    // one address after 20 tokens (53300, tests/token_control.rs): off here, to load the key set fetcher.
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |c| {
        c.login.failures_burst_per_address = 0;
        c.login.failures_burst_per_identity = 0;
    })
    .await;
    login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;

    let claims = user_claims(&tenant);
    let tokens: Vec<(String, String)> = (0..1000)
        .map(|_| {
            let kid = uuid::Uuid::new_v4().to_string();
            (kid.clone(), key.sign(Some(&kid), &claims))
        })
        .collect();
    let proxy = Arc::new(proxy);
    let tenant = Arc::new(tenant);
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for (kid, token) in tokens {
        let (proxy, tenant, slots) = (proxy.clone(), tenant.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.expect("semaphore");
            let err = login(&proxy, &tenant, &token).await.unwrap_err();
            assert!(
                err.starts_with("28P01") && err.contains("does not know"),
                "{err}"
            );
            assert!(!err.contains(&kid), "the kid is token text: {err}");
        }));
    }
    for task in tasks {
        task.await.expect("login task");
    }
    let fetches = stub.hits("/jwks");
    assert!(
        fetches <= 3,
        "1000 unknown kids caused {fetches} fetches (at start, one refetch, maybe a refresh)"
    );
    let refetches = proxy
        .proxy
        .verifier()
        .jwks()
        .expect("store")
        .forced_refetches();
    eprintln!("1000 unknown kids: {fetches} fetches in all, {refetches} of them asked for by unknown kids");
    assert!(refetches <= 2, "{refetches} refetches");
    // The real key still works.
    login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_provider_goes_down_known_keys_keep_working() {
    capture_logs();
    let tenant = onboard("jwks-down").await;
    let key = TestKey::new(Algorithm::EdDSA, "ed");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&key]);
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |c| {
        c.auth.jwks_refresh_secs = 1;
        c.auth.jwks_refetch_interval_secs = 1;
        c.server.metrics_listen = None;
    })
    .await;
    login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;

    stub.stop();
    eventually("a failed refresh", async || {
        source_status(&proxy, "/jwks").last_error.is_some()
    })
    .await;
    login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;

    let unknown = TestKey::new(Algorithm::EdDSA, "rotated-in");
    let err = login(&proxy, &tenant, &unknown.token_for(&tenant))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("28P01")
            && err.contains("does not know")
            && err.contains("cannot be fetched right now"),
        "{err}"
    );

    let status = source_status(&proxy, "/jwks");
    assert_eq!(status.keys, 1, "the last good set keeps serving");
    let last_error = status.last_error.expect("last error");
    assert!(last_error.contains("cannot connect"), "{last_error}");
    let config = show_config(&proxy).await;
    let row = |what: &str| {
        config
            .get(&format!("jwks[{}].{what}", stub.url("/jwks")))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} row in SHOW CONFIG: {config:?}"))
    };
    assert!(row("last_error").contains("cannot connect"), "{config:?}");
    assert!(row("age_seconds").parse::<u64>().is_ok(), "{config:?}");
    assert!(row("keys").starts_with("1 (ed)"), "{config:?}");
    let metrics = pgtenant::metrics_http::render(&proxy.proxy);
    assert!(
        metrics.contains(&format!(
            "pgtenant_jwks_keys{{source=\"{}\"}} 1",
            stub.url("/jwks")
        )),
        "{metrics}"
    );
    assert!(metrics.contains("pgtenant_jwks_age_seconds{"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgtenant_jwks_last_error{")
                && l.contains("cannot connect")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(logs().contains("JWKS: fetch failed; the last good key set keeps serving"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirecting_oversized_and_slow_endpoints_are_refused_with_a_logged_reason() {
    capture_logs();
    let tenant = onboard("jwks-bad").await;
    let key = TestKey::new(Algorithm::RS256, "behind-bad-endpoints");
    let stub = Stub::start().await;
    stub.serve_keys("/real", &[&key]);
    stub.set("/redirect", Reply::Redirect(stub.url("/real")));
    stub.set(
        "/huge",
        Reply::Huge {
            content_length: true,
        },
    );
    stub.set(
        "/huge-chunked",
        Reply::Huge {
            content_length: false,
        },
    );
    stub.set("/slow", Reply::Stall);
    let urls: Vec<String> = ["/redirect", "/huge", "/huge-chunked", "/slow"]
        .iter()
        .map(|p| stub.url(p))
        .collect();
    let proxy = proxy_with_jwks(&urls, |c| c.auth.jwks_timeout_ms = 1000).await;

    for (path, reason) in [
        ("/redirect", "redirects are not followed"),
        ("/huge", "larger than 65536 bytes"),
        ("/huge-chunked", "larger than 65536 bytes"),
        ("/slow", "timed out after 1000 ms"),
    ] {
        eventually(&format!("{path} refused"), async || {
            source_status(&proxy, path).last_error.is_some()
        })
        .await;
        let status = source_status(&proxy, path);
        let error = status.last_error.clone().unwrap_or_default();
        assert!(error.contains(reason), "{path}: {error}");
        assert_eq!(status.keys, 0, "{path}");
        assert!(
            logs().lines().any(|l| l.contains("JWKS: fetch failed")
                && l.contains(&stub.url(path))
                && l.contains(reason)),
            "no log line for {path} saying {reason:?}"
        );
    }
    assert_eq!(stub.hits("/real"), 0, "the redirect was not followed");
    let err = login(&proxy, &tenant, &key.token_for(&tenant))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("28P01") && err.contains("does not know"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_discovery_finds_the_key_set() {
    let tenant = onboard("jwks-discovery").await;
    let key = TestKey::new(Algorithm::ES256, "discovered");
    let stub = Stub::start().await;
    let issuer = format!("{}/", stub.base());
    stub.set(
        "/.well-known/openid-configuration",
        Reply::Json(
            json!({ "issuer": issuer, "jwks_uri": stub.url("/oauth/keys"), "response_types_supported": ["code"] })
                .to_string(),
        ),
    );
    stub.serve_keys("/oauth/keys", &[&key]);
    let proxy = TestProxy::start_with(|c| {
        algorithms(c);
        c.auth.issuer = Some(issuer.clone());
        c.auth.discover = true;
    })
    .await;
    let mut claims = user_claims(&tenant);
    claims["iss"] = json!(issuer);
    login_ok(&proxy, &tenant, &key.sign(Some("discovered"), &claims)).await;
    assert_eq!(stub.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(stub.hits("/oauth/keys"), 1);
    // The issuer is checked too: the same key, another issuer, is refused.
    claims["iss"] = json!("https://someone-else.example.com/");
    let err = login(&proxy, &tenant, &key.sign(Some("discovered"), &claims))
        .await
        .unwrap_err();
    assert!(err.starts_with("28P01") && err.contains("issuer"), "{err}");

    // A discovery document that names another issuer, or a key set at a metadata address, is refused.
    let bad = Stub::start().await;
    let bad_issuer = bad.base();
    bad.set(
        "/.well-known/openid-configuration",
        Reply::Json(
            json!({ "issuer": "https://evil.example.com", "jwks_uri": bad.url("/keys") })
                .to_string(),
        ),
    );
    let proxy = TestProxy::start_with(|c| {
        algorithms(c);
        c.auth.issuer = Some(bad_issuer.clone());
        c.auth.discover = true;
    })
    .await;
    eventually("discovery refused", async || {
        source_status(&proxy, "openid-configuration")
            .last_error
            .is_some()
    })
    .await;
    let error = source_status(&proxy, "openid-configuration")
        .last_error
        .unwrap();
    assert!(
        error.contains("names issuer \"https://evil.example.com\""),
        "{error}"
    );
    bad.set(
        "/.well-known/openid-configuration",
        Reply::Json(
            json!({ "issuer": bad_issuer, "jwks_uri": "http://169.254.169.254/latest/keys" })
                .to_string(),
        ),
    );
    let proxy = TestProxy::start_with(|c| {
        algorithms(c);
        c.auth.issuer = Some(bad_issuer.clone());
        c.auth.discover = true;
    })
    .await;
    eventually("metadata address refused", async || {
        source_status(&proxy, "openid-configuration")
            .last_error
            .is_some_and(|e| e.contains("link-local"))
    })
    .await;
}

/// A proxy started from a config file (for RELOAD).
struct FileProxy {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    config_path: std::path::PathBuf,
    shutdown: CancellationToken,
}

impl FileProxy {
    async fn start(dir: &std::path::Path, auth: &str) -> FileProxy {
        let c = config();
        let config_path = dir.join("pgtenant.toml");
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
host = "{host}"
port = {port}
database = "{database}"
admin_user = "{admin_user}"
admin_password = "{admin_password}"
server_secret = "{SERVER_SECRET}"
[pool]
acquire_timeout_ms = 3000
[auth]
hs_secret = "{JWT_SECRET}"
{auth}
[tenancy]
tenant_migrations_dir = "{tenant_migrations}"
shared_migrations_dir = "{shared_migrations}"
directory_cache_ttl_ms = 0
"#,
            host = c.upstream.host,
            port = c.upstream.port,
            database = c.upstream.database,
            admin_user = c.upstream.admin_user,
            admin_password = c
                .upstream
                .admin_password
                .as_ref()
                .map(pgtenant::secret::Secret::expose)
                .unwrap_or_default(),
            tenant_migrations = c.tenancy.tenant_migrations_dir.display(),
            shared_migrations = c.tenancy.shared_migrations_dir.display(),
        );
        std::fs::write(&config_path, text).expect("write config");
        let config = Config::load(&config_path).expect("config loads");
        let listener = pgtenant::server::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let proxy =
            Proxy::from_config_file(config, config_path.clone(), shutdown.clone()).expect("proxy");
        tokio::spawn(pgtenant::server::run(listener, proxy.clone()));
        FileProxy {
            proxy,
            addr,
            config_path,
            shutdown,
        }
    }

    async fn login(&self, tenant: &TestTenant, token: &str) -> Result<(), String> {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user(&tenant.email)
            .password(token)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(10));
        match c.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
            Err(e) => Err(format!("{} {e}", sqlstate(&e))),
        }
    }
}

impl Drop for FileProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn key_set(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_reread_when_it_changes() {
    let tenant = onboard("jwks-file").await;
    let first = TestKey::new(Algorithm::RS256, "file-1");
    let second = TestKey::new(Algorithm::EdDSA, "file-2");
    let dir = tempdir("jwks-file");
    let path = dir.join("jwks.json");
    std::fs::write(&path, key_set(&[&first])).expect("write");
    let proxy = TestProxy::start_with(|c| {
        algorithms(c);
        c.auth.jwks_file = Some(path.clone());
        c.auth.jwks_file_check_ms = 100;
    })
    .await;
    login_ok(&proxy, &tenant, &first.token_for(&tenant)).await;

    // Replaced the way deployments do it: a new file renamed over the old one.
    let next = dir.join("jwks.json.new");
    std::fs::write(&next, key_set(&[&second])).expect("write");
    std::fs::rename(&next, &path).expect("rename");
    eventually("the file re-read", async || {
        source_status(&proxy, "jwks.json").kids == vec!["file-2".to_owned()]
    })
    .await;
    login_ok(&proxy, &tenant, &second.token_for(&tenant)).await;
    assert!(login(&proxy, &tenant, &first.token_for(&tenant))
        .await
        .is_err());

    // A broken file keeps the last good keys, and says why.
    std::fs::write(&path, "{ not json").expect("write");
    eventually("the broken file reported", async || {
        source_status(&proxy, "jwks.json").last_error.is_some()
    })
    .await;
    login_ok(&proxy, &tenant, &second.token_for(&tenant)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_reread_on_reload() {
    let tenant = onboard("jwks-reload").await;
    let first = TestKey::new(Algorithm::ES256, "before");
    let second = TestKey::new(Algorithm::ES256, "after");
    let dir = tempdir("jwks-reload");
    let path = dir.join("keys.json");
    std::fs::write(&path, key_set(&[&first])).expect("write");
    // Checked for changes once an hour: only RELOAD can pick up the new file in this test.
    let proxy = FileProxy::start(
        &dir,
        &format!(
            "algorithms = [\"HS256\", \"ES256\"]\njwks_file = \"{}\"\njwks_file_check_ms = 3600000",
            path.display()
        ),
    )
    .await;
    assert!(proxy.config_path.exists());
    proxy
        .login(&tenant, &first.token_for(&tenant))
        .await
        .expect("first key");
    std::fs::write(&path, key_set(&[&second])).expect("write");
    let err = proxy
        .login(&tenant, &second.token_for(&tenant))
        .await
        .unwrap_err();
    assert!(err.starts_with("28P01"), "{err}");

    // RELOAD through the admin channel.
    let mut admin = tokio_postgres::Config::new();
    admin
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("ops")
        .password(admin_token())
        .dbname("pgtenant");
    let admin = connect(admin).await;
    admin.simple_query("RELOAD").await.expect("RELOAD");
    proxy
        .login(&tenant, &second.token_for(&tenant))
        .await
        .expect("second key after RELOAD");
    assert!(proxy
        .login(&tenant, &first.token_for(&tenant))
        .await
        .is_err());

    // A RELOAD with a broken file fails and keeps what was serving.
    std::fs::write(&path, r#"{"keys": []}"#).expect("write");
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("auth.jwks_file") && message.contains("no key"),
        "{err:?}"
    );
    proxy
        .login(&tenant, &second.token_for(&tenant))
        .await
        .expect("still serving");
    assert_eq!(
        proxy.proxy.verifier().jwks_status()[0].kids,
        vec!["after".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_paths_and_the_organization_claim_pick_the_membership() {
    let acme = onboard("claims-acme").await;
    let globex = onboard("claims-globex").await;
    let initech = onboard("claims-initech").await;
    // acme's admin is also a member of globex.
    let admin = superuser().await;
    admin
        .execute(
            "INSERT INTO pgtenant.users (email, organization_id) VALUES ($1, $2)",
            &[&acme.email, &globex.onboarded.organization_id],
        )
        .await
        .expect("second membership");

    let key = TestKey::new(Algorithm::RS256, "claims");
    let stub = Stub::start().await;
    stub.serve_keys("/jwks", &[&key]);
    let proxy = proxy_with_jwks(&[stub.url("/jwks")], |c| {
        c.auth.identity_claim = IdentityClaim::Email;
        c.auth.user_claim = Some("https://app.example.com/claims.email".into());
        c.auth.org_claim = Some("org_id".into());
    })
    .await;
    let token = |org: Option<&str>| {
        let mut claims = json!({
            "sub": "auth0|5f7c8ec7c33c6c004bbafe82",
            "https://app.example.com/claims": { "email": acme.email },
            "exp": now() + 600,
        });
        if let Some(org) = org {
            claims["org_id"] = json!(org);
        }
        key.sign(Some("claims"), &claims)
    };
    let by_slug = login(&proxy, &acme, &token(Some(&globex.onboarded.slug))).await;
    assert_eq!(by_slug.as_deref(), Ok(globex.onboarded.role.as_str()));
    let by_id = login(
        &proxy,
        &acme,
        &token(Some(&acme.onboarded.organization_id.to_string())),
    )
    .await;
    assert_eq!(by_id.as_deref(), Ok(acme.onboarded.role.as_str()));
    let not_member = login(&proxy, &acme, &token(Some(&initech.onboarded.slug)))
        .await
        .unwrap_err();
    assert!(
        not_member.starts_with("28000") && not_member.contains("not a member"),
        "{not_member}"
    );
    let no_org = login(&proxy, &acme, &token(None)).await.unwrap_err();
    assert!(
        no_org.starts_with("28P01") && no_org.contains("\"org_id\""),
        "{no_org}"
    );

    // Without an organization claim, the database name picks the membership.
    let proxy = TestProxy::start_with(|c| c.auth.identity_claim = IdentityClaim::Email).await;
    let hs = |email: &str| {
        mint_hs256(
            JWT_SECRET.as_bytes(),
            &MintRequest {
                sub: "ignored".into(),
                email: Some(email.into()),
                ttl: Duration::from_secs(600),
                admin: false,
                audience: None,
                issuer: None,
            },
            "pgtenant_admin",
        )
        .expect("mint")
    };
    let as_db = |database: &str| {
        let mut c = proxy.client_config(&acme.email, &hs(&acme.email));
        c.dbname(database);
        c
    };
    let client = connect(as_db(&globex.onboarded.slug)).await;
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(role, globex.onboarded.role.as_str());
    let err = as_db(DATABASE)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("ambiguous");
    assert_eq!(sqlstate(&err), "28000");
    let message = err.as_db_error().expect("db error").message().to_owned();
    assert!(
        message.contains("several organizations")
            && message.contains(&acme.onboarded.slug)
            && message.contains(&globex.onboarded.slug),
        "{message}"
    );
    // A user of one organization still logs in to the plain database name.
    login_ok(&proxy, &initech, &initech.token()).await;

    // The user id at a claim path.
    let proxy = TestProxy::start_with(|c| {
        c.auth.user_claim = Some("https://app.example.com/claims.user_id".into())
    })
    .await;
    let claims = json!({
        "sub": "auth0|someone",
        "https://app.example.com/claims": { "user_id": initech.onboarded.admin_user_id.to_string() },
        "exp": now() + 600,
    });
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    login_ok(&proxy, &initech, &token).await;
}

fn tempdir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgtenant-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_with_an_untrusted_certificate_is_refused() {
    // A TLS server with a self-signed certificate: the handshake happens (rustls on aws-lc-rs, the system's roots)
    // and fails on the certificate, which the key set source reports.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let tls_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .expect("TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handshakes.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"keys\":[]}")
                        .await;
                }
            });
        }
    });
    let url = format!("https://127.0.0.1:{port}/jwks");
    let proxy = proxy_with_jwks(std::slice::from_ref(&url), |_| {}).await;
    eventually("the TLS endpoint refused", async || {
        source_status(&proxy, &url).last_error.is_some()
    })
    .await;
    let error = source_status(&proxy, &url).last_error.unwrap_or_default();
    eprintln!("https with an untrusted certificate: {error}");
    assert!(error.contains("certificate"), "{error}");
    assert!(handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_does_not_hold_up_the_keys_of_another() {
    let tenant = onboard("jwks-stalled").await;
    let key = TestKey::new(Algorithm::RS256, "fast");
    let stub = Stub::start().await;
    stub.set("/stalled", Reply::Stall);
    stub.serve_keys("/fast", &[&key]);
    // The stalled source is listed first and holds every round open for up to 60 s.
    let urls = [stub.url("/stalled"), stub.url("/fast")];
    let proxy = proxy_with_jwks(&urls, |c| c.auth.jwks_timeout_ms = 60_000).await;
    login_ok(&proxy, &tenant, &key.token_for(&tenant)).await;
    assert!(
        source_status(&proxy, "/stalled").fetches == 0
            && source_status(&proxy, "/stalled").last_error.is_none()
    );
}
