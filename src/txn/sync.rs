//! Settings synchronised on each checkout: the tracked settings a client changed are set on the server
//! connection it gets, so every transaction sees the session the client built.

use super::TRACKED_SETTINGS;
use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::protocol::TxStatus;
use crate::refusal::Refusal;
use crate::upstream::{SharedParameters, UpstreamConn};

/// How long the server has to answer the settings query: a connection that does not answer it is closed
/// (the client gets an error for its statement) instead of holding the session forever.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `conn` was last brought to `desired` and has reported no change since: nothing to set.
pub fn in_sync(conn: &UpstreamConn, desired: &SharedParameters) -> bool {
    conn.synced_with
        .as_ref()
        .is_some_and(|synced| std::sync::Arc::ptr_eq(synced, desired))
}

/// Sets the tracked settings that differ on this connection from what the client last saw.
pub async fn sync_settings(
    conn: &mut UpstreamConn,
    desired: &SharedParameters,
) -> Result<(), PgError> {
    if in_sync(conn, desired) {
        return Ok(());
    }
    let calls: Vec<String> = desired
        .iter()
        .filter(|(name, _)| TRACKED_SETTINGS.contains(&name.as_str()))
        .filter(|(name, value)| {
            conn.parameters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v != value)
                .unwrap_or(true)
        })
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                crate::names::quote_literal(name),
                crate::names::quote_literal(value)
            )
        })
        .collect();
    if calls.is_empty() {
        conn.synced_with = Some(desired.clone());
        return Ok(());
    }
    let query = format!("SELECT {}", calls.join(", "));
    match tokio::time::timeout(SYNC_TIMEOUT, conn.run_simple(&[&query])).await {
        Ok(Ok((None, TxStatus::Idle))) => {
            conn.synced_with = Some(desired.clone());
            Ok(())
        }
        Ok(Ok((Some(fields), _))) => Err(PgError::from_upstream(&fields)),
        Ok(Ok((None, _))) => Err(Refusal::ServerLeftInTransaction.to_error()),
        Ok(Err(e)) => Err(Refusal::ServerSyncFailed(e.to_string()).to_error()),
        Err(_) => {
            // Its answer may still come: the connection can serve no one.
            conn.broken = true;
            Err(Refusal::ServerSyncFailed(format!(
                "the server did not answer the settings query within {} s",
                SYNC_TIMEOUT.as_secs()
            ))
            .to_error())
        }
    }
}
