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

mod deallocate;
pub mod expect;
pub mod introspection;
pub mod lasting;
pub mod statements;

use crate::cancel::{CancelRegistration, UpstreamKey};
use crate::limits::queue::QueueNotice;
use crate::limits::watch::LimitWatch;
use crate::metrics::Recorder;
use crate::pool::{Checkout, PoolError, PoolManager};
use crate::protocol::{self, sqlstate, tag, ErrorFields, PgError, ProtocolError, TxStatus};
use crate::relay::{RelayEnd, Side};
use crate::tls::ClientStream;
use crate::upstream::UpstreamConn;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use expect::{Disposition, Expect, Expectations, Undo};
use statements::{ClientStatements, Statement};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
const READ_SIZE: usize = 32 * 1024;
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
    pub desired: Vec<(String, String)>,
    pub metrics: std::sync::Arc<crate::metrics::TenantMetrics>,
    /// End the session when the client stays idle between transactions this long.
    pub idle_timeout: Option<std::time::Duration>,
    /// The schema name the client writes for its tenant's schema, rewritten in Query and Parse text.
    pub virtual_schema: Option<crate::sql::VirtualSchema>,
    /// pgtenant's timers of the tenant's limits (none when no limit is on).
    pub limits: Option<LimitWatch>,
    /// The NOTICE of a long wait for a server connection.
    pub queue_notice: QueueNotice,
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
    desired: Vec<(String, String)>,
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
    /// The pool the tenant's connections come from since it was moved to another cluster.
    moved: Option<(
        crate::pool::PoolKey,
        std::sync::Arc<crate::upstream::UpstreamTarget>,
    )>,
}

enum Step {
    Continue,
    End(RelayEnd),
}

/// Reads from `r` if there is one; never completes otherwise. Cancel-safe (a read either happened or not).
async fn read_opt<R: AsyncRead + Unpin>(
    r: Option<&mut R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Writes some of `buf` if there is a writer and anything to write; with nothing left to write and
/// `unflushed`, flushes and returns 0 (a TLS stream may have taken bytes it could not send yet, and sends them
/// only when written to or flushed). Never completes otherwise. Cancel-safe (a write or flush either happened
/// or not; a flush may be repeated).
async fn write_opt<W: AsyncWrite + Unpin>(
    w: Option<&mut W>,
    buf: &[u8],
    unflushed: bool,
) -> std::io::Result<usize> {
    match w {
        Some(w) if !buf.is_empty() => w.write(buf).await,
        Some(w) if unflushed => w.flush().await.map(|()| 0),
        _ => std::future::pending().await,
    }
}

/// Completes when the client has been idle for `limit` since `since`; never without a limit.
async fn idle_deadline(limit: Option<std::time::Duration>, since: tokio::time::Instant) {
    match limit {
        Some(limit) => tokio::time::sleep_until(since + limit).await,
        None => std::future::pending().await,
    }
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Kicked,
    Drain,
    IdleTimeout,
    Limit(crate::limits::LimitEnd),
}

/// Completes when a limit ends the session; never without limits. Cancel-safe (see
/// [`LimitWatch::ended_by_limit`]).
async fn limit_reached(watch: Option<&mut LimitWatch>) -> crate::limits::LimitEnd {
    match watch {
        Some(watch) => watch.ended_by_limit().await,
        None => std::future::pending().await,
    }
}

fn frame_header(buf: &[u8]) -> (u8, i32) {
    (buf[0], i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
}

/// Whether `frame` holds its whole message (not the head of a large one being streamed).
fn is_whole(frame: &[u8]) -> bool {
    frame.len() >= 5 && frame_header(frame).1 as usize + 1 == frame.len()
}

/// Client messages pgtenant must see whole (to rewrite statement names, or to stop at).
fn client_needs_whole(msg_tag: u8) -> bool {
    matches!(
        msg_tag,
        tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::CLOSE
            | tag::TERMINATE
            | tag::SYNC
            | tag::FLUSH
    )
}

/// Server messages pgtenant reads whole: small ones it acts on.
fn server_needs_whole(msg_tag: u8) -> bool {
    matches!(
        msg_tag,
        b'Z' | b'E' | b'S' | b'C' | b'1' | b'2' | b'3' | b'n' | b'I' | b's'
    )
}

fn simple_frame(msg_tag: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(msg_tag);
    b.put_i32(4);
    b.freeze()
}

impl TxnSession<'_> {
    /// Serves the client until it leaves, a side fails, it is kicked out (`kick`), or pgtenant drains
    /// (`drain`: the client's running transaction may finish first).
    pub async fn run(
        mut self,
        client: &mut ClientStream,
        kick: impl Future<Output = ()>,
        drain: impl Future<Output = ()>,
    ) -> TxnOutcome {
        let mut state = State {
            server: None,
            statements: ClientStatements::default(),
            expect: Expectations::default(),
            pending: 0,
            unsynced: false,
            skipping_to_sync: false,
            status: TxStatus::Idle,
            to_client: BytesMut::with_capacity(READ_SIZE),
            to_server: BytesMut::with_capacity(READ_SIZE),
            client_in: BytesMut::with_capacity(READ_SIZE),
            client_streaming: 0,
            server_in: BytesMut::with_capacity(READ_SIZE),
            server_streaming: 0,
            last_server_error: false,
            lasting: None,
            desired: self.desired.clone(),
            recorder: Recorder::new(self.metrics.clone()),
            bytes_from_client: 0,
            bytes_from_upstream: 0,
            transactions: 0,
            client_tls: client.is_tls(),
            client_unflushed: false,
            server_unflushed: false,
            answered: 0,
            moved: None,
        };
        let mut limits = self.limits.take();
        let end = match client {
            ClientStream::Plain(tcp) => {
                let (mut r, mut w) = tcp.split();
                self.event_loop(&mut state, &mut limits, &mut r, &mut w, kick, drain)
                    .await
            }
            ClientStream::Tls(tls) => {
                let (mut r, mut w) = tokio::io::split(tls.as_mut());
                self.event_loop(&mut state, &mut limits, &mut r, &mut w, kick, drain)
                    .await
            }
        };
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
            may_add_message: state.server_streaming == 0 && (by_limit || !state.last_server_error),
            reusable_with_status: (clean && state.server.is_some()).then_some(state.status),
            requests_in_flight: state.pending > 0,
            held: state.server.take(),
            end,
            bytes_from_client: state.bytes_from_client,
            bytes_from_upstream: state.bytes_from_upstream,
            transactions: state.transactions,
        }
    }

    async fn event_loop<CR, CW>(
        &self,
        state: &mut State,
        limits: &mut Option<LimitWatch>,
        client_read: &mut CR,
        client_write: &mut CW,
        kick: impl Future<Output = ()>,
        drain: impl Future<Output = ()>,
    ) -> RelayEnd
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
    {
        tokio::pin!(kick);
        tokio::pin!(drain);
        let mut draining = false;
        let mut client_buf = vec![0u8; READ_SIZE];
        let mut server_buf = vec![0u8; READ_SIZE];
        let mut last_client_activity = tokio::time::Instant::now();
        loop {
            self.release_if_done(state).await;
            if draining && state.server.is_none() {
                // Between transactions: flush what the client is owed, then end.
                if !state.to_client.is_empty() {
                    let _ = client_write.write_all(&state.to_client).await;
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
            let client_readable = state.to_server.len() < HIGH_WATER;
            let server_readable = state.to_client.len() < HIGH_WATER;
            let between_transactions = state.server.is_none();
            let event = {
                let (server_read, server_write) = match state.server.as_mut() {
                    Some(checkout) => {
                        let (r, w) = checkout.conn().stream.split();
                        (Some(r), Some(w))
                    }
                    None => (None, None),
                };
                let (mut server_read, mut server_write) = (server_read, server_write);
                tokio::select! {
                    r = read_opt(client_readable.then_some(&mut *client_read), &mut client_buf) => Event::ClientRead(r),
                    r = read_opt(server_read.as_mut().filter(|_| server_readable), &mut server_buf) => Event::ServerRead(r),
                    r = write_opt(Some(&mut *client_write), &state.to_client, state.client_unflushed) => Event::ClientWrote(r),
                    r = write_opt(server_write.as_mut(), &state.to_server, state.server_unflushed) => Event::ServerWrote(r),
                    _ = &mut kick => Event::Kicked,
                    _ = &mut drain, if !draining => Event::Drain,
                    _ = idle_deadline(self.idle_timeout, last_client_activity), if between_transactions => Event::IdleTimeout,
                    end = limit_reached(limits.as_mut()) => Event::Limit(end),
                }
            };
            match event {
                Event::ClientRead(Ok(0)) => return RelayEnd::ClientGone(None),
                Event::ClientRead(Err(e)) => return RelayEnd::ClientGone(Some(e)),
                Event::ClientRead(Ok(n)) => {
                    if self.idle_timeout.is_some() {
                        last_client_activity = tokio::time::Instant::now();
                    }
                    state.bytes_from_client += n as u64;
                    state.client_in.extend_from_slice(&client_buf[..n]);
                    match self.process_client(state, client_write).await {
                        Ok(Step::Continue) => {}
                        Ok(Step::End(end)) => {
                            let _ = client_write.write_all(&state.to_client).await;
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
                    let _ = client_write.write_all(&state.to_client).await;
                    return RelayEnd::UpstreamGone(None);
                }
                Event::ServerRead(Err(e)) => {
                    let _ = client_write.write_all(&state.to_client).await;
                    return RelayEnd::UpstreamGone(Some(e));
                }
                Event::ServerRead(Ok(n)) => {
                    state.bytes_from_upstream += n as u64;
                    if let Err(error) = self.process_server(state, &server_buf[..n]) {
                        return RelayEnd::Protocol {
                            from: Side::Upstream,
                            error,
                        };
                    }
                }
                Event::ClientWrote(Ok(0)) if state.to_client.is_empty() => {
                    state.client_unflushed = false;
                }
                Event::ClientWrote(Ok(n)) => {
                    state.to_client.advance(n);
                    state.client_unflushed = state.client_tls;
                }
                Event::ClientWrote(Err(e)) => return RelayEnd::ClientGone(Some(e)),
                Event::ServerWrote(Ok(0)) if state.to_server.is_empty() => {
                    state.server_unflushed = false;
                }
                Event::ServerWrote(Ok(n)) => {
                    state.to_server.advance(n);
                    state.server_unflushed = state
                        .server
                        .as_mut()
                        .is_some_and(|c| c.conn().stream.is_tls());
                }
                Event::ServerWrote(Err(e)) => return RelayEnd::UpstreamGone(Some(e)),
                Event::Kicked => return RelayEnd::Shutdown,
                Event::Drain => draining = true,
                Event::IdleTimeout => return RelayEnd::IdleTimeout,
                Event::Limit(end) => {
                    // What the server sent before (a cancelled statement's error, say) is the client's.
                    let _ = client_write.write_all(&state.to_client).await;
                    state.to_client.clear();
                    return RelayEnd::LimitReached(end);
                }
            }
        }
    }

    /// Gives the server connection back once the client stands between transactions.
    async fn release_if_done(&self, state: &mut State) {
        let done = state.server.is_some()
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
            && !state.server_unflushed;
        if done {
            if let Some(checkout) = state.server.take() {
                // A cancel this client sent while it held the connection must not reach the next client.
                self.cancel.release_upstream().await;
                self.pools.check_in(checkout, true);
            }
        }
    }

    /// Takes a server connection for the client if it has none, with the client's settings applied. A
    /// long wait gets a NOTICE, written to the client at once (after what it is owed already).
    async fn ensure_server<CW: AsyncWrite + Unpin>(
        &self,
        state: &mut State,
        client_write: &mut CW,
    ) -> Result<(), PgError> {
        if state.server.is_some() {
            return Ok(());
        }
        self.pools.wait_unpaused(&self.pool.role).await;
        if let Some(moved) = self.pools.moved.current(self.pool) {
            state.moved = Some(moved);
        }
        let (pool, target) = match &state.moved {
            Some((pool, target)) => (pool, target),
            None => (self.pool, self.target),
        };
        let started = std::time::Instant::now();
        let acquired = crate::limits::queue::wait_with_notice(
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
            state.moved = Some(moved);
        }
        let (pool, target) = match &state.moved {
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

    async fn attach(&self, state: &mut State, mut checkout: Checkout) -> Result<(), PgError> {
        let conn = checkout.conn();
        if let Err(e) = sync_settings(conn, &state.desired).await {
            self.pools.check_in(checkout, false);
            return Err(e);
        }
        self.cancel.set_upstream(Some(UpstreamKey {
            addr: conn.addr,
            process_id: conn.process_id,
            secret_key: conn.secret_key,
            tls: conn.tls.clone(),
        }));
        state.status = TxStatus::Idle;
        state.transactions += 1;
        state.server = Some(checkout);
        Ok(())
    }

    /// Handles every complete client message buffered (streaming large ones through).
    async fn process_client<CW: AsyncWrite + Unpin>(
        &self,
        state: &mut State,
        client_write: &mut CW,
    ) -> Result<Step, ProtocolError> {
        loop {
            if state.client_streaming > 0 {
                let n = state.client_streaming.min(state.client_in.len());
                if n == 0 {
                    return Ok(Step::Continue);
                }
                let chunk = state.client_in.split_to(n);
                if !state.skipping_to_sync {
                    state.to_server.extend_from_slice(&chunk);
                }
                state.client_streaming -= n;
                continue;
            }
            if state.client_in.len() < 5 {
                return Ok(Step::Continue);
            }
            let (msg_tag, len) = frame_header(&state.client_in);
            if len < 4 || len as usize > MAX_WHOLE_MESSAGE {
                return Err(ProtocolError::BadFrameLength {
                    tag: msg_tag as char,
                    len: len.max(0) as usize,
                });
            }
            let total = 1 + len as usize;
            let whole = state.client_in.len() >= total;
            // A Query is read whole too (up to the size the virtual schema rewrites), so its text can be
            // checked and rewritten even when it arrives in several reads.
            let query_held_whole = msg_tag == tag::QUERY && total <= crate::relay::MAX_REWRITTEN;
            if !whole && (client_needs_whole(msg_tag) || query_held_whole) {
                return Ok(Step::Continue);
            }
            if whole {
                let frame = state.client_in.split_to(total).freeze();
                if let Step::End(end) = self
                    .client_message(state, msg_tag, frame, client_write)
                    .await
                {
                    return Ok(Step::End(end));
                }
            } else {
                // A large Query, CopyData or FunctionCall: account for it, then stream its bytes.
                let available = state.client_in.len();
                let head = state.client_in.split_to(available).freeze();
                if let Step::End(end) = self
                    .client_message(state, msg_tag, head, client_write)
                    .await
                {
                    return Ok(Step::End(end));
                }
                state.client_streaming = total - available;
            }
            self.emit_synthetic(state);
        }
    }

    /// One client message (or the head of a large one).
    async fn client_message<CW: AsyncWrite + Unpin>(
        &self,
        state: &mut State,
        msg_tag: u8,
        frame: Bytes,
        client_write: &mut CW,
    ) -> Step {
        if msg_tag == tag::TERMINATE {
            return Step::End(RelayEnd::ClientTerminated);
        }
        if state.skipping_to_sync {
            if msg_tag == tag::SYNC {
                state.skipping_to_sync = false;
                if state.server.is_none() {
                    protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                } else {
                    if state.expect.client_sync() {
                        state.pending += 1;
                    }
                    state.to_server.extend_from_slice(&frame);
                }
            }
            return Step::Continue;
        }
        let frame = match msg_tag {
            tag::QUERY | tag::PARSE if is_whole(&frame) => {
                // The rewritten text is what the server sees, what statement names are derived from, and
                // what is carried across server connections: done once per Parse, never per Bind.
                let frame = match &self.virtual_schema {
                    Some(vs) => {
                        crate::sql::message::rewrite(msg_tag, &frame, |sql| vs.rewrite(sql))
                            .unwrap_or(frame)
                    }
                    None => frame,
                };
                if let Some(found) =
                    crate::sql::message::text(msg_tag, &frame).and_then(lasting::lasting_state)
                {
                    state.lasting = Some(found);
                }
                introspection::rewrite_frame(msg_tag, &frame, &state.statements).unwrap_or(frame)
            }
            _ => frame,
        };
        if msg_tag == tag::QUERY && self.answer_deallocate(state, &frame) {
            return Step::Continue;
        }
        let body = &frame[5.min(frame.len())..];
        // Answered without a server: closing a named statement, and a Sync or Flush with nothing pending.
        if state.server.is_none() {
            match msg_tag {
                tag::CLOSE => {
                    if let Some((b'S', name)) = statements::parse_target(body) {
                        if !name.is_empty() {
                            state.statements.remove(&String::from_utf8_lossy(name));
                            state.to_client.extend_from_slice(&simple_frame(b'3'));
                            return Step::Continue;
                        }
                    }
                }
                tag::PARSE => {
                    // A named Parse between transactions (a driver preparing, e.g. libpq's PQprepare, which
                    // blocks its caller) must not wait for a connection another of that caller's clients
                    // holds: if none is free now, the statement is kept and prepared on the server at its
                    // first Bind or Describe, and the client gets ParseComplete at once.
                    if let Some(p) = statements::parse_parse(body).filter(|p| !p.name.is_empty()) {
                        let client_name = String::from_utf8_lossy(p.name).into_owned();
                        if state.statements.get(&client_name).is_some() {
                            protocol::write::error_response(
                                &mut state.to_client,
                                &duplicate_statement(&client_name),
                            );
                            state.skipping_to_sync = true;
                            return Step::Continue;
                        }
                        match self.try_ensure_server(state).await {
                            Ok(true) => {}
                            Ok(false) => {
                                let statement = self.new_statement(p.query, p.param_types);
                                state.statements.insert(client_name, statement);
                                state.to_client.extend_from_slice(&simple_frame(b'1'));
                                return Step::Continue;
                            }
                            Err(error) => {
                                protocol::write::error_response(&mut state.to_client, &error);
                                state.skipping_to_sync = true;
                                return Step::Continue;
                            }
                        }
                    }
                }
                // A Sync or Flush with a body is malformed: PostgreSQL reports it (and, after a Flush,
                // skips to the next Sync).
                tag::SYNC | tag::FLUSH if !body.is_empty() => {
                    protocol::write::error_response(
                        &mut state.to_client,
                        &invalid_message_format(),
                    );
                    if msg_tag == tag::SYNC && state.expect.is_empty() && state.pending == 0 {
                        protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                    } else {
                        state.skipping_to_sync = true;
                    }
                    return Step::Continue;
                }
                tag::SYNC if state.expect.is_empty() && state.pending == 0 => {
                    protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                    return Step::Continue;
                }
                tag::FLUSH => return Step::Continue,
                _ => {}
            }
        }
        if let Err(error) = self.ensure_server(state, client_write).await {
            protocol::write::error_response(&mut state.to_client, &error);
            match msg_tag {
                tag::QUERY | tag::FUNCTION_CALL | tag::SYNC => {
                    protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle)
                }
                _ => state.skipping_to_sync = true,
            }
            return Step::Continue;
        }
        let Some(checkout) = state.server.as_mut() else {
            return Step::Continue;
        };
        let conn = checkout.conn();
        match msg_tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                state.pending += 1;
                state.recorder.request_sent();
                state.expect.push(if msg_tag == tag::QUERY {
                    Expect::Query
                } else {
                    Expect::FunctionCall
                });
                state.to_server.extend_from_slice(&frame);
            }
            tag::SYNC => {
                if state.expect.client_sync() {
                    state.pending += 1;
                    state.recorder.request_sent();
                }
                state.unsynced = false;
                state.to_server.extend_from_slice(&frame);
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                state.expect.client_copy_end();
                state.to_server.extend_from_slice(&frame);
            }
            tag::PARSE => {
                close_stale(conn, &mut state.to_server, &mut state.expect);
                state.unsynced = true;
                match statements::parse_parse(body) {
                    Some(p) if !p.name.is_empty() => {
                        let client_name = String::from_utf8_lossy(p.name).into_owned();
                        if state.statements.get(&client_name).is_some() {
                            // As PostgreSQL: the name is taken; the server raises the error, so the batch
                            // (and an open transaction) fails there too.
                            inject_error(
                                &mut state.to_server,
                                &mut state.expect,
                                &duplicate_statement(&client_name),
                            );
                        } else {
                            let statement = self.new_statement(p.query, p.param_types);
                            let server_name = statement.server_name.clone();
                            if conn.prepared.contains(&server_name) {
                                conn.prepared.touch(&server_name);
                                state.expect.push(Expect::Synthetic {
                                    frame: simple_frame(b'1'),
                                    undo: Some(Undo::ForgetClientStatement {
                                        client_name: client_name.clone(),
                                        server_name,
                                    }),
                                });
                            } else {
                                make_room(conn, &mut state.to_server, &mut state.expect);
                                state.to_server.extend_from_slice(&statement.parse);
                                conn.prepared.insert(server_name.clone());
                                state.expect.push(Expect::Parse {
                                    server_name: Some(server_name),
                                    swallow: false,
                                    client_name: Some(client_name.clone()),
                                });
                            }
                            state.statements.insert(client_name, statement);
                        }
                    }
                    _ => {
                        state.to_server.extend_from_slice(&frame);
                        state.expect.push(Expect::Parse {
                            server_name: None,
                            swallow: false,
                            client_name: None,
                        });
                    }
                }
            }
            tag::BIND => {
                close_stale(conn, &mut state.to_server, &mut state.expect);
                state.unsynced = true;
                let named = statements::parse_bind(body).and_then(|(portal, name, rest)| {
                    let client_name = String::from_utf8_lossy(name).into_owned();
                    let statement = state.statements.get(&client_name)?.clone();
                    Some((portal.to_vec(), statement, rest.to_vec(), client_name))
                });
                match named {
                    Some((_, statement, _, _)) if self.is_retired(conn, &statement) => {
                        inject_error(&mut state.to_server, &mut state.expect, &stale_plan());
                    }
                    Some((portal, statement, rest, client_name)) => {
                        ensure_prepared(conn, &mut state.to_server, &mut state.expect, &statement);
                        state.to_server.extend_from_slice(&statements::encode_bind(
                            &portal,
                            &statement.server_name,
                            &rest,
                        ));
                        state.expect.push(Expect::Bind {
                            server_name: Some(statement.server_name),
                            swallow: false,
                            client_name: Some(client_name),
                        });
                    }
                    None => {
                        state.to_server.extend_from_slice(&frame);
                        state.expect.push(Expect::Bind {
                            server_name: None,
                            swallow: false,
                            client_name: None,
                        });
                    }
                }
            }
            tag::DESCRIBE => {
                close_stale(conn, &mut state.to_server, &mut state.expect);
                state.unsynced = true;
                match statements::parse_target(body) {
                    Some((b'S', name)) => {
                        let client_name = String::from_utf8_lossy(name).into_owned();
                        let known = state.statements.get(&client_name).cloned();
                        let names = known
                            .as_ref()
                            .map(|s| (s.server_name.clone(), client_name.clone()));
                        match known {
                            Some(statement) if self.is_retired(conn, &statement) => {
                                inject_error(
                                    &mut state.to_server,
                                    &mut state.expect,
                                    &stale_plan(),
                                );
                                return Step::Continue;
                            }
                            Some(statement) => {
                                ensure_prepared(
                                    conn,
                                    &mut state.to_server,
                                    &mut state.expect,
                                    &statement,
                                );
                                state
                                    .to_server
                                    .extend_from_slice(&statements::encode_target(
                                        tag::DESCRIBE,
                                        b'S',
                                        &statement.server_name,
                                    ));
                            }
                            None => state.to_server.extend_from_slice(&frame),
                        }
                        state.expect.push(Expect::DescribeStatement { names });
                    }
                    _ => {
                        state.to_server.extend_from_slice(&frame);
                        state.expect.push(Expect::DescribePortal);
                    }
                }
            }
            tag::CLOSE => {
                state.unsynced = true;
                match statements::parse_target(body) {
                    Some((b'S', name)) if !name.is_empty() => {
                        // The server-side statement stays for other clients; the client's name goes
                        // (unless an earlier error makes the server skip this Close).
                        let client_name = String::from_utf8_lossy(name).into_owned();
                        let undo = state.statements.remove(&client_name).map(|statement| {
                            Undo::RestoreClientStatement {
                                client_name,
                                statement,
                            }
                        });
                        state.expect.push(Expect::Synthetic {
                            frame: simple_frame(b'3'),
                            undo,
                        });
                    }
                    _ => {
                        state.to_server.extend_from_slice(&frame);
                        state.expect.push(Expect::Close { swallow: None });
                    }
                }
            }
            tag::EXECUTE => {
                state.unsynced = true;
                state.expect.push(Expect::Execute);
                state.to_server.extend_from_slice(&frame);
            }
            _ => state.to_server.extend_from_slice(&frame),
        }
        Step::Continue
    }

    /// The client statement for a Parse: its server-side name carries the generation of that query (bumped
    /// each time a statement of it went stale).
    fn new_statement(&self, query: &[u8], param_types: &[u8]) -> Statement {
        let base = statements::server_name(query, param_types);
        let generation = self.pools.statement_generation(self.pool, &base);
        let server_name = statements::with_generation(&base, generation);
        Statement {
            parse: statements::encode_parse(&server_name, query, param_types),
            server_name,
        }
    }

    /// The statement went stale after DDL and this connection does not have it: PostgreSQL would keep
    /// failing it, so pgtenant must not prepare it again under the client's old name.
    fn is_retired(&self, conn: &UpstreamConn, statement: &Statement) -> bool {
        !conn.prepared.contains(&statement.server_name)
            && self.pools.is_retired(self.pool, &statement.server_name)
    }

    /// Applies what a server message implied for the books of the client and the connection.
    fn apply(&self, state: &mut State, outcome: &expect::Outcome) {
        if let Some(checkout) = state.server.as_mut() {
            let conn = checkout.conn();
            for name in &outcome.forget {
                conn.prepared.remove(name);
            }
            for undo in &outcome.undo {
                if let Undo::ServerStillHas(name) = undo {
                    if !name.is_empty() {
                        conn.prepared.insert(name.clone());
                    }
                }
            }
        }
        for undo in &outcome.undo {
            match undo {
                Undo::ForgetClientStatement {
                    client_name,
                    server_name,
                } => {
                    if state
                        .statements
                        .get(client_name)
                        .is_some_and(|s| s.server_name == *server_name)
                    {
                        state.statements.remove(client_name);
                    }
                }
                Undo::RestoreClientStatement {
                    client_name,
                    statement,
                } => state
                    .statements
                    .insert(client_name.clone(), statement.clone()),
                Undo::ServerStillHas(_) => {}
            }
        }
    }

    /// Sends synthetic responses that reached the head of the queue.
    /// A Query that is one SQL `DEALLOCATE` of one of the client's protocol-level statements, with nothing
    /// outstanding: answered here as PostgreSQL would (see [`deallocate`]). Returns whether it was.
    fn answer_deallocate(&self, state: &mut State, frame: &Bytes) -> bool {
        if !is_whole(frame) || !state.expect.is_empty() || state.pending > 0 {
            return false;
        }
        let Some(name) =
            crate::sql::message::text(tag::QUERY, frame).and_then(deallocate::deallocated_name)
        else {
            return false;
        };
        if state.statements.get(&name).is_none() {
            return false;
        }
        let status = if state.server.is_none() {
            TxStatus::Idle
        } else {
            state.status
        };
        if status == TxStatus::Failed {
            protocol::write::error_response(&mut state.to_client, &transaction_aborted());
        } else {
            state.statements.remove(&name);
            protocol::write::command_complete(&mut state.to_client, "DEALLOCATE");
        }
        protocol::write::ready_for_query(&mut state.to_client, status);
        true
    }

    fn emit_synthetic(&self, state: &mut State) {
        for frame in state.expect.take_synthetic_head() {
            state.to_client.extend_from_slice(&frame);
        }
    }

    /// Walks server bytes: matches each message against what the client expects, forwards, swallows,
    /// adds pgtenant's own, and follows settings and transaction status.
    fn process_server(&self, state: &mut State, data: &[u8]) -> Result<(), ProtocolError> {
        state.server_in.extend_from_slice(data);
        loop {
            if state.server_streaming > 0 {
                let n = state.server_streaming.min(state.server_in.len());
                if n == 0 {
                    return Ok(());
                }
                let chunk = state.server_in.split_to(n);
                state.to_client.extend_from_slice(&chunk);
                state.server_streaming -= n;
                continue;
            }
            if state.server_in.len() < 5 {
                return Ok(());
            }
            let (msg_tag, len) = frame_header(&state.server_in);
            if len < 4 || len as usize > MAX_WHOLE_MESSAGE {
                return Err(ProtocolError::BadFrameLength {
                    tag: msg_tag as char,
                    len: len.max(0) as usize,
                });
            }
            let total = 1 + len as usize;
            let whole = state.server_in.len() >= total;
            if !whole && server_needs_whole(msg_tag) {
                return Ok(());
            }
            let mut notice_after = None;
            if whole {
                let body = &state.server_in[5..total];
                match msg_tag {
                    b'E' => {
                        state.recorder.error();
                        // What failed left nothing behind (or rolled back with its transaction).
                        state.lasting = None;
                        let fields = ErrorFields::parse(body);
                        if fields.code == sqlstate::FEATURE_NOT_SUPPORTED
                            && fields
                                .message
                                .contains("cached plan must not change result type")
                        {
                            if let (Some(name), Some(checkout)) =
                                (state.expect.head_bind_statement(), state.server.as_mut())
                            {
                                // Stale everywhere: no client statement may be quietly re-prepared under it
                                // with another result shape; new Parses get a new name.
                                checkout.conn().prepared.mark_stale(name);
                                self.pools.retire_statement(self.pool, name);
                            }
                        }
                    }
                    b'S' => {
                        let mut b = BytesMut::from(body);
                        if let (Some(name), Some(value)) =
                            (protocol::get_cstr(&mut b), protocol::get_cstr(&mut b))
                        {
                            if let Some(checkout) = state.server.as_mut() {
                                checkout.conn().set_parameter(name.clone(), value.clone());
                            }
                            match state.desired.iter_mut().find(|(n, _)| *n == name) {
                                Some(entry) => entry.1 = value,
                                None => state.desired.push((name, value)),
                            }
                        }
                    }
                    b'Z' => {
                        state.status = body
                            .first()
                            .and_then(|b| TxStatus::from_byte(*b))
                            .unwrap_or(TxStatus::Failed);
                        state.pending = state.pending.saturating_sub(1);
                        state.answered += 1;
                        if state.status == TxStatus::Idle {
                            if let Some(found) = state.lasting.take() {
                                protocol::write::notice_response(
                                    &mut state.to_client,
                                    &found.notice(),
                                );
                            }
                        }
                    }
                    b'C' => {
                        let command = body.split(|b| *b == 0).next().unwrap_or(&[]);
                        if command == b"DEALLOCATE ALL" || command == b"DISCARD ALL" {
                            // Every prepared statement of the session is gone: pgtenant's and the client's.
                            if let Some(checkout) = state.server.as_mut() {
                                checkout.conn().prepared.clear();
                            }
                            state.statements = ClientStatements::default();
                        }
                        notice_after = session_feature_notice(command);
                    }
                    _ => {}
                }
            }
            // An error naming pgtenant's server-side statement names the client's instead.
            let renamed = if msg_tag == b'E' && whole {
                state
                    .expect
                    .head_statement_names()
                    .and_then(|(server, client)| {
                        rename_in_error(&state.server_in[..total], server, client)
                    })
            } else {
                None
            };
            let outcome = state.expect.on_server_message(msg_tag);
            // What the client last saw: a FATAL pgtenant swallowed (the answer to a message it injected)
            // leaves the client without an error, so pgtenant adds its own when the server then closes.
            if outcome.disposition != Some(Disposition::Swallow) {
                state.last_server_error = msg_tag == b'E';
            }
            state.pending = state.pending.saturating_sub(outcome.syncs_ignored);
            self.apply(state, &outcome);
            let take = if whole { total } else { state.server_in.len() };
            let mut frame = state.server_in.split_to(take);
            if let Some(renamed) = renamed {
                frame = renamed;
            }
            if outcome.disposition != Some(Disposition::Swallow) {
                state.to_client.extend_from_slice(&frame);
            }
            if !whole {
                state.server_streaming = total - take;
            }
            if let Some(notice) = notice_after {
                protocol::write::notice_response(&mut state.to_client, &notice);
            }
            self.emit_synthetic(state);
        }
    }
}

/// What a transaction-pooled client is told when it gets no server connection: what a session-pooled
/// client is told at login (no role name, no server address), as an ERROR: the session goes on.
fn pool_error(e: PoolError) -> PgError {
    tracing::warn!(error = %e, "no server connection for a transaction");
    PgError {
        severity: protocol::Severity::Error,
        ..e.to_client_error()
    }
}

/// The ErrorResponse `frame` with `"server"` replaced by `"client"`, if it names it.
fn rename_in_error(frame: &[u8], server: &str, client: &str) -> Option<BytesMut> {
    let needle = format!("\"{server}\"");
    let body = &frame[5..];
    let text = String::from_utf8_lossy(body);
    if !text.contains(&needle) {
        return None;
    }
    let replaced = text.replace(&needle, &format!("\"{client}\""));
    let mut out = BytesMut::with_capacity(replaced.len() + 5);
    out.put_u8(b'E');
    out.put_i32((replaced.len() + 4) as i32);
    out.extend_from_slice(replaced.as_bytes());
    Some(out)
}

/// A NOTICE for commands whose effect cannot outlast the transaction in transaction pooling.
fn session_feature_notice(command: &[u8]) -> Option<PgError> {
    let text = match command {
        b"LISTEN" => "LISTEN has no lasting effect in transaction pooling: notifications reach this client only while it holds a server connection (inside a transaction); use session pooling for LISTEN",
        b"PREPARE" => "SQL PREPARE does not outlast the transaction in transaction pooling; use the protocol's prepared statements (your driver's), which pgtenant carries across server connections",
        _ => return None,
    };
    Some(PgError {
        severity: protocol::Severity::Notice,
        ..PgError::error(sqlstate::WARNING, text)
    })
}

/// Closes statements the server reported stale, before the next extended message on this connection.
fn close_stale(conn: &mut UpstreamConn, to_server: &mut BytesMut, expect: &mut Expectations) {
    for name in conn.prepared.take_stale() {
        to_server.extend_from_slice(&statements::encode_target(tag::CLOSE, b'S', &name));
        // If skipped, the stale statement stays; it is not listed as prepared, and it is retired, so it
        // is never injected again under that name.
        expect.push(Expect::Close {
            swallow: Some(String::new()),
        });
    }
}

/// Closes the least recently used statement on a full connection.
fn make_room(conn: &mut UpstreamConn, to_server: &mut BytesMut, expect: &mut Expectations) {
    while conn.prepared.len() >= SERVER_STATEMENT_CACHE {
        let Some(victim) = conn.prepared.least_recently_used() else {
            break;
        };
        conn.prepared.remove(&victim);
        to_server.extend_from_slice(&statements::encode_target(tag::CLOSE, b'S', &victim));
        expect.push(Expect::Close {
            swallow: Some(victim),
        });
    }
}

/// Injects the Parse of a statement the connection lacks.
fn ensure_prepared(
    conn: &mut UpstreamConn,
    to_server: &mut BytesMut,
    expect: &mut Expectations,
    statement: &Statement,
) {
    if conn.prepared.contains(&statement.server_name) {
        conn.prepared.touch(&statement.server_name);
        return;
    }
    make_room(conn, to_server, expect);
    to_server.extend_from_slice(&statement.parse);
    conn.prepared.insert(statement.server_name.clone());
    expect.push(Expect::Parse {
        server_name: Some(statement.server_name.clone()),
        swallow: true,
        client_name: None,
    });
}

/// Makes the server raise `error` in the client's batch, in place of the request that PostgreSQL would
/// have refused: the batch and an open transaction then fail on the server exactly as they would
/// directly. (Uses the unnamed statement and portal, as a client's failed request leaves them unusable.)
fn inject_error(to_server: &mut BytesMut, expect: &mut Expectations, error: &PgError) {
    let body = format!(
        "DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}; END$pgtenant$",
        crate::directory::quote_literal(&error.code),
        crate::directory::quote_literal(&error.message.replace("$pgtenant$", "")),
    );
    to_server.extend_from_slice(&statements::encode_parse("", body.as_bytes(), &[0, 0]));
    expect.push(Expect::Parse {
        server_name: None,
        swallow: true,
        client_name: None,
    });
    to_server.extend_from_slice(&statements::encode_bind(b"", "", &[0, 0, 0, 0, 0, 0]));
    expect.push(Expect::Bind {
        server_name: None,
        swallow: true,
        client_name: None,
    });
    to_server.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    expect.push(Expect::Execute);
}

fn duplicate_statement(name: &str) -> PgError {
    PgError::error(
        sqlstate::DUPLICATE_PREPARED_STATEMENT,
        format!("prepared statement \"{name}\" already exists"),
    )
}

fn invalid_message_format() -> PgError {
    PgError::error(
        crate::protocol::sqlstate::PROTOCOL_VIOLATION,
        "invalid message format",
    )
}

fn transaction_aborted() -> PgError {
    PgError::error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn stale_plan() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "cached plan must not change result type",
    )
}

/// Sets the tracked settings that differ on this connection from what the client last saw.
pub async fn sync_settings(
    conn: &mut UpstreamConn,
    desired: &[(String, String)],
) -> Result<(), PgError> {
    let calls: Vec<String> = desired
        .iter()
        .filter(|(name, _)| TRACKED_SETTINGS.contains(&name.as_str()))
        .filter(|(name, value)| {
            conn.parameters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v != value)
                .unwrap_or(true)
        })
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                crate::directory::quote_literal(name),
                crate::directory::quote_literal(value)
            )
        })
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    match conn
        .run_simple(&[&format!("SELECT {}", calls.join(", "))])
        .await
    {
        Ok((None, TxStatus::Idle)) => Ok(()),
        Ok((Some(fields), _)) => Err(PgError::from_upstream(&fields)),
        Ok((None, _)) => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "server connection left in a transaction",
        )),
        Err(e) => Err(PgError::error(sqlstate::CONNECTION_FAILURE, e.to_string())),
    }
}
