//! Settings synchronised on each checkout: the tracked settings a client changed are set on the server
//! connection it gets, so every transaction sees the session the client built.

use super::TRACKED_SETTINGS;
use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::protocol::TxStatus;
use crate::refusal::Refusal;
use crate::upstream::UpstreamConn;

/// Sets the tracked settings that differ on this connection from what the client last saw.
pub async fn sync_settings(
    conn: &mut UpstreamConn,
    desired: &[(String, String)],
) -> Result<(), PgError> {
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
        return Ok(());
    }
    match conn
        .run_simple(&[&format!("SELECT {}", calls.join(", "))])
        .await
    {
        Ok((None, TxStatus::Idle)) => Ok(()),
        Ok((Some(fields), _)) => Err(PgError::from_upstream(&fields)),
        Ok((None, _)) => Err(Refusal::ServerLeftInTransaction.to_error()),
        Err(e) => Err(Refusal::ServerSyncFailed(e.to_string()).to_error()),
    }
}
