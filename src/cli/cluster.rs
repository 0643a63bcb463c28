//! `pgtenant cluster`: list the clusters, add one, apply a cluster's guards.

use super::args::ClusterAction;
use super::connect_admin;
use anyhow::Result;
use pgtenant::config::Config;
use std::time::Duration;

pub(crate) async fn cluster_action(config: &Config, action: ClusterAction) -> Result<()> {
    use pgtenant::clusters::{self, ops};
    let admin = connect_admin(config).await?;
    let set = clusters::load_with(&admin, config).await?;
    match action {
        ClusterAction::List => {
            let facts = ops::describe(&admin, &set, Duration::from_secs(5)).await?;
            println!(
                "{:<16} {:<8} {:<12} {:<32} {:<9} {:>7} {:>12} {:>10}  health",
                "name", "role", "primary", "address", "status", "tenants", "bytes", "lag_bytes"
            );
            for f in facts {
                let e = &f.entry;
                println!(
                    "{:<16} {:<8} {:<12} {:<32} {:<9} {:>7} {:>12} {:>10}  {}",
                    e.name(),
                    e.row.role.as_str(),
                    e.row
                        .primary_of
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.address(),
                    e.row.status.as_str(),
                    f.tenants,
                    f.size_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    f.lag_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    f.error
                        .map(|e| format!("down: {e}"))
                        .unwrap_or_else(|| "ok".into()),
                );
            }
        }
        ClusterAction::Add {
            name,
            host,
            port,
            database,
            user,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            replica_of,
        } => {
            let request = ops::AddCluster {
                name,
                host,
                port,
                database,
                admin_user: user,
                sslmode,
                sslrootcert,
                sslcert,
                sslkey,
                replica_of,
            };
            let row = ops::add_cluster(&admin, config, &set, &request).await?;
            println!(
                "added cluster {} ({}{})",
                row.name,
                row.role.as_str(),
                row.primary_of
                    .map(|p| format!(" of {p}"))
                    .unwrap_or_default()
            );
        }
        ClusterAction::Guards { name } => {
            let entry = set.get(&pgtenant::names::ClusterName::new(name))?;
            let applied = clusters::guards::apply(&entry, config).await?;
            println!(
                "cluster {}: cluster migrations applied: {applied:?}",
                entry.name()
            );
        }
    }
    Ok(())
}
