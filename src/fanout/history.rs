//! What is known before anything runs: every tenant with its history (read on its cluster), the check of
//! those histories against the files (a changed or missing file, a new file below an applied one), each
//! tenant's status, the dry run, and `repair` (accepting edited files' checksums).

use super::report::{TenantRow, TenantVersion};
use super::TenantMigrator;
use crate::directory::{Tenant, TENANT_COLUMNS};
use crate::migrate::{MigrateError, Migration};
use crate::names::ClusterName;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

impl TenantMigrator {
    /// Every tenant (or the one named by `only`) with its history, read on its cluster. The tenants of a
    /// cluster that does not answer come with `cluster_down` set and no history.
    pub async fn load_tenants(&self, only: Option<&str>) -> Result<Vec<TenantRow>, MigrateError> {
        let (tenants, moving): (Vec<Tenant>, HashSet<Uuid>) = {
            let admin = self.admin().await?;
            let rows = admin
                .query(
                    &format!(
                        "SELECT {TENANT_COLUMNS},
                                EXISTS (SELECT 1 FROM pgtenant.tenant_moves m WHERE m.organization_id = o.id
                                          AND m.state IN ('preparing', 'copying', 'catching_up', 'switching'))
                         FROM pgtenant.organizations o
                         WHERE o.status <> 'provisioning'
                           AND ($1::text IS NULL OR o.slug = $1 OR o.schema_name::text = $1
                                OR o.id::text = $1 OR o.name = $1)
                         ORDER BY o.created_at, o.id"
                    ),
                    &[&only],
                )
                .await?;
            let moving_at = rows.first().map(|r| r.len() - 1).unwrap_or(0);
            let tenants: Vec<Tenant> = rows.iter().map(|r| Tenant::from_row(r, 0)).collect();
            let moving = rows
                .iter()
                .zip(&tenants)
                .filter(|(r, _)| r.get::<_, bool>(moving_at))
                .map(|(_, t)| t.id)
                .collect();
            (tenants, moving)
        };
        let mut clusters: Vec<ClusterName> = tenants.iter().map(|t| t.cluster.clone()).collect();
        clusters.sort();
        clusters.dedup();
        let mut histories: HashMap<Uuid, Vec<(i32, String)>> = HashMap::new();
        let mut down: HashMap<ClusterName, String> = HashMap::new();
        for cluster in clusters {
            let ids: Vec<Uuid> = tenants
                .iter()
                .filter(|t| t.cluster == cluster)
                .map(|t| t.id)
                .collect();
            let read = async {
                let admin = self.cluster_admin(&cluster).await?;
                Ok::<_, MigrateError>(
                    admin
                        .query(
                            "SELECT organization_id, array_agg(version ORDER BY version),
                                    array_agg(checksum ORDER BY version)
                             FROM pgtenant.tenant_migrations WHERE organization_id = ANY($1)
                             GROUP BY organization_id",
                            &[&ids],
                        )
                        .await?,
                )
            };
            match read.await {
                Ok(rows) => {
                    for r in rows {
                        let versions: Vec<i32> = r.get(1);
                        let checksums: Vec<String> = r.get(2);
                        histories.insert(r.get(0), versions.into_iter().zip(checksums).collect());
                    }
                }
                Err(e) if cluster.is_default() => return Err(e),
                Err(e) => {
                    tracing::warn!(%cluster, error = %e, "cannot read the tenants' history on a cluster");
                    down.insert(cluster, e.to_string());
                }
            }
        }
        Ok(tenants
            .into_iter()
            .map(|tenant| TenantRow {
                applied: histories.remove(&tenant.id).unwrap_or_default(),
                cluster_down: down.get(&tenant.cluster).cloned(),
                moving: moving.contains(&tenant.id),
                tenant,
            })
            .collect())
    }

    /// Checks histories against the files; returns, per tenant, the indexes of its pending migrations.
    pub fn check(&self, tenants: &[TenantRow]) -> Result<Vec<Vec<usize>>, MigrateError> {
        let files = &self.inner.migrations;
        let mut changed: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        let mut missing: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        let mut out_of_order: BTreeMap<(i32, i32), Vec<&str>> = BTreeMap::new();
        let mut pending_all = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            if tenant.cluster_down.is_some() {
                // Nothing known of its history: it waits for its cluster.
                pending_all.push(Vec::new());
                continue;
            }
            let slug = tenant.tenant.slug.as_str();
            let applied: HashSet<i32> = tenant.applied.iter().map(|(v, _)| *v).collect();
            for (version, checksum) in &tenant.applied {
                match files.iter().find(|m| m.version == *version) {
                    Some(m) if m.checksum != *checksum => {
                        changed.entry(*version).or_default().push(slug)
                    }
                    Some(_) => {}
                    None => missing.entry(*version).or_default().push(slug),
                }
            }
            let max_applied = tenant.applied.iter().map(|(v, _)| *v).max();
            let pending: Vec<usize> = files
                .iter()
                .enumerate()
                .filter(|(_, m)| !applied.contains(&m.version))
                .map(|(i, _)| i)
                .collect();
            if let (Some(max), Some(first)) = (max_applied, pending.first()) {
                if files[*first].version < max {
                    out_of_order
                        .entry((files[*first].version, max))
                        .or_default()
                        .push(slug);
                }
            }
            pending_all.push(pending);
        }
        if let Some((version, slugs)) = changed.into_iter().next() {
            let m = files
                .iter()
                .find(|m| m.version == version)
                .expect("found above");
            return Err(MigrateError::TenantChecksumMismatch {
                version,
                name: m.path.display().to_string(),
                current: m.checksum.clone(),
                tenants: list_tenants(&slugs),
            });
        }
        if let Some((version, slugs)) = missing.into_iter().next() {
            return Err(MigrateError::TenantMissingFile {
                version,
                tenants: list_tenants(&slugs),
            });
        }
        if let Some(((pending, applied), slugs)) = out_of_order.into_iter().next() {
            let m = files
                .iter()
                .find(|m| m.version == pending)
                .expect("found above");
            return Err(MigrateError::OutOfOrder {
                pending,
                name: m.path.display().to_string(),
                applied,
                tenants: list_tenants(&slugs),
            });
        }
        Ok(pending_all)
    }

    /// Each tenant's version and pending files.
    pub async fn status(&self, only: Option<&str>) -> Result<Vec<TenantVersion>, MigrateError> {
        let tenants = self.load_tenants(only).await?;
        let files = &self.inner.migrations;
        Ok(tenants
            .into_iter()
            .map(|t| {
                let applied: HashSet<i32> = t.applied.iter().map(|(v, _)| *v).collect();
                TenantVersion {
                    version: t.applied.iter().map(|(v, _)| *v).max(),
                    pending: if t.cluster_down.is_some() {
                        Vec::new()
                    } else {
                        files
                            .iter()
                            .filter(|m| !applied.contains(&m.version))
                            .map(|m| m.version)
                            .collect()
                    },
                    slug: t.tenant.slug,
                    name: t.tenant.name,
                    schema: t.tenant.schema.as_str().to_string(),
                    status: t.tenant.status.as_str().to_string(),
                    cluster: t.tenant.cluster,
                    cluster_down: t.cluster_down,
                }
            })
            .collect())
    }

    /// What a run would apply, per tenant with pending work (after the same checks as a run).
    pub async fn dry_run(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(TenantRow, Vec<&Migration>)>, MigrateError> {
        let tenants = self.load_tenants(only).await?;
        let pending = self.check(&tenants)?;
        Ok(tenants
            .into_iter()
            .zip(pending)
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| {
                (
                    t,
                    p.into_iter().map(|i| &self.inner.migrations[i]).collect(),
                )
            })
            .collect())
    }

    /// Accepts the checksums of the files on disk for versions already applied (after an intentional edit),
    /// on every primary. Returns the number of history rows changed.
    pub async fn repair(&self) -> Result<u64, MigrateError> {
        let names: Vec<ClusterName> = self
            .clusters()
            .await?
            .primaries()
            .map(|e| e.name().clone())
            .collect();
        let mut changed = 0;
        for cluster in names {
            let admin = self.cluster_admin(&cluster).await?;
            for m in &self.inner.migrations {
                changed += admin
                    .execute(
                        "UPDATE pgtenant.tenant_migrations SET checksum = $2 WHERE version = $1 AND checksum <> $2",
                        &[&m.version, &m.checksum],
                    )
                    .await?;
            }
        }
        Ok(changed)
    }
}

pub(super) fn list_tenants(slugs: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut text = slugs
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if slugs.len() > SHOWN {
        text.push_str(&format!(" and {} more", slugs.len() - SHOWN));
    }
    text
}
