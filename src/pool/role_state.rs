//! What a pool keeps of its role: the limits its connections are opened with, the parameters it reports at
//! its defaults, the generations of its statements' server-side names.

use super::{PoolKey, PoolManager};
use crate::limits::ServerSettings;
use crate::upstream::UpstreamTarget;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl PoolManager {
    /// Sets the limits `key`'s server connections are opened with (see [`ServerSettings`]); the idle
    /// connections opened with others are closed as they come up for reuse.
    pub fn set_server_settings(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        settings: ServerSettings,
    ) {
        let pool = self.tenant_pool(key, target);
        let mut current = pool.settings.lock().unwrap_or_else(|p| p.into_inner());
        if *current != settings {
            tracing::info!(pool = %key, ?settings, "server connections of the tenant get new limits");
            *current = settings;
        }
    }

    /// Remembers the parameters a connection of `key` reports at the role's defaults.
    pub fn remember_defaults(&self, key: &PoolKey, parameters: &[(String, String)]) {
        let Some(pool) = self.existing_pool(key) else {
            return;
        };
        let mut defaults = pool.defaults.lock().unwrap_or_else(|p| p.into_inner());
        *defaults = Some((Arc::new(parameters.to_vec()), Instant::now()));
    }

    /// The parameters of `key`'s role defaults, if seen within `max_age` (by a pool to `target`).
    pub fn defaults(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        max_age: Duration,
    ) -> Option<crate::upstream::SharedParameters> {
        let pool = self
            .existing_pool(key)
            .filter(|p| Arc::ptr_eq(&p.target, target))?;
        let defaults = pool.defaults.lock().unwrap_or_else(|p| p.into_inner());
        defaults
            .as_ref()
            .filter(|(_, seen)| seen.elapsed() <= max_age)
            .map(|(parameters, _)| parameters.clone())
    }

    /// The current generation of a statement's server-side name (see `txn::statements`).
    pub fn statement_generation(&self, key: &PoolKey, base: &str) -> u32 {
        let Some(pool) = self.existing_pool(key) else {
            return 0;
        };
        let generations = pool
            .statement_generations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        generations.get(base).copied().unwrap_or(0)
    }

    /// Retires a server-side statement name that went stale: later Parses of its query get a new name.
    pub fn retire_statement(&self, key: &PoolKey, server_name: &str) {
        let (base, generation) = crate::upstream::statements::generation_of(server_name);
        let Some(pool) = self.existing_pool(key) else {
            return;
        };
        let mut generations = pool
            .statement_generations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = generations.entry(base.to_string()).or_insert(0);
        *current = (*current).max(generation + 1);
    }

    /// Whether a server-side statement name belongs to an older generation than the current one.
    pub fn is_retired(&self, key: &PoolKey, server_name: &str) -> bool {
        let (base, generation) = crate::upstream::statements::generation_of(server_name);
        generation < self.statement_generation(key, base)
    }
}
