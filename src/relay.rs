//! The byte-level relay of one client session to its upstream connection (session pooling).
//!
//! Bytes pass through unchanged, one write per read. The relay only follows frame boundaries to see:
//! - from the client: Query / Sync / FunctionCall (each is answered by exactly one ReadyForQuery), the
//!   extended-protocol messages that are not yet followed by a Sync, and Terminate (not forwarded: the
//!   upstream connection goes back to the pool);
//! - from the upstream: ReadyForQuery and its transaction status.
//!
//! From these it tells the session whether the upstream connection can be reset and reused when the client
//! leaves, or must be closed.
//!
//! The relay is one state machine polled as one future over both streams (no split halves, no locks, no
//! `select!`): each wake-up moves whatever bytes can move in both directions, then checks the session's own
//! end signals. A direction reads again only once its last chunk is written, which is the backpressure.

use crate::metrics::Recorder;
use crate::protocol::{tag, FrameScanner, ProtocolError, TxStatus};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

const BUFFER_SIZE: usize = 32 * 1024;

/// Which peer a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its connection (or it broke).
    ClientGone(Option<std::io::Error>),
    /// The upstream closed its connection (after a FATAL error, say) or it broke.
    UpstreamGone(Option<std::io::Error>),
    /// A peer broke the framing.
    Protocol { from: Side, error: ProtocolError },
    /// The session was ended from outside, at once (kicked: a suspended tenant, a revoked token, the end of
    /// the shutdown grace period).
    Shutdown,
    /// `drain` completed and the session then stood idle between transactions (pgtenant is shutting down, or
    /// the session reached its deadline): the server connection is clean.
    Drained,
    /// The client stayed idle, between transactions, past `server.client_idle_timeout_secs`.
    IdleTimeout,
    /// pgtenant's own limit of the tenant ended the session (idle in a transaction, or in one too long).
    LimitReached(crate::limits::LimitEnd),
}

/// The result of a relay: why it ended, and the upstream's transaction status if the connection stands
/// cleanly between requests (and so can be reset and reused).
#[derive(Debug)]
pub struct RelayOutcome {
    pub end: RelayEnd,
    pub reusable_with_status: Option<TxStatus>,
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
    /// The upstream's byte stream stands between two messages: pgtenant may add one of its own.
    pub upstream_at_boundary: bool,
    /// The last message the upstream sent was an ErrorResponse (a FATAL before it closed, typically).
    pub upstream_ended_with_error: bool,
    /// Requests were still unanswered when the relay ended (a query may be running upstream).
    pub requests_in_flight: bool,
    /// The client's stream stands between two messages: pgtenant may add one of its own (an error saying
    /// why the session ends).
    pub may_add_message: bool,
}

/// What the relay knows of the session's protocol state.
struct Books {
    /// Requests sent (Query, Sync, FunctionCall) minus ReadyForQuery received.
    outstanding: i64,
    /// The unanswered requests in order: for a Sync, how many COPYs the client had ended (CopyDone or
    /// CopyFail) when it sent it; [`NOT_A_SYNC`] for a Query or FunctionCall.
    unanswered: std::collections::VecDeque<u64>,
    /// CopyDone/CopyFail the client sent.
    copy_ends_sent: u64,
    /// CopyInResponses the upstream sent.
    copy_ins_started: u64,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    status: u8,
    /// Tag of the last message the upstream sent.
    last_upstream_tag: u8,
    /// ReadyForQuery messages received (for the limit timers).
    answered: u64,
    recorder: Recorder,
}

/// In [`Books::unanswered`]: a request that is not a Sync.
const NOT_A_SYNC: u64 = u64::MAX;

impl Books {
    fn new(status: u8, recorder: Recorder) -> Self {
        Books {
            outstanding: 0,
            unanswered: std::collections::VecDeque::new(),
            copy_ends_sent: 0,
            copy_ins_started: 0,
            unsynced: false,
            status,
            last_upstream_tag: 0,
            answered: 0,
            recorder,
        }
    }

    fn idle(&self) -> bool {
        self.outstanding == 0 && !self.unsynced && self.status == b'I'
    }

    /// Requests are unanswered, or an extended batch is not yet synced.
    fn busy(&self) -> bool {
        self.outstanding > 0 || self.unsynced
    }

    /// Follows one client message; returns false at a Terminate.
    fn client_message(&mut self, msg_tag: u8) -> bool {
        match msg_tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                self.outstanding += 1;
                self.unanswered.push_back(NOT_A_SYNC);
                self.recorder.request_sent();
            }
            tag::SYNC => {
                self.outstanding += 1;
                self.unanswered.push_back(self.copy_ends_sent);
                self.unsynced = false;
                self.recorder.request_sent();
            }
            tag::COPY_DONE | tag::COPY_FAIL => self.copy_ends_sent += 1,
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                self.unsynced = true;
            }
            tag::TERMINATE => return false,
            _ => {}
        }
        true
    }

    fn upstream_message(&mut self, msg_tag: u8, body: &[u8]) {
        self.last_upstream_tag = msg_tag;
        if msg_tag == tag::COPY_IN_RESPONSE {
            // The server reads every message after the COPY's Execute in copy-in mode, where a Sync is
            // ignored, until the client's CopyDone or CopyFail: those Syncs get no ReadyForQuery (drivers
            // such as tokio-postgres send one before the data). Syncs sent before that Execute were
            // answered before this message, so what is unanswered of this COPY's window is after it.
            let window = self.copy_ins_started;
            let before = self.unanswered.len();
            self.unanswered.retain(|sent| *sent != window);
            self.outstanding -= (before - self.unanswered.len()) as i64;
            self.copy_ins_started += 1;
        } else if msg_tag == tag::READY_FOR_QUERY {
            self.outstanding -= 1;
            self.answered += 1;
            self.unanswered.pop_front();
            if let Some(status) = body.first() {
                self.status = *status;
                self.recorder.ready(*status);
            }
        } else if msg_tag == tag::ERROR_RESPONSE {
            self.recorder.error();
        }
    }
}

/// One direction: a buffer holding the chunk read last until it is written on.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    scanner: FrameScanner,
    bytes: u64,
    /// The writer was given bytes and not yet flushed.
    unflushed: bool,
    /// What to write instead of `buf`, when the bytes read were transformed (the virtual schema).
    spill: Vec<u8>,
    spill_pos: usize,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            buf: vec![0u8; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            scanner: FrameScanner::default(),
            bytes: 0,
            unflushed: false,
            spill: Vec::new(),
            spill_pos: 0,
        }
    }

    fn has_pending(&self) -> bool {
        self.start < self.end || self.spill_pos < self.spill.len()
    }

    /// Writes what is pending; `Ready(Ok)` once all of it is written (and flushed, with `flush`).
    fn poll_write_out<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        flush: bool,
        progress: &mut bool,
    ) -> Poll<std::io::Result<()>> {
        while self.has_pending() {
            let pending = if self.spill_pos < self.spill.len() {
                &self.spill[self.spill_pos..]
            } else {
                &self.buf[self.start..self.end]
            };
            match Pin::new(&mut *writer).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    if self.spill_pos < self.spill.len() {
                        self.spill_pos += n;
                        if self.spill_pos == self.spill.len() {
                            self.spill.clear();
                            self.spill_pos = 0;
                        }
                    } else {
                        self.start += n;
                    }
                    self.unflushed = true;
                    *progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if flush && self.unflushed {
            match Pin::new(&mut *writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the next chunk; `Ready(Ok(n))` with n = 0 at end of stream.
    fn poll_read_in<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<std::io::Result<usize>> {
        let mut read = ReadBuf::new(&mut self.buf);
        match Pin::new(reader).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                self.start = 0;
                self.end = n;
                self.bytes += n as u64;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How the loop ended: why, and whether the client's stream ended exactly at a frame boundary.
type Finish = (RelayEnd, bool);

/// The relay's state between polls.
struct State<K, D> {
    books: Books,
    to_upstream: Pipe,
    to_client: Pipe,
    /// The client sent Terminate: end once what came before it is written.
    terminated: Option<Finish>,
    kick: Pin<Box<K>>,
    drain: Pin<Box<D>>,
    draining: bool,
    idle_timeout: Option<Duration>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Rewrites the virtual schema in the client's messages, if on.
    rewriter: Option<rewrite::ClientRewriter>,
    /// pgtenant's timers of the tenant's limits, if any is on.
    limits: Option<crate::limit_watch::LimitWatch>,
}

impl<K: Future<Output = ()>, D: Future<Output = ()>> State<K, D> {
    /// Nothing of the client's is half forwarded.
    fn client_at_boundary(&self) -> bool {
        self.to_upstream.scanner.at_boundary() && !self.to_upstream.has_pending()
    }

    fn restart_idle_timer(&mut self) {
        if let (Some(limit), Some(timer)) = (self.idle_timeout, self.idle_timer.as_mut()) {
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
        }
    }

    fn poll_relay<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
    ) -> Poll<Finish>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        if self.kick.as_mut().poll(cx).is_ready() {
            return Poll::Ready((RelayEnd::Shutdown, false));
        }
        if !self.draining && self.drain.as_mut().poll(cx).is_ready() {
            self.draining = true;
        }
        loop {
            let mut progress = false;
            if let Poll::Ready(finish) =
                self.poll_client_to_upstream(cx, client, upstream, &mut progress)
            {
                return Poll::Ready(finish);
            }
            if let Poll::Ready(end) =
                self.poll_upstream_to_client(cx, client, upstream, &mut progress)
            {
                return Poll::Ready((end, false));
            }
            if self.draining && self.books.idle() && !self.to_client.has_pending() {
                return Poll::Ready((RelayEnd::Drained, self.client_at_boundary()));
            }
            if !progress {
                break;
            }
        }
        if let Some(watch) = self.limits.as_mut() {
            let books = &self.books;
            watch.observe(books.busy(), books.status != b'I', books.answered);
            if let Poll::Ready(end) = watch.poll_end(cx) {
                return Poll::Ready((RelayEnd::LimitReached(end), self.client_at_boundary()));
            }
        }
        if self.books.idle() && !self.to_upstream.has_pending() {
            if let Some(timer) = self.idle_timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready((
                        RelayEnd::IdleTimeout,
                        self.to_upstream.scanner.at_boundary(),
                    ));
                }
            }
        }
        Poll::Pending
    }

    fn poll_client_to_upstream<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        progress: &mut bool,
    ) -> Poll<Finish>
    where
        C: AsyncRead + Unpin,
        U: AsyncWrite + Unpin,
    {
        // Flushed too: a TLS upstream may have taken bytes it could not send yet (a no-op on plain TCP).
        match self
            .to_upstream
            .poll_write_out(cx, upstream, true, progress)
        {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready((RelayEnd::UpstreamGone(Some(e)), false)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(finish) = self.terminated.take() {
            return Poll::Ready(finish);
        }
        let n = match self.to_upstream.poll_read_in(cx, client) {
            Poll::Ready(Ok(0)) => {
                let at_boundary = self.to_upstream.scanner.at_boundary();
                return Poll::Ready((RelayEnd::ClientGone(None), at_boundary));
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready((RelayEnd::ClientGone(Some(e)), false)),
            Poll::Pending => return Poll::Pending,
        };
        *progress = true;
        self.restart_idle_timer();
        let books = &mut self.books;
        let stop = self.to_upstream.scanner.scan(
            &self.to_upstream.buf[..n],
            |_| false,
            |msg_tag, _| books.client_message(msg_tag),
        );
        let forward = match &stop {
            Ok(Some(at)) => at.frame_start.unwrap_or(n),
            _ => n,
        };
        if let Some(rewriter) = self.rewriter.as_mut() {
            let pipe = &mut self.to_upstream;
            rewriter.feed(&pipe.buf[..forward], &mut pipe.spill);
            pipe.start = 0;
            pipe.end = 0;
        }
        match stop {
            Ok(None) => {}
            Ok(Some(at)) => {
                // Terminate: forward what came before it, keep the upstream.
                match at.frame_start {
                    Some(start) => {
                        if self.rewriter.is_none() {
                            self.to_upstream.end = start;
                        }
                        self.terminated = Some((RelayEnd::ClientTerminated, true));
                    }
                    // Part of the Terminate already went upstream: that connection is not clean.
                    None => return Poll::Ready((RelayEnd::ClientTerminated, false)),
                }
            }
            Err(error) => {
                let end = RelayEnd::Protocol {
                    from: Side::Client,
                    error,
                };
                return Poll::Ready((end, false));
            }
        }
        Poll::Pending
    }

    fn poll_upstream_to_client<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        progress: &mut bool,
    ) -> Poll<RelayEnd>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + Unpin,
    {
        match self.to_client.poll_write_out(cx, client, true, progress) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::ClientGone(Some(e))),
            Poll::Pending => return Poll::Pending,
        }
        if self.draining && self.books.idle() {
            return Poll::Ready(RelayEnd::Drained);
        }
        let n = match self.to_client.poll_read_in(cx, upstream) {
            Poll::Ready(Ok(0)) => return Poll::Ready(RelayEnd::UpstreamGone(None)),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::UpstreamGone(Some(e))),
            Poll::Pending => return Poll::Pending,
        };
        *progress = true;
        let books = &mut self.books;
        let scanned = self.to_client.scanner.scan(
            &self.to_client.buf[..n],
            |msg_tag| msg_tag == tag::READY_FOR_QUERY,
            |msg_tag, body| {
                books.upstream_message(msg_tag, body);
                true
            },
        );
        if let Err(error) = scanned {
            return Poll::Ready(RelayEnd::Protocol {
                from: Side::Upstream,
                error,
            });
        }
        if self.books.idle() {
            // The idle time counts from the moment the session stands idle.
            self.restart_idle_timer();
        }
        Poll::Pending
    }
}

/// How a relay runs.
pub struct Options {
    /// The upstream's transaction status at the start.
    pub initial_status: TxStatus,
    pub recorder: Recorder,
    /// End the session when the client stays idle between transactions this long.
    pub idle_timeout: Option<Duration>,
    /// Rewrite this virtual schema name in the client's Query and Parse messages.
    pub virtual_schema: Option<crate::sql::VirtualSchema>,
    /// pgtenant's timers of the tenant's limits (none when no limit is on).
    pub limits: Option<crate::limit_watch::LimitWatch>,
}

/// Relays until the client leaves, the upstream goes away, `kick` completes (ends at once), or `drain`
/// completes and the session then stands idle between transactions.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    options: Options,
    kick: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Options {
        initial_status,
        recorder,
        idle_timeout,
        virtual_schema,
        limits,
    } = options;
    let mut state = State {
        books: Books::new(initial_status.as_byte(), recorder),
        to_upstream: Pipe::new(),
        to_client: Pipe::new(),
        terminated: None,
        kick: Box::pin(kick),
        drain: Box::pin(drain),
        draining: false,
        idle_timeout,
        idle_timer: idle_timeout.map(|limit| Box::pin(tokio::time::sleep(limit))),
        rewriter: virtual_schema.map(rewrite::ClientRewriter::new),
        limits,
    };
    let (end, client_clean) =
        std::future::poll_fn(|cx| state.poll_relay(cx, &mut *client, &mut *upstream)).await;
    let client_clean = match end {
        // Drained from the upstream side: check the client side here.
        RelayEnd::Drained => client_clean || state.client_at_boundary(),
        _ => client_clean,
    };
    // Ended by a limit: what the server sent before is the client's (a cancelled statement's error, say).
    let mut client_owed = false;
    if matches!(end, RelayEnd::LimitReached(_)) && state.to_client.has_pending() {
        let pending = &state.to_client.buf[state.to_client.start..state.to_client.end];
        let written = tokio::time::timeout(Duration::from_secs(5), client.write_all(pending)).await;
        client_owed = !matches!(written, Ok(Ok(())));
    }
    let _ = client.flush().await;
    let books = &state.books;
    books
        .recorder
        .bytes(state.to_upstream.bytes, state.to_client.bytes);

    let leaves_cleanly = matches!(
        end,
        RelayEnd::ClientTerminated
            | RelayEnd::ClientGone(_)
            | RelayEnd::IdleTimeout
            | RelayEnd::Drained
            | RelayEnd::LimitReached(_)
    );
    let upstream_at_boundary = state.to_client.scanner.at_boundary();
    let upstream_ended_with_error = books.last_upstream_tag == tag::ERROR_RESPONSE;
    let may_add_message = match end {
        // A FATAL the server sent before it closed is the last word.
        RelayEnd::UpstreamGone(_) => upstream_at_boundary && !upstream_ended_with_error,
        RelayEnd::LimitReached(_) => upstream_at_boundary && !client_owed,
        _ => true,
    };
    let reusable = leaves_cleanly
        && client_clean
        && upstream_at_boundary
        && books.outstanding == 0
        && !books.unsynced;
    RelayOutcome {
        end,
        reusable_with_status: reusable
            .then(|| TxStatus::from_byte(books.status))
            .flatten(),
        bytes_from_client: state.to_upstream.bytes,
        bytes_from_upstream: state.to_client.bytes,
        upstream_at_boundary,
        upstream_ended_with_error,
        requests_in_flight: books.outstanding > 0,
        may_add_message,
    }
}

mod rewrite;

pub use rewrite::MAX_REWRITTEN;

#[cfg(test)]
mod tests;
