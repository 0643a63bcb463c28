//! The offline copy of a move (`MOVE TENANT x TO c OFFLINE`), for tenants with tables logical replication
//! cannot carry (no primary key or replica identity, UNLOGGED): during the switch, with the tenant held and
//! its source role locked out, every table of its schema is copied with `COPY … TO STDOUT` on the source into
//! `COPY … FROM STDIN` on the target (binary format; foreign keys and triggers off on the target while it
//! loads, as pg_restore does). The target's tables are emptied first, so a switch run again after a crash
//! copies again from the start. The tenant waits for the whole copy: a longer pause than a logical move's.

use super::{MoveError, Mover};
use crate::clusters::ClusterEntry;
use crate::directory::Tenant;
use crate::names::quote_ident;
use futures_util::{SinkExt, StreamExt};
use std::time::Instant;
use tokio_postgres::Client;

/// Copies every table of the tenant's schema from `source_db` to `target_db`; returns (tables, bytes).
pub async fn copy_tables(
    mover: &Mover<'_>,
    tenant: &Tenant,
    (source_db, source): (&Client, &ClusterEntry),
    (target_db, target): (&mut Client, &ClusterEntry),
) -> Result<(usize, u64), MoveError> {
    let on_source = MoveError::db(source.name());
    let on_target = MoveError::db(target.name());
    let tables: Vec<String> = source_db
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
            &[&tenant.schema.as_str()],
        )
        .await
        .map_err(&on_source)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let qualified = |table: &str| format!("{}.{}", tenant.schema.quoted(), quote_ident(table));
    let started = Instant::now();
    let tx = target_db.transaction().await.map_err(&on_target)?;
    tx.batch_execute("SET LOCAL session_replication_role = replica")
        .await
        .map_err(&on_target)?;
    if !tables.is_empty() {
        let all: Vec<String> = tables.iter().map(|t| qualified(t)).collect();
        tx.batch_execute(&format!("TRUNCATE {}", all.join(", ")))
            .await
            .map_err(&on_target)?;
    }
    let mut bytes = 0u64;
    for table in &tables {
        let name = qualified(table);
        let out = source_db
            .copy_out(&format!("COPY {name} TO STDOUT (FORMAT binary)"))
            .await
            .map_err(&on_source)?;
        let sink = tx
            .copy_in::<_, bytes::Bytes>(&format!("COPY {name} FROM STDIN (FORMAT binary)"))
            .await
            .map_err(&on_target)?;
        futures_util::pin_mut!(out);
        futures_util::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            let chunk = chunk.map_err(&on_source)?;
            bytes += chunk.len() as u64;
            sink.send(chunk).await.map_err(&on_target)?;
        }
        sink.finish().await.map_err(&on_target)?;
    }
    tx.commit().await.map_err(&on_target)?;
    mover.say(format!(
        "switching: {} tables ({bytes} bytes) copied offline in {} ms",
        tables.len(),
        started.elapsed().as_millis()
    ));
    Ok((tables.len(), bytes))
}
