//! A whole fan-out: the run lock, orphans of a killed migrator cleaned up, the canary, the tasks (a turn per
//! cluster, the failure limit, a cluster found down in the middle), and the report they add up to.

use super::progress::Progress;
use super::report::{FanOutOptions, FanOutReport, TenantOutcome, TenantResult, TenantRow};
use super::TenantMigrator;
use crate::migrate::MigrateError;
use crate::names::ClusterName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Advisory lock held for a whole fan-out run.
const RUN_LOCK: i64 = 0x7067_7465_6e61_0003;

impl TenantMigrator {
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
