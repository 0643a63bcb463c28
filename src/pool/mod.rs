//! One pool per tenant and cluster of raw upstream connections logged in as the tenant's role, under a
//! global cap. A pool is keyed by (cluster, role): a tenant's primary and each of its replicas have a pool
//! of their own, and a pool opened on a cluster whose connection settings changed since (another target)
//! is replaced by a new one on first use, so a tenant moved to another cluster gets new connections.
//!
//! - A tenant has at most `size_per_tenant` connections checked out; a client that finds them all busy waits
//!   up to `acquire_timeout` and then gets 53300.
//! - All tenants together have at most `max_server_connections` live connections. When the cap is reached,
//!   the least recently used idle connection of any tenant is closed to make room; only if none is idle does
//!   the client wait.
//! - Idle connections are reused last-in first-out (warm caches), checked without a round trip before reuse
//!   (closed by the server? an error sent meanwhile?), and closed after `idle_timeout` or `max_lifetime`.
//!
//! bb8 is not used here: it has no way to take an idle connection out of one pool to make room for another
//! tenant's, which the global cap needs.
//!
//! A file per job: `tenant_pool` (the pool of one key, made on first use, replaced when its cluster's
//! settings change), `member` (a live connection with its permits and counts, the checkout lending it),
//! `acquire` (lending a connection), `check_in` (taking it back, closing idle ones), `role_state` (what a
//! pool keeps of its role: limits, defaults, statement generations), `stats` (what the pools hold, for the
//! admin views), `pauses` (PAUSE / RESUME). The keys a RELOAD changes are read from the live
//! configuration when used (`config::live`); only the sizes are fixed at start.

mod acquire;
mod check_in;
mod member;
mod pauses;
pub mod queue;
mod role_state;
pub mod routes;
mod stats;
mod tenant_pool;
#[cfg(test)]
mod test_support;

use crate::config::LiveConfig;
use crate::credentials::RolePasswords;
use crate::names::ClusterName;
use crate::names::RoleName;
use crate::protocol::PgError;
use crate::upstream::{SaltedPasswordCache, UpstreamError};
use pauses::Pauses;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tenant_pool::TenantPool;
use tokio::sync::Semaphore;

pub use acquire::KnownPool;
pub use member::Checkout;
pub use stats::{QueueState, TenantPoolStats};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("all {size} server connections of this tenant are busy; gave up after {waited:?}")]
    TenantBusy { size: usize, waited: Duration },
    #[error("all {max} server connections are busy; gave up after {waited:?}")]
    GlobalBusy { max: usize, waited: Duration },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl PoolError {
    /// What a client is told (see its [`crate::error::UserFacing`] entry), as a FATAL.
    pub fn to_client_error(&self) -> PgError {
        crate::error::UserFacing::to_fatal(self)
    }
}

/// What a pool serves: one tenant role on one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub cluster: ClusterName,
    pub role: RoleName,
}

impl PoolKey {
    pub fn new(cluster: ClusterName, role: RoleName) -> Self {
        Self { cluster, role }
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.role, self.cluster)
    }
}

pub struct PoolManager {
    /// The live configuration: the `[pool]` keys other than the sizes are read from it when used, so a
    /// RELOAD changes them for connections and waits from then on.
    config: Arc<LiveConfig>,
    /// The sizes as at start (the semaphores are made with them; changing them needs a restart).
    sizes: PoolSizes,
    passwords: RolePasswords,
    salted: SaltedPasswordCache,
    global: Arc<Semaphore>,
    /// Clients waiting for room under the global cap.
    global_waiting: AtomicUsize,
    tenants: Mutex<HashMap<PoolKey, Arc<TenantPool>>>,
    pauses: Pauses,
    /// Where the pools of moved tenants are now (see [`routes`]).
    pub moved: routes::MovedPools,
}

/// `pool.size_per_tenant` and `pool.max_server_connections` as at start.
#[derive(Clone, Copy, Debug)]
struct PoolSizes {
    size_per_tenant: usize,
    max_server_connections: usize,
}

impl PoolManager {
    pub fn new(config: Arc<LiveConfig>, passwords: RolePasswords) -> Arc<Self> {
        let sizes = {
            let c = config.load();
            PoolSizes {
                size_per_tenant: c.pool.size_per_tenant,
                max_server_connections: c.pool.max_server_connections,
            }
        };
        Arc::new(Self {
            global: Arc::new(Semaphore::new(sizes.max_server_connections)),
            global_waiting: AtomicUsize::new(0),
            pauses: Pauses::default(),
            config,
            sizes,
            passwords,
            salted: SaltedPasswordCache::default(),
            tenants: Mutex::new(HashMap::new()),
            moved: Default::default(),
        })
    }
}
