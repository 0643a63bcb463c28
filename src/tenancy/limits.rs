//! A tenant's limits in the directory (`statement_timeout_ms` … of `pgtenant.organizations`, shared
//! migration V010): set, reset (NULL: pgtenant's `[limits]` default) and listed, for the admin commands
//! `ALTER TENANT x SET | RESET …` / `SHOW LIMITS` and the CLI `pgtenant tenant limits | set | reset`. The
//! table's trigger announces every change on the directory channel, so every pgtenant's next sessions of the
//! tenant get the new values.

use super::ops::{find_tenant, TenantOpError};
use crate::directory::{Tenant, TENANT_COLUMNS};
use crate::limits::{Limit, TenantLimits};
use tokio_postgres::Client;

/// Sets (`Some(ms)`, 0 for off) or resets (`None`) limits of one tenant, in one statement.
pub async fn set_limits(
    client: &Client,
    selector: &str,
    changes: &[(Limit, Option<u32>)],
) -> Result<Tenant, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    if changes.is_empty() {
        return Ok(tenant);
    }
    let values: Vec<Option<i32>> = changes
        .iter()
        .map(|(_, ms)| ms.map(|ms| ms.min(crate::limits::MAX_LIMIT_MS as u32) as i32))
        .collect();
    // Column names come from the fixed list of [`Limit::column`], never from the command's text.
    let assignments: Vec<String> = changes
        .iter()
        .enumerate()
        .map(|(i, (limit, _))| format!("{} = ${}::integer", limit.column(), i + 2))
        .collect();
    let sql = format!(
        "UPDATE pgtenant.organizations SET {} WHERE id = $1",
        assignments.join(", ")
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&tenant.id];
    params.extend(
        values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    client.execute(&sql, &params).await?;
    Ok(tenant)
}

/// Every tenant with its own limits (NULL where it follows the defaults), in creation order.
pub async fn list_limits(client: &Client) -> Result<Vec<(Tenant, TenantLimits)>, TenantOpError> {
    let rows = client
        .query(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations o ORDER BY o.created_at, o.id"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tenant = Tenant::from_row(r, 0);
            let limits = tenant.limits;
            (tenant, limits)
        })
        .collect())
}

/// A limit as `SHOW LIMITS` and `pgtenant tenant limits` print it: the tenant's own value, or the default
/// it follows (`5s (default)`); `0` is off.
pub fn describe(own: Option<u32>, default_ms: u32) -> String {
    match own {
        Some(ms) => crate::limits::format_ms(ms),
        None => format!("{} (default)", crate::limits::format_ms(default_ms)),
    }
}
