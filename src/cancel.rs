//! Cancel requests. Each client gets a BackendKeyData issued by pgtenant; a CancelRequest carrying it is
//! forwarded to the upstream connection that client holds at that moment, with the upstream's own key.
//!
//! In transaction pooling the connection goes to another client once this one is between transactions. A
//! cancel looked up while the client held it, and still on its way, would then hit the other client's
//! statement; so a connection with a cancel in flight is given back only once that cancel is done (the
//! server has signalled its backend; a signal that arrives while the backend waits for a command is ignored
//! by PostgreSQL).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Where a cancel for one client goes, and with which TLS settings (those of the connection's cluster).
#[derive(Clone, Debug)]
pub struct UpstreamKey {
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
    pub tls: Arc<crate::upstream_tls::UpstreamTls>,
}

/// Where the client's cancels go now: set by its session (once per transaction in transaction pooling)
/// without touching the process-wide map; and how many cancels to it are on their way.
#[derive(Default)]
struct SlotState {
    upstream: Option<UpstreamKey>,
    in_flight: u32,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Woken when the last cancel in flight is done.
    done: tokio::sync::Notify,
}

type UpstreamSlot = Arc<Slot>;

/// A cancel on its way to `upstream`: while it lives, the session holding that connection waits for it
/// before giving the connection to anyone else.
pub struct CancelTicket {
    slot: UpstreamSlot,
    pub upstream: UpstreamKey,
}

impl Drop for CancelTicket {
    fn drop(&mut self) {
        let mut state = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            self.slot.done.notify_waiters();
        }
    }
}

/// Longest a session waits for a cancel in flight before giving its connection back anyway.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

    /// The upstream to cancel for a client key, if the key is known, the secret matches and the client holds
    /// a connection; the ticket keeps that connection with the client until the cancel is done.
    pub fn lookup(&self, key: ClientKey) -> Option<CancelTicket> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&key.process_id)?;
        // Compare without an early exit on the first differing bit.
        if (entry.secret_key ^ key.secret_key) != 0 {
            return None;
        }
        let slot = entry.upstream.clone();
        drop(entries);
        let mut state = slot.state.lock().ok()?;
        let upstream = state.upstream.clone()?;
        state.in_flight += 1;
        drop(state);
        Some(CancelTicket { slot, upstream })
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
        if let Ok(mut state) = self.slot.state.lock() {
            state.upstream = upstream;
        }
    }

    /// Points the client's key at no connection, then waits until no cancel looked up before is still on
    /// its way (at most [`CANCEL_WAIT`]): the connection may then go to another client.
    pub async fn release_upstream(&self) {
        // Once per transaction: the common case (no cancel on its way) takes the lock once and no waiter.
        {
            let mut state = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            state.upstream = None;
            if state.in_flight == 0 {
                return;
            }
        }
        loop {
            let done = self.slot.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let mut state = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
                state.upstream = None;
                if state.in_flight == 0 {
                    return;
                }
            }
            if tokio::time::timeout(CANCEL_WAIT, done).await.is_err() {
                tracing::warn!("a cancel request still on its way after {CANCEL_WAIT:?}; giving the connection back");
                return;
            }
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
            tls: Arc::new(crate::upstream_tls::UpstreamTls::disabled()),
        };
        reg.set_upstream(Some(upstream));
        let key = reg.key;
        assert_eq!(map.lookup(key).map(|t| t.upstream.process_id), Some(77));
        let wrong = ClientKey {
            secret_key: key.secret_key.wrapping_add(1),
            ..key
        };
        assert!(map.lookup(wrong).is_none());
        drop(reg);
        assert!(map.lookup(key).is_none());
        assert!(map.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_a_cancel_in_flight_is_released_only_when_it_is_done() {
        let map = CancelMap::new();
        let reg = map.register(None);
        reg.set_upstream(Some(UpstreamKey {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            process_id: 5,
            secret_key: 6,
            tls: Arc::new(crate::upstream_tls::UpstreamTls::disabled()),
        }));
        let ticket = map.lookup(reg.key).expect("ticket");
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let reg = std::sync::Arc::new(reg);
        let releasing = {
            let reg = reg.clone();
            tokio::spawn(async move {
                reg.release_upstream().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            !released.load(std::sync::atomic::Ordering::SeqCst),
            "released with a cancel in flight"
        );
        assert!(map.lookup(reg.key).is_none(), "no new cancel once released");
        drop(ticket);
        releasing.await.expect("release");
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
        // Without a cancel in flight, release is immediate.
        reg.release_upstream().await;
    }
}
