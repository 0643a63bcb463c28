//! Whether this pgtenant has the server secret the tenants were set up with.
//!
//! Tenant role passwords are derived from the server secret, so a pgtenant started with another secret
//! cannot log in as any tenant. It must then not "restore" a role's password (which pgtenant does when a
//! tenant changed its own): that would lock out every pgtenant that has the right secret. The check is a
//! role that never logs in, [`SECRET_CHECK_ROLE`], whose password is derived like a tenant role's; a tenant
//! can change its own role's password, never this one's. The first pgtenant to start creates it.

use super::RolePasswords;
use crate::directory::{Directory, SECRET_CHECK_ROLE};

/// Whether the password `passwords` derives for [`SECRET_CHECK_ROLE`] is shown not to be the one PostgreSQL
/// stores for it. A missing role is created with this secret's password (then: false). Not shown (the role
/// cannot be read or made): false.
pub async fn is_wrong(directory: &Directory, passwords: &RolePasswords) -> bool {
    match directory.secret_check_verifier().await {
        Ok(Some(verifier)) => {
            !crate::scram::verifier_matches(&passwords.password_for(SECRET_CHECK_ROLE), &verifier)
        }
        Ok(None) => {
            if let Err(e) = directory
                .create_secret_check(&passwords.verifier_for(SECRET_CHECK_ROLE))
                .await
            {
                tracing::warn!(error = %e, "cannot create the server secret check role");
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the server secret");
            false
        }
    }
}

/// At start: creates the check role if there is none, and says loudly if the secret is not the tenants'.
pub async fn check_at_start(directory: &Directory, passwords: &RolePasswords) {
    if is_wrong(directory, passwords).await {
        tracing::error!(
            role = SECRET_CHECK_ROLE,
            "upstream.server_secret differs from the one the tenants were set up with: no tenant login will work"
        );
    }
}

/// What the secret check role on a cluster says about a server secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    Matches,
    /// The role did not exist; it was made with this secret.
    Created,
    Differs,
}

/// [`is_wrong`] on any cluster, over an admin connection to it (a superuser reads `pg_authid`).
pub async fn check_on(
    admin: &impl tokio_postgres::GenericClient,
    passwords: &RolePasswords,
) -> Result<SecretCheck, tokio_postgres::Error> {
    let row = admin
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&SECRET_CHECK_ROLE],
        )
        .await?;
    match row.and_then(|r| r.get::<_, Option<String>>(0)) {
        Some(verifier) => Ok(
            if crate::scram::verifier_matches(&passwords.password_for(SECRET_CHECK_ROLE), &verifier)
            {
                SecretCheck::Matches
            } else {
                SecretCheck::Differs
            },
        ),
        None => {
            let sql = format!(
                "DO $$ BEGIN CREATE ROLE {SECRET_CHECK_ROLE} NOLOGIN PASSWORD {}; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$",
                crate::names::quote_literal(&passwords.verifier_for(SECRET_CHECK_ROLE))
            );
            admin.batch_execute(&sql).await?;
            Ok(SecretCheck::Created)
        }
    }
}

/// Sets a tenant role's password back to its derived value on the cluster `admin` is connected to (see
/// `Directory::restore_role_password` for the default cluster).
pub async fn restore_role_password_on(
    admin: &impl tokio_postgres::GenericClient,
    role: &crate::names::RoleName,
    verifier: &str,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            role.quoted(),
            crate::names::quote_literal(verifier)
        ))
        .await
}
