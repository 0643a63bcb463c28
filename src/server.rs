//! The listener: builds the shared [`Proxy`] from the configuration, accepts client connections under the
//! client cap, runs one task per client, reaps idle server connections, and shuts down cleanly.

use crate::config::Config;
use crate::error::UserFacing;
use crate::protocol::{self};
use crate::refusal::Refusal;
use crate::session::{self, Proxy};
use bytes::BytesMut;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// After the grace period, sessions are cut; this is how long they get to say goodbye.
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, ServerError> {
    TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.server.listen,
            source,
        })
}

/// Serves clients on an already-bound listener until `proxy.shutdown` is cancelled, then lets sessions end
/// (up to a grace period) and returns.
pub async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    let tracker = TaskTracker::new();
    let client_slots = Arc::new(Semaphore::new(proxy.config().server.max_client_connections));
    let reaper = tokio::spawn(reap_idle_connections(proxy.clone()));
    let listener_task = proxy.spawn_directory_listener();
    proxy.spawn_cluster_tasks();
    {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let passwords = crate::credentials::RolePasswords::new(proxy.config().server_secret());
            crate::credentials::secret_check::check_at_start(&proxy.directory, &passwords).await;
        });
    }
    let metrics_task = match proxy.config().server.metrics_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(tokio::spawn(crate::metrics_http::serve(l, proxy.clone()))),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for /metrics; going on without it");
                None
            }
        },
        None => None,
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "pgtenant listening");
    }
    proxy.set_listening(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = proxy.shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = client_slots.clone().try_acquire_owned() else {
            tracker.spawn(refuse_over_limit(
                tcp,
                proxy.config().server.max_client_connections,
            ));
            continue;
        };
        // The slot goes with the session's end; no async block around the session's future (it would
        // keep a second copy of what the session's future holds for its whole life).
        tracker.spawn(session::serve_client(proxy.clone(), tcp, peer).map(move |()| drop(slot)));
    }
    proxy.set_listening(false);
    drop(listener);
    proxy.sessions.drain_all();
    tracker.close();
    tracing::info!(
        sessions = tracker.len(),
        "shutting down: waiting for sessions to end"
    );
    let grace = Duration::from_secs(proxy.config().server.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "sessions still in a transaction after the grace period; closing them"
        );
        proxy.sessions.kick_all();
        let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, tracker.wait()).await;
    }
    reaper.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    listener_task.abort();
    proxy.pools.close_idle(None);
    // Give the goodbyes a moment to leave.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn refuse_over_limit(mut tcp: tokio::net::TcpStream, max: usize) {
    // The client has not said anything yet; PostgreSQL answers the same way when it is full.
    let mut out = BytesMut::new();
    protocol::write::error_response(&mut out, &Refusal::TooManyClients { limit: max }.to_fatal());
    let _ = tcp.write_all(&out).await;
    let _ = tcp.shutdown().await;
}

async fn reap_idle_connections(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        proxy.pools.reap_idle();
        proxy.metrics.sample();
    }
}
