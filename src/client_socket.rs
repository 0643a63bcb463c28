//! A client's TCP connection with a small read-ahead. The login reads small pieces: a packet's length (4
//! bytes), then its body; a message's tag and length (5 bytes), then its body. Read one by one from the
//! socket, that is a system call each, and tokio, seeing every one of them filled, tries the socket once
//! more before it waits (one more call that finds nothing). A small read is served here from one read of
//! up to [`READ_AHEAD`] bytes instead: a startup packet or a password message takes one system call, and a
//! read that finds less than it asked for tells tokio the socket is drained. Larger reads (the relay's,
//! TLS's) go straight to the socket once the read-ahead is used up, and the read-ahead's buffer is given
//! up then: a logged-in client holds none.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What one read from the socket asks for when a small read finds the read-ahead empty: more than a
/// startup packet or a password message (a JWT) usually takes. The buffer is a spare one of the thread's
/// (`spare_buffers`), given back once read.
const READ_AHEAD: usize = crate::spare_buffers::FIRST_READ;
/// Reads asking for less than this go through the read-ahead.
const SMALL_READ: usize = 256;

pub struct ClientSocket {
    tcp: TcpStream,
    /// Read from the socket, not yet read by the caller.
    ahead: BytesMut,
}

impl ClientSocket {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            ahead: BytesMut::new(),
        }
    }

    /// Whether bytes were read from the socket that the caller has not read yet.
    pub fn has_read_ahead(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// The next byte the client sends, left to be read (`None`: the client closed). Reads what has
    /// arrived into the read-ahead if it is empty.
    pub async fn first_byte(&mut self) -> io::Result<Option<u8>> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        Ok(self.ahead.first().copied())
    }

    /// Reads what the socket has into the read-ahead unless it holds bytes already; ready with nothing
    /// read ahead when the client closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.ahead.capacity() == 0 {
            self.ahead = crate::spare_buffers::take();
        }
        self.ahead.reserve(READ_AHEAD);
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.tcp),
            cx,
            &mut self.ahead
        ));
        if self.ahead.is_empty() {
            crate::spare_buffers::give_back(std::mem::take(&mut self.ahead));
        }
        Poll::Ready(read.map(|_| ()))
    }

    /// Copies read-ahead bytes into `buf`, freeing the read-ahead's buffer once all are read.
    fn serve_ahead(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.ahead.len().min(buf.remaining());
        buf.put_slice(&self.ahead[..n]);
        self.ahead.advance(n);
        if self.ahead.is_empty() {
            crate::spare_buffers::give_back(std::mem::take(&mut self.ahead));
        }
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_read_ahead() {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            if buf.remaining() >= SMALL_READ {
                return Pin::new(&mut this.tcp).poll_read(cx, buf);
            }
            ready!(this.poll_fill(cx))?;
        }
        this.serve_ahead(buf);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ClientSocket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server_side, _) = accepted.expect("accept");
        (
            ClientSocket::new(server_side),
            client.expect("connect loopback"),
        )
    }

    #[tokio::test]
    async fn small_reads_come_from_one_read_ahead_and_every_byte_comes_once_in_order() {
        let (mut socket, mut peer) = pair().await;
        let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.expect("write");
        drop(peer);
        assert_eq!(socket.first_byte().await.expect("first byte"), Some(0));
        assert!(socket.has_read_ahead(), "the first byte is left to be read");
        let mut got = Vec::new();
        let mut header = [0u8; 5];
        socket.read_exact(&mut header).await.expect("small read");
        got.extend_from_slice(&header);
        // A large read takes what is read ahead first, then the socket's bytes.
        let mut rest = Vec::new();
        socket
            .read_to_end(&mut rest)
            .await
            .expect("read to the end");
        got.extend_from_slice(&rest);
        assert_eq!(got, sent);
        assert!(!socket.has_read_ahead());
        assert_eq!(socket.first_byte().await.expect("at the end"), None);
    }

    #[tokio::test]
    async fn a_drained_read_ahead_holds_no_buffer() {
        let (mut socket, mut peer) = pair().await;
        peer.write_all(b"\0\0\0\x08abcd").await.expect("write");
        let mut length = [0u8; 4];
        socket.read_exact(&mut length).await.expect("length");
        assert!(socket.has_read_ahead());
        let mut body = [0u8; 4];
        socket.read_exact(&mut body).await.expect("body");
        assert_eq!(&body, b"abcd");
        assert!(!socket.has_read_ahead());
        assert_eq!(socket.ahead.capacity(), 0, "the read-ahead kept its buffer");
    }
}
