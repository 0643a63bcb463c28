//! A test hook of the pools (unit tests only): a tenant pool that lends connections made in memory, each to a
//! server the test plays over `tokio::io::duplex`, instead of opening them. Nothing connects: the relays run
//! against scripted servers, with no socket and no PostgreSQL.

use super::member::{LiveCount, Member};
use super::{PoolKey, PoolManager};
use crate::upstream::{UpstreamConn, UpstreamTarget};
use crate::upstream_tls::{UpstreamStream, UpstreamTls};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::DuplexStream;

/// Room of each direction of a scripted connection.
const SCRIPTED_BUFFER: usize = 64 * 1024;

impl PoolManager {
    /// Puts a connection to a scripted server into `key`'s pool (made for `target` on first use), idle as if
    /// it had been opened and checked in: checkouts lend it (the last one added first) before they would
    /// open one. It reports `parameters` and has `process_id` as its backend's. Returns the server's end.
    pub(crate) fn add_scripted(
        &self,
        key: &PoolKey,
        target: &Arc<UpstreamTarget>,
        process_id: i32,
        parameters: &[(String, String)],
    ) -> DuplexStream {
        let (server, pgtenant) = tokio::io::duplex(SCRIPTED_BUFFER);
        let pool = self.tenant_pool(key, target);
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .expect("a scripted connection fits under pool.max_server_connections");
        let conn = UpstreamConn {
            stream: UpstreamStream::Duplex(pgtenant),
            addr: ([127, 0, 0, 1], target.port).into(),
            process_id,
            secret_key: process_id.wrapping_mul(7919),
            parameters: parameters.to_vec(),
            created_at: Instant::now(),
            last_used: Instant::now(),
            broken: false,
            prepared: Default::default(),
            settings: *pool.settings.lock().unwrap_or_else(|p| p.into_inner()),
            tls: Arc::new(UpstreamTls::disabled()),
            buffers: Default::default(),
            synced_with: None,
        };
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Member {
                conn: Box::new(conn),
                _global: global,
                _live: LiveCount::new(&pool.live),
            });
        server
    }
}
