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

use crate::metrics::Recorder;
use crate::protocol::{tag, FrameScanner, ProtocolError, TxStatus};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BUFFER_SIZE: usize = 32 * 1024;

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
    Protocol {
        from_client: bool,
        error: ProtocolError,
    },
    /// pgtenant is shutting down (or the session was ended from outside).
    Shutdown,
    /// The client stayed idle, between transactions, past `server.client_idle_timeout_secs`.
    IdleTimeout,
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
}

/// What both directions know of the session.
struct Shared {
    /// Requests sent (Query, Sync, FunctionCall) minus ReadyForQuery received.
    outstanding: AtomicI64,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: AtomicBool,
    status: AtomicU8,
    /// Tag of the last message the upstream sent.
    last_upstream_tag: AtomicU8,
    /// pgtenant is shutting down: end at the next moment the session stands idle.
    draining: AtomicBool,
    recorder: std::sync::Mutex<Recorder>,
}

impl Shared {
    fn idle(&self) -> bool {
        self.outstanding.load(Ordering::Relaxed) == 0
            && !self.unsynced.load(Ordering::Relaxed)
            && self.status.load(Ordering::Relaxed) == b'I'
    }
}

/// The two halves of each side of a session.
pub struct Sides<CR, CW, UR, UW> {
    pub client_read: CR,
    pub client_write: CW,
    pub upstream_read: UR,
    pub upstream_write: UW,
}

/// Relays until the client leaves, the upstream goes away, `kick` completes (ends at once), or `drain`
/// completes and the session then stands idle between transactions. Takes split halves so a plain TCP
/// client is relayed without the lock `tokio::io::split` puts between its halves.
pub async fn relay<CR, CW, UR, UW>(
    sides: Sides<CR, CW, UR, UW>,
    initial_status: TxStatus,
    recorder: Recorder,
    kick: impl std::future::Future<Output = ()>,
    drain: impl std::future::Future<Output = ()>,
    idle_timeout: Option<std::time::Duration>,
) -> RelayOutcome
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let shared = Shared {
        outstanding: AtomicI64::new(0),
        unsynced: AtomicBool::new(false),
        status: AtomicU8::new(initial_status.as_byte()),
        last_upstream_tag: AtomicU8::new(0),
        draining: AtomicBool::new(false),
        recorder: std::sync::Mutex::new(recorder),
    };
    let Sides {
        mut client_read,
        mut client_write,
        mut upstream_read,
        mut upstream_write,
    } = sides;
    let mut client_scanner = FrameScanner::default();
    let mut upstream_scanner = FrameScanner::default();
    let mut bytes_from_client = 0u64;
    let mut bytes_from_upstream = 0u64;

    let (end, client_clean) = {
        let to_upstream = client_to_upstream(
            &mut client_read,
            &mut upstream_write,
            &mut client_scanner,
            &shared,
            &mut bytes_from_client,
            idle_timeout,
        );
        let to_client = upstream_to_client(
            &mut upstream_read,
            &mut client_write,
            &mut upstream_scanner,
            &shared,
            &mut bytes_from_upstream,
        );
        tokio::pin!(to_upstream);
        tokio::pin!(to_client);
        tokio::pin!(kick);
        tokio::pin!(drain);
        // Each direction future is cancel-safe at its awaits: a chunk is scanned (state updated) right
        // after it is read and before the next await, so dropping the other direction loses no state.
        let mut draining = false;
        loop {
            tokio::select! {
                end = &mut to_upstream => break end,
                end = &mut to_client => break (end, false),
                _ = &mut kick => break (RelayEnd::Shutdown, false),
                _ = &mut drain, if !draining => {
                    draining = true;
                    shared.draining.store(true, Ordering::Relaxed);
                    if shared.idle() {
                        break (RelayEnd::Shutdown, false);
                    }
                }
            }
        }
    };
    let _ = client_write.flush().await;
    if let Ok(recorder) = shared.recorder.lock() {
        recorder.bytes(bytes_from_client, bytes_from_upstream);
    }

    let leaves_cleanly = matches!(
        end,
        RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) | RelayEnd::IdleTimeout
    );
    let reusable = leaves_cleanly
        && client_clean
        && upstream_scanner.at_boundary()
        && shared.outstanding.load(Ordering::Relaxed) == 0
        && !shared.unsynced.load(Ordering::Relaxed);
    RelayOutcome {
        end,
        reusable_with_status: reusable
            .then(|| TxStatus::from_byte(shared.status.load(Ordering::Relaxed)))
            .flatten(),
        bytes_from_client,
        bytes_from_upstream,
        upstream_at_boundary: upstream_scanner.at_boundary(),
        upstream_ended_with_error: shared.last_upstream_tag.load(Ordering::Relaxed)
            == tag::ERROR_RESPONSE,
        requests_in_flight: shared.outstanding.load(Ordering::Relaxed) > 0,
    }
}

/// Returns why it ended, and whether the client's byte stream ended exactly at a frame boundary.
async fn client_to_upstream<R, W>(
    client: &mut R,
    upstream: &mut W,
    scanner: &mut FrameScanner,
    shared: &Shared,
    bytes: &mut u64,
    idle_timeout: Option<std::time::Duration>,
) -> (RelayEnd, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let read = match idle_timeout {
            Some(limit) if shared.idle() => {
                match tokio::time::timeout(limit, client.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return (RelayEnd::IdleTimeout, scanner.at_boundary()),
                }
            }
            _ => client.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) => return (RelayEnd::ClientGone(None), scanner.at_boundary()),
            Ok(n) => n,
            Err(e) => return (RelayEnd::ClientGone(Some(e)), false),
        };
        *bytes += n as u64;
        let chunk = &buf[..n];
        let stop = scanner.scan(
            chunk,
            |_| false,
            |msg_tag, _| note_client_message(shared, msg_tag),
        );
        let stop = match stop {
            Ok(stop) => stop,
            Err(error) => {
                return (
                    RelayEnd::Protocol {
                        from_client: true,
                        error,
                    },
                    false,
                )
            }
        };
        match stop {
            None => {
                if let Err(e) = upstream.write_all(chunk).await {
                    return (RelayEnd::UpstreamGone(Some(e)), false);
                }
            }
            Some(at) => {
                // Terminate: forward what came before it, keep the upstream.
                let Some(start) = at.frame_start else {
                    // Part of the Terminate already went upstream: that connection is not clean.
                    return (RelayEnd::ClientTerminated, false);
                };
                if start > 0 {
                    if let Err(e) = upstream.write_all(&chunk[..start]).await {
                        return (RelayEnd::UpstreamGone(Some(e)), false);
                    }
                }
                return (RelayEnd::ClientTerminated, true);
            }
        }
    }
}

/// Follows one client message; returns false at a Terminate.
fn note_client_message(shared: &Shared, msg_tag: u8) -> bool {
    match msg_tag {
        tag::QUERY | tag::FUNCTION_CALL => {
            shared.outstanding.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut r) = shared.recorder.lock() {
                r.request_sent();
            }
        }
        tag::SYNC => {
            shared.outstanding.fetch_add(1, Ordering::Relaxed);
            shared.unsynced.store(false, Ordering::Relaxed);
            if let Ok(mut r) = shared.recorder.lock() {
                r.request_sent();
            }
        }
        tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
            shared.unsynced.store(true, Ordering::Relaxed);
        }
        tag::TERMINATE => return false,
        _ => {}
    }
    true
}

async fn upstream_to_client<R, W>(
    upstream: &mut R,
    client: &mut W,
    scanner: &mut FrameScanner,
    shared: &Shared,
    bytes: &mut u64,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match upstream.read(&mut buf).await {
            Ok(0) => return RelayEnd::UpstreamGone(None),
            Ok(n) => n,
            Err(e) => return RelayEnd::UpstreamGone(Some(e)),
        };
        *bytes += n as u64;
        let chunk = &buf[..n];
        let scanned = scanner.scan(
            chunk,
            |msg_tag| msg_tag == tag::READY_FOR_QUERY,
            |msg_tag, body| {
                shared.last_upstream_tag.store(msg_tag, Ordering::Relaxed);
                if msg_tag == tag::READY_FOR_QUERY {
                    shared.outstanding.fetch_sub(1, Ordering::Relaxed);
                    if let Some(status) = body.first() {
                        shared.status.store(*status, Ordering::Relaxed);
                        if let Ok(mut r) = shared.recorder.lock() {
                            r.ready(*status);
                        }
                    }
                } else if msg_tag == tag::ERROR_RESPONSE {
                    if let Ok(r) = shared.recorder.lock() {
                        r.error();
                    }
                }
                true
            },
        );
        if let Err(error) = scanned {
            return RelayEnd::Protocol {
                from_client: false,
                error,
            };
        }
        if let Err(e) = client.write_all(chunk).await {
            return RelayEnd::ClientGone(Some(e));
        }
        if let Err(e) = client.flush().await {
            return RelayEnd::ClientGone(Some(e));
        }
        if shared.draining.load(Ordering::Relaxed) && shared.idle() {
            return RelayEnd::Shutdown;
        }
    }
}
