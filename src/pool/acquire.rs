//! Lending a connection: an idle one that is still healthy, else a new one under the tenant's size and the
//! global cap, closing another tenant's least recently used idle connection to make room.

use super::member::{spawn_terminate, Checkout, LiveCount, Member, Waiting};
use super::tenant_pool::TenantPool;
use super::{PoolError, PoolKey, PoolManager};
use crate::upstream::{Login, UpstreamConn, UpstreamError, UpstreamTarget};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tenant's pool as a session last found it ([`PoolManager::take_idle_now`]).
pub struct KnownPool(Arc<TenantPool>);

impl PoolManager {
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

    /// An idle connection of `key`'s pool that needs no round trip before it is lent (healthy without a
    /// check, opened with the tenant's limits), taken without waiting and without a future: the common
    /// checkout of a busy tenant. `None` when there is none (no free permit, no idle connection, or the
    /// newest one is due a health check): [`Self::acquire`] then does the rest.
    /// `known` is the pool a previous call found for the caller (kept there: no lookup while it is still
    /// the current pool of `key` and `target`).
    pub fn take_idle_now(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        known: &mut Option<KnownPool>,
    ) -> Option<Checkout> {
        let pool = match known {
            Some(KnownPool(pool)) if pool.is_current_for(key, target) => pool.clone(),
            _ => {
                let pool = self.tenant_pool(key, target);
                *known = Some(KnownPool(pool.clone()));
                pool
            }
        };
        let settings = *pool.settings.lock().unwrap_or_else(|p| p.into_inner());
        let permit = pool.checkout.clone().try_acquire_owned().ok()?;
        let now = Instant::now();
        let check_after = Duration::from_secs(self.config.load().pool.health_check_after_secs);
        let mut idle = pool.idle.lock().ok()?;
        while let Some(mut member) = idle.pop_back() {
            if now.saturating_duration_since(member.conn.last_used) >= check_after {
                // Due a health check: that is a round trip, left to `acquire`.
                idle.push_back(member);
                return None;
            }
            if member.conn.settings == settings
                && member.conn.check_idle()
                && !self.expired_at(&member.conn, now)
            {
                drop(idle);
                return Some(Checkout {
                    member: Some(member),
                    pool,
                    _permit: permit,
                });
            }
            tracing::debug!(pool = %key, "dropping a stale idle server connection (closed, expired or opened with other limits)");
        }
        None
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
                        size: self.sizes.size_per_tenant,
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
                                max: self.sizes.max_server_connections,
                                waited: started.elapsed(),
                            })
                        }
                        Err(_) => continue,
                    }
                }
            }
        };
        let password = self.passwords.password_for(role.as_str());
        // Boxed: opening a connection (TCP, TLS, SCRAM) is a large future and a rare one; inline, every
        // session's relay would carry its room for the session's whole life.
        let conn = Box::pin(UpstreamConn::connect(
            &pool.target,
            Login {
                user: role.as_str(),
                password: &password,
                salted_cache: &self.salted,
                settings,
            },
        ))
        .await
        .inspect_err(|e| {
            if let UpstreamError::Tls { .. } = e {
                tracing::error!(role = %role, cluster = %key.cluster, sslmode = pool.target.tls.mode().as_str(), error = %e, "TLS to the database server failed");
            }
        })?;
        tracing::debug!(pool = %key, backend_pid = conn.process_id, "opened server connection");
        Ok(Some(Checkout {
            member: Some(Member {
                conn: Box::new(conn),
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
            + Duration::from_millis(self.config.load().pool.acquire_timeout_ms)
    }

    /// A connection idle for longer than `pool.health_check_after_secs` (at `now`) answers an empty query
    /// first.
    async fn healthy(&self, conn: &mut UpstreamConn, now: Instant) -> bool {
        if now.saturating_duration_since(conn.last_used)
            < Duration::from_secs(self.config.load().pool.health_check_after_secs)
        {
            return true;
        }
        let check = tokio::time::timeout(Duration::from_secs(5), conn.run_simple(&[""]));
        matches!(check.await, Ok(Ok((None, crate::protocol::TxStatus::Idle))))
    }

    pub(super) fn expired(&self, conn: &UpstreamConn) -> bool {
        self.expired_at(conn, Instant::now())
    }

    /// Whether `conn` has outlived `pool.max_lifetime_secs` at `now`.
    pub(super) fn expired_at(&self, conn: &UpstreamConn, now: Instant) -> bool {
        now.saturating_duration_since(conn.created_at)
            >= Duration::from_secs(self.config.load().pool.max_lifetime_secs)
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
}
