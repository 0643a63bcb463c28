//! The configuration file (TOML), its defaults, environment overrides for secrets, and validation.
//!
//! Secrets (the server secret from which tenant role passwords are derived, the upstream admin password, the
//! JWT secret) can be given in the file or, better, in the environment: `PGTENANT_SERVER_SECRET`,
//! `PGTENANT_ADMIN_PASSWORD`, `PGTENANT_JWT_SECRET`. `Debug` never prints them.

use crate::auth::AuthConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub pool: PoolConfig,
    pub auth: AuthConfig,
    pub tenancy: TenancyConfig,
    pub migrations: MigrationsConfig,
    /// Login limits (failed logins per address and identity, logins per tenant) and the refusals kept.
    pub login: crate::auth::limiter::LoginLimits,
    pub health: HealthConfig,
    /// Per-tenant limits' global defaults (statement_timeout …) and the queue NOTICE.
    pub limits: crate::limits::LimitsConfig,
    /// Secrets of the clusters the directory names (`[clusters.<name>]`): their connection settings are
    /// in `pgtenant.clusters`, their passwords only here or in `PGTENANT_CLUSTER_<NAME>_ADMIN_PASSWORD`.
    pub clusters: std::collections::BTreeMap<String, ClusterSecrets>,
    /// Read replicas: when a session goes to one, and how far behind one may be.
    pub replicas: ReplicasConfig,
}

/// The health endpoints on `server.metrics_listen` (`/health`, `/health/tenants`, `/live`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How long `/health` reuses its directory check.
    pub ready_cache_ms: u64,
    /// How long `/health/tenants` reuses a round of tenant checks.
    pub tenants_cache_ms: u64,
    /// Tenants checked at once in a round.
    pub tenants_concurrency: usize,
    /// How long the directory check (and getting a directory connection for a round) may take.
    pub check_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            ready_cache_ms: 1_000,
            tenants_cache_ms: 5_000,
            tenants_concurrency: 4,
            check_timeout_ms: 1_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationsConfig {
    /// Tenants migrated at once by a fan-out.
    pub concurrency: usize,
    /// `lock_timeout` of a tenant's migration transaction: a tenant whose tables are locked by its
    /// application fails (and is retried by the next run) instead of stalling the fan-out.
    pub lock_timeout_ms: u64,
}

impl Default for MigrationsConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lock_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key for TLS with clients. Without them SSLRequest is answered 'N'.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept a password (token) over unencrypted TCP from a non-loopback address. Off by default.
    pub allow_plaintext_password: bool,
    /// Maximum client connections at once; the next one is refused with 53300.
    pub max_client_connections: usize,
    /// Time a client has to finish the startup and login exchange.
    pub login_timeout_ms: u64,
    /// Database name reserved for the admin channel.
    pub admin_database: String,
    /// On SIGTERM (or the admin SHUTDOWN), how long sessions get to finish their transaction.
    pub shutdown_grace_secs: u64,
    /// Address of the HTTP endpoints `/metrics` (Prometheus), `/health`, `/health/tenants` and `/live`. Off
    /// when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// A client idle (not in a transaction) for this long is disconnected; 0: never.
    pub client_idle_timeout_secs: u64,
    /// A session is ended at its first idle point (between transactions) after this long; 0: no cap.
    pub max_session_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            tls_cert: None,
            tls_key: None,
            allow_plaintext_password: false,
            max_client_connections: 10_000,
            login_timeout_ms: 15_000,
            admin_database: "pgtenant".into(),
            shutdown_grace_secs: 30,
            metrics_listen: None,
            client_idle_timeout_secs: 0,
            max_session_secs: 0,
        }
    }
}

/// The PostgreSQL server pgtenant serves tenants from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    /// The database holding the shared schema and the tenant schemas.
    pub database: String,
    /// A role that may create roles and schemas (CREATEROLE, and CREATE on the database), used for the shared
    /// schema, onboarding and migrations. Never used to serve clients.
    pub admin_user: String,
    pub admin_password: Option<Secret>,
    /// Secret from which each tenant role's password is derived (HMAC-SHA-256 of the role name). Changing it
    /// requires re-setting every tenant role's password (`pgtenant onboard` does it for new tenants).
    pub server_secret: Option<Secret>,
    pub connect_timeout_ms: u64,
    /// TLS to PostgreSQL, with libpq's meaning (see `upstream_tls`); `disable` keeps connections plain.
    pub sslmode: crate::config::SslMode,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (verify-ca, verify-full; with
    /// require or prefer it makes the chain checked, as libpq does).
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate chain and private key, for servers that ask for one (`clientcert` in
    /// pg_hba.conf). Both or neither.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "postgres".into(),
            admin_user: "postgres".into(),
            admin_password: None,
            server_secret: None,
            connect_timeout_ms: 5_000,
            sslmode: crate::config::SslMode::Disable,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

/// How long a client keeps a server connection.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// For its whole session.
    #[default]
    Session,
    /// For one transaction (or lone statement); prepared statements and settings follow the client.
    Transaction,
}

impl PoolMode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "session" => Some(Self::Session),
            "transaction" => Some(Self::Transaction),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Session or transaction pooling, for tenants whose directory row does not say.
    pub mode: PoolMode,
    /// Server connections per tenant.
    pub size_per_tenant: usize,
    /// Server connections across all tenants; idle connections of other tenants are closed to make room.
    pub max_server_connections: usize,
    /// How long a client waits for a server connection before 53300.
    pub acquire_timeout_ms: u64,
    /// Idle server connections are closed after this long.
    pub idle_timeout_secs: u64,
    /// Server connections are closed after this long, at their next check-in.
    pub max_lifetime_secs: u64,
    /// Server connections a tenant keeps even while other tenants wait for room under the global cap.
    pub reserve_per_tenant: usize,
    /// Client connections per tenant; the next one is refused with 53300.
    pub max_clients_per_tenant: usize,
    /// A server connection idle for longer than this answers an empty query before it is handed out.
    pub health_check_after_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Session,
            size_per_tenant: 10,
            max_server_connections: 90,
            acquire_timeout_ms: 5_000,
            idle_timeout_secs: 600,
            max_lifetime_secs: 3_600,
            reserve_per_tenant: 1,
            max_clients_per_tenant: 1_000,
            health_check_after_secs: 30,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchemaNameFormat {
    /// `org_<short id>`: reveals nothing about the customer in `pg_namespace`, which every role can read.
    #[default]
    ShortId,
    /// `org_<slug>_<short id>`: readable, but every tenant can list every other tenant's name.
    SlugShortId,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    pub schema_name_format: SchemaNameFormat,
    /// Whether tenants may run DDL (CREATE …) in their own schema by default.
    pub allow_tenant_ddl: bool,
    pub tenant_migrations_dir: PathBuf,
    pub shared_migrations_dir: PathBuf,
    /// The guards a cluster other than the default one needs (applied by ADD CLUSTER).
    pub cluster_migrations_dir: PathBuf,
    /// Where onboarding places a tenant when no cluster is named.
    pub placement: Placement,
    /// How long a directory lookup (user → tenant) is cached.
    pub directory_cache_ttl_ms: u64,
    /// Statement run at onboarding, as the tenant's role in its schema, to record the admin user in the
    /// tenant's own tables; `$1` is the email. Empty: none.
    pub admin_user_sql: String,
    /// The schema name applications write that means the tenant's own schema (ORMs that qualify every
    /// table with `public`); `None` or "": off. Per tenant: `organizations.virtual_schema`.
    pub virtual_schema: Option<String>,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            schema_name_format: SchemaNameFormat::ShortId,
            allow_tenant_ddl: true,
            tenant_migrations_dir: PathBuf::from("tenant-migrations"),
            shared_migrations_dir: PathBuf::from("shared-migrations"),
            cluster_migrations_dir: PathBuf::from("cluster-migrations"),
            placement: Placement::Default,
            directory_cache_ttl_ms: 5_000,
            admin_user_sql: "INSERT INTO employees (email, full_name, role) VALUES ($1, 'Administrator', 'admin')".into(),
            virtual_schema: Some("public".into()),
        }
    }
}

impl Config {
    /// Reads, applies environment overrides and validates. Relative paths are taken from the working folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    pub fn apply_env(&mut self) {
        if let Ok(secret) = std::env::var("PGTENANT_SERVER_SECRET") {
            self.upstream.server_secret = Some(secret.into());
        }
        if let Ok(password) = std::env::var("PGTENANT_ADMIN_PASSWORD") {
            self.upstream.admin_password = Some(password.into());
        }
        // PGTENANT_CLUSTER_<NAME>_ADMIN_PASSWORD: the cluster named <name> in lower case.
        for (key, value) in std::env::vars() {
            let name = key
                .strip_prefix("PGTENANT_CLUSTER_")
                .and_then(|rest| rest.strip_suffix("_ADMIN_PASSWORD"));
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                self.clusters
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .admin_password = Some(Secret::new(value));
            }
        }
        self.auth.apply_env();
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        match &self.upstream.server_secret {
            Some(s) if s.expose().len() >= 16 => {}
            _ => return invalid("upstream.server_secret (or PGTENANT_SERVER_SECRET) must be set, at least 16 characters"),
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid("server.tls_cert and server.tls_key must be set together");
        }
        {
            use crate::config::SslMode;
            let u = &self.upstream;
            if matches!(u.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
                && u.sslrootcert.is_none()
            {
                return invalid(
                    "upstream.sslmode = verify-ca or verify-full needs upstream.sslrootcert",
                );
            }
            if u.sslcert.is_some() != u.sslkey.is_some() {
                return invalid("upstream.sslcert and upstream.sslkey must be set together");
            }
        }
        if self.pool.size_per_tenant == 0 || self.pool.max_server_connections == 0 {
            return invalid("pool sizes must be at least 1");
        }
        if let Err(m) = self.login.validate() {
            return invalid(&m);
        }
        if let Err(m) = self.limits.validate() {
            return invalid(&m);
        }
        if self.health.tenants_concurrency == 0 {
            return invalid("health.tenants_concurrency must be at least 1");
        }
        if self.clusters.contains_key(crate::names::DEFAULT_CLUSTER) {
            return invalid(
                "[clusters.default]: the default cluster's admin password is upstream.admin_password",
            );
        }
        if let Some(name) = self
            .clusters
            .keys()
            .find(|n| !crate::names::ClusterName::is_valid(n))
        {
            return invalid(&format!(
                "[clusters.{name}]: a cluster name is lower-case letters, digits and _, starting with a letter"
            ));
        }
        if self.replicas.check_interval_ms == 0 {
            return invalid("replicas.check_interval_ms must be at least 1");
        }
        if self.server.admin_database.is_empty() {
            return invalid("server.admin_database must not be empty");
        }
        if let Some(name) = self.tenancy.virtual_schema.as_deref() {
            let valid = name.is_empty()
                || (name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$'
                    }));
            if !valid {
                return invalid(
                    "tenancy.virtual_schema must be a lower-case schema name (or \"\" for off)",
                );
            }
        }
        Ok(())
    }

    pub fn server_secret(&self) -> &[u8] {
        self.upstream
            .server_secret
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default()
            .as_bytes()
    }

    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.connect_timeout_ms)
    }

    /// A tokio-postgres config logging in as a tenant role on the default cluster (see
    /// [`UpstreamConfig::tenant_pg_config`]).
    pub fn tenant_pg_config(
        &self,
        role: &str,
        password: &str,
        application_name: &str,
    ) -> tokio_postgres::Config {
        self.upstream
            .tenant_pg_config(role, password, application_name)
    }

    /// A tokio-postgres config for the admin role of the default cluster (shared schema, onboarding,
    /// migrations).
    pub fn admin_pg_config(&self) -> tokio_postgres::Config {
        self.upstream.admin_pg_config()
    }
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// A tokio-postgres config logging in as a tenant role (its derived password), TLS as configured.
    pub fn tenant_pg_config(
        &self,
        role: &str,
        password: &str,
        application_name: &str,
    ) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(role)
            .password(password)
            .application_name(application_name)
            .ssl_mode(self.sslmode.postgres())
            .connect_timeout(self.connect_timeout());
        pg
    }

    /// A tokio-postgres config for the admin role.
    pub fn admin_pg_config(&self) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.admin_user)
            .application_name("pgtenant-admin")
            .ssl_mode(self.sslmode.postgres())
            .connect_timeout(self.connect_timeout());
        if let Some(password) = &self.admin_password {
            pg.password(password.expose());
        }
        pg
    }
}

mod clusters;
mod describe;
pub mod live;
mod ssl_mode;

pub use crate::secret::Secret;
pub use clusters::{ClusterSecrets, Placement, ReplicasConfig, TargetSessionAttrs};
pub use live::LiveConfig;
pub use ssl_mode::SslMode;

#[cfg(test)]
mod tests;
