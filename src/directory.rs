//! The directory: which user a token names, which organization the user belongs to, and that
//! organization's tenant (schema, role, status). Read from the shared schema over admin connections, with
//! every query schema-qualified; cached for a short TTL.

use crate::auth::Identity;
use crate::tenancy::ops::DirectoryEvent;
use bb8_postgres::PostgresConnectionManager;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Name of a PostgreSQL role (a tenant's login role).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(String);

/// Name of a tenant's schema.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

macro_rules! identifier_newtype {
    ($t:ident) => {
        impl $t {
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The name quoted as an SQL identifier.
            pub fn quoted(&self) -> String {
                quote_ident(&self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
identifier_newtype!(RoleName);
identifier_newtype!(SchemaName);

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
    Provisioning,
    Archived,
}

impl TenantStatus {
    fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "provisioning" => Self::Provisioning,
            "archived" => Self::Archived,
            _ => Self::Suspended,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub schema: SchemaName,
    pub role: RoleName,
    pub status: TenantStatus,
    /// The tenant's own pooling mode, overriding `pool.mode`.
    pub pool_mode: Option<crate::config::PoolMode>,
    /// The tenant's own virtual schema name, overriding `tenancy.virtual_schema` (`Some("")`: off).
    pub virtual_schema: Option<String>,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub disabled: bool,
    pub role: String,
    pub tenant: Tenant,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory database unavailable: {0}")]
    Unavailable(String),
    #[error("directory query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

type AdminPool = bb8::Pool<PostgresConnectionManager<NoTls>>;

pub struct Directory {
    pool: AdminPool,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<User>)>>,
}

const USER_COLUMNS: &str =
    "u.id, u.email, u.disabled, u.role, o.id, o.name, o.slug, o.schema_name::text, \
     o.role_name::text, o.status, o.pool_mode, o.virtual_schema";

impl Directory {
    /// Connects lazily: the first lookup opens the first admin connection.
    pub fn new(admin: tokio_postgres::Config, ttl: Duration) -> Arc<Self> {
        let manager = PostgresConnectionManager::new(admin, NoTls);
        let pool = bb8::Pool::builder()
            .max_size(4)
            .connection_timeout(Duration::from_secs(5))
            .test_on_check_out(false)
            .build_unchecked(manager);
        Arc::new(Self {
            pool,
            ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Finds the user a token names. `Ok(None)`: no such user.
    pub async fn lookup(&self, identity: &Identity) -> Result<Option<User>, DirectoryError> {
        let key = match identity {
            Identity::UserId(id) => format!("id:{id}"),
            Identity::Email(email) => format!("email:{}", email.to_lowercase()),
        };
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, user)) = cache.get(&key) {
                if at.elapsed() < self.ttl {
                    return Ok(user.clone());
                }
            }
        }
        let user = self.query(identity).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), user.clone()));
        }
        Ok(user)
    }

    async fn query(&self, identity: &Identity) -> Result<Option<User>, DirectoryError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        let row = match identity {
            Identity::UserId(id) => {
                let Ok(id) = Uuid::parse_str(id) else {
                    return Ok(None);
                };
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM pgtenant.users u \
                     JOIN pgtenant.organizations o ON o.id = u.organization_id WHERE u.id = $1"
                );
                conn.query_opt(&sql, &[&id]).await?
            }
            Identity::Email(email) => {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM pgtenant.users u \
                     JOIN pgtenant.organizations o ON o.id = u.organization_id \
                     WHERE lower(u.email) = lower($1)"
                );
                conn.query_opt(&sql, &[email]).await?
            }
        };
        Ok(row.map(|r| User {
            id: r.get(0),
            email: r.get(1),
            disabled: r.get(2),
            role: r.get(3),
            tenant: Tenant {
                id: r.get(4),
                name: r.get(5),
                slug: r.get(6),
                schema: SchemaName::new(r.get::<_, String>(7)),
                role: RoleName::new(r.get::<_, String>(8)),
                status: TenantStatus::parse(r.get::<_, &str>(9)),
                pool_mode: r
                    .get::<_, Option<&str>>(10)
                    .and_then(crate::config::PoolMode::parse),
                virtual_schema: r.get(11),
            },
        }))
    }

    /// A connection as the admin role, from the directory's small pool (admin channel commands use it).
    pub async fn admin(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<NoTls>>, DirectoryError> {
        self.pool
            .get()
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))
    }

    /// Sets a tenant role's password back to its derived value (given as a SCRAM verifier). A tenant can
    /// change its own role's password (`ALTER ROLE CURRENT_USER PASSWORD …` is allowed to every role), which
    /// would lock pgtenant out of its upstream logins.
    pub async fn restore_role_password(
        &self,
        role: &RoleName,
        verifier: &str,
    ) -> Result<(), DirectoryError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
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
                            tracing::warn!(error = %e, "directory change listener disconnected; reconnecting");
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
        let (client, mut connection) = admin.connect(NoTls).await?;
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
            .batch_execute(&format!(
                "LISTEN {}",
                crate::tenancy::ops::DIRECTORY_CHANNEL
            ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(RoleName::new("tenant_1").quoted(), "\"tenant_1\"");
    }
}
