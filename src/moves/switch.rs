//! The switch of a move: the only step during which the tenant's new transactions wait.
//!
//! 1. Every pgtenant holds the tenant's new transactions (an announcement with a lease: a pgtenant lets
//!    them go by itself if no word comes, so a crashed mover holds nobody for long).
//! 2. The tenant's running transactions on the source end (or, after `pause_timeout`, are ended).
//! 3. The tenant's role on the source may no longer log in and its backends are ended: from here on nothing
//!    can write the tenant's tables there, whatever any pgtenant does.
//! 4. A mark written on the source after that reaches the target: it has every change (logical replication
//!    applies in commit order). Sequences are copied (`setval`, they are not replicated).
//! 5. One directory transaction names the target, records the move as switched and announces it; at its
//!    commit every pgtenant sends the held transactions to the target.
//!
//! A step that fails before 5 undoes 3 and lets the transactions go to the source again; a crash leaves the
//! move at `switching`, and running MOVE again repeats the switch (every step is safe to repeat).

use super::{replication, MoveError, MoveOptions, MoveState, Mover};
use crate::clusters::ClusterEntry;
use crate::directory::events::{announce, DirectoryEvent};
use crate::directory::Tenant;
use crate::names::ClusterName;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long every pgtenant holds the tenant's transactions on the strength of one announcement, beyond the
/// time given to running transactions.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How long the last mark may take to reach the target.
const LAST_MARK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the switch; returns how long the tenant's new transactions were held.
pub async fn switch(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
    target: &ClusterEntry,
    options: &MoveOptions,
) -> Result<Duration, MoveError> {
    let source_db = source.connect_admin().await?;
    let mut target_db = target.connect_admin().await?;
    let directory_name = ClusterName::default_cluster();
    let directory_error = MoveError::db(&directory_name);
    let lease = options.pause_timeout + LEASE_MARGIN;
    let held_since = Instant::now();
    announce(
        mover.directory,
        &DirectoryEvent::MovePause {
            role: tenant.role.to_string(),
            lease_ms: lease.as_millis() as u64,
        },
    )
    .await
    .map_err(&directory_error)?;
    mover.say(format!(
        "switching: tenant \"{}\" paused on every pgtenant",
        tenant.slug
    ));
    let result = async {
        let running = wait_for_running(&source_db, source, tenant, options.pause_timeout).await?;
        if running > 0 {
            mover.say(format!(
                "switching: {running} transactions still running after {} ms are ended",
                options.pause_timeout.as_millis()
            ));
        }
        lock_out(&source_db, source, tenant).await?;
        if options.offline {
            super::offline::copy_tables(
                mover,
                tenant,
                (&source_db, source),
                (&mut target_db, target),
            )
            .await?;
        } else {
            let mark = replication::write_mark(&source_db, source, tenant).await?;
            let lag =
                replication::wait_for_mark(&target_db, target, tenant, mark, LAST_MARK_TIMEOUT)
                    .await?;
            mover.say(format!(
                "switching: target caught up in {} ms",
                lag.as_millis()
            ));
        }
        let sequences = copy_sequences(&source_db, source, &target_db, target, tenant).await?;
        mover.say(format!("switching: {sequences} sequences copied"));
        Ok::<(), MoveError>(())
    }
    .await;
    if let Err(e) = result {
        mover.say(format!(
            "switching failed ({e}); the tenant stays on cluster {}",
            source.name()
        ));
        if let Err(undo_error) = undo(mover, tenant, source).await {
            tracing::error!(tenant = %tenant.slug, error = %undo_error, "a failed switch could not be undone; MOVE again or CANCEL MOVE");
        } else {
            let _ = mover.set_state(tenant, MoveState::CatchingUp).await;
        }
        return Err(e);
    }

    // One statement, so one transaction: the directory names the target, the move is switched, and the
    // announcements go out at its commit.
    let held = held_since.elapsed();
    let switched = DirectoryEvent::MoveSwitched {
        role: tenant.role.to_string(),
        from: source.name().clone(),
        to: target.name().clone(),
    };
    mover
        .directory
        .execute(
            "WITH org AS (UPDATE pgtenant.organizations SET cluster = $2 WHERE id = $1 RETURNING id),
                  mv AS (UPDATE pgtenant.tenant_moves
                         SET state = 'switched', updated_at = now(), note = NULL, pause_ms = $3
                         WHERE organization_id = $1 RETURNING organization_id)
             SELECT pg_notify($4, $5), pg_notify($4, $6) FROM org, mv",
            &[
                &tenant.id,
                &target.name().as_str(),
                &(held.as_millis().min(i32::MAX as u128) as i32),
                &crate::directory::events::DIRECTORY_CHANNEL,
                &switched.payload(),
                &DirectoryEvent::Changed.payload(),
            ],
        )
        .await
        .map_err(&directory_error)?;
    let held = held_since.elapsed();
    tracing::info!(tenant = %tenant.slug, from = %source.name(), to = %target.name(), held_ms = held.as_millis() as u64, "tenant moved");
    Ok(held)
}

/// How long no backend of the tenant may have been in a transaction before the switch goes on: a
/// transaction whose connection was checked out just before a pgtenant heard of the pause reaches the
/// server within this.
const QUIET_FOR: Duration = Duration::from_millis(50);

/// Waits until none of the tenant's backends on the source has been in a transaction for [`QUIET_FOR`],
/// for at most `limit`; returns how many still are.
async fn wait_for_running(
    source_db: &Client,
    source: &ClusterEntry,
    tenant: &Tenant,
    limit: Duration,
) -> Result<i64, MoveError> {
    let deadline = Instant::now() + limit;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let running: i64 = source_db
            .query_one(
                "SELECT count(*)::bigint FROM pg_stat_activity
                 WHERE usename = $1 AND state IS DISTINCT FROM 'idle' AND pid <> pg_backend_pid()",
                &[&tenant.role.as_str()],
            )
            .await
            .map_err(MoveError::db(source.name()))?
            .get(0);
        let now = Instant::now();
        if running > 0 {
            quiet_since = None;
        } else if now.duration_since(*quiet_since.get_or_insert(now)) >= QUIET_FOR {
            return Ok(0);
        }
        if now >= deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The tenant's role on the source may not log in, and its backends end.
async fn lock_out(
    source_db: &Client,
    source: &ClusterEntry,
    tenant: &Tenant,
) -> Result<(), MoveError> {
    let on_source = MoveError::db(source.name());
    source_db
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", tenant.role.quoted()))
        .await
        .map_err(&on_source)?;
    super::poll(
        "the end of the tenant's backends on the source",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            let left: i64 = source_db
                .query_one(
                    "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity
                     WHERE usename = $1 AND pid <> pg_backend_pid()",
                    &[&tenant.role.as_str()],
                )
                .await
                .map_err(&on_source)?
                .get(0);
            Ok((left == 0).then_some(()))
        },
    )
    .await
}

/// Sets every sequence of the tenant's schema on the target to its value on the source.
async fn copy_sequences(
    source_db: &Client,
    source: &ClusterEntry,
    target_db: &Client,
    target: &ClusterEntry,
    tenant: &Tenant,
) -> Result<usize, MoveError> {
    let rows = source_db
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences
             WHERE schemaname = $1 AND last_value IS NOT NULL",
            &[&tenant.schema.as_str()],
        )
        .await
        .map_err(MoveError::db(source.name()))?;
    for r in &rows {
        let (name, value): (String, i64) = (r.get(0), r.get(1));
        target_db
            .execute(
                "SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3, true)",
                &[&tenant.schema.as_str(), &name, &value],
            )
            .await
            .map_err(MoveError::db(target.name()))?;
    }
    Ok(rows.len())
}

/// Undoes a switch that did not reach the directory: the tenant's role on the source may log in again and
/// every pgtenant lets the held transactions go there.
pub async fn undo(
    mover: &Mover<'_>,
    tenant: &Tenant,
    source: &ClusterEntry,
) -> Result<(), MoveError> {
    let source_db = source.connect_admin().await?;
    source_db
        .batch_execute(&format!("ALTER ROLE {} LOGIN", tenant.role.quoted()))
        .await
        .map_err(MoveError::db(source.name()))?;
    announce(
        mover.directory,
        &DirectoryEvent::MoveResume {
            role: tenant.role.to_string(),
        },
    )
    .await
    .map_err(MoveError::db(&ClusterName::default_cluster()))?;
    Ok(())
}
