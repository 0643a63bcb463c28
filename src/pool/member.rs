//! A live server connection with its share of the global cap and of its tenant's count, the checkout that
//! lends it to one client, and closing it.

use super::tenant_pool::TenantPool;
use crate::upstream::UpstreamConn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A live connection and its share of the global cap. The connection is boxed: a checkout moves with the
/// client's session state (in and out of the pool once per transaction, and held by every session), so it
/// stays a few words.
pub(super) struct Member {
    pub(super) conn: Box<UpstreamConn>,
    pub(super) _global: OwnedSemaphorePermit,
    pub(super) _live: LiveCount,
}

/// Counts a tenant's live connections (idle or lent) while it exists.
pub(super) struct LiveCount(Arc<AtomicUsize>);

impl LiveCount {
    pub(super) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a waiting client while it waits.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(super) fn new(counter: &'a AtomicUsize) -> Self {
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
    pub(super) member: Option<Member>,
    pub(super) pool: Arc<TenantPool>,
    pub(super) _permit: OwnedSemaphorePermit,
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

pub(super) fn spawn_terminate(member: Member) {
    // The global permit is given back at once, so the room is usable before the goodbye is sent.
    let Member {
        conn,
        _global,
        _live,
    } = member;
    drop(_global);
    drop(_live);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn((*conn).terminate());
    }
}
