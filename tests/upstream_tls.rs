//! TLS to PostgreSQL (`upstream.sslmode`): a cluster of this test's own with `ssl = on` and a certificate for
//! "localhost" signed by a CA made here (rcgen), and the plain test cluster of `common`. Raw tenant connections,
//! admin (tokio-postgres) connections and relayed sessions are checked for each mode, on the server's own
//! `pg_stat_ssl`.

mod common;

use common::{TestProxy, TestTenant};
use pgcluster::{Cluster, ClusterSpec, PgBinaries};
use pgtenant::config::Config;
use pgtenant::config::SslMode;
use pgtenant::upstream::{Login, SaltedPasswordCache, UpstreamConn, UpstreamTarget};
use pgtenant::upstream_tls::UpstreamTls;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The same as the plain cluster's, so raw logins work on both.
const SUPERUSER_PASSWORD: &str = "test-superuser-password";

/// The CA, a certificate of it for "localhost" (only), a client certificate of it for the role
/// [`CERT_USER`], and an unrelated CA.
struct Pki {
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
}

/// A role that logs in with a client certificate only (pg_hba.conf `cert`).
const CERT_USER: &str = "certuser";

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA self-signed");
    (cert, key)
}

fn pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key) = ca("pgtenant test CA");
    let (other_ca, _) = ca("some other CA");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let server = params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server cert");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CERT_USER);
    let client = params
        .signed_by(&client_key, &ca_cert, &ca_key)
        .expect("client cert");
    let ca_file = dir.join("ca.crt");
    let other_ca_file = dir.join("other-ca.crt");
    let client_cert_file = dir.join("client.crt");
    let client_key_file = dir.join("client.key");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
    std::fs::write(&other_ca_file, other_ca.pem()).expect("write other CA");
    std::fs::write(&client_cert_file, client.pem()).expect("write client cert");
    std::fs::write(&client_key_file, client_key.serialize_pem()).expect("write client key");
    Pki {
        ca_file,
        other_ca_file,
        ca_pem: ca_cert.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_file,
        client_key_file,
    }
}

struct SslCluster {
    cluster: Cluster,
    pki: Pki,
}

static SSL_CLUSTER: OnceLock<SslCluster> = OnceLock::new();

/// The `ssl = on` cluster, with the database and the shared schema made over TLS (verify-full).
fn ssl_cluster() -> &'static SslCluster {
    SSL_CLUSTER.get_or_init(|| {
        let bins = PgBinaries::find().expect("PostgreSQL binaries");
        let root = std::env::temp_dir().join(format!(
            "pgtenant-tls-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        pgcluster::prepare_dir(&root).expect("test dir");
        let pki = pki(&root);
        let spec = ClusterSpec::new(root.join("data"), "postgres", SUPERUSER_PASSWORD)
            .setting("fsync", "off")
            .setting("synchronous_commit", "off")
            .tls(pki.server_cert_pem.clone(), pki.server_key_pem.clone())
            .tls_client_ca(pki.ca_pem.clone());
        let cluster = Cluster::start(&bins, spec).expect("ssl cluster starts");
        cluster
            .stop_when_process_exits(Some(&root))
            .expect("watchdog");
        let port = cluster.port();
        let ca_file = pki.ca_file.clone();
        // CERT_USER logs in with a client certificate and nothing else.
        let hba = cluster.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("hostssl all {CERT_USER} 127.0.0.1/32 cert\n{rules}"),
        )
        .expect("write pg_hba.conf");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut config =
                    base_config(port, SslMode::VerifyFull, "localhost", Some(&ca_file));
                config.upstream.database = "postgres".into();
                let admin = pgtenant::upstream_admin::connect_admin(&config)
                    .await
                    .expect("admin over TLS");
                admin
                    .batch_execute(&format!("CREATE DATABASE {}", common::DATABASE))
                    .await
                    .expect("create database");
                config.upstream.database = common::DATABASE.into();
                let mut admin = pgtenant::upstream_admin::connect_admin(&config)
                    .await
                    .expect("admin over TLS");
                pgtenant::migrate::apply_shared(
                    &mut admin,
                    &common::repo_path("shared-migrations"),
                )
                .await
                .expect("shared migrations");
                admin
                    .batch_execute(&format!("CREATE ROLE {CERT_USER} LOGIN"))
                    .await
                    .expect("certificate role");
                admin
                    .batch_execute("SELECT pg_reload_conf()")
                    .await
                    .expect("reload pg_hba.conf");
                // The postmaster reads the file when it gets to the signal.
                tokio::time::sleep(Duration::from_millis(500)).await;
            })
        })
        .join()
        .expect("setup thread");
        SslCluster { cluster, pki }
    })
}

/// A configuration for a cluster on `port` (the superuser password of the ssl cluster), without touching the
/// plain cluster.
fn base_config(port: u16, mode: SslMode, host: &str, root: Option<&Path>) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.host = host.into();
    config.upstream.port = port;
    config.upstream.database = common::DATABASE.into();
    config.upstream.admin_user = "postgres".into();
    config.upstream.admin_password = Some(SUPERUSER_PASSWORD.into());
    config.upstream.server_secret = Some(common::SERVER_SECRET.into());
    config.upstream.sslmode = mode;
    config.upstream.sslrootcert = root.map(Path::to_path_buf);
    config.auth.hs_secret = Some(common::JWT_SECRET.into());
    config.tenancy.tenant_migrations_dir = common::repo_path("tenant-migrations");
    config.tenancy.shared_migrations_dir = common::repo_path("shared-migrations");
    config.tenancy.directory_cache_ttl_ms = 0;
    config.pool.acquire_timeout_ms = 3_000;
    config
}

/// A configuration for the ssl cluster.
fn ssl_config(mode: SslMode, host: &str, root: Option<&Path>) -> Config {
    base_config(ssl_cluster().cluster.port(), mode, host, root)
}

fn verify_full() -> Config {
    let c = ssl_cluster();
    ssl_config(SslMode::VerifyFull, "localhost", Some(&c.pki.ca_file))
}

/// A configuration for the plain test cluster of `common`.
fn plain_config(mode: SslMode) -> Config {
    let mut config = common::config();
    config.upstream.sslmode = mode;
    config
}

/// Onboards a tenant into the ssl cluster, over TLS (verify-full).
async fn onboard_ssl(label: &str) -> TestTenant {
    let config = verify_full();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let email = format!("admin-{label}-{unique}@example.com");
    let mut admin = pgtenant::upstream_admin::connect_admin(&config)
        .await
        .expect("admin over TLS");
    let onboarded = pgtenant::tenancy::onboard(
        &mut admin,
        &config,
        &pgtenant::tenancy::OnboardRequest {
            name: format!("{label} {unique}"),
            admin_email: email.clone(),
            slug: None,
            ddl_allowed: None,
            cluster: None,
        },
    )
    .await
    .expect("onboard over TLS");
    TestTenant { email, onboarded }
}

/// The ssl cluster's superuser over TLS, for checks behind pgtenant's back.
async fn ssl_superuser() -> tokio_postgres::Client {
    pgtenant::upstream_admin::connect_admin(&verify_full())
        .await
        .expect("superuser over TLS")
}

async fn on_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

fn target(config: &Config) -> UpstreamTarget {
    UpstreamTarget {
        host: config.upstream.host.clone(),
        port: config.upstream.port,
        database: config.upstream.database.clone(),
        connect_timeout: Duration::from_secs(10),
        tls: UpstreamTls::from_config(&config.upstream).expect("tls settings"),
    }
}

/// A raw upstream connection as the superuser: Ok(is TLS) or the error text.
async fn raw_connect(config: &Config) -> Result<bool, String> {
    raw_connect_as(config, "postgres").await
}

async fn raw_connect_as(config: &Config, user: &str) -> Result<bool, String> {
    let cache = SaltedPasswordCache::default();
    let login = Login {
        user,
        password: SUPERUSER_PASSWORD,
        salted_cache: &cache,
        settings: Default::default(),
    };
    match UpstreamConn::connect(&target(config), login).await {
        Ok(mut conn) => {
            let tls = conn.stream.is_tls();
            let (error, _) = conn.run_simple(&["SELECT 1"]).await.expect("query");
            assert!(error.is_none(), "query failed: {error:?}");
            conn.terminate().await;
            Ok(tls)
        }
        Err(e) => {
            let client = e.to_client_error();
            assert_eq!(
                client.code, "08006",
                "a TLS refusal is a connection failure: {e}"
            );
            Err(e.to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Log capture

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
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
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

// ---------------------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tenant_connections_follow_sslmode() {
    let c = ssl_cluster();
    let (ca, other) = (c.pki.ca_file.as_path(), c.pki.other_ca_file.as_path());
    let cases: [(&str, Config, Result<bool, &str>); 9] = [
        (
            "disable",
            ssl_config(SslMode::Disable, "127.0.0.1", None),
            Ok(false),
        ),
        (
            "prefer",
            ssl_config(SslMode::Prefer, "127.0.0.1", None),
            Ok(true),
        ),
        (
            "require",
            ssl_config(SslMode::Require, "127.0.0.1", None),
            Ok(true),
        ),
        (
            "require with an unknown CA as sslrootcert (checked as verify-ca, as libpq)",
            ssl_config(SslMode::Require, "127.0.0.1", Some(other)),
            Err("UnknownIssuer"),
        ),
        (
            "verify-ca with the right CA and another name",
            ssl_config(SslMode::VerifyCa, "127.0.0.1", Some(ca)),
            Ok(true),
        ),
        (
            "verify-ca with an unknown CA",
            ssl_config(SslMode::VerifyCa, "localhost", Some(other)),
            Err("UnknownIssuer"),
        ),
        (
            "verify-full with the certificate's name",
            ssl_config(SslMode::VerifyFull, "localhost", Some(ca)),
            Ok(true),
        ),
        (
            "verify-full with another name",
            ssl_config(SslMode::VerifyFull, "127.0.0.1", Some(ca)),
            Err("not valid for name"),
        ),
        (
            "verify-full with an unknown CA",
            ssl_config(SslMode::VerifyFull, "localhost", Some(other)),
            Err("UnknownIssuer"),
        ),
    ];
    for (what, config, expected) in cases {
        let got = raw_connect(&config).await;
        match (&got, expected) {
            (Ok(tls), Ok(want)) => assert_eq!(*tls, want, "{what}: TLS in use"),
            (Err(e), Err(want)) => assert!(e.contains(want), "{what}: {e} (expected {want:?})"),
            _ => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }

    // A server without TLS.
    assert_eq!(raw_connect(&plain_config(SslMode::Prefer)).await, Ok(false));
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let mut config = plain_config(mode);
        config.upstream.sslrootcert = Some(ca.to_path_buf());
        let err = raw_connect(&config).await.expect_err("no TLS offered");
        assert!(
            err.contains("does not accept TLS"),
            "{}: {err}",
            mode.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_follow_sslmode() {
    let c = ssl_cluster();
    let admin = pgtenant::upstream_admin::connect_admin(&verify_full())
        .await
        .expect("verify-full with the certificate's name");
    assert!(on_tls(&admin).await);

    let wrong_name = ssl_config(SslMode::VerifyFull, "127.0.0.1", Some(&c.pki.ca_file));
    let err = pgtenant::upstream_admin::connect_admin(&wrong_name)
        .await
        .map(|_| ())
        .expect_err("another name refused");
    assert!(err.to_string().contains("not valid for name"), "{err:?}");
    let unknown_ca = ssl_config(SslMode::VerifyCa, "localhost", Some(&c.pki.other_ca_file));
    let err = pgtenant::upstream_admin::connect_admin(&unknown_ca)
        .await
        .map(|_| ())
        .expect_err("unknown CA refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let chain_only = ssl_config(SslMode::VerifyCa, "127.0.0.1", Some(&c.pki.ca_file));
    let admin = pgtenant::upstream_admin::connect_admin(&chain_only)
        .await
        .expect("verify-ca does not look at the name");
    assert!(on_tls(&admin).await);

    let err = pgtenant::upstream_admin::connect_admin(&plain_config(SslMode::Require))
        .await
        .map(|_| ())
        .expect_err("require against a server without TLS");
    assert!(format!("{err}").contains("TLS"), "{err}");
    let admin = pgtenant::upstream_admin::connect_admin(&plain_config(SslMode::Prefer))
        .await
        .expect("prefer against a server without TLS");
    assert!(!on_tls(&admin).await);
}

/// Relayed tenant sessions (session and transaction pooling), the directory's connections and cancel requests
/// all go over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_tenant_sessions_are_on_tls() {
    let c = ssl_cluster();
    let tenant = onboard_ssl("tls").await;
    let role = tenant.onboarded.role.as_str().to_string();
    let configs = [
        ("verify-full", verify_full()),
        (
            "verify-ca",
            ssl_config(SslMode::VerifyCa, "127.0.0.1", Some(&c.pki.ca_file)),
        ),
        ("require", ssl_config(SslMode::Require, "127.0.0.1", None)),
    ];
    for (what, config) in configs {
        for pool_mode in [
            pgtenant::config::PoolMode::Session,
            pgtenant::config::PoolMode::Transaction,
        ] {
            let mut config = config.clone();
            config.pool.mode = pool_mode;
            let proxy = TestProxy::start_with(|c| *c = config).await;
            let client = proxy.connect(&tenant).await;
            for _ in 0..3 {
                assert!(
                    on_tls(&client).await,
                    "{what}, {}: the relayed session is not on TLS",
                    pool_mode.as_str()
                );
            }
            let row = client
                .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
                .await
                .expect("extended protocol over TLS");
            assert_eq!(row.get::<_, String>(0), role);
            assert_eq!(row.get::<_, i32>(1), 42);

            // A cancel is forwarded to the server over TLS too.
            let cancel = client.cancel_token();
            let sleeper = tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = client.simple_query("SELECT pg_sleep(30)").await;
                (
                    result.err().map(|e| common::sqlstate(&e)),
                    started.elapsed(),
                )
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel
                .cancel_query(tokio_postgres::NoTls)
                .await
                .expect("cancel sent to the proxy");
            let (code, took) = tokio::time::timeout(Duration::from_secs(20), sleeper)
                .await
                .expect("query ends")
                .expect("task");
            assert_eq!(code.as_deref(), Some("57014"), "{what}: cancelled");
            assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
            proxy.stop().await;
        }
    }

    // Seen from the server: every connection of the tenant's role and of pgtenant's admin side was on TLS.
    let superuser = ssl_superuser().await;
    let row = superuser
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.usename = $1 OR a.application_name = 'pgtenant-admin'",
            &[&role],
        )
        .await
        .expect("pg_stat_ssl");
    assert_eq!(row.get::<_, i64>(0), 0, "plain connections seen");
    assert!(row.get::<_, i64>(1) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_another_name_with_08006_and_a_log_line() {
    capture_logs();
    let c = ssl_cluster();
    let tenant = onboard_ssl("wrongname").await;
    let config = ssl_config(SslMode::VerifyFull, "127.0.0.1", Some(&c.pki.ca_file));

    // Through the proxy: the directory is the first connection it needs.
    let proxy = TestProxy::start_with(|c| *c = config.clone()).await;
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .map(|_| ())
        .expect_err("login refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains("not valid for name"),
        "the client is told why: {db:?}"
    );
    proxy.stop().await;

    // The tenant pool on its own (what serves a session once the directory answered).
    let pools = pgtenant::pool::PoolManager::new(
        pgtenant::config::LiveConfig::new(config.clone()),
        pgtenant::credentials::RolePasswords::new(config.server_secret()),
    );
    let key = pgtenant::pool::PoolKey::new(
        pgtenant::names::ClusterName::default_cluster(),
        tenant.onboarded.role.clone(),
    );
    let err = pools
        .acquire(&key, &std::sync::Arc::new(target(&config)))
        .await
        .map(|_| ())
        .expect_err("tenant connection refused");
    let client_error = err.to_client_error();
    assert_eq!(client_error.code, "08006");
    assert!(
        client_error.message.contains("not valid for name"),
        "{}",
        client_error.message
    );

    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("TLS to the database server failed")
                && l.contains("verify-full")
                && l.contains("not valid for name")),
        "no log line for the refused certificate in:\n{logs}"
    );
    assert!(
        logs.lines().any(
            |l| l.contains("directory connection to the database server failed")
                && l.contains("not valid for name")
        ),
        "no log line for the directory in:\n{logs}"
    );
    assert!(!logs.contains(SUPERUSER_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_server_without_tls_require_fails_and_prefer_works() {
    let tenant = common::onboard("plain").await;

    let proxy = TestProxy::start_with(|c| c.upstream.sslmode = SslMode::Prefer).await;
    let client = proxy.connect(&tenant).await;
    assert!(!on_tls(&client).await, "prefer falls back to plain");
    proxy.stop().await;

    let proxy = TestProxy::start_with(|c| c.upstream.sslmode = SslMode::Require).await;
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .map(|_| ())
        .expect_err("require refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(
        db.detail().unwrap_or_default().contains("TLS"),
        "the client is told why: {db:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_configured() {
    let c = ssl_cluster();
    let without = verify_full();
    let mut with = verify_full();
    with.upstream.sslcert = Some(c.pki.client_cert_file.clone());
    with.upstream.sslkey = Some(c.pki.client_key_file.clone());

    // Raw tenant-style connections.
    assert_eq!(raw_connect_as(&with, CERT_USER).await, Ok(true));
    let err = raw_connect_as(&without, CERT_USER)
        .await
        .expect_err("no certificate, no login");
    assert!(err.contains("certificate"), "{err}");

    // tokio-postgres (admin side).
    with.upstream.admin_user = CERT_USER.into();
    with.upstream.admin_password = None;
    let admin = pgtenant::upstream_admin::connect_admin(&with)
        .await
        .expect("login with the client certificate");
    let row = admin
        .query_one(
            "SELECT current_user::text, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert_eq!(row.get::<_, String>(0), CERT_USER);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("/CN=certuser")
    );
}

/// Large transfers both ways over a TLS upstream, in both pooling modes: what the relay hands rustls while
/// the socket is full must still reach the server once it drains (else the last chunk waits for a write that
/// never comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_copy_and_results_pass_over_a_tls_upstream() {
    use futures_util::SinkExt;
    let tenant = onboard_ssl("bigcopy").await;
    for pool_mode in [
        pgtenant::config::PoolMode::Session,
        pgtenant::config::PoolMode::Transaction,
    ] {
        let mut config = verify_full();
        config.pool.mode = pool_mode;
        let proxy = TestProxy::start_with(|c| *c = config).await;
        let mut client = proxy.connect(&tenant).await;
        let tx = client.transaction().await.expect("begin");
        tx.batch_execute("CREATE TEMP TABLE big (line text) ON COMMIT DROP")
            .await
            .expect("temp table");
        let sink = tx.copy_in("COPY big FROM STDIN").await.expect("copy in");
        futures_util::pin_mut!(sink);
        let line = format!("{}\n", "x".repeat(999));
        let chunk = bytes::Bytes::from(line.repeat(64));
        let chunks = 160; // 160 × 64 KB: 10 MB
        for _ in 0..chunks {
            sink.send(chunk.clone()).await.expect("copy data");
        }
        let rows = tokio::time::timeout(Duration::from_secs(60), sink.finish())
            .await
            .unwrap_or_else(|_| panic!("{}: COPY did not finish", pool_mode.as_str()))
            .expect("copy done");
        assert_eq!(rows, chunks * 64);
        let row = tokio::time::timeout(
            Duration::from_secs(60),
            tx.query_one("SELECT count(*), sum(length(line)) FROM big", &[]),
        )
        .await
        .expect("answer")
        .expect("count");
        assert_eq!(row.get::<_, i64>(0) as u64, chunks * 64);
        let big = tokio::time::timeout(
            Duration::from_secs(60),
            tx.query("SELECT line FROM big", &[]),
        )
        .await
        .expect("answer")
        .expect("rows back");
        assert_eq!(big.len() as u64, chunks * 64);
        tx.commit().await.expect("commit");
        // Closed before the stop: after tokio-postgres' COPY (its Sync before the data) the session relay
        // counts a request as unanswered, and a drain would wait out the grace period for it.
        drop(client);
        proxy.stop().await;
    }
}

/// A tenant migration fan-out over TLS: the admin pool and the connection logged in as the tenant's role.
/// The migration itself records whether its own connection is encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_migrations_run_over_tls() {
    let tenant = onboard_ssl("migrate").await;
    let dir = std::env::temp_dir().join(format!(
        "pgtenant-tls-migrations-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("migrations dir");
    for entry in std::fs::read_dir(common::repo_path("tenant-migrations")).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        std::fs::copy(&path, dir.join(name)).expect("copy migration");
    }
    std::fs::write(
        dir.join("V900__tls_probe.sql"),
        "CREATE TABLE tls_probe AS
           SELECT ssl, current_setting('application_name') AS app
             FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n",
    )
    .expect("write migration");
    let mut config = verify_full();
    config.tenancy.tenant_migrations_dir = dir.clone();
    let migrator = pgtenant::fanout::TenantMigrator::new(&config, 2).expect("migrator");
    let report = migrator
        .run(
            &pgtenant::fanout::FanOutOptions {
                concurrency: 2,
                only: Some(tenant.onboarded.slug.clone()),
                ..Default::default()
            },
            &pgtenant::fanout::progress::Silent,
        )
        .await
        .expect("fan-out over TLS");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.migrated, 1, "{report:?}");
    let row = ssl_superuser()
        .await
        .query_one(
            &format!(
                "SELECT ssl, app FROM {}.tls_probe",
                tenant.onboarded.schema.as_str()
            ),
            &[],
        )
        .await
        .expect("probe row");
    assert!(
        row.get::<_, bool>(0),
        "the tenant-role migration connection was not on TLS"
    );
    assert_eq!(row.get::<_, String>(1), "pgtenant-migrate");
    let _ = std::fs::remove_dir_all(&dir);
}
