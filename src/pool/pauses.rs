//! PAUSE / RESUME of a pool manager: the tenants (or all) whose new transactions and logins are held, and
//! the pauses of a tenant move, each with a lease (see `crate::moves::switch`).

use super::PoolManager;
use crate::names::RoleName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// PAUSE / RESUME: tenants (or all) whose new transactions are held.
#[derive(Default)]
pub(super) struct Pauses {
    all: std::sync::atomic::AtomicBool,
    tenants: Mutex<std::collections::HashSet<RoleName>>,
    /// How many tenants `tenants` holds: while none is paused, a transaction's check takes no lock.
    paused_tenants: AtomicUsize,
    resumed: tokio::sync::Notify,
    /// Pauses of a tenant move, each with the number of its lease: a lease that runs out while it is
    /// still the role's latest resumes the role.
    leases: Mutex<HashMap<RoleName, u64>>,
    lease_numbers: AtomicUsize,
}

impl PoolManager {
    /// Holds new transactions (and logins) of `role`, or of every tenant.
    pub fn pause(&self, role: Option<&RoleName>) {
        match role {
            None => self.pauses.all.store(true, Ordering::SeqCst),
            Some(role) => {
                if let Ok(mut t) = self.pauses.tenants.lock() {
                    t.insert(role.clone());
                    self.pauses.paused_tenants.store(t.len(), Ordering::SeqCst);
                }
            }
        }
    }

    /// Holds `role`'s new transactions for a tenant move, for at most `lease` unless [`Self::resume`] comes
    /// first (a mover that crashed holds nobody for ever).
    pub fn pause_for(self: &Arc<Self>, role: &RoleName, lease: Duration) {
        self.pause(Some(role));
        let number = self.pauses.lease_numbers.fetch_add(1, Ordering::Relaxed) as u64;
        self.pauses
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(role.clone(), number);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pools, role) = (Arc::downgrade(self), role.clone());
        runtime.spawn(async move {
            tokio::time::sleep(lease).await;
            let Some(pools) = pools.upgrade() else {
                return;
            };
            let expired = {
                let mut leases = pools.pauses.leases.lock().unwrap_or_else(|p| p.into_inner());
                let latest = leases.get(&role) == Some(&number);
                if latest {
                    leases.remove(&role);
                }
                latest
            };
            if expired {
                tracing::warn!(role = %role, lease_ms = lease.as_millis() as u64, "a tenant move's pause ran out without word from the mover: the tenant's transactions go on");
                pools.resume(Some(&role));
            }
        });
    }

    /// Lets held transactions go on. `None` resumes everything (the global pause and every tenant's).
    pub fn resume(&self, role: Option<&RoleName>) {
        match role {
            None => {
                self.pauses.all.store(false, Ordering::SeqCst);
                if let Ok(mut t) = self.pauses.tenants.lock() {
                    t.clear();
                    self.pauses.paused_tenants.store(0, Ordering::SeqCst);
                }
                if let Ok(mut leases) = self.pauses.leases.lock() {
                    leases.clear();
                }
            }
            Some(role) => {
                if let Ok(mut t) = self.pauses.tenants.lock() {
                    t.remove(role);
                    self.pauses.paused_tenants.store(t.len(), Ordering::SeqCst);
                }
                if let Ok(mut leases) = self.pauses.leases.lock() {
                    leases.remove(role);
                }
            }
        }
        self.pauses.resumed.notify_waiters();
    }

    pub fn is_paused(&self, role: &RoleName) -> bool {
        self.pauses.all.load(Ordering::SeqCst)
            || (self.pauses.paused_tenants.load(Ordering::SeqCst) > 0
                && self
                    .pauses
                    .tenants
                    .lock()
                    .map(|t| t.contains(role))
                    .unwrap_or(false))
    }

    /// Waits while `role` is paused.
    pub async fn wait_unpaused(&self, role: &RoleName) {
        // The common case, nothing paused: no waiter registered, no lock taken.
        if !self.is_paused(role) {
            return;
        }
        loop {
            let resumed = self.pauses.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused(role) {
                return;
            }
            resumed.await;
        }
    }
}
