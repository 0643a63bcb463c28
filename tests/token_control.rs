//! Token lifetime after login, revocation, login limits and the login audit (issue 7, items 4-7), against a
//! real PostgreSQL: sessions outliving their token or `server.max_session_secs` end between transactions and
//! never inside one; revocation by `jti` and by user, and disabling a user, reach a second pgtenant on the same
//! directory and end its sessions; a brute force from one address is refused and counted while another address
//! and another identity still log in.

mod common;

use common::*;
use pgtenant::auth::{mint_hs256, MintRequest};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A client whose connection task reports the error that ended it (a FATAL from pgtenant, typically).
struct Watched {
    client: tokio_postgres::Client,
    ended: oneshot::Receiver<Option<tokio_postgres::Error>>,
}

impl Watched {
    /// The SQLSTATE the connection ended with, waiting at most `limit`; `None` if it is still open.
    async fn ended_with(&mut self, limit: Duration) -> Option<String> {
        match tokio::time::timeout(limit, &mut self.ended).await {
            Ok(Ok(Some(e))) => Some(sqlstate(&e)),
            Ok(Ok(None)) | Ok(Err(_)) => Some("closed without an error".into()),
            Err(_) => None,
        }
    }
}

/// Connects through `proxy` from the source address `source` (any of 127.0.0.0/8: Linux routes them all to
/// loopback, and the proxy sees the bound address as the peer).
async fn connect_from(
    proxy: &TestProxy,
    source: IpAddr,
    user: &str,
    token: &str,
) -> Result<Watched, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    let stream = socket.connect(proxy.addr).await.expect("tcp connect");
    let (client, connection) = proxy
        .client_config(user, token)
        .connect_raw(stream, tokio_postgres::NoTls)
        .await?;
    let (tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await.err());
    });
    Ok(Watched { client, ended })
}

async fn connect_watched(
    proxy: &TestProxy,
    user: &str,
    token: &str,
) -> Result<Watched, tokio_postgres::Error> {
    connect_from(proxy, [127, 0, 0, 1].into(), user, token).await
}

/// The claims of a token (read from its payload; the tests mint their tokens themselves).
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

fn jti_of(token: &str) -> String {
    claims_of(token)["jti"].as_str().expect("jti").to_string()
}

fn exp_of(token: &str) -> u64 {
    claims_of(token)["exp"].as_u64().expect("exp")
}

fn token_of(tenant: &TestTenant, ttl: Duration) -> String {
    token_for(
        &tenant.onboarded.admin_user_id.to_string(),
        Some(&tenant.email),
        ttl,
    )
}

fn admin_token() -> String {
    mint_hs256(
        JWT_SECRET.as_bytes(),
        &MintRequest {
            sub: "platform-operator".into(),
            email: Some("ops@platform.test".into()),
            ttl: Duration::from_secs(600),
            admin: true,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint")
}

/// Runs one admin command through psql (`-A -t`: one row per line, `|` between columns).
async fn admin(proxy: &TestProxy, command: &str) -> String {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=ops dbname=pgtenant password={} sslmode=disable",
        proxy.addr.port(),
        admin_token()
    );
    let (ok, stdout, stderr) = run_program(
        &client_program("psql"),
        &[
            &conninfo,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            command,
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "{command} failed: {stderr}");
    stdout
}

/// Polls `attempt` until it returns true or `limit` passes; returns whether it did.
async fn eventually<F, Fut>(limit: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if attempt().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the wall clock is past `unix_secs` (plus a margin), polling.
async fn wait_until_past(unix_secs: u64, margin: Duration) {
    let target = UNIX_EPOCH + Duration::from_secs(unix_secs) + margin;
    while SystemTime::now() < target {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn rows_with_email(tenant: &TestTenant, email: &str) -> i64 {
    superuser()
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.employees WHERE email LIKE '%' || $1",
                tenant.onboarded.schema
            ),
            &[&email],
        )
        .await
        .expect("count")
        .get(0)
}

/// A transaction open across the deadline finishes and commits; the session ends right after, at its
/// idle point, with `code`. An idle session ends on its own at the deadline with the same code.
async fn ends_between_transactions(
    proxy: &TestProxy,
    tenant: &TestTenant,
    token: &str,
    deadline_unix: u64,
    code: &str,
) {
    let mut in_txn = connect_watched(proxy, &tenant.email, token)
        .await
        .expect("login before the deadline");
    let mut idle = connect_watched(proxy, &tenant.email, token)
        .await
        .expect("second login before the deadline");
    let marker = format!("txn-{}@example.com", uuid::Uuid::new_v4().simple());
    in_txn
        .client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO employees (email, full_name, role) VALUES ('before-{marker}', 'before', 'member')"
        ))
        .await
        .expect("transaction starts");
    wait_until_past(deadline_unix, Duration::from_millis(700)).await;
    // Past the deadline, inside the transaction: still served.
    assert_eq!(
        in_txn.ended_with(Duration::ZERO).await,
        None,
        "ended mid-transaction"
    );
    in_txn
        .client
        .batch_execute(&format!(
            "INSERT INTO employees (email, full_name, role) VALUES ('after-{marker}', 'after', 'member')"
        ))
        .await
        .expect("the transaction goes on past the deadline");
    in_txn
        .client
        .batch_execute("COMMIT")
        .await
        .expect("the transaction commits");
    assert_eq!(
        in_txn.ended_with(Duration::from_secs(5)).await.as_deref(),
        Some(code),
        "the session ends at the idle point after COMMIT"
    );
    assert_eq!(
        rows_with_email(tenant, &marker).await,
        2,
        "both rows committed"
    );
    // The idle one ended by itself, at the deadline.
    assert_eq!(
        idle.ended_with(Duration::from_secs(3)).await.as_deref(),
        Some(code)
    );
    assert!(idle.client.simple_query("SELECT 1").await.is_err());
    // Ended at idle points, the server connections went back to the pool (session pooling: one each).
    if proxy.config.pool.mode == pgtenant::config::PoolMode::Session {
        let role = tenant.onboarded.role.to_string();
        let back = eventually(Duration::from_secs(3), || async {
            proxy
                .proxy
                .pools
                .stats()
                .iter()
                .any(|p| p.role.as_str() == role && p.idle == 2 && p.active == 0)
        })
        .await;
        assert!(back, "{:?}", proxy.proxy.pools.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_its_session_between_transactions() {
    let tenant = onboard("expiry").await;
    for mode in [
        pgtenant::config::PoolMode::Session,
        pgtenant::config::PoolMode::Transaction,
    ] {
        let proxy = TestProxy::start_with(|c| {
            c.auth.session_expiry = pgtenant::auth::SessionExpiry::End;
            c.auth.leeway_secs = 0;
            c.pool.mode = mode;
        })
        .await;
        // Warm the role's defaults so a transaction-pooled login need not take a server connection.
        proxy
            .connect(&tenant)
            .await
            .simple_query("SELECT 1")
            .await
            .expect("warm");
        let token = token_of(&tenant, Duration::from_secs(3));
        let exp = exp_of(&token);
        // Refused at login from the second after `exp` (whole seconds): the session's deadline.
        ends_between_transactions(&proxy, &tenant, &token, exp + 1, "28P01").await;
        // The expired token is refused at login, as ever.
        let err = proxy
            .try_connect(&tenant.email, &token)
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&err), "28P01");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_ignored_by_default() {
    let tenant = onboard("expiry-ignored").await;
    let proxy = TestProxy::start_with(|c| c.auth.leeway_secs = 0).await;
    let token = token_of(&tenant, Duration::from_secs(2));
    let exp = exp_of(&token);
    let mut session = connect_watched(&proxy, &tenant.email, &token)
        .await
        .expect("login");
    wait_until_past(exp, Duration::from_millis(1500)).await;
    session
        .client
        .simple_query("SELECT 1")
        .await
        .expect("a session outlives its token with session_expiry = \"ignore\"");
    assert_eq!(session.ended_with(Duration::ZERO).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_session_secs_caps_every_session_between_transactions() {
    let tenant = onboard("max-session").await;
    for mode in [
        pgtenant::config::PoolMode::Session,
        pgtenant::config::PoolMode::Transaction,
    ] {
        let proxy = TestProxy::start_with(|c| {
            c.server.max_session_secs = 2;
            c.pool.mode = mode;
        })
        .await;
        proxy
            .connect(&tenant)
            .await
            .simple_query("SELECT 1")
            .await
            .ok();
        let started = now_secs();
        // Sessions start within this second: their cap is at most started + 3.
        ends_between_transactions(&proxy, &tenant, &tenant.token(), started + 3, "57P01").await;
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_disabling_reach_another_pgtenant_and_end_sessions() {
    let tenant = onboard("revoke").await;
    let bystander = onboard("revoke-bystander").await;
    // Long directory and revocation caches: only the announcements can make the second instance refuse.
    let adjust = |c: &mut pgtenant::config::Config| {
        c.tenancy.directory_cache_ttl_ms = 600_000;
        c.auth.revocation_refresh_secs = 3_600;
    };
    let first = TestProxy::start_with(adjust).await;
    let second = TestProxy::start_with(adjust).await;
    let token_a = tenant.token();
    let token_b = tenant.token();
    assert_ne!(jti_of(&token_a), jti_of(&token_b));
    let mut session_a = connect_watched(&second, &tenant.email, &token_a)
        .await
        .expect("login a");
    let mut session_b = connect_watched(&second, &tenant.email, &token_b)
        .await
        .expect("login b");
    let other = second.connect(&bystander).await;
    first
        .connect(&tenant)
        .await
        .simple_query("SELECT 1")
        .await
        .expect("first works");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One token, with its sessions, revoked on the first instance.
    admin(
        &first,
        &format!("REVOKE TOKEN '{}' SESSIONS", jti_of(&token_a)),
    )
    .await;
    assert_eq!(
        session_a
            .ended_with(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("28P01"),
        "the revoked token's session on the other pgtenant ended"
    );
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(second.try_connect(&tenant.email, &token_a).await, Err(e) if sqlstate(&e) == "28P01")
    })
    .await;
    assert!(refused, "the second pgtenant still takes the revoked token");
    session_b
        .client
        .simple_query("SELECT 1")
        .await
        .expect("another token's session goes on");
    second
        .try_connect(&tenant.email, &token_b)
        .await
        .expect("another token still logs in");

    // Every token of the user, without SESSIONS: logins refused, the live session goes on.
    admin(&second, &format!("REVOKE USER '{}'", tenant.email)).await;
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(first.try_connect(&tenant.email, &token_b).await, Err(e) if sqlstate(&e) == "28P01")
    })
    .await;
    assert!(
        refused,
        "the first pgtenant still takes the user's old token"
    );
    session_b
        .client
        .simple_query("SELECT 1")
        .await
        .expect("without SESSIONS the live session goes on");

    // With SESSIONS, from the first instance: the session on the second ends.
    admin(&first, &format!("REVOKE USER '{}' SESSIONS", tenant.email)).await;
    assert_eq!(
        session_b
            .ended_with(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("28P01")
    );
    other
        .simple_query("SELECT 1")
        .await
        .expect("another tenant's session is untouched");
    // A token issued after the revocation (the revocation's own second is refused too) logs in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = tenant.token();
    let mut session_c = connect_watched(&second, &tenant.email, &fresh)
        .await
        .expect("a token issued after the revocation logs in");

    // The CLI revokes by jti on the same table: the second instance refuses that token.
    let config_path = write_cli_config();
    let jti_c = jti_of(&fresh);
    let (ok, stdout, stderr) = run_program(
        env!("CARGO_BIN_EXE_pgtenant"),
        &[
            "--config",
            config_path.to_str().expect("path"),
            "token",
            "revoke",
            "--jti",
            &jti_c,
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "pgtenant token revoke failed: {stdout} {stderr}");
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(second.try_connect(&tenant.email, &fresh).await, Err(e) if sqlstate(&e) == "28P01")
    })
    .await;
    assert!(refused, "the token revoked by the CLI still logs in");
    // Without --sessions its session goes on.
    session_c
        .client
        .simple_query("SELECT 1")
        .await
        .expect("session of a token revoked without --sessions");

    // Disabling the user ends its sessions on the other instance and refuses its logins; enabling lets it in.
    let newer = tenant.token();
    admin(&first, &format!("DISABLE USER '{}'", tenant.email)).await;
    assert_eq!(
        session_c
            .ended_with(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("28000"),
        "a disabled user's session ends"
    );
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(second.try_connect(&tenant.email, &newer).await, Err(e) if sqlstate(&e) == "28000")
    })
    .await;
    assert!(refused, "a disabled user still logs in");
    admin(&first, &format!("ENABLE USER '{}'", tenant.email)).await;
    let back = eventually(Duration::from_secs(5), || async {
        second.try_connect(&tenant.email, &newer).await.is_ok()
    })
    .await;
    assert!(back, "an enabled user cannot log in again");
    // The refusals are listed on the instance that saw them.
    let logins = admin(&second, "SHOW LOGINS").await;
    assert!(logins.contains("|revoked|28P01|"), "{logins}");
    assert!(logins.contains("|disabled_user|28000|"), "{logins}");
    first.stop().await;
    second.stop().await;
}

/// A config file for the CLI, pointing at the test cluster.
fn write_cli_config() -> std::path::PathBuf {
    let c = cluster();
    let dir = std::env::temp_dir().join(format!("pgtenant-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("pgtenant.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nadmin_user = \"{}\"\n\
             admin_password = \"{}\"\nserver_secret = \"{SERVER_SECRET}\"\n[auth]\nhs_secret = \"{JWT_SECRET}\"\n",
            c.cluster.port(),
            c.cluster.superuser(),
            c.cluster.superuser_password()
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_is_refused_and_counted_while_others_log_in() {
    let victim = onboard("brute-victim").await;
    let neighbour = onboard("brute-neighbour").await;
    let proxy = TestProxy::start_with(|c| {
        c.login.failures_burst_per_address = 5;
        c.login.failures_per_sec_per_address = 0.2;
        c.login.failures_burst_per_identity = 8;
        c.login.failures_per_sec_per_identity = 0.2;
    })
    .await;
    let attacker: IpAddr = [127, 0, 0, 2].into();
    let forged = token_for(
        "00000000-0000-0000-0000-000000000000",
        None,
        Duration::from_secs(60),
    )
    .replace('.', "x.");
    let mut codes = Vec::new();
    for _ in 0..8 {
        let err = connect_from(&proxy, attacker, &victim.email, &forged)
            .await
            .err()
            .expect("a forged token is refused");
        codes.push(sqlstate(&err));
    }
    assert_eq!(&codes[..5], &["28P01"; 5], "{codes:?}");
    assert_eq!(&codes[5..], &["53300"; 3], "{codes:?}");
    // Limited: even a good token from that address waits.
    let err = connect_from(&proxy, attacker, &neighbour.email, &neighbour.token())
        .await
        .err()
        .expect("limited address");
    assert_eq!(sqlstate(&err), "53300");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("too many failed logins from this address"),
        "{message}"
    );
    // Another address logs in, as the victim too (its identity has 5 failures of 8).
    connect_from(
        &proxy,
        [127, 0, 0, 3].into(),
        &neighbour.email,
        &neighbour.token(),
    )
    .await
    .expect("another address");
    connect_from(
        &proxy,
        [127, 0, 0, 3].into(),
        &victim.email,
        &victim.token(),
    )
    .await
    .expect("the victim from elsewhere");

    // A brute force on one identity spread over many addresses: limited per identity.
    let sprayed = format!("sprayed-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut codes = Vec::new();
    for i in 0..10u8 {
        let err = connect_from(&proxy, [127, 0, 1, i].into(), &sprayed, &forged)
            .await
            .err()
            .expect("refused");
        codes.push(sqlstate(&err));
    }
    assert_eq!(&codes[..8], &["28P01"; 8], "{codes:?}");
    assert_eq!(&codes[8..], &["53300"; 2], "{codes:?}");
    connect_from(
        &proxy,
        [127, 0, 1, 20].into(),
        &neighbour.email,
        &neighbour.token(),
    )
    .await
    .expect("another identity from a fresh address");

    // Counted by reason, in /metrics and SHOW LOGINS.
    let metrics = pgtenant::metrics_http::render(&proxy.proxy);
    for line in [
        "pgtenant_login_refusals_total{reason=\"bad_token\"} 13",
        "pgtenant_login_refusals_total{reason=\"rate_limited_address\"} 4",
        "pgtenant_login_refusals_total{reason=\"rate_limited_identity\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let logins = admin(&proxy, "SHOW LOGINS").await;
    assert!(
        logins.contains("|rate_limited_address|53300|127.0.0.2|"),
        "{logins}"
    );
    assert!(
        logins.contains("|rate_limited_identity|53300|127.0.1."),
        "{logins}"
    );
    assert!(logins.contains("|bad_token|28P01|127.0.0.2|"), "{logins}");
    assert!(logins.contains("|rate_limited_address|||||||4"), "{logins}");
    // Never the token.
    assert!(!logins.contains(&forged[..40]), "{logins}");
    let config = admin(&proxy, "SHOW CONFIG").await;
    // Buckets only for what failed: 127.0.0.2 and the eight spraying addresses whose token was checked (the last
    // two were refused by the identity limit before that); the two attacked identities.
    assert!(
        config.contains("login.buckets_held|9 addresses, 2 identities, 0 tenants"),
        "{config}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_logins_per_second_can_be_capped() {
    let tenant = onboard("tenant-rate").await;
    let other = onboard("tenant-rate-other").await;
    let proxy = TestProxy::start_with(|c| {
        c.login.tenant_logins_per_sec = 1.0;
        c.login.tenant_logins_burst = 3;
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            match proxy.try_connect(&tenant.email, &tenant.token()).await {
                Ok(_) => "ok".to_string(),
                Err(e) => sqlstate(&e),
            },
        );
    }
    assert_eq!(codes[..3], ["ok", "ok", "ok"], "{codes:?}");
    assert!(codes[3..].iter().all(|c| c == "53300"), "{codes:?}");
    proxy
        .try_connect(&other.email, &other.token())
        .await
        .expect("another tenant is not capped");
    let back = eventually(Duration::from_secs(3), || async {
        proxy
            .try_connect(&tenant.email, &tenant.token())
            .await
            .is_ok()
    })
    .await;
    assert!(back, "the tenant's allowance refills");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_session_past_its_deadline_ends_at_its_next_command() {
    let proxy = TestProxy::start_with(|c| c.server.max_session_secs = 1).await;
    let mut config = proxy.client_config("ops", &admin_token());
    config.dbname("pgtenant");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin login");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .simple_query("SHOW VERSION")
        .await
        .expect("served before the deadline");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let err = client
        .simple_query("SHOW VERSION")
        .await
        .expect_err("ended past the deadline");
    assert_eq!(sqlstate(&err), "57P01", "{err:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_token_no_longer_opens_the_admin_channel() {
    let proxy = TestProxy::start().await;
    let revoked = admin_token();
    let mut config = proxy.client_config("ops", &revoked);
    config.dbname("pgtenant");
    let (_client, _connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin login before the revocation");
    admin(&proxy, &format!("REVOKE TOKEN '{}'", jti_of(&revoked))).await;
    let Err(err) = config.connect(tokio_postgres::NoTls).await else {
        panic!("a revoked admin token opened the admin channel");
    };
    assert_eq!(sqlstate(&err), "28P01", "{err:?}");
    // Another admin token still works (admin() mints a fresh one).
    assert!(admin(&proxy, "SHOW VERSION").await.starts_with("pgtenant "));
    proxy.stop().await;
}
