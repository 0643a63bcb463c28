//! A tenant's copy on a cluster other than its own: made on the target before the data is copied (role,
//! schema without data, `tenant_roles` row, migration history), and dropped from the cluster that does not
//! serve the tenant (the target after `CANCEL MOVE`, the source after `FINISH MOVE`).

use super::{MoveError, Mover};
use crate::clusters::ClusterEntry;
use crate::credentials::RolePasswords;
use crate::directory::Tenant;
use crate::names::{quote_ident, quote_literal};
use tokio_postgres::Client;

/// Makes the tenant's role, schema (as `pg_dump --schema-only` of the source has it), `tenant_roles` row and
/// migration history on `target`, in one transaction; a target that has the schema already got all of it.
pub async fn prepare(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
    target: &ClusterEntry,
) -> Result<(), MoveError> {
    for entry in [source, target] {
        if !entry.name().is_default() {
            crate::clusters::guards::apply(entry, mover.config).await?;
        }
    }
    let mut target_db = target.connect_admin().await?;
    let on_target = MoveError::db(target.name());
    let made: bool = target_db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&tenant.schema.as_str()],
        )
        .await
        .map_err(&on_target)?
        .get(0);
    if made {
        mover.say(format!(
            "cluster {} has the tenant's schema already",
            target.name()
        ));
        return Ok(());
    }
    let dump = schema_dump(source, tenant.schema.as_str()).await?;
    let history = source
        .connect_admin()
        .await?
        .query(
            "SELECT version, name, checksum, applied_at, duration_ms FROM pgtenant.tenant_migrations
             WHERE organization_id = $1 ORDER BY version",
            &[&tenant.id],
        )
        .await
        .map_err(MoveError::db(source.name()))?;

    let verifier =
        RolePasswords::new(mover.config.server_secret()).verifier_for(tenant.role.as_str());
    let tx = target_db.transaction().await.map_err(&on_target)?;
    let role_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&tenant.role.as_str()],
        )
        .await
        .map_err(&on_target)?
        .get(0);
    if !role_exists {
        crate::tenancy::create_tenant_role(&tx, &tenant.role, &tenant.schema, &verifier)
            .await
            .map_err(&on_target)?;
    }
    crate::tenancy::grant_database_access(&tx, &tenant.role)
        .await
        .map_err(&on_target)?;
    tx.batch_execute(&dump).await.map_err(&on_target)?;
    // The dump set search_path to '' for the session; the statements below name their schemas anyway.
    if !target.name().is_default() {
        tx.execute(
            "INSERT INTO pgtenant.tenant_roles (role_name, organization_id, ddl_allowed) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&tenant.role.as_str(), &tenant.id, &tenant.ddl_allowed],
        )
        .await
        .map_err(&on_target)?;
    }
    for r in &history {
        let (version, name, checksum, applied_at, duration_ms): (
            i32,
            String,
            String,
            std::time::SystemTime,
            i32,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        tx.execute(
            "INSERT INTO pgtenant.tenant_migrations
                 (organization_id, version, name, checksum, applied_at, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &tenant.id,
                &version,
                &name,
                &checksum,
                &applied_at,
                &duration_ms,
            ],
        )
        .await
        .map_err(&on_target)?;
    }
    tx.execute(
        "DELETE FROM pgtenant.move_marks WHERE organization_id = $1",
        &[&tenant.id],
    )
    .await
    .map_err(&on_target)?;
    tx.commit().await.map_err(&on_target)?;
    mover.say(format!(
        "cluster {}: role {}, schema {} (no data yet) and {} migration history rows made",
        target.name(),
        tenant.role,
        tenant.schema,
        history.len()
    ));
    Ok(())
}

/// `pg_dump --schema-only --schema=<schema>` of `source`, as SQL for a plain connection: psql's
/// `\restrict` / `\unrestrict` lines (pg_dump 15.14 and later) are left out.
async fn schema_dump(source: &ClusterEntry, schema: &str) -> Result<String, MoveError> {
    let bins = pgcluster::PgBinaries::find()
        .map_err(|e| MoveError::Dump(format!("no pg_dump found: {e}")))?;
    let upstream = &source.upstream;
    let mut cmd = tokio::process::Command::new(bins.path("pg_dump"));
    cmd.arg("--schema-only")
        .arg("--no-publications")
        .arg("--no-subscriptions")
        .arg(format!("--schema={}", quote_ident(schema)))
        .arg("--host")
        .arg(&upstream.host)
        .arg("--port")
        .arg(upstream.port.to_string())
        .arg("--username")
        .arg(&upstream.admin_user)
        .arg("--dbname")
        .arg(&upstream.database)
        .arg("--no-password")
        .env("PGSSLMODE", upstream.sslmode.as_str())
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true);
    if let Some(password) = &upstream.admin_password {
        cmd.env("PGPASSWORD", password.expose());
    }
    for (var, path) in [
        ("PGSSLROOTCERT", &upstream.sslrootcert),
        ("PGSSLCERT", &upstream.sslcert),
        ("PGSSLKEY", &upstream.sslkey),
    ] {
        if let Some(path) = path {
            cmd.env(var, path);
        }
    }
    let out = cmd.output().await.map_err(|e| {
        MoveError::Dump(format!(
            "cannot run {}: {e}",
            bins.path("pg_dump").display()
        ))
    })?;
    if !out.status.success() {
        return Err(MoveError::Dump(format!(
            "pg_dump of cluster {} failed: {}",
            source.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| MoveError::Dump("pg_dump wrote something that is not UTF-8".into()))?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Drops the tenant's schema, role, history and mark on `entry`, a cluster that does not serve it (checked
/// against the directory first).
pub async fn drop_copy(
    mover: &Mover<'_>,
    tenant: &Tenant,
    entry: &ClusterEntry,
) -> Result<(), MoveError> {
    let served_from: String = mover
        .directory
        .query_one(
            "SELECT cluster FROM pgtenant.organizations WHERE id = $1",
            &[&tenant.id],
        )
        .await
        .map_err(MoveError::db(&crate::names::ClusterName::default_cluster()))?
        .get(0);
    if served_from == entry.name().as_str() {
        return Err(MoveError::Refused(format!(
            "tenant \"{}\" is served from cluster {served_from}: its data there is not dropped",
            tenant.slug
        )));
    }
    let db = entry.connect_admin().await?;
    drop_objects(&db, tenant, entry).await?;
    mover.say(format!(
        "cluster {}: schema {} and role {} dropped",
        entry.name(),
        tenant.schema,
        tenant.role
    ));
    Ok(())
}

async fn drop_objects(db: &Client, tenant: &Tenant, entry: &ClusterEntry) -> Result<(), MoveError> {
    let on = MoveError::db(entry.name());
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        &[&tenant.role.as_str()],
    )
    .await
    .map_err(&on)?;
    db.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;
         DO $$ BEGIN
           IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {role_literal}) THEN
             DROP OWNED BY {role};
             DROP ROLE {role};
           END IF;
         END $$;",
        schema = tenant.schema.quoted(),
        role = tenant.role.quoted(),
        role_literal = quote_literal(tenant.role.as_str()),
    ))
    .await
    .map_err(&on)?;
    db.execute(
        "DELETE FROM pgtenant.tenant_migrations WHERE organization_id = $1",
        &[&tenant.id],
    )
    .await
    .map_err(&on)?;
    db.execute(
        "DELETE FROM pgtenant.move_marks WHERE organization_id = $1",
        &[&tenant.id],
    )
    .await
    .map_err(&on)?;
    if !entry.name().is_default() {
        db.execute(
            "DELETE FROM pgtenant.tenant_roles WHERE organization_id = $1",
            &[&tenant.id],
        )
        .await
        .map_err(&on)?;
    }
    Ok(())
}
