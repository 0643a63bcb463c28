//! Operations on existing tenants, shared by the CLI and the admin channel: find, list, suspend, resume,
//! archive, drop, check. Every change is announced on the directory channel (LISTEN/NOTIFY) in the same
//! transaction, so every running pgtenant refuses a suspended tenant within moments.

use crate::config::Config;
use crate::directory::{RoleName, SchemaName};
use crate::tenancy::credentials::RolePasswords;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

/// The channel on which directory changes are announced.
pub const DIRECTORY_CHANNEL: &str = "pgtenant_directory";

#[derive(Debug, thiserror::Error)]
pub enum TenantOpError {
    #[error("no tenant \"{0}\" (give its slug, schema, name or id)")]
    NotFound(String),
    #[error("to drop tenant \"{slug}\" and its data for good, confirm with its slug: DROP TENANT {slug} CONFIRM '{slug}'")]
    NotConfirmed { slug: String },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream_tls::UpstreamTlsError),
}

/// A tenant as the operations see it.
#[derive(Debug, Clone)]
pub struct TenantRef {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub schema: SchemaName,
    pub role: RoleName,
    pub status: String,
}

/// What a directory change announcement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// Forget cached lookups.
    Changed,
    /// Forget cached lookups and end the tenant's sessions.
    Closed {
        tenant_id: Uuid,
        role: String,
        why: String,
    },
    /// A token (or every token of a user issued before a time) was revoked (trigger on
    /// `pgtenant.revoked_tokens`, shared migration V009).
    Revoked(Revocation),
    /// Revocations were removed: reload them.
    RevocationsChanged,
    /// A user was disabled: end its sessions (trigger on `pgtenant.users`).
    UserDisabled { user_id: Uuid },
}

/// One revocation, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti`.
    Token { jti: String, end_sessions: bool },
    /// Every token of the user whose `iat` is before `before` (Unix seconds), or that has no `iat`.
    User {
        user_id: Uuid,
        before: u64,
        end_sessions: bool,
    },
}

impl DirectoryEvent {
    pub fn payload(&self) -> String {
        match self {
            DirectoryEvent::Changed => "changed".into(),
            DirectoryEvent::Closed {
                tenant_id,
                role,
                why,
            } => format!("closed {tenant_id} {role} {why}"),
            DirectoryEvent::Revoked(Revocation::Token { jti, end_sessions }) => {
                format!("revoked jti {end_sessions} {jti}")
            }
            DirectoryEvent::Revoked(Revocation::User {
                user_id,
                before,
                end_sessions,
            }) => format!("revoked user {end_sessions} {user_id} {before}"),
            DirectoryEvent::RevocationsChanged => "revocations changed".into(),
            DirectoryEvent::UserDisabled { user_id } => format!("user_disabled {user_id}"),
        }
    }

    pub fn parse(payload: &str) -> DirectoryEvent {
        if let Some(event) = Self::parse_revocation(payload) {
            return event;
        }
        let mut parts = payload.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("closed"), Some(id), Some(role), why) => match Uuid::parse_str(id) {
                Ok(tenant_id) => DirectoryEvent::Closed {
                    tenant_id,
                    role: role.to_string(),
                    why: why.unwrap_or("closed").to_string(),
                },
                Err(_) => DirectoryEvent::Changed,
            },
            _ => DirectoryEvent::Changed,
        }
    }
}

impl DirectoryEvent {
    /// The announcements of the revocation triggers (and of a disabled user); `None` for others. A payload
    /// that starts like one but does not parse is `RevocationsChanged`: reload rather than miss it.
    fn parse_revocation(payload: &str) -> Option<DirectoryEvent> {
        // `format('%s', boolean)` in PL/pgSQL gives t / f; the migration's trigger spells them out.
        let flag = |s: &str| s == "true" || s == "t";
        if payload == "revocations changed" {
            return Some(DirectoryEvent::RevocationsChanged);
        }
        if let Some(id) = payload.strip_prefix("user_disabled ") {
            return Some(match Uuid::parse_str(id) {
                Ok(user_id) => DirectoryEvent::UserDisabled { user_id },
                Err(_) => DirectoryEvent::Changed,
            });
        }
        if let Some(rest) = payload.strip_prefix("revoked jti ") {
            return Some(match rest.split_once(' ') {
                Some((end_sessions, jti)) if !jti.is_empty() => {
                    DirectoryEvent::Revoked(Revocation::Token {
                        jti: jti.to_string(),
                        end_sessions: flag(end_sessions),
                    })
                }
                _ => DirectoryEvent::RevocationsChanged,
            });
        }
        if let Some(rest) = payload.strip_prefix("revoked user ") {
            let mut parts = rest.split(' ');
            let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(end_sessions), Some(id), Some(before), None) => {
                    match (Uuid::parse_str(id), before.parse::<u64>()) {
                        (Ok(user_id), Ok(before)) => Some(Revocation::User {
                            user_id,
                            before,
                            end_sessions: flag(end_sessions),
                        }),
                        _ => None,
                    }
                }
                _ => None,
            };
            return Some(
                parsed
                    .map(DirectoryEvent::Revoked)
                    .unwrap_or(DirectoryEvent::RevocationsChanged),
            );
        }
        None
    }
}

/// Announces a change to every pgtenant (in the caller's transaction, if any).
pub async fn announce(
    client: &impl tokio_postgres::GenericClient,
    event: &DirectoryEvent,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&DIRECTORY_CHANNEL, &event.payload()],
        )
        .await?;
    Ok(())
}

const TENANT_COLUMNS: &str = "id, name, slug, schema_name::text, role_name::text, status";

fn tenant_from_row(r: &tokio_postgres::Row) -> TenantRef {
    TenantRef {
        id: r.get(0),
        name: r.get(1),
        slug: r.get(2),
        schema: SchemaName::new(r.get::<_, String>(3)),
        role: RoleName::new(r.get::<_, String>(4)),
        status: r.get(5),
    }
}

/// Finds a tenant by slug, schema name, name or id.
pub async fn find_tenant(client: &Client, selector: &str) -> Result<TenantRef, TenantOpError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations
                 WHERE slug = $1 OR schema_name::text = $1 OR id::text = $1 OR name = $1
                 ORDER BY (slug = $1) DESC LIMIT 1"
            ),
            &[&selector],
        )
        .await?;
    row.map(|r| tenant_from_row(&r))
        .ok_or_else(|| TenantOpError::NotFound(selector.to_string()))
}

/// A tenant with its migration version and size on disk.
#[derive(Debug, Clone)]
pub struct TenantListing {
    pub tenant: TenantRef,
    pub version: Option<i32>,
    pub size_bytes: i64,
}

pub async fn list_tenants(client: &Client) -> Result<Vec<TenantListing>, TenantOpError> {
    let rows = client
        .query(
            &format!(
                "SELECT {TENANT_COLUMNS},
                        (SELECT max(m.version) FROM pgtenant.tenant_migrations m WHERE m.organization_id = o.id),
                        coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
                                  JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = o.schema_name AND c.relkind IN ('r', 'm', 'p')), 0)
                 FROM pgtenant.organizations o ORDER BY created_at, id"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TenantListing {
            tenant: tenant_from_row(r),
            version: r.get(6),
            size_bytes: r.get(7),
        })
        .collect())
}

/// Suspends a tenant: new logins refused, its sessions on every pgtenant ended.
pub async fn suspend(client: &mut Client, selector: &str) -> Result<TenantRef, TenantOpError> {
    set_status(client, selector, "suspended", true).await
}

/// Lets a suspended (or archived) tenant log in again.
pub async fn resume(client: &mut Client, selector: &str) -> Result<TenantRef, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("ALTER ROLE {} LOGIN", tenant.role.quoted()))
        .await?;
    tx.execute(
        "UPDATE pgtenant.organizations SET status = 'active' WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    announce(&tx, &DirectoryEvent::Changed).await?;
    tx.commit().await?;
    Ok(TenantRef {
        status: "active".into(),
        ..tenant
    })
}

async fn set_status(
    client: &mut Client,
    selector: &str,
    status: &str,
    close: bool,
) -> Result<TenantRef, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE pgtenant.organizations SET status = $2 WHERE id = $1",
        &[&tenant.id, &status],
    )
    .await?;
    let event = if close {
        DirectoryEvent::Closed {
            tenant_id: tenant.id,
            role: tenant.role.as_str().to_string(),
            why: status.to_string(),
        }
    } else {
        DirectoryEvent::Changed
    };
    announce(&tx, &event).await?;
    tx.commit().await?;
    Ok(TenantRef {
        status: status.to_string(),
        ..tenant
    })
}

/// Archives a tenant: logins refused, its role can no longer log in, sessions ended, data kept.
pub async fn archive(client: &mut Client, selector: &str) -> Result<TenantRef, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("ALTER ROLE {} NOLOGIN", tenant.role.quoted()))
        .await?;
    tx.execute(
        "UPDATE pgtenant.organizations SET status = 'archived' WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    let event = DirectoryEvent::Closed {
        tenant_id: tenant.id,
        role: tenant.role.as_str().to_string(),
        why: "archived".into(),
    };
    announce(&tx, &event).await?;
    tx.commit().await?;
    Ok(TenantRef {
        status: "archived".into(),
        ..tenant
    })
}

/// Drops a tenant for good: its schema with all data, its role, its users and history. `confirm` must be
/// the tenant's slug. The tenant's server connections are terminated first (they would hold locks).
pub async fn drop_tenant(
    client: &mut Client,
    selector: &str,
    confirm: &str,
) -> Result<TenantRef, TenantOpError> {
    let tenant = find_tenant(client, selector).await?;
    if confirm != tenant.slug {
        return Err(TenantOpError::NotConfirmed { slug: tenant.slug });
    }
    // Close logins and announce first, so pgtenants end sessions and pools while the drop waits.
    archive(client, &tenant.slug).await?;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&tenant.role.as_str()],
        )
        .await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;
         DROP OWNED BY {role};
         DROP ROLE {role};",
        schema = tenant.schema.quoted(),
        role = tenant.role.quoted(),
    ))
    .await?;
    tx.execute(
        "DELETE FROM pgtenant.organizations WHERE id = $1",
        &[&tenant.id],
    )
    .await?;
    tx.commit().await?;
    Ok(tenant)
}

/// The result of logging in as one tenant's role.
#[derive(Debug, Clone)]
pub struct TenantHealth {
    pub tenant: TenantRef,
    /// `None` when healthy.
    pub error: Option<String>,
    pub elapsed: Duration,
}

/// Logs in as every tenant's role (as pgtenant's pools do) and runs a query, `concurrency` at a time.
pub async fn check_tenants(
    admin: &Client,
    config: &Config,
    concurrency: usize,
) -> Result<Vec<TenantHealth>, TenantOpError> {
    let tls = crate::upstream_tls::UpstreamTls::from_config(&config.upstream)?;
    check_tenants_with(admin, config, &tls, concurrency).await
}

/// As [`check_tenants`], with TLS settings already read.
pub async fn check_tenants_with(
    admin: &Client,
    config: &Config,
    tls: &crate::upstream_tls::UpstreamTls,
    concurrency: usize,
) -> Result<Vec<TenantHealth>, TenantOpError> {
    let tenants = checkable_tenants(admin).await?;
    Ok(check_listed(tenants, config, tls, concurrency).await)
}

/// The tenants a check covers (active or suspended): only the organizations' rows (`list_tenants` also sums
/// every tenant's table sizes).
pub async fn checkable_tenants(admin: &Client) -> Result<Vec<TenantRef>, TenantOpError> {
    Ok(admin
        .query(
            &format!(
                "SELECT {TENANT_COLUMNS} FROM pgtenant.organizations
                 WHERE status IN ('active', 'suspended') ORDER BY created_at, id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(tenant_from_row)
        .collect())
}

/// Logs in as each of `tenants`' roles and runs a query, `concurrency` at a time; results in their order.
/// TLS is `tls`'s mode (the settings pgtenant started with), whatever a reloaded `config` says.
pub async fn check_listed(
    tenants: Vec<TenantRef>,
    config: &Config,
    tls: &crate::upstream_tls::UpstreamTls,
    concurrency: usize,
) -> Vec<TenantHealth> {
    // A check that hangs (a server that accepts and never answers) reports instead of holding the round.
    let limit_each = config.upstream_connect_timeout() * 2;
    let passwords = RolePasswords::new(config.server_secret());
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, tenant) in tenants.into_iter().enumerate() {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let mut pg = config.tenant_pg_config(
            tenant.role.as_str(),
            &passwords.password_for(tenant.role.as_str()),
            "pgtenant-check",
        );
        pg.ssl_mode(tls.mode().postgres());
        let tls = tls.postgres();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let error = match tokio::time::timeout(limit_each, check_one(pg, tls, &tenant)).await {
                Ok(result) => result.err(),
                Err(_) => Some(format!("no answer within {} ms", limit_each.as_millis())),
            };
            drop(permit);
            (
                index,
                TenantHealth {
                    tenant,
                    error,
                    elapsed: started.elapsed(),
                },
            )
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, h)| h).collect()
}

async fn check_one(
    pg: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    tenant: &TenantRef,
) -> Result<(), String> {
    let (client, connection) = pg.connect(tls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = client
        .query_one("SELECT current_schema()::text", &[])
        .await
        .map_err(|e| describe(&e))?;
    let schema: Option<String> = row.get(0);
    if schema.as_deref() != Some(tenant.schema.as_str()) {
        return Err(format!(
            "search_path resolves to {:?}, not the tenant schema {}",
            schema, tenant.schema
        ));
    }
    Ok(())
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => crate::upstream_tls::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_events_round_trip() {
        let id = Uuid::new_v4();
        let closed = DirectoryEvent::Closed {
            tenant_id: id,
            role: "tenant_abc".into(),
            why: "suspended".into(),
        };
        assert_eq!(DirectoryEvent::parse(&closed.payload()), closed);
        assert_eq!(DirectoryEvent::parse("changed"), DirectoryEvent::Changed);
        assert_eq!(
            DirectoryEvent::parse("closed not-a-uuid x"),
            DirectoryEvent::Changed
        );
    }

    #[test]
    fn revocation_events_round_trip() {
        let user_id = Uuid::new_v4();
        for event in [
            DirectoryEvent::Revoked(Revocation::Token {
                jti: "a jti with spaces".into(),
                end_sessions: true,
            }),
            DirectoryEvent::Revoked(Revocation::User {
                user_id,
                before: 1_800_000_000,
                end_sessions: false,
            }),
            DirectoryEvent::RevocationsChanged,
            DirectoryEvent::UserDisabled { user_id },
        ] {
            assert_eq!(DirectoryEvent::parse(&event.payload()), event);
        }
        // What the trigger of shared migration V009 sends.
        assert_eq!(
            DirectoryEvent::parse(&format!("revoked user true {user_id} 1800000000")),
            DirectoryEvent::Revoked(Revocation::User {
                user_id,
                before: 1_800_000_000,
                end_sessions: true
            })
        );
        // Garbled revocations reload rather than pass unnoticed.
        assert_eq!(
            DirectoryEvent::parse("revoked user true nope 12"),
            DirectoryEvent::RevocationsChanged
        );
        assert_eq!(
            DirectoryEvent::parse("revoked jti true "),
            DirectoryEvent::RevocationsChanged
        );
    }
}
