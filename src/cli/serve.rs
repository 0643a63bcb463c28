//! `pgtenant serve`: the proxy, stopped by SIGINT / SIGTERM, its configuration reloaded on SIGHUP.

use anyhow::{bail, Result};
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

pub(crate) async fn serve(config: Config, path: PathBuf) -> Result<()> {
    if config.auth.hs_secret.is_none()
        && config.auth.public_key_files.is_empty()
        && !config.auth.uses_jwks()
    {
        bail!("no token keys configured: set auth.hs_secret (or PGTENANT_JWT_SECRET), auth.public_key_files, auth.jwks_url, auth.jwks_file or auth.discover");
    }
    let listener = pgtenant::server::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let proxy = Proxy::from_config_file(config, path, shutdown.clone())?;
    tokio::spawn(stop_on_signal(shutdown));
    tokio::spawn(reload_on_sighup(proxy.clone()));
    pgtenant::server::run(listener, proxy).await;
    Ok(())
}

async fn reload_on_sighup(proxy: std::sync::Arc<Proxy>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangup.recv().await.is_some() {
        match proxy.reload() {
            Ok(needs_restart) if needs_restart.is_empty() => {
                tracing::info!("SIGHUP: configuration reloaded")
            }
            Ok(needs_restart) => tracing::warn!(
                ?needs_restart,
                "SIGHUP: reloaded; some changes need a restart"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed; the running configuration stays")
            }
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    pgtenant::stop_signal::wait_for_stop_signal().await;
    tracing::info!("stop signal received");
    shutdown.cancel();
}
