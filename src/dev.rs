//! `pgtenant dev`: a throwaway local setup in one command. Finds PostgreSQL's binaries, creates (or reuses) a
//! cluster under `.pgtenant/` (or, when the postgres OS user cannot reach that folder, in a folder derived
//! from its path: [`cluster_home`]), applies the shared migrations, onboards a demo tenant, writes the config
//! it runs with to `.pgtenant/dev.toml`, starts the proxy and prints a psql line and a URL with a fresh token.
//! Ctrl-C stops the proxy and the cluster; the next `pgtenant dev` reuses both the cluster and its tenants.

use crate::config::Config;
use crate::session::Proxy;
use crate::tenancy::{self, OnboardRequest};
use pgcluster::{Cluster, ClusterSpec, PgBinaries};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub mod cluster_home;
mod orphaned_cluster;

pub use cluster_home::ClusterHome;

/// Options of `pgtenant dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Folder for dev.toml, the secrets and (when the postgres OS user can reach it) the cluster and its log.
    #[arg(long, default_value = ".pgtenant")]
    pub dir: PathBuf,
    /// Port the proxy listens on (127.0.0.1); the next free one is taken if it is busy.
    #[arg(long, default_value_t = 6432)]
    pub port: u16,
    /// Organization onboarded on first start.
    #[arg(long, default_value = "Demo Company")]
    pub demo_name: String,
    /// Its administrator.
    #[arg(long, default_value = "admin@demo.com")]
    pub demo_email: String,
    /// Pooling mode: session or transaction.
    #[arg(long, default_value = "session", value_parser = ["session", "transaction"])]
    pub pool_mode: String,
    /// Server connections per tenant.
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,
    /// Client connections the proxy takes, in all and per tenant (default: server.max_client_connections
    /// and pool.max_clients_per_tenant as configured by default, 10000 and 1000).
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Cluster(#[from] pgcluster::ClusterError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error(transparent)]
    Onboard(#[from] tenancy::OnboardError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    AdminConnect(#[from] crate::upstream_admin::AdminConnectError),
    #[error(transparent)]
    Token(#[from] tenancy::MintForError),
    #[error("cannot write the dev secrets: {0}")]
    SecretsEncode(#[from] toml::ser::Error),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("folder {0} not found: run pgtenant dev from the project's root folder (it needs shared-migrations/ and tenant-migrations/)")]
    MissingMigrations(PathBuf),
    #[error("refusing to keep the cluster in {}: {reason}", path.display())]
    UnsafeClusterHome { path: PathBuf, reason: String },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Secrets of a dev setup, kept across runs in `.pgtenant/dev-secrets.toml` (mode 0600).
#[derive(Serialize, Deserialize)]
struct DevSecrets {
    superuser_password: String,
    server_secret: String,
    jwt_secret: String,
}

const DEV_DATABASE: &str = "pgtenant_dev";

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |source| DevError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The dev secrets, and whether they were just made.
fn load_or_create_secrets(dir: &Path) -> Result<(DevSecrets, bool), DevError> {
    let path = dir.join("dev-secrets.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(secrets) = toml::from_str::<DevSecrets>(&text) {
            return Ok((secrets, false));
        }
    }
    let secrets = DevSecrets {
        superuser_password: random_secret(),
        server_secret: random_secret(),
        jwt_secret: random_secret(),
    };
    let text = toml::to_string(&secrets)?;
    write_private(&path, &text)?;
    Ok((secrets, true))
}

fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot write", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("cannot write", path))
}

/// Runs the dev setup until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let cwd = std::env::current_dir().map_err(io_err("cannot read", Path::new(".")))?;
    let dir = cwd.join(&args.dir);
    for needed in ["shared-migrations", "tenant-migrations"] {
        if !cwd.join(needed).is_dir() {
            return Err(DevError::MissingMigrations(cwd.join(needed)));
        }
    }
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let (secrets, secrets_are_new) = load_or_create_secrets(&dir)?;

    let state_dir = dir.clone();
    let home = tokio::task::spawn_blocking(move || ClusterHome::choose(&state_dir)).await??;
    if home.derived {
        eprintln!(
            "The OS user {} cannot reach {} (a folder on its path is private), so the cluster lives in {} \
             (the same folder on every run from here).",
            pgcluster::POSTGRES_OS_USER,
            dir.display(),
            home.dir.display()
        );
    }
    if orphaned_cluster::remove_if_orphaned(
        &home.data_dir(),
        &secrets.superuser_password,
        secrets_are_new,
    )? {
        eprintln!(
            "The cluster in {} was made with secrets that are gone (not those of {}): it is removed, and a new one is made.",
            home.data_dir().display(),
            dir.join("dev-secrets.toml").display()
        );
    }
    let spec = ClusterSpec::new(home.data_dir(), "postgres", &secrets.superuser_password);
    let cluster = tokio::task::spawn_blocking(move || {
        let bins = PgBinaries::find()?;
        Cluster::start(&bins, spec)
    })
    .await??;
    orphaned_cluster::record(cluster.data_dir(), &secrets.superuser_password)?;
    eprintln!(
        "PostgreSQL running on 127.0.0.1:{} (data {}, log {})",
        cluster.port(),
        cluster.data_dir().display(),
        cluster.log_file().display()
    );
    let result = run_with_cluster(&args, &dir, &cwd, &secrets, &cluster).await;
    let mut cluster = cluster;
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped?;
    eprintln!("stopped.");
    Ok(())
}

async fn run_with_cluster(
    args: &DevArgs,
    dir: &Path,
    cwd: &Path,
    secrets: &DevSecrets,
    cluster: &Cluster,
) -> Result<(), DevError> {
    // The database for the shared schema and the tenants.
    let postgres_db = connect(cluster.superuser_config("postgres")).await?;
    if postgres_db
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&DEV_DATABASE],
        )
        .await?
        .is_none()
    {
        postgres_db
            .batch_execute(&format!("CREATE DATABASE {DEV_DATABASE}"))
            .await?;
    }
    drop(postgres_db);

    let listen = free_listen_port(args.port).await;
    let config_path = dir.join("dev.toml");
    let config_text = dev_config_text(cluster.port(), listen, secrets, cwd, args);
    write_private(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;

    let mut admin = crate::upstream_admin::connect_admin(&config).await?;
    crate::migrate::apply_shared(&mut admin, &config.tenancy.shared_migrations_dir).await?;
    if tenancy::find_user_by_email(&admin, &args.demo_email)
        .await?
        .is_none()
    {
        let done = tenancy::onboard(
            &mut admin,
            &config,
            &OnboardRequest {
                name: args.demo_name.clone(),
                admin_email: args.demo_email.clone(),
                slug: None,
                ddl_allowed: None,
                cluster: None,
            },
        )
        .await?;
        eprintln!(
            "onboarded {} (schema {}, role {})",
            done.slug, done.schema, done.role
        );
    }
    let token = tenancy::mint_token_for(
        &admin,
        &config,
        &args.demo_email,
        Duration::from_secs(12 * 3600),
        false,
    )
    .await?;
    let admin_token = tenancy::mint_token_for(
        &admin,
        &config,
        &args.demo_email,
        Duration::from_secs(12 * 3600),
        true,
    )
    .await?;
    drop(admin);

    let listener = crate::server::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let proxy = Proxy::from_config_file(config, config_path.clone(), shutdown.clone())?;
    let server = tokio::spawn(crate::server::run(listener, proxy));

    let user = &args.demo_email;
    let port = listen.port();
    println!();
    println!("pgtenant dev is running. Connect as {user} (token valid 12h):");
    println!();
    println!("  PGPASSWORD={token} psql -h 127.0.0.1 -p {port} -U {user} -d {DEV_DATABASE}");
    println!();
    println!("connection URL:");
    println!(
        "postgres://{}:{token}@127.0.0.1:{port}/{DEV_DATABASE}?sslmode=disable",
        user.replace('@', "%40")
    );
    println!();
    println!("From a second terminal (same folder):");
    println!(
        "  pgtenant --config {} onboard --name \"Other Co\" --admin-email admin@other.com",
        rel(&config_path, cwd)
    );
    println!(
        "  pgtenant --config {} token --email admin@other.com",
        rel(&config_path, cwd)
    );
    println!(
        "An administrator token (for the admin channel, database \"pgtenant\"): {admin_token}"
    );
    println!("Ctrl-C stops the proxy and PostgreSQL.");

    crate::stop_signal::wait_for_stop_signal().await;
    eprintln!("stopping…");
    shutdown.cancel();
    server.await?;
    Ok(())
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

async fn free_listen_port(preferred: u16) -> SocketAddr {
    for port in preferred..preferred.saturating_add(100) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn dev_config_text(
    pg_port: u16,
    listen: SocketAddr,
    secrets: &DevSecrets,
    cwd: &Path,
    args: &DevArgs,
) -> String {
    let toml_str = |s: &str| toml::Value::String(s.to_string()).to_string();
    let (server_limit, tenant_limit) = match args.max_clients {
        Some(n) => (
            format!("max_client_connections = {n}\n"),
            format!("max_clients_per_tenant = {n}\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "# Written by `pgtenant dev`; rewritten at each start. Holds development secrets: do not commit.\n\
         [server]\nlisten = {listen}\n{server_limit}\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {pg_port}\ndatabase = {db}\nadmin_user = \"postgres\"\n\
         admin_password = {admin_password}\nserver_secret = {server_secret}\n\n\
         [pool]\nmode = {mode}\nsize_per_tenant = {pool_size}\nmax_server_connections = 80\n{tenant_limit}\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs_secret = {jwt}\n\n\
         [tenancy]\ntenant_migrations_dir = {tenant_dir}\nshared_migrations_dir = {shared_dir}\n",
        listen = toml_str(&listen.to_string()),
        mode = toml_str(&args.pool_mode),
        pool_size = args.pool_size,
        db = toml_str(DEV_DATABASE),
        admin_password = toml_str(&secrets.superuser_password),
        server_secret = toml_str(&secrets.server_secret),
        jwt = toml_str(&secrets.jwt_secret),
        tenant_dir = toml_str(&cwd.join("tenant-migrations").display().to_string()),
        shared_dir = toml_str(&cwd.join("shared-migrations").display().to_string()),
    )
}

async fn connect(
    config: tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}
