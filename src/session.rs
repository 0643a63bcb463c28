//! One client connection, from its first byte to its end: the handshake (TLS, startup), the login (token,
//! directory), the upstream connection (pool, startup parameters), the relay, and giving the upstream back.
//! Every refusal is an ErrorResponse with a SQLSTATE; no token or password reaches a log or an error.

use crate::auth::audit::{LoginAttempt, Reason};
use crate::cancel::{ClientKey, UpstreamKey};
use crate::clusters::route::{self, TARGET_SESSION_ATTRS_PARAMETER};
use crate::config::PoolMode;
use crate::config::TargetSessionAttrs;
use crate::directory::{quote_literal, TenantStatus, User};
use crate::limits::queue::QueueNotice;
use crate::limits::SessionLimits;
use crate::login_guard::{self, TokenFacts};
use crate::metrics::Recorder;
use crate::pool::{Checkout, PoolError, PoolKey};
use crate::protocol::{
    self, sqlstate, tag, PgError, ProtocolError, StartupPacket, StartupParams, TxStatus,
};
pub use crate::proxy::Proxy;
use crate::relay::{self, RelayEnd};
use crate::sessions::SessionInfo;
use crate::sql::VirtualSchema;
use crate::tenancy::credentials::RolePasswords;
use crate::tls::{ClientStream, ALPN_POSTGRESQL};
use crate::upstream::{UpstreamConn, UpstreamError};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

/// Startup parameters that are not session settings and so are not passed on with `set_config`.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Serves one client connection to its end.
pub async fn serve_client(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr) {
    tcp.set_nodelay(true).ok();
    let login_timeout = Duration::from_millis(proxy.config().server.login_timeout_ms);
    let login = tokio::time::timeout(login_timeout, handshake_and_login(&proxy, tcp, peer)).await;
    let (mut client, ready) = match login {
        Ok(Ok(Some((client, LoggedIn::Tenant(ready))))) => (client, *ready),
        Ok(Ok(Some((client, LoggedIn::Admin(admin))))) => {
            crate::admin::serve(proxy, client, admin, peer).await;
            return;
        }
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
    let Ready {
        user,
        server,
        virtual_schema,
        token,
        limits,
        authenticated,
        pool,
    } = ready;
    let who = Who {
        user: &user,
        peer,
        token: &token,
        limits,
        authenticated,
        pool: &pool,
    };
    let ended = match server {
        FirstServer::Connected(checkout) if mode_of(&proxy, &user) == PoolMode::Session => {
            serve_session(&proxy, &mut client, *checkout, &who, virtual_schema).await
        }
        server => serve_transaction(&proxy, &mut client, server, &who, virtual_schema).await,
    };
    let Some(ended) = ended else {
        return;
    };
    finish(&proxy, client, ended, &user, peer).await;
}

/// Who a session serves: the user, from where, with which token, under which limits, on which pool.
struct Who<'a> {
    user: &'a User,
    peer: SocketAddr,
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
) -> Option<Ended> {
    let (user, peer) = (who.user, who.peer);
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
        &conn.parameters,
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
    tracing::info!(%peer, user = %user.email, tenant = %user.tenant.slug, cluster = %who.pool.key.cluster, backend_pid = conn.process_id, tls = client.is_tls(), mode = "session", "session started");
    let kick = session.cancel.clone().cancelled_owned();
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
    Some(Ended {
        may_add_message: outcome.may_add_message,
        end: outcome.end,
        held,
        reusable_with_status: outcome.reusable_with_status,
        requests_in_flight: outcome.requests_in_flight,
        bytes_from_client: outcome.bytes_from_client,
        bytes_from_upstream: outcome.bytes_from_upstream,
        reason,
    })
}

/// pgtenant's timers of the session's limits (none when no limit is on): a statement past its limit is
/// cancelled through the client's own cancel key.
fn limit_watch(
    proxy: &Proxy,
    who: &Who<'_>,
    key: ClientKey,
) -> Option<crate::limits::watch::LimitWatch> {
    let canceller = crate::limits::watch::Canceller {
        cancels: proxy.cancels.clone(),
        key,
    };
    let tenant = &who.user.tenant.slug;
    crate::limits::watch::LimitWatch::new(
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
async fn serve_transaction(
    proxy: &Proxy,
    client: &mut ClientStream,
    server: FirstServer,
    who: &Who<'_>,
    virtual_schema: Option<VirtualSchema>,
) -> Option<Ended> {
    let (user, peer) = (who.user, who.peer);
    let registration = proxy.cancels.register(None);
    let (desired, checkout) = match server {
        FirstServer::Connected(mut checkout) => {
            (checkout.conn().parameters.clone(), Some(*checkout))
        }
        FirstServer::Later(parameters) => (parameters, None),
    };
    let sent = send_login_ok(client, &desired, registration.key, who.authenticated).await;
    if let Some(checkout) = checkout {
        proxy.pools.check_in(checkout, true);
    }
    if let Err(e) = sent {
        tracing::debug!(%peer, error = %e, "client left before login completed");
        return None;
    }
    let session = register_session(proxy, who, 0, client.is_tls());
    tracing::info!(%peer, user = %user.email, tenant = %user.tenant.slug, cluster = %who.pool.key.cluster, tls = client.is_tls(), mode = "transaction", "session started");
    let txn = crate::txn::TxnSession {
        pools: &proxy.pools,
        pool: &who.pool.key,
        target: &who.pool.target,
        cancel: &registration,
        desired,
        metrics: proxy.metrics.tenant(&user.tenant.slug),
        idle_timeout: client_idle_timeout(proxy),
        virtual_schema,
        limits: limit_watch(proxy, who, registration.key),
        queue_notice: QueueNotice::new(&proxy.config(), &user.tenant.slug),
    };
    let outcome = txn
        .run(
            client,
            session.cancel.clone().cancelled_owned(),
            lifetime_drain(proxy, who, &session),
        )
        .await;
    registration.set_upstream(None);
    Some(Ended {
        may_add_message: outcome.may_add_message,
        end: outcome.end,
        held: outcome.held,
        reusable_with_status: outcome.reusable_with_status,
        requests_in_flight: outcome.requests_in_flight,
        bytes_from_client: outcome.bytes_from_client,
        bytes_from_upstream: outcome.bytes_from_upstream,
        reason: session.reason(),
    })
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
    crate::lifetime::drain_or_deadline(
        proxy.shutdown.child_token().cancelled_owned(),
        deadline,
        session,
    )
}

fn register_session(
    proxy: &Proxy,
    who: &Who<'_>,
    backend_pid: i32,
    tls: bool,
) -> crate::sessions::SessionHandle {
    let (user, peer) = (who.user, who.peer);
    // Ended at once when its tenant is closed or pgtenant's shutdown grace period runs out (`force_close`).
    proxy.sessions.register(
        SessionInfo {
            id: 0,
            peer,
            user_email: user.email.clone(),
            tenant_id: user.tenant.id,
            tenant_slug: user.tenant.slug.clone(),
            role: user.tenant.role.as_str().to_string(),
            cluster: who.pool.key.cluster.to_string(),
            backend_pid,
            tls,
            connected_at: std::time::SystemTime::now(),
            user_id: user.id,
            jti: who.token.jti.clone(),
            issued_at: who.token.issued_at,
        },
        &proxy.force_close,
    )
}

/// Tells the client why its session ended when pgtenant ended it, stops a query nobody waits for, and
/// gives the server connection back clean (rolled back, `DISCARD ALL`) or closes it.
async fn finish(
    proxy: &Proxy,
    mut client: ClientStream,
    ended: Ended,
    user: &User,
    peer: SocketAddr,
) {
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
            let e = PgError::fatal(sqlstate::CONNECTION_FAILURE, "server connection lost")
                .with_detail(
                    error
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "the database server closed the connection".into()),
                );
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
                    &PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid frontend message: {error}"),
                    ),
                )
                .await;
            }
        }
        RelayEnd::Shutdown | RelayEnd::Drained => {
            // Drained at an idle point for the session's deadline, the connection goes back to the pool.
            broken = matches!(end, RelayEnd::Shutdown) || proxy.shutdown.is_cancelled();
            let reason = reason.unwrap_or_else(|| {
                PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "pgtenant is shutting down")
            });
            let _ = send_error(&mut client, &reason).await;
        }
        RelayEnd::IdleTimeout => {
            let _ = send_error(
                &mut client,
                &PgError::fatal(
                    sqlstate::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout",
                ),
            )
            .await;
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
        %peer,
        tenant = %user.tenant.slug,
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
    Later(Vec<(String, String)>),
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

async fn handshake_and_login(
    proxy: &Proxy,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Option<(ClientStream, LoggedIn)>, LoginError> {
    let Some((mut client, params)) = handshake(proxy, tcp).await? else {
        return Ok(None);
    };
    let mut attempt = LoginAttempt::new(peer.ip());
    let result = login(proxy, &mut client, &params, &mut attempt).await;
    login_guard::record(proxy, &mut attempt, result.as_ref().err());
    match result {
        Ok(ready) => Ok(Some((client, ready))),
        Err(err) => {
            tracing::info!(%peer, code = %err.code, reason = %err.message, "login refused");
            let _ = send_error(&mut client, &err).await;
            Err(LoginError::Refused(err.message))
        }
    }
}

/// Reads the first packets: SSLRequest / GSSENCRequest / direct TLS, then the StartupMessage. Cancel
/// requests are served here and end the connection (`Ok(None)`).
async fn handshake(
    proxy: &Proxy,
    mut tcp: TcpStream,
) -> Result<Option<(ClientStream, StartupParams)>, LoginError> {
    // PostgreSQL 17 clients may open TLS directly (sslnegotiation=direct): a TLS ClientHello starts 0x16.
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(ProtocolError::Io)? == 1 && first[0] == 0x16 {
        let Some(acceptor) = &proxy.tls() else {
            return Err(LoginError::Refused(
                "direct TLS without TLS configured".into(),
            ));
        };
        let tls = acceptor.accept(tcp).await.map_err(LoginError::Tls)?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(LoginError::Refused(
                "direct TLS without ALPN postgresql".into(),
            ));
        }
        let mut client = ClientStream::Tls(Box::new(tls));
        return startup_after_tls(proxy, &mut client)
            .await
            .map(|p| p.map(|p| (client, p)));
    }
    loop {
        match read_first_packet(&mut tcp).await? {
            StartupPacket::Ssl => match &proxy.tls() {
                Some(acceptor) => {
                    tcp.write_all(b"S").await.map_err(ProtocolError::Io)?;
                    // Only bytes read after 'S' reach rustls: nothing was read ahead of the handshake.
                    let tls = acceptor.accept(tcp).await.map_err(LoginError::Tls)?;
                    let mut client = ClientStream::Tls(Box::new(tls));
                    return startup_after_tls(proxy, &mut client)
                        .await
                        .map(|p| p.map(|p| (client, p)));
                }
                None => tcp.write_all(b"N").await.map_err(ProtocolError::Io)?,
            },
            StartupPacket::GssEnc => tcp.write_all(b"N").await.map_err(ProtocolError::Io)?,
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                forward_cancel(
                    proxy,
                    ClientKey {
                        process_id,
                        secret_key,
                    },
                )
                .await;
                return Ok(None);
            }
            StartupPacket::Startup(params) => return Ok(Some((ClientStream::Plain(tcp), params))),
        }
    }
}

async fn startup_after_tls(
    proxy: &Proxy,
    client: &mut ClientStream,
) -> Result<Option<StartupParams>, LoginError> {
    match read_first_packet(client).await? {
        StartupPacket::Startup(params) => Ok(Some(params)),
        StartupPacket::Cancel {
            process_id,
            secret_key,
        } => {
            forward_cancel(
                proxy,
                ClientKey {
                    process_id,
                    secret_key,
                },
            )
            .await;
            Ok(None)
        }
        StartupPacket::Ssl | StartupPacket::GssEnc => {
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "encryption request inside an encrypted connection",
            );
            let _ = send_error(client, &e).await;
            Err(LoginError::Refused(e.message))
        }
    }
}

/// Reads a StartupMessage, SSLRequest, GSSENCRequest or CancelRequest. One pgtenant cannot read gets a FATAL
/// ErrorResponse saying why before the connection closes (0A000 for a protocol version other than 3, 08P01
/// for a malformed packet), as PostgreSQL does for most of them; a connection that closed gets nothing.
async fn read_first_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<StartupPacket, ProtocolError> {
    let result = protocol::read_startup_packet(stream).await;
    if let Err(e) = &result {
        let code = match e {
            ProtocolError::UnsupportedProtocol { .. } => Some(sqlstate::FEATURE_NOT_SUPPORTED),
            ProtocolError::BadStartupLength(_) | ProtocolError::BadStartup(_) => {
                Some(sqlstate::PROTOCOL_VIOLATION)
            }
            _ => None,
        };
        if let Some(code) = code {
            tracing::info!(reason = %e, "first packet refused");
            let mut out = BytesMut::new();
            protocol::write::error_response(&mut out, &PgError::fatal(code, e.to_string()));
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        }
    }
    result
}

async fn forward_cancel(proxy: &Proxy, key: ClientKey) {
    // As PostgreSQL, say nothing back either way.
    match proxy.cancels.lookup(key) {
        Some(ticket) => {
            let upstream = &ticket.upstream;
            if let Err(e) = UpstreamConn::cancel(
                &upstream.tls,
                upstream.addr,
                upstream.process_id,
                upstream.secret_key,
            )
            .await
            {
                tracing::warn!(error = %e, "could not forward a cancel request upstream");
            } else {
                tracing::info!(
                    backend_pid = upstream.process_id,
                    "cancel request forwarded"
                );
            }
        }
        None => tracing::info!("cancel request with an unknown key ignored"),
    }
}

/// Authenticates the client and takes an upstream connection for its tenant.
async fn login(
    proxy: &Proxy,
    client: &mut ClientStream,
    params: &StartupParams,
    attempt: &mut LoginAttempt,
) -> Result<LoggedIn, PgError> {
    let peer = attempt.peer;
    attempt.set_user_name(params.get("user").unwrap_or_default());
    if params.minor_version > 0 || !params.unsupported_options.is_empty() {
        let mut out = BytesMut::new();
        protocol::write::negotiate_protocol_version(&mut out, 0, &params.unsupported_options);
        write_all(client, &out).await?;
    }
    if params
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgtenant does not serve replication connections",
        ));
    }
    let requested = params
        .get("database")
        .or(params.get("user"))
        .unwrap_or_default();
    let option = startup_settings(params)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == TARGET_SESSION_ATTRS_PARAMETER)
        .map(|(_, v)| v);
    let request = route::request(requested, option.as_deref(), &proxy.config().replicas)
        .map_err(|m| PgError::fatal(sqlstate::INVALID_PARAMETER_VALUE, m))?;
    let database = request.database.as_str();
    if plaintext_password_refused(
        client.is_tls(),
        peer,
        proxy.config().server.allow_plaintext_password,
    ) {
        let e = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "pgtenant refuses to take a token over an unencrypted connection",
        )
        .with_hint("connect with sslmode=require");
        return Err(attempt.refuse(Reason::Plaintext, e));
    }
    login_guard::check_limits(proxy, attempt)?;

    let token = read_token(proxy, client).await?;
    let claims = match proxy.verifier().verify_login(&token).await {
        Ok(claims) => claims,
        Err(e) => return Err(login_guard::token_refused(attempt, &e, &token)),
    };
    drop(token);
    login_guard::check_token(proxy, attempt, &claims).await?;

    if database == proxy.config().server.admin_database {
        if !claims.is_admin {
            return Err(PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "this token does not grant access to the pgtenant admin channel",
            )
            .with_hint("the admin channel needs a token whose admin claim is true (pgtenant token --admin)"));
        }
        return Ok(LoggedIn::Admin(crate::admin::AdminIdentity {
            name: claims
                .email
                .clone()
                .unwrap_or_else(|| claims.identity.value().to_string()),
            token_expires_at: claims.expires_at,
        }));
    }

    let memberships = proxy
        .directory
        .lookup(&claims.identity)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "directory lookup failed");
            let refusal = PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                "pgtenant cannot reach its directory database",
            );
            // Why it cannot connect (server down, TLS refused) helps; a failed query's text stays in the log.
            match e {
                crate::directory::DirectoryError::Unavailable(reason) => {
                    refusal.with_detail(reason)
                }
                _ => refusal,
            }
        })?;
    let mut user = crate::directory::choose_membership(
        memberships,
        &claims.organization,
        proxy.config().auth.org_claim.as_deref().unwrap_or_default(),
        database,
    )
    .map_err(|e| PgError::fatal(e.sqlstate(), e.to_string()))?;
    attempt.tenant = Some(user.tenant.slug.clone());
    attempt.user_id = Some(user.id);
    if user.disabled {
        let e = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("user \"{}\" is disabled", user.email),
        );
        return Err(attempt.refuse(Reason::DisabledUser, e));
    }
    match user.tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => {
            let e = PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("organization \"{}\" is suspended", user.tenant.name),
            );
            return Err(attempt.refuse(Reason::TenantClosed, e));
        }
        TenantStatus::Archived => {
            let e = PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("organization \"{}\" was removed", user.tenant.name),
            );
            return Err(attempt.refuse(Reason::TenantClosed, e));
        }
        TenantStatus::Provisioning => {
            return Err(PgError::fatal(
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "organization \"{}\" is still being set up",
                    user.tenant.name
                ),
            ))
        }
    }
    let config = proxy.config();
    let accepted = [
        config.upstream.database.as_str(),
        user.tenant.slug.as_str(),
        user.tenant.schema.as_str(),
        params.get("user").unwrap_or_default(),
        "",
    ];
    if !accepted.contains(&database) {
        return Err(PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )
        .with_hint(format!(
            "connect to database \"{}\" (or your organization's name)",
            proxy.config().upstream.database
        )));
    }

    let max_clients = proxy.config().pool.max_clients_per_tenant;
    if proxy.sessions.count_for(user.tenant.id) >= max_clients {
        return Err(PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "too many clients for organization \"{}\" (limit {max_clients})",
                user.tenant.name
            ),
        ));
    }
    login_guard::check_user(proxy, attempt, &user, &claims)?;
    let virtual_schema = virtual_schema_for(&config, &user.tenant, params)?;
    let token = TokenFacts::of(&claims);
    let limits = SessionLimits::resolve(&config.limits, &user.tenant.limits);
    proxy.pools.wait_unpaused(&user.tenant.role).await;
    // A login held by a tenant move's switch read the directory before it: the tenant is on the target now.
    let home = PoolKey::new(user.tenant.cluster.clone(), user.tenant.role.clone());
    if let Some((moved, _)) = proxy.pools.moved.current(&home) {
        user.tenant.cluster = moved.cluster;
    }
    let mut pool = server_pool(proxy, &user, request.attrs).await?;
    proxy
        .pools
        .set_server_settings(&pool.key, &pool.target, limits.server_settings());
    let transaction_pooling =
        user.tenant.pool_mode.unwrap_or(config.pool.mode) == PoolMode::Transaction;
    if transaction_pooling {
        if let Some(parameters) = login_without_server(proxy, &pool, params) {
            let server = FirstServer::Later(parameters);
            return Ok(LoggedIn::Tenant(Box::new(Ready {
                user,
                server,
                virtual_schema,
                token,
                limits,
                authenticated: false,
                pool,
            })));
        }
    }
    let wait_started = std::time::Instant::now();
    // A long wait gets a NOTICE; libpq and the drivers read one only after AuthenticationOk.
    let mut authenticated = false;
    let queue_notice = QueueNotice::new(&proxy.config(), &user.tenant.slug);
    let acquired = loop {
        let acquired = crate::limits::queue::wait_with_notice(
            acquire_upstream(proxy, &user, &pool),
            queue_notice.after,
            async || {
                let mut out = BytesMut::new();
                if !authenticated {
                    protocol::write::authentication_ok(&mut out);
                }
                protocol::write::notice_response(
                    &mut out,
                    &queue_notice.notice(&proxy.pools, &pool.key),
                );
                authenticated = true;
                let _ = write_all(client, &out).await;
            },
        )
        .await;
        match acquired {
            // A replica that cannot be reached after all: `prefer-standby` goes on with the primary.
            Err(PoolError::Upstream(e))
                if request.attrs == TargetSessionAttrs::PreferStandby
                    && pool.cluster.is_replica() =>
            {
                tracing::info!(tenant = %user.tenant.slug, replica = %pool.key.cluster, error = %e, "replica unreachable; the session goes to the primary");
                pool = primary_pool(proxy, &user).await?;
                proxy
                    .pools
                    .set_server_settings(&pool.key, &pool.target, limits.server_settings());
            }
            other => break other,
        }
    };
    let mut checkout = acquired.map_err(|e| {
        tracing::warn!(tenant = %user.tenant.slug, cluster = %pool.key.cluster, error = %e, "no server connection for a client");
        e.to_client_error()
    })?;
    note_wait(proxy, &user, wait_started.elapsed());
    if transaction_pooling {
        // Transaction pooling does not reset connections between clients: start this client from the
        // role's defaults, not from the settings an earlier client left.
        if let Err(e) = checkout.conn().run_simple(&["RESET ALL"]).await {
            proxy.pools.check_in(checkout, false);
            return Err(e.to_client_error());
        }
        proxy
            .pools
            .remember_defaults(&pool.key, &checkout.conn().parameters);
    }
    if let Err(e) = apply_client_settings(checkout.conn(), params, virtual_schema.as_ref()).await {
        let reusable = checkout.conn().reset(TxStatus::Idle).await.is_ok();
        proxy.pools.check_in(checkout, reusable);
        return Err(e);
    }
    let server = FirstServer::Connected(Box::new(checkout));
    Ok(LoggedIn::Tenant(Box::new(Ready {
        user,
        server,
        virtual_schema,
        token,
        limits,
        authenticated,
        pool,
    })))
}

/// The pool of the tenant's role on its primary.
async fn primary_pool(proxy: &Proxy, user: &User) -> Result<ServerPool, PgError> {
    let cluster = proxy.cluster(&user.tenant.cluster).await.map_err(|e| {
        tracing::error!(tenant = %user.tenant.slug, cluster = %user.tenant.cluster, error = %e, "the tenant's cluster is not usable");
        PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("pgtenant cannot reach the cluster of organization \"{}\"", user.tenant.name),
        )
        .with_detail(e.to_string())
    })?;
    pool_on(cluster, user)
}

fn pool_on(
    cluster: Arc<crate::clusters::ClusterEntry>,
    user: &User,
) -> Result<ServerPool, PgError> {
    let target = cluster.target().map_err(|e| {
        PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            "pgtenant cannot reach the tenant's cluster",
        )
        .with_detail(e.to_string())
    })?;
    Ok(ServerPool {
        key: PoolKey::new(cluster.name().clone(), user.tenant.role.clone()),
        target,
        cluster,
    })
}

/// Where the session's connections go: its primary, or a replica of it when the session asks for one and
/// one is fit (see `clusters::route`).
async fn server_pool(
    proxy: &Proxy,
    user: &User,
    attrs: TargetSessionAttrs,
) -> Result<ServerPool, PgError> {
    let primary = primary_pool(proxy, user).await?;
    if attrs == TargetSessionAttrs::Any {
        return Ok(primary);
    }
    let max_lag = Duration::from_millis(proxy.config().replicas.max_replica_lag_ms);
    match route::pick_replica(
        &proxy.clusters.current(),
        &proxy.replicas,
        &user.tenant.cluster,
        max_lag,
    ) {
        Ok((replica, lag_ms)) => {
            tracing::debug!(tenant = %user.tenant.slug, replica = %replica.name(), lag_ms, "session goes to a replica");
            pool_on(replica, user)
        }
        Err(why) if attrs == TargetSessionAttrs::PreferStandby => {
            tracing::info!(tenant = %user.tenant.slug, cluster = %user.tenant.cluster, reason = %why, "no replica fit; the session goes to the primary");
            Ok(primary)
        }
        Err(why) => Err(PgError::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "no replica of cluster \"{}\" can take a read-only session",
                user.tenant.cluster
            ),
        )
        .with_detail(why)
        .with_hint("ask for prefer-standby to fall back to the primary, or try again")),
    }
}

/// How long the parameters of a role's defaults are trusted for logins without a server connection (a
/// later `ALTER ROLE … SET` shows within this time).
const ROLE_DEFAULTS_MAX_AGE: Duration = Duration::from_secs(60);

/// The parameters to report to a transaction-pooled client without taking a server connection: the role's
/// defaults, as seen lately, when the client asks for nothing a server must check or change (no
/// `options`; at most an `application_name` that PostgreSQL keeps as it is, and a `client_encoding` equal
/// to the default). Otherwise `None`, and the login takes a server connection to apply and check them.
fn login_without_server(
    proxy: &Proxy,
    pool: &ServerPool,
    params: &StartupParams,
) -> Option<Vec<(String, String)>> {
    let mut parameters = proxy
        .pools
        .defaults(&pool.key, &pool.target, ROLE_DEFAULTS_MAX_AGE)?;
    for (name, value) in &params.params {
        match name.as_str() {
            "user" | "database" | VIRTUAL_SCHEMA_PARAMETER | TARGET_SESSION_ATTRS_PARAMETER => {}
            "application_name"
                if value.len() < 64 && value.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
            {
                match parameters.iter_mut().find(|(n, _)| n == "application_name") {
                    Some(entry) => entry.1 = value.clone(),
                    None => parameters.push((name.clone(), value.clone())),
                }
            }
            "client_encoding"
                if parameters
                    .iter()
                    .any(|(n, v)| n == "client_encoding" && v == value) => {}
            _ => return None,
        }
    }
    Some(parameters)
}

fn note_wait(proxy: &Proxy, user: &User, waited: Duration) {
    if waited >= Duration::from_millis(1) {
        proxy.metrics.tenant(&user.tenant.slug).add_wait(waited);
    }
}

/// Takes a server connection for the user's tenant from `pool`. If the tenant role's password no longer
/// works (the tenant changed it), it is restored from the server secret on the cluster's primary and the
/// login tried once more.
async fn acquire_upstream(
    proxy: &Proxy,
    user: &User,
    pool: &ServerPool,
) -> Result<crate::pool::Checkout, PoolError> {
    let role = &user.tenant.role;
    match proxy.pools.acquire(&pool.key, &pool.target).await {
        Err(PoolError::Upstream(UpstreamError::Refused(fields)))
            if fields.code == sqlstate::INVALID_PASSWORD =>
        {
            let passwords = RolePasswords::new(proxy.config().server_secret());
            let verifier = passwords.verifier_for(role.as_str());
            let restored = if user.tenant.cluster.is_default() {
                restore_on_default(proxy, user, &passwords, &verifier).await
            } else {
                restore_on_cluster(proxy, user, &passwords, &verifier).await
            };
            if !restored {
                return Err(PoolError::Upstream(UpstreamError::Refused(fields)));
            }
            proxy.pools.acquire(&pool.key, &pool.target).await
        }
        other => other,
    }
}

/// Restores the tenant role's password on the default cluster; false if it must not or could not.
async fn restore_on_default(
    proxy: &Proxy,
    user: &User,
    passwords: &RolePasswords,
    verifier: &str,
) -> bool {
    let role = &user.tenant.role;
    if crate::tenancy::secret_check::is_wrong(&proxy.directory, passwords).await {
        // Restoring would lock out every pgtenant that has the right secret.
        tracing::error!(tenant = %user.tenant.slug, %role, "upstream login refused, and upstream.server_secret differs from the one the tenants were set up with (role pgtenant_secret_check): not restoring the role's password");
        return false;
    }
    tracing::warn!(tenant = %user.tenant.slug, %role, "tenant role password was changed outside pgtenant; restoring it");
    if let Err(e) = proxy.directory.restore_role_password(role, verifier).await {
        tracing::error!(error = %e, "could not restore the tenant role's password");
        return false;
    }
    true
}

/// Restores the tenant role's password on the tenant's cluster (its primary), checked against that
/// cluster's `pgtenant_secret_check` role; false if it must not or could not.
async fn restore_on_cluster(
    proxy: &Proxy,
    user: &User,
    passwords: &RolePasswords,
    verifier: &str,
) -> bool {
    use crate::tenancy::secret_check::{check_on, restore_role_password_on, SecretCheck};
    let role = &user.tenant.role;
    let restored = async {
        let primary = proxy.cluster(&user.tenant.cluster).await?;
        let admin = primary.connect_admin().await?;
        if check_on(&admin, passwords).await? == SecretCheck::Differs {
            tracing::error!(tenant = %user.tenant.slug, %role, cluster = %user.tenant.cluster, "upstream login refused, and upstream.server_secret differs from the one the cluster's tenants were set up with (role pgtenant_secret_check): not restoring the role's password");
            return Ok(false);
        }
        tracing::warn!(tenant = %user.tenant.slug, %role, cluster = %user.tenant.cluster, "tenant role password was changed outside pgtenant; restoring it");
        restore_role_password_on(&admin, role, verifier).await?;
        Ok::<bool, crate::clusters::ClusterError>(true)
    };
    match restored.await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "could not restore the tenant role's password");
            false
        }
    }
}

/// A token sent in clear over a network (not loopback) can be replayed by whoever sees it: refused unless
/// the operator allows it.
fn plaintext_password_refused(tls: bool, peer: std::net::IpAddr, allowed: bool) -> bool {
    let loopback = match peer {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    };
    !tls && !loopback && !allowed
}

/// Asks for the password and reads it by hand, so a token up to `max_token_bytes` passes (pgwire's decoder
/// stops at 10,000 bytes) and a larger one is refused before it is buffered.
async fn read_token(proxy: &Proxy, client: &mut ClientStream) -> Result<String, PgError> {
    let mut out = BytesMut::new();
    protocol::write::authentication_cleartext(&mut out);
    write_all(client, &out).await?;
    let limit = proxy.config().auth.max_token_bytes + 1;
    let (msg_tag, body) = match protocol::read_message(client, limit).await {
        Ok(m) => m,
        Err(ProtocolError::BadFrameLength { .. }) => {
            return Err(PgError::fatal(
                sqlstate::INVALID_PASSWORD,
                "token rejected: the token is too large",
            ))
        }
        Err(e) => return Err(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
    };
    if msg_tag != tag::PASSWORD {
        return Err(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "expected a password message",
        ));
    }
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8(body[..end].to_vec()).map_err(|_| {
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            "token rejected: the token is not valid UTF-8",
        )
    })
}

/// Passes the client's startup parameters (application_name, client_encoding, DateStyle, TimeZone, `-c`
/// options …) to the upstream session, as PostgreSQL would have applied them at startup.
async fn apply_client_settings(
    conn: &mut UpstreamConn,
    params: &StartupParams,
    virtual_schema: Option<&VirtualSchema>,
) -> Result<(), PgError> {
    let settings: Vec<(String, String)> = startup_settings(params)?
        .into_iter()
        .filter(|(k, _)| k != VIRTUAL_SCHEMA_PARAMETER && k != TARGET_SESSION_ATTRS_PARAMETER)
        .map(|(k, v)| match virtual_schema {
            // search_path naming the virtual schema means the tenant's.
            Some(vs) if k.eq_ignore_ascii_case("search_path") => {
                let v = vs.rewrite_list(&v).unwrap_or(v);
                (k, v)
            }
            _ => (k, v),
        })
        .collect();
    if settings.is_empty() {
        return Ok(());
    }
    let calls: Vec<String> = settings
        .iter()
        .map(|(k, v)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(k),
                quote_literal(v)
            )
        })
        .collect();
    let sql = format!("SELECT {}", calls.join(", "));
    match conn.run_simple(&[&sql]).await {
        Ok((None, _)) => Ok(()),
        Ok((Some(fields), _)) => Err(PgError {
            severity: protocol::Severity::Fatal,
            ..PgError::from_upstream(&fields)
        }),
        Err(e) => Err(e.to_client_error()),
    }
}

/// The client's startup settings: its startup parameters that are settings, then `-c` options.
fn startup_settings(params: &StartupParams) -> Result<Vec<(String, String)>, PgError> {
    let mut settings: Vec<(String, String)> = params
        .params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(options) = params.get("options") {
        settings.extend(parse_options(options)?);
    }
    Ok(settings)
}

/// Startup parameter (or `-c` option) that picks the session's virtual schema: `off`, or a name.
const VIRTUAL_SCHEMA_PARAMETER: &str = "pgtenant.virtual_schema";

/// The session's virtual schema: the client's choice at startup, else the tenant's, else the config's.
fn virtual_schema_for(
    config: &crate::config::Config,
    tenant: &crate::directory::Tenant,
    params: &StartupParams,
) -> Result<Option<VirtualSchema>, PgError> {
    let chosen = startup_settings(params)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == VIRTUAL_SCHEMA_PARAMETER)
        .map(|(_, v)| v);
    let name = match chosen.as_deref() {
        Some("off") | Some("") => return Ok(None),
        Some(name) => name.to_string(),
        None => match tenant
            .virtual_schema
            .as_deref()
            .or(config.tenancy.virtual_schema.as_deref())
        {
            None | Some("") => return Ok(None),
            Some(name) => name.to_string(),
        },
    };
    Ok(Some(VirtualSchema::new(&name, tenant.schema.as_str())))
}

/// `options` as libpq sends it: `-c name=value` pairs (also `--name=value`), backslash escapes spaces.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let assignment = if w == "-c" {
            iter.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        let Some((name, value)) = assignment.as_deref().and_then(|a| a.split_once('=')) else {
            return Err(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid command-line argument in options: {w}"),
            ));
        };
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

async fn send_login_ok(
    client: &mut ClientStream,
    parameters: &[(String, String)],
    key: ClientKey,
    authenticated: bool,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    if !authenticated {
        protocol::write::authentication_ok(&mut out);
    }
    for (name, value) in parameters {
        protocol::write::parameter_status(&mut out, name, value);
    }
    protocol::write::backend_key_data(&mut out, key.process_id, key.secret_key);
    protocol::write::ready_for_query(&mut out, TxStatus::Idle);
    let mut writer = BufWriter::new(client);
    writer.write_all(&out).await?;
    writer.flush().await
}

async fn write_all(client: &mut ClientStream, bytes: &[u8]) -> Result<(), PgError> {
    client
        .write_all(bytes)
        .await
        .and(Ok(()))
        .map_err(|e| PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string()))
}

async fn send_error(client: &mut ClientStream, err: &PgError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    protocol::write::error_response(&mut out, err);
    client.write_all(&out).await?;
    client.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_tokens_only_from_loopback_unless_allowed() {
        let lan: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        let mapped_loopback: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert!(plaintext_password_refused(false, lan, false));
        assert!(!plaintext_password_refused(true, lan, false));
        assert!(!plaintext_password_refused(false, lan, true));
        assert!(!plaintext_password_refused(
            false,
            "127.0.0.1".parse().expect("ip"),
            false
        ));
        assert!(!plaintext_password_refused(
            false,
            "::1".parse().expect("ip"),
            false
        ));
        assert!(!plaintext_password_refused(false, mapped_loopback, false));
    }

    #[test]
    fn options_are_parsed_like_postgres() {
        let parsed = parse_options(
            "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=with\\ space",
        )
        .expect("parses");
        assert_eq!(
            parsed,
            vec![
                ("search_path".to_string(), "a,b".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("work_mem".to_string(), "4MB".to_string()),
                ("x".to_string(), "with space".to_string()),
            ]
        );
        assert!(parse_options("-c novalue").is_err());
    }
}
