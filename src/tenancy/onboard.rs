//! Onboarding a tenant, all-or-nothing, in one transaction on the admin connection:
//! the organization row, the tenant's login role (its password set as a SCRAM verifier), the role's
//! `search_path`, the schema owned by the role, every file of `tenant-migrations/` with its history row, the
//! admin user in the tenant's own table and in the shared `users` table.
//!
//! The migrations run under `SET LOCAL ROLE <tenant>` here, which decision 4 of DESIGN.md rules out for
//! migrations of *existing* tenants. It is safe at onboarding only: the schema was created in this same
//! transaction and holds nothing the tenant wrote (no function that could shadow a builtin), and
//! `search_path` is exactly that schema. Later migrations log in as the tenant role.

use crate::config::{Config, SchemaNameFormat};
use crate::directory::{quote_ident, quote_literal, RoleName, SchemaName};
use crate::migrate::{self, MigrateError};
use crate::tenancy::credentials::RolePasswords;
use std::time::Instant;
use tokio_postgres::Client;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct OnboardRequest {
    pub name: String,
    pub admin_email: String,
    /// Defaults to a slug made from the name.
    pub slug: Option<String>,
    /// Defaults to `tenancy.allow_tenant_ddl`.
    pub ddl_allowed: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Onboarded {
    pub organization_id: Uuid,
    pub slug: String,
    pub schema: SchemaName,
    pub role: RoleName,
    pub admin_user_id: Uuid,
    pub migrations_applied: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("organization name must not be empty")]
    EmptyName,
    #[error("\"{0}\" is not a valid email address")]
    BadEmail(String),
    #[error("an organization with slug \"{0}\" already exists")]
    SlugTaken(String),
    #[error("a user with email \"{0}\" already exists")]
    EmailTaken(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("onboarding failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Advisory lock serializing changes to the database's ACL during onboarding.
const ONBOARD_DATABASE_ACL_LOCK: i64 = 0x7067_7465_6e61_0002;

/// Makes `Acme Corp!` into `acme-corp`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    slug.chars()
        .take(40)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn schema_name(format: SchemaNameFormat, slug: &str, short_id: &str) -> SchemaName {
    match format {
        SchemaNameFormat::ShortId => SchemaName::new(format!("org_{short_id}")),
        SchemaNameFormat::SlugShortId => {
            let slug: String = slug.replace('-', "_").chars().take(40).collect();
            SchemaName::new(format!("org_{slug}_{short_id}"))
        }
    }
}

/// Creates a tenant. Nothing of it remains if any step fails.
pub async fn onboard(
    admin: &mut Client,
    config: &Config,
    req: &OnboardRequest,
) -> Result<Onboarded, OnboardError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(OnboardError::EmptyName);
    }
    let email = req.admin_email.trim().to_string();
    if !email.contains('@') || email.len() < 3 || email.chars().any(char::is_whitespace) {
        return Err(OnboardError::BadEmail(email));
    }
    let slug = req.slug.clone().unwrap_or_else(|| slugify(name));
    let slug = if slug.is_empty() {
        "org".to_string()
    } else {
        slug
    };
    let migrations = migrate::load_dir(&config.tenancy.tenant_migrations_dir)?;
    let short_id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let schema = schema_name(config.tenancy.schema_name_format, &slug, &short_id);
    let role = RoleName::new(format!("tenant_{short_id}"));
    let ddl_allowed = req.ddl_allowed.unwrap_or(config.tenancy.allow_tenant_ddl);
    let verifier = RolePasswords::new(config.server_secret()).verifier_for(role.as_str());

    let tx = admin.transaction().await?;
    if tx
        .query_opt(
            "SELECT 1 FROM pgtenant.organizations WHERE slug = $1",
            &[&slug],
        )
        .await?
        .is_some()
    {
        return Err(OnboardError::SlugTaken(slug));
    }
    if tx
        .query_opt(
            "SELECT 1 FROM pgtenant.users WHERE lower(email) = lower($1)",
            &[&email],
        )
        .await?
        .is_some()
    {
        return Err(OnboardError::EmailTaken(email));
    }
    let organization_id: Uuid = tx
        .query_one(
            "INSERT INTO pgtenant.organizations (name, slug, schema_name, role_name, status, ddl_allowed)
             VALUES ($1, $2, $3, $4, 'active', $5) RETURNING id",
            &[&name, &slug, &schema.as_str(), &role.as_str(), &ddl_allowed],
        )
        .await?
        .get(0);
    tx.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
             PASSWORD {verifier};
         ALTER ROLE {role} SET search_path = {schema};
         CREATE SCHEMA {schema} AUTHORIZATION {role};
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;",
        role = role.quoted(),
        schema = schema.quoted(),
        verifier = quote_literal(&verifier),
    ))
    .await?;
    // CONNECT and TEMPORARY come from PUBLIC by default. Where the operator revoked them, grant them to the
    // role; two onboardings updating the database's ACL at once would collide, hence the lock.
    let row = tx
        .query_one(
            "SELECT current_database()::text,
                    has_database_privilege($1, current_database(), 'CONNECT')
                    AND has_database_privilege($1, current_database(), 'TEMPORARY')",
            &[&role.as_str()],
        )
        .await?;
    let (database, has_privileges): (String, bool) = (row.get(0), row.get(1));
    if !has_privileges {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&ONBOARD_DATABASE_ACL_LOCK],
        )
        .await?;
        tx.batch_execute(&format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
            quote_ident(&database),
            role.quoted()
        ))
        .await?;
    }

    tx.batch_execute(&format!(
        "SET LOCAL ROLE {}; SET LOCAL search_path = {};",
        role.quoted(),
        schema.quoted()
    ))
    .await?;
    let mut history = Vec::new();
    for m in &migrations {
        let started = Instant::now();
        // A no-transaction file (CREATE INDEX CONCURRENTLY …) joins the onboarding transaction without
        // CONCURRENTLY: its tables are new, empty and seen by nobody else yet.
        let sql = if m.no_transaction {
            without_concurrently(&m.sql)
        } else {
            m.sql.clone()
        };
        tx.batch_execute(&sql)
            .await
            .map_err(|source| MigrateError::Failed {
                file: m.path.display().to_string(),
                source,
            })?;
        history.push((m, started.elapsed().as_millis() as i32));
    }
    if !config.tenancy.admin_user_sql.trim().is_empty() {
        tx.execute(config.tenancy.admin_user_sql.as_str(), &[&email])
            .await?;
    }
    tx.batch_execute("RESET ROLE; SET LOCAL search_path = pg_catalog;")
        .await?;

    for (m, ms) in &history {
        tx.execute(
            "INSERT INTO pgtenant.tenant_migrations (organization_id, version, name, checksum, duration_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[&organization_id, &m.version, &m.name, &m.checksum, ms],
        )
        .await?;
    }
    let admin_user_id: Uuid = tx
        .query_one(
            "INSERT INTO pgtenant.users (email, organization_id, role) VALUES ($1, $2, 'admin') RETURNING id",
            &[&email, &organization_id],
        )
        .await?
        .get(0);
    // Other pgtenants may have cached "no such user" for this email.
    super::ops::announce(&tx, &super::ops::DirectoryEvent::Changed).await?;
    tx.commit().await?;
    tracing::info!(%slug, %schema, %role, migrations = history.len(), "tenant onboarded");
    Ok(Onboarded {
        organization_id,
        slug,
        schema,
        role,
        admin_user_id,
        migrations_applied: history.len(),
    })
}

/// `sql` with the keyword CONCURRENTLY removed from its statements.
fn without_concurrently(sql: &str) -> String {
    crate::migrate::split::split(sql)
        .into_iter()
        .map(|s| {
            s.sql
                .split_inclusive(char::is_whitespace)
                .filter(|w| !w.trim().eq_ignore_ascii_case("CONCURRENTLY"))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The id of the user with this email, if any (of a user in several organizations, the oldest membership).
pub async fn find_user_by_email(
    admin: &Client,
    email: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    Ok(admin
        .query_opt(
            "SELECT id FROM pgtenant.users WHERE lower(email) = lower($1) ORDER BY created_at, id LIMIT 1",
            &[&email],
        )
        .await?
        .map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrently_is_dropped_for_onboarding() {
        assert_eq!(
            without_concurrently(
                "-- pgtenant: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\nDROP INDEX concurrently j;"
            ),
            "CREATE INDEX i ON t (x);\nDROP INDEX j;"
        );
    }

    #[test]
    fn slugs_and_schema_names() {
        assert_eq!(slugify("Demo Company"), "demo-company");
        assert_eq!(slugify("  Ärzte & Co. GmbH!! "), "rzte-co-gmbh");
        assert_eq!(slugify("!!!"), "");
        assert_eq!(
            schema_name(SchemaNameFormat::ShortId, "demo-company", "abc123").as_str(),
            "org_abc123"
        );
        assert_eq!(
            schema_name(SchemaNameFormat::SlugShortId, "demo-company", "abc123").as_str(),
            "org_demo_company_abc123"
        );
    }
}
