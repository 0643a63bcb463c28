//! How far behind its primary each replica is, measured by this pgtenant (every pgtenant measures for
//! itself: nothing is shared between instances).
//!
//! Every `replicas.check_interval_ms`, for each replica: the primary's `pg_current_wal_lsn()` is sampled
//! (kept with the moment it was first seen), then the replica's `pg_last_wal_replay_lsn()`. A replica's lag
//! is how long ago the primary first had WAL the replica has not replayed yet: 0 when it replayed
//! everything sampled, else the age of the oldest sample beyond its replay position. Measured on pgtenant's
//! own clock (no clock skew between servers), never from `pg_last_xact_replay_timestamp()` (which grows
//! on an idle primary), to within one interval. A replica that cannot be reached, is not in recovery (was
//! promoted), or whose measure is older than three intervals has no lag: it gets no sessions. While its
//! primary is unreachable a replica is measured against the last samples.

use super::registry::Clusters;
use super::{ClusterEntry, ClusterName};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The last measure of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaHealth {
    /// `None`: unknown (see `error`).
    pub lag_ms: Option<u64>,
    pub error: Option<String>,
    pub checked_at: Instant,
}

/// Samples of a primary's WAL position: (LSN, first seen), ascending.
#[derive(Default)]
struct Samples(VecDeque<(i64, Instant)>);

impl Samples {
    const MAX: usize = 10_000;

    fn push(&mut self, lsn: i64, at: Instant) {
        if self.0.back().is_none_or(|(last, _)| lsn > *last) {
            self.0.push_back((lsn, at));
            if self.0.len() > Self::MAX {
                self.0.pop_front();
            }
        }
    }

    /// How long ago the primary first had WAL beyond `replayed`; forgets samples the replica has passed.
    fn lag(&mut self, replayed: i64, now: Instant) -> Duration {
        while self.0.len() > 1 && self.0[1].0 <= replayed {
            self.0.pop_front();
        }
        self.0
            .iter()
            .find(|(lsn, _)| *lsn > replayed)
            .map(|(_, at)| now.saturating_duration_since(*at))
            .unwrap_or(Duration::ZERO)
    }
}

/// Every replica's last measure.
#[derive(Default)]
pub struct ReplicaMonitor {
    state: Mutex<HashMap<ClusterName, ReplicaHealth>>,
    interval: Mutex<Duration>,
}

impl ReplicaMonitor {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HashMap::new()),
            interval: Mutex::new(interval),
        })
    }

    fn interval(&self) -> Duration {
        *self.interval.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn health(&self, replica: &ClusterName) -> Option<ReplicaHealth> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(replica)
            .cloned()
    }

    /// The replica's lag if it may take a session (known, fresh, at most `max_lag`), else why not.
    pub fn usable(&self, replica: &ClusterName, max_lag: Duration) -> Result<u64, String> {
        let stale_after = (self.interval() * 3).max(Duration::from_secs(2));
        match self.health(replica) {
            None => Err("not measured yet".into()),
            Some(h) if h.checked_at.elapsed() > stale_after => Err(format!(
                "last measured {} ms ago",
                h.checked_at.elapsed().as_millis()
            )),
            Some(ReplicaHealth {
                lag_ms: Some(lag), ..
            }) if u128::from(lag) <= max_lag.as_millis() => Ok(lag),
            Some(ReplicaHealth {
                lag_ms: Some(lag), ..
            }) => Err(format!(
                "{lag} ms behind (replicas.max_replica_lag_ms = {})",
                max_lag.as_millis()
            )),
            Some(h) => Err(h.error.unwrap_or_else(|| "lag unknown".into())),
        }
    }

    fn record(&self, replica: &ClusterName, health: ReplicaHealth) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(replica.clone(), health);
    }

    fn forget(&self, replica: &ClusterName) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(replica);
    }

    /// Measures every replica `clusters` lists, each in a task of its own, until `stop`. Replicas added later
    /// are picked up within an interval; removed ones are forgotten.
    pub fn spawn(self: &Arc<Self>, clusters: Arc<Clusters>, stop: CancellationToken) {
        let monitor = self.clone();
        tokio::spawn(async move {
            let mut running: HashSet<ClusterName> = HashSet::new();
            loop {
                let set = clusters.current();
                let replicas: HashSet<ClusterName> = set
                    .iter()
                    .filter(|e| e.is_replica())
                    .map(|e| e.name().clone())
                    .collect();
                for name in replicas.difference(&running) {
                    let task = ReplicaTask {
                        monitor: monitor.clone(),
                        clusters: clusters.clone(),
                        name: name.clone(),
                        stop: stop.clone(),
                    };
                    tokio::spawn(task.run());
                }
                for gone in running.difference(&replicas) {
                    monitor.forget(gone);
                }
                running = replicas;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(monitor.interval()) => {}
                }
            }
        });
    }
}

struct ReplicaTask {
    monitor: Arc<ReplicaMonitor>,
    clusters: Arc<Clusters>,
    name: ClusterName,
    stop: CancellationToken,
}

/// A connection kept to one cluster, made again when it fails.
#[derive(Default)]
struct Kept {
    client: Option<(Arc<ClusterEntry>, tokio_postgres::Client)>,
}

impl Kept {
    async fn query_i64(
        &mut self,
        entry: &Arc<ClusterEntry>,
        sql: &str,
        limit: Duration,
    ) -> Result<(Option<bool>, Option<i64>), String> {
        if self
            .client
            .as_ref()
            .is_some_and(|(e, c)| !Arc::ptr_eq(e, entry) || c.is_closed())
        {
            self.client = None;
        }
        if self.client.is_none() {
            let client = tokio::time::timeout(limit, entry.connect_admin())
                .await
                .map_err(|_| format!("no connection within {} ms", limit.as_millis()))?
                .map_err(|e| e.to_string())?;
            self.client = Some((entry.clone(), client));
        }
        let Some((_, client)) = &self.client else {
            return Err("no connection".into());
        };
        let result = tokio::time::timeout(limit, client.query_one(sql, &[])).await;
        match result {
            Ok(Ok(row)) => Ok((row.try_get(0).ok(), row.try_get(1).ok().flatten())),
            Ok(Err(e)) => {
                self.client = None;
                Err(crate::upstream_tls::error_chain(&e))
            }
            Err(_) => {
                self.client = None;
                Err(format!("no answer within {} ms", limit.as_millis()))
            }
        }
    }
}

impl ReplicaTask {
    async fn run(self) {
        let mut samples = Samples::default();
        let mut primary = Kept::default();
        let mut replica = Kept::default();
        loop {
            let set = self.clusters.current();
            let Ok(entry) = set.get(&self.name) else {
                return;
            };
            let limit = entry.upstream.connect_timeout().min(Duration::from_secs(2));
            if let Some(p) = entry.row.primary_of.as_ref().and_then(|p| set.get(p).ok()) {
                match primary
                    .query_i64(
                        &p,
                        "SELECT true, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
                        limit,
                    )
                    .await
                {
                    Ok((_, Some(lsn))) => samples.push(lsn, Instant::now()),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(replica = %self.name, error = %e, "cannot sample the primary's WAL position")
                    }
                }
            }
            let measured = replica
                .query_i64(
                    &entry,
                    "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint",
                    limit,
                )
                .await;
            let health = match measured {
                Ok((Some(true), Some(replayed))) => ReplicaHealth {
                    lag_ms: Some(
                        samples
                            .lag(replayed, Instant::now())
                            .as_millis()
                            .min(u128::from(u64::MAX)) as u64,
                    ),
                    error: None,
                    checked_at: Instant::now(),
                },
                Ok(_) => ReplicaHealth {
                    lag_ms: None,
                    error: Some("not in recovery (promoted?)".into()),
                    checked_at: Instant::now(),
                },
                Err(e) => ReplicaHealth {
                    lag_ms: None,
                    error: Some(e),
                    checked_at: Instant::now(),
                },
            };
            if let Some(e) = &health.error {
                tracing::debug!(replica = %self.name, error = %e, "replica unusable");
            }
            self.monitor.record(&self.name, health);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(self.monitor.interval()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_wal_not_replayed() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.push(100, t0);
        s.push(100, t0 + Duration::from_secs(1)); // not moved: the first sighting counts
        s.push(200, t0 + Duration::from_secs(2));
        s.push(300, t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(5);
        assert_eq!(s.lag(300, now), Duration::ZERO);
        let mut s2 = Samples::default();
        s2.push(100, t0);
        s2.push(200, t0 + Duration::from_secs(2));
        s2.push(300, t0 + Duration::from_secs(3));
        assert_eq!(s2.lag(150, now), Duration::from_secs(3));
        assert_eq!(s2.lag(250, now), Duration::from_secs(2));
        // Samples passed are forgotten, the one the replica stands on kept.
        assert_eq!(s2.0.len(), 2);
    }

    #[test]
    fn unmeasured_lagging_and_stale_replicas_are_not_usable() {
        let monitor = ReplicaMonitor::new(Duration::from_millis(100));
        let r = ClusterName::new("r1");
        assert!(monitor.usable(&r, Duration::from_secs(1)).is_err());
        monitor.record(
            &r,
            ReplicaHealth {
                lag_ms: Some(10),
                error: None,
                checked_at: Instant::now(),
            },
        );
        assert_eq!(monitor.usable(&r, Duration::from_secs(1)), Ok(10));
        monitor.record(
            &r,
            ReplicaHealth {
                lag_ms: Some(5_000),
                error: None,
                checked_at: Instant::now(),
            },
        );
        let why = monitor.usable(&r, Duration::from_secs(1)).unwrap_err();
        assert!(why.contains("5000 ms behind"), "{why}");
        monitor.record(
            &r,
            ReplicaHealth {
                lag_ms: None,
                error: Some("connection refused".into()),
                checked_at: Instant::now(),
            },
        );
        assert_eq!(
            monitor.usable(&r, Duration::from_secs(1)).unwrap_err(),
            "connection refused"
        );
    }
}
