//! Fan-out of `tenant-migrations/` over every tenant schema (the files are read and checked by
//! [`crate::migrate`]).
//!
//! - **Before anything runs**, every tenant's history is checked against the files: a changed applied file,
//!   an applied version whose file is gone, or a new file numbered below an applied one stops the run with a
//!   message naming the file and the tenants.
//! - **One tenant at a time per task, bounded concurrency.** Each tenant is taken under an advisory lock held
//!   by the migrator's admin connection (one migrator per tenant), and the run under a run lock (one fan-out
//!   at a time).
//! - **As the tenant.** A tenant's pending files run on a connection logged in as the tenant's role, with
//!   `search_path` set to its schema, in one transaction (a file with the no-transaction header runs alone,
//!   outside one). Each file's history row is written in the same transaction by
//!   `pgtenant_api.record_migration`, which only accepts a ticket the admin connection issued for that very
//!   backend and version: the tenant cannot forge history, nor read anyone's. A DDL-locked tenant's
//!   migration backend is unlocked the same way (`pgtenant.ddl_unlocks`).
//! - **Failure isolation and resume.** A failing tenant is rolled back to exactly where it was and reported
//!   (SQLSTATE, message, file, line); the others go on. A run killed at any point leaves every tenant either
//!   migrated with its history or untouched; running again applies only what is pending.
//! - **Every cluster at once.** A tenant is migrated on its cluster: its lock, tickets, history and role are
//!   there (the default cluster is the directory's database). Each cluster has its own admin pool and its
//!   own `concurrency`; all clusters go on side by side and make one report. A cluster that cannot be
//!   reached, before the run or in the middle of it (a tenant fails with a connection error and the cluster
//!   then refuses a fresh connection), is reported down: its tenants not yet done are **pending**, the
//!   others go on, and the next run completes them. The run lock is the directory's.

//!
//! A file per job: `pools` (the migrator's admin connections on each cluster), `history` (tenants and their
//! history read and checked against the files, status, dry run, repair), `run` (a whole fan-out under the
//! run lock), `apply` (one tenant: its lock, tickets and files), `report` (what a run reports), `progress`
//! (progress for the CLI, a progress bar, and for the admin channel, NOTICE lines).

use crate::clusters::{ClusterEntry, ClusterSet};
use crate::config::Config;
use crate::credentials::RolePasswords;
use crate::migrate::{load_dir, MigrateError, Migration};
use crate::names::ClusterName;
use crate::upstream_tls::UpstreamTls;
use bb8_postgres::PostgresConnectionManager;
use pools::admin_pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

mod apply;
mod history;
mod pools;
pub mod progress;
mod report;
mod run;
pub use report::*;

type AdminPool = bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>;
type PooledAdmin<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<MakeRustlsConnect>>;

/// Runs tenant migrations. Cheap to clone.
#[derive(Clone)]
pub struct TenantMigrator {
    inner: Arc<Inner>,
}

struct Inner {
    /// The default cluster's admin pool: the directory, and that cluster's tenants.
    admin: AdminPool,
    connect_errors: crate::pg_connect_errors::ConnectErrors,
    config: Config,
    /// TLS of the default cluster, as read from `[upstream]`.
    default_tls: UpstreamTls,
    /// The directory's clusters, read at first use (or given).
    clusters: tokio::sync::OnceCell<ClusterSet>,
    /// One admin pool per cluster other than the default one, made at first use.
    cluster_pools: Mutex<HashMap<ClusterName, Arc<ClusterPool>>>,
    passwords: RolePasswords,
    /// Tenants migrated at once on each cluster.
    concurrency: usize,
    migrations: Vec<Migration>,
    lock_timeout_ms: u64,
}

/// A cluster as the migrator uses it: where tenant connections go, and an admin pool.
struct ClusterPool {
    entry: Arc<ClusterEntry>,
    admin: AdminPool,
    connect_errors: crate::pg_connect_errors::ConnectErrors,
}

impl TenantMigrator {
    /// Loads `tenant-migrations/` and prepares an admin pool big enough for `concurrency` tenants at once
    /// (per cluster; the other clusters' pools are made when first needed).
    pub fn new(config: &Config, concurrency: usize) -> Result<Self, MigrateError> {
        let migrations = load_dir(&config.tenancy.tenant_migrations_dir)?;
        let tls = UpstreamTls::from_config(&config.upstream)?;
        let connect_errors = crate::pg_connect_errors::ConnectErrors::new("migrations");
        let admin = admin_pool(
            config.admin_pg_config(),
            &tls,
            concurrency,
            &connect_errors,
            Duration::from_secs(30),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                admin,
                connect_errors,
                config: config.clone(),
                default_tls: tls,
                clusters: tokio::sync::OnceCell::new(),
                cluster_pools: Mutex::new(HashMap::new()),
                passwords: RolePasswords::new(config.server_secret()),
                concurrency: concurrency.max(1),
                migrations,
                lock_timeout_ms: config.migrations.lock_timeout_ms,
            }),
        })
    }

    /// As [`TenantMigrator::new`], with the clusters already read (the proxy's).
    pub fn with_clusters(
        config: &Config,
        concurrency: usize,
        clusters: ClusterSet,
    ) -> Result<Self, MigrateError> {
        let migrator = Self::new(config, concurrency)?;
        let _ = migrator.inner.clusters.set(clusters);
        Ok(migrator)
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.inner.migrations
    }

    /// The latest version on disk.
    pub fn latest(&self) -> Option<i32> {
        self.inner.migrations.last().map(|m| m.version)
    }
}

#[cfg(test)]
mod tests;
