//! One turn of the transaction-pooling loop: a single poll over the client stream, the held server
//! connection and the session's signals, without splitting either stream. What can be written is written
//! on the spot (both directions, TLS flushed), so a request reaches the server and an answer the client in
//! the same turn that produced it; the turn ends with the next thing that needs the loop: bytes read from
//! a side, a side gone, a connection that can go back to the pool, or a signal.

use super::{State, FIRST_READ, HIGH_WATER, READ_SIZE};
use crate::limit_watch::LimitWatch;
use crate::limits::LimitEnd;
use crate::spare_buffers;
use crate::tls::PollReadReady;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// What ended a turn.
pub(super) enum Event {
    /// Bytes from the client were appended to `client_in` (0: the client closed).
    ClientRead(io::Result<usize>),
    /// Bytes from the server were appended to `server_in` (0: the server closed).
    ServerRead(io::Result<usize>),
    ClientWriteFailed(io::Error),
    ServerWriteFailed(io::Error),
    /// Everything for the server is written and the client stands between transactions: the loop gives
    /// the connection back.
    MayRelease,
    Kicked,
    Drain,
    IdleTimeout,
    Limit(LimitEnd),
}

/// The session's signals and timers, pinned once for the whole session.
pub(super) struct Signals<K, D> {
    pub kick: Pin<Box<K>>,
    pub drain: Pin<Box<D>>,
    pub draining: bool,
    pub idle_timeout: Option<std::time::Duration>,
    /// Armed at the last client activity seen when it was set; moved on lazily when it fires early.
    pub idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub last_client_activity: tokio::time::Instant,
    /// Alternates which side is read first, so neither can starve the other.
    pub server_first: bool,
}

impl<K: Future<Output = ()>, D: Future<Output = ()>> Signals<K, D> {
    pub fn new(
        kick: Pin<Box<K>>,
        drain: Pin<Box<D>>,
        idle_timeout: Option<std::time::Duration>,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            kick,
            drain,
            draining: false,
            idle_timeout,
            idle_timer: idle_timeout.map(|limit| Box::pin(tokio::time::sleep_until(now + limit))),
            last_client_activity: now,
            server_first: false,
        }
    }

    /// Whether the client, idle between transactions, has been idle past its limit.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(limit), Some(timer)) = (self.idle_timeout, self.idle_timer.as_mut()) else {
            return Poll::Pending;
        };
        loop {
            ready!(timer.as_mut().poll(cx));
            let due = self.last_client_activity + limit;
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

/// Polls the session once: writes what it can, then waits for the next event.
pub(super) fn poll_turn<C, K, D>(
    cx: &mut Context<'_>,
    state: &mut State,
    signals: &mut Signals<K, D>,
    limits: &mut Option<Box<LimitWatch>>,
    client: &mut C,
    may_release: impl Fn(&State) -> bool,
) -> Poll<Event>
where
    C: AsyncRead + AsyncWrite + PollReadReady + Unpin,
    K: Future<Output = ()>,
    D: Future<Output = ()>,
{
    if signals.kick.as_mut().poll(cx).is_ready() {
        return Poll::Ready(Event::Kicked);
    }
    if let Some(checkout) = state.server.as_mut() {
        let stream = &mut checkout.conn().stream;
        let tls = stream.is_tls();
        if let Poll::Ready(e) = poll_write_out(
            cx,
            stream,
            &mut state.to_server,
            &mut state.server_unflushed,
            tls,
        ) {
            return Poll::Ready(Event::ServerWriteFailed(e));
        }
    }
    if let Poll::Ready(e) = poll_write_out(
        cx,
        client,
        &mut state.to_client,
        &mut state.client_unflushed,
        state.client_tls,
    ) {
        return Poll::Ready(Event::ClientWriteFailed(e));
    }
    shed_idle_buffers(state);
    if may_release(state) {
        return Poll::Ready(Event::MayRelease);
    }
    signals.server_first = !signals.server_first;
    if signals.server_first {
        if let Poll::Ready(r) = poll_server_read(cx, state) {
            return Poll::Ready(Event::ServerRead(r));
        }
        if let Poll::Ready(r) = poll_client_read(cx, state, client) {
            return Poll::Ready(Event::ClientRead(r));
        }
    } else {
        if let Poll::Ready(r) = poll_client_read(cx, state, client) {
            return Poll::Ready(Event::ClientRead(r));
        }
        if let Poll::Ready(r) = poll_server_read(cx, state) {
            return Poll::Ready(Event::ServerRead(r));
        }
    }
    if !signals.draining && signals.drain.as_mut().poll(cx).is_ready() {
        signals.draining = true;
        return Poll::Ready(Event::Drain);
    }
    if state.server.is_none() && signals.poll_idle(cx).is_ready() {
        return Poll::Ready(Event::IdleTimeout);
    }
    if let Some(watch) = limits.as_mut() {
        if let Poll::Ready(end) = watch.poll_end(cx) {
            return Poll::Ready(Event::Limit(end));
        }
    }
    Poll::Pending
}

fn poll_client_read<C: AsyncRead + PollReadReady + Unpin>(
    cx: &mut Context<'_>,
    state: &mut State,
    client: &mut C,
) -> Poll<io::Result<usize>> {
    if state.to_server.len() >= HIGH_WATER {
        return Poll::Pending;
    }
    if state.client_in.capacity() == 0 {
        // Idle between transactions, the session holds no read buffer (see `shed_idle_buffers`): it takes
        // one once the client has bytes for it.
        ready!(client.poll_read_ready(cx))?;
        state.client_in = spare_buffers::take();
        state.shed_due = true;
    }
    poll_read_into(cx, client, &mut state.client_in)
}

/// Gives up the client-side buffers (and the room of the expectations queue) while the client holds no
/// server connection and they are empty: an idle client costs no buffer. (The server-side ones stay with
/// the connection: `lend_buffers`.) It works once per spell without a server, when `shed_due` says a buffer
/// may have been taken since (a release, a read buffer taken), and again while one still held bytes.
fn shed_idle_buffers(state: &mut State) {
    if state.server.is_some() || !state.shed_due {
        return;
    }
    // An empty buffer may still hold its allocation (`capacity` counts only the room after what was read
    // or written out), so emptiness alone decides. The server-side ones are here too: one the session was
    // lent may have kept bytes at the release.
    let mut kept_bytes = false;
    if state.client_in.is_empty() && state.client_streaming == 0 {
        spare_buffers::give_back(std::mem::take(&mut state.client_in));
    } else {
        kept_bytes = true;
    }
    if state.to_client.is_empty() {
        spare_buffers::give_back(std::mem::take(&mut state.to_client));
    } else {
        kept_bytes = true;
    }
    if state.to_server.is_empty() {
        state.to_server = BytesMut::new();
    } else {
        kept_bytes = true;
    }
    if state.server_in.is_empty() && state.server_streaming == 0 {
        state.server_in = BytesMut::new();
    } else {
        kept_bytes = true;
    }
    state.expect.shed();
    state.shed_due = kept_bytes;
}

fn poll_server_read(cx: &mut Context<'_>, state: &mut State) -> Poll<io::Result<usize>> {
    if state.to_client.len() >= HIGH_WATER {
        return Poll::Pending;
    }
    match state.server.as_mut() {
        Some(checkout) => poll_read_into(cx, &mut checkout.conn().stream, &mut state.server_in),
        None => Poll::Pending,
    }
}

/// Reads into the spare room of `buf`, without an intermediate buffer. The room grows with what the stream
/// needs: from `FIRST_READ` (an idle session of small requests holds little), doubled each time a read
/// fills it, up to `READ_SIZE` (a large result or COPY is read in large pieces).
fn poll_read_into<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    reader: &mut R,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let room = buf.capacity().clamp(FIRST_READ, READ_SIZE);
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
    let spare = buf.capacity() - buf.len();
    let read = tokio_util::io::poll_read_buf(Pin::new(reader), cx, buf);
    if matches!(read, Poll::Ready(Ok(n)) if n == spare && buf.capacity() < READ_SIZE) {
        buf.reserve(buf.capacity());
    }
    read
}

/// Writes `buf` out as far as the writer takes it, then flushes if a TLS writer holds bytes back. Ready
/// only with an error: otherwise everything is written (Pending, nothing left to wait for) or the writer
/// is full (Pending, woken when it has room).
fn poll_write_out<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    writer: &mut W,
    buf: &mut BytesMut,
    unflushed: &mut bool,
    tls: bool,
) -> Poll<io::Error> {
    while !buf.is_empty() {
        match Pin::new(&mut *writer).poll_write(cx, buf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                *unflushed = tls;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(e),
            Poll::Pending => return Poll::Pending,
        }
    }
    if *unflushed {
        match Pin::new(&mut *writer).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Poll::Ready(e),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Recorder, TenantMetrics};

    fn idle_state() -> State {
        State::new(
            std::sync::Arc::new(Vec::new()),
            Recorder::new(std::sync::Arc::new(TenantMetrics::default())),
            false,
        )
    }

    /// A buffer of `FIRST_READ` whose bytes were all read or written out: empty, its allocation held.
    fn used_buffer() -> BytesMut {
        let mut buffer = BytesMut::with_capacity(FIRST_READ);
        buffer.extend_from_slice(b"Z\0\0\0\x05I");
        buffer.advance(6);
        buffer
    }

    /// Whether `buffer` still holds an allocation (reclaiming its room in place, which changes no byte).
    fn holds_room(buffer: &mut BytesMut) -> bool {
        buffer.try_reclaim(1)
    }

    #[test]
    fn an_idle_client_gives_up_its_emptied_buffers_once_due() {
        let mut state = idle_state();
        state.client_in = used_buffer();
        state.to_client = used_buffer();
        state.to_server = used_buffer();
        state.server_in = used_buffer();
        shed_idle_buffers(&mut state);
        assert!(
            holds_room(&mut state.to_client),
            "shed although nothing said it was due"
        );

        state.shed_due = true;
        shed_idle_buffers(&mut state);
        for buffer in [
            &mut state.client_in,
            &mut state.to_client,
            &mut state.to_server,
            &mut state.server_in,
        ] {
            assert!(!holds_room(buffer), "an emptied buffer was kept");
        }
        assert!(!state.shed_due, "still due with nothing left to shed");
    }

    #[test]
    fn bytes_still_owed_to_the_client_keep_its_buffer_and_the_shedding_due() {
        let mut state = idle_state();
        state.to_client = BytesMut::from(&b"Z\0\0\0\x05I"[..]);
        state.client_in = used_buffer();
        state.shed_due = true;
        shed_idle_buffers(&mut state);
        assert_eq!(&state.to_client[..], b"Z\0\0\0\x05I");
        assert!(!holds_room(&mut state.client_in));
        assert!(
            state.shed_due,
            "not due again although the client's buffer is still held"
        );

        state.to_client.advance(6);
        shed_idle_buffers(&mut state);
        assert!(!holds_room(&mut state.to_client));
        assert!(!state.shed_due);
    }
}
