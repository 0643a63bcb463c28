//! The pool of one (cluster, role) key: its connections, its waiting clients and what it keeps of its role;
//! made on first use, replaced when the cluster's connection settings change.

use super::member::{spawn_terminate, Member};
use super::{PoolKey, PoolManager};
use crate::limits::ServerSettings;
use crate::upstream::UpstreamTarget;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

pub(super) struct TenantPool {
    pub(super) key: PoolKey,
    /// Where its connections go.
    pub(super) target: Arc<UpstreamTarget>,
    /// Replaced by a pool to another target: connections given back are closed.
    pub(super) retired: std::sync::atomic::AtomicBool,
    /// One permit per checked-out connection.
    pub(super) checkout: Arc<Semaphore>,
    /// Idle connections, oldest first.
    pub(super) idle: Mutex<VecDeque<Member>>,
    /// Live connections (idle or lent).
    pub(super) live: Arc<AtomicUsize>,
    /// Clients waiting for a connection of this tenant.
    pub(super) waiting: AtomicUsize,
    /// Of those, waiting for room under the global cap.
    pub(super) waiting_global: AtomicUsize,
    /// Statement generations: a statement that went stale after DDL is retired, and the next Parse of the
    /// same query gets a new server-side name (transaction pooling).
    pub(super) statement_generations: Mutex<HashMap<String, u32>>,
    /// The parameters a connection of this role reports at its defaults (after `RESET ALL`), and when they
    /// were seen: a transaction-pooled login is answered from them without a server connection.
    pub(super) defaults: Mutex<Option<RoleDefaults>>,
    /// The tenant's limits PostgreSQL enforces, as its latest login found them in the directory: new
    /// connections are opened with them, idle ones opened with others are closed instead of reused.
    pub(super) settings: Mutex<ServerSettings>,
}

/// Parameters a server reported (name, value) at the role's defaults, and when they were seen.
pub(super) struct RoleDefaults {
    pub(super) parameters: crate::upstream::SharedParameters,
    pub(super) seen: Instant,
    /// The same with another `application_name`, one list per name that logins asked for (at most
    /// [`MAX_APPLICATION_NAMES`]): the clients of one application share a list instead of each copying
    /// it, and a connection last brought to that list needs no comparison for the next of them.
    pub(super) with_application_name: Vec<(String, crate::upstream::SharedParameters)>,
}

/// How many `application_name` variants of a role's defaults a pool shares; more names get a list each.
pub(super) const MAX_APPLICATION_NAMES: usize = 16;

impl TenantPool {
    /// Still the pool of `key` to `target` (not replaced by one to another target).
    pub(super) fn is_current_for(&self, key: &PoolKey, target: &Arc<UpstreamTarget>) -> bool {
        !self.retired.load(Ordering::Relaxed)
            && Arc::ptr_eq(&self.target, target)
            && self.key == *key
    }

    pub(super) fn oldest_idle(&self) -> Option<Instant> {
        self.idle
            .lock()
            .ok()
            .and_then(|idle| idle.front().map(|m| m.conn.last_used))
    }
}

impl PoolManager {
    /// The pool of `key`, made on first use; a pool whose connections go to another target than `target`
    /// (the cluster's settings changed) is replaced, its idle connections closed.
    pub(super) fn tenant_pool(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
    ) -> Arc<TenantPool> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let mut settings = ServerSettings::default();
        if let Some(pool) = tenants.get(key) {
            if Arc::ptr_eq(&pool.target, target) {
                return pool.clone();
            }
            tracing::info!(pool = %key, "the cluster's connection settings changed: new server connections");
            let old = pool.clone();
            old.retired.store(true, Ordering::Relaxed);
            settings = *old.settings.lock().unwrap_or_else(|p| p.into_inner());
            let drained: Vec<Member> = match old.idle.lock() {
                Ok(mut idle) => idle.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            for member in drained {
                spawn_terminate(member);
            }
        }
        let pool = Arc::new(TenantPool {
            key: key.clone(),
            target: target.clone(),
            retired: std::sync::atomic::AtomicBool::new(false),
            checkout: Arc::new(Semaphore::new(self.sizes.size_per_tenant)),
            idle: Mutex::new(VecDeque::new()),
            live: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
            waiting_global: AtomicUsize::new(0),
            statement_generations: Mutex::new(HashMap::new()),
            defaults: Mutex::new(None),
            settings: Mutex::new(settings),
        });
        tenants.insert(key.clone(), pool.clone());
        pool
    }

    /// The pool of `key`, if it was made.
    pub(super) fn existing_pool(&self, key: &PoolKey) -> Option<Arc<TenantPool>> {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}
