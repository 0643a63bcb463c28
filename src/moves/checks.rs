//! What must hold before a tenant move starts (and what a dry run reports): the target is an active primary
//! without a copy of the tenant, the source can publish (wal_level = logical), both admin users may
//! replicate, and every table of the schema can be carried by logical replication.

use super::{replication_name, MoveError, MoveOptions, Mover};
use crate::clusters::{ClusterRole, ClusterStatus};
use crate::directory::Tenant;
use crate::names::ClusterName;

/// What must hold before a move starts; returns what was found, for the dry run.
pub(super) async fn check(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterName,
    target: &ClusterName,
    options: &MoveOptions,
) -> Result<Vec<String>, MoveError> {
    if source == target {
        return Err(MoveError::Refused(format!(
            "tenant \"{}\" is on cluster {target} already",
            tenant.slug
        )));
    }
    let target_entry = mover.entry(target)?;
    if target_entry.row.role != ClusterRole::Primary {
        return Err(MoveError::Refused(format!(
            "cluster {target} is a replica; move tenants to a primary"
        )));
    }
    if target_entry.row.status != ClusterStatus::Active {
        return Err(MoveError::Refused(format!(
            "cluster {target} is {}; only an active cluster takes tenants",
            target_entry.row.status.as_str()
        )));
    }
    let source_entry = mover.entry(source)?;
    let source_db = source_entry.connect_admin().await?;
    let target_db = target_entry.connect_admin().await?;
    let mut lines = Vec::new();

    if !options.offline {
        let wal_level: String = source_db
            .query_one("SELECT current_setting('wal_level')", &[])
            .await
            .map_err(MoveError::db(source))?
            .get(0);
        if wal_level != "logical" {
            return Err(MoveError::Refused(format!(
                "cluster {source} runs with wal_level = {wal_level}: moving a tenant off it needs \
                 wal_level = logical (ALTER SYSTEM SET wal_level = logical, then a restart of that server)"
            )));
        }
    }
    for (entry, db) in [(&source_entry, &source_db), (&target_entry, &target_db)] {
        let superuser: bool = db
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(MoveError::db(entry.name()))?
            .get(0);
        if !superuser {
            return Err(MoveError::Refused(format!(
                    "the admin user of cluster {} is not a superuser: PostgreSQL 15 lets only superusers \
                     publish a whole schema and create subscriptions",
                    entry.name()
                )));
        }
    }
    let schema = tenant.schema.as_str();
    if !options.offline {
        let unfit = source_db
            .query(
                "SELECT c.relname::text,
                        CASE WHEN c.relpersistence = 'u' THEN 'unlogged' ELSE 'no replica identity' END
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                   AND (c.relpersistence = 'u'
                        OR c.relreplident = 'n'
                        OR (c.relreplident = 'd' AND NOT EXISTS (
                              SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
                 ORDER BY 1",
                &[&schema],
            )
            .await
            .map_err(MoveError::db(source))?;
        if !unfit.is_empty() {
            let tables: Vec<String> = unfit
                .iter()
                .map(|r| format!("{} ({})", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            return Err(MoveError::Refused(format!(
                "logical replication cannot carry these tables of tenant \"{}\": {}. Give each a primary key, \
                 or run ALTER TABLE {}.<table> REPLICA IDENTITY FULL (UNLOGGED tables: ALTER TABLE … SET LOGGED), \
                 then MOVE again; or MOVE TENANT {} TO {target} OFFLINE copies with COPY while the tenant waits",
                tenant.slug,
                tables.join(", "),
                tenant.schema.quoted(),
                tenant.slug
            )));
        }
    }
    let taken = target_db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                        EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2),
                        EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $3)",
            &[&schema, &tenant.role.as_str(), &replication_name(tenant.id)],
        )
        .await
        .map_err(MoveError::db(target))?;
    if taken.get::<_, bool>(0) || taken.get::<_, bool>(1) || taken.get::<_, bool>(2) {
        return Err(MoveError::Refused(format!(
                "cluster {target} has a schema, role or subscription of tenant \"{}\" already (left by an \
                 earlier move?): drop them there, or CANCEL MOVE {} if its move is on record",
                tenant.slug, tenant.slug
            )));
    }
    let stats = source_db
        .query_one(
            "SELECT count(*)::bigint,
                        coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema],
        )
        .await
        .map_err(MoveError::db(source))?;
    let (tables, bytes): (i64, i64) = (stats.get(0), stats.get(1));
    lines.push(format!(
        "tenant \"{}\": schema {} with {tables} tables, {} on cluster {source}",
        tenant.slug,
        tenant.schema,
        crate::units::pretty_size(bytes)
    ));
    if options.offline {
        lines.push(format!(
            "cluster {target}: active primary, no copy of the tenant yet"
        ));
        lines.push(format!(
            "plan (offline): role and schema on {target}, then a switch holding the tenant's new \
             transactions for the whole copy (running ones get {} s to end): every table copied with COPY, \
             sequences copied, directory switched",
            options.pause_timeout.as_secs()
        ));
    } else {
        lines.push(format!(
            "cluster {source}: wal_level = logical; cluster {target}: active primary, no copy of the tenant yet"
        ));
        lines.push(format!(
            "plan: role and schema on {target}, logical replication of the schema, a switch holding the \
             tenant's new transactions (running ones get {} s to end), sequences copied, directory switched",
            options.pause_timeout.as_secs()
        ));
    }
    Ok(lines)
}
