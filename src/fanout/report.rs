//! What a fan-out reports: per tenant (up to date, migrated, failed with the file, line and SQLSTATE,
//! pending while its cluster is down or it is being moved), per cluster, and in all; and the options of a run.

use crate::directory::Tenant;
use crate::names::ClusterName;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Options of one fan-out.
#[derive(Debug, Clone)]
pub struct FanOutOptions {
    /// Tenants migrated at once.
    pub concurrency: usize,
    /// Stop starting new tenants once this many failed.
    pub stop_after_failures: Option<usize>,
    /// Migrate these first N tenants (that have pending work) first; if any of them fails, stop there.
    pub canary: Option<usize>,
    /// Only this tenant (slug, schema name or organization id).
    pub only: Option<String>,
}

impl Default for FanOutOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            stop_after_failures: None,
            canary: None,
            only: None,
        }
    }
}

/// Why one tenant failed.
#[derive(Debug, Clone)]
pub struct TenantFailure {
    /// The file being applied, if the failure was in one.
    pub file: Option<String>,
    pub version: Option<i32>,
    pub sqlstate: String,
    pub message: String,
    /// Line in the file, when PostgreSQL reported a position.
    pub line: Option<usize>,
}

impl fmt::Display for TenantFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, " line {line}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

#[derive(Debug, Clone)]
pub enum TenantOutcome {
    /// Nothing was pending (another migrator may have done it meanwhile).
    UpToDate,
    /// These versions were applied.
    Migrated(Vec<i32>),
    /// Nothing of the failing transaction remains (versions committed before it, in earlier segments
    /// split by a no-transaction file, stay applied and recorded).
    Failed(TenantFailure),
    /// Another migrator holds this tenant's lock.
    Busy,
    /// The run stopped before this tenant (failure limit or canary).
    NotStarted,
    /// Its cluster is down (why): nothing of the tenant changed, the next run migrates it.
    Pending(String),
}

#[derive(Debug, Clone)]
pub struct TenantResult {
    pub slug: String,
    pub schema: String,
    pub cluster: ClusterName,
    pub outcome: TenantOutcome,
    pub elapsed: Duration,
}

/// What a fan-out did on one cluster.
#[derive(Debug, Default, Clone)]
pub struct ClusterReport {
    pub tenants: usize,
    pub migrated: usize,
    pub up_to_date: usize,
    pub failed: usize,
    pub pending: usize,
    /// Why the cluster was reported down, if it was.
    pub down: Option<String>,
}

/// What a fan-out did.
#[derive(Debug, Default)]
pub struct FanOutReport {
    pub tenants: usize,
    pub up_to_date: usize,
    pub migrated: usize,
    pub failed: Vec<(String, TenantFailure)>,
    pub busy: Vec<String>,
    pub not_started: usize,
    /// Tenants left for the next run because their cluster is down: (slug, cluster).
    pub pending: Vec<(String, ClusterName)>,
    /// Per cluster, by name.
    pub clusters: BTreeMap<ClusterName, ClusterReport>,
    pub elapsed: Duration,
}

impl FanOutReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
            && self.busy.is_empty()
            && self.not_started == 0
            && self.pending.is_empty()
    }

    pub(super) fn count(&mut self, cluster: &ClusterName, outcome: &TenantOutcome) {
        let c = self.clusters.entry(cluster.clone()).or_default();
        c.tenants += 1;
        match outcome {
            TenantOutcome::UpToDate => c.up_to_date += 1,
            TenantOutcome::Migrated(_) => c.migrated += 1,
            TenantOutcome::Failed(_) => c.failed += 1,
            TenantOutcome::Pending(_) => c.pending += 1,
            TenantOutcome::Busy | TenantOutcome::NotStarted => {}
        }
    }

    pub(super) fn cluster_down(&mut self, cluster: &ClusterName, why: &str) {
        let c = self.clusters.entry(cluster.clone()).or_default();
        if c.down.is_none() {
            c.down = Some(why.to_string());
        }
    }
}

impl fmt::Display for FanOutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tenants: {} migrated, {} already up to date, {} failed, {} busy, {} not started",
            self.tenants,
            self.migrated,
            self.up_to_date,
            self.failed.len(),
            self.busy.len(),
            self.not_started,
        )?;
        if !self.pending.is_empty() {
            write!(
                f,
                ", {} pending (cluster down, or tenant being moved)",
                self.pending.len()
            )?;
        }
        write!(f, " ({:.1}s)", self.elapsed.as_secs_f64())?;
        if self.clusters.len() > 1 || self.clusters.values().any(|c| c.down.is_some()) {
            for (name, c) in &self.clusters {
                write!(
                    f,
                    "; cluster {name}: {} migrated, {} up to date, {} failed, {} pending",
                    c.migrated, c.up_to_date, c.failed, c.pending
                )?;
                if let Some(why) = &c.down {
                    write!(f, " (down: {why})")?;
                }
            }
        }
        Ok(())
    }
}

/// One tenant as the migrator sees it.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub tenant: Tenant,
    /// (version, checksum) applied, ascending (read on the tenant's cluster).
    pub applied: Vec<(i32, String)>,
    /// The tenant's cluster could not be asked for its history (why).
    pub cluster_down: Option<String>,
    /// A move of the tenant to another cluster is under way (before its switch; see `crate::moves`):
    /// migrating it now would change what is being copied.
    pub moving: bool,
}

/// A tenant's version and what it lacks.
#[derive(Debug, Clone)]
pub struct TenantVersion {
    pub slug: String,
    pub name: String,
    pub schema: String,
    pub status: String,
    pub cluster: ClusterName,
    /// `None` also when the cluster is down (see `cluster_down`).
    pub version: Option<i32>,
    pub pending: Vec<i32>,
    pub cluster_down: Option<String>,
}
