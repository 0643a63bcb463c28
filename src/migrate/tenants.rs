//! Fan-out of `tenant-migrations/` over every tenant schema.
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

use super::progress::Progress;
use super::{load_dir, MigrateError, Migration};
use crate::clusters::{ClusterEntry, ClusterName, ClusterSet};
use crate::config::Config;
use crate::directory::{Tenant, TENANT_COLUMNS};
use crate::tenancy::credentials::RolePasswords;
use crate::upstream_tls::UpstreamTls;
use bb8_postgres::PostgresConnectionManager;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

mod report;
pub use report::*;

type AdminPool = bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>;
type PooledAdmin<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<MakeRustlsConnect>>;

/// Advisory lock held for a whole fan-out run.
const RUN_LOCK: i64 = 0x7067_7465_6e61_0003;

/// Advisory lock key of one tenant (migrations only).
fn tenant_lock_key(id: &Uuid) -> i64 {
    let bytes = id.as_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(key) ^ 0x7067_7465_6e61_0000
}

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

fn admin_pool(
    config: tokio_postgres::Config,
    tls: &UpstreamTls,
    concurrency: usize,
    connect_errors: &crate::pg_connect_errors::ConnectErrors,
    connection_timeout: Duration,
) -> AdminPool {
    let manager = PostgresConnectionManager::new(config, tls.postgres());
    bb8::Pool::builder()
        .max_size(concurrency.max(1) as u32 + 2)
        .connection_timeout(connection_timeout)
        .test_on_check_out(false)
        .error_sink(connect_errors.sink())
        .build_unchecked(manager)
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

    /// The directory's clusters.
    async fn clusters(&self) -> Result<&ClusterSet, MigrateError> {
        self.inner
            .clusters
            .get_or_try_init(|| async {
                let admin = self.admin().await?;
                ClusterSet::load(&*admin, &self.inner.config, &self.inner.default_tls)
                    .await
                    .map_err(|e| MigrateError::AdminPool(e.to_string()))
            })
            .await
    }

    /// The migrator's pool on a cluster other than the default one.
    async fn cluster_pool(&self, name: &ClusterName) -> Result<Arc<ClusterPool>, MigrateError> {
        if let Some(pool) = self
            .inner
            .cluster_pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(pool.clone());
        }
        let entry = self
            .clusters()
            .await?
            .get(name)
            .map_err(|e| MigrateError::AdminPool(e.to_string()))?;
        let tls = entry
            .tls()
            .map_err(|e| MigrateError::AdminPool(e.to_string()))?;
        let connect_errors = crate::pg_connect_errors::ConnectErrors::new("migrations");
        let admin = admin_pool(
            entry.upstream.admin_pg_config(),
            tls,
            self.inner.concurrency,
            &connect_errors,
            entry.upstream.connect_timeout() * 2,
        );
        let pool = Arc::new(ClusterPool {
            entry,
            admin,
            connect_errors,
        });
        self.inner
            .cluster_pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), pool.clone());
        Ok(pool)
    }

    /// An admin connection to `cluster` (the default one: the directory's pool). Fails as soon as the
    /// pool's attempt to connect fails (the cluster is down), not after the pool's timeout.
    async fn cluster_admin(
        &self,
        cluster: &ClusterName,
    ) -> Result<PooledAdmin<'static>, MigrateError> {
        let (pool, errors) = if cluster.is_default() {
            (self.inner.admin.clone(), self.inner.connect_errors.clone())
        } else {
            let p = self.cluster_pool(cluster).await?;
            (p.admin.clone(), p.connect_errors.clone())
        };
        let failed = errors.failed();
        let failed = failed.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        tokio::select! {
            conn = pool.get_owned() => conn.map_err(|e| MigrateError::AdminPool(errors.explain(e))),
            () = &mut failed => Err(MigrateError::AdminPool(
                errors.last().unwrap_or_else(|| format!("cannot connect to cluster {cluster}")),
            )),
        }
    }

    /// Whether `cluster` accepts a new admin connection now (asked after a tenant failed with a connection
    /// error): `Err` says why not.
    async fn probe(&self, cluster: &ClusterName) -> Result<(), String> {
        let entry = self
            .clusters()
            .await
            .map_err(|e| e.to_string())?
            .get(cluster)
            .map_err(|e| e.to_string())?;
        let limit = entry.upstream.connect_timeout();
        match tokio::time::timeout(limit, entry.connect_admin()).await {
            Ok(Ok(client)) => client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| crate::upstream_tls::error_chain(&e)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {} ms", limit.as_millis())),
        }
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.inner.migrations
    }

    /// The latest version on disk.
    pub fn latest(&self) -> Option<i32> {
        self.inner.migrations.last().map(|m| m.version)
    }

    async fn admin(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<MakeRustlsConnect>>, MigrateError>
    {
        self.inner
            .admin
            .get()
            .await
            .map_err(|e| MigrateError::AdminPool(self.inner.connect_errors.explain(e)))
    }

    /// Every tenant (or the one named by `only`) with its history, read on its cluster. The tenants of a
    /// cluster that does not answer come with `cluster_down` set and no history.
    pub async fn load_tenants(&self, only: Option<&str>) -> Result<Vec<TenantRow>, MigrateError> {
        let (tenants, moving): (Vec<Tenant>, HashSet<Uuid>) = {
            let admin = self.admin().await?;
            let rows = admin
                .query(
                    &format!(
                        "SELECT {TENANT_COLUMNS},
                                EXISTS (SELECT 1 FROM pgtenant.tenant_moves m WHERE m.organization_id = o.id
                                          AND m.state IN ('preparing', 'copying', 'catching_up', 'switching'))
                         FROM pgtenant.organizations o
                         WHERE o.status <> 'provisioning'
                           AND ($1::text IS NULL OR o.slug = $1 OR o.schema_name::text = $1
                                OR o.id::text = $1 OR o.name = $1)
                         ORDER BY o.created_at, o.id"
                    ),
                    &[&only],
                )
                .await?;
            let moving_at = rows.first().map(|r| r.len() - 1).unwrap_or(0);
            let tenants: Vec<Tenant> = rows.iter().map(|r| Tenant::from_row(r, 0)).collect();
            let moving = rows
                .iter()
                .zip(&tenants)
                .filter(|(r, _)| r.get::<_, bool>(moving_at))
                .map(|(_, t)| t.id)
                .collect();
            (tenants, moving)
        };
        let mut clusters: Vec<ClusterName> = tenants.iter().map(|t| t.cluster.clone()).collect();
        clusters.sort();
        clusters.dedup();
        let mut histories: HashMap<Uuid, Vec<(i32, String)>> = HashMap::new();
        let mut down: HashMap<ClusterName, String> = HashMap::new();
        for cluster in clusters {
            let ids: Vec<Uuid> = tenants
                .iter()
                .filter(|t| t.cluster == cluster)
                .map(|t| t.id)
                .collect();
            let read = async {
                let admin = self.cluster_admin(&cluster).await?;
                Ok::<_, MigrateError>(
                    admin
                        .query(
                            "SELECT organization_id, array_agg(version ORDER BY version),
                                    array_agg(checksum ORDER BY version)
                             FROM pgtenant.tenant_migrations WHERE organization_id = ANY($1)
                             GROUP BY organization_id",
                            &[&ids],
                        )
                        .await?,
                )
            };
            match read.await {
                Ok(rows) => {
                    for r in rows {
                        let versions: Vec<i32> = r.get(1);
                        let checksums: Vec<String> = r.get(2);
                        histories.insert(r.get(0), versions.into_iter().zip(checksums).collect());
                    }
                }
                Err(e) if cluster.is_default() => return Err(e),
                Err(e) => {
                    tracing::warn!(%cluster, error = %e, "cannot read the tenants' history on a cluster");
                    down.insert(cluster, e.to_string());
                }
            }
        }
        Ok(tenants
            .into_iter()
            .map(|tenant| TenantRow {
                applied: histories.remove(&tenant.id).unwrap_or_default(),
                cluster_down: down.get(&tenant.cluster).cloned(),
                moving: moving.contains(&tenant.id),
                tenant,
            })
            .collect())
    }

    /// Checks histories against the files; returns, per tenant, the indexes of its pending migrations.
    pub fn check(&self, tenants: &[TenantRow]) -> Result<Vec<Vec<usize>>, MigrateError> {
        let files = &self.inner.migrations;
        let mut changed: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        let mut missing: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        let mut out_of_order: BTreeMap<(i32, i32), Vec<&str>> = BTreeMap::new();
        let mut pending_all = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            if tenant.cluster_down.is_some() {
                // Nothing known of its history: it waits for its cluster.
                pending_all.push(Vec::new());
                continue;
            }
            let slug = tenant.tenant.slug.as_str();
            let applied: HashSet<i32> = tenant.applied.iter().map(|(v, _)| *v).collect();
            for (version, checksum) in &tenant.applied {
                match files.iter().find(|m| m.version == *version) {
                    Some(m) if m.checksum != *checksum => {
                        changed.entry(*version).or_default().push(slug)
                    }
                    Some(_) => {}
                    None => missing.entry(*version).or_default().push(slug),
                }
            }
            let max_applied = tenant.applied.iter().map(|(v, _)| *v).max();
            let pending: Vec<usize> = files
                .iter()
                .enumerate()
                .filter(|(_, m)| !applied.contains(&m.version))
                .map(|(i, _)| i)
                .collect();
            if let (Some(max), Some(first)) = (max_applied, pending.first()) {
                if files[*first].version < max {
                    out_of_order
                        .entry((files[*first].version, max))
                        .or_default()
                        .push(slug);
                }
            }
            pending_all.push(pending);
        }
        if let Some((version, slugs)) = changed.into_iter().next() {
            let m = files
                .iter()
                .find(|m| m.version == version)
                .expect("found above");
            return Err(MigrateError::TenantChecksumMismatch {
                version,
                name: m.path.display().to_string(),
                current: m.checksum.clone(),
                tenants: list_tenants(&slugs),
            });
        }
        if let Some((version, slugs)) = missing.into_iter().next() {
            return Err(MigrateError::TenantMissingFile {
                version,
                tenants: list_tenants(&slugs),
            });
        }
        if let Some(((pending, applied), slugs)) = out_of_order.into_iter().next() {
            let m = files
                .iter()
                .find(|m| m.version == pending)
                .expect("found above");
            return Err(MigrateError::OutOfOrder {
                pending,
                name: m.path.display().to_string(),
                applied,
                tenants: list_tenants(&slugs),
            });
        }
        Ok(pending_all)
    }

    /// Each tenant's version and pending files.
    pub async fn status(&self, only: Option<&str>) -> Result<Vec<TenantVersion>, MigrateError> {
        let tenants = self.load_tenants(only).await?;
        let files = &self.inner.migrations;
        Ok(tenants
            .into_iter()
            .map(|t| {
                let applied: HashSet<i32> = t.applied.iter().map(|(v, _)| *v).collect();
                TenantVersion {
                    version: t.applied.iter().map(|(v, _)| *v).max(),
                    pending: if t.cluster_down.is_some() {
                        Vec::new()
                    } else {
                        files
                            .iter()
                            .filter(|m| !applied.contains(&m.version))
                            .map(|m| m.version)
                            .collect()
                    },
                    slug: t.tenant.slug,
                    name: t.tenant.name,
                    schema: t.tenant.schema.as_str().to_string(),
                    status: t.tenant.status.as_str().to_string(),
                    cluster: t.tenant.cluster,
                    cluster_down: t.cluster_down,
                }
            })
            .collect())
    }

    /// What a run would apply, per tenant with pending work (after the same checks as a run).
    pub async fn dry_run(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(TenantRow, Vec<&Migration>)>, MigrateError> {
        let tenants = self.load_tenants(only).await?;
        let pending = self.check(&tenants)?;
        Ok(tenants
            .into_iter()
            .zip(pending)
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| {
                (
                    t,
                    p.into_iter().map(|i| &self.inner.migrations[i]).collect(),
                )
            })
            .collect())
    }

    /// Accepts the checksums of the files on disk for versions already applied (after an intentional edit),
    /// on every primary. Returns the number of history rows changed.
    pub async fn repair(&self) -> Result<u64, MigrateError> {
        let names: Vec<ClusterName> = self
            .clusters()
            .await?
            .primaries()
            .map(|e| e.name().clone())
            .collect();
        let mut changed = 0;
        for cluster in names {
            let admin = self.cluster_admin(&cluster).await?;
            for m in &self.inner.migrations {
                changed += admin
                    .execute(
                        "UPDATE pgtenant.tenant_migrations SET checksum = $2 WHERE version = $1 AND checksum <> $2",
                        &[&m.version, &m.checksum],
                    )
                    .await?;
            }
        }
        Ok(changed)
    }

    /// Migrates every tenant with pending work.
    pub async fn run(
        &self,
        options: &FanOutOptions,
        progress: &dyn Progress,
    ) -> Result<FanOutReport, MigrateError> {
        let started = Instant::now();
        let run_lock = self.admin().await?;
        let locked: bool = run_lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
            .await?
            .get(0);
        if !locked {
            return Err(MigrateError::RunLocked);
        }
        let result = self.run_locked(options, progress, started).await;
        let _ = run_lock
            .execute("SELECT pg_advisory_unlock($1)", &[&RUN_LOCK])
            .await;
        result
    }

    async fn run_locked(
        &self,
        options: &FanOutOptions,
        progress: &dyn Progress,
        started: Instant,
    ) -> Result<FanOutReport, MigrateError> {
        let tenants = self.load_tenants(options.only.as_deref()).await?;
        let mut report = FanOutReport {
            tenants: tenants.len(),
            ..FanOutReport::default()
        };
        // Tickets and unlocks left by a migrator that was killed, on every cluster with tenants. Under the
        // run lock no other migrator is at work, so a backend still holding a ticket is an orphan (maybe
        // blocked mid-migration): end it (its transaction rolls back), then drop every leftover ticket and
        // unlock. A cluster that cannot be cleaned up is down for this run.
        let mut down: HashMap<ClusterName, String> = HashMap::new();
        let mut clusters: Vec<ClusterName> = tenants
            .iter()
            .filter(|t| t.cluster_down.is_none())
            .map(|t| t.tenant.cluster.clone())
            .collect();
        clusters.sort();
        clusters.dedup();
        for cluster in clusters {
            if let Err(e) = self.clean_up_orphans(&cluster).await {
                if cluster.is_default() {
                    return Err(e);
                }
                down.insert(cluster, e.to_string());
            }
        }
        let pending = self.check(&tenants)?;
        let mut work: Vec<(TenantRow, Vec<usize>)> = Vec::new();
        for (tenant, pending) in tenants.into_iter().zip(pending) {
            let cluster = tenant.tenant.cluster.clone();
            let why = tenant
                .cluster_down
                .clone()
                .or_else(|| down.get(&cluster).cloned());
            if let Some(why) = why {
                report.cluster_down(&cluster, &why);
                report.count(&cluster, &TenantOutcome::Pending(why));
                report.pending.push((tenant.tenant.slug, cluster));
            } else if tenant.moving && !pending.is_empty() {
                let why =
                    "being moved to another cluster: migrated after the move's switch".to_string();
                report.count(&cluster, &TenantOutcome::Pending(why));
                report.pending.push((tenant.tenant.slug, cluster));
            } else if pending.is_empty() {
                report.count(&cluster, &TenantOutcome::UpToDate);
                report.up_to_date += 1;
            } else {
                work.push((tenant, pending));
            }
        }
        progress.start(work.len());

        let (canary, rest) = match options.canary {
            Some(n) => {
                let n = n.min(work.len());
                let mut work = work;
                let rest = work.split_off(n);
                (work, rest)
            }
            None => (Vec::new(), work),
        };
        let failures = Arc::new(AtomicUsize::new(0));
        let run = Arc::new(RunState::default());
        let canary_failed = if canary.is_empty() {
            false
        } else {
            let before = failures.load(Ordering::Relaxed);
            self.fan_out(canary, options, progress, &failures, &run, &mut report)
                .await;
            failures.load(Ordering::Relaxed) > before
        };
        if canary_failed {
            for _ in &rest {
                report.not_started += 1;
            }
        } else {
            self.fan_out(rest, options, progress, &failures, &run, &mut report)
                .await;
        }
        progress.finish();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Ends orphaned migrator backends on `cluster` and drops leftover tickets and unlocks there.
    async fn clean_up_orphans(&self, cluster: &ClusterName) -> Result<(), MigrateError> {
        let admin = self.cluster_admin(cluster).await?;
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
                  WHERE a.pid <> pg_backend_pid()
                    AND (EXISTS (SELECT 1 FROM pgtenant.migration_tickets t
                                 WHERE t.backend_pid = a.pid AND t.role_name = a.usename)
                      OR EXISTS (SELECT 1 FROM pgtenant.ddl_unlocks u
                                 WHERE u.backend_pid = a.pid AND u.role_name = a.usename));
                 DELETE FROM pgtenant.migration_tickets;
                 DELETE FROM pgtenant.ddl_unlocks;",
            )
            .await?;
        Ok(())
    }

    /// Migrates `work`: every tenant in a task of its own that waits for a turn on its cluster
    /// (`options.concurrency` at once per cluster), so clusters go on side by side, each in order.
    async fn fan_out(
        &self,
        work: Vec<(TenantRow, Vec<usize>)>,
        options: &FanOutOptions,
        progress: &dyn Progress,
        failures: &Arc<AtomicUsize>,
        run: &Arc<RunState>,
        report: &mut FanOutReport,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut results = Vec::new();
        for (tenant, pending) in work {
            let limit = run.limit(&tenant.tenant.cluster, options.concurrency);
            let migrator = self.clone();
            let failures = failures.clone();
            let run = run.clone();
            let stop_after = options.stop_after_failures;
            tasks.spawn(async move {
                let cluster = tenant.tenant.cluster.clone();
                let result = |outcome, elapsed| TenantResult {
                    slug: tenant.tenant.slug.clone(),
                    schema: tenant.tenant.schema.as_str().to_string(),
                    cluster: cluster.clone(),
                    outcome,
                    elapsed,
                };
                let Ok(_permit) = limit.acquire_owned().await else {
                    return result(TenantOutcome::NotStarted, Duration::ZERO);
                };
                if run.stop.load(Ordering::Relaxed) {
                    return result(TenantOutcome::NotStarted, Duration::ZERO);
                }
                if let Some(why) = run.down(&cluster) {
                    return result(TenantOutcome::Pending(why), Duration::ZERO);
                }
                let started = Instant::now();
                let mut outcome = migrator.migrate_one(&tenant, &pending).await;
                if let TenantOutcome::Failed(f) = &outcome {
                    // 08: connection lost or refused; 57P0x: the server is shutting down or starting.
                    if f.sqlstate.starts_with("08") || f.sqlstate.starts_with("57P") {
                        // Is it the tenant, or its whole cluster? A cluster that refuses a fresh connection
                        // is down: this tenant and its cluster's others wait for the next run.
                        let why = match run.down(&cluster) {
                            Some(why) => Some(why),
                            None => match migrator.probe(&cluster).await {
                                Ok(()) => None,
                                Err(why) => {
                                    tracing::warn!(%cluster, reason = %why, "cluster down during the fan-out; its tenants left pending");
                                    Some(run.mark_down(&cluster, why))
                                }
                            },
                        };
                        if let Some(why) = why {
                            outcome = TenantOutcome::Pending(why);
                        }
                    }
                }
                if matches!(outcome, TenantOutcome::Failed(_)) {
                    let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if stop_after.is_some_and(|n| failed >= n) {
                        run.stop.store(true, Ordering::Relaxed);
                    }
                }
                result(outcome, started.elapsed())
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(result) => {
                    progress.tenant(&result);
                    results.push(result);
                }
                Err(e) => tracing::error!(error = %e, "a tenant migration task failed"),
            }
        }
        for result in results {
            report.count(&result.cluster, &result.outcome);
            match result.outcome {
                TenantOutcome::UpToDate => report.up_to_date += 1,
                TenantOutcome::Migrated(_) => report.migrated += 1,
                TenantOutcome::Failed(f) => report.failed.push((result.slug, f)),
                TenantOutcome::Busy => report.busy.push(result.slug),
                TenantOutcome::NotStarted => report.not_started += 1,
                TenantOutcome::Pending(why) => {
                    report.cluster_down(&result.cluster, &why);
                    report.pending.push((result.slug, result.cluster));
                }
            }
        }
    }

    /// Migrates one tenant under its lock, on its cluster.
    async fn migrate_one(&self, tenant: &TenantRow, pending: &[usize]) -> TenantOutcome {
        let admin = match self.cluster_admin(&tenant.tenant.cluster).await {
            Ok(a) => a,
            Err(e) => {
                return TenantOutcome::Failed(plain_failure(
                    crate::protocol::sqlstate::CONNECTION_FAILURE,
                    e.to_string(),
                ))
            }
        };
        let key = tenant_lock_key(&tenant.tenant.id);
        match admin
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {}
            Ok(_) => return TenantOutcome::Busy,
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        }
        let outcome = self.apply(&admin, tenant, pending).await;
        if let Err(e) = admin
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
        {
            tracing::warn!(tenant = %tenant.tenant.slug, error = %e, "could not release a tenant migration lock");
        }
        outcome
    }

    async fn apply(
        &self,
        admin: &tokio_postgres::Client,
        tenant: &TenantRow,
        pending: &[usize],
    ) -> TenantOutcome {
        // Under the lock, read the history again: another migrator may have finished this tenant.
        let applied: HashSet<i32> = match admin
            .query(
                "SELECT version FROM pgtenant.tenant_migrations WHERE organization_id = $1",
                &[&tenant.tenant.id],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        };
        let pending: Vec<&Migration> = pending
            .iter()
            .map(|i| &self.inner.migrations[*i])
            .filter(|m| !applied.contains(&m.version))
            .collect();
        if pending.is_empty() {
            return TenantOutcome::UpToDate;
        }
        let client = match self.connect_as_tenant(&tenant.tenant).await {
            Ok(c) => c,
            Err(e) => return TenantOutcome::Failed(e),
        };
        let pid: i32 = match client.query_one("SELECT pg_backend_pid()", &[]).await {
            Ok(r) => r.get(0),
            Err(e) => return TenantOutcome::Failed(db_failure(&e, None, None)),
        };
        if let Err(e) = self
            .issue_tickets(admin, &tenant.tenant, pid, &pending)
            .await
        {
            return TenantOutcome::Failed(db_failure(&e, None, None));
        }
        let outcome = self.run_files(&client, &tenant.tenant, &pending).await;
        if let Err(e) = admin
            .execute(
                "WITH t AS (DELETE FROM pgtenant.migration_tickets WHERE role_name = $1 AND backend_pid = $2)
                 DELETE FROM pgtenant.ddl_unlocks WHERE role_name = $1 AND backend_pid = $2",
                &[&tenant.tenant.role.as_str(), &pid],
            )
            .await
        {
            tracing::warn!(tenant = %tenant.tenant.slug, error = %e, "could not clean up migration tickets");
        }
        outcome
    }

    /// A connection logged in as the tenant's role on its cluster.
    async fn connect_as_tenant(
        &self,
        tenant: &Tenant,
    ) -> Result<tokio_postgres::Client, TenantFailure> {
        let (config, tls) = if tenant.cluster.is_default() {
            (
                self.inner.config.upstream.clone(),
                self.inner.default_tls.clone(),
            )
        } else {
            let pool = self.cluster_pool(&tenant.cluster).await.map_err(|e| {
                plain_failure(crate::protocol::sqlstate::CONNECTION_FAILURE, e.to_string())
            })?;
            let tls = pool
                .entry
                .tls()
                .map_err(|e| {
                    plain_failure(crate::protocol::sqlstate::CONNECTION_FAILURE, e.to_string())
                })?
                .clone();
            (pool.entry.upstream.clone(), tls)
        };
        let password = self.inner.passwords.password_for(tenant.role.as_str());
        let pg = config.tenant_pg_config(tenant.role.as_str(), &password, "pgtenant-migrate");
        let (client, connection) = pg
            .connect(tls.postgres())
            .await
            .map_err(|e| db_failure(&e, None, None))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn issue_tickets(
        &self,
        admin: &tokio_postgres::Client,
        tenant: &Tenant,
        pid: i32,
        pending: &[&Migration],
    ) -> Result<(), tokio_postgres::Error> {
        let versions: Vec<i32> = pending.iter().map(|m| m.version).collect();
        let names: Vec<&str> = pending.iter().map(|m| m.name.as_str()).collect();
        let checksums: Vec<&str> = pending.iter().map(|m| m.checksum.as_str()).collect();
        admin
            .execute(
                "WITH b AS (SELECT backend_start FROM pg_stat_activity WHERE pid = $2),
                 u AS (
                     INSERT INTO pgtenant.ddl_unlocks (role_name, backend_pid, backend_start)
                     SELECT $1, $2, b.backend_start FROM b WHERE NOT $6
                     ON CONFLICT (role_name, backend_pid) DO UPDATE SET backend_start = EXCLUDED.backend_start)
                 INSERT INTO pgtenant.migration_tickets (role_name, backend_pid, backend_start, version, name, checksum)
                 SELECT $1, $2, b.backend_start, v, n, c
                 FROM b, unnest($3::int[], $4::text[], $5::text[]) AS t(v, n, c)",
                &[&tenant.role.as_str(), &pid, &versions, &names, &checksums, &tenant.ddl_allowed],
            )
            .await?;
        Ok(())
    }

    /// Runs the pending files: consecutive transactional files in one transaction, a no-transaction file on
    /// its own.
    async fn run_files(
        &self,
        client: &tokio_postgres::Client,
        tenant: &Tenant,
        pending: &[&Migration],
    ) -> TenantOutcome {
        let schema = tenant.schema.quoted();
        let lock_timeout = self.inner.lock_timeout_ms;
        let mut applied = Vec::new();
        for segment in segments(pending) {
            let in_transaction = !segment[0].no_transaction;
            let setup = if in_transaction {
                format!("BEGIN; SET LOCAL search_path = {schema}; SET LOCAL lock_timeout = '{lock_timeout}ms'")
            } else {
                format!("SET search_path = {schema}; SET lock_timeout = '{lock_timeout}ms'")
            };
            if let Err(e) = client.batch_execute(&setup).await {
                return TenantOutcome::Failed(db_failure(&e, None, None));
            }
            for m in segment {
                let started = Instant::now();
                for statement in &m.statements {
                    if let Err(e) = client.batch_execute(&statement.sql).await {
                        if in_transaction {
                            let _ = client.batch_execute("ROLLBACK").await;
                        }
                        let mut failure = db_failure(&e, Some(m), Some(&statement.sql));
                        failure.line = Some(statement.line + failure.line.map_or(0, |l| l - 1));
                        return TenantOutcome::Failed(failure);
                    }
                }
                let ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
                if let Err(e) = client
                    .execute(
                        "SELECT pgtenant_api.record_migration($1, $2)",
                        &[&m.version, &ms],
                    )
                    .await
                {
                    if in_transaction {
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                    return TenantOutcome::Failed(db_failure(&e, Some(m), None));
                }
            }
            if in_transaction {
                if let Err(e) = client.batch_execute("COMMIT").await {
                    return TenantOutcome::Failed(db_failure(&e, segment.last().copied(), None));
                }
            }
            applied.extend(segment.iter().map(|m| m.version));
        }
        TenantOutcome::Migrated(applied)
    }
}

/// What the tasks of one run share: the failure-limit stop, and per cluster its turn-taking and whether it
/// was found down.
#[derive(Default)]
struct RunState {
    stop: AtomicBool,
    limits: Mutex<HashMap<ClusterName, Arc<tokio::sync::Semaphore>>>,
    down: Mutex<HashMap<ClusterName, String>>,
}

impl RunState {
    fn limit(&self, cluster: &ClusterName, concurrency: usize) -> Arc<tokio::sync::Semaphore> {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))))
            .clone()
    }

    fn down(&self, cluster: &ClusterName) -> Option<String> {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }

    /// Marks `cluster` down (the first reason stays); returns the reason it is down for.
    fn mark_down(&self, cluster: &ClusterName, why: String) -> String {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.clone())
            .or_insert(why)
            .clone()
    }
}

/// Splits pending files into runs that share a transaction; a no-transaction file stands alone.
fn segments<'a, 'm>(pending: &'a [&'m Migration]) -> Vec<&'a [&'m Migration]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, m) in pending.iter().enumerate() {
        if m.no_transaction {
            if start < i {
                out.push(&pending[start..i]);
            }
            out.push(&pending[i..=i]);
            start = i + 1;
        }
    }
    if start < pending.len() {
        out.push(&pending[start..]);
    }
    out
}

fn list_tenants(slugs: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut text = slugs
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if slugs.len() > SHOWN {
        text.push_str(&format!(" and {} more", slugs.len() - SHOWN));
    }
    text
}

fn plain_failure(sqlstate: &str, message: String) -> TenantFailure {
    TenantFailure {
        file: None,
        version: None,
        sqlstate: sqlstate.to_string(),
        message,
        line: None,
    }
}

/// A failure from a database error; `sql` is the text the error position refers to.
fn db_failure(
    err: &tokio_postgres::Error,
    migration: Option<&Migration>,
    sql: Option<&str>,
) -> TenantFailure {
    let file = migration.map(|m| {
        m.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.path.display().to_string())
    });
    let version = migration.map(|m| m.version);
    match err.as_db_error() {
        Some(db) => {
            let line = match (db.position(), sql) {
                (Some(tokio_postgres::error::ErrorPosition::Original(pos)), Some(sql)) => {
                    Some(line_of(sql, *pos as usize))
                }
                _ => None,
            };
            TenantFailure {
                file,
                version,
                sqlstate: db.code().code().to_string(),
                message: db.message().to_string(),
                line,
            }
        }
        None => TenantFailure {
            file,
            version,
            sqlstate: crate::protocol::sqlstate::CONNECTION_FAILURE.into(),
            message: err.to_string(),
            line: None,
        },
    }
}

/// 1-based line of the 1-based character position `pos` in `sql`.
fn line_of(sql: &str, pos: usize) -> usize {
    sql.chars()
        .take(pos.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
