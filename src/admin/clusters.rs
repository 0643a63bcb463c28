//! SHOW CLUSTERS and ADD CLUSTER: the same functions as `pgtenant cluster list | add`.

use super::{db_error, Reply, Table};
use crate::clusters::ops::{self, AddCluster};
use crate::clusters::ClusterError;
use crate::protocol::PgError;
use crate::proxy::Proxy;
use std::time::Duration;

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn cluster_error(e: ClusterError) -> PgError {
    crate::error::UserFacing::to_error(&e)
}

pub async fn show(proxy: &Proxy) -> Result<Reply, PgError> {
    let config = proxy.config();
    // What the directory says now, not what this pgtenant read last.
    proxy
        .clusters
        .reload(&proxy.directory, &config)
        .await
        .map_err(cluster_error)?;
    let set = proxy.clusters.current();
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let timeout = Duration::from_millis(config.health.check_timeout_ms.max(1_000));
    let facts = ops::describe(&*admin, &set, timeout)
        .await
        .map_err(cluster_error)?;
    drop(admin);
    let connections = proxy.pools.by_cluster();
    let mut table = Table::new(&[
        "name",
        "role",
        "primary",
        "address",
        "sslmode",
        "status",
        "tenants",
        "servers",
        "size",
        "lag_ms",
        "lag_bytes",
        "health",
    ]);
    for f in facts {
        let e = &f.entry;
        let (active, idle) = connections.get(e.name()).copied().unwrap_or((0, 0));
        let lag_ms = if e.is_replica() {
            match proxy.replicas.health(e.name()) {
                Some(h) => h.lag_ms.map(|l| l.to_string()),
                None => None,
            }
        } else {
            None
        };
        let health = match (&f.error, e.is_replica()) {
            (Some(error), _) => format!("down: {error}"),
            (None, true) => match proxy.replicas.usable(
                e.name(),
                Duration::from_millis(config.replicas.max_replica_lag_ms),
            ) {
                Ok(_) => "ok".to_string(),
                Err(why) => format!("skipped: {why}"),
            },
            (None, false) => "ok".to_string(),
        };
        table.row(vec![
            text(e.name()),
            text(e.row.role.as_str()),
            e.row.primary_of.as_ref().map(|p| p.to_string()),
            text(e.address()),
            text(e.upstream.sslmode.as_str()),
            text(e.row.status.as_str()),
            text(f.tenants),
            text(active + idle),
            f.size_bytes.map(crate::units::pretty_size),
            lag_ms,
            f.lag_bytes.map(|b| b.to_string()),
            text(health),
        ]);
    }
    Ok(Reply::Rows {
        table,
        tag: "SHOW".into(),
    })
}

pub async fn add(proxy: &Proxy, request: &AddCluster) -> Result<Reply, PgError> {
    let config = proxy.config();
    proxy
        .clusters
        .reload(&proxy.directory, &config)
        .await
        .map_err(cluster_error)?;
    let set = proxy.clusters.current();
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let row = ops::add_cluster(&admin, &config, &set, request)
        .await
        .map_err(cluster_error)?;
    drop(admin);
    proxy
        .clusters
        .reload(&proxy.directory, &config)
        .await
        .map_err(cluster_error)?;
    let mut table = Table::new(&["name", "role", "primary", "address"]);
    let entry = proxy
        .clusters
        .current()
        .get(&row.name)
        .map_err(cluster_error)?;
    table.row(vec![
        text(&row.name),
        text(row.role.as_str()),
        row.primary_of.as_ref().map(|p| p.to_string()),
        text(entry.address()),
    ]);
    Ok(Reply::Rows {
        table,
        tag: "ADD CLUSTER".into(),
    })
}
