//! The login of a tenant client: the token, the directory, the limits of its organization, the pool and
//! the first server connection (or, in transaction pooling, the role's known defaults instead).

use super::settings::{
    apply_client_settings, startup_setting, virtual_schema_for, VIRTUAL_SCHEMA_PARAMETER,
};
use super::{write_all, FirstServer, LoggedIn, Ready, ServerPool};
use crate::auth::audit::LoginAttempt;
use crate::auth::audit::Reason;
use crate::clusters::route;
use crate::clusters::route::TARGET_SESSION_ATTRS_PARAMETER;
use crate::config::PoolMode;
use crate::config::TargetSessionAttrs;
use crate::credentials::RolePasswords;
use crate::directory::TenantStatus;
use crate::directory::User;
use crate::error::UserFacing;
use crate::limits::SessionLimits;
use crate::login_guard;
use crate::login_guard::TokenFacts;
use crate::pool::queue::QueueNotice;
use crate::pool::PoolError;
use crate::pool::PoolKey;
use crate::protocol;
use crate::protocol::sqlstate;
use crate::protocol::tag;
use crate::protocol::PgError;
use crate::protocol::ProtocolError;
use crate::protocol::StartupParams;
use crate::protocol::TxStatus;
use crate::proxy::Proxy;
use crate::refusal::Refusal;
use crate::tls::ClientStream;
use crate::upstream::UpstreamError;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;

/// Authenticates the client and takes an upstream connection for its tenant.
pub(super) async fn login(
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
        return Err(Refusal::ReplicationNotServed.to_fatal());
    }
    let requested = params
        .get("database")
        .or(params.get("user"))
        .unwrap_or_default();
    let option = startup_setting(params, TARGET_SESSION_ATTRS_PARAMETER)?;
    let request = route::request(requested, option.as_deref(), &proxy.config().replicas)
        .map_err(|m| Refusal::StartupParameter(m).to_fatal())?;
    let database = request.database.as_str();
    if plaintext_password_refused(
        client.is_tls(),
        peer,
        proxy.config().server.allow_plaintext_password,
    ) {
        let e = Refusal::TokenOverPlaintext.to_fatal();
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
            return Err(Refusal::NotAnAdminToken.to_fatal());
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
            // Why it cannot connect (server down, TLS refused) helps; a failed query's text stays in the log.
            let why = match e {
                crate::directory::DirectoryError::Unavailable(reason) => Some(reason),
                _ => None,
            };
            Refusal::DirectoryUnreachable { why }.to_fatal()
        })?;
    let mut user = crate::directory::choose_membership(
        memberships,
        &claims.organization,
        proxy.config().auth.org_claim.as_deref().unwrap_or_default(),
        database,
    )
    .map_err(|e| crate::error::UserFacing::to_fatal(&e))?;
    attempt.tenant = Some(user.tenant.slug.clone());
    attempt.user_id = Some(user.id);
    if user.disabled {
        let e = Refusal::UserDisabled {
            email: user.email.clone(),
        }
        .to_fatal();
        return Err(attempt.refuse(Reason::DisabledUser, e));
    }
    match user.tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => {
            let e = Refusal::TenantSuspended {
                tenant: user.tenant.name.clone(),
            }
            .to_fatal();
            return Err(attempt.refuse(Reason::TenantClosed, e));
        }
        TenantStatus::Archived => {
            let e = Refusal::TenantRemoved {
                tenant: user.tenant.name.clone(),
            }
            .to_fatal();
            return Err(attempt.refuse(Reason::TenantClosed, e));
        }
        TenantStatus::Provisioning => {
            return Err(Refusal::TenantBeingSetUp {
                tenant: user.tenant.name.clone(),
            }
            .to_fatal())
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
        return Err(Refusal::UnknownDatabase {
            database: database.to_string(),
            directory_database: proxy.config().upstream.database.clone(),
        }
        .to_fatal());
    }

    let max_clients = proxy.config().pool.max_clients_per_tenant;
    if proxy.sessions.count_for(user.tenant.id) >= max_clients {
        return Err(Refusal::TooManyTenantClients {
            tenant: user.tenant.name.clone(),
            limit: max_clients,
        }
        .to_fatal());
    }
    login_guard::check_user(proxy, attempt, &user, &claims)?;
    let virtual_schema = virtual_schema_for(&config, &user.tenant, params)?;
    let token = TokenFacts::of(&claims);
    let limits = SessionLimits::resolve(&config.limits, &user.tenant.limits);
    proxy.pools.wait_unpaused(&user.tenant.role).await;
    // A login held by a tenant move's switch read the directory before it: the tenant is on the target now.
    let home = PoolKey::new(user.tenant.cluster.clone(), user.tenant.role.clone());
    if let Some((moved, _)) = proxy.pools.moved.current(&home) {
        std::sync::Arc::make_mut(&mut user.tenant).cluster = moved.cluster;
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
        // Boxed: ~7 KB of future that a transaction-pooled login with the role's defaults known (the
        // common one, returned above) would otherwise carry and copy.
        let acquired = Box::pin(crate::pool::queue::wait_with_notice(
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
        ))
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
pub(super) async fn primary_pool(proxy: &Proxy, user: &User) -> Result<ServerPool, PgError> {
    let cluster = proxy.cluster(&user.tenant.cluster).await.map_err(|e| {
        tracing::error!(tenant = %user.tenant.slug, cluster = %user.tenant.cluster, error = %e, "the tenant's cluster is not usable");
        Refusal::TenantClusterUnreachable {
            tenant: user.tenant.name.clone(),
            why: e.to_string(),
        }
        .to_fatal()
    })?;
    pool_on(cluster, user)
}

pub(super) fn pool_on(
    cluster: Arc<crate::clusters::ClusterEntry>,
    user: &User,
) -> Result<ServerPool, PgError> {
    let target = cluster
        .target()
        .map_err(|e| Refusal::ClusterUnreachable { why: e.to_string() }.to_fatal())?;
    Ok(ServerPool {
        key: PoolKey::new(cluster.name().clone(), user.tenant.role.clone()),
        target,
        cluster,
    })
}

/// Where the session's connections go: its primary, or a replica of it when the session asks for one and
/// one is fit (see `clusters::route`).
pub(super) async fn server_pool(
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
        Err(why) => Err(Refusal::NoReplica {
            cluster: user.tenant.cluster.to_string(),
            why,
        }
        .to_fatal()),
    }
}

/// How long the parameters of a role's defaults are trusted for logins without a server connection (a
/// later `ALTER ROLE … SET` shows within this time).
pub(super) const ROLE_DEFAULTS_MAX_AGE: Duration = Duration::from_secs(60);

/// The parameters to report to a transaction-pooled client without taking a server connection: the role's
/// defaults, as seen lately, when the client asks for nothing a server must check or change (no
/// `options`; at most an `application_name` that PostgreSQL keeps as it is, and a `client_encoding` equal
/// to the default). Otherwise `None`, and the login takes a server connection to apply and check them.
pub(super) fn login_without_server(
    proxy: &Proxy,
    pool: &ServerPool,
    params: &StartupParams,
) -> Option<crate::upstream::SharedParameters> {
    let mut application_name = None;
    let mut client_encoding = None;
    for (name, value) in &params.params {
        match name.as_str() {
            "user" | "database" | VIRTUAL_SCHEMA_PARAMETER | TARGET_SESSION_ATTRS_PARAMETER => {}
            "application_name"
                if value.len() < 64 && value.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
            {
                application_name = Some(value.as_str());
            }
            "client_encoding" => client_encoding = Some(value.as_str()),
            _ => return None,
        }
    }
    // The role's defaults stay shared unless the client's application_name differs (then the clients
    // of that name share theirs).
    let parameters = proxy.pools.defaults(
        &pool.key,
        &pool.target,
        ROLE_DEFAULTS_MAX_AGE,
        application_name,
    )?;
    match client_encoding {
        Some(asked)
            if !parameters
                .iter()
                .any(|(n, v)| n == "client_encoding" && v == asked) =>
        {
            None
        }
        _ => Some(parameters),
    }
}

pub(super) fn note_wait(proxy: &Proxy, user: &User, waited: Duration) {
    if waited >= Duration::from_millis(1) {
        proxy.metrics.tenant(&user.tenant.slug).add_wait(waited);
    }
}

/// Takes a server connection for the user's tenant from `pool`. If the tenant role's password no longer
/// works (the tenant changed it), it is restored from the server secret on the cluster's primary and the
/// login tried once more.
pub(super) async fn acquire_upstream(
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
            // Boxed, as rare: their futures (an admin connection, queries) would take most of the room of
            // every login's future.
            let restored = if user.tenant.cluster.is_default() {
                Box::pin(restore_on_default(proxy, user, &passwords, &verifier)).await
            } else {
                Box::pin(restore_on_cluster(proxy, user, &passwords, &verifier)).await
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
pub(super) async fn restore_on_default(
    proxy: &Proxy,
    user: &User,
    passwords: &RolePasswords,
    verifier: &str,
) -> bool {
    let role = &user.tenant.role;
    if crate::credentials::secret_check::is_wrong(&proxy.directory, passwords).await {
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
pub(super) async fn restore_on_cluster(
    proxy: &Proxy,
    user: &User,
    passwords: &RolePasswords,
    verifier: &str,
) -> bool {
    use crate::credentials::secret_check::{check_on, restore_role_password_on, SecretCheck};
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
pub(super) fn plaintext_password_refused(tls: bool, peer: std::net::IpAddr, allowed: bool) -> bool {
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
pub(super) async fn read_token(
    proxy: &Proxy,
    client: &mut ClientStream,
) -> Result<String, PgError> {
    let mut out = BytesMut::new();
    protocol::write::authentication_cleartext(&mut out);
    write_all(client, &out).await?;
    let limit = proxy.config().auth.max_token_bytes + 1;
    let (msg_tag, body) = match protocol::read_message(client, limit).await {
        Ok(m) => m,
        Err(ProtocolError::BadFrameLength { .. }) => return Err(Refusal::TokenTooLarge.to_fatal()),
        Err(e) => return Err(Refusal::Protocol(e.to_string()).to_fatal()),
    };
    if msg_tag != tag::PASSWORD {
        return Err(Refusal::ExpectedPassword.to_fatal());
    }
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8(body[..end].to_vec()).map_err(|_| Refusal::TokenNotUtf8.to_fatal())
}
