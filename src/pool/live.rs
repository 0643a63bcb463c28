//! The pool settings a RELOAD changes while pgtenant runs, and taking them from a reloaded `[pool]`.

use super::PoolManager;
use crate::config::PoolConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The pool settings a RELOAD changes while pgtenant runs (see [`PoolManager::reload`]).
pub(super) struct LiveSettings {
    pub(super) acquire_timeout_ms: AtomicU64,
    pub(super) idle_timeout_secs: AtomicU64,
    pub(super) max_lifetime_secs: AtomicU64,
    pub(super) reserve_per_tenant: AtomicUsize,
    pub(super) health_check_after_secs: AtomicU64,
}

impl From<&PoolConfig> for LiveSettings {
    fn from(c: &PoolConfig) -> Self {
        Self {
            acquire_timeout_ms: AtomicU64::new(c.acquire_timeout_ms),
            idle_timeout_secs: AtomicU64::new(c.idle_timeout_secs),
            max_lifetime_secs: AtomicU64::new(c.max_lifetime_secs),
            reserve_per_tenant: AtomicUsize::new(c.reserve_per_tenant),
            health_check_after_secs: AtomicU64::new(c.health_check_after_secs),
        }
    }
}

impl PoolManager {
    /// Takes the keys of a reloaded `[pool]` that apply while running: acquire_timeout_ms,
    /// idle_timeout_secs, max_lifetime_secs, reserve_per_tenant, health_check_after_secs. The sizes need a
    /// restart (the caller says so); `mode` and `max_clients_per_tenant` are read from the live config.
    pub fn reload(&self, c: &PoolConfig) {
        let l = &self.live;
        l.acquire_timeout_ms
            .store(c.acquire_timeout_ms, Ordering::Relaxed);
        l.idle_timeout_secs
            .store(c.idle_timeout_secs, Ordering::Relaxed);
        l.max_lifetime_secs
            .store(c.max_lifetime_secs, Ordering::Relaxed);
        l.reserve_per_tenant
            .store(c.reserve_per_tenant, Ordering::Relaxed);
        l.health_check_after_secs
            .store(c.health_check_after_secs, Ordering::Relaxed);
    }
}
