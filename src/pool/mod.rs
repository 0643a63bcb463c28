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

use crate::names::ClusterName;
mod pauses;
pub mod queue;
pub mod routes;

use crate::config::PoolConfig;
use crate::credentials::RolePasswords;
use crate::limits::ServerSettings;
use crate::names::RoleName;
use crate::protocol::PgError;
use crate::upstream::{Login, SaltedPasswordCache, UpstreamConn, UpstreamError, UpstreamTarget};
use pauses::Pauses;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A live connection and its share of the global cap.
struct Member {
    conn: UpstreamConn,
    _global: OwnedSemaphorePermit,
    _live: LiveCount,
}

/// Counts a tenant's live connections (idle or lent) while it exists.
struct LiveCount(Arc<AtomicUsize>);

impl LiveCount {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct TenantPool {
    key: PoolKey,
    /// Where its connections go.
    target: Arc<UpstreamTarget>,
    /// Replaced by a pool to another target: connections given back are closed.
    retired: std::sync::atomic::AtomicBool,
    /// One permit per checked-out connection.
    checkout: Arc<Semaphore>,
    /// Idle connections, oldest first.
    idle: Mutex<VecDeque<Member>>,
    /// Live connections (idle or lent).
    live: Arc<AtomicUsize>,
    /// Clients waiting for a connection of this tenant.
    waiting: AtomicUsize,
    /// Of those, waiting for room under the global cap.
    waiting_global: AtomicUsize,
    /// Statement generations: a statement that went stale after DDL is retired, and the next Parse of the
    /// same query gets a new server-side name (transaction pooling).
    statement_generations: Mutex<HashMap<String, u32>>,
    /// The parameters a connection of this role reports at its defaults (after `RESET ALL`), and when they
    /// were seen: a transaction-pooled login is answered from them without a server connection.
    defaults: Mutex<Option<RoleDefaults>>,
    /// The tenant's limits PostgreSQL enforces, as its latest login found them in the directory: new
    /// connections are opened with them, idle ones opened with others are closed instead of reused.
    settings: Mutex<ServerSettings>,
}

/// Parameters a server reported (name, value), and when they were seen.
type RoleDefaults = (Vec<(String, String)>, Instant);

impl TenantPool {
    fn oldest_idle(&self) -> Option<Instant> {
        self.idle
            .lock()
            .ok()
            .and_then(|idle| idle.front().map(|m| m.conn.last_used))
    }
}

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

pub struct PoolManager {
    /// The sizes (`size_per_tenant`, `max_server_connections`: the semaphores are made with them) as at
    /// start; the other keys as at start too, overridden by [`Self::live`].
    config: PoolConfig,
    /// The keys a RELOAD changes for connections and waits from then on.
    live: LiveSettings,
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

/// Counts a waiting client while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection lent to one client. Dropping it closes the connection; `PoolManager::check_in` returns it.
pub struct Checkout {
    member: Option<Member>,
    pool: Arc<TenantPool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut UpstreamConn {
        &mut self
            .member
            .as_mut()
            .expect("checkout holds a connection until checked in")
            .conn
    }
}

/// The pool settings a RELOAD changes while pgtenant runs (see [`PoolManager::reload`]).
struct LiveSettings {
    acquire_timeout_ms: AtomicU64,
    idle_timeout_secs: AtomicU64,
    max_lifetime_secs: AtomicU64,
    reserve_per_tenant: AtomicUsize,
    health_check_after_secs: AtomicU64,
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

    pub fn new(config: PoolConfig, passwords: RolePasswords) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(config.max_server_connections)),
            global_waiting: AtomicUsize::new(0),
            pauses: Pauses::default(),
            live: LiveSettings::from(&config),
            config,
            passwords,
            salted: SaltedPasswordCache::default(),
            tenants: Mutex::new(HashMap::new()),
            moved: Default::default(),
        })
    }

    /// The pool of `key`, made on first use; a pool whose connections go to another target than `target`
    /// (the cluster's settings changed) is replaced, its idle connections closed.
    fn tenant_pool(&self, key: &PoolKey, target: &Arc<UpstreamTarget>) -> Arc<TenantPool> {
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
            checkout: Arc::new(Semaphore::new(self.config.size_per_tenant)),
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
    fn existing_pool(&self, key: &PoolKey) -> Option<Arc<TenantPool>> {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Lends a connection of `key`'s pool: an idle one if there is a healthy one, else a new one to
    /// `target` (the key's cluster).
    pub async fn acquire(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
    ) -> Result<Checkout, PoolError> {
        match self.acquire_inner(key, target, true).await? {
            Some(checkout) => Ok(checkout),
            None => unreachable!("a waiting acquire returns a connection or an error"),
        }
    }

    /// A connection only if one can be had without waiting for another client to give one back
    /// (an idle one, or room to open one). `Ok(None)` otherwise.
    pub async fn try_acquire(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
    ) -> Result<Option<Checkout>, PoolError> {
        self.acquire_inner(key, target, false).await
    }

    async fn acquire_inner(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        wait: bool,
    ) -> Result<Option<Checkout>, PoolError> {
        let role = &key.role;
        let pool = self.tenant_pool(key, target);
        let settings = *pool.settings.lock().unwrap_or_else(|p| p.into_inner());
        // The clocks are read for the wait only when the checkout has to wait (a free permit is taken at once).
        let mut started = None;
        let mut deadline = None;
        let permit = match pool.checkout.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if !wait => return Ok(None),
            Err(_) => {
                let since = *started.get_or_insert_with(Instant::now);
                let until = *deadline.get_or_insert_with(|| self.acquire_deadline());
                let _waiting = Waiting::new(&pool.waiting);
                tokio::time::timeout_at(until, pool.checkout.clone().acquire_owned())
                    .await
                    .map_err(|_| PoolError::TenantBusy {
                        size: self.config.size_per_tenant,
                        waited: since.elapsed(),
                    })?
                    .expect("pool semaphores are never closed")
            }
        };

        let now = Instant::now();
        while let Some(mut member) = pool.idle.lock().ok().and_then(|mut idle| idle.pop_back()) {
            if member.conn.settings == settings
                && member.conn.check_idle()
                && !self.expired_at(&member.conn, now)
                && self.healthy(&mut member.conn, now).await
            {
                return Ok(Some(Checkout {
                    member: Some(member),
                    pool,
                    _permit: permit,
                }));
            }
            tracing::debug!(pool = %key, "dropping a stale idle server connection (closed, expired, unhealthy or opened with other limits)");
        }

        let started = started.unwrap_or(now);
        let deadline = deadline.unwrap_or_else(|| self.acquire_deadline());
        let global = loop {
            match self.global.clone().try_acquire_owned() {
                Ok(p) => break p,
                Err(_) if self.evict_least_recently_used() => continue,
                Err(_) if !wait => return Ok(None),
                Err(_) => {
                    // Wait for room, looking again now and then for an idle connection to close: one may
                    // have gone idle since (another tenant's, kept while nobody waited).
                    let _waiting = Waiting::new(&self.global_waiting);
                    let _waiting_here = Waiting::new(&pool.waiting_global);
                    let slice = tokio::time::Instant::now() + Duration::from_millis(50);
                    match tokio::time::timeout_at(
                        slice.min(deadline),
                        self.global.clone().acquire_owned(),
                    )
                    .await
                    {
                        Ok(permit) => break permit.expect("pool semaphores are never closed"),
                        Err(_) if tokio::time::Instant::now() >= deadline => {
                            return Err(PoolError::GlobalBusy {
                                max: self.config.max_server_connections,
                                waited: started.elapsed(),
                            })
                        }
                        Err(_) => continue,
                    }
                }
            }
        };
        let password = self.passwords.password_for(role.as_str());
        let conn = UpstreamConn::connect(
            &pool.target,
            Login {
                user: role.as_str(),
                password: &password,
                salted_cache: &self.salted,
                settings,
            },
        )
        .await
        .inspect_err(|e| {
            if let UpstreamError::Tls { .. } = e {
                tracing::error!(role = %role, cluster = %key.cluster, sslmode = pool.target.tls.mode().as_str(), error = %e, "TLS to the database server failed");
            }
        })?;
        tracing::debug!(pool = %key, backend_pid = conn.process_id, "opened server connection");
        Ok(Some(Checkout {
            member: Some(Member {
                conn,
                _global: global,
                _live: LiveCount::new(&pool.live),
            }),
            pool,
            _permit: permit,
        }))
    }

    /// When a checkout that starts waiting now gives up (`pool.acquire_timeout_ms`).
    fn acquire_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
            + Duration::from_millis(self.live.acquire_timeout_ms.load(Ordering::Relaxed))
    }

    /// A connection idle for longer than `pool.health_check_after_secs` (at `now`) answers an empty query
    /// first.
    async fn healthy(&self, conn: &mut UpstreamConn, now: Instant) -> bool {
        if now.saturating_duration_since(conn.last_used)
            < Duration::from_secs(self.live.health_check_after_secs.load(Ordering::Relaxed))
        {
            return true;
        }
        let check = tokio::time::timeout(Duration::from_secs(5), conn.run_simple(&[""]));
        matches!(check.await, Ok(Ok((None, crate::protocol::TxStatus::Idle))))
    }

    fn expired(&self, conn: &UpstreamConn) -> bool {
        self.expired_at(conn, Instant::now())
    }

    /// Whether `conn` has outlived `pool.max_lifetime_secs` at `now`.
    fn expired_at(&self, conn: &UpstreamConn, now: Instant) -> bool {
        now.saturating_duration_since(conn.created_at)
            >= Duration::from_secs(self.live.max_lifetime_secs.load(Ordering::Relaxed))
    }

    /// Closes the least recently used idle connection of any tenant. Returns false if none is idle.
    fn evict_least_recently_used(&self) -> bool {
        let pools: Vec<Arc<TenantPool>> = match self.tenants.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return false,
        };
        let victim = pools
            .iter()
            .filter_map(|p| p.oldest_idle().map(|t| (t, p)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, p)| p.clone());
        let Some(pool) = victim else {
            return false;
        };
        let evicted = pool.idle.lock().ok().and_then(|mut idle| idle.pop_front());
        match evicted {
            Some(member) => {
                tracing::debug!(pool = %pool.key, "closing an idle server connection to make room for another tenant");
                spawn_terminate(member);
                true
            }
            None => false,
        }
    }

    /// Takes a connection back. `reusable` says the session left it clean (reset done); otherwise, or if it
    /// broke or outlived `max_lifetime`, it is closed.
    pub fn check_in(&self, mut checkout: Checkout, reusable: bool) {
        let Some(mut member) = checkout.member.take() else {
            return;
        };
        let now = Instant::now();
        if !reusable
            || member.conn.broken
            || self.expired_at(&member.conn, now)
            || self.replaced(&checkout.pool)
        {
            spawn_terminate(member);
            return;
        }
        // Fair sharing: while other tenants wait for room under the global cap, a tenant above its reserve
        // gives its connection back to the cap instead of keeping it idle.
        let live = checkout.pool.live.load(Ordering::Relaxed);
        let others_waiting = self
            .global_waiting
            .load(Ordering::Relaxed)
            .saturating_sub(checkout.pool.waiting_global.load(Ordering::Relaxed));
        if others_waiting > 0 && live > self.live.reserve_per_tenant.load(Ordering::Relaxed) {
            spawn_terminate(member);
            return;
        }
        member.conn.last_used = now;
        if let Ok(mut idle) = checkout.pool.idle.lock() {
            idle.push_back(member);
        }
    }

    /// Whether `pool` is no longer the one its key names (its cluster's settings changed).
    fn replaced(&self, pool: &TenantPool) -> bool {
        pool.retired.load(Ordering::Relaxed)
    }

    /// Closes idle connections past `idle_timeout` or `max_lifetime`. Run periodically.
    pub fn reap_idle(&self) {
        let idle_timeout = Duration::from_secs(self.live.idle_timeout_secs.load(Ordering::Relaxed));
        let pools: Vec<Arc<TenantPool>> = match self.tenants.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return,
        };
        for pool in pools {
            let expired: Vec<Member> = match pool.idle.lock() {
                Ok(mut idle) => {
                    let (keep, drop): (VecDeque<Member>, VecDeque<Member>) =
                        idle.drain(..).partition(|m| {
                            m.conn.last_used.elapsed() < idle_timeout && !self.expired(&m.conn)
                        });
                    *idle = keep;
                    drop.into_iter().collect()
                }
                Err(_) => continue,
            };
            for member in expired {
                spawn_terminate(member);
            }
        }
    }

    /// Closes every idle connection of a tenant (after it was suspended or dropped) or of all tenants.
    pub fn close_idle(&self, role: Option<&RoleName>) {
        let pools: Vec<Arc<TenantPool>> = match self.tenants.lock() {
            Ok(t) => t
                .values()
                .filter(|p| role.is_none_or(|r| *r == p.key.role))
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for pool in pools {
            let drained: Vec<Member> = match pool.idle.lock() {
                Ok(mut idle) => idle.drain(..).collect(),
                Err(_) => continue,
            };
            for member in drained {
                spawn_terminate(member);
            }
        }
    }

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
                active: self.config.size_per_tenant - p.checkout.available_permits(),
                idle: p.idle.lock().map(|i| i.len()).unwrap_or(0),
                waiting: p.waiting.load(Ordering::Relaxed),
                limit: self.config.size_per_tenant,
            })
            .collect()
    }

    /// What a client waiting for `key`'s connections waits for.
    pub fn queue_state(&self, key: &PoolKey) -> QueueState {
        let (in_use, waiting) = self
            .existing_pool(key)
            .map(|pool| {
                (
                    self.config.size_per_tenant - pool.checkout.available_permits(),
                    pool.waiting.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0));
        QueueState {
            in_use,
            limit: self.config.size_per_tenant,
            global_limit: self.config.max_server_connections,
            waiting,
        }
    }

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
        self.config.size_per_tenant
    }

    /// Remembers the parameters a connection of `key` reports at the role's defaults.
    pub fn remember_defaults(&self, key: &PoolKey, parameters: &[(String, String)]) {
        let Some(pool) = self.existing_pool(key) else {
            return;
        };
        let mut defaults = pool.defaults.lock().unwrap_or_else(|p| p.into_inner());
        *defaults = Some((parameters.to_vec(), Instant::now()));
    }

    /// The parameters of `key`'s role defaults, if seen within `max_age` (by a pool to `target`).
    pub fn defaults(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        max_age: Duration,
    ) -> Option<Vec<(String, String)>> {
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

fn spawn_terminate(member: Member) {
    // The global permit is given back at once, so the room is usable before the goodbye is sent.
    let Member {
        conn,
        _global,
        _live,
    } = member;
    drop(_global);
    drop(_live);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(conn.terminate());
    }
}
