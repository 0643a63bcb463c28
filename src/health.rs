//! Health reports for the HTTP endpoints on `server.metrics_listen` (see `metrics_http`):
//!
//! - liveness: the process answers (`/live`);
//! - readiness (`/health`): the client listener is accepting, the directory database answers `SELECT 1`, and
//!   no shutdown is draining sessions;
//! - tenants (`/health/tenants`): every active or suspended tenant's role logs in (a connection of its own, as
//!   `CHECK TENANTS`) and answers, with its latency and error.
//!
//! Neither check follows the request rate: each result is kept for a configured time (`health.*_cache_ms`),
//! and requests arriving while a check runs wait for that one instead of starting another, so a burst of
//! requests costs at most one round. Tenant checks run `health.tenants_concurrency` at a time.

use crate::proxy::Proxy;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// "ok", "draining" or "unavailable".
    pub status: &'static str,
    pub listener: &'static str,
    /// "ok", or why the directory cannot be used.
    pub directory: String,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.status == "ok"
    }
}

/// One tenant's result.
#[derive(Debug, Clone, Serialize)]
pub struct TenantCheck {
    pub tenant: String,
    pub healthy: bool,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// One round of tenant checks.
#[derive(Debug, Clone, Serialize)]
pub struct TenantsReport {
    /// "ok" (every tenant healthy), "degraded" (some are not), "error" (the round could not run).
    pub status: &'static str,
    /// Rounds run since start; the same number means the same (cached) result.
    pub round: u64,
    /// Age of this result when it was served.
    pub age_ms: u64,
    pub healthy: usize,
    pub unhealthy: usize,
    pub tenants: Vec<TenantCheck>,
    /// Why the round could not run (directory unavailable).
    pub error: Option<String>,
}

/// A result computed at most once per `ttl`: callers arriving while it is computed wait for it.
struct Cached<T> {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Cached<T> {
    fn new() -> Self {
        Self {
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached value if younger than `ttl`, else `compute`'s (run by one caller; the others wait on the
    /// lock and then find it fresh). Returns the value and its age.
    async fn get<F: Future<Output = T>>(
        &self,
        ttl: Duration,
        compute: impl FnOnce() -> F,
    ) -> (Arc<T>, Duration) {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref() {
            if at.elapsed() < ttl {
                return (value.clone(), at.elapsed());
            }
        }
        let value = Arc::new(compute().await);
        *slot = Some((Instant::now(), value.clone()));
        (value, Duration::ZERO)
    }
}

/// The health checks' state: cached results and the round counter, kept by the HTTP endpoint that runs them.
pub struct Health {
    directory: Cached<Result<(), String>>,
    tenants: Cached<TenantsReport>,
    rounds: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            directory: Cached::new(),
            tenants: Cached::new(),
            rounds: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Rounds of tenant checks run so far.
    pub fn tenant_rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Readiness of `proxy`: draining and the listener are read at once; the directory check is cached.
pub async fn readiness(proxy: &Proxy, health: &Health) -> Readiness {
    let listener = if proxy.is_listening() { "up" } else { "down" };
    if proxy.shutdown.is_cancelled() {
        return Readiness {
            status: "draining",
            listener,
            directory: "not checked while draining".into(),
        };
    }
    let config = proxy.config();
    let ttl = Duration::from_millis(config.health.ready_cache_ms);
    let timeout = Duration::from_millis(config.health.check_timeout_ms);
    let (directory, _) = health
        .directory
        .get(ttl, || async {
            match tokio::time::timeout(timeout, proxy.directory.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        })
        .await;
    let (status, directory) = match (listener, directory.as_ref()) {
        ("up", Ok(())) => ("ok", "ok".to_string()),
        (_, Ok(())) => ("unavailable", "ok".to_string()),
        (_, Err(e)) => ("unavailable", e.clone()),
    };
    Readiness {
        status,
        listener,
        directory,
    }
}

/// Every tenant's check, from the cache when fresh.
pub async fn tenants(proxy: &Proxy, health: &Health) -> TenantsReport {
    let config = proxy.config();
    let ttl = Duration::from_millis(config.health.tenants_cache_ms);
    let (report, age) = health
        .tenants
        .get(ttl, || run_tenant_round(proxy, health))
        .await;
    let mut report = (*report).clone();
    report.age_ms = age.as_millis() as u64;
    report
}

async fn run_tenant_round(proxy: &Proxy, health: &Health) -> TenantsReport {
    let round = health.rounds.fetch_add(1, Ordering::Relaxed) + 1;
    let config = proxy.config();
    let timeout = Duration::from_millis(config.health.check_timeout_ms);
    let failed = |error: String| TenantsReport {
        status: "error",
        round,
        age_ms: 0,
        healthy: 0,
        unhealthy: 0,
        tenants: Vec::new(),
        error: Some(error),
    };
    let admin = match tokio::time::timeout(timeout, proxy.directory.admin()).await {
        Ok(Ok(admin)) => admin,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => {
            return failed(format!(
                "no directory connection within {} ms",
                timeout.as_millis()
            ))
        }
    };
    // The directory connection goes back to its (small) pool before the logins start.
    let listed = crate::tenancy::ops::checkable_tenants(&admin).await;
    drop(admin);
    let listed = match listed {
        Ok(t) => t,
        Err(e) => return failed(e.to_string()),
    };
    let results = crate::tenancy::ops::check_listed(
        listed,
        &config,
        &proxy.clusters.current(),
        config.health.tenants_concurrency,
    )
    .await;
    let tenants: Vec<TenantCheck> = results
        .into_iter()
        .map(|h| TenantCheck {
            tenant: h.tenant.slug,
            healthy: h.error.is_none(),
            latency_ms: h.elapsed.as_millis() as u64,
            error: h.error,
        })
        .collect();
    let healthy = tenants.iter().filter(|t| t.healthy).count();
    let unhealthy = tenants.len() - healthy;
    if unhealthy > 0 {
        tracing::warn!(round, healthy, unhealthy, "health check: tenants unhealthy");
    }
    TenantsReport {
        status: if unhealthy == 0 { "ok" } else { "degraded" },
        round,
        age_ms: 0,
        healthy,
        unhealthy,
        tenants,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_burst_computes_once() {
        let cached = Arc::new(Cached::<u32>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cached, runs) = (cached.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let (v, _) = cached
                    .get(Duration::from_secs(60), || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await;
                *v
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_value_is_computed_again() {
        let cached = Cached::<u32>::new();
        let (first, _) = cached.get(Duration::ZERO, || async { 1 }).await;
        let (second, _) = cached.get(Duration::ZERO, || async { 2 }).await;
        assert_eq!((*first, *second), (1, 2));
    }
}
