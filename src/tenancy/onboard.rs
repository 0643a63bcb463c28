//! Onboarding a tenant, all-or-nothing, in one transaction on the admin connection:
//! the organization row, the tenant's login role (its password set as a SCRAM verifier), the role's
//! `search_path`, the schema owned by the role, every file of `tenant-migrations/` with its history row, the
//! admin user in the tenant's own table and in the shared `users` table.
//!
//! On a cluster other than the default one (named, or chosen by `tenancy.placement`), the directory and
//! the tenant's objects are in two databases, so it takes three transactions: the organization row, as
//! `provisioning` (logins get 57P03), in the directory; the role, schema, migrations with their history
//! and the guard row `pgtenant.tenant_roles` on the tenant's cluster; then the admin user and `active` in
//! the directory. A failing step undoes the earlier ones; if pgtenant dies in between, the organization
//! stays `provisioning` and `DROP TENANT x CONFIRM 'x'` removes what was made.
//!
//! The migrations run under `SET LOCAL ROLE <tenant>` here, which decision 4 of DESIGN.md rules out for
//! migrations of *existing* tenants. It is safe at onboarding only: the schema was created in this same
//! transaction and holds nothing the tenant wrote (no function that could shadow a builtin), and
//! `search_path` is exactly that schema. Later migrations log in as the tenant role.

use crate::clusters::{ClusterError, ClusterSet};
use crate::config::{Config, SchemaNameFormat};
use crate::credentials::RolePasswords;
use crate::migrate::{self, MigrateError};
use crate::names::ClusterName;
use crate::names::{quote_ident, quote_literal, RoleName, SchemaName};
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
    /// The cluster the tenant goes to; `None`: as `tenancy.placement` says.
    pub cluster: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Onboarded {
    pub organization_id: Uuid,
    pub slug: String,
    pub schema: SchemaName,
    pub role: RoleName,
    pub admin_user_id: Uuid,
    pub migrations_applied: usize,
    pub cluster: ClusterName,
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
    #[error("cluster \"{0}\" is a replica: tenants are placed on primaries")]
    NotAPrimary(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
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

/// Creates a tenant. Nothing of it remains if any step fails. `admin` is an admin connection to the default
/// cluster (the directory); the clusters are read from it when the tenant may go elsewhere.
pub async fn onboard(
    admin: &mut Client,
    config: &Config,
    req: &OnboardRequest,
) -> Result<Onboarded, OnboardError> {
    let elsewhere = req
        .cluster
        .as_deref()
        .is_some_and(|c| c != crate::names::DEFAULT_CLUSTER)
        || (req.cluster.is_none() && config.tenancy.placement != crate::config::Placement::Default);
    let clusters = if elsewhere {
        crate::clusters::load_with(admin, config).await?
    } else {
        ClusterSet::default_only(config, &crate::upstream_tls::UpstreamTls::disabled())
    };
    onboard_with(admin, config, &clusters, req).await
}

/// As [`onboard`], with the clusters already read (the proxy's).
pub async fn onboard_with(
    admin: &mut Client,
    config: &Config,
    clusters: &ClusterSet,
    req: &OnboardRequest,
) -> Result<Onboarded, OnboardError> {
    let plan = plan(config, req)?;
    let cluster = match &req.cluster {
        Some(name) => ClusterName::new(name.as_str()),
        None => {
            crate::clusters::placement::choose(config.tenancy.placement, &*admin, clusters).await?
        }
    };
    if cluster.is_default() {
        return onboard_on_default(admin, config, plan).await;
    }
    let entry = clusters.get(&cluster)?;
    if entry.is_replica() {
        return Err(OnboardError::NotAPrimary(cluster.to_string()));
    }
    let mut tenant_admin = entry.connect_admin().await?;
    onboard_elsewhere(admin, &mut tenant_admin, config, plan, cluster).await
}

/// What onboarding will create, decided before anything is written.
struct Plan {
    name: String,
    email: String,
    slug: String,
    migrations: Vec<crate::migrate::Migration>,
    schema: SchemaName,
    role: RoleName,
    ddl_allowed: bool,
    verifier: String,
}

fn plan(config: &Config, req: &OnboardRequest) -> Result<Plan, OnboardError> {
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
    Ok(Plan {
        name: name.to_string(),
        email,
        slug,
        migrations,
        schema,
        role,
        ddl_allowed,
        verifier,
    })
}

/// Refuses a slug or an admin email the directory has already.
async fn check_free(tx: &tokio_postgres::Transaction<'_>, plan: &Plan) -> Result<(), OnboardError> {
    if tx
        .query_opt(
            "SELECT 1 FROM pgtenant.organizations WHERE slug = $1",
            &[&plan.slug],
        )
        .await?
        .is_some()
    {
        return Err(OnboardError::SlugTaken(plan.slug.clone()));
    }
    if tx
        .query_opt(
            "SELECT 1 FROM pgtenant.users WHERE lower(email) = lower($1)",
            &[&plan.email],
        )
        .await?
        .is_some()
    {
        return Err(OnboardError::EmailTaken(plan.email.clone()));
    }
    Ok(())
}

/// The organization row; `status` is `active`, or `provisioning` while the tenant's cluster is set up.
async fn insert_organization(
    tx: &tokio_postgres::Transaction<'_>,
    plan: &Plan,
    status: &str,
    cluster: &ClusterName,
) -> Result<Uuid, OnboardError> {
    Ok(tx
        .query_one(
            "INSERT INTO pgtenant.organizations (name, slug, schema_name, role_name, status, ddl_allowed, cluster)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &plan.name,
                &plan.slug,
                &plan.schema.as_str(),
                &plan.role.as_str(),
                &status,
                &plan.ddl_allowed,
                &cluster.as_str(),
            ],
        )
        .await?
        .get(0))
}

/// The admin user's directory row; announces the change (other pgtenants may have cached "no such user").
async fn insert_admin_user(
    tx: &tokio_postgres::Transaction<'_>,
    plan: &Plan,
    organization_id: Uuid,
) -> Result<Uuid, OnboardError> {
    let admin_user_id: Uuid = tx
        .query_one(
            "INSERT INTO pgtenant.users (email, organization_id, role) VALUES ($1, $2, 'admin') RETURNING id",
            &[&plan.email, &organization_id],
        )
        .await?
        .get(0);
    crate::directory::events::announce(tx, &crate::directory::events::DirectoryEvent::Changed)
        .await?;
    Ok(admin_user_id)
}

/// Today's onboarding: everything in one transaction on the default cluster.
async fn onboard_on_default(
    admin: &mut Client,
    config: &Config,
    plan: Plan,
) -> Result<Onboarded, OnboardError> {
    let cluster = ClusterName::default_cluster();
    let tx = admin.transaction().await?;
    check_free(&tx, &plan).await?;
    let organization_id = insert_organization(&tx, &plan, "active", &cluster).await?;
    let applied = create_tenant_objects(&tx, config, &plan, organization_id).await?;
    let admin_user_id = insert_admin_user(&tx, &plan, organization_id).await?;
    tx.commit().await?;
    Ok(onboarded(
        plan,
        organization_id,
        admin_user_id,
        applied,
        cluster,
    ))
}

/// Onboarding on another cluster, in three transactions (see the module's doc).
async fn onboard_elsewhere(
    directory: &mut Client,
    tenant_admin: &mut Client,
    config: &Config,
    plan: Plan,
    cluster: ClusterName,
) -> Result<Onboarded, OnboardError> {
    let tx = directory.transaction().await?;
    check_free(&tx, &plan).await?;
    let organization_id = insert_organization(&tx, &plan, "provisioning", &cluster).await?;
    tx.commit().await?;

    let made = async {
        let tx = tenant_admin.transaction().await?;
        let applied = create_tenant_objects(&tx, config, &plan, organization_id).await?;
        tx.execute(
            "INSERT INTO pgtenant.tenant_roles (role_name, organization_id, ddl_allowed) VALUES ($1, $2, $3)",
            &[&plan.role.as_str(), &organization_id, &plan.ddl_allowed],
        )
        .await?;
        tx.commit().await?;
        Ok::<usize, OnboardError>(applied)
    }
    .await;
    let applied = match made {
        Ok(applied) => applied,
        Err(e) => {
            forget_organization(directory, organization_id).await;
            return Err(e);
        }
    };

    let finished = async {
        let tx = directory.transaction().await?;
        let admin_user_id = insert_admin_user(&tx, &plan, organization_id).await?;
        tx.execute(
            "UPDATE pgtenant.organizations SET status = 'active' WHERE id = $1",
            &[&organization_id],
        )
        .await?;
        tx.commit().await?;
        Ok::<Uuid, OnboardError>(admin_user_id)
    }
    .await;
    match finished {
        Ok(admin_user_id) => Ok(onboarded(
            plan,
            organization_id,
            admin_user_id,
            applied,
            cluster,
        )),
        Err(e) => {
            let undo = format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {role};
                 DELETE FROM pgtenant.tenant_migrations WHERE organization_id = '{organization_id}';
                 DELETE FROM pgtenant.tenant_roles WHERE organization_id = '{organization_id}';",
                schema = plan.schema.quoted(),
                role = plan.role.quoted(),
            );
            if let Err(undo_error) = tenant_admin.batch_execute(&undo).await {
                tracing::error!(cluster = %cluster, slug = %plan.slug, error = %undo_error, "onboarding failed and its role and schema could not be dropped; DROP TENANT removes them");
            } else {
                forget_organization(directory, organization_id).await;
            }
            Err(e)
        }
    }
}

/// Deletes an organization row onboarding wrote (best effort: a row left behind stays `provisioning`).
async fn forget_organization(directory: &Client, organization_id: Uuid) {
    if let Err(e) = directory
        .execute(
            "DELETE FROM pgtenant.organizations WHERE id = $1 AND status = 'provisioning'",
            &[&organization_id],
        )
        .await
    {
        tracing::error!(%organization_id, error = %e, "could not remove the organization row of a failed onboarding; DROP TENANT removes it");
    }
}

fn onboarded(
    plan: Plan,
    organization_id: Uuid,
    admin_user_id: Uuid,
    migrations_applied: usize,
    cluster: ClusterName,
) -> Onboarded {
    tracing::info!(slug = %plan.slug, schema = %plan.schema, role = %plan.role, cluster = %cluster, migrations = migrations_applied, "tenant onboarded");
    Onboarded {
        organization_id,
        slug: plan.slug,
        schema: plan.schema,
        role: plan.role,
        admin_user_id,
        migrations_applied,
        cluster,
    }
}

/// On the tenant's cluster, in `tx`: the role, its schema and grants, every tenant migration with its
/// history row (in that cluster's `pgtenant.tenant_migrations`), the admin user in the tenant's own table.
/// Returns the number of migrations applied.
async fn create_tenant_objects(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    plan: &Plan,
    organization_id: Uuid,
) -> Result<usize, OnboardError> {
    let (role, schema) = (&plan.role, &plan.schema);
    create_tenant_role(tx, role, schema, &plan.verifier).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA {schema} AUTHORIZATION {role};
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;",
        role = role.quoted(),
        schema = schema.quoted(),
    ))
    .await?;
    grant_database_access(tx, role).await?;

    tx.batch_execute(&format!(
        "SET LOCAL ROLE {}; SET LOCAL search_path = {};",
        role.quoted(),
        schema.quoted()
    ))
    .await?;
    let mut history = Vec::new();
    for m in &plan.migrations {
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
        tx.execute(config.tenancy.admin_user_sql.as_str(), &[&plan.email])
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
    Ok(history.len())
}

/// Creates a tenant role (login with `verifier`, no other attributes) whose search_path is its schema, in
/// `tx`. Onboarding and tenant moves (on the target cluster) make roles this way.
pub async fn create_tenant_role(
    tx: &tokio_postgres::Transaction<'_>,
    role: &RoleName,
    schema: &SchemaName,
    verifier: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
             PASSWORD {verifier};
         ALTER ROLE {role} SET search_path = {schema};",
        role = role.quoted(),
        schema = schema.quoted(),
        verifier = quote_literal(verifier),
    ))
    .await
}

/// CONNECT and TEMPORARY come from PUBLIC by default. Where the operator revoked them, grants them to
/// `role`; two transactions updating the database's ACL at once would collide, hence the lock.
pub async fn grant_database_access(
    tx: &tokio_postgres::Transaction<'_>,
    role: &RoleName,
) -> Result<(), tokio_postgres::Error> {
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
    Ok(())
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
