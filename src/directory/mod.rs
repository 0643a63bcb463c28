//! The directory: which user a token names, which organization the user belongs to, and that
//! organization's tenant (schema, role, status). Read from the shared schema over admin connections, with
//! every query schema-qualified; cached for a short TTL.
//!
//! A person may belong to several organizations: one `users` row per membership, the email unique within an
//! organization (a user id names exactly one membership). [`choose_membership`] picks the one a login is for:
//! the token's organization claim when configured, else the database name (an organization's slug or schema).

use crate::auth::{Identity, OrgClaim};
use crate::names::{quote_literal, ClusterName, RoleName, SchemaName};
use crate::protocol::sqlstate;
use bb8_postgres::PostgresConnectionManager;
use events::DirectoryEvent;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
    Provisioning,
    Archived,
}

impl TenantStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "provisioning" => Self::Provisioning,
            "archived" => Self::Archived,
            _ => Self::Suspended,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Provisioning => "provisioning",
            Self::Archived => "archived",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant (an organization's row), as every part sees it: logins, the admin operations, the migrator.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub schema: SchemaName,
    pub role: RoleName,
    pub status: TenantStatus,
    /// The cluster its role and schema live on.
    pub cluster: ClusterName,
    /// Whether its role may run DDL (the DDL guard of its cluster enforces it).
    pub ddl_allowed: bool,
    /// The tenant's own pooling mode, overriding `pool.mode`.
    pub pool_mode: Option<crate::config::PoolMode>,
    /// The tenant's own virtual schema name, overriding `tenancy.virtual_schema` (`Some("")`: off).
    pub virtual_schema: Option<String>,
    /// The tenant's own limits (statement_timeout …), overriding `[limits]` (shared migration V010).
    pub limits: crate::limits::TenantLimits,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub disabled: bool,
    pub role: String,
    pub tenant: std::sync::Arc<Tenant>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory database unavailable: {0}")]
    Unavailable(String),
    #[error("directory query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// How admin connections are made: TLS as `upstream.sslmode` says (the config carries the mode).
pub type AdminTls = MakeRustlsConnect;

type AdminPool = bb8::Pool<PostgresConnectionManager<AdminTls>>;

/// A role that never logs in, whose password is derived from the server secret like a tenant role's: a
/// tenant can change its own role's password, never this one's, so it tells whether a pgtenant has the
/// server secret the tenants were set up with.
pub const SECRET_CHECK_ROLE: &str = "pgtenant_secret_check";

/// Admin connections the directory keeps.
const DIRECTORY_POOL_SIZE: u32 = 4;

pub struct Directory {
    pool: AdminPool,
    /// Why connections could not be made; also wakes the lookups waiting for one, which then fail at once.
    connect_errors: crate::pg_connect_errors::ConnectErrors,
    tls: crate::upstream_tls::UpstreamTls,
    /// The live configuration: how long a lookup is reused (`tenancy.directory_cache_ttl_ms`) is read from
    /// it at each lookup, so a RELOAD changes it.
    config: Arc<crate::config::LiveConfig>,
    cache: Mutex<HashMap<String, (Instant, Vec<User>)>>,
}

/// The columns of `pgtenant.organizations o` that [`Tenant::from_row`] reads.
pub const TENANT_COLUMNS: &str = "o.id, o.name, o.slug, o.schema_name::text, o.role_name::text, \
     o.status, o.cluster, o.ddl_allowed, o.pool_mode, o.virtual_schema, o.statement_timeout_ms, \
     o.lock_timeout_ms, o.idle_in_transaction_timeout_ms, o.transaction_timeout_ms";

impl Tenant {
    /// Reads the [`TENANT_COLUMNS`] of a row, starting at column `at`.
    pub fn from_row(r: &tokio_postgres::Row, at: usize) -> Tenant {
        Tenant {
            id: r.get(at),
            name: r.get(at + 1),
            slug: r.get(at + 2),
            schema: SchemaName::new(r.get::<_, String>(at + 3)),
            role: RoleName::new(r.get::<_, String>(at + 4)),
            status: TenantStatus::parse(r.get::<_, &str>(at + 5)),
            cluster: ClusterName::new(r.get::<_, String>(at + 6)),
            ddl_allowed: r.get(at + 7),
            pool_mode: r
                .get::<_, Option<&str>>(at + 8)
                .and_then(crate::config::PoolMode::parse),
            virtual_schema: r.get(at + 9),
            limits: crate::limits::TenantLimits::from_columns([
                r.get(at + 10),
                r.get(at + 11),
                r.get(at + 12),
                r.get(at + 13),
            ]),
        }
    }
}

fn user_columns() -> String {
    format!("u.id, u.email, u.disabled, u.role, {TENANT_COLUMNS}")
}

impl Directory {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.load().tenancy.directory_cache_ttl_ms)
    }

    /// Connects lazily: the first lookup opens the first admin connection.
    pub fn new(
        admin: tokio_postgres::Config,
        tls: crate::upstream_tls::UpstreamTls,
        config: Arc<crate::config::LiveConfig>,
    ) -> Arc<Self> {
        let manager = PostgresConnectionManager::new(admin, tls.postgres());
        let connect_errors = crate::pg_connect_errors::ConnectErrors::new("directory");
        let pool = bb8::Pool::builder()
            .max_size(DIRECTORY_POOL_SIZE)
            .connection_timeout(Duration::from_secs(5))
            .test_on_check_out(false)
            // A failed connect fails the waiting lookup instead of retrying with a growing backoff (up to
            // 2.5 s between tries), so logins recover as soon as the server accepts connections again.
            .retry_connection(false)
            .error_sink(connect_errors.sink())
            .build_unchecked(manager);
        Arc::new(Self {
            pool,
            connect_errors,
            tls,
            config,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The error for a connection the pool could not give: bb8 says only "timed out", the sink knows why.
    fn unavailable(&self, e: bb8::RunError<tokio_postgres::Error>) -> DirectoryError {
        DirectoryError::Unavailable(self.connect_errors.explain(e))
    }

    /// Finds the memberships of the user a token names (one per organization, by slug); empty: no such user.
    pub async fn lookup(&self, identity: &Identity) -> Result<Vec<User>, DirectoryError> {
        let key = match identity {
            Identity::UserId(id) => format!("id:{id}"),
            Identity::Email(email) => format!("email:{}", email.to_lowercase()),
        };
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, user)) = cache.get(&key) {
                if at.elapsed() < self.ttl() {
                    return Ok(user.clone());
                }
            }
        }
        let users = self.query(identity).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), users.clone()));
        }
        Ok(users)
    }

    /// Runs the lookup; a pooled connection found closed (the server restarted since it was opened) is
    /// dropped and the lookup tried again on another, at most once per connection the pool can hold.
    async fn query(&self, identity: &Identity) -> Result<Vec<User>, DirectoryError> {
        let mut tries = 0;
        loop {
            match self.query_once(identity).await {
                Err(DirectoryError::Query(e)) if e.is_closed() && tries < DIRECTORY_POOL_SIZE => {
                    tries += 1;
                    tracing::debug!("directory connection found closed; trying another");
                }
                other => return other,
            }
        }
    }

    async fn query_once(&self, identity: &Identity) -> Result<Vec<User>, DirectoryError> {
        let conn = self.connection().await?;
        let rows = match identity {
            Identity::UserId(id) => {
                let Ok(id) = Uuid::parse_str(id) else {
                    return Ok(Vec::new());
                };
                let sql = format!(
                    "SELECT {} FROM pgtenant.users u \
                     JOIN pgtenant.organizations o ON o.id = u.organization_id WHERE u.id = $1",
                    user_columns()
                );
                conn.query(&sql, &[&id]).await?
            }
            Identity::Email(email) => {
                let sql = format!(
                    "SELECT {} FROM pgtenant.users u \
                     JOIN pgtenant.organizations o ON o.id = u.organization_id \
                     WHERE lower(u.email) = lower($1) ORDER BY o.slug",
                    user_columns()
                );
                conn.query(&sql, &[email]).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| User {
                id: r.get(0),
                email: r.get(1),
                disabled: r.get(2),
                role: r.get(3),
                tenant: std::sync::Arc::new(Tenant::from_row(&r, 4)),
            })
            .collect())
    }

    /// Checks the directory database answers (`SELECT 1` on a pooled connection), for `/health`.
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        let conn = self.connection().await?;
        conn.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// A connection as the admin role, from the directory's small pool (admin channel commands use it).
    pub async fn admin(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<AdminTls>>, DirectoryError>
    {
        self.connection().await
    }

    /// A pooled connection; fails as soon as the pool's attempt to open one fails (the server is down)
    /// rather than after the pool's timeout.
    async fn connection(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<AdminTls>>, DirectoryError>
    {
        let failed = self.connect_errors.failed();
        let failed = failed.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        tokio::select! {
            conn = self.pool.get() => conn.map_err(|e| self.unavailable(e)),
            () = &mut failed => Err(DirectoryError::Unavailable(
                self.connect_errors
                    .last()
                    .unwrap_or_else(|| "cannot connect to the directory database".into()),
            )),
        }
    }

    /// The SCRAM verifier PostgreSQL stores for [`SECRET_CHECK_ROLE`], if that role exists (reading
    /// `pg_authid` needs a superuser as the admin user).
    pub async fn secret_check_verifier(&self) -> Result<Option<String>, DirectoryError> {
        let conn = self.connection().await?;
        let row = conn
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&SECRET_CHECK_ROLE],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Creates [`SECRET_CHECK_ROLE`] (NOLOGIN) with `verifier` as its password; one that exists already
    /// (another pgtenant was first) is left as it is.
    pub async fn create_secret_check(&self, verifier: &str) -> Result<(), DirectoryError> {
        let conn = self.connection().await?;
        let sql = format!(
            "DO $$ BEGIN CREATE ROLE {SECRET_CHECK_ROLE} NOLOGIN PASSWORD {}; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            quote_literal(verifier)
        );
        conn.batch_execute(&sql).await?;
        Ok(())
    }

    /// Sets a tenant role's password back to its derived value (given as a SCRAM verifier). A tenant can
    /// change its own role's password (`ALTER ROLE CURRENT_USER PASSWORD …` is allowed to every role), which
    /// would lock pgtenant out of its upstream logins.
    pub async fn restore_role_password(
        &self,
        role: &RoleName,
        verifier: &str,
    ) -> Result<(), DirectoryError> {
        let conn = self.pool.get().await.map_err(|e| self.unavailable(e))?;
        conn.batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            role.quoted(),
            quote_literal(verifier)
        ))
        .await?;
        Ok(())
    }

    /// Listens for directory changes announced by any pgtenant or CLI (see `tenancy::ops`), forgets cached
    /// lookups on each, and hands each event to `on_event`. Reconnects after a second if the connection
    /// drops (and then forgets everything, since announcements may have been missed). Runs until `stop`.
    pub fn spawn_listener(
        self: &Arc<Self>,
        admin: tokio_postgres::Config,
        stop: tokio_util::sync::CancellationToken,
        on_event: impl Fn(DirectoryEvent) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let directory = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = directory.listen_once(&admin, &on_event) => {
                        if let Err(e) = result {
                            tracing::warn!(error = %crate::upstream_tls::error_chain(&e), "directory change listener disconnected; reconnecting");
                        }
                    }
                }
                directory.invalidate();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    }

    async fn listen_once(
        &self,
        admin: &tokio_postgres::Config,
        on_event: &(impl Fn(DirectoryEvent) + Send + Sync),
    ) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = admin.connect(self.tls.postgres()).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", events::DIRECTORY_CHANNEL))
            .await?;
        // Anything that changed before LISTEN took effect.
        self.invalidate();
        while let Some(payload) = rx.recv().await {
            self.invalidate();
            on_event(DirectoryEvent::parse(&payload));
        }
        drop(client);
        match driver.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Forgets cached lookups (after a change to users or organizations).
    pub fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }
}

/// Why no membership fits a login. The text goes to the client, who holds a valid token for this user: it names
/// the user's organizations, never another user's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("the user named by this token does not exist")]
    NoSuchUser,
    #[error("the token does not name an organization (claim {claim:?} is missing or empty)")]
    OrganizationMissing { claim: String },
    #[error("the user named by this token is not a member of the organization the token names")]
    NotAMember,
    #[error(
        "the user belongs to several organizations ({}); connect to the database named after one of them",
        slugs.join(", ")
    )]
    Ambiguous { slugs: Vec<String> },
}

impl MembershipError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // A token that lacks a claim the server requires is a bad token.
            MembershipError::OrganizationMissing { .. } => sqlstate::INVALID_PASSWORD,
            _ => sqlstate::INVALID_AUTHORIZATION,
        }
    }
}

/// Picks the membership a login is for, among the user's memberships (see [`Directory::lookup`]):
///
/// - with an organization claim configured, the token must carry it, and it must name (by id or slug) one of the
///   user's organizations;
/// - otherwise a user of one organization gets that one, and a user of several gets the one whose slug or schema
///   is the database name asked for.
///
/// `org_claim_name` is the configured claim (for the message when the token lacks it).
pub fn choose_membership(
    users: Vec<User>,
    organization: &OrgClaim,
    org_claim_name: &str,
    database: &str,
) -> Result<User, MembershipError> {
    if users.is_empty() {
        return Err(MembershipError::NoSuchUser);
    }
    let pick = |users: Vec<User>, matches: &dyn Fn(&Tenant) -> bool| {
        users.into_iter().find(|u| matches(&u.tenant))
    };
    match organization {
        OrgClaim::Missing => Err(MembershipError::OrganizationMissing {
            claim: org_claim_name.to_owned(),
        }),
        OrgClaim::Named(org) => {
            let by_id = |t: &Tenant| t.id.to_string().eq_ignore_ascii_case(org);
            if users.iter().any(|u| by_id(&u.tenant)) {
                return pick(users, &by_id).ok_or(MembershipError::NotAMember);
            }
            pick(users, &|t: &Tenant| t.slug == *org).ok_or(MembershipError::NotAMember)
        }
        OrgClaim::NotConfigured if users.len() == 1 => {
            Ok(users.into_iter().next().expect("one membership"))
        }
        OrgClaim::NotConfigured => {
            let slugs = users.iter().map(|u| u.tenant.slug.clone()).collect();
            pick(users, &|t: &Tenant| {
                t.slug == database || t.schema.as_str() == database
            })
            .ok_or(MembershipError::Ambiguous { slugs })
        }
    }
}

pub mod events;

#[cfg(test)]
mod tests;
