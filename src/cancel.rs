//! Cancel requests. Each client gets a BackendKeyData issued by pgtenant; a CancelRequest carrying it is
//! forwarded to the upstream connection that client holds at that moment, with the upstream's own key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Where a cancel for one client goes.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamKey {
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
}

/// Where the client's cancels go now: set by its session (once per transaction in transaction pooling)
/// without touching the process-wide map.
type UpstreamSlot = Arc<Mutex<Option<UpstreamKey>>>;

struct Entry {
    secret_key: i32,
    upstream: UpstreamSlot,
}

/// The key pgtenant gave a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientKey {
    pub process_id: i32,
    pub secret_key: i32,
}

#[derive(Default)]
pub struct CancelMap {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// Removes the client's entry when the session ends.
pub struct CancelRegistration {
    map: Arc<CancelMap>,
    slot: UpstreamSlot,
    pub key: ClientKey,
}

impl CancelMap {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Issues a fresh key for a client session: with `process_id` as its process id if given and free (the
    /// upstream backend's pid in session pooling, so `pg_backend_pid()` matches BackendKeyData as it does
    /// directly), else a random one. The secret is always pgtenant's own.
    pub fn register(self: &Arc<Self>, process_id: Option<i32>) -> CancelRegistration {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut preferred = process_id.filter(|pid| *pid > 0);
        loop {
            let process_id = preferred
                .take()
                .unwrap_or_else(|| rand::random::<i32>() & 0x7fff_ffff);
            if process_id == 0 || entries.contains_key(&process_id) {
                continue;
            }
            let secret_key = rand::random::<i32>();
            let slot = UpstreamSlot::default();
            entries.insert(
                process_id,
                Entry {
                    secret_key,
                    upstream: slot.clone(),
                },
            );
            return CancelRegistration {
                map: self.clone(),
                slot,
                key: ClientKey {
                    process_id,
                    secret_key,
                },
            };
        }
    }

    /// The upstream to cancel for a client key, if the key is known and the secret matches.
    pub fn lookup(&self, key: ClientKey) -> Option<UpstreamKey> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&key.process_id)?;
        // Compare without an early exit on the first differing bit.
        if (entry.secret_key ^ key.secret_key) != 0 {
            return None;
        }
        let slot = entry.upstream.clone();
        drop(entries);
        let upstream = *slot.lock().ok()?;
        upstream
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CancelRegistration {
    /// Points the client's key at the upstream connection it now holds (or at none).
    pub fn set_upstream(&self, upstream: Option<UpstreamKey>) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = upstream;
        }
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.map.entries.lock() {
            entries.remove(&self.key.process_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_needs_the_right_secret_and_ends_with_the_session() {
        let map = CancelMap::new();
        let reg = map.register(Some(77));
        assert_eq!(reg.key.process_id, 77);
        assert_ne!(
            map.register(Some(77)).key.process_id,
            77,
            "a taken pid is not reused"
        );
        let upstream = UpstreamKey {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            process_id: 77,
            secret_key: 99,
        };
        reg.set_upstream(Some(upstream));
        let key = reg.key;
        assert_eq!(map.lookup(key).map(|u| u.process_id), Some(77));
        let wrong = ClientKey {
            secret_key: key.secret_key.wrapping_add(1),
            ..key
        };
        assert!(map.lookup(wrong).is_none());
        drop(reg);
        assert!(map.lookup(key).is_none());
        assert!(map.is_empty());
    }
}
