//! What the pools hold, for the admin views, the metrics and the NOTICE of a queued client: statistics per
//! pool, the state of a queue, idle server connections, connections per cluster.

use super::tenant_pool::TenantPool;
use super::{PoolKey, PoolManager};
use crate::names::ClusterName;
use crate::names::RoleName;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Statistics of one tenant's pool.
#[derive(Debug, Clone)]
pub struct TenantPoolStats {
    pub role: RoleName,
    pub cluster: ClusterName,
    pub active: usize,
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Server connections the tenant may have at once (`pool.size_per_tenant`).
    pub limit: usize,
}

impl TenantPoolStats {
    /// The tenant's server connections: lent out and idle.
    pub fn server_connections(&self) -> usize {
        self.active + self.idle
    }
}

/// Why a client waits for a server connection, for the NOTICE it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// The tenant's connections lent out.
    pub in_use: usize,
    /// `pool.size_per_tenant`.
    pub limit: usize,
    /// `pool.max_server_connections`.
    pub global_limit: usize,
    /// Clients of the tenant waiting.
    pub waiting: usize,
}

impl PoolManager {
    pub fn stats(&self) -> Vec<TenantPoolStats> {
        let pools: Vec<Arc<TenantPool>> = match self.tenants.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        pools
            .iter()
            .map(|p| TenantPoolStats {
                role: p.key.role.clone(),
                cluster: p.key.cluster.clone(),
                active: self.sizes.size_per_tenant - p.checkout.available_permits(),
                idle: p.idle.lock().map(|i| i.len()).unwrap_or(0),
                waiting: p.waiting.load(Ordering::Relaxed),
                limit: self.sizes.size_per_tenant,
            })
            .collect()
    }

    /// What a client waiting for `key`'s connections waits for.
    pub fn queue_state(&self, key: &PoolKey) -> QueueState {
        let (in_use, waiting) = self
            .existing_pool(key)
            .map(|pool| {
                (
                    self.sizes.size_per_tenant - pool.checkout.available_permits(),
                    pool.waiting.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0));
        QueueState {
            in_use,
            limit: self.sizes.size_per_tenant,
            global_limit: self.sizes.max_server_connections,
            waiting,
        }
    }

    /// Idle server connections: (pool, backend pid, seconds idle, seconds since connected).
    pub fn idle_servers(&self) -> Vec<(PoolKey, i32, u64, u64)> {
        let pools: Vec<Arc<TenantPool>> = match self.tenants.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut servers = Vec::new();
        for pool in pools {
            if let Ok(idle) = pool.idle.lock() {
                for m in idle.iter() {
                    servers.push((
                        pool.key.clone(),
                        m.conn.process_id,
                        m.conn.last_used.elapsed().as_secs(),
                        m.conn.created_at.elapsed().as_secs(),
                    ));
                }
            }
        }
        servers
    }

    pub fn size_per_tenant(&self) -> usize {
        self.sizes.size_per_tenant
    }

    /// Server connections (active, idle) of this pgtenant to each cluster.
    pub fn by_cluster(&self) -> HashMap<ClusterName, (usize, usize)> {
        let mut out: HashMap<ClusterName, (usize, usize)> = HashMap::new();
        for s in self.stats() {
            let e = out.entry(s.cluster).or_default();
            e.0 += s.active;
            e.1 += s.idle;
        }
        out
    }

    /// Server connections lent out for `role` (or all tenants), on every cluster.
    pub fn active(&self, role: Option<&RoleName>) -> usize {
        self.stats()
            .iter()
            .filter(|s| role.is_none_or(|r| *r == s.role))
            .map(|s| s.active)
            .sum()
    }
}
