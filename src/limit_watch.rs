//! pgtenant's own timers over one session, the same in both relays: the relay tells the watch, after each
//! batch of bytes it moved, whether requests are outstanding, whether a transaction is open and how many
//! ReadyForQuery it has seen; the watch keeps one `tokio::time::Sleep` set for the nearest limit.
//!
//! - A request (a Query, a FunctionCall, an extended batch up to its Sync) outstanding past
//!   statement_timeout + grace: a cancel request for the server connection the client holds, through the
//!   cancel map (so in transaction pooling the connection goes to no other client while it is on its way).
//!   The client then gets PostgreSQL's `57014 canceling statement due to user request`; the session goes on.
//!   A cancel that changed nothing is sent again after another statement_timeout.
//! - Idle in a transaction past idle_in_transaction_session_timeout + grace, or in a transaction (from its
//!   first request, idle time included, as PostgreSQL 17) past transaction_timeout: the relay ends with
//!   [`LimitEnd`].
//!
//! Cheap on the hot path: `observe` compares three values and returns when nothing changed; the clock is
//! read only when a request starts or ends; the sleep is moved only when a limit comes nearer (one that moves
//! away is found out when the sleep fires, and the sleep is set again). Without limits there is no watch.

use crate::cancel::{CancelMap, ClientKey};
use crate::limits::{format_ms, LimitEnd, SessionLimits};
use crate::metrics::TenantMetrics;
use crate::upstream::UpstreamConn;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Sends the cancel request for the client's running statement.
pub struct Canceller {
    pub cancels: Arc<CancelMap>,
    /// The client's own key: the map knows which server connection it holds now (and its TLS settings).
    pub key: ClientKey,
}

impl Canceller {
    /// Looks up the server connection the client holds and cancels its statement, in a task of its own.
    /// Returns the backend pid when a cancel went out.
    fn cancel(&self) -> Option<i32> {
        let ticket = self.cancels.lookup(self.key)?;
        let process_id = ticket.upstream.process_id;
        tokio::spawn(async move {
            let upstream = &ticket.upstream;
            let sent = UpstreamConn::cancel(
                &upstream.tls,
                upstream.addr,
                upstream.process_id,
                upstream.secret_key,
            )
            .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, backend_pid = upstream.process_id, "could not send the cancel request of a statement_timeout");
            }
            // Only now may the connection go to another client (transaction pooling).
            drop(ticket);
        });
        Some(process_id)
    }
}

/// Which limit the sleep is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    Statement,
    IdleInTransaction,
    Transaction,
}

/// The timers of one session.
pub struct LimitWatch {
    limits: SessionLimits,
    /// statement_timeout + grace.
    statement: Option<Duration>,
    /// idle_in_transaction_session_timeout + grace.
    idle_in_transaction: Option<Duration>,
    transaction: Option<Duration>,
    canceller: Option<Canceller>,
    tenant: String,
    metrics: Option<Arc<TenantMetrics>>,
    sleep: Pin<Box<Sleep>>,
    /// When the sleep is set to fire: never later than `due`.
    armed: Option<Instant>,
    /// The nearest limit.
    due: Option<(Instant, Due)>,
    busy: bool,
    in_transaction: bool,
    answered: u64,
    statement_since: Instant,
    idle_since: Instant,
    transaction_since: Instant,
    cancels_sent: u64,
}

impl LimitWatch {
    /// A watch for `limits`, or `None` when pgtenant enforces none of them for this session.
    pub fn new(
        limits: SessionLimits,
        canceller: Option<Canceller>,
        tenant: &str,
        metrics: Option<Arc<TenantMetrics>>,
    ) -> Option<Self> {
        if !limits.enforced_by_pgtenant() {
            return None;
        }
        let ms = |v: u32, grace: u32| {
            (v > 0).then(|| Duration::from_millis(u64::from(v) + u64::from(grace)))
        };
        let now = Instant::now();
        Some(Self {
            statement: ms(limits.statement_timeout_ms, limits.enforce_grace_ms),
            idle_in_transaction: ms(
                limits.idle_in_transaction_timeout_ms,
                limits.enforce_grace_ms,
            ),
            transaction: ms(limits.transaction_timeout_ms, 0),
            limits,
            canceller,
            tenant: tenant.to_string(),
            metrics,
            sleep: Box::pin(tokio::time::sleep_until(now)),
            armed: None,
            due: None,
            busy: false,
            in_transaction: false,
            answered: 0,
            statement_since: now,
            idle_since: now,
            transaction_since: now,
            cancels_sent: 0,
        })
    }

    /// The relay's state after it moved bytes: `busy`, requests unanswered (or an extended batch not yet
    /// synced); `in_transaction`, the last ReadyForQuery said a transaction is open; `answered`,
    /// ReadyForQuery messages seen so far.
    pub fn observe(&mut self, busy: bool, in_transaction: bool, answered: u64) {
        if busy == self.busy && in_transaction == self.in_transaction && answered == self.answered {
            return;
        }
        let now = Instant::now();
        let was_open = self.busy || self.in_transaction;
        let next_answered = answered != self.answered;
        if busy && (!self.busy || next_answered) {
            // A request starts (or the next one of a pipeline, once the one before is answered).
            self.statement_since = now;
        }
        if (busy || in_transaction) && (!was_open || (next_answered && !in_transaction)) {
            // A transaction starts: the first request after idle, or the next after one ended idle.
            self.transaction_since = now;
        }
        if !busy && in_transaction && (self.busy || !self.in_transaction) {
            self.idle_since = now;
        }
        self.busy = busy;
        self.in_transaction = in_transaction;
        self.answered = answered;
        self.plan();
    }

    /// Finds the nearest limit; moves the sleep only if it must fire earlier than it is set to.
    fn plan(&mut self) {
        let mut due: Option<(Instant, Due)> = None;
        let mut consider = |at: Instant, what: Due| {
            if due.is_none_or(|(nearest, _)| at < nearest) {
                due = Some((at, what));
            }
        };
        if self.busy {
            if let Some(limit) = self.statement {
                consider(self.statement_since + limit, Due::Statement);
            }
        } else if self.in_transaction {
            if let Some(limit) = self.idle_in_transaction {
                consider(self.idle_since + limit, Due::IdleInTransaction);
            }
        }
        if self.busy || self.in_transaction {
            if let Some(limit) = self.transaction {
                consider(self.transaction_since + limit, Due::Transaction);
            }
        }
        self.due = due;
        if let Some((at, _)) = due {
            if self.armed.is_none_or(|armed| at < armed) {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
        }
    }

    /// Completes when a limit ends the session; cancels statements past their limit on the way. Polled
    /// after [`Self::observe`].
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<LimitEnd> {
        loop {
            let Some((at, what)) = self.due else {
                return Poll::Pending;
            };
            if self.armed.is_none() {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now < at {
                // The limit moved away since the sleep was set.
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
                continue;
            }
            self.armed = None;
            match what {
                Due::Statement => {
                    self.cancel_statement();
                    // Once more after another statement_timeout if this one changes nothing.
                    self.statement_since = now;
                    self.plan();
                }
                Due::IdleInTransaction => {
                    self.due = None;
                    return Poll::Ready(self.ended(LimitEnd::IdleInTransaction {
                        limit_ms: self.limits.idle_in_transaction_timeout_ms,
                    }));
                }
                Due::Transaction => {
                    self.due = None;
                    return Poll::Ready(self.ended(LimitEnd::Transaction {
                        limit_ms: self.limits.transaction_timeout_ms,
                    }));
                }
            }
        }
    }

    /// As [`Self::poll_end`], as a future. Cancel-safe: its state lives in the watch.
    pub async fn ended_by_limit(&mut self) -> LimitEnd {
        std::future::poll_fn(|cx| self.poll_end(cx)).await
    }

    fn cancel_statement(&mut self) {
        self.cancels_sent += 1;
        let backend_pid = self.canceller.as_ref().and_then(Canceller::cancel);
        if let Some(m) = &self.metrics {
            m.limit_cancels.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            tenant = %self.tenant,
            statement_timeout = %format_ms(self.limits.statement_timeout_ms),
            ?backend_pid,
            "a request ran past the tenant's statement_timeout: pgtenant cancels it"
        );
    }

    fn ended(&self, end: LimitEnd) -> LimitEnd {
        if let Some(m) = &self.metrics {
            m.limit_terminations.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(tenant = %self.tenant, ?end, "pgtenant ends a session at the tenant's limit");
        end
    }

    /// Cancels pgtenant sent (or tried to: with no canceller, none goes out).
    pub fn cancels_sent(&self) -> u64 {
        self.cancels_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(statement: u32, idle: u32, transaction: u32) -> SessionLimits {
        SessionLimits {
            statement_timeout_ms: statement,
            lock_timeout_ms: 0,
            idle_in_transaction_timeout_ms: idle,
            transaction_timeout_ms: transaction,
            enforce_grace_ms: 100,
        }
    }

    /// Polls the watch once (in virtual time, after advancing it).
    async fn poll_after(watch: &mut LimitWatch, ms: u64) -> Option<LimitEnd> {
        tokio::time::advance(Duration::from_millis(ms)).await;
        std::future::poll_fn(|cx| {
            Poll::Ready(match watch.poll_end(cx) {
                Poll::Ready(end) => Some(end),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn no_limit_no_watch() {
        assert!(LimitWatch::new(limits(0, 0, 0), None, "t", None).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_is_cancelled_after_its_limit_and_grace_and_again_later() {
        let mut watch = LimitWatch::new(limits(1_000, 0, 0), None, "t", None).expect("watch");
        watch.observe(true, false, 0);
        assert_eq!(poll_after(&mut watch, 1_050).await, None);
        assert_eq!(watch.cancels_sent(), 0, "the grace is not over");
        assert_eq!(poll_after(&mut watch, 100).await, None);
        assert_eq!(watch.cancels_sent(), 1);
        assert_eq!(poll_after(&mut watch, 1_200).await, None);
        assert_eq!(
            watch.cancels_sent(),
            2,
            "a cancel that changed nothing goes again"
        );
        // Answered: nothing more.
        watch.observe(false, false, 1);
        assert_eq!(poll_after(&mut watch, 10_000).await, None);
        assert_eq!(watch.cancels_sent(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_of_a_pipeline_gets_its_own_time() {
        let mut watch = LimitWatch::new(limits(1_000, 0, 0), None, "t", None).expect("watch");
        watch.observe(true, false, 0);
        for answered in 1..=5 {
            assert_eq!(poll_after(&mut watch, 800).await, None);
            // The request before is answered, the next one runs.
            watch.observe(true, false, answered);
        }
        assert_eq!(watch.cancels_sent(), 0);
        assert_eq!(poll_after(&mut watch, 1_200).await, None);
        assert_eq!(watch.cancels_sent(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_in_a_transaction_ends_the_session_but_work_in_it_does_not() {
        let mut watch = LimitWatch::new(limits(0, 1_000, 0), None, "t", None).expect("watch");
        watch.observe(true, false, 0);
        assert_eq!(
            poll_after(&mut watch, 5_000).await,
            None,
            "busy is not idle"
        );
        watch.observe(false, true, 1);
        assert_eq!(poll_after(&mut watch, 900).await, None);
        watch.observe(true, true, 1);
        assert_eq!(poll_after(&mut watch, 900).await, None);
        watch.observe(false, true, 2);
        assert_eq!(poll_after(&mut watch, 1_050).await, None, "counted afresh");
        assert_eq!(
            poll_after(&mut watch, 100).await,
            Some(LimitEnd::IdleInTransaction { limit_ms: 1_000 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_transaction_is_timed_from_its_first_request_idle_time_included() {
        let mut watch = LimitWatch::new(limits(0, 0, 2_000), None, "t", None).expect("watch");
        // Lone statements, one after the other: each its own transaction.
        for answered in 1..=4 {
            watch.observe(true, false, answered - 1);
            assert_eq!(poll_after(&mut watch, 600).await, None);
            watch.observe(false, false, answered);
            assert_eq!(poll_after(&mut watch, 600).await, None);
        }
        // BEGIN, then work and idle time.
        watch.observe(true, false, 4);
        watch.observe(false, true, 5);
        assert_eq!(poll_after(&mut watch, 1_000).await, None);
        watch.observe(true, true, 5);
        assert_eq!(poll_after(&mut watch, 900).await, None);
        assert_eq!(
            poll_after(&mut watch, 150).await,
            Some(LimitEnd::Transaction { limit_ms: 2_000 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_nearest_limit_fires_first() {
        let mut watch = LimitWatch::new(limits(5_000, 0, 1_000), None, "t", None).expect("watch");
        watch.observe(true, false, 0);
        assert_eq!(
            poll_after(&mut watch, 1_001).await,
            Some(LimitEnd::Transaction { limit_ms: 1_000 })
        );
        assert_eq!(watch.cancels_sent(), 0);
    }
}
