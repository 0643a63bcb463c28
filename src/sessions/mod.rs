//! The client sessions running in this pgtenant process: for `SHOW CLIENTS` / `SHOW SERVERS`, and to end the
//! sessions of a tenant that was suspended or dropped, of a user that was disabled, or of a revoked token.

use crate::protocol::PgError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use uuid::Uuid;

mod signal;

pub use signal::SessionSignal;

/// What is known of one running session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub user_email: String,
    pub tenant_id: Uuid,
    /// Its tenant as the directory gave it at login (shared with the login and the tenant's other sessions
    /// of the same user: slug, role).
    pub tenant: std::sync::Arc<crate::directory::Tenant>,
    /// The cluster its server connections go to (a replica's name for a read-only session).
    pub cluster: String,
    pub backend_pid: i32,
    pub tls: bool,
    pub connected_at: SystemTime,
    pub user_id: Uuid,
    /// The login token's `jti` and `iat`, when it had them (revocation).
    pub jti: Option<String>,
    pub issued_at: Option<u64>,
}

struct Entry {
    info: SessionInfo,
    signal: Arc<SessionSignal>,
    /// Why the session was ended from outside, told to its client (boxed: rarely set, and every entry
    /// would carry its room).
    reason: Option<Box<PgError>>,
}

#[derive(Default)]
pub struct SessionRegistry {
    next_id: AtomicU64,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// Boxed entries: the table keeps spare slots as it grows (up to half of them), each a pointer, not an
    /// entry.
    by_id: HashMap<u64, Box<Entry>>,
    /// pgtenant is shutting down: sessions registered from now on drain from their start.
    draining: bool,
}

/// A session's entry, removed when dropped.
pub struct SessionHandle {
    registry: Arc<SessionRegistry>,
    pub id: u64,
    pub signal: Arc<SessionSignal>,
}

impl SessionRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a session; `info.id` is assigned here. The session waits on a signal of its own, never on
    /// one every session shares: [`Self::drain_all`] and [`Self::kick_all`] raise each session's.
    pub fn register(self: &Arc<Self>, mut info: SessionInfo) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        info.id = id;
        let signal = SessionSignal::new();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.draining {
            signal.drain();
        }
        entries.by_id.insert(
            id,
            Box::new(Entry {
                info,
                signal: signal.clone(),
                reason: None,
            }),
        );
        SessionHandle {
            registry: self.clone(),
            id,
            signal,
        }
    }

    /// pgtenant is shutting down: every session, and every one registered from now on, ends at its next
    /// idle point.
    pub fn drain_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.draining = true;
        for entry in entries.by_id.values() {
            entry.signal.drain();
        }
    }

    /// Ends every session now (the shutdown grace period is over). Returns how many were running.
    pub fn kick_all(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.by_id.values() {
            entry.signal.kick();
        }
        entries.by_id.len()
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .entries
            .lock()
            .map(|e| e.by_id.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default();
        list.sort_by_key(|s| s.id);
        list
    }

    /// Number of sessions per tenant id.
    pub fn count_by_tenant(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        if let Ok(entries) = self.entries.lock() {
            for e in entries.by_id.values() {
                *counts.entry(e.info.tenant_id).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn count_for(&self, tenant_id: Uuid) -> usize {
        self.entries
            .lock()
            .map(|e| {
                e.by_id
                    .values()
                    .filter(|e| e.info.tenant_id == tenant_id)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Ends every session of a tenant; each client is told `reason`. Returns how many were ended.
    pub fn end_tenant_sessions(&self, tenant_id: Uuid, reason: &PgError) -> usize {
        self.end_sessions_where(|info| info.tenant_id == tenant_id, reason)
    }

    /// Ends at once every session `which` picks; each client is told `reason`. Returns how many were ended.
    pub fn end_sessions_where(
        &self,
        which: impl Fn(&SessionInfo) -> bool,
        reason: &PgError,
    ) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let mut ended = 0;
        for entry in entries.by_id.values_mut().filter(|e| which(&e.info)) {
            entry.reason = Some(Box::new(reason.clone()));
            entry.signal.kick();
            ended += 1;
        }
        ended
    }
}

impl SessionHandle {
    /// Notes why the session is about to end, unless a reason was given already.
    pub fn set_reason(&self, reason: PgError) {
        if let Ok(mut entries) = self.registry.entries.lock() {
            if let Some(entry) = entries.by_id.get_mut(&self.id) {
                entry.reason.get_or_insert_with(|| Box::new(reason));
            }
        }
    }

    /// Why the session was ended from outside, if it was.
    pub fn reason(&self) -> Option<PgError> {
        self.registry.entries.lock().ok().and_then(|e| {
            e.by_id
                .get(&self.id)
                .and_then(|e| e.reason.as_deref().cloned())
        })
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.registry.entries.lock() {
            entries.by_id.remove(&self.id);
        }
    }
}
