//! Clusters: the PostgreSQL clusters tenants are placed on (issue 9, "scale out by placement").
//!
//! - The **directory** (organizations, users, revocations, the clusters table itself) lives on the default
//!   cluster, the one `[upstream]` names; nothing about it changes when other clusters are added.
//! - `pgtenant.clusters` (shared migration V011) names every cluster: the `default` row holds no connection
//!   settings (they are `[upstream]`'s), every other row holds host, port, database, admin user and TLS
//!   settings, never a password. Passwords come from each pgtenant's own config (`[clusters.<name>]
//!   admin_password`) or environment (`PGTENANT_CLUSTER_<NAME>_ADMIN_PASSWORD`); a replica without one
//!   uses its primary's. So a row can be read by anyone with the directory, and a pgtenant needs nothing
//!   from another pgtenant to reach a cluster.
//! - A **tenant** lives on one primary (`organizations.cluster`): its role, its schema and its migration
//!   history (`pgtenant.tenant_migrations` of that cluster, written in the migration's own transaction) are
//!   there. A cluster other than the default one holds the guards its tenants need (`cluster-migrations/`,
//!   applied by ADD CLUSTER: the DDL guard, migration tickets, `pgtenant_api.record_migration`,
//!   `pgtenant.tenant_roles`) and its own `pgtenant_secret_check` role.
//! - A **replica** (`role = 'replica'`, `primary_of`) is a streaming standby of a primary: roles and
//!   schemas come with the WAL, so a session there logs in as the same tenant role.
//!
//! Parts: [`ClusterSet`] here (the rows, resolved with this pgtenant's secrets and TLS settings, ready to
//! connect; used by the CLI and the proxy alike), [`registry`] (the proxy's live copy, reloaded when the
//! directory announces a change), [`guards`], [`placement`], [`ops`] (ADD CLUSTER, SHOW CLUSTERS),
//! [`replicas`] (lag of every replica, measured by each pgtenant), [`route`] (which cluster a session's
//! server connections go to).
//!
//! Moving a tenant from one cluster to another while it is served is [`crate::moves`].

pub mod guards;
pub mod ops;
pub mod placement;
pub mod registry;
pub mod replicas;
pub mod route;

use crate::config::SslMode;
use crate::config::{Config, UpstreamConfig};
use crate::names::{ClusterName, DEFAULT_CLUSTER};
use crate::upstream::UpstreamTarget;
use crate::upstream_tls::UpstreamTls;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterRole {
    Primary,
    Replica,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterStatus {
    /// Served; onboarding may place tenants on it; a replica gets reads.
    Active,
    /// Served; no new tenants placed on it.
    Draining,
    /// A replica no reads go to.
    Disabled,
}

impl ClusterStatus {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "draining" => Some(Self::Draining),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }
}

/// How to reach a cluster, as the directory holds it (no password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub admin_user: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

/// One row of `pgtenant.clusters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRow {
    pub name: ClusterName,
    pub role: ClusterRole,
    /// The primary a replica streams from.
    pub primary_of: Option<ClusterName>,
    pub status: ClusterStatus,
    /// `None` for the default cluster: its connection is `[upstream]`'s.
    pub connection: Option<Connection>,
}

impl ClusterRow {
    /// The columns [`ClusterRow::from_row`] reads, of `pgtenant.clusters c`.
    pub const COLUMNS: &'static str = "c.name, c.role, c.primary_of, c.status, c.host, c.port, \
         c.database, c.admin_user, c.sslmode, c.sslrootcert, c.sslcert, c.sslkey";

    fn from_row(r: &tokio_postgres::Row) -> Result<Self, ClusterError> {
        let name: String = r.try_get(0)?;
        let bad = |what: &str| ClusterError::Invalid(format!("cluster {name}: {what}"));
        let role = match r.try_get::<_, &str>(1)? {
            "replica" => ClusterRole::Replica,
            _ => ClusterRole::Primary,
        };
        let status = ClusterStatus::parse(r.try_get(3)?).ok_or_else(|| bad("unknown status"))?;
        let host: Option<String> = r.try_get(4)?;
        let connection = match host {
            None => None,
            Some(host) => {
                let port: i32 = r.try_get::<_, Option<i32>>(5)?.unwrap_or(5432);
                let sslmode = parse_sslmode(r.try_get(8)?).ok_or_else(|| bad("unknown sslmode"))?;
                let path = |i: usize| -> Result<Option<PathBuf>, ClusterError> {
                    Ok(r.try_get::<_, Option<String>>(i)?.map(PathBuf::from))
                };
                Some(Connection {
                    host,
                    port: u16::try_from(port).map_err(|_| bad("port out of range"))?,
                    database: r.try_get::<_, Option<String>>(6)?.unwrap_or_default(),
                    admin_user: r.try_get::<_, Option<String>>(7)?.unwrap_or_default(),
                    sslmode,
                    sslrootcert: path(9)?,
                    sslcert: path(10)?,
                    sslkey: path(11)?,
                })
            }
        };
        Ok(ClusterRow {
            name: ClusterName::new(name),
            role,
            primary_of: r.try_get::<_, Option<String>>(2)?.map(ClusterName::new),
            status,
            connection,
        })
    }

    /// The default cluster, as the directory knows it before V011 (or without reading it).
    pub fn default_row() -> Self {
        ClusterRow {
            name: ClusterName::default_cluster(),
            role: ClusterRole::Primary,
            primary_of: None,
            status: ClusterStatus::Active,
            connection: None,
        }
    }
}

pub fn parse_sslmode(text: &str) -> Option<SslMode> {
    Some(match text {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster \"{0}\" in pgtenant.clusters")]
    Unknown(String),
    #[error("cluster {cluster}: {reason}")]
    Tls { cluster: String, reason: String },
    #[error("cannot connect to cluster {cluster} as its admin role: {reason}")]
    Connect { cluster: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("directory query failed: {}", crate::upstream_tls::error_chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
}

/// Reads `pgtenant.clusters`. A directory without the table (before shared migration V011) has only the
/// default cluster.
pub async fn load_rows(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<ClusterRow>, ClusterError> {
    let sql = format!(
        "SELECT {} FROM pgtenant.clusters c ORDER BY c.name",
        ClusterRow::COLUMNS
    );
    let rows = match client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(vec![ClusterRow::default_row()])
        }
        Err(e) => return Err(e.into()),
    };
    let mut out: Vec<ClusterRow> = rows
        .iter()
        .map(ClusterRow::from_row)
        .collect::<Result<_, _>>()?;
    if !out.iter().any(|r| r.name.is_default()) {
        out.push(ClusterRow::default_row());
    }
    Ok(out)
}

/// A cluster ready to connect to: its row, with this pgtenant's password for it and TLS settings.
pub struct ClusterEntry {
    pub row: ClusterRow,
    /// Host, port, database, admin user and password, TLS settings (`server_secret` unused).
    pub upstream: UpstreamConfig,
    /// The TLS settings, or why their files could not be used.
    tls: Result<UpstreamTls, String>,
    /// Where tenant connections go (None when TLS could not be set up).
    target: Option<Arc<UpstreamTarget>>,
}

impl fmt::Debug for ClusterEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterEntry")
            .field("row", &self.row)
            .field("upstream", &self.upstream)
            .field("tls", &self.tls.as_ref().map(|t| t.mode()))
            .finish()
    }
}

impl ClusterEntry {
    fn new(row: ClusterRow, upstream: UpstreamConfig, tls: Result<UpstreamTls, String>) -> Self {
        let target = tls.as_ref().ok().map(|tls| {
            Arc::new(UpstreamTarget {
                host: upstream.host.clone(),
                port: upstream.port,
                database: upstream.database.clone(),
                connect_timeout: upstream.connect_timeout(),
                tls: tls.clone(),
            })
        });
        Self {
            row,
            upstream,
            tls,
            target,
        }
    }

    pub fn name(&self) -> &ClusterName {
        &self.row.name
    }

    pub fn is_replica(&self) -> bool {
        self.row.role == ClusterRole::Replica
    }

    /// The TLS settings to connect with.
    pub fn tls(&self) -> Result<&UpstreamTls, ClusterError> {
        self.tls.as_ref().map_err(|reason| ClusterError::Tls {
            cluster: self.row.name.to_string(),
            reason: reason.clone(),
        })
    }

    /// Where raw tenant connections go.
    pub fn target(&self) -> Result<Arc<UpstreamTarget>, ClusterError> {
        match &self.target {
            Some(t) => Ok(t.clone()),
            None => Err(self.tls().err().unwrap_or_else(|| {
                ClusterError::Invalid(format!("cluster {} has no target", self.row.name))
            })),
        }
    }

    /// `host:port/database`, for people (never with a password).
    pub fn address(&self) -> String {
        format!(
            "{}:{}/{}",
            self.upstream.host, self.upstream.port, self.upstream.database
        )
    }

    /// A tokio-postgres config logging in as a tenant role on this cluster.
    pub fn tenant_pg_config(
        &self,
        role: &str,
        password: &str,
        application_name: &str,
    ) -> tokio_postgres::Config {
        self.upstream
            .tenant_pg_config(role, password, application_name)
    }

    /// A new connection as the cluster's admin role (not pooled: for rare work).
    pub async fn connect_admin(&self) -> Result<tokio_postgres::Client, ClusterError> {
        let tls = self.tls()?;
        let failed = |e: tokio_postgres::Error| ClusterError::Connect {
            cluster: self.row.name.to_string(),
            reason: crate::upstream_tls::error_chain(&e),
        };
        let (client, connection) = self
            .upstream
            .admin_pg_config()
            .connect(tls.postgres())
            .await
            .map_err(failed)?;
        let name = self.row.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(cluster = %name, error = %e, "cluster admin connection ended");
            }
        });
        Ok(client)
    }
}

/// Every cluster of the directory, resolved with this pgtenant's secrets. Cheap to share (`Arc` entries).
#[derive(Debug, Clone)]
pub struct ClusterSet {
    entries: BTreeMap<ClusterName, Arc<ClusterEntry>>,
}

impl ClusterSet {
    /// Only the default cluster, with `default_tls` (the TLS settings read from `[upstream]` at start).
    pub fn default_only(config: &Config, default_tls: &UpstreamTls) -> Self {
        Self::from_rows(config, default_tls, vec![ClusterRow::default_row()])
    }

    /// Resolves directory rows with `config`'s secrets. A row whose TLS files cannot be read stays listed,
    /// with the reason, and cannot be connected to.
    pub fn from_rows(config: &Config, default_tls: &UpstreamTls, rows: Vec<ClusterRow>) -> Self {
        let password_of = |name: &ClusterName| {
            config
                .clusters
                .get(name.as_str())
                .and_then(|c| c.admin_password.as_ref())
                .map(|s| s.expose().to_string())
        };
        let mut entries = BTreeMap::new();
        for row in &rows {
            let entry = match &row.connection {
                None => ClusterEntry::new(
                    row.clone(),
                    config.upstream.clone(),
                    Ok(default_tls.clone()),
                ),
                Some(c) => {
                    let password = password_of(&row.name)
                        .or_else(|| row.primary_of.as_ref().and_then(password_of));
                    let upstream = UpstreamConfig {
                        host: c.host.clone(),
                        port: c.port,
                        database: c.database.clone(),
                        admin_user: c.admin_user.clone(),
                        admin_password: password.map(crate::secret::Secret::from),
                        server_secret: None,
                        connect_timeout_ms: config.upstream.connect_timeout_ms,
                        sslmode: c.sslmode,
                        sslrootcert: c.sslrootcert.clone(),
                        sslcert: c.sslcert.clone(),
                        sslkey: c.sslkey.clone(),
                    };
                    let tls = UpstreamTls::from_config(&upstream).map_err(|e| e.to_string());
                    if let Err(reason) = &tls {
                        tracing::error!(cluster = %row.name, %reason, "cluster TLS settings unusable");
                    }
                    ClusterEntry::new(row.clone(), upstream, tls)
                }
            };
            entries.insert(row.name.clone(), Arc::new(entry));
        }
        Self { entries }
    }

    /// Reads the directory's clusters over `client` (an admin connection to the default cluster).
    pub async fn load(
        client: &impl tokio_postgres::GenericClient,
        config: &Config,
        default_tls: &UpstreamTls,
    ) -> Result<Self, ClusterError> {
        Ok(Self::from_rows(
            config,
            default_tls,
            load_rows(client).await?,
        ))
    }

    pub fn get(&self, name: &ClusterName) -> Result<Arc<ClusterEntry>, ClusterError> {
        self.entries
            .get(name)
            .cloned()
            .ok_or_else(|| ClusterError::Unknown(name.to_string()))
    }

    pub fn contains(&self, name: &ClusterName) -> bool {
        self.entries.contains_key(name)
    }

    pub fn default_entry(&self) -> Arc<ClusterEntry> {
        match self.entries.get(&ClusterName::default_cluster()) {
            Some(e) => e.clone(),
            None => unreachable!("a cluster set always holds the default cluster"),
        }
    }

    /// Every cluster, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClusterEntry>> {
        self.entries.values()
    }

    /// The primaries (the clusters tenants can be placed on), by name.
    pub fn primaries(&self) -> impl Iterator<Item = &Arc<ClusterEntry>> {
        self.entries.values().filter(|e| !e.is_replica())
    }

    /// The replicas of `primary`, by name.
    pub fn replicas_of<'a>(
        &'a self,
        primary: &'a ClusterName,
    ) -> impl Iterator<Item = &'a Arc<ClusterEntry>> + 'a {
        self.entries
            .values()
            .filter(move |e| e.row.primary_of.as_ref() == Some(primary))
    }

    /// `self`, keeping `old`'s entry for every cluster whose row and password did not change: the same
    /// `Arc`, so pools opened on it stay (they compare targets by identity).
    pub fn keeping_unchanged(mut self, old: &ClusterSet) -> Self {
        for (name, entry) in self.entries.iter_mut() {
            if let Some(previous) = old.entries.get(name) {
                if previous.row == entry.row
                    && previous.upstream.admin_password == entry.upstream.admin_password
                    && previous.tls.is_ok() == entry.tls.is_ok()
                {
                    *entry = previous.clone();
                }
            }
        }
        self
    }
}

/// Connects to the default cluster's admin role with `config` (for the CLI) and reads every cluster.
pub async fn load_with(
    directory: &tokio_postgres::Client,
    config: &Config,
) -> Result<ClusterSet, ClusterError> {
    let tls = UpstreamTls::from_config(&config.upstream).map_err(|e| ClusterError::Tls {
        cluster: DEFAULT_CLUSTER.into(),
        reason: e.to_string(),
    })?;
    ClusterSet::load(directory, config, &tls).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterSecrets, Secret};

    #[test]
    fn cluster_names() {
        for good in ["default", "eu2", "b", "shard_07"] {
            assert!(ClusterName::is_valid(good), "{good}");
        }
        for bad in ["", "2eu", "Eu", "eu-2", "eu 2", &"x".repeat(41)] {
            assert!(!ClusterName::is_valid(bad), "{bad}");
        }
    }

    fn row(name: &str, primary_of: Option<&str>) -> ClusterRow {
        ClusterRow {
            name: ClusterName::new(name),
            role: if primary_of.is_some() {
                ClusterRole::Replica
            } else {
                ClusterRole::Primary
            },
            primary_of: primary_of.map(ClusterName::new),
            status: ClusterStatus::Active,
            connection: Some(Connection {
                host: "10.0.0.2".into(),
                port: 5433,
                database: "app".into(),
                admin_user: "postgres".into(),
                sslmode: SslMode::Disable,
                sslrootcert: None,
                sslcert: None,
                sslkey: None,
            }),
        }
    }

    #[test]
    fn passwords_come_from_config_and_replicas_fall_back_to_their_primary() {
        let mut config = Config::default();
        config.clusters.insert(
            "eu2".into(),
            ClusterSecrets {
                admin_password: Some(Secret::new("pw-eu2")),
            },
        );
        let set = ClusterSet::from_rows(
            &config,
            &UpstreamTls::disabled(),
            vec![
                ClusterRow::default_row(),
                row("eu2", None),
                row("eu2_r1", Some("eu2")),
                row("us1", None),
            ],
        );
        let pw = |n: &str| {
            set.get(&ClusterName::new(n))
                .expect("listed")
                .upstream
                .admin_password
                .clone()
        };
        assert_eq!(
            pw("eu2").as_ref().map(crate::secret::Secret::expose),
            Some("pw-eu2")
        );
        assert_eq!(
            pw("eu2_r1").as_ref().map(crate::secret::Secret::expose),
            Some("pw-eu2")
        );
        assert_eq!(pw("us1"), None);
        assert_eq!(set.default_entry().upstream.host, config.upstream.host);
        let replicas: Vec<String> = set
            .replicas_of(&ClusterName::new("eu2"))
            .map(|e| e.name().to_string())
            .collect();
        assert_eq!(replicas, vec!["eu2_r1".to_string()]);
        assert!(set.get(&ClusterName::new("nope")).is_err());
    }
}
