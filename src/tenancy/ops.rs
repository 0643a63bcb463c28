//! Operations on existing tenants, shared by the CLI and the admin channel: find, list, suspend, resume,
//! archive, drop, check. Every change is announced on the directory channel (LISTEN/NOTIFY) in the same
//! transaction, so every running pgtenant refuses a suspended tenant within moments.

use crate::clusters::{ClusterEntry, ClusterError, ClusterSet};
use crate::config::Config;
use crate::credentials::RolePasswords;
use crate::directory::events::{announce, DirectoryEvent};
use crate::directory::{Tenant, TenantStatus, TENANT_COLUMNS};
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum TenantOpError {
    #[error("no tenant \"{0}\" (give its slug, schema, name or id)")]
    NotFound(String),
    #[error("to drop tenant \"{slug}\" and its data for good, confirm with its slug: DROP TENANT {slug} CONFIRM '{slug}'")]
    NotConfirmed { slug: String },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream_tls::UpstreamTlsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Finds a tenant by slug, schema name, name or id.
pub async fn find_tenant(client: &Client, selector: &str) -> Result<Tenant, TenantOpError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations o
                 WHERE o.slug = $1 OR o.schema_name::text = $1 OR o.id::text = $1 OR o.name = $1
                 ORDER BY (o.slug = $1) DESC LIMIT 1"
            ),
            &[&selector],
        )
        .await?;
    row.map(|r| Tenant::from_row(&r, 0))
        .ok_or_else(|| TenantOpError::NotFound(selector.to_string()))
}

/// A tenant with its migration version and size on disk (both read on its cluster; `None` with
/// `cluster_error` set when that cluster did not answer).
#[derive(Debug, Clone)]
pub struct TenantListing {
    pub tenant: Tenant,
    pub version: Option<i32>,
    pub size_bytes: Option<i64>,
    pub cluster_error: Option<String>,
}

/// Every tenant, with what its cluster says of it.
pub async fn list_tenants(
    client: &Client,
    clusters: &ClusterSet,
) -> Result<Vec<TenantListing>, TenantOpError> {
    let tenants: Vec<Tenant> = client
        .query(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations o ORDER BY o.created_at, o.id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Tenant::from_row(r, 0))
        .collect();
    let mut facts: std::collections::HashMap<Uuid, (Option<i32>, i64)> = Default::default();
    let mut errors: std::collections::HashMap<String, String> = Default::default();
    let mut names: Vec<_> = tenants.iter().map(|t| t.cluster.clone()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let of_cluster: Vec<&Tenant> = tenants.iter().filter(|t| t.cluster == name).collect();
        let ids: Vec<Uuid> = of_cluster.iter().map(|t| t.id).collect();
        let schemas: Vec<&str> = of_cluster.iter().map(|t| t.schema.as_str()).collect();
        let sql = "SELECT s.id,
                    (SELECT max(m.version) FROM pgtenant.tenant_migrations m WHERE m.organization_id = s.id),
                    coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
                              JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname = s.schema AND c.relkind IN ('r', 'm', 'p')), 0)
             FROM unnest($1::uuid[], $2::text[]) AS s(id, schema)";
        let rows = if name.is_default() {
            client
                .query(sql, &[&ids, &schemas])
                .await
                .map_err(TenantOpError::from)
        } else {
            match on_cluster(clusters, &name).await {
                Ok((_, admin)) => admin
                    .query(sql, &[&ids, &schemas])
                    .await
                    .map_err(TenantOpError::from),
                Err(e) => Err(e),
            }
        };
        match rows {
            Ok(rows) => {
                for r in rows {
                    facts.insert(r.get(0), (r.get(1), r.get(2)));
                }
            }
            Err(e) => {
                errors.insert(name.to_string(), e.to_string());
            }
        }
    }
    Ok(tenants
        .into_iter()
        .map(|tenant| {
            let fact = facts.get(&tenant.id).copied();
            TenantListing {
                version: fact.and_then(|f| f.0),
                size_bytes: fact.map(|f| f.1),
                cluster_error: errors.get(tenant.cluster.as_str()).cloned(),
                tenant,
            }
        })
        .collect())
}

/// An admin connection to a cluster other than the default one.
async fn on_cluster(
    clusters: &ClusterSet,
    name: &crate::names::ClusterName,
) -> Result<(std::sync::Arc<ClusterEntry>, Client), TenantOpError> {
    let entry = clusters.get(name)?;
    let client = entry.connect_admin().await?;
    Ok((entry, client))
}

/// Suspends a tenant: new logins refused, its sessions on every pgtenant ended.
pub async fn suspend(client: &mut Client, selector: &str) -> Result<Tenant, TenantOpError> {
    set_status(client, selector, TenantStatus::Suspended, true).await
}

/// Lets a suspended (or archived) tenant log in again: its role may log in again on its cluster, then the
/// directory says active.
pub async fn resume(
    client: &mut Client,
    clusters: &ClusterSet,
    selector: &str,
) -> Result<Tenant, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let login = format!("ALTER ROLE {} LOGIN", tenant.role.quoted());
    let tx = client.transaction().await?;
    if tenant.cluster.is_default() {
        tx.batch_execute(&login).await?;
    } else {
        on_cluster(clusters, &tenant.cluster)
            .await?
            .1
            .batch_execute(&login)
            .await?;
    }
    tx.execute(
        "UPDATE pgtenant.organizations SET status = 'active' WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    announce(&tx, &DirectoryEvent::Changed).await?;
    tx.commit().await?;
    Ok(Tenant {
        status: TenantStatus::Active,
        ..tenant
    })
}

async fn set_status(
    client: &mut Client,
    selector: &str,
    status: TenantStatus,
    close: bool,
) -> Result<Tenant, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE pgtenant.organizations SET status = $2 WHERE id = $1",
        &[&tenant.id, &status.as_str()],
    )
    .await?;
    let event = if close {
        DirectoryEvent::Closed {
            tenant_id: tenant.id,
            role: tenant.role.as_str().to_string(),
            why: status.as_str().to_string(),
        }
    } else {
        DirectoryEvent::Changed
    };
    announce(&tx, &event).await?;
    tx.commit().await?;
    Ok(Tenant { status, ..tenant })
}

/// Archives a tenant: logins refused, its role can no longer log in (on its cluster), sessions ended, data
/// kept.
pub async fn archive(
    client: &mut Client,
    clusters: &ClusterSet,
    selector: &str,
) -> Result<Tenant, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let no_login = format!("ALTER ROLE {} NOLOGIN", tenant.role.quoted());
    let tx = client.transaction().await?;
    if tenant.cluster.is_default() {
        tx.batch_execute(&no_login).await?;
    } else {
        // First on the tenant's cluster: a directory saying archived while the role still logs in would be
        // worse than the other way round (which the next archive repairs).
        on_cluster(clusters, &tenant.cluster)
            .await?
            .1
            .batch_execute(&no_login)
            .await?;
    }
    tx.execute(
        "UPDATE pgtenant.organizations SET status = 'archived' WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    let event = DirectoryEvent::Closed {
        tenant_id: tenant.id,
        role: tenant.role.as_str().to_string(),
        why: "archived".into(),
    };
    announce(&tx, &event).await?;
    tx.commit().await?;
    Ok(Tenant {
        status: TenantStatus::Archived,
        ..tenant
    })
}

/// Drops a tenant for good: its schema with all data, its role, its users and history. `confirm` must be
/// the tenant's slug. The tenant's server connections are terminated first (they would hold locks). On a
/// cluster other than the default one, the role and schema (and the cluster's guard row and history) go
/// first, then the directory rows; a tenant whose onboarding stopped half-way (still `provisioning`, its
/// role perhaps never made) is dropped the same way.
pub async fn drop_tenant(
    client: &mut Client,
    clusters: &ClusterSet,
    selector: &str,
    confirm: &str,
) -> Result<Tenant, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    if confirm != tenant.slug {
        return Err(TenantOpError::NotConfirmed { slug: tenant.slug });
    }
    let drop_sql = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;
         DO $$ BEGIN
             IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {role_literal}) THEN
                 EXECUTE 'DROP OWNED BY {role_ident}';
                 EXECUTE 'DROP ROLE {role_ident}';
             END IF;
         END $$;",
        schema = tenant.schema.quoted(),
        role_literal = crate::names::quote_literal(tenant.role.as_str()),
        role_ident = tenant.role.quoted().replace('\'', "''"),
    );
    if tenant.cluster.is_default() {
        // Close logins and announce first, so pgtenants end sessions and pools while the drop waits.
        archive(client, clusters, &tenant.slug).await?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&tenant.role.as_str()],
            )
            .await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&drop_sql).await?;
        tx.execute(
            "DELETE FROM pgtenant.organizations WHERE id = $1",
            &[&tenant.id],
        )
        .await?;
        tx.commit().await?;
        return Ok(tenant);
    }
    let (_, mut admin) = on_cluster(clusters, &tenant.cluster).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE pgtenant.organizations SET status = 'archived' WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    announce(
        &tx,
        &DirectoryEvent::Closed {
            tenant_id: tenant.id,
            role: tenant.role.as_str().to_string(),
            why: "dropped".into(),
        },
    )
    .await?;
    tx.commit().await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&tenant.role.as_str()],
        )
        .await?;
    let cluster_tx = admin.transaction().await?;
    cluster_tx.batch_execute(&drop_sql).await?;
    cluster_tx
        .execute(
            "DELETE FROM pgtenant.tenant_migrations WHERE organization_id = $1",
            &[&tenant.id],
        )
        .await?;
    cluster_tx
        .execute(
            "DELETE FROM pgtenant.tenant_roles WHERE organization_id = $1",
            &[&tenant.id],
        )
        .await?;
    cluster_tx.commit().await?;
    client
        .execute(
            "DELETE FROM pgtenant.organizations WHERE id = $1",
            &[&tenant.id],
        )
        .await?;
    Ok(tenant)
}

/// The result of logging in as one tenant's role.
#[derive(Debug, Clone)]
pub struct TenantHealth {
    pub tenant: Tenant,
    /// `None` when healthy.
    pub error: Option<String>,
    pub elapsed: Duration,
}

/// Logs in as every tenant's role (as pgtenant's pools do) and runs a query, `concurrency` at a time.
pub async fn check_tenants(
    admin: &Client,
    config: &Config,
    concurrency: usize,
) -> Result<Vec<TenantHealth>, TenantOpError> {
    let clusters = crate::clusters::load_with(admin, config).await?;
    check_tenants_with(admin, config, &clusters, concurrency).await
}

/// As [`check_tenants`], with the clusters already read.
pub async fn check_tenants_with(
    admin: &Client,
    config: &Config,
    clusters: &ClusterSet,
    concurrency: usize,
) -> Result<Vec<TenantHealth>, TenantOpError> {
    let tenants = checkable_tenants(admin).await?;
    Ok(check_listed(tenants, config, clusters, concurrency).await)
}

/// The tenants a check covers (active or suspended): only the organizations' rows (`list_tenants` also sums
/// every tenant's table sizes).
pub async fn checkable_tenants(admin: &Client) -> Result<Vec<Tenant>, TenantOpError> {
    Ok(admin
        .query(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations o
                 WHERE o.status IN ('active', 'suspended') ORDER BY o.created_at, o.id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Tenant::from_row(r, 0))
        .collect())
}

/// Logs in as each of `tenants`' roles on its cluster and runs a query, `concurrency` at a time; results in
/// their order. Connection settings and TLS are `clusters`' (for the default cluster: the settings pgtenant
/// started with), whatever a reloaded `config` says.
pub async fn check_listed(
    tenants: Vec<Tenant>,
    config: &Config,
    clusters: &ClusterSet,
    concurrency: usize,
) -> Vec<TenantHealth> {
    // A check that hangs (a server that accepts and never answers) reports instead of holding the round.
    let limit_each = config.upstream_connect_timeout() * 2;
    let passwords = RolePasswords::new(config.server_secret());
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, tenant) in tenants.into_iter().enumerate() {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let cluster = clusters
            .get(&tenant.cluster)
            .and_then(|entry| Ok((entry.clone(), entry.tls()?.clone())));
        let (entry, tls) = match cluster {
            Ok(found) => found,
            Err(e) => {
                tasks.spawn(async move {
                    drop(permit);
                    let health = TenantHealth {
                        tenant,
                        error: Some(e.to_string()),
                        elapsed: Duration::ZERO,
                    };
                    (index, health)
                });
                continue;
            }
        };
        let mut pg = entry.tenant_pg_config(
            tenant.role.as_str(),
            &passwords.password_for(tenant.role.as_str()),
            "pgtenant-check",
        );
        pg.ssl_mode(tls.mode().postgres());
        let tls = tls.postgres();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let error = match tokio::time::timeout(limit_each, check_one(pg, tls, &tenant)).await {
                Ok(result) => result.err(),
                Err(_) => Some(format!("no answer within {} ms", limit_each.as_millis())),
            };
            drop(permit);
            (
                index,
                TenantHealth {
                    tenant,
                    error,
                    elapsed: started.elapsed(),
                },
            )
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, h)| h).collect()
}

async fn check_one(
    pg: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    tenant: &Tenant,
) -> Result<(), String> {
    let (client, connection) = pg.connect(tls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = client
        .query_one("SELECT current_schema()::text", &[])
        .await
        .map_err(|e| describe(&e))?;
    let schema: Option<String> = row.get(0);
    if schema.as_deref() != Some(tenant.schema.as_str()) {
        return Err(format!(
            "search_path resolves to {:?}, not the tenant schema {}",
            schema, tenant.schema
        ));
    }
    Ok(())
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => crate::upstream_tls::error_chain(e),
    }
}

#[cfg(test)]
mod tests;
