//! Migrating one tenant: its advisory lock, a connection as its role, the tickets that let it record its
//! history, its files run in transactions (a no-transaction file alone), and a failure told as file, line
//! and SQLSTATE.

use super::report::{TenantFailure, TenantOutcome, TenantRow};
use super::TenantMigrator;
use crate::directory::Tenant;
use crate::migrate::Migration;
use std::collections::HashSet;
use std::time::Instant;
use uuid::Uuid;

/// Advisory lock key of one tenant (migrations only).
fn tenant_lock_key(id: &Uuid) -> i64 {
    let bytes = id.as_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(key) ^ 0x7067_7465_6e61_0000
}

impl TenantMigrator {
    /// Migrates one tenant under its lock, on its cluster.
    pub(super) async fn migrate_one(&self, tenant: &TenantRow, pending: &[usize]) -> TenantOutcome {
        let admin = match self.cluster_admin(&tenant.tenant.cluster).await {
            Ok(a) => a,
            Err(e) => {
                return TenantOutcome::Failed(plain_failure(
                    crate::protocol::sqlstate::CONNECTION_FAILURE,
                    e.to_string(),
                ))
            }
        };
        let key = tenant_lock_key(&tenant.tenant.id);
        match admin
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {}
            Ok(_) => return TenantOutcome::Busy,
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        }
        let outcome = self.apply(&admin, tenant, pending).await;
        if let Err(e) = admin
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
        {
            tracing::warn!(tenant = %tenant.tenant.slug, error = %e, "could not release a tenant migration lock");
        }
        outcome
    }

    async fn apply(
        &self,
        admin: &tokio_postgres::Client,
        tenant: &TenantRow,
        pending: &[usize],
    ) -> TenantOutcome {
        // Under the lock, read the history again: another migrator may have finished this tenant.
        let applied: HashSet<i32> = match admin
            .query(
                "SELECT version FROM pgtenant.tenant_migrations WHERE organization_id = $1",
                &[&tenant.tenant.id],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        };
        let pending: Vec<&Migration> = pending
            .iter()
            .map(|i| &self.inner.migrations[*i])
            .filter(|m| !applied.contains(&m.version))
            .collect();
        if pending.is_empty() {
            return TenantOutcome::UpToDate;
        }
        let client = match self.connect_as_tenant(&tenant.tenant).await {
            Ok(c) => c,
            Err(e) => return TenantOutcome::Failed(e),
        };
        let pid: i32 = match client.query_one("SELECT pg_backend_pid()", &[]).await {
            Ok(r) => r.get(0),
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        };
        if let Err(e) = self
            .issue_tickets(admin, &tenant.tenant, pid, &pending)
            .await
        {
            return TenantOutcome::Failed(db_failure(&e, None, None));
        }
        let outcome = self.run_files(&client, &tenant.tenant, &pending).await;
        if let Err(e) = admin
            .execute(
                "WITH t AS (DELETE FROM pgtenant.migration_tickets WHERE role_name = $1 AND backend_pid = $2)
                 DELETE FROM pgtenant.ddl_unlocks WHERE role_name = $1 AND backend_pid = $2",
                &[&tenant.tenant.role.as_str(), &pid],
            )
            .await
        {
            tracing::warn!(tenant = %tenant.tenant.slug, error = %e, "could not clean up migration tickets");
        }
        outcome
    }

    /// A connection logged in as the tenant's role on its cluster.
    async fn connect_as_tenant(
        &self,
        tenant: &Tenant,
    ) -> Result<tokio_postgres::Client, TenantFailure> {
        let (config, tls) = if tenant.cluster.is_default() {
            (
                self.inner.config.upstream.clone(),
                self.inner.default_tls.clone(),
            )
        } else {
            let pool = self.cluster_pool(&tenant.cluster).await.map_err(|e| {
                plain_failure(crate::protocol::sqlstate::CONNECTION_FAILURE, e.to_string())
            })?;
            let tls = pool
                .entry
                .tls()
                .map_err(|e| {
                    plain_failure(crate::protocol::sqlstate::CONNECTION_FAILURE, e.to_string())
                })?
                .clone();
            (pool.entry.upstream.clone(), tls)
        };
        let password = self.inner.passwords.password_for(tenant.role.as_str());
        let pg = config.tenant_pg_config(tenant.role.as_str(), &password, "pgtenant-migrate");
        let (client, connection) = pg
            .connect(tls.postgres())
            .await
            .map_err(|e| db_failure(&e, None, None))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn issue_tickets(
        &self,
        admin: &tokio_postgres::Client,
        tenant: &Tenant,
        pid: i32,
        pending: &[&Migration],
    ) -> Result<(), tokio_postgres::Error> {
        let versions: Vec<i32> = pending.iter().map(|m| m.version).collect();
        let names: Vec<&str> = pending.iter().map(|m| m.name.as_str()).collect();
        let checksums: Vec<&str> = pending.iter().map(|m| m.checksum.as_str()).collect();
        admin
            .execute(
                "WITH b AS (SELECT backend_start FROM pg_stat_activity WHERE pid = $2),
                 u AS (
                     INSERT INTO pgtenant.ddl_unlocks (role_name, backend_pid, backend_start)
                     SELECT $1, $2, b.backend_start FROM b WHERE NOT $6
                     ON CONFLICT (role_name, backend_pid) DO UPDATE SET backend_start = EXCLUDED.backend_start)
                 INSERT INTO pgtenant.migration_tickets (role_name, backend_pid, backend_start, version, name, checksum)
                 SELECT $1, $2, b.backend_start, v, n, c
                 FROM b, unnest($3::int[], $4::text[], $5::text[]) AS t(v, n, c)",
                &[&tenant.role.as_str(), &pid, &versions, &names, &checksums, &tenant.ddl_allowed],
            )
            .await?;
        Ok(())
    }

    /// Runs the pending files: consecutive transactional files in one transaction, a no-transaction file on
    /// its own.
    async fn run_files(
        &self,
        client: &tokio_postgres::Client,
        tenant: &Tenant,
        pending: &[&Migration],
    ) -> TenantOutcome {
        let schema = tenant.schema.quoted();
        let lock_timeout = self.inner.lock_timeout_ms;
        let mut applied = Vec::new();
        for segment in segments(pending) {
            let in_transaction = !segment[0].no_transaction;
            let setup = if in_transaction {
                format!("BEGIN; SET LOCAL search_path = {schema}; SET LOCAL lock_timeout = '{lock_timeout}ms'")
            } else {
                format!("SET search_path = {schema}; SET lock_timeout = '{lock_timeout}ms'")
            };
            if let Err(e) = client.batch_execute(&setup).await {
                return TenantOutcome::Failed(db_failure(&e, None, None));
            }
            for m in segment {
                let started = Instant::now();
                for statement in &m.statements {
                    if let Err(e) = client.batch_execute(&statement.sql).await {
                        if in_transaction {
                            let _ = client.batch_execute("ROLLBACK").await;
                        }
                        let mut failure = db_failure(&e, Some(m), Some(&statement.sql));
                        failure.line = Some(statement.line + failure.line.map_or(0, |l| l - 1));
                        return TenantOutcome::Failed(failure);
                    }
                }
                let ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
                if let Err(e) = client
                    .execute(
                        "SELECT pgtenant_api.record_migration($1, $2)",
                        &[&m.version, &ms],
                    )
                    .await
                {
                    if in_transaction {
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                    return TenantOutcome::Failed(db_failure(&e, Some(m), None));
                }
            }
            if in_transaction {
                if let Err(e) = client.batch_execute("COMMIT").await {
                    return TenantOutcome::Failed(db_failure(&e, segment.last().copied(), None));
                }
            }
            applied.extend(segment.iter().map(|m| m.version));
        }
        TenantOutcome::Migrated(applied)
    }
}

/// Splits pending files into runs that share a transaction; a no-transaction file stands alone.
pub(super) fn segments<'a, 'm>(pending: &'a [&'m Migration]) -> Vec<&'a [&'m Migration]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, m) in pending.iter().enumerate() {
        if m.no_transaction {
            if start < i {
                out.push(&pending[start..i]);
            }
            out.push(&pending[i..=i]);
            start = i + 1;
        }
    }
    if start < pending.len() {
        out.push(&pending[start..]);
    }
    out
}

fn plain_failure(sqlstate: &str, message: String) -> TenantFailure {
    TenantFailure {
        file: None,
        version: None,
        sqlstate: sqlstate.to_string(),
        message,
        line: None,
    }
}

/// A failure from a database error; `sql` is the text the error position refers to.
fn db_failure(
    err: &tokio_postgres::Error,
    migration: Option<&Migration>,
    sql: Option<&str>,
) -> TenantFailure {
    let file = migration.map(|m| {
        m.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.path.display().to_string())
    });
    let version = migration.map(|m| m.version);
    match err.as_db_error() {
        Some(db) => {
            let line = match (db.position(), sql) {
                (Some(tokio_postgres::error::ErrorPosition::Original(pos)), Some(sql)) => {
                    Some(line_of(sql, *pos as usize))
                }
                _ => None,
            };
            TenantFailure {
                file,
                version,
                sqlstate: db.code().code().to_string(),
                message: db.message().to_string(),
                line,
            }
        }
        None => TenantFailure {
            file,
            version,
            sqlstate: crate::protocol::sqlstate::CONNECTION_FAILURE.into(),
            message: err.to_string(),
            line: None,
        },
    }
}

/// 1-based line of the 1-based character position `pos` in `sql`.
pub(super) fn line_of(sql: &str, pos: usize) -> usize {
    sql.chars()
        .take(pos.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count()
        + 1
}
