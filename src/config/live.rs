//! The one live configuration of a running pgtenant: every reader (sessions, pool, directory, admin channel)
//! loads the current snapshot when it needs a key, so a RELOAD changes what all of them read from then on.
//! What is fixed at start (the keys a RELOAD reports as needing a restart) is named by [`restart_needed`].

use super::Config;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The configuration as last loaded; swapped whole by [`LiveConfig::replace`].
pub struct LiveConfig {
    current: ArcSwap<Config>,
}

impl LiveConfig {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The current snapshot, cheap enough for the hot path (no lock, no reference count change for a
    /// short-lived guard).
    pub fn load(&self) -> arc_swap::Guard<Arc<Config>> {
        self.current.load()
    }

    /// The current snapshot, to keep across awaits.
    pub fn snapshot(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Makes `config` the snapshot every reader sees from now on; returns the one it replaces.
    pub fn replace(&self, config: Config) -> Arc<Config> {
        self.current.swap(Arc::new(config))
    }
}

/// The settings that differ between `old` and `new` but are fixed while pgtenant runs: the listen address,
/// the upstream server, the pool sizes (the pool's semaphores are made with them) and the client cap.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut needs_restart = Vec::new();
    if old.server.listen != new.server.listen {
        needs_restart.push("server.listen");
    }
    let (o, n) = (&old.upstream, &new.upstream);
    if o.host != n.host
        || o.port != n.port
        || o.database != n.database
        || o.admin_user != n.admin_user
        || o.sslmode != n.sslmode
        || o.sslrootcert != n.sslrootcert
        || o.sslcert != n.sslcert
        || o.sslkey != n.sslkey
    {
        needs_restart.push("upstream");
    }
    if old.pool.size_per_tenant != new.pool.size_per_tenant
        || old.pool.max_server_connections != new.pool.max_server_connections
    {
        needs_restart.push("pool sizes");
    }
    if old.server.max_client_connections != new.server.max_client_connections {
        needs_restart.push("server.max_client_connections");
    }
    needs_restart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_snapshot_is_what_readers_load_next() {
        let live = LiveConfig::new(Config::default());
        let before = live.snapshot();
        let mut next = Config::default();
        next.pool.acquire_timeout_ms = 123;
        let old = live.replace(next);
        assert!(Arc::ptr_eq(&old, &before));
        assert_eq!(live.load().pool.acquire_timeout_ms, 123);
        assert_eq!(
            before.pool.acquire_timeout_ms,
            Config::default().pool.acquire_timeout_ms
        );
    }

    #[test]
    fn only_the_fixed_keys_need_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.pool.acquire_timeout_ms += 1;
        new.pool.idle_timeout_secs += 1;
        new.tenancy.directory_cache_ttl_ms += 1;
        assert!(restart_needed(&old, &new).is_empty());
        new.pool.size_per_tenant += 1;
        new.upstream.port += 1;
        assert_eq!(restart_needed(&old, &new), vec!["upstream", "pool sizes"]);
    }
}
