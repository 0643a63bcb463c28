//! SHOW commands and HELP.

use super::{db_error, Reply, Table};
use crate::admin::parse::FORMS;
use crate::error::UserFacing;
use crate::fanout::TenantMigrator;
use crate::protocol::PgError;
use crate::proxy::Proxy;
use crate::tenancy::ops;
use std::collections::HashMap;
use std::time::SystemTime;

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn rows(table: Table) -> Reply {
    Reply::Rows {
        table,
        tag: "SHOW".into(),
    }
}

/// Server connections (active, idle) per role in this pgtenant, on every cluster.
fn servers_by_role(proxy: &Proxy) -> HashMap<String, (usize, usize)> {
    let mut by_role: HashMap<String, (usize, usize)> = HashMap::new();
    for s in proxy.pools.stats() {
        let e = by_role.entry(s.role.as_str().to_string()).or_default();
        e.0 += s.active;
        e.1 += s.idle;
    }
    by_role
}

pub async fn tenants(proxy: &Proxy) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let listing = ops::list_tenants(&admin, &proxy.clusters.current())
        .await
        .map_err(db_error)?;
    let clients = proxy.sessions.count_by_tenant();
    let servers = servers_by_role(proxy);
    let mut table = Table::new(&[
        "name", "slug", "schema", "status", "version", "size", "clients", "servers", "cluster",
    ]);
    for l in listing {
        let (active, idle) = servers
            .get(l.tenant.role.as_str())
            .copied()
            .unwrap_or((0, 0));
        table.row(vec![
            text(&l.tenant.name),
            text(&l.tenant.slug),
            text(&l.tenant.schema),
            text(l.tenant.status),
            l.version.map(|v| v.to_string()),
            l.size_bytes.map(crate::units::pretty_size),
            text(clients.get(&l.tenant.id).copied().unwrap_or(0)),
            text(active + idle),
            text(match &l.cluster_error {
                None => l.tenant.cluster.to_string(),
                Some(e) => format!("{} (down: {e})", l.tenant.cluster),
            }),
        ]);
    }
    Ok(rows(table))
}

pub async fn pools(proxy: &Proxy) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let slugs: HashMap<String, String> = admin
        .query(
            "SELECT role_name::text, slug FROM pgtenant.organizations",
            &[],
        )
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut stats = proxy.pools.stats();
    stats.sort_by(|a, b| (&a.role, &a.cluster).cmp(&(&b.role, &b.cluster)));
    let mut table = Table::new(&[
        "tenant",
        "role",
        "active",
        "idle",
        "waiting",
        "server_connections",
        "limit",
        "cluster",
    ]);
    for s in stats {
        table.row(vec![
            slugs.get(s.role.as_str()).cloned(),
            text(&s.role),
            text(s.active),
            text(s.idle),
            text(s.waiting),
            text(s.server_connections()),
            text(s.limit),
            text(&s.cluster),
        ]);
    }
    Ok(rows(table))
}

/// Every tenant's limits: its own value, or the `[limits]` default it follows (`5s (default)`; `0`: off).
pub async fn limits(proxy: &Proxy) -> Result<Reply, PgError> {
    use crate::limits::Limit;
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let listed = crate::tenancy::limits::list_limits(&admin)
        .await
        .map_err(db_error)?;
    let defaults = &proxy.config().limits;
    let mut columns = vec!["tenant"];
    columns.extend(Limit::ALL.iter().map(|l| l.setting_name()));
    let mut table = Table::new(&columns);
    for (tenant, own) in listed {
        let mut row = vec![text(&tenant.slug)];
        row.extend(Limit::ALL.iter().map(|l| {
            text(crate::tenancy::limits::describe(
                own.get(*l),
                defaults.default_of(*l),
            ))
        }));
        table.row(row);
    }
    Ok(rows(table))
}

fn seconds_since(t: SystemTime) -> u64 {
    t.elapsed().map(|d| d.as_secs()).unwrap_or(0)
}

pub fn clients(proxy: &Proxy) -> Reply {
    let mut table = Table::new(&[
        "id",
        "user",
        "tenant",
        "address",
        "tls",
        "backend_pid",
        "connected_seconds",
        "cluster",
    ]);
    for s in proxy.sessions.list() {
        table.row(vec![
            text(s.id),
            text(&s.user_email),
            text(&s.tenant.slug),
            text(s.peer),
            text(s.tls),
            text(s.backend_pid),
            text(seconds_since(s.connected_at)),
            text(&s.cluster),
        ]);
    }
    rows(table)
}

pub fn servers(proxy: &Proxy) -> Reply {
    let mut table = Table::new(&[
        "role",
        "backend_pid",
        "state",
        "client_id",
        "idle_seconds",
        "age_seconds",
        "cluster",
    ]);
    for s in proxy.sessions.list() {
        table.row(vec![
            text(s.tenant.role.as_str()),
            text(s.backend_pid),
            text("active"),
            text(s.id),
            None,
            None,
            text(&s.cluster),
        ]);
    }
    for (key, pid, idle, age) in proxy.pools.idle_servers() {
        table.row(vec![
            text(&key.role),
            text(pid),
            text("idle"),
            None,
            text(idle),
            text(age),
            text(&key.cluster),
        ]);
    }
    rows(table)
}

pub async fn migrations(proxy: &Proxy, tenant: Option<&str>) -> Result<Reply, PgError> {
    let config = proxy.config();
    match tenant {
        None => {
            let migrator =
                TenantMigrator::with_clusters(&config, 1, (*proxy.clusters.current()).clone())
                    .map_err(|e| e.to_error())?;
            let status = migrator.status(None).await.map_err(db_error)?;
            let mut table = Table::new(&[
                "tenant", "schema", "status", "version", "latest", "pending", "cluster",
            ]);
            let latest = migrator.latest();
            for t in status {
                let pending: Vec<String> = t.pending.iter().map(|v| v.to_string()).collect();
                table.row(vec![
                    text(&t.slug),
                    text(&t.schema),
                    text(&t.status),
                    t.version.map(|v| v.to_string()),
                    latest.map(|v| v.to_string()),
                    text(pending.join(",")),
                    text(match &t.cluster_down {
                        None => t.cluster.to_string(),
                        Some(e) => format!("{} (down: {e})", t.cluster),
                    }),
                ]);
            }
            Ok(rows(table))
        }
        Some(selector) => {
            let admin = proxy.directory.admin().await.map_err(db_error)?;
            let tenant = ops::find_tenant(&admin, selector)
                .await
                .map_err(|e| e.to_error())?;
            // The history lives on the tenant's cluster.
            let sql = "SELECT version, name, checksum, applied_at::text, duration_ms
                       FROM pgtenant.tenant_migrations WHERE organization_id = $1 ORDER BY version";
            let history = if tenant.cluster.is_default() {
                admin.query(sql, &[&tenant.id]).await.map_err(db_error)?
            } else {
                drop(admin);
                let entry = proxy.cluster(&tenant.cluster).await.map_err(db_error)?;
                let client = entry.connect_admin().await.map_err(db_error)?;
                client.query(sql, &[&tenant.id]).await.map_err(db_error)?
            };
            let mut table =
                Table::new(&["version", "name", "checksum", "applied_at", "duration_ms"]);
            for r in history {
                table.row(vec![
                    text(r.get::<_, i32>(0)),
                    text(r.get::<_, String>(1)),
                    text(r.get::<_, String>(2)),
                    text(r.get::<_, String>(3)),
                    text(r.get::<_, i32>(4)),
                ]);
            }
            Ok(rows(table))
        }
    }
}

pub fn stats(proxy: &Proxy) -> Reply {
    use std::sync::atomic::Ordering;
    let clients = proxy.sessions.list();
    let mut table = Table::new(&[
        "tenant",
        "clients",
        "tps",
        "qps",
        "transactions",
        "queries",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "bytes_in",
        "bytes_out",
        "errors",
        "waits",
        "avg_wait_us",
    ]);
    for (tenant, m) in proxy.metrics.all() {
        let rates = m.rates();
        let latency = m.latency();
        let waits = m.waits.load(Ordering::Relaxed);
        let wait_micros = m.wait_micros.load(Ordering::Relaxed);
        table.row(vec![
            text(&tenant),
            text(clients.iter().filter(|c| c.tenant.slug == tenant).count()),
            text(format!("{:.1}", rates.transactions_per_sec)),
            text(format!("{:.1}", rates.queries_per_sec)),
            text(m.transactions.load(Ordering::Relaxed)),
            text(m.queries.load(Ordering::Relaxed)),
            text(latency.p50),
            text(latency.p90),
            text(latency.p99),
            text(latency.p999),
            text(m.bytes_in.load(Ordering::Relaxed)),
            text(m.bytes_out.load(Ordering::Relaxed)),
            text(m.errors.load(Ordering::Relaxed)),
            text(waits),
            text(wait_micros.checked_div(waits).unwrap_or(0)),
        ]);
    }
    rows(table)
}

pub fn config(proxy: &Proxy) -> Reply {
    let mut table = Table::new(&["key", "value"]);
    for (key, value) in proxy.config().describe() {
        table.row(vec![text(key), text(value)]);
    }
    // What each key set source serves now: keys, age, last error.
    for s in proxy.verifier().jwks_status() {
        let key = |what: &str| text(format!("jwks[{}].{what}", s.source));
        table.row(vec![
            key("keys"),
            text(format!("{} ({})", s.keys, s.kids.join(", "))),
        ]);
        table.row(vec![
            key("age_seconds"),
            s.age_secs().map(|a| a.to_string()),
        ]);
        table.row(vec![
            key("last_error"),
            text(s.last_error.clone().unwrap_or_default()),
        ]);
        table.row(vec![
            key("fetches"),
            text(format!("{} ok, {} failed", s.fetches, s.failures)),
        ]);
    }
    // What the token controls hold now.
    let (jtis, users) = proxy.revocations.sizes();
    table.row(vec![
        text("revocations.held"),
        text(format!("{jtis} tokens, {users} users")),
    ]);
    let (addresses, identities, tenants) = proxy.limiter.sizes();
    table.row(vec![
        text("login.buckets_held"),
        text(format!(
            "{addresses} addresses, {identities} identities, {tenants} tenants"
        )),
    ]);
    rows(table)
}

pub fn version() -> Reply {
    let mut table = Table::new(&["version"]);
    table.row(vec![text(format!(
        "pgtenant {}",
        env!("CARGO_PKG_VERSION")
    ))]);
    rows(table)
}

pub fn help() -> Reply {
    let mut table = Table::new(&["command", "description"]);
    for (form, description) in FORMS {
        table.row(vec![text(form), text(description)]);
    }
    rows(table)
}
