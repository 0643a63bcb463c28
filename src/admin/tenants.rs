//! CREATE / SUSPEND / RESUME / DROP / ALTER TENANT and CHECK TENANTS: the same functions the CLI calls.

use super::{db_error, Notices, Reply, Table};
use crate::directory::events::DirectoryEvent;
use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::proxy::Proxy;
use crate::tenancy::ops::{self, TenantOpError};
use crate::tenancy::{self, OnboardRequest};

fn op_error(e: TenantOpError) -> PgError {
    crate::error::UserFacing::to_error(&e)
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

pub async fn create(
    proxy: &Proxy,
    name: String,
    admin_email: String,
    ddl: bool,
    cluster: Option<String>,
) -> Result<Reply, PgError> {
    let config = proxy.config();
    if cluster
        .as_deref()
        .is_some_and(|c| c != crate::names::DEFAULT_CLUSTER)
        || config.tenancy.placement != crate::config::Placement::Default
    {
        // The directory's clusters as they are now.
        if let Err(e) = proxy.clusters.reload(&proxy.directory, &config).await {
            return Err(e.to_error());
        }
    }
    let clusters = proxy.clusters.current();
    let mut admin = proxy.directory.admin().await.map_err(db_error)?;
    let request = OnboardRequest {
        name,
        admin_email,
        slug: None,
        ddl_allowed: (!ddl).then_some(false),
        cluster,
    };
    let done = tenancy::onboard_with(&mut admin, &config, &clusters, &request)
        .await
        .map_err(|e| crate::error::UserFacing::to_error(&e))?;
    let mut table = Table::new(&[
        "slug",
        "schema",
        "role",
        "organization_id",
        "admin_user_id",
        "migrations",
        "cluster",
    ]);
    table.row(vec![
        text(&done.slug),
        text(&done.schema),
        text(&done.role),
        text(done.organization_id),
        text(done.admin_user_id),
        text(done.migrations_applied),
        text(&done.cluster),
    ]);
    Ok(Reply::Rows {
        table,
        tag: "CREATE TENANT".into(),
    })
}

pub async fn suspend(proxy: &Proxy, selector: &str) -> Result<Reply, PgError> {
    let mut admin = proxy.directory.admin().await.map_err(db_error)?;
    let tenant = ops::suspend(&mut admin, selector).await.map_err(op_error)?;
    // The announcement reaches every pgtenant, this one too; act at once here all the same.
    proxy.directory.invalidate();
    proxy.on_directory_event(DirectoryEvent::Closed {
        tenant_id: tenant.id,
        role: tenant.role.as_str().to_string(),
        why: "suspended".into(),
    });
    Ok(Reply::Done {
        tag: "SUSPEND TENANT".into(),
    })
}

pub async fn resume(proxy: &Proxy, selector: &str) -> Result<Reply, PgError> {
    let mut admin = proxy.directory.admin().await.map_err(db_error)?;
    let clusters = proxy.clusters.current();
    ops::resume(&mut admin, &clusters, selector)
        .await
        .map_err(op_error)?;
    proxy.directory.invalidate();
    Ok(Reply::Done {
        tag: "RESUME TENANT".into(),
    })
}

pub async fn drop(proxy: &Proxy, selector: &str, confirm: Option<&str>) -> Result<Reply, PgError> {
    let mut admin = proxy.directory.admin().await.map_err(db_error)?;
    let clusters = proxy.clusters.current();
    let (tenant, tag) = match confirm {
        None => (
            ops::archive(&mut admin, &clusters, selector)
                .await
                .map_err(op_error)?,
            "ARCHIVE TENANT",
        ),
        Some(word) => (
            ops::drop_tenant(&mut admin, &clusters, selector, word)
                .await
                .map_err(op_error)?,
            "DROP TENANT",
        ),
    };
    proxy.directory.invalidate();
    proxy.on_directory_event(DirectoryEvent::Closed {
        tenant_id: tenant.id,
        role: tenant.role.as_str().to_string(),
        why: if confirm.is_some() {
            "dropped"
        } else {
            "archived"
        }
        .into(),
    });
    Ok(Reply::Done { tag: tag.into() })
}

pub async fn check(proxy: &Proxy, notices: &Notices) -> Result<Reply, PgError> {
    let config = proxy.config();
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let _ = notices.send("logging in as every tenant's role…".to_string());
    let results = ops::check_tenants_with(
        &admin,
        &config,
        &proxy.clusters.current(),
        config.migrations.concurrency,
    )
    .await
    .map_err(op_error)?;
    let mut table = Table::new(&["tenant", "schema", "status", "health", "ms", "cluster"]);
    let mut unhealthy = 0;
    for h in &results {
        if h.error.is_some() {
            unhealthy += 1;
        }
        table.row(vec![
            text(&h.tenant.slug),
            text(&h.tenant.schema),
            text(h.tenant.status),
            text(h.error.clone().unwrap_or_else(|| "healthy".into())),
            text(h.elapsed.as_millis()),
            text(&h.tenant.cluster),
        ]);
    }
    let _ = notices.send(format!(
        "{} tenants checked, {unhealthy} unhealthy",
        results.len()
    ));
    Ok(Reply::Rows {
        table,
        tag: "CHECK TENANTS".into(),
    })
}

/// The role of a tenant named in an admin command.
async fn role_of(proxy: &Proxy, selector: &str) -> Result<crate::names::RoleName, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    Ok(ops::find_tenant(&admin, selector)
        .await
        .map_err(op_error)?
        .role)
}

pub async fn pause(
    proxy: &Proxy,
    selector: Option<&str>,
    notices: &Notices,
) -> Result<Reply, PgError> {
    let role = match selector {
        Some(s) => Some(role_of(proxy, s).await?),
        None => None,
    };
    proxy.pools.pause(role.as_ref());
    // Wait for transactions already running to finish (their connections to come back).
    let started = std::time::Instant::now();
    let mut last_notice = std::time::Instant::now();
    loop {
        let active = proxy.pools.active(role.as_ref());
        if active == 0 {
            break;
        }
        if last_notice.elapsed() >= std::time::Duration::from_secs(1) {
            last_notice = std::time::Instant::now();
            let _ = notices.send(format!(
                "waiting for {active} running transactions to finish"
            ));
        }
        if started.elapsed() >= std::time::Duration::from_secs(60) {
            let _ = notices.send(format!(
                "{active} server connections still busy after 60 s (sessions in session pooling hold theirs); new transactions stay held"
            ));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(Reply::Done {
        tag: "PAUSE".into(),
    })
}

pub async fn unpause(proxy: &Proxy, selector: Option<&str>) -> Result<Reply, PgError> {
    let role = match selector {
        Some(s) => Some(role_of(proxy, s).await?),
        None => None,
    };
    proxy.pools.resume(role.as_ref());
    Ok(Reply::Done {
        tag: "RESUME".into(),
    })
}

/// ALTER TENANT x SET / RESET: the tenant's limits, for its sessions from now on (on every pgtenant: the
/// table's trigger announces the change).
pub async fn alter_limits(
    proxy: &Proxy,
    selector: &str,
    changes: &[(crate::limits::Limit, Option<u32>)],
) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let tenant = crate::tenancy::limits::set_limits(&admin, selector, changes)
        .await
        .map_err(op_error)?;
    proxy.directory.invalidate();
    tracing::info!(tenant = %tenant.slug, ?changes, "tenant limits changed");
    Ok(Reply::Done {
        tag: "ALTER TENANT".into(),
    })
}
