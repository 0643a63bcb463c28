//! The guards a cluster other than the default one needs for its tenants: the files of
//! `cluster-migrations/` (`tenancy.cluster_migrations_dir`: DDL guard, migration tickets,
//! `pgtenant_api.record_migration`, `pgtenant.tenant_roles`, the cluster's tenant migration history),
//! applied with the shared-migration engine and recorded in that cluster's own
//! `pgtenant.shared_migrations`; and the cluster's `pgtenant_secret_check` role, so a pgtenant with another
//! server secret does not "restore" the tenant roles' passwords there either.

use super::{ClusterEntry, ClusterError};
use crate::config::Config;
use crate::credentials::secret_check;
use crate::credentials::RolePasswords;

/// Applies pending cluster migrations on `entry` (a primary that is not the default cluster) and makes sure
/// its secret check role was made with this pgtenant's server secret. Returns the versions applied.
pub async fn apply(entry: &ClusterEntry, config: &Config) -> Result<Vec<i32>, ClusterError> {
    if entry.name().is_default() {
        return Err(ClusterError::Invalid(
            "the default cluster's guards are shared migrations (pgtenant migrate shared)".into(),
        ));
    }
    let mut client = entry.connect_admin().await?;
    let applied =
        crate::migrate::apply_shared(&mut client, &config.tenancy.cluster_migrations_dir).await?;
    let passwords = RolePasswords::new(config.server_secret());
    match secret_check::check_on(&client, &passwords).await? {
        secret_check::SecretCheck::Matches | secret_check::SecretCheck::Created => {}
        secret_check::SecretCheck::Differs => {
            return Err(ClusterError::Invalid(format!(
                "cluster {}: its role {} was made with another server secret; this pgtenant's \
                 upstream.server_secret is not the one its tenants were set up with",
                entry.name(),
                crate::directory::SECRET_CHECK_ROLE
            )))
        }
    }
    Ok(applied)
}
