//! Where onboarding puts a tenant for which no cluster is named (`tenancy.placement`): the default cluster,
//! the active primary with the fewest tenants, or the active primary whose database is the smallest.
//! Ties go to the first name.

use super::{ClusterError, ClusterName, ClusterSet, ClusterStatus};
use crate::config::Placement;

/// The cluster a new tenant goes to.
pub async fn choose(
    policy: Placement,
    directory: &impl tokio_postgres::GenericClient,
    clusters: &ClusterSet,
) -> Result<ClusterName, ClusterError> {
    let candidates: Vec<_> = clusters
        .primaries()
        .filter(|e| e.row.status == ClusterStatus::Active)
        .cloned()
        .collect();
    match policy {
        Placement::Default => Ok(ClusterName::default_cluster()),
        Placement::FewestTenants => {
            let rows = directory
                .query(
                    "SELECT cluster, count(*) FROM pgtenant.organizations
                     WHERE status <> 'archived' GROUP BY cluster",
                    &[],
                )
                .await?;
            let count = |name: &ClusterName| {
                rows.iter()
                    .find(|r| r.get::<_, &str>(0) == name.as_str())
                    .map(|r| r.get::<_, i64>(1))
                    .unwrap_or(0)
            };
            candidates
                .iter()
                .map(|e| (count(e.name()), e.name().clone()))
                .min()
                .map(|(_, name)| name)
                .ok_or_else(|| ClusterError::Invalid("no active primary cluster".into()))
        }
        Placement::LeastBytes => {
            let mut best: Option<(i64, ClusterName)> = None;
            for entry in &candidates {
                let size = async {
                    let client = entry.connect_admin().await?;
                    let row = client
                        .query_one("SELECT pg_database_size(current_database())", &[])
                        .await?;
                    Ok::<i64, ClusterError>(row.get(0))
                };
                match size.await {
                    Ok(bytes) => {
                        let this = (bytes, entry.name().clone());
                        if best.as_ref().is_none_or(|b| this < *b) {
                            best = Some(this);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %entry.name(), error = %e, "placement skips a cluster it cannot size")
                    }
                }
            }
            best.map(|(_, name)| name)
                .ok_or_else(|| ClusterError::Invalid("no active primary cluster answered".into()))
        }
    }
}
