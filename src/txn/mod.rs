//! Transaction pooling: a client holds a server connection only from the first message of a transaction (or
//! of a lone statement, or of a pipelined batch) until the server says ReadyForQuery with status idle and no
//! request is outstanding; then the connection goes back to the tenant's pool.
//!
//! What makes that invisible to drivers:
//! - named prepared statements follow the client ([`statements`]): Parse / Bind / Describe / Close are
//!   rewritten to server-side names, a connection lacking a statement gets it injected, and the server's
//!   answers are matched against what the client expects ([`expect`]) to swallow injected ones and add
//!   pgtenant's own;
//! - the reported settings (client_encoding, DateStyle, TimeZone, IntervalStyle, standard_conforming_strings,
//!   application_name) are set on each connection the client gets to the values the client last saw;
//! - a statement whose plan went stale after DDL ("cached plan must not change result type") is closed on
//!   that connection, so the next use prepares it afresh.
//!
//! The loop is an event loop over two output buffers: it keeps reading both sides while writes are pending
//! (up to a high-water mark), so a large pipelined batch cannot deadlock client, pgtenant and server.

mod client;
mod deallocate;
pub mod expect;
mod frames;
mod inject;
pub mod introspection;
pub mod lasting;
mod server;
mod spare_queues;
pub mod statements;
mod sync;
#[cfg(test)]
mod tests;
mod turn;

use frames::{checked_header, client_needs_whole, is_whole, server_needs_whole, simple_frame};

pub use sync::sync_settings;

use crate::cancel::{CancelRegistration, UpstreamKey};
use crate::limit_watch::LimitWatch;
use crate::metrics::Recorder;
use crate::pool::queue::QueueNotice;
use crate::pool::{Checkout, PoolError, PoolManager};
use crate::protocol::{self, PgError, TxStatus};
use crate::relay::{RelayEnd, Side};
use crate::tls::ClientStream;
use bytes::BytesMut;
use expect::Expectations;
use statements::ClientStatements;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use turn::Event;

/// Settings that follow a client onto each server connection it gets.
pub const TRACKED_SETTINGS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
];

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// The largest room a read from either side gets.
const READ_SIZE: usize = 32 * 1024;
/// The room of a read into an empty buffer (see `turn::poll_read_into`): most requests of OLTP clients fit,
/// and a client idle between transactions holds no buffer (`turn::shed_idle_buffers`), so a request of a
/// busy client allocates one this size. Write buffers start empty and grow as written.
const FIRST_READ: usize = crate::spare_buffers::FIRST_READ;
/// Largest message pgtenant reads whole (Parse, Bind, Describe, Close; server error and status messages).
const MAX_WHOLE_MESSAGE: usize = 1 << 30;
/// Prepared statements kept per server connection before the least recently used is closed.
pub const SERVER_STATEMENT_CACHE: usize = 500;

/// How a transaction-pooled session ended, and the server connection it held then (if any).
pub struct TxnOutcome {
    pub end: RelayEnd,
    /// pgtenant may add a message of its own to the client's stream.
    pub may_add_message: bool,
    pub held: Option<Checkout>,
    /// The held connection stands cleanly between requests, with this status.
    pub reusable_with_status: Option<TxStatus>,
    pub requests_in_flight: bool,
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
    pub transactions: u64,
}

/// One client session in transaction pooling.
pub struct TxnSession<'a> {
    pub pools: &'a PoolManager,
    /// The pool the session's connections come from (the tenant's role on the cluster chosen at login).
    pub pool: &'a crate::pool::PoolKey,
    /// Where that pool's connections go.
    pub target: &'a std::sync::Arc<crate::upstream::UpstreamTarget>,
    pub cancel: &'a CancelRegistration,
    /// The reported settings as the client last saw them.
    pub desired: crate::upstream::SharedParameters,
    pub metrics: std::sync::Arc<crate::metrics::TenantMetrics>,
    /// End the session when the client stays idle between transactions this long.
    pub idle_timeout: Option<std::time::Duration>,
    /// The schema name the client writes for its tenant's schema, rewritten in Query and Parse text.
    pub virtual_schema: Option<&'a crate::sql::VirtualSchema>,
    /// pgtenant's timers of the tenant's limits (none when no limit is on).
    pub limits: Option<Box<LimitWatch>>,
    /// The NOTICE of a long wait for a server connection.
    pub queue_notice: QueueNotice,
    /// The session's end signal: a kick also ends a wait for a server connection (the pool's queue, a
    /// PAUSE), not only the relay's turn. None: nothing but `run`'s `kick` ends the session.
    pub signal: Option<std::sync::Arc<crate::sessions::SessionSignal>>,
}

/// What [`TxnSession::take_server_now`] found.
enum TakenNow {
    Attached,
    /// An idle connection whose settings must be set before the client gets it.
    Taken(Checkout),
    NoneNow,
}

/// Why no server connection was taken.
enum NotTaken {
    /// The client is told this error for its statement; the session goes on.
    Refused(PgError),
    /// The session was kicked while it waited: it ends at the relay's next turn, its statement unsent.
    Kicked,
}

struct State {
    server: Option<Checkout>,
    statements: ClientStatements,
    expect: Expectations,
    /// Query / Sync / FunctionCall forwarded and not yet answered by ReadyForQuery.
    pending: usize,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// After pgtenant answered an extended message with an error itself: drop messages up to the Sync.
    skipping_to_sync: bool,
    status: TxStatus,
    to_client: BytesMut,
    to_server: BytesMut,
    client_in: BytesMut,
    /// Body bytes of a large client frame still to stream through.
    client_streaming: usize,
    server_in: BytesMut,
    /// Body bytes of a large server frame still to stream through.
    server_streaming: usize,
    /// The last server message relayed to the client was an ErrorResponse (a FATAL before it closed,
    /// typically).
    last_server_error: bool,
    /// Session state the client's SQL left on the server connection, told at the end of the transaction.
    lasting: Option<lasting::LastingState>,
    desired: crate::upstream::SharedParameters,
    recorder: Recorder,
    bytes_from_client: u64,
    bytes_from_upstream: u64,
    transactions: u64,
    /// The client stream is TLS: what was written to it is flushed before the relay waits.
    client_tls: bool,
    /// Written to the client (TLS) and not flushed since.
    client_unflushed: bool,
    /// Written to the held server connection (TLS) and not flushed since.
    server_unflushed: bool,
    /// ReadyForQuery messages from servers (for the limit timers).
    answered: u64,
    /// Client-side buffers may hold room that `turn::shed_idle_buffers` gives up once the client is idle.
    shed_due: bool,
    /// The pool the last quick checkout found (see `PoolManager::take_idle_now`).
    known_pool: Option<crate::pool::KnownPool>,
    /// The pool the tenant's connections come from since it was moved to another cluster (boxed: rare, and
    /// every idle client would carry its room).
    moved: Option<
        Box<(
            crate::pool::PoolKey,
            std::sync::Arc<crate::upstream::UpstreamTarget>,
        )>,
    >,
}

impl State {
    /// A session's books before its first message: no server connection, no buffer.
    fn new(
        desired: crate::upstream::SharedParameters,
        recorder: Recorder,
        client_tls: bool,
    ) -> Self {
        State {
            server: None,
            statements: ClientStatements::default(),
            expect: Expectations::default(),
            pending: 0,
            unsynced: false,
            skipping_to_sync: false,
            status: TxStatus::Idle,
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            client_in: BytesMut::new(),
            client_streaming: 0,
            server_in: BytesMut::new(),
            server_streaming: 0,
            last_server_error: false,
            lasting: None,
            // Shared, not copied (one reference count); the State's follows what the client sees.
            desired,
            recorder,
            bytes_from_client: 0,
            bytes_from_upstream: 0,
            transactions: 0,
            client_tls,
            client_unflushed: false,
            server_unflushed: false,
            answered: 0,
            shed_due: false,
            known_pool: None,
            moved: None,
        }
    }
}

enum Step {
    Continue,
    End(RelayEnd),
}

impl TxnSession<'_> {
    /// Serves the client until it leaves, a side fails, it is kicked out (`kick`), or pgtenant drains
    /// (`drain`: the client's running transaction may finish first).
    pub fn run<'s, K, D>(
        mut self,
        client: &'s mut ClientStream,
        kick: K,
        drain: D,
    ) -> impl Future<Output = TxnOutcome> + 's
    where
        Self: 's,
        K: Future<Output = ()> + 's,
        D: Future<Output = ()> + 's,
    {
        let mut limits = self.limits.take();
        // Boxed before the relay's future is made: as its arguments they would keep their room in it for
        // the session's whole life, next to the boxes they are moved into.
        let (kick, drain) = (Box::pin(kick), Box::pin(drain));
        // A block, not an async fn: an async fn's arguments are copied into its body, and the copies it
        // leaves behind (the session, a few references) would take room for the session's whole life.
        async move {
            let mut state = State::new(
                self.desired.clone(),
                Recorder::new(self.metrics.clone()),
                client.is_tls(),
            );
            let end = self
                .event_loop(&mut state, &mut limits, client, kick, drain)
                .await;
            state
                .recorder
                .bytes(state.bytes_from_client, state.bytes_from_upstream);
            let clean = state.pending == 0
                && state.expect.is_empty()
                && !state.expect.awaiting_sync()
                && !state.unsynced
                && state.client_streaming == 0
                && state.server_streaming == 0
                && state.server_in.is_empty()
                && state.to_server.is_empty();
            // Ended by a limit, pgtenant says why even after the server's last error (a cancelled statement).
            let by_limit = matches!(end, RelayEnd::LimitReached(_));
            TxnOutcome {
                may_add_message: state.server_streaming == 0
                    && (by_limit || !state.last_server_error),
                reusable_with_status: (clean && state.server.is_some()).then_some(state.status),
                requests_in_flight: state.pending > 0,
                held: state.server.take(),
                end,
                bytes_from_client: state.bytes_from_client,
                bytes_from_upstream: state.bytes_from_upstream,
                transactions: state.transactions,
            }
        }
    }

    // A function returning a block, not an async fn: an async fn's arguments are copied into its body, and
    // the copies would take room for the session's whole life.
    fn event_loop<'a, C, K, D>(
        &'a self,
        state: &'a mut State,
        limits: &'a mut Option<Box<LimitWatch>>,
        client: &'a mut C,
        kick: std::pin::Pin<Box<K>>,
        drain: std::pin::Pin<Box<D>>,
    ) -> impl Future<Output = RelayEnd> + 'a
    where
        C: AsyncRead + AsyncWrite + crate::tls::PollReadReady + Unpin,
        K: Future<Output = ()> + 'a,
        D: Future<Output = ()> + 'a,
    {
        async move {
            let mut signals = turn::Signals::new(kick, drain, self.idle_timeout);
            loop {
                if self.release_if_done(state).await && self.idle_timeout.is_some() {
                    // The client's idle time counts from the end of its transaction, as PostgreSQL's
                    // idle_session_timeout and the session relay count it.
                    signals.last_client_activity = tokio::time::Instant::now();
                }
                if signals.draining && state.server.is_none() {
                    // Between transactions: flush what the client is owed, then end.
                    if !state.to_client.is_empty() {
                        let _ = client.write_all(&state.to_client).await;
                    }
                    return RelayEnd::Drained;
                }
                if let Some(watch) = limits.as_mut() {
                    let held = state.server.is_some();
                    watch.observe(
                        held && (state.pending > 0 || state.unsynced),
                        held && state.status != TxStatus::Idle,
                        state.answered,
                    );
                }
                let event = std::future::poll_fn(|cx| {
                    turn::poll_turn(cx, state, &mut signals, limits, client, may_release)
                })
                .await;
                match event {
                    Event::ClientRead(Ok(0)) => return RelayEnd::ClientGone(None),
                    Event::ClientRead(Err(e)) => return RelayEnd::ClientGone(Some(e)),
                    Event::ClientRead(Ok(n)) => {
                        if self.idle_timeout.is_some() {
                            signals.last_client_activity = tokio::time::Instant::now();
                        }
                        state.bytes_from_client += n as u64;
                        match self.process_client(state, client).await {
                            Ok(Step::Continue) => {}
                            Ok(Step::End(end)) => {
                                let _ = client.write_all(&state.to_client).await;
                                return end;
                            }
                            Err(error) => {
                                return RelayEnd::Protocol {
                                    from: Side::Client,
                                    error,
                                }
                            }
                        }
                    }
                    Event::ServerRead(Ok(0)) => {
                        let _ = client.write_all(&state.to_client).await;
                        return RelayEnd::UpstreamGone(None);
                    }
                    Event::ServerRead(Err(e)) => {
                        let _ = client.write_all(&state.to_client).await;
                        return RelayEnd::UpstreamGone(Some(e));
                    }
                    Event::ServerRead(Ok(n)) => {
                        state.bytes_from_upstream += n as u64;
                        if let Err(error) = self.process_server(state) {
                            return RelayEnd::Protocol {
                                from: Side::Upstream,
                                error,
                            };
                        }
                    }
                    Event::ClientWriteFailed(e) => return RelayEnd::ClientGone(Some(e)),
                    Event::ServerWriteFailed(e) => return RelayEnd::UpstreamGone(Some(e)),
                    Event::MayRelease => {}
                    Event::Kicked => return RelayEnd::Shutdown,
                    Event::Drain => {}
                    Event::IdleTimeout => return RelayEnd::IdleTimeout,
                    Event::Limit(end) => {
                        // What the server sent before (a cancelled statement's error, say) is the client's.
                        let _ = client.write_all(&state.to_client).await;
                        state.to_client.clear();
                        return RelayEnd::LimitReached(end);
                    }
                }
            }
        }
    }

    /// Gives the server connection back once the client stands between transactions; whether it did.
    async fn release_if_done(&self, state: &mut State) -> bool {
        if !may_release(state) {
            return false;
        }
        let Some(mut checkout) = state.server.take() else {
            return false;
        };
        lend_buffers(state, checkout.conn());
        state.shed_due = true;
        // A cancel this client sent while it held the connection must not reach the next client.
        self.cancel.release_upstream().await;
        self.pools.check_in(checkout, true);
        // The client-side buffers go at the next turn, once what the client is owed is written.
        true
    }
    /// Takes a server connection for the client if it has none, with the client's settings applied. A
    /// long wait gets a NOTICE, written to the client at once (after what it is owed already).
    async fn ensure_server<CW: AsyncWrite + Unpin>(
        &self,
        state: &mut State,
        client_write: &mut CW,
    ) -> Result<(), NotTaken> {
        if state.server.is_some() {
            return Ok(());
        }
        match &self.signal {
            Some(signal) => tokio::select! {
                biased;
                () = signal.kicked() => Err(NotTaken::Kicked),
                taken = self.take_server(state, client_write) => taken.map_err(NotTaken::Refused),
            },
            None => self
                .take_server(state, client_write)
                .await
                .map_err(NotTaken::Refused),
        }
    }

    /// [`Self::ensure_server`] without the kick: waits for the tenant's pool (PAUSE, its queue).
    async fn take_server<CW: AsyncWrite + Unpin>(
        &self,
        state: &mut State,
        client_write: &mut CW,
    ) -> Result<(), PgError> {
        self.pools.wait_unpaused(&self.pool.role).await;
        if let Some(moved) = self.pools.moved.current(self.pool) {
            state.moved = Some(Box::new(moved));
        }
        let (pool, target) = match state.moved.as_deref() {
            Some((pool, target)) => (pool, target),
            None => (self.pool, self.target),
        };
        let started = std::time::Instant::now();
        let acquired = crate::pool::queue::wait_with_notice(
            self.pools.acquire(pool, target),
            self.queue_notice.after,
            async || {
                let notice = self.queue_notice.notice(self.pools, pool);
                protocol::write::notice_response(&mut state.to_client, &notice);
                if client_write.write_all(&state.to_client).await.is_ok() {
                    state.to_client.clear();
                    let _ = client_write.flush().await;
                }
            },
        )
        .await;
        let checkout = acquired.map_err(pool_error)?;
        let waited = started.elapsed();
        if waited >= std::time::Duration::from_millis(1) {
            self.metrics.add_wait(waited);
        }
        self.attach(state, checkout).await
    }

    /// As [`Self::ensure_server`], but only if a connection is free right now. Returns whether the client
    /// has one.
    async fn try_ensure_server(&self, state: &mut State) -> Result<bool, PgError> {
        if state.server.is_some() {
            return Ok(true);
        }
        if let Some(moved) = self.pools.moved.current(self.pool) {
            state.moved = Some(Box::new(moved));
        }
        let (pool, target) = match state.moved.as_deref() {
            Some((pool, target)) => (pool, target),
            None => (self.pool, self.target),
        };
        match self
            .pools
            .try_acquire(pool, target)
            .await
            .map_err(pool_error)?
        {
            Some(checkout) => self.attach(state, checkout).await.map(|_| true),
            None => Ok(false),
        }
    }

    /// The common checkout, with no future and no wait: an idle connection of the pool that needs no round
    /// trip (no PAUSE, no health check due). `Attached` when its settings are already the client's;
    /// `Taken` when they must be set first ([`Self::attach`]); `NoneNow` leaves it to
    /// [`Self::ensure_server`].
    fn take_server_now(&self, state: &mut State) -> TakenNow {
        if self.pools.is_paused(&self.pool.role) {
            return TakenNow::NoneNow;
        }
        if let Some(moved) = self.pools.moved.current(self.pool) {
            state.moved = Some(Box::new(moved));
        }
        let (pool, target) = match state.moved.as_deref() {
            Some((pool, target)) => (pool, target),
            None => (self.pool, self.target),
        };
        let Some(mut checkout) = self
            .pools
            .take_idle_now(pool, target, &mut state.known_pool)
        else {
            return TakenNow::NoneNow;
        };
        if !sync::in_sync(checkout.conn(), &state.desired) {
            return TakenNow::Taken(checkout);
        }
        self.attach_synced(state, checkout);
        TakenNow::Attached
    }

    async fn attach(&self, state: &mut State, mut checkout: Checkout) -> Result<(), PgError> {
        if let Err(e) = sync_settings(checkout.conn(), &state.desired).await {
            self.pools.check_in(checkout, false);
            return Err(e);
        }
        self.attach_synced(state, checkout);
        Ok(())
    }

    /// Gives the client `checkout`, whose settings are the client's.
    fn attach_synced(&self, state: &mut State, mut checkout: Checkout) {
        let conn = checkout.conn();
        self.cancel.set_upstream(Some(UpstreamKey {
            addr: conn.addr,
            process_id: conn.process_id,
            secret_key: conn.secret_key,
            tls: conn.tls.clone(),
        }));
        lend_buffers(state, conn);
        if state.to_client.is_empty() && state.to_client.capacity() == 0 {
            state.to_client = crate::spare_buffers::take();
        }
        state.status = TxStatus::Idle;
        state.transactions += 1;
        state.server = Some(checkout);
    }
}

/// Exchanges the session's empty buffers for the connection's (at attach: the client gets them; at
/// release: they go back with it). A buffer still holding bytes stays where it is.
fn lend_buffers(state: &mut State, conn: &mut crate::upstream::UpstreamConn) {
    let lent = &mut conn.buffers;
    for (mine, theirs) in [
        (&mut state.server_in, &mut lent.from_server),
        (&mut state.to_server, &mut lent.to_server),
    ] {
        if mine.is_empty() && theirs.is_empty() {
            std::mem::swap(mine, theirs);
        }
    }
}

/// Whether the client stands between transactions with everything for the server written: its server
/// connection can go back to the pool.
fn may_release(state: &State) -> bool {
    state.server.is_some()
        && state.pending == 0
        && state.expect.is_empty()
        && !state.expect.awaiting_sync()
        && !state.unsynced
        && !state.skipping_to_sync
        && state.status == TxStatus::Idle
        && state.client_streaming == 0
        && state.server_streaming == 0
        && state.server_in.is_empty()
        && state.to_server.is_empty()
        && !state.server_unflushed
}

/// What a transaction-pooled client is told when it gets no server connection: what a session-pooled
/// client is told at login (no role name, no server address), as an ERROR: the session goes on.
fn pool_error(e: PoolError) -> PgError {
    tracing::warn!(error = %e, "no server connection for a transaction");
    crate::error::UserFacing::to_error(&e)
}
