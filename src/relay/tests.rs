//! The session relay over in-memory streams (`tokio::io::duplex`): a scripted upstream, the client's bytes
//! in chunks, virtual time for the idle timeout. No sockets, no PostgreSQL.

use super::*;
use crate::metrics::TenantMetrics;
use crate::protocol::write;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{duplex, AsyncReadExt, DuplexStream};

fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    build(&mut b);
    b.to_vec()
}

fn query(sql: &str) -> Vec<u8> {
    frames(|b| write::query(b, sql))
}

/// CommandComplete + ReadyForQuery with `status`.
fn answer(status: TxStatus) -> Vec<u8> {
    frames(|b| {
        write::command_complete(b, "SELECT 1");
        write::ready_for_query(b, status);
    })
}

struct Harness {
    /// The test's end of the client connection.
    client: DuplexStream,
    /// The test's end of the upstream connection.
    upstream: DuplexStream,
    relay: tokio::task::JoinHandle<RelayOutcome>,
    kick: tokio_util::sync::CancellationToken,
    drain: tokio_util::sync::CancellationToken,
    metrics: Arc<TenantMetrics>,
}

fn start(idle_timeout: Option<Duration>) -> Harness {
    start_with(idle_timeout, None)
}

fn start_with(
    idle_timeout: Option<Duration>,
    virtual_schema: Option<crate::sql::VirtualSchema>,
) -> Harness {
    start_full(idle_timeout, virtual_schema, None)
}

/// With pgtenant's limit timers (no cancel requests go out: there is no server to send them to).
fn start_with_limits(limits: crate::limits::SessionLimits) -> Harness {
    start_full(None, None, Some(limits))
}

fn start_full(
    idle_timeout: Option<Duration>,
    virtual_schema: Option<crate::sql::VirtualSchema>,
    limits: Option<crate::limits::SessionLimits>,
) -> Harness {
    let (client, mut relay_client) = duplex(64 * 1024);
    let (upstream, mut relay_upstream) = duplex(64 * 1024);
    let kick = tokio_util::sync::CancellationToken::new();
    let drain = tokio_util::sync::CancellationToken::new();
    let metrics = Arc::new(TenantMetrics::default());
    let recorder = Recorder::new(metrics.clone());
    let (k, d) = (kick.clone(), drain.clone());
    let watch_metrics = metrics.clone();
    let relay = tokio::spawn(async move {
        relay(
            &mut relay_client,
            &mut relay_upstream,
            Options {
                initial_status: TxStatus::Idle,
                recorder,
                idle_timeout,
                virtual_schema,
                limits: limits.and_then(|l| {
                    crate::limit_watch::LimitWatch::new(l, None, "t", Some(watch_metrics))
                }),
            },
            k.cancelled_owned(),
            d.cancelled_owned(),
        )
        .await
    });
    Harness {
        client,
        upstream,
        relay,
        kick,
        drain,
        metrics,
    }
}

async fn read_exactly(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.expect("read");
    buf
}

impl Harness {
    /// The client sends `sql`; it reaches the upstream, which answers with `status`; the answer reaches the
    /// client.
    async fn round_trip(&mut self, sql: &str, status: TxStatus) {
        self.client
            .write_all(&query(sql))
            .await
            .expect("client writes");
        assert_eq!(
            read_exactly(&mut self.upstream, query(sql).len()).await,
            query(sql)
        );
        self.upstream
            .write_all(&answer(status))
            .await
            .expect("upstream answers");
        assert_eq!(
            read_exactly(&mut self.client, answer(status).len()).await,
            answer(status)
        );
    }
}

#[tokio::test]
async fn bytes_pass_unchanged_in_both_directions_and_terminate_keeps_the_upstream() {
    let mut h = start(None);
    let q = query("SELECT 1");
    // The client's query arrives upstream byte for byte, even when written one byte at a time.
    for b in &q {
        h.client.write_all(&[*b]).await.expect("client writes");
    }
    assert_eq!(read_exactly(&mut h.upstream, q.len()).await, q);
    let a = answer(TxStatus::Idle);
    h.upstream.write_all(&a).await.expect("upstream answers");
    assert_eq!(read_exactly(&mut h.client, a.len()).await, a);
    // Terminate, in the same write as another query: the query goes up, the Terminate does not.
    let mut last = query("SELECT 2");
    last.extend(frames(write::terminate));
    h.client.write_all(&last).await.expect("client writes");
    let up = read_exactly(&mut h.upstream, query("SELECT 2").len()).await;
    assert_eq!(up, query("SELECT 2"));
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(outcome.end, RelayEnd::ClientTerminated),
        "{:?}",
        outcome.end
    );
    // The second query was still unanswered when the client left: not reusable as is.
    assert!(outcome.requests_in_flight);
    assert_eq!(outcome.reusable_with_status, None);
    assert_eq!(outcome.bytes_from_client as usize, q.len() + last.len());
}

#[tokio::test]
async fn a_client_that_leaves_between_transactions_leaves_a_reusable_upstream() {
    let mut h = start(None);
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    h.round_trip("COMMIT", TxStatus::Idle).await;
    h.client
        .write_all(&frames(write::terminate))
        .await
        .expect("terminate");
    let outcome = h.relay.await.expect("relay task");
    assert!(matches!(outcome.end, RelayEnd::ClientTerminated));
    assert_eq!(outcome.reusable_with_status, Some(TxStatus::Idle));
    assert!(!outcome.requests_in_flight);
    assert_eq!(
        h.metrics
            .transactions
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one transaction ended idle"
    );
}

#[tokio::test]
async fn a_client_gone_mid_transaction_is_not_reusable() {
    let mut h = start(None);
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    drop(h.client);
    let outcome = h.relay.await.expect("relay task");
    assert!(matches!(outcome.end, RelayEnd::ClientGone(None)));
    assert_eq!(outcome.reusable_with_status, Some(TxStatus::InTransaction));
}

#[tokio::test]
async fn a_bad_frame_length_from_the_client_is_a_client_protocol_error() {
    let mut h = start(None);
    h.client
        .write_all(&[b'Q', 0, 0, 0, 2])
        .await
        .expect("write");
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(
            outcome.end,
            RelayEnd::Protocol {
                from: Side::Client,
                ..
            }
        ),
        "{:?}",
        outcome.end
    );
}

#[tokio::test]
async fn the_upstream_closing_ends_the_relay_after_its_last_bytes_reach_the_client() {
    let mut h = start(None);
    let fatal = frames(|b| {
        write::error_response(
            b,
            &crate::protocol::PgError::fatal("57P01", "terminating connection"),
        )
    });
    h.upstream.write_all(&fatal).await.expect("write");
    drop(h.upstream);
    assert_eq!(read_exactly(&mut h.client, fatal.len()).await, fatal);
    let outcome = h.relay.await.expect("relay task");
    assert!(matches!(outcome.end, RelayEnd::UpstreamGone(None)));
    assert!(outcome.upstream_ended_with_error);
    assert!(outcome.upstream_at_boundary);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_ends_only_an_idle_session() {
    let mut h = start(Some(Duration::from_secs(60)));
    // Busy for longer than the limit (a transaction open): the timeout does not apply.
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!h.relay.is_finished(), "ended while in a transaction");
    h.round_trip("COMMIT", TxStatus::Idle).await;
    // Idle now: 59 s is fine, 61 s is not.
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(!h.relay.is_finished(), "ended before the limit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(outcome.end, RelayEnd::IdleTimeout),
        "{:?}",
        outcome.end
    );
    assert_eq!(outcome.reusable_with_status, Some(TxStatus::Idle));
}

#[tokio::test]
async fn kick_ends_at_once_and_drain_waits_for_the_transaction() {
    let mut h = start(None);
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    h.drain.cancel();
    // Still in the transaction: the relay goes on.
    h.client.write_all(&query("COMMIT")).await.expect("write");
    read_exactly(&mut h.upstream, query("COMMIT").len()).await;
    h.upstream
        .write_all(&answer(TxStatus::Idle))
        .await
        .expect("answer");
    // The COMMIT's answer reaches the client, then the relay ends.
    read_exactly(&mut h.client, answer(TxStatus::Idle).len()).await;
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(outcome.end, RelayEnd::Drained),
        "{:?}",
        outcome.end
    );
    // Drained at an idle point: the server connection can be reset and reused.
    assert!(outcome.reusable_with_status.is_some());

    let mut h = start(None);
    h.client.write_all(&query("BEGIN")).await.expect("write");
    read_exactly(&mut h.upstream, query("BEGIN").len()).await;
    h.kick.cancel();
    let outcome = h.relay.await.expect("relay task");
    assert!(matches!(outcome.end, RelayEnd::Shutdown));
    assert!(outcome.requests_in_flight);
}

#[tokio::test]
async fn a_client_that_does_not_read_stalls_only_its_own_direction() {
    // The client sends a large batch and does not read; the upstream's large answer fills the client's
    // side. The relay must keep reading the client (up to its own buffer) without deadlocking itself.
    let mut h = start(None);
    let big = query(&"x".repeat(200_000));
    let writer = tokio::spawn(async move {
        h.client.write_all(&big).await.expect("client writes");
        h.client
    });
    let mut received = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while received < 200_000 {
        let n = h.upstream.read(&mut buf).await.expect("upstream reads");
        assert!(n > 0);
        received += n;
    }
    let mut client = writer.await.expect("writer");
    h.upstream
        .write_all(&answer(TxStatus::Idle))
        .await
        .expect("answer");
    read_exactly(&mut client, answer(TxStatus::Idle).len()).await;
    drop(client);
    let outcome = h.relay.await.expect("relay task");
    assert!(matches!(outcome.end, RelayEnd::ClientGone(None)));
}

#[tokio::test]
async fn the_virtual_schema_is_rewritten_on_the_way_up_and_terminate_still_keeps_the_upstream() {
    let mut h = start_with(
        None,
        Some(crate::sql::VirtualSchema::new("public", "org_t")),
    );
    let mut sent = query("SELECT * FROM public.t");
    sent.extend(query("SELECT 'public.x'"));
    sent.extend(frames(write::terminate));
    for piece in sent.chunks(3) {
        h.client.write_all(piece).await.expect("client writes");
    }
    let mut want = query("SELECT * FROM \"org_t\".t");
    want.extend(query("SELECT 'public.x'"));
    assert_eq!(read_exactly(&mut h.upstream, want.len()).await, want);
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(outcome.end, RelayEnd::ClientTerminated),
        "{:?}",
        outcome.end
    );
    // Nothing after the Terminate went up.
    let mut rest = Vec::new();
    h.upstream.read_to_end(&mut rest).await.expect("read rest");
    assert!(rest.is_empty(), "{rest:?}");
}

fn books() -> Books {
    Books::new(b'I', Recorder::new(Arc::new(TenantMetrics::default())))
}

#[test]
fn syncs_the_server_ignores_in_copy_in_mode_are_not_awaited() {
    // tokio-postgres: Bind, Execute, Sync before the data; CopyDone and Sync after.
    let mut b = books();
    for t in [tag::BIND, tag::EXECUTE, tag::SYNC] {
        b.client_message(t);
    }
    b.upstream_message(tag::COPY_IN_RESPONSE, &[]);
    for t in [tag::COPY_DATA, tag::COPY_DONE, tag::SYNC] {
        b.client_message(t);
    }
    b.upstream_message(tag::COMMAND_COMPLETE, b"COPY 1\0");
    b.upstream_message(tag::READY_FOR_QUERY, b"I");
    assert!(b.idle(), "outstanding {}", b.outstanding);

    // The whole pipeline sent before the CopyInResponse arrives: only the Sync before CopyDone is ignored.
    for t in [
        tag::BIND,
        tag::EXECUTE,
        tag::SYNC,
        tag::COPY_DATA,
        tag::COPY_DONE,
        tag::SYNC,
    ] {
        b.client_message(t);
    }
    b.upstream_message(tag::COPY_IN_RESPONSE, &[]);
    assert_eq!(b.outstanding, 1);
    b.upstream_message(tag::READY_FOR_QUERY, b"I");
    assert!(b.idle());

    // A Sync answered before a later COPY starts is not touched; a simple-query COPY counts its Query once.
    b.client_message(tag::SYNC);
    b.upstream_message(tag::READY_FOR_QUERY, b"I");
    b.client_message(tag::QUERY);
    b.upstream_message(tag::COPY_IN_RESPONSE, &[]);
    b.client_message(tag::COPY_DATA);
    b.client_message(tag::COPY_FAIL);
    assert_eq!(b.outstanding, 1);
    b.upstream_message(tag::ERROR_RESPONSE, &[]);
    b.upstream_message(tag::READY_FOR_QUERY, b"I");
    assert!(b.idle());
}

fn limits(statement: u32, idle: u32, transaction: u32) -> crate::limits::SessionLimits {
    crate::limits::SessionLimits {
        statement_timeout_ms: statement,
        lock_timeout_ms: 0,
        idle_in_transaction_timeout_ms: idle,
        transaction_timeout_ms: transaction,
        enforce_grace_ms: 1_000,
    }
}

#[tokio::test(start_paused = true)]
async fn idle_in_a_transaction_past_the_limit_ends_with_a_clean_connection() {
    let mut h = start_with_limits(limits(0, 5_000, 0));
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    tokio::time::sleep(Duration::from_millis(5_900)).await;
    assert!(!h.relay.is_finished(), "ended within the grace");
    // Work in the transaction starts the idle time afresh.
    h.round_trip("SELECT 1", TxStatus::InTransaction).await;
    tokio::time::sleep(Duration::from_millis(5_900)).await;
    assert!(!h.relay.is_finished(), "idle time counted across work");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(
            outcome.end,
            RelayEnd::LimitReached(crate::limits::LimitEnd::IdleInTransaction { limit_ms: 5_000 })
        ),
        "{:?}",
        outcome.end
    );
    // Rolled back and reset by the session, then reused; the client may be told why.
    assert_eq!(outcome.reusable_with_status, Some(TxStatus::InTransaction));
    assert!(outcome.may_add_message);
    assert_eq!(
        h.metrics
            .limit_terminations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_past_its_limit_ends_with_its_statement_in_flight() {
    let mut h = start_with_limits(limits(0, 0, 10_000));
    h.round_trip("BEGIN", TxStatus::InTransaction).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.client
        .write_all(&query("SELECT pg_sleep(60)"))
        .await
        .expect("client writes");
    read_exactly(&mut h.upstream, query("SELECT pg_sleep(60)").len()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outcome = h.relay.await.expect("relay task");
    assert!(
        matches!(
            outcome.end,
            RelayEnd::LimitReached(crate::limits::LimitEnd::Transaction { limit_ms: 10_000 })
        ),
        "{:?}",
        outcome.end
    );
    // The statement is still running: the session cancels it and closes the connection.
    assert!(outcome.requests_in_flight);
    assert_eq!(outcome.reusable_with_status, None);
}

#[tokio::test(start_paused = true)]
async fn a_statement_past_its_limit_is_cancelled_and_the_session_goes_on() {
    let mut h = start_with_limits(limits(2_000, 0, 0));
    h.client
        .write_all(&query("SELECT pg_sleep(60)"))
        .await
        .expect("client writes");
    read_exactly(&mut h.upstream, query("SELECT pg_sleep(60)").len()).await;
    tokio::time::sleep(Duration::from_millis(2_900)).await;
    assert_eq!(
        h.metrics
            .limit_cancels
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "within the grace"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.metrics
            .limit_cancels
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(!h.relay.is_finished());
    // The server's answer (its cancel error, here a plain one) passes; the session goes on.
    h.upstream
        .write_all(&answer(TxStatus::Idle))
        .await
        .expect("upstream answers");
    read_exactly(&mut h.client, answer(TxStatus::Idle).len()).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.metrics
            .limit_cancels
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "nothing outstanding, nothing cancelled"
    );
    h.round_trip("SELECT 1", TxStatus::Idle).await;
    assert!(!h.relay.is_finished());
}
