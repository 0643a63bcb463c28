//! The NOTICE a client gets while it waits for a server connection: after `limits.queue_notice_after_ms`
//! (once per wait), saying why; the wait itself goes on until `pool.acquire_timeout_ms` (53300).

use super::{PoolKey, PoolManager, QueueState};
use crate::protocol::{sqlstate, PgError};
use std::future::Future;
use std::time::Duration;

/// Waits for `acquire`. If it is still waiting after `notice_after`, `notify` runs once (it writes the
/// NOTICE to the client) and the wait goes on; the acquire keeps its place in the queue meanwhile.
pub async fn wait_with_notice<T>(
    acquire: impl Future<Output = T>,
    notice_after: Option<Duration>,
    notify: impl AsyncFnOnce(),
) -> T {
    let Some(after) = notice_after else {
        return acquire.await;
    };
    tokio::pin!(acquire);
    // Usually done at once: then no timer is made.
    if let Some(done) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match acquire.as_mut().poll(cx) {
            std::task::Poll::Ready(done) => Some(done),
            std::task::Poll::Pending => None,
        })
    })
    .await
    {
        return done;
    }
    tokio::select! {
        biased;
        done = &mut acquire => return done,
        () = tokio::time::sleep(after) => {}
    }
    notify().await;
    acquire.await
}

/// `limits.queue_notice_after_ms` as the delay of [`wait_with_notice`] (0: never).
pub fn notice_delay(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The NOTICE of one session's waits (`limits.queue_notice_after_ms`, tenant, `pool.acquire_timeout_ms`).
pub struct QueueNotice {
    /// After how long a wait the NOTICE comes; `None`: never.
    pub after: Option<Duration>,
    tenant: String,
    acquire_timeout_ms: u64,
}

impl QueueNotice {
    pub fn new(config: &crate::config::Config, tenant: &str) -> Self {
        Self {
            after: notice_delay(config.limits.queue_notice_after_ms),
            tenant: tenant.to_string(),
            acquire_timeout_ms: config.pool.acquire_timeout_ms,
        }
    }

    /// The NOTICE, saying how things stand now.
    pub fn notice(&self, pools: &PoolManager, pool: &PoolKey) -> PgError {
        tracing::debug!(tenant = %self.tenant, "a client waits for a server connection: NOTICE sent");
        notice(
            &self.tenant,
            &pools.queue_state(pool),
            self.acquire_timeout_ms,
        )
    }
}

/// The NOTICE: whose connections are all in use, how many clients wait, when the wait ends.
pub fn notice(tenant: &str, queue: &QueueState, acquire_timeout_ms: u64) -> PgError {
    let message = if queue.in_use >= queue.limit {
        format!(
            "waiting for a server connection of tenant \"{tenant}\": all {} in use",
            queue.limit
        )
    } else {
        format!(
            "waiting for a server connection of tenant \"{tenant}\": all {} server connections of this pgtenant are in use",
            queue.global_limit
        )
    };
    PgError::notice(sqlstate::WARNING, message).with_detail(format!(
        "{} clients of this tenant are waiting; a wait longer than {acquire_timeout_ms} ms ends with SQLSTATE 53300",
        queue.waiting
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_notice_comes_once_after_the_delay_and_the_wait_goes_on() {
        let mut notified = 0;
        let got = wait_with_notice(
            async {
                tokio::time::sleep(Duration::from_millis(900)).await;
                7
            },
            Some(Duration::from_millis(300)),
            async || notified += 1,
        )
        .await;
        assert_eq!((got, notified), (7, 1));
        let mut notified = 0;
        let got = wait_with_notice(async { 8 }, Some(Duration::from_millis(300)), async || {
            notified += 1
        })
        .await;
        assert_eq!((got, notified), (8, 0), "no notice for a short wait");
        assert_eq!(notice_delay(0), None);
    }

    #[test]
    fn the_notice_says_whose_connections_are_busy() {
        let tenant_full = QueueState {
            in_use: 1,
            limit: 1,
            global_limit: 90,
            waiting: 2,
        };
        let n = notice("acme", &tenant_full, 3_000);
        assert_eq!(n.code, "01000");
        assert_eq!(
            n.message,
            "waiting for a server connection of tenant \"acme\": all 1 in use"
        );
        assert!(n.detail.as_deref().is_some_and(|d| d.contains("53300")));
        let global_full = QueueState {
            in_use: 1,
            limit: 10,
            global_limit: 4,
            waiting: 1,
        };
        assert!(notice("acme", &global_full, 3_000)
            .message
            .contains("all 4 server connections of this pgtenant"));
    }
}
