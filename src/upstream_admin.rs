//! A connection to the upstream PostgreSQL as the configured admin role (`upstream.admin_user`), with TLS as
//! `upstream.sslmode` says: what the CLI commands, `pgtenant dev` and the tests run their directory and DDL
//! statements on.

use crate::config::Config;

/// Why an admin connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AdminConnectError {
    #[error(transparent)]
    Tls(#[from] crate::upstream_tls::UpstreamTlsError),
    #[error("{}", crate::upstream_tls::error_chain(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// A connection as the configured admin role; its connection task runs on the current runtime.
pub async fn connect_admin(config: &Config) -> Result<tokio_postgres::Client, AdminConnectError> {
    let tls = crate::upstream_tls::UpstreamTls::from_config(&config.upstream)?;
    let (client, connection) = config.admin_pg_config().connect(tls.postgres()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}
