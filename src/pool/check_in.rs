//! Taking a connection back (kept idle or closed), and closing idle connections: past their time, or all of
//! a suspended tenant's.

use super::member::{spawn_terminate, Checkout, Member};
use super::tenant_pool::TenantPool;
use super::PoolManager;
use crate::names::RoleName;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl PoolManager {
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
        if others_waiting > 0 && live > self.config.load().pool.reserve_per_tenant {
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
        let idle_timeout = Duration::from_secs(self.config.load().pool.idle_timeout_secs);
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
}
