//! The logical replication of a move: a publication of the tenant's schema (and of its row of
//! `pgtenant.move_marks`) on the source, a subscription on the target, the marks that measure how far
//! behind the target is, and dropping it all.

use super::{poll, replication_name, MoveError, MoveOptions, Mover};
use crate::clusters::ClusterEntry;
use crate::directory::Tenant;
use crate::names::{quote_ident, quote_literal};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// A libpq connection string for the target server to reach the source as its admin user. It is stored in
/// the target's `pg_subscription` (readable by superusers only) until the move is finished or cancelled.
fn source_conninfo(source: &ClusterEntry) -> String {
    let u = &source.upstream;
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![
        format!("host={}", value(&u.host)),
        format!("port={}", u.port),
        format!("dbname={}", value(&u.database)),
        format!("user={}", value(&u.admin_user)),
        format!("sslmode={}", u.sslmode.as_str()),
        "application_name=pgtenant_move".to_string(),
    ];
    if let Some(password) = &u.admin_password {
        parts.push(format!("password={}", value(password.expose())));
    }
    for (key, path) in [
        ("sslrootcert", &u.sslrootcert),
        ("sslcert", &u.sslcert),
        ("sslkey", &u.sslkey),
    ] {
        if let Some(path) = path {
            parts.push(format!("{key}={}", value(&path.to_string_lossy())));
        }
    }
    parts.join(" ")
}

/// Whether `db`'s catalog `table` has a row whose `column` is `name` (a publication, a subscription).
async fn in_catalog(
    db: &Client,
    entry: &ClusterEntry,
    (table, column): (&str, &str),
    name: &str,
) -> Result<bool, MoveError> {
    Ok(db
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM pg_catalog.{table} WHERE {column} = $1)"),
            &[&name],
        )
        .await
        .map_err(MoveError::db(entry.name()))?
        .get(0))
}

const PUBLICATIONS: (&str, &str) = ("pg_publication", "pubname");
const SUBSCRIPTIONS: (&str, &str) = ("pg_subscription", "subname");

/// Creates the publication on the source and the subscription on the target, unless they exist.
pub async fn start(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
    target: &ClusterEntry,
) -> Result<(), MoveError> {
    let name = replication_name(tenant.id);
    let source_db = source.connect_admin().await?;
    let on_source = MoveError::db(source.name());
    source_db
        .execute(
            "INSERT INTO pgtenant.move_marks (organization_id, mark) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&tenant.id],
        )
        .await
        .map_err(&on_source)?;
    if !in_catalog(&source_db, source, PUBLICATIONS, &name).await? {
        source_db
            .batch_execute(&format!(
                "CREATE PUBLICATION {pub_name} FOR TABLES IN SCHEMA {schema},
                     TABLE pgtenant.move_marks WHERE (organization_id = {id}::uuid)",
                pub_name = quote_ident(&name),
                schema = tenant.schema.quoted(),
                id = quote_literal(&tenant.id.to_string()),
            ))
            .await
            .map_err(&on_source)?;
        mover.say(format!(
            "cluster {}: publication {name} of schema {}",
            source.name(),
            tenant.schema
        ));
    }
    let target_db = target.connect_admin().await?;
    let on_target = MoveError::db(target.name());
    if !in_catalog(&target_db, target, SUBSCRIPTIONS, &name).await? {
        // CREATE SUBSCRIPTION makes the slot on the source; it cannot run in a transaction block.
        target_db
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {sub} CONNECTION {conninfo} PUBLICATION {sub}
                 WITH (copy_data = true, create_slot = true, slot_name = {slot})",
                sub = quote_ident(&name),
                conninfo = quote_literal(&source_conninfo(source)),
                slot = quote_literal(&name),
            ))
            .await
            .map_err(&on_target)?;
        mover.say(format!(
            "cluster {}: subscription {name} copies the tenant's tables from cluster {}",
            target.name(),
            source.name()
        ));
    }
    Ok(())
}

/// Waits until the subscription copied every table (`srsubstate = 'r'`), saying how far it is.
pub async fn wait_synchronized(
    mover: &Mover<'_>,
    tenant: &Tenant,
    target: &ClusterEntry,
    options: &MoveOptions,
) -> Result<(), MoveError> {
    let name = replication_name(tenant.id);
    let target_db = target.connect_admin().await?;
    let started = Instant::now();
    let last_said = std::sync::Mutex::new(Instant::now());
    let said = poll(
        "the initial copy of the tenant's tables",
        options.copy_timeout,
        Duration::from_millis(100),
        || async {
            let row = target_db
                .query_one(
                    "SELECT count(*) FILTER (WHERE sr.srsubstate = 'r')::bigint, count(*)::bigint,
                            coalesce((SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats
                                      WHERE subname = $1), 0)::bigint
                     FROM pg_subscription s LEFT JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
                     WHERE s.subname = $1",
                    &[&name],
                )
                .await
                .map_err(MoveError::db(target.name()))?;
            let (ready, total, errors): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if errors > 0 {
                return Err(MoveError::Refused(format!(
                    "the subscription on cluster {} reports {errors} errors (see that server's log); \
                     CANCEL MOVE {} drops what the target got",
                    target.name(),
                    tenant.slug
                )));
            }
            if total > 0 && ready == total {
                return Ok(Some(total));
            }
            let due = {
                let mut last = last_said.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.elapsed() >= Duration::from_secs(2);
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due {
                mover.say(format!("copying: {ready} of {total} tables synchronized"));
            }
            Ok(None)
        },
    )
    .await?;
    mover.say(format!(
        "copying: all {said} tables synchronized in {} ms",
        started.elapsed().as_millis()
    ));
    Ok(())
}

/// Writes a new mark on the source; returns it.
pub async fn write_mark(
    source_db: &Client,
    source: &ClusterEntry,
    tenant: &Tenant,
) -> Result<i64, MoveError> {
    Ok(source_db
        .query_one(
            "UPDATE pgtenant.move_marks SET mark = mark + 1 WHERE organization_id = $1 RETURNING mark",
            &[&tenant.id],
        )
        .await
        .map_err(MoveError::db(source.name()))?
        .get(0))
}

/// Waits until the target has `mark` (or a later one); returns how long it took.
pub async fn wait_for_mark(
    target_db: &Client,
    target: &ClusterEntry,
    tenant: &Tenant,
    mark: i64,
    limit: Duration,
) -> Result<Duration, MoveError> {
    let started = Instant::now();
    poll(
        "the target's catching up with the source",
        limit,
        Duration::from_millis(2),
        || async {
            let seen: Option<i64> = target_db
                .query_opt(
                    "SELECT mark FROM pgtenant.move_marks WHERE organization_id = $1",
                    &[&tenant.id],
                )
                .await
                .map_err(MoveError::db(target.name()))?
                .map(|r| r.get(0));
            Ok(seen.filter(|seen| *seen >= mark).map(|_| started.elapsed()))
        },
    )
    .await
}

/// Marks until one reaches the target within `options.catch_up_lag`; returns the last lag measured.
pub async fn catch_up(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
    target: &ClusterEntry,
    options: &MoveOptions,
) -> Result<Duration, MoveError> {
    let source_db = source.connect_admin().await?;
    let target_db = target.connect_admin().await?;
    let deadline = Instant::now() + options.copy_timeout;
    loop {
        let mark = write_mark(&source_db, source, tenant).await?;
        let lag = wait_for_mark(&target_db, target, tenant, mark, options.copy_timeout).await?;
        mover.say(format!(
            "catching up: replication lag {} ms",
            lag.as_millis()
        ));
        if lag <= options.catch_up_lag {
            return Ok(lag);
        }
        if Instant::now() >= deadline {
            return Err(MoveError::Timeout {
                what: "catching up".into(),
                secs: options.copy_timeout.as_secs(),
                detail: format!(" (lag still {} ms)", lag.as_millis()),
            });
        }
    }
}

/// Drops the subscription (and with it the slot on the source) and the publication, if they exist.
pub async fn drop_replication(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
    target: &ClusterEntry,
) -> Result<(), MoveError> {
    let name = replication_name(tenant.id);
    let target_db = target.connect_admin().await?;
    let on_target = MoveError::db(target.name());
    if in_catalog(&target_db, target, SUBSCRIPTIONS, &name).await? {
        target_db
            .batch_execute(&format!("DROP SUBSCRIPTION {}", quote_ident(&name)))
            .await
            .map_err(&on_target)?;
    }
    let source_db = source.connect_admin().await?;
    let on_source = MoveError::db(source.name());
    source_db
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&name)
        ))
        .await
        .map_err(&on_source)?;
    // A slot left behind (the subscription was made, then its drop could not reach the source) holds WAL.
    source_db
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await
        .map_err(&on_source)?;
    mover.say(format!(
        "replication of the move dropped (subscription on {}, publication on {})",
        target.name(),
        source.name()
    ));
    Ok(())
}
