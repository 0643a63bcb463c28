//! What a pool keeps of its role: the limits its connections are opened with, the parameters it reports at
//! its defaults, the generations of its statements' server-side names.

use super::tenant_pool::{RoleDefaults, MAX_APPLICATION_NAMES};
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
        match defaults.as_mut() {
            // Unchanged: the lists handed out stay shared (and the variants with them).
            Some(known) if known.parameters.as_slice() == parameters => known.seen = Instant::now(),
            _ => {
                *defaults = Some(RoleDefaults {
                    parameters: Arc::new(parameters.to_vec()),
                    seen: Instant::now(),
                    with_application_name: Vec::new(),
                })
            }
        }
    }

    /// The parameters of `key`'s role defaults, if seen within `max_age` (by a pool to `target`), with
    /// `application_name` set to `application_name` when given. Logins asking for the same name get the
    /// same list (up to [`MAX_APPLICATION_NAMES`] names a pool).
    pub fn defaults(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        max_age: Duration,
        application_name: Option<&str>,
    ) -> Option<crate::upstream::SharedParameters> {
        let pool = self
            .existing_pool(key)
            .filter(|p| Arc::ptr_eq(&p.target, target))?;
        let mut defaults = pool.defaults.lock().unwrap_or_else(|p| p.into_inner());
        let known = defaults
            .as_mut()
            .filter(|known| known.seen.elapsed() <= max_age)?;
        let Some(name) = application_name else {
            return Some(known.parameters.clone());
        };
        let current = known
            .parameters
            .iter()
            .find(|(n, _)| n == "application_name")
            .map(|(_, v)| v.as_str());
        if current == Some(name) {
            return Some(known.parameters.clone());
        }
        if let Some((_, shared)) = known.with_application_name.iter().find(|(n, _)| n == name) {
            return Some(shared.clone());
        }
        let mut parameters = known.parameters.as_ref().clone();
        match parameters.iter_mut().find(|(n, _)| n == "application_name") {
            Some((_, value)) => *value = name.to_string(),
            None => parameters.push(("application_name".to_string(), name.to_string())),
        }
        let parameters = Arc::new(parameters);
        if known.with_application_name.len() < MAX_APPLICATION_NAMES {
            known
                .with_application_name
                .push((name.to_string(), parameters.clone()));
        }
        Some(parameters)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LiveConfig};
    use crate::credentials::RolePasswords;
    use crate::names::{ClusterName, RoleName};
    use crate::upstream_tls::UpstreamTls;

    fn pool() -> (Arc<PoolManager>, PoolKey, Arc<UpstreamTarget>) {
        let pools = PoolManager::new(
            LiveConfig::new(Config::default()),
            RolePasswords::new(b"test server secret"),
        );
        let key = PoolKey::new(ClusterName::new("default"), RoleName::new("tenant_t"));
        let target = Arc::new(UpstreamTarget {
            host: "127.0.0.1".into(),
            port: 1,
            database: "app".into(),
            connect_timeout: Duration::from_millis(100),
            tls: UpstreamTls::disabled(),
        });
        pools.tenant_pool(&key, &target);
        (pools, key, target)
    }

    fn reported(application_name: &str) -> Vec<(String, String)> {
        vec![
            ("application_name".into(), application_name.into()),
            ("client_encoding".into(), "UTF8".into()),
        ]
    }

    fn value<'a>(parameters: &'a [(String, String)], name: &str) -> Option<&'a str> {
        parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn logins_of_one_application_share_one_list() {
        let (pools, key, target) = pool();
        let age = Duration::from_secs(60);
        assert!(pools.defaults(&key, &target, age, None).is_none());
        pools.remember_defaults(&key, &reported(""));

        let base = pools.defaults(&key, &target, age, None).expect("seen");
        let same_as_base = pools.defaults(&key, &target, age, Some("")).expect("seen");
        assert!(Arc::ptr_eq(&base, &same_as_base));

        let first = pools
            .defaults(&key, &target, age, Some("pgbench"))
            .expect("seen");
        let second = pools
            .defaults(&key, &target, age, Some("pgbench"))
            .expect("seen");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &base));
        assert_eq!(value(&first, "application_name"), Some("pgbench"));
        assert_eq!(value(&first, "client_encoding"), Some("UTF8"));
        let other = pools
            .defaults(&key, &target, age, Some("psql"))
            .expect("seen");
        assert_eq!(value(&other, "application_name"), Some("psql"));
        assert!(!Arc::ptr_eq(&first, &other));

        // The same report again keeps what was handed out; a changed one starts over.
        pools.remember_defaults(&key, &reported(""));
        let again = pools
            .defaults(&key, &target, age, Some("pgbench"))
            .expect("seen");
        assert!(Arc::ptr_eq(&first, &again));
        let mut changed = reported("");
        changed[1].1 = "LATIN1".into();
        pools.remember_defaults(&key, &changed);
        let after = pools
            .defaults(&key, &target, age, Some("pgbench"))
            .expect("seen");
        assert!(!Arc::ptr_eq(&first, &after));
        assert_eq!(value(&after, "client_encoding"), Some("LATIN1"));
        assert_eq!(value(&after, "application_name"), Some("pgbench"));
    }

    #[test]
    fn names_past_the_limit_get_a_list_each_and_old_defaults_none() {
        let (pools, key, target) = pool();
        let age = Duration::from_secs(60);
        pools.remember_defaults(&key, &reported(""));
        for i in 0..MAX_APPLICATION_NAMES {
            pools.defaults(&key, &target, age, Some(&format!("app{i}")));
        }
        let first = pools
            .defaults(&key, &target, age, Some("late"))
            .expect("seen");
        let second = pools
            .defaults(&key, &target, age, Some("late"))
            .expect("seen");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(first, second);
        std::thread::sleep(Duration::from_millis(2));
        assert!(pools
            .defaults(&key, &target, Duration::ZERO, None)
            .is_none());
    }
}
