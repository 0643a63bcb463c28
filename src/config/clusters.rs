//! The configuration of several clusters and read replicas: secrets of the clusters the directory names
//! (`[clusters.<name>]`), `[replicas]`, how a session asks for a replica, and where onboarding places a tenant.

use serde::Deserialize;

/// `[clusters.<name>]`: what pgtenant needs to log in to a cluster as its admin role that the directory does
/// not hold.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSecrets {
    /// The password of the cluster's `admin_user`. A replica without one uses its primary's.
    pub admin_password: Option<crate::secret::Secret>,
}

/// How a session asks for a replica (libpq's `target_session_attrs` values, in the startup option
/// `pgtenant.target_session_attrs` or implied by the database name suffix).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// The tenant's primary (also `read-write`, `primary`).
    #[default]
    Any,
    /// A replica within the lag limit, else the primary.
    PreferStandby,
    /// A replica within the lag limit, else the login is refused (57P03). `read-only` means the same.
    Standby,
}

impl TargetSessionAttrs {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "any" | "read-write" | "primary" => Some(Self::Any),
            "prefer-standby" => Some(Self::PreferStandby),
            "standby" | "read-only" => Some(Self::Standby),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::PreferStandby => "prefer-standby",
            Self::Standby => "standby",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicasConfig {
    /// A replica further behind its primary than this (or whose lag is unknown) gets no new sessions.
    pub max_replica_lag_ms: u64,
    /// How often each pgtenant measures every replica's lag.
    pub check_interval_ms: u64,
    /// A database name ending with this (`app.ro`, `acme.ro`) asks for `database_suffix_target`; "": off.
    pub database_suffix: String,
    /// What the suffix asks for: "prefer-standby" (default) or "standby".
    pub database_suffix_target: TargetSessionAttrs,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            max_replica_lag_ms: 5_000,
            check_interval_ms: 500,
            database_suffix: ".ro".into(),
            database_suffix_target: TargetSessionAttrs::PreferStandby,
        }
    }
}

/// Where onboarding puts a tenant for which no cluster is named.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The default cluster (`[upstream]`).
    #[default]
    Default,
    /// The active primary with the fewest tenants.
    FewestTenants,
    /// The active primary whose database is the smallest (`pg_database_size`).
    LeastBytes,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::FewestTenants => "fewest_tenants",
            Self::LeastBytes => "least_bytes",
        }
    }
}
