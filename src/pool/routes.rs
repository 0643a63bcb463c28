//! Where a moved tenant's server connections go now, for the sessions that logged in before its move: a
//! transaction-pooled session takes each transaction's connection from its tenant's pool on the cluster
//! it logged in to, and after a switch that pool is the target's. Filled by the `MoveSwitched`
//! announcement; read before each checkout (one atomic load while no tenant was moved).

use super::PoolKey;
use crate::upstream::UpstreamTarget;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The pools of moved tenants: old key → new key and where its connections go.
#[derive(Default)]
pub struct MovedPools {
    any: AtomicBool,
    moved: Mutex<HashMap<PoolKey, (PoolKey, Arc<UpstreamTarget>)>>,
}

/// Moves followed one after another (A → B → C) are followed this far.
const MAX_HOPS: usize = 8;

impl MovedPools {
    /// `from`'s sessions now take connections from `to`. A tenant moved back forgets its earlier move.
    pub fn record(&self, from: PoolKey, to: PoolKey, target: Arc<UpstreamTarget>) {
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        moved.remove(&to);
        moved.insert(from, (to, target));
        self.any.store(true, Ordering::Release);
    }

    /// Where `key`'s sessions take connections from now, if its tenant was moved.
    pub fn current(&self, key: &PoolKey) -> Option<(PoolKey, Arc<UpstreamTarget>)> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = moved.get(key)?.clone();
        for _ in 0..MAX_HOPS {
            match moved.get(&found.0) {
                Some(next) => found = next.clone(),
                None => break,
            }
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ClusterName;
    use crate::names::RoleName;

    fn key(cluster: &str) -> PoolKey {
        PoolKey::new(ClusterName::new(cluster), RoleName::new("org_a"))
    }

    fn target(port: u16) -> Arc<UpstreamTarget> {
        Arc::new(UpstreamTarget {
            host: "127.0.0.1".into(),
            port,
            database: "app".into(),
            connect_timeout: std::time::Duration::from_secs(1),
            tls: crate::upstream_tls::UpstreamTls::disabled(),
        })
    }

    #[test]
    fn moves_are_followed_and_a_move_back_ends_at_home() {
        let moved = MovedPools::default();
        assert!(moved.current(&key("a")).is_none());
        moved.record(key("a"), key("b"), target(2));
        assert_eq!(moved.current(&key("a")).map(|m| m.0), Some(key("b")));
        assert!(moved.current(&key("b")).is_none());
        moved.record(key("b"), key("c"), target(3));
        let (to, t) = moved.current(&key("a")).expect("moved twice");
        assert_eq!((to, t.port), (key("c"), 3));
        // Back to a: a's own pool is current again for sessions of a; b's and c's go to a.
        moved.record(key("c"), key("a"), target(1));
        assert!(moved.current(&key("a")).is_none());
        assert_eq!(moved.current(&key("c")).map(|m| m.0), Some(key("a")));
    }
}
