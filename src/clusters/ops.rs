//! Operations on clusters, shared by the admin channel and the CLI: ADD CLUSTER (checked before it is
//! written: reachable as its admin role, a primary not in recovery, a replica in recovery with the same
//! system identifier as its primary; a primary gets its guards) and the facts SHOW CLUSTERS lists.

use super::{
    ClusterEntry, ClusterError, ClusterName, ClusterRole, ClusterRow, ClusterSet, ClusterStatus,
    Connection,
};
use crate::config::Config;
use crate::config::SslMode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What ADD CLUSTER is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub admin_user: Option<String>,
    pub sslmode: Option<SslMode>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// A replica of this primary.
    pub replica_of: Option<String>,
}

/// Checks the cluster and records it in the directory (the trigger announces it to every pgtenant).
/// `directory` is an admin connection to the default cluster. A primary gets its guards first.
pub async fn add_cluster(
    directory: &tokio_postgres::Client,
    config: &Config,
    clusters: &ClusterSet,
    request: &AddCluster,
) -> Result<ClusterRow, ClusterError> {
    let name = request.name.as_str();
    if !ClusterName::is_valid(name) {
        return Err(ClusterError::Invalid(format!(
            "\"{name}\" is not a cluster name: lower-case letters, digits and _, starting with a letter, at most 40"
        )));
    }
    let name = ClusterName::new(name);
    if clusters.contains(&name) {
        return Err(ClusterError::Invalid(format!(
            "a cluster \"{name}\" exists already"
        )));
    }
    let primary = match &request.replica_of {
        None => None,
        Some(p) => {
            let entry = clusters.get(&ClusterName::new(p.as_str()))?;
            if entry.is_replica() {
                return Err(ClusterError::Invalid(format!(
                    "cluster \"{p}\" is a replica: a replica's primary must be a primary"
                )));
            }
            Some(entry)
        }
    };
    if request.sslcert.is_some() != request.sslkey.is_some() {
        return Err(ClusterError::Invalid(
            "SSLCERT and SSLKEY go together".into(),
        ));
    }
    // A replica inherits its primary's settings unless told otherwise.
    let inherited = primary.as_ref().map(|p| &p.upstream);
    let sslmode = request
        .sslmode
        .or(inherited.map(|u| u.sslmode))
        .unwrap_or(SslMode::Disable);
    if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        && request.sslrootcert.is_none()
        && inherited.and_then(|u| u.sslrootcert.as_ref()).is_none()
    {
        return Err(ClusterError::Invalid(format!(
            "SSLMODE {} needs SSLROOTCERT",
            sslmode.as_str()
        )));
    }
    let row = ClusterRow {
        name: name.clone(),
        role: if primary.is_some() {
            ClusterRole::Replica
        } else {
            ClusterRole::Primary
        },
        primary_of: primary.as_ref().map(|p| p.name().clone()),
        status: ClusterStatus::Active,
        connection: Some(Connection {
            host: request.host.clone(),
            port: request.port,
            database: request
                .database
                .clone()
                .or(inherited.map(|u| u.database.clone()))
                .unwrap_or_else(|| config.upstream.database.clone()),
            admin_user: request
                .admin_user
                .clone()
                .or(inherited.map(|u| u.admin_user.clone()))
                .unwrap_or_else(|| config.upstream.admin_user.clone()),
            sslmode,
            sslrootcert: request
                .sslrootcert
                .clone()
                .or(inherited.and_then(|u| u.sslrootcert.clone())),
            sslcert: request
                .sslcert
                .clone()
                .or(inherited.and_then(|u| u.sslcert.clone())),
            sslkey: request
                .sslkey
                .clone()
                .or(inherited.and_then(|u| u.sslkey.clone())),
        }),
    };
    let mut rows: Vec<ClusterRow> = clusters.iter().map(|e| e.row.clone()).collect();
    rows.push(row.clone());
    let resolved =
        ClusterSet::from_rows(config, &crate::upstream_tls::UpstreamTls::disabled(), rows);
    let entry = resolved.get(&name)?;
    let client = entry.connect_admin().await?;
    let facts = client
        .query_one(
            "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?;
    let (in_recovery, system_id): (bool, String) = (facts.get(0), facts.get(1));
    match &primary {
        None if in_recovery => {
            return Err(ClusterError::Invalid(format!(
                "{} is in recovery (a standby): add it with REPLICA OF its primary",
                entry.address()
            )))
        }
        None => {
            super::guards::apply(&entry, config).await?;
        }
        Some(_) if !in_recovery => {
            return Err(ClusterError::Invalid(format!(
                "{} is not in recovery: a replica must be a streaming standby of its primary",
                entry.address()
            )))
        }
        Some(p) => {
            let primary_id: String = p
                .connect_admin()
                .await?
                .query_one(
                    "SELECT system_identifier::text FROM pg_control_system()",
                    &[],
                )
                .await?
                .get(0);
            if primary_id != system_id {
                return Err(ClusterError::Invalid(format!(
                    "{} is a standby of another cluster (system identifier {system_id}, {}'s is {primary_id})",
                    entry.address(),
                    p.name()
                )));
            }
        }
    }
    let c = row
        .connection
        .as_ref()
        .ok_or_else(|| ClusterError::Invalid("a cluster added needs connection settings".into()))?;
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    directory
        .execute(
            "INSERT INTO pgtenant.clusters
                 (name, role, primary_of, host, port, database, admin_user, sslmode, sslrootcert, sslcert, sslkey)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &row.name.as_str(),
                &row.role.as_str(),
                &row.primary_of.as_ref().map(|p| p.as_str()),
                &c.host,
                &i32::from(c.port),
                &c.database,
                &c.admin_user,
                &c.sslmode.as_str(),
                &path(&c.sslrootcert),
                &path(&c.sslcert),
                &path(&c.sslkey),
            ],
        )
        .await?;
    tracing::info!(cluster = %row.name, role = row.role.as_str(), address = %entry.address(), "cluster added");
    Ok(row)
}

/// What SHOW CLUSTERS says of one cluster (besides its row).
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    pub entry: Arc<ClusterEntry>,
    /// Tenants placed on it (a replica: its primary's).
    pub tenants: i64,
    /// `pg_database_size` of its database.
    pub size_bytes: Option<i64>,
    /// A replica: how many bytes of its primary's WAL it has not replayed (measured once, now).
    pub lag_bytes: Option<i64>,
    /// Why it could not be asked, if it could not.
    pub error: Option<String>,
}

/// Asks every cluster for its size (and a replica for its replay position), `timeout` each.
pub async fn describe(
    directory: &impl tokio_postgres::GenericClient,
    clusters: &ClusterSet,
    timeout: Duration,
) -> Result<Vec<ClusterFacts>, ClusterError> {
    let counts = directory
        .query(
            "SELECT cluster, count(*) FROM pgtenant.organizations
             WHERE status <> 'archived' GROUP BY cluster",
            &[],
        )
        .await?;
    let tenants_of = |name: &ClusterName| {
        counts
            .iter()
            .find(|r| r.get::<_, &str>(0) == name.as_str())
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or(0)
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (index, entry) in clusters.iter().enumerate() {
        let entry = entry.clone();
        let primary = entry
            .row
            .primary_of
            .as_ref()
            .and_then(|p| clusters.get(p).ok());
        tasks.spawn(async move {
            let asked = tokio::time::timeout(timeout, ask(&entry, primary.as_deref())).await;
            let (size, lag, error) = match asked {
                Ok(Ok((size, lag))) => (Some(size), lag, None),
                Ok(Err(e)) => (None, None, Some(e.to_string())),
                Err(_) => (
                    None,
                    None,
                    Some(format!("no answer within {} ms", timeout.as_millis())),
                ),
            };
            (index, entry, size, lag, error)
        });
    }
    let mut facts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((index, entry, size_bytes, lag_bytes, error)) = done {
            let tenants = tenants_of(entry.row.primary_of.as_ref().unwrap_or(entry.name()));
            facts.push((
                index,
                ClusterFacts {
                    entry,
                    tenants,
                    size_bytes,
                    lag_bytes,
                    error,
                },
            ));
        }
    }
    facts.sort_by_key(|(i, _)| *i);
    Ok(facts.into_iter().map(|(_, f)| f).collect())
}

async fn ask(
    entry: &ClusterEntry,
    primary: Option<&ClusterEntry>,
) -> Result<(i64, Option<i64>), ClusterError> {
    // The primary first: a replica that replayed up to that point is not behind it.
    let primary_lsn: Option<i64> = match primary {
        Some(p) => p
            .connect_admin()
            .await?
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .await?
            .get(0),
        None => None,
    };
    let client = entry.connect_admin().await?;
    let row = client
        .query_one(
            "SELECT pg_database_size(current_database()),
                    (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await?;
    let replay: Option<i64> = row.get(1);
    let lag = match (primary_lsn, replay) {
        (Some(p), Some(r)) => Some((p - r).max(0)),
        _ => None,
    };
    Ok((row.get(0), lag))
}
