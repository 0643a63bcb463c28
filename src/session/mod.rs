//! One client connection, from its first byte to its end: the handshake (TLS, startup), the login (token,
//! directory), the upstream connection (pool, startup parameters), the relay, and giving the upstream back.
//! Every refusal is an ErrorResponse with a SQLSTATE; no token or password reaches a log or an error.
//!
//! Each stage ends in a value the next one takes: the handshake in `handshake::Handshake` (the client's
//! stream, its startup packet), the login in `LoggedIn` (`Tenant(Ready)`: the user, the first server
//! connection or none, the pool; or `Admin`), the relay in `Ended` (how it ended, the connection held),
//! which `finish` takes to give the connection back and say goodbye. `Who` is what the relay stages share.

use crate::cancel::{ClientKey, UpstreamKey};
use crate::config::PoolMode;
use crate::directory::User;
use crate::error::UserFacing;
use crate::limits::SessionLimits;
use crate::login_guard::TokenFacts;
use crate::metrics::Recorder;
use crate::pool::queue::QueueNotice;
use crate::pool::{Checkout, PoolKey};
use crate::protocol::{self, PgError, ProtocolError, TxStatus};
pub use crate::proxy::Proxy;
use crate::refusal::Refusal;
use crate::relay::{self, RelayEnd};
use crate::sessions::SessionInfo;
use crate::sql::VirtualSchema;
use crate::tls::ClientStream;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod handshake;
mod login;
mod settings;
#[cfg(test)]
mod tests;

use handshake::handshake_and_login;
use settings::send_login_ok;
use settings::Parameters;

/// Serves one client connection to its end. The connection goes into the login's box at once: the
/// session's future, held for the session's whole life, keeps no room for it.
pub fn serve_client(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send {
    tcp.set_nodelay(true).ok();
    // The login's future is boxed: it is large (TLS, token, directory, pool) and done once, so the session's
    // own future, held for the session's whole life, does not carry its room (idle clients cost less).
    let login = {
        let proxy = proxy.clone();
        Box::pin(async move { handshake_and_login(&proxy, tcp, peer).await })
    };
    // A block, not an async fn: an async fn's arguments are copied into its body, and the copies would
    // take room for the session's whole life.
    async move {
        let login_timeout = Duration::from_millis(proxy.config().server.login_timeout_ms);
        let (client, logged_in) = match tokio::time::timeout(login_timeout, login).await {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended during login");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "login timed out");
                return;
            }
        };
        // Not awaited inside the match above: the login's result would then stay in the future beside
        // everything after it.
        let (mut client, ready) = match logged_in {
            LoggedIn::Tenant(ready) => (client, ready),
            LoggedIn::Admin(admin) => {
                Box::pin(crate::admin::serve(proxy, client, admin, peer)).await;
                return;
            }
        };
        // What the session owns moves out of the login's box; what it only reads stays there (on the task's
        // own future it would take room for the session's whole life).
        let user = &ready.user;
        let who = Who {
            user,
            peer: &peer,
            token: &ready.token,
            limits: ready.limits,
            authenticated: ready.authenticated,
            pool: &ready.pool,
        };
        // Session pooling's relay and the end are boxed, like the login: the task's future is as large as the
        // largest it awaits, and a transaction-pooled session, idle or not, would carry their room.
        let ended = match ready.server {
            FirstServer::Connected(checkout) if mode_of(&proxy, user) == PoolMode::Session => {
                Box::pin(serve_session(
                    &proxy,
                    &mut client,
                    *checkout,
                    &who,
                    ready.virtual_schema,
                ))
                .await
            }
            // The virtual schema stays in the login's box too (the relay reads it).
            server => {
                serve_transaction(
                    &proxy,
                    &mut client,
                    server,
                    &who,
                    ready.virtual_schema.as_ref(),
                )
                .await
            }
        };
        let Some(ended) = ended else {
            return;
        };
        Box::pin(finish(&proxy, client, *ended, &who)).await;
    }
}

/// Who a session serves: the user, from where, with which token, under which limits, on which pool.
struct Who<'a> {
    user: &'a User,
    /// The session's own copy stays where the session's future keeps it.
    peer: &'a SocketAddr,
    token: &'a TokenFacts,
    limits: SessionLimits,
    /// AuthenticationOk was sent already (before the NOTICE of a long wait for a server connection).
    authenticated: bool,
    pool: &'a ServerPool,
}

/// Where a session's server connections come from: the tenant's role on its primary or on a replica.
struct ServerPool {
    key: PoolKey,
    target: Arc<crate::upstream::UpstreamTarget>,
    /// The cluster, for restoring a changed role password (on its primary).
    cluster: Arc<crate::clusters::ClusterEntry>,
}

/// How a session's relay ended, for [`finish`].
struct Ended {
    end: RelayEnd,
    /// The server connection the client held at the end, if any.
    held: Option<Checkout>,
    reusable_with_status: Option<TxStatus>,
    requests_in_flight: bool,
    /// pgtenant may add a message of its own to the client's stream (it stands between messages).
    may_add_message: bool,
    bytes_from_client: u64,
    bytes_from_upstream: u64,
    /// Why the session was ended from outside (suspended tenant), if it was.
    reason: Option<PgError>,
}

/// Session pooling: the client keeps the server connection it logged in with.
async fn serve_session(
    proxy: &Proxy,
    client: &mut ClientStream,
    mut checkout: Checkout,
    who: &Who<'_>,
    virtual_schema: Option<VirtualSchema>,
) -> Option<Box<Ended>> {
    let (user, peer) = (who.user, *who.peer);
    let conn = checkout.conn();
    let registration = proxy.cancels.register(Some(conn.process_id));
    registration.set_upstream(Some(UpstreamKey {
        addr: conn.addr,
        process_id: conn.process_id,
        secret_key: conn.secret_key,
        tls: conn.tls.clone(),
    }));
    if let Err(e) = send_login_ok(
        client,
        Parameters::Own(&conn.parameters),
        registration.key,
        who.authenticated,
    )
    .await
    {
        tracing::debug!(%peer, error = %e, "client left before login completed");
        proxy.pools.check_in(checkout, false);
        return None;
    }
    let session = register_session(proxy, who, conn.process_id, client.is_tls());
    // At debug: the login's audit line (info) and "session ended" say who, where and how.
    tracing::debug!(%peer, user = %user.email, tenant = %user.tenant.slug, cluster = %who.pool.key.cluster, backend_pid = conn.process_id, tls = client.is_tls(), mode = "session", "session started");
    let kick = session.signal.kicked();
    let drain = lifetime_drain(proxy, who, &session);
    let recorder = Recorder::new(proxy.metrics.tenant(&user.tenant.slug));
    let idle_timeout = client_idle_timeout(proxy);
    let limits = limit_watch(proxy, who, registration.key);
    let outcome = relay::relay(
        client,
        &mut conn.stream,
        relay::Options {
            initial_status: TxStatus::Idle,
            recorder,
            idle_timeout,
            virtual_schema,
            limits,
        },
        kick,
        drain,
    )
    .await;
    registration.set_upstream(None);
    let reason = session.reason();
    let held = Some(checkout);
    Some(Box::new(Ended {
        may_add_message: outcome.may_add_message,
        end: outcome.end,
        held,
        reusable_with_status: outcome.reusable_with_status,
        requests_in_flight: outcome.requests_in_flight,
        bytes_from_client: outcome.bytes_from_client,
        bytes_from_upstream: outcome.bytes_from_upstream,
        reason,
    }))
}

/// pgtenant's timers of the session's limits (none when no limit is on): a statement past its limit is
/// cancelled through the client's own cancel key.
fn limit_watch(
    proxy: &Proxy,
    who: &Who<'_>,
    key: ClientKey,
) -> Option<crate::limit_watch::LimitWatch> {
    let canceller = crate::limit_watch::Canceller {
        cancels: proxy.cancels.clone(),
        key,
    };
    let tenant = &who.user.tenant.slug;
    crate::limit_watch::LimitWatch::new(
        who.limits,
        Some(canceller),
        tenant,
        Some(proxy.metrics.tenant(tenant)),
    )
}

fn mode_of(proxy: &Proxy, user: &User) -> PoolMode {
    user.tenant.pool_mode.unwrap_or(proxy.config().pool.mode)
}

/// Transaction pooling: the login's server connection (if it took one) goes back to the pool; the client
/// gets one per transaction.
#[allow(clippy::manual_async_fn)] // On purpose: see the block below.
fn serve_transaction<'a>(
    proxy: &'a Proxy,
    client: &'a mut ClientStream,
    server: FirstServer,
    who: &'a Who<'a>,
    virtual_schema: Option<&'a VirtualSchema>,
) -> impl std::future::Future<Output = Option<Box<Ended>>> + 'a {
    // A block, not an async fn: no copies of the arguments beside the relay for the session's whole life.
    async move {
        let user = who.user;
        let registration = proxy.cancels.register(None);
        // In a block: what only the login's last messages need takes no room in the future beside the relay's.
        let desired = {
            let (desired, checkout) = match server {
                FirstServer::Connected(mut checkout) => (
                    std::sync::Arc::new(checkout.conn().parameters.clone()),
                    Some(*checkout),
                ),
                FirstServer::Later(parameters) => (parameters, None),
            };
            // A list made for this login alone is not worth keeping encoded.
            let parameters = match &checkout {
                Some(_) => Parameters::Own(&desired),
                None => Parameters::Shared(&desired),
            };
            let sent = send_login_ok(client, parameters, registration.key, who.authenticated).await;
            if let Some(checkout) = checkout {
                proxy.pools.check_in(checkout, true);
            }
            if let Err(e) = sent {
                tracing::debug!(peer = %who.peer, error = %e, "client left before login completed");
                return None;
            }
            desired
        };
        let session = register_session(proxy, who, 0, client.is_tls());
        // At debug: the login's audit line (info) and "session ended" say who, where and how.
        tracing::debug!(peer = %who.peer, user = %user.email, tenant = %user.tenant.slug, cluster = %who.pool.key.cluster, tls = client.is_tls(), mode = "transaction", "session started");
        let txn = crate::txn::TxnSession {
            pools: &proxy.pools,
            pool: &who.pool.key,
            target: &who.pool.target,
            cancel: &registration,
            desired,
            metrics: proxy.metrics.tenant(&user.tenant.slug),
            idle_timeout: client_idle_timeout(proxy),
            virtual_schema,
            limits: limit_watch(proxy, who, registration.key).map(Box::new),
            queue_notice: QueueNotice::new(&proxy.config(), &user.tenant.slug),
            signal: Some(session.signal.clone()),
        };
        let outcome = txn
            .run(
                client,
                session.signal.kicked(),
                lifetime_drain(proxy, who, &session),
            )
            .await;
        registration.set_upstream(None);
        Some(Box::new(Ended {
            may_add_message: outcome.may_add_message,
            end: outcome.end,
            held: outcome.held,
            reusable_with_status: outcome.reusable_with_status,
            requests_in_flight: outcome.requests_in_flight,
            bytes_from_client: outcome.bytes_from_client,
            bytes_from_upstream: outcome.bytes_from_upstream,
            reason: session.reason(),
        }))
    }
}

fn client_idle_timeout(proxy: &Proxy) -> Option<Duration> {
    match proxy.config().server.client_idle_timeout_secs {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    }
}

/// The relay's drain signal: pgtenant's shutdown, or the session's deadline (token expiry, maximum duration).
fn lifetime_drain<'a>(
    proxy: &Proxy,
    who: &Who<'_>,
    session: &'a crate::sessions::SessionHandle,
) -> impl std::future::Future<Output = ()> + 'a {
    let deadline = crate::lifetime::deadline(
        &proxy.config(),
        who.token.expires_at,
        std::time::SystemTime::now(),
    );
    crate::lifetime::drain_or_deadline(session.signal.drained(), deadline, session)
}

fn register_session(
    proxy: &Proxy,
    who: &Who<'_>,
    backend_pid: i32,
    tls: bool,
) -> crate::sessions::SessionHandle {
    let (user, peer) = (who.user, *who.peer);
    // Ended at once when its tenant is closed or pgtenant's shutdown grace period runs out (`kick_all`).
    proxy.sessions.register(SessionInfo {
        id: 0,
        peer,
        user_email: user.email.clone(),
        tenant_id: user.tenant.id,
        tenant: user.tenant.clone(),
        cluster: who.pool.key.cluster.to_string(),
        backend_pid,
        tls,
        connected_at: std::time::SystemTime::now(),
        user_id: user.id,
        jti: who.token.jti.clone(),
        issued_at: who.token.issued_at,
    })
}

/// Tells the client why its session ended when pgtenant ended it, stops a query nobody waits for, and
/// gives the server connection back clean (rolled back, `DISCARD ALL`) or closes it.
async fn finish(proxy: &Proxy, mut client: ClientStream, ended: Ended, who: &Who<'_>) {
    let (user, peer, tls) = (who.user, *who.peer, client.is_tls());
    let Ended {
        end,
        held,
        reusable_with_status,
        requests_in_flight,
        may_add_message,
        bytes_from_client,
        bytes_from_upstream,
        reason,
    } = ended;
    let mut held = held;
    let mut broken = false;
    match &end {
        RelayEnd::UpstreamGone(error) => {
            broken = true;
            let e = Refusal::ServerConnectionLost {
                why: error.as_ref().map(|e| e.to_string()),
            }
            .to_fatal();
            if may_add_message {
                let _ = send_error(&mut client, &e).await;
            }
        }
        RelayEnd::Protocol { from, error } => {
            broken = true;
            let who = match from {
                relay::Side::Client => "client",
                relay::Side::Upstream => "server",
            };
            tracing::warn!(%peer, %error, "protocol violation by the {who}");
            if *from == relay::Side::Client {
                let _ = send_error(
                    &mut client,
                    &Refusal::InvalidFrontendMessage(error.to_string()).to_fatal(),
                )
                .await;
            }
        }
        RelayEnd::Shutdown | RelayEnd::Drained => {
            // Drained at an idle point for the session's deadline, the connection goes back to the pool.
            broken = matches!(end, RelayEnd::Shutdown) || proxy.shutdown.is_cancelled();
            let reason = reason.unwrap_or_else(|| Refusal::ShuttingDown.to_fatal());
            let _ = send_error(&mut client, &reason).await;
        }
        RelayEnd::IdleTimeout => {
            let _ = send_error(&mut client, &Refusal::IdleSessionTimeout.to_fatal()).await;
        }
        RelayEnd::LimitReached(limit) => {
            // The server connection: rolled back and reset below when it stands idle in the transaction;
            // with a statement running, cancelled and closed (the transaction then rolls back).
            if may_add_message {
                let _ = send_error(&mut client, &limit.error()).await;
            }
        }
        RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) => {}
    }
    let _ = client.shutdown().await;
    drop(client);
    let mut reused = false;
    if let Some(checkout) = held.as_mut() {
        let conn = checkout.conn();
        if broken {
            conn.broken = true;
        }
        if requests_in_flight && !matches!(end, RelayEnd::UpstreamGone(_)) {
            // Nobody waits for that query any more: stop it rather than let it run to its end.
            conn.broken = true;
            let tls = conn.tls.clone();
            if let Err(e) =
                UpstreamConn::cancel(&tls, conn.addr, conn.process_id, conn.secret_key).await
            {
                tracing::debug!(error = %e, "could not cancel an abandoned query");
            }
        }
        reused = match reusable_with_status {
            Some(status) if !conn.broken => match conn.reset(status).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(tenant = %user.tenant.slug, error = %e, "server connection reset failed; closing it");
                    false
                }
            },
            _ => false,
        };
    }
    if let Some(checkout) = held {
        proxy.pools.check_in(checkout, reused);
    }
    tracing::info!(
        peer = %crate::addr_text::AddrText::socket(peer),
        tenant = %user.tenant.slug,
        cluster = %who.pool.key.cluster,
        mode = mode_of(proxy, user).as_str(),
        tls,
        end = ?end,
        bytes_in = bytes_from_client,
        bytes_out = bytes_from_upstream,
        server_reused = reused,
        "session ended"
    );
}

/// Who logged in.
enum LoggedIn {
    Tenant(Box<Ready>),
    Admin(crate::admin::AdminIdentity),
}

/// A logged-in client with its upstream connection, ready for the relay.
struct Ready {
    user: User,
    server: FirstServer,
    /// The schema name the client writes for its tenant's schema, if on.
    virtual_schema: Option<VirtualSchema>,
    token: TokenFacts,
    limits: SessionLimits,
    /// AuthenticationOk was sent already (a long wait for the server connection got a NOTICE).
    authenticated: bool,
    pool: ServerPool,
}

/// The server connection a login leaves the session with.
enum FirstServer {
    Connected(Box<Checkout>),
    /// Transaction pooling, answered from the role's known defaults: the first transaction takes one. These
    /// are the parameters to report.
    Later(crate::upstream::SharedParameters),
}

#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
}

async fn write_all(client: &mut ClientStream, bytes: &[u8]) -> Result<(), PgError> {
    client
        .write_all(bytes)
        .await
        .and(Ok(()))
        .map_err(|e| Refusal::ClientGone(e.to_string()).to_fatal())?;
    client
        .flush()
        .await
        .map_err(|e| Refusal::ClientGone(e.to_string()).to_fatal())
}

async fn send_error<W: tokio::io::AsyncWrite + Unpin>(
    client: &mut W,
    err: &PgError,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    protocol::write::error_response(&mut out, err);
    client.write_all(&out).await?;
    client.flush().await
}
