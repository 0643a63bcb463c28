//! Shared test harness: one real PostgreSQL cluster per test binary (started on first use, stopped when the
//! process exits), shared migrations applied, and helpers to start a pgtenant proxy in-process on a free
//! port, onboard tenants with unique names, mint tokens and run real clients.

#![allow(dead_code)]

pub mod backends;
pub mod clusters;
pub mod drivers;
pub mod run;
pub mod wire;

use pgcluster::{Cluster, ClusterSpec, PgBinaries};
use pgtenant::auth::{mint_hs256, MintRequest};
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use pgtenant::tenancy::{self, OnboardRequest, Onboarded};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const DATABASE: &str = "app";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub const SERVER_SECRET: &str = "test-server-secret-0123456789";

pub struct TestCluster {
    pub cluster: Cluster,
    pub bins: PgBinaries,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The cluster of this test binary.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        let bins = PgBinaries::find().expect("PostgreSQL binaries");
        let root = std::env::temp_dir().join(format!(
            "pgtenant-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        pgcluster::prepare_dir(&root).expect("test dir");
        let spec = ClusterSpec::new(root.join("data"), "postgres", "test-superuser-password")
            .setting("fsync", "off")
            .setting("synchronous_commit", "off")
            .setting("full_page_writes", "off");
        let cluster = Cluster::start(&bins, spec).expect("cluster starts");
        cluster
            .stop_when_process_exits(Some(&root))
            .expect("watchdog");
        // Create the database and the shared schema on a runtime of our own: callers may be on any runtime.
        let admin = cluster.superuser_config("postgres");
        let mut app = cluster.superuser_config(DATABASE);
        app.application_name("pgtenant-tests");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = connect(admin).await;
                client
                    .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                    .await
                    .expect("create database");
                let mut client = connect(app).await;
                pgtenant::migrate::apply_shared(&mut client, &repo_path("shared-migrations"))
                    .await
                    .expect("shared migrations");
            })
        })
        .join()
        .expect("setup thread");
        TestCluster { cluster, bins }
    })
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub async fn connect(config: tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A pgtenant configuration pointing at the test cluster.
pub fn config() -> Config {
    let c = cluster();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.host = "127.0.0.1".into();
    config.upstream.port = c.cluster.port();
    config.upstream.database = DATABASE.into();
    config.upstream.admin_user = c.cluster.superuser().into();
    config.upstream.admin_password = Some(c.cluster.superuser_password().into());
    config.upstream.server_secret = Some(SERVER_SECRET.into());
    config.auth.hs_secret = Some(JWT_SECRET.into());
    config.tenancy.tenant_migrations_dir = repo_path("tenant-migrations");
    config.tenancy.shared_migrations_dir = repo_path("shared-migrations");
    config.tenancy.directory_cache_ttl_ms = 0;
    config.pool.acquire_timeout_ms = 3_000;
    config
}

/// A database of its own in the test cluster, with the shared schema: for tests that act on every tenant
/// (fan-out migrations) and must not see other tests' tenants.
pub struct TestDb {
    pub name: String,
    pub config: Config,
}

pub async fn fresh_database() -> TestDb {
    let c = cluster();
    let name = format!("db_{}", uuid::Uuid::new_v4().simple());
    connect(c.cluster.superuser_config("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut client = connect(c.cluster.superuser_config(&name)).await;
    pgtenant::migrate::apply_shared(&mut client, &repo_path("shared-migrations"))
        .await
        .expect("shared migrations");
    let mut config = config();
    config.upstream.database = name.clone();
    TestDb { name, config }
}

impl TestDb {
    pub async fn superuser(&self) -> tokio_postgres::Client {
        connect(cluster().cluster.superuser_config(&self.name)).await
    }

    /// Onboards a tenant into this database (with `config.tenancy.tenant_migrations_dir` as it is).
    pub async fn onboard(&self, label: &str) -> TestTenant {
        let unique = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let email = format!("admin-{label}-{unique}@example.com");
        let mut admin = self.superuser().await;
        let onboarded = tenancy::onboard(
            &mut admin,
            &self.config,
            &OnboardRequest {
                name: format!("{label} {unique}"),
                admin_email: email.clone(),
                slug: None,
                ddl_allowed: None,
                cluster: None,
            },
        )
        .await
        .expect("onboard");
        TestTenant { email, onboarded }
    }
}

/// Superuser connection to the test database, for checks behind pgtenant's back.
pub async fn superuser() -> tokio_postgres::Client {
    connect(cluster().cluster.superuser_config(DATABASE)).await
}

/// A proxy running in-process on a free port, stopped when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub config: Config,
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    pub async fn start() -> TestProxy {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestProxy {
        let mut config = config();
        adjust(&mut config);
        let listener = pgtenant::server::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let proxy = Proxy::from_config(config.clone(), shutdown.clone()).expect("proxy");
        let task = tokio::spawn(pgtenant::server::run(listener, proxy.clone()));
        TestProxy {
            addr,
            config,
            proxy,
            shutdown,
            task: Some(task),
        }
    }

    /// A tokio-postgres config for connecting through this proxy with `token` as the password.
    pub fn client_config(&self, user: &str, token: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user(user)
            .password(token)
            .dbname(&self.config.upstream.database)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    pub async fn connect(&self, tenant: &TestTenant) -> tokio_postgres::Client {
        connect(self.client_config(&tenant.email, &tenant.token())).await
    }

    pub async fn try_connect(
        &self,
        user: &str,
        token: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self
            .client_config(user, token)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A `postgresql://` URL through this proxy for `tenant` (node-postgres, Prisma, asyncpg).
    pub fn url(&self, tenant: &TestTenant) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            uri_component(&tenant.email),
            tenant.token(),
            self.addr.port(),
            self.config.upstream.database
        )
    }

    /// A libpq connection string (for psql, pgbench, psycopg).
    pub fn conninfo(&self, tenant: &TestTenant) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={} password={} sslmode=disable",
            self.addr.port(),
            tenant.email,
            self.config.upstream.database,
            tenant.token()
        )
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A tenant onboarded for one test, with unique names.
#[derive(Clone, Debug)]
pub struct TestTenant {
    pub email: String,
    pub onboarded: Onboarded,
}

impl TestTenant {
    pub fn token(&self) -> String {
        token_for(
            &self.onboarded.admin_user_id.to_string(),
            Some(&self.email),
            Duration::from_secs(3600),
        )
    }
}

pub async fn onboard(label: &str) -> TestTenant {
    onboard_with(label, None).await
}

pub async fn onboard_with(label: &str, ddl_allowed: Option<bool>) -> TestTenant {
    onboard_full(label, label, ddl_allowed).await
}

/// Onboards an organization called `name` (plus a unique suffix), admin email made from `email_label`.
pub async fn onboard_named(name: &str, email_label: &str) -> TestTenant {
    onboard_full(name, email_label, None).await
}

async fn onboard_full(label: &str, email_label: &str, ddl_allowed: Option<bool>) -> TestTenant {
    let unique = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let email = format!("admin-{email_label}-{unique}@example.com");
    let mut admin = superuser().await;
    let onboarded = tenancy::onboard(
        &mut admin,
        &config(),
        &OnboardRequest {
            name: format!("{label} {unique}"),
            admin_email: email.clone(),
            slug: None,
            ddl_allowed,
            cluster: None,
        },
    )
    .await
    .expect("onboard");
    TestTenant { email, onboarded }
}

pub fn token_for(sub: &str, email: Option<&str>, ttl: Duration) -> String {
    mint_hs256(
        JWT_SECRET.as_bytes(),
        &MintRequest {
            sub: sub.to_string(),
            email: email.map(str::to_string),
            ttl,
            admin: false,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint")
}

/// The SQLSTATE of a failed connect or query.
pub fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_string())
        .unwrap_or_else(|| format!("no db error: {err}"))
}

/// Runs a real client program; returns (exit success, stdout, stderr).
pub async fn run_program(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.expect("stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} timed out"))
        .expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of a PostgreSQL client program (psql, pgbench).
pub fn client_program(name: &str) -> String {
    let bins = PgBinaries::find().expect("PostgreSQL binaries");
    let in_bindir = bins.bindir.join(name);
    if in_bindir.exists() {
        return in_bindir.display().to_string();
    }
    format!("/usr/bin/{name}")
}

/// Percent-encodes a URI component (user names are email addresses).
pub fn uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A tokio-postgres client whose notices are collected on a channel.
pub async fn connect_with_notices(
    config: tokio_postgres::Config,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
) {
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                    let _ = tx.send(notice);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
    (client, rx)
}

/// An admin token (the admin claim set), for the admin channel.
pub fn admin_token() -> String {
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

/// Runs admin commands through `proxy` with psql; returns (success, stdout, stderr). `-A -t` output: one
/// row per line, columns separated by `|`.
pub async fn psql_admin(proxy: &TestProxy, commands: &[&str]) -> (bool, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=ops dbname=pgtenant password={} sslmode=disable",
        proxy.addr.port(),
        admin_token()
    );
    let mut args: Vec<&str> = vec![&conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    run_program(&client_program("psql"), &args, &[], None).await
}

/// A PostgreSQL cluster of its own for one test (beside the binary's shared one), with a database
/// [`DATABASE`]; stopped when dropped and removed when the process exits.
pub struct ExtraCluster {
    pub cluster: Cluster,
    pub spec: ClusterSpec,
    pub root: PathBuf,
}

impl ExtraCluster {
    /// A new primary.
    pub async fn primary() -> ExtraCluster {
        let (root, spec) = extra_spec();
        let bins = cluster().bins.clone();
        let started = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || Cluster::start(&bins, spec))
                .await
                .expect("start task")
                .expect("second cluster starts")
        };
        started
            .stop_when_process_exits(Some(&root))
            .expect("watchdog");
        connect(started.superuser_config("postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .expect("create database");
        ExtraCluster {
            cluster: started,
            spec,
            root,
        }
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), caught up with it. (Multi-thread runtime.)
    pub async fn replica_of(primary: &ExtraCluster) -> ExtraCluster {
        let (root, spec) = extra_spec();
        let bins = cluster().bins.clone();
        let started = tokio::task::block_in_place(|| {
            Cluster::start_replica(&bins, &primary.cluster, spec.clone())
        })
        .expect("replica starts");
        started
            .stop_when_process_exits(Some(&root))
            .expect("watchdog");
        let replica = ExtraCluster {
            cluster: started,
            spec,
            root,
        };
        replica.wait_caught_up(primary).await;
        replica
    }

    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    pub async fn superuser(&self) -> tokio_postgres::Client {
        connect(self.cluster.superuser_config(DATABASE)).await
    }

    /// Waits (up to 30 s) until this replica is in recovery and has replayed everything `primary` had
    /// written when asked.
    pub async fn wait_caught_up(&self, primary: &ExtraCluster) {
        let target: String = primary
            .superuser()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("primary lsn")
            .get(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let replica = self.superuser().await;
            let row = replica
                .query_one(
                    "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&target],
                )
                .await
                .expect("replica state");
            if row.get::<_, bool>(0) && row.get::<_, bool>(1) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica not caught up with {target} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the cluster (`pg_ctl stop -m fast`).
    pub async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.cluster.stop()).expect("stop");
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        let bins = cluster().bins.clone();
        let mut spec = self.spec.clone();
        spec.port = self.cluster.port();
        let started = tokio::task::block_in_place(|| Cluster::start(&bins, spec)).expect("restart");
        started
            .stop_when_process_exits(Some(&self.root))
            .expect("watchdog");
        self.cluster = started;
    }
}

fn extra_spec() -> (PathBuf, ClusterSpec) {
    let root = std::env::temp_dir().join(format!(
        "pgtenant-test-extra-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    pgcluster::prepare_dir(&root).expect("test dir");
    let spec = ClusterSpec::new(
        root.join("data"),
        "postgres",
        cluster().cluster.superuser_password(),
    )
    .setting("fsync", "off")
    .setting("synchronous_commit", "off")
    .setting("full_page_writes", "off");
    (root, spec)
}

/// `config` with the admin password of cluster `name` (every test cluster has the same superuser).
pub fn with_cluster_secret(config: &mut Config, name: &str) {
    config.clusters.insert(
        name.to_string(),
        pgtenant::config::ClusterSecrets {
            admin_password: Some(pgtenant::config::Secret::new(
                cluster().cluster.superuser_password(),
            )),
        },
    );
}

impl TestDb {
    /// Onboards a tenant on `cluster` (`None`: the default one), DDL as `ddl_allowed` says.
    pub async fn onboard_on(
        &self,
        label: &str,
        cluster: Option<&str>,
        ddl_allowed: Option<bool>,
    ) -> TestTenant {
        let unique = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let email = format!("admin-{label}-{unique}@example.com");
        let mut admin = self.superuser().await;
        let onboarded = tenancy::onboard(
            &mut admin,
            &self.config,
            &OnboardRequest {
                name: format!("{label} {unique}"),
                admin_email: email.clone(),
                slug: None,
                ddl_allowed,
                cluster: cluster.map(str::to_string),
            },
        )
        .await
        .expect("onboard");
        TestTenant { email, onboarded }
    }
}
