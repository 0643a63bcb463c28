//! The transaction-pooling relay over in-memory streams (`tokio::io::duplex`): the client's connection and
//! every server connection are duplex pairs, the pool lends scripted connections (`PoolManager::add_scripted`)
//! and the test plays each server with frames built by `protocol::write`. Virtual time throughout: the idle
//! timeout, and a bound on every wait, so that a relay that loses bytes fails a test instead of hanging it.
//! No sockets, no PostgreSQL.

use super::*;
use crate::cancel::CancelMap;
use crate::metrics::TenantMetrics;
use crate::names::{ClusterName, RoleName};
use crate::pool::PoolKey;
use crate::protocol::tag;
use crate::protocol::write;
use crate::upstream::UpstreamTarget;
use crate::upstream_tls::UpstreamTls;
use bytes::BufMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{duplex, AsyncReadExt, DuplexStream};

fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    build(&mut b);
    b.to_vec()
}

fn query(sql: &str) -> Vec<u8> {
    frames(|b| write::query(b, sql))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    statements::encode_parse(name, sql.as_bytes(), &[0, 0]).to_vec()
}

/// A Bind of `statement` to the unnamed portal with text parameters and text results.
fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(params.len() as i16);
    for p in params {
        rest.put_i32(p.len() as i32);
        rest.extend_from_slice(p.as_bytes());
    }
    rest.put_i16(0);
    statements::encode_bind(b"", statement, &rest).to_vec()
}

/// Execute of the unnamed portal, all rows.
fn execute() -> Vec<u8> {
    vec![tag::EXECUTE, 0, 0, 0, 9, 0, 0, 0, 0, 0]
}

fn simple(msg_tag: u8) -> Vec<u8> {
    simple_frame(msg_tag).to_vec()
}

fn ready(status: TxStatus) -> Vec<u8> {
    frames(|b| write::ready_for_query(b, status))
}

/// One row of one text column, its CommandComplete and ReadyForQuery with `status`.
fn one_row(value: &str, status: TxStatus) -> Vec<u8> {
    frames(|b| {
        write::row_description(b, &["v"]);
        write::data_row(b, &[Some(value.to_string())]);
        write::command_complete(b, "SELECT 1");
        write::ready_for_query(b, status);
    })
}

/// CommandComplete with `command` and ReadyForQuery with `status`.
fn done(command: &str, status: TxStatus) -> Vec<u8> {
    frames(|b| {
        write::command_complete(b, command);
        write::ready_for_query(b, status);
    })
}

fn error(code: &'static str, message: &str) -> Vec<u8> {
    frames(|b| write::error_response(b, &PgError::error(code, message)))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `bytes` cut into frames (tag, body), for assertions that show which message differs.
fn split(bytes: &[u8]) -> Vec<(char, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let end = (1 + len).min(rest.len());
        out.push((rest[0] as char, rest[5..end].to_vec()));
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.push(('?', rest.to_vec()));
    }
    out
}

/// The parameters every scripted server reports, and the client saw at login: nothing to set on checkout.
fn reported() -> Vec<(String, String)> {
    [
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("IntervalStyle", "postgres"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

struct Harness {
    /// The test's end of the client connection.
    client: DuplexStream,
    pools: Arc<PoolManager>,
    key: PoolKey,
    target: Arc<UpstreamTarget>,
    session: tokio::task::JoinHandle<TxnOutcome>,
}

fn start(idle_timeout: Option<Duration>) -> Harness {
    start_with(idle_timeout, crate::config::Config::default())
}

/// A session of the tenant `key` on `pools`, starting from `desired`, ended by `signal`'s kick if any.
fn txn_session<'a>(
    pools: &'a PoolManager,
    key: &'a PoolKey,
    target: &'a Arc<UpstreamTarget>,
    cancel: &'a crate::cancel::CancelRegistration,
    desired: crate::upstream::SharedParameters,
    idle_timeout: Option<Duration>,
    signal: Option<Arc<crate::sessions::SessionSignal>>,
) -> TxnSession<'a> {
    TxnSession {
        pools,
        pool: key,
        target,
        cancel,
        desired,
        metrics: Arc::new(TenantMetrics::default()),
        idle_timeout,
        virtual_schema: None,
        limits: None,
        queue_notice: QueueNotice::new(&crate::config::Config::default(), "t"),
        signal,
    }
}

/// As [`start`], the pool made with `config`.
fn start_with(idle_timeout: Option<Duration>, config: crate::config::Config) -> Harness {
    let pools = PoolManager::new(
        crate::config::LiveConfig::new(config),
        crate::credentials::RolePasswords::new(b"test server secret"),
    );
    let key = PoolKey::new(ClusterName::new("default"), RoleName::new("tenant_t"));
    // Nothing listens there: the pool lends only scripted connections, it never opens one.
    let target = Arc::new(UpstreamTarget {
        host: "127.0.0.1".into(),
        port: 1,
        database: "app".into(),
        connect_timeout: Duration::from_millis(100),
        tls: UpstreamTls::disabled(),
    });
    let (client, relay_client) = duplex(64 * 1024);
    let (p, k, t) = (pools.clone(), key.clone(), target.clone());
    let session = tokio::spawn(async move {
        let cancels = CancelMap::new();
        let registration = cancels.register(None);
        let mut client = ClientStream::Duplex(relay_client);
        let desired = Arc::new(reported());
        txn_session(&p, &k, &t, &registration, desired, idle_timeout, None)
            .run(&mut client, std::future::pending(), std::future::pending())
            .await
    });
    Harness {
        client,
        pools,
        key,
        target,
        session,
    }
}

/// Reads `n` bytes. The tests run in virtual time: bytes that never come fail the test (once every task
/// waits, time jumps to the bound) instead of hanging it.
async fn read_exactly(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match tokio::time::timeout(Duration::from_secs(3600), stream.read(&mut buf[filled..])).await
        {
            Ok(Ok(0)) => panic!("closed after {:?}", split(&buf[..filled])),
            Ok(Ok(read)) => filled += read,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!(
                "waited in vain for {} more bytes after {:?}",
                n - filled,
                split(&buf[..filled])
            ),
        }
    }
    buf
}

/// Reads as many bytes as `want` has from `stream` and asserts they are `want`, frame by frame.
async fn expect(stream: &mut DuplexStream, want: &[u8], what: &str) {
    let got = read_exactly(stream, want.len()).await;
    assert_eq!(split(&got), split(want), "{what}");
}

/// Lets the other tasks run until they wait.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// What `stream` holds right now, without waiting (after the other tasks ran).
async fn arrived(stream: &mut DuplexStream) -> Vec<u8> {
    settle().await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut read = tokio::io::ReadBuf::new(&mut buf);
    match std::pin::Pin::new(stream).poll_read(&mut cx, &mut read) {
        std::task::Poll::Ready(Ok(())) => read.filled().to_vec(),
        std::task::Poll::Ready(Err(e)) => panic!("read: {e}"),
        std::task::Poll::Pending => Vec::new(),
    }
}

impl Harness {
    /// A connection to a new scripted server, idle in the pool; the server's end.
    fn server(&self, process_id: i32) -> DuplexStream {
        self.pools
            .add_scripted(&self.key, &self.target, process_id, &reported())
    }

    /// (idle, lent) connections of the tenant's pool.
    fn pool(&self) -> (usize, usize) {
        let stats = self.pools.stats();
        let pool = stats
            .iter()
            .find(|s| s.role == self.key.role && s.cluster == self.key.cluster)
            .expect("the tenant's pool was made");
        (pool.idle, pool.active)
    }

    /// Waits (without time passing) until the pool holds `idle` idle connections and lends none.
    async fn until_all_idle(&self, idle: usize) {
        for _ in 0..1_000 {
            if self.pool() == (idle, 0) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "the pool holds (idle, lent) {:?}, not ({idle}, 0)",
            self.pool()
        );
    }

    /// Waits (without time passing) until the pool lends a connection.
    async fn until_lent(&self) {
        for _ in 0..1_000 {
            if self.pool().1 == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the pool lends nothing: {:?}", self.pool());
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.expect("client writes");
    }

    /// The client says Terminate; the session's outcome and what the client got after what it read.
    async fn terminate(mut self) -> (TxnOutcome, Vec<u8>) {
        self.send(&frames(write::terminate)).await;
        let outcome = self.ended().await;
        let mut rest = Vec::new();
        self.client
            .read_to_end(&mut rest)
            .await
            .expect("client reads");
        (outcome, rest)
    }

    /// The session's outcome, once it ended (within an hour of virtual time: it did not hang).
    async fn ended(&mut self) -> TxnOutcome {
        tokio::time::timeout(Duration::from_secs(3600), &mut self.session)
            .await
            .expect("the session ended, it did not hang")
            .expect("session task")
    }
}

#[tokio::test(start_paused = true)]
async fn a_query_is_relayed_and_its_connection_goes_back_to_the_pool_at_idle() {
    let mut h = start(None);
    let mut server = h.server(101);
    assert_eq!(h.pool(), (1, 0));
    h.send(&query("SELECT 1")).await;
    expect(&mut server, &query("SELECT 1"), "the server gets the Query").await;
    h.until_lent().await;
    server
        .write_all(&one_row("1", TxStatus::Idle))
        .await
        .expect("server answers");
    expect(
        &mut h.client,
        &one_row("1", TxStatus::Idle),
        "the client gets the answer as sent",
    )
    .await;
    h.until_all_idle(1).await;
    // The next transaction gets the same connection back from the pool.
    h.send(&query("SELECT 2")).await;
    expect(&mut server, &query("SELECT 2"), "the same server again").await;
    server
        .write_all(&one_row("2", TxStatus::Idle))
        .await
        .expect("server answers");
    expect(
        &mut h.client,
        &one_row("2", TxStatus::Idle),
        "second answer",
    )
    .await;
    h.until_all_idle(1).await;
    let (outcome, rest) = h.terminate().await;
    assert!(
        matches!(outcome.end, RelayEnd::ClientTerminated),
        "{:?}",
        outcome.end
    );
    assert!(outcome.held.is_none(), "held a connection at the end");
    assert_eq!(outcome.transactions, 2);
    assert_eq!(
        outcome.bytes_from_client as usize,
        2 * query("SELECT 1").len() + frames(write::terminate).len()
    );
    assert!(rest.is_empty(), "{:?}", split(&rest));
    assert!(arrived(&mut server).await.is_empty(), "nothing after");
}

#[tokio::test(start_paused = true)]
async fn a_transaction_keeps_one_server_connection_until_it_ends() {
    let mut h = start(None);
    let mut other = h.server(201);
    let mut server = h.server(202);
    let steps = [
        ("BEGIN", done("BEGIN", TxStatus::InTransaction)),
        ("SELECT 1", one_row("1", TxStatus::InTransaction)),
        ("SELECT 2", one_row("2", TxStatus::InTransaction)),
    ];
    for (sql, answer) in &steps {
        h.send(&query(sql)).await;
        expect(&mut server, &query(sql), sql).await;
        server.write_all(answer).await.expect("server answers");
        expect(&mut h.client, answer, sql).await;
        // Inside the transaction the connection stays lent, the other one idle.
        settle().await;
        assert_eq!(h.pool(), (1, 1), "after {sql}");
    }
    h.send(&query("COMMIT")).await;
    expect(&mut server, &query("COMMIT"), "COMMIT").await;
    server
        .write_all(&done("COMMIT", TxStatus::Idle))
        .await
        .expect("server answers");
    expect(&mut h.client, &done("COMMIT", TxStatus::Idle), "COMMIT").await;
    h.until_all_idle(2).await;
    let (outcome, rest) = h.terminate().await;
    assert_eq!(outcome.transactions, 1, "one checkout for the transaction");
    assert!(rest.is_empty(), "{:?}", split(&rest));
    assert!(
        arrived(&mut other).await.is_empty(),
        "the other server got nothing"
    );
}

/// The server name pgtenant gives a client statement of `sql` (no parameter types).
fn server_name(sql: &str) -> String {
    crate::upstream::statements::server_name(sql.as_bytes(), &[0, 0])
}

#[tokio::test(start_paused = true)]
async fn an_error_in_an_extended_batch_ends_it_at_its_sync_and_its_later_parse_never_happened() {
    let mut h = start(None);
    let mut server = h.server(301);
    // One batch: a failing statement, then a named statement prepared and run, then the Sync.
    let batch = cat(&[
        &parse("", "SELECT 1/0"),
        &bind("", &[]),
        &execute(),
        &parse("later", "SELECT 2"),
        &bind("later", &[]),
        &execute(),
        &simple(tag::SYNC),
    ]);
    h.send(&batch).await;
    let upstream = cat(&[
        &parse("", "SELECT 1/0"),
        &bind("", &[]),
        &execute(),
        &parse(&server_name("SELECT 2"), "SELECT 2"),
        &bind(&server_name("SELECT 2"), &[]),
        &execute(),
        &simple(tag::SYNC),
    ]);
    expect(
        &mut server,
        &upstream,
        "the batch, statement names rewritten",
    )
    .await;
    // As PostgreSQL: the error, then nothing for the rest of the batch, then ReadyForQuery for the Sync.
    let answer = cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &error("22012", "division by zero"),
        &ready(TxStatus::Idle),
    ]);
    server.write_all(&answer).await.expect("server answers");
    expect(&mut h.client, &answer, "the client gets exactly that").await;
    h.until_all_idle(1).await;
    // The skipped Parse created nothing: the client's name goes to the server as it is, which refuses it.
    let again = cat(&[&bind("later", &[]), &execute(), &simple(tag::SYNC)]);
    h.send(&again).await;
    expect(
        &mut server,
        &again,
        "a Bind of an unknown statement, unchanged",
    )
    .await;
    let refused = cat(&[
        &error("26000", "prepared statement \"later\" does not exist"),
        &ready(TxStatus::Idle),
    ]);
    server.write_all(&refused).await.expect("server answers");
    expect(&mut h.client, &refused, "the server's refusal").await;
    h.until_all_idle(1).await;
    let (outcome, rest) = h.terminate().await;
    assert!(outcome.held.is_none());
    assert!(rest.is_empty(), "{:?}", split(&rest));
}

#[tokio::test(start_paused = true)]
async fn messages_sent_after_an_error_up_to_the_sync_are_skipped_as_by_postgres() {
    let mut h = start(None);
    let mut server = h.server(401);
    let first = cat(&[
        &parse("", "SELECT 1/0"),
        &bind("", &[]),
        &execute(),
        &simple(tag::FLUSH),
    ]);
    h.send(&first).await;
    expect(&mut server, &first, "the batch up to its Flush").await;
    let failed = cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &error("22012", "division by zero"),
    ]);
    server.write_all(&failed).await.expect("server answers");
    expect(&mut h.client, &failed, "the error reaches the client").await;
    // Having seen the error, the client sends more before its Sync (a pipelining driver): the server would
    // discard all of it, so only the Sync goes up, and only its ReadyForQuery comes back.
    h.send(&cat(&[
        &parse("after_error", "SELECT 2"),
        &bind("after_error", &[]),
        &statements::encode_target(tag::DESCRIBE, b'P', ""),
        &execute(),
        &statements::encode_target(tag::CLOSE, b'S', "nosuch"),
        &simple(tag::SYNC),
    ]))
    .await;
    expect(&mut server, &simple(tag::SYNC), "only the Sync").await;
    server
        .write_all(&ready(TxStatus::Idle))
        .await
        .expect("server answers");
    expect(&mut h.client, &ready(TxStatus::Idle), "only ReadyForQuery").await;
    h.until_all_idle(1).await;
    // The skipped Parse made no statement.
    let again = cat(&[&bind("after_error", &[]), &execute(), &simple(tag::SYNC)]);
    h.send(&again).await;
    expect(&mut server, &again, "the client's own name, unknown").await;
    let refused = cat(&[
        &error("26000", "prepared statement \"after_error\" does not exist"),
        &ready(TxStatus::Idle),
    ]);
    server.write_all(&refused).await.expect("server answers");
    expect(&mut h.client, &refused, "the server's refusal").await;
    h.until_all_idle(1).await;
    let (outcome, rest) = h.terminate().await;
    assert!(matches!(outcome.end, RelayEnd::ClientTerminated));
    assert!(rest.is_empty(), "{:?}", split(&rest));
    assert!(arrived(&mut server).await.is_empty(), "nothing after");
}

#[tokio::test(start_paused = true)]
async fn a_named_statement_is_prepared_again_on_another_connection_and_its_parse_complete_swallowed(
) {
    let mut h = start(None);
    let mut second = h.server(502);
    let mut first = h.server(501);
    let sql = "SELECT $1::int";
    let pgt = server_name(sql);
    h.send(&cat(&[&parse("s1", sql), &simple(tag::SYNC)])).await;
    expect(
        &mut first,
        &cat(&[&parse(&pgt, sql), &simple(tag::SYNC)]),
        "the Parse under pgtenant's name",
    )
    .await;
    let prepared = cat(&[&simple(b'1'), &ready(TxStatus::Idle)]);
    first.write_all(&prepared).await.expect("server answers");
    expect(&mut h.client, &prepared, "ParseComplete, ReadyForQuery").await;
    h.until_all_idle(2).await;
    // The first server closes its idle connection: the next checkout finds it gone and takes the second.
    drop(first);
    let run = cat(&[&bind("s1", &["21"]), &execute(), &simple(tag::SYNC)]);
    h.send(&run).await;
    expect(
        &mut second,
        &cat(&[
            &parse(&pgt, sql),
            &bind(&pgt, &["21"]),
            &execute(),
            &simple(tag::SYNC),
        ]),
        "the statement's Parse injected before the Bind",
    )
    .await;
    let rows = frames(|b| {
        write::data_row(b, &[Some("21".into())]);
        write::command_complete(b, "SELECT 1");
        write::ready_for_query(b, TxStatus::Idle);
    });
    second
        .write_all(&cat(&[&simple(b'1'), &simple(b'2'), &rows]))
        .await
        .expect("server answers");
    // What PostgreSQL sends for Bind, Execute, Sync: no ParseComplete.
    expect(
        &mut h.client,
        &cat(&[&simple(b'2'), &rows]),
        "the injected ParseComplete is swallowed",
    )
    .await;
    h.until_all_idle(1).await;
    // The connection has the statement now: nothing injected.
    h.send(&run).await;
    expect(
        &mut second,
        &cat(&[&bind(&pgt, &["21"]), &execute(), &simple(tag::SYNC)]),
        "no Parse this time",
    )
    .await;
    second
        .write_all(&cat(&[&simple(b'2'), &rows]))
        .await
        .expect("server answers");
    expect(&mut h.client, &cat(&[&simple(b'2'), &rows]), "as sent").await;
    h.until_all_idle(1).await;
    let (outcome, rest) = h.terminate().await;
    assert_eq!(outcome.transactions, 3);
    assert!(rest.is_empty(), "{:?}", split(&rest));
}

#[tokio::test(start_paused = true)]
async fn a_server_connection_dying_mid_transaction_ends_the_session_at_once() {
    let mut h = start(None);
    let mut server = h.server(601);
    h.send(&query("BEGIN")).await;
    expect(&mut server, &query("BEGIN"), "BEGIN").await;
    let begun = done("BEGIN", TxStatus::InTransaction);
    server.write_all(&begun).await.expect("server answers");
    expect(&mut h.client, &begun, "BEGIN").await;
    h.send(&query("SELECT 1")).await;
    expect(&mut server, &query("SELECT 1"), "the query").await;
    // Part of an answer, then the server is gone.
    let row = frames(|b| write::row_description(b, &["v"]));
    server.write_all(&row).await.expect("server answers");
    drop(server);
    let outcome = h.ended().await;
    assert!(
        matches!(outcome.end, RelayEnd::UpstreamGone(None)),
        "{:?}",
        outcome.end
    );
    // The session tells the client (08006, see session::finish): it stands between messages.
    assert!(outcome.may_add_message);
    assert!(outcome.requests_in_flight);
    assert_eq!(outcome.reusable_with_status, None, "not to be reused");
    assert!(outcome.held.is_some(), "the dead connection, to be closed");
    let mut got = Vec::new();
    h.client.read_to_end(&mut got).await.expect("client reads");
    assert_eq!(split(&got), split(&row), "what the server sent first");
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_ends_the_session_only_between_transactions() {
    let limit = Duration::from_secs(60);
    let mut h = start(Some(limit));
    let mut server = h.server(701);
    h.send(&query("BEGIN")).await;
    expect(&mut server, &query("BEGIN"), "BEGIN").await;
    let begun = done("BEGIN", TxStatus::InTransaction);
    server.write_all(&begun).await.expect("server answers");
    expect(&mut h.client, &begun, "BEGIN").await;
    // Idle inside a transaction (holding a server connection): the client idle timeout does not apply.
    tokio::time::sleep(3 * limit).await;
    assert!(!h.session.is_finished(), "ended inside a transaction");
    h.send(&query("COMMIT")).await;
    expect(&mut server, &query("COMMIT"), "COMMIT").await;
    let committed = done("COMMIT", TxStatus::Idle);
    server.write_all(&committed).await.expect("server answers");
    expect(&mut h.client, &committed, "COMMIT").await;
    h.until_all_idle(1).await;
    // Between transactions: the limit counts from the end of the transaction.
    tokio::time::sleep(limit - Duration::from_secs(1)).await;
    assert!(!h.session.is_finished(), "ended before the limit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.session.is_finished(), "still running past the limit");
    let outcome = h.ended().await;
    assert!(
        matches!(outcome.end, RelayEnd::IdleTimeout),
        "{:?}",
        outcome.end
    );
    // The session then sends 57P05 (see session::tests); the relay left it room to.
    assert!(outcome.may_add_message);
    assert!(outcome.held.is_none(), "the connection is back in the pool");
    let mut got = Vec::new();
    h.client.read_to_end(&mut got).await.expect("client reads");
    assert!(got.is_empty(), "{:?}", split(&got));
}

/// The idle time counts from the answer (the ReadyForQuery that ends the transaction), as PostgreSQL's
/// idle_session_timeout and the session relay count it, not from the client's request: a statement that ran
/// 50 s of a 60 s limit leaves its client the whole 60 s.
#[tokio::test(start_paused = true)]
async fn the_idle_time_counts_from_the_answer_not_from_the_request() {
    let limit = Duration::from_secs(60);
    let mut h = start(Some(limit));
    let mut server = h.server(801);
    h.send(&query("SELECT pg_sleep(50)")).await;
    expect(&mut server, &query("SELECT pg_sleep(50)"), "the query").await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    let answer = one_row("", TxStatus::Idle);
    server.write_all(&answer).await.expect("server answers");
    expect(&mut h.client, &answer, "the answer").await;
    tokio::time::sleep(limit - Duration::from_secs(1)).await;
    assert!(
        !h.session.is_finished(),
        "ended less than the limit after the answer"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.session.is_finished(),
        "still running past the limit after the answer"
    );
    assert!(matches!(h.ended().await.end, RelayEnd::IdleTimeout));
}

/// Reads frames from `stream` up to and including a ReadyForQuery.
async fn frames_until_ready(stream: &mut DuplexStream) -> Vec<(char, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let head = read_exactly(stream, 5).await;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let body = read_exactly(stream, len - 4).await;
        let tag = head[0] as char;
        got.push((tag, body));
        if tag == 'Z' {
            return got;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_the_settings_query_costs_the_client_a_statement_not_the_session(
) {
    let mut h = start(None);
    // This server's TimeZone differs from what the client saw: a checkout sets it first.
    let mut elsewhere = reported();
    elsewhere
        .iter_mut()
        .filter(|(name, _)| name == "TimeZone")
        .for_each(|(_, value)| *value = "Europe/Paris".into());
    let mut server = h.pools.add_scripted(&h.key, &h.target, 901, &elsewhere);
    h.send(&query("SELECT 1")).await;
    let sync = read_exactly(&mut server, 5).await;
    assert_eq!(sync[0], tag::QUERY, "the settings query comes first");
    // It is never answered.
    let answer = frames_until_ready(&mut h.client).await;
    let (tag, body) = &answer[0];
    assert_eq!(*tag, 'E', "{answer:?}");
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("C08006"), "{text}");
    assert!(text.contains("did not answer the settings query"), "{text}");
    assert_eq!(answer.last().map(|(t, _)| *t), Some('Z'));
    // The connection is closed, not lent again; the session goes on.
    h.until_all_idle(0).await;
    assert!(!h.session.is_finished());
}

/// A session's relay future is held for the session's whole life, idle or not (10,000 idle clients hold
/// 10,000 of them): what only a transaction's start needs (taking a connection, the settings query) is boxed
/// and not part of it. This fails when a large future is awaited inline again (debug build sizes).
#[tokio::test]
async fn the_relay_future_of_an_idle_session_stays_small() {
    let h = start(None);
    let cancels = CancelMap::new();
    let registration = cancels.register(None);
    let (_client, relay_client) = duplex(1024);
    let mut client = ClientStream::Duplex(relay_client);
    let desired = Arc::new(reported());
    let session = txn_session(
        &h.pools,
        &h.key,
        &h.target,
        &registration,
        desired,
        None,
        None,
    );
    let relay = session.run(&mut client, std::future::pending(), std::future::pending());
    let size = std::mem::size_of_val(&relay);
    // 6,184 bytes with the connection taken inline, 2,480 with it boxed, 1,432 with the connection, the
    // limit timers and the signals boxed, 1,368 with no second copy of the session in it and the virtual
    // schema borrowed, 1,192 with its layers as functions returning blocks, 1,064 with the message
    // handling so too and a moved tenant's pool boxed (rustc 1.95, debug).
    assert!(size <= 1152, "the relay future takes {size} bytes");
}

/// A second session on the harness's pool, ended by `signal` (its kick), starting from `desired`.
fn second_session(
    h: &Harness,
    signal: Arc<crate::sessions::SessionSignal>,
    desired: crate::upstream::SharedParameters,
) -> (DuplexStream, tokio::task::JoinHandle<TxnOutcome>) {
    let (client, relay_client) = duplex(64 * 1024);
    let (p, k, t) = (h.pools.clone(), h.key.clone(), h.target.clone());
    let session = tokio::spawn(async move {
        let cancels = CancelMap::new();
        let registration = cancels.register(None);
        let mut client = ClientStream::Duplex(relay_client);
        let kick = signal.kicked();
        txn_session(&p, &k, &t, &registration, desired, None, Some(signal))
            .run(&mut client, kick, std::future::pending())
            .await
    });
    (client, session)
}

#[tokio::test(start_paused = true)]
async fn a_session_kicked_while_it_waits_for_a_connection_ends_at_once() {
    let mut config = crate::config::Config::default();
    config.pool.size_per_tenant = 1;
    let mut h = start_with(None, config);
    let mut server = h.server(1001);
    // The pool's one connection is held by an open transaction.
    h.send(&query("BEGIN")).await;
    expect(&mut server, &query("BEGIN"), "BEGIN").await;
    let begun = done("BEGIN", TxStatus::InTransaction);
    server.write_all(&begun).await.expect("server answers");
    expect(&mut h.client, &begun, "BEGIN").await;
    // A second client waits for it (pool.acquire_timeout_ms: 5 s by default).
    let signal = crate::sessions::SessionSignal::new();
    let (mut waiting, session) = second_session(&h, signal.clone(), Arc::new(reported()));
    waiting
        .write_all(&query("SELECT 1"))
        .await
        .expect("client writes");
    settle().await;
    assert!(!session.is_finished(), "it waits for the connection");
    signal.kick();
    let outcome = tokio::time::timeout(Duration::from_millis(1), session)
        .await
        .expect("ended without waiting out the acquire timeout")
        .expect("session task");
    assert!(
        matches!(outcome.end, RelayEnd::Shutdown),
        "{:?}",
        outcome.end
    );
    assert!(outcome.held.is_none());
    // Nothing was said to it (the session's end says why), and its statement never reached a server.
    let said = arrived(&mut waiting).await;
    assert!(said.is_empty(), "{:?}", split(&said));
    assert!(arrived(&mut server).await.is_empty());
}

/// Sessions logged in from the role's defaults share one list of them; a setting one client changes is
/// its own: the next client of that server connection gets the setting put back.
#[tokio::test(start_paused = true)]
async fn a_setting_one_client_changes_does_not_follow_another_that_shared_its_defaults() {
    let defaults = Arc::new(reported());
    let h = start(None);
    let mut server = h.server(1101);
    let signal = crate::sessions::SessionSignal::new;
    let (mut a, a_session) = second_session(&h, signal(), defaults.clone());
    let (mut b, b_session) = second_session(&h, signal(), defaults.clone());

    // A sets its TimeZone; the server reports it.
    a.write_all(&query("SET TimeZone = 'Europe/Paris'"))
        .await
        .expect("a writes");
    expect(
        &mut server,
        &query("SET TimeZone = 'Europe/Paris'"),
        "A's SET",
    )
    .await;
    let set = frames(|f| {
        write::parameter_status(f, "TimeZone", "Europe/Paris");
        write::command_complete(f, "SET");
        write::ready_for_query(f, TxStatus::Idle);
    });
    server.write_all(&set).await.expect("server answers");
    expect(&mut a, &set, "A's answer").await;
    h.until_all_idle(1).await;

    // B, on the same connection, gets the role's TimeZone put back before its query.
    b.write_all(&query("SELECT 1")).await.expect("b writes");
    let head = read_exactly(&mut server, 5).await;
    assert_eq!(head[0], tag::QUERY);
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let body = read_exactly(&mut server, len - 4).await;
    let sql = String::from_utf8_lossy(&body);
    assert!(
        sql.contains("set_config('TimeZone', 'UTC'"),
        "B's checkout puts its TimeZone back first: {sql}"
    );
    assert_eq!(
        defaults
            .iter()
            .find(|(n, _)| n == "TimeZone")
            .map(|(_, v)| v.as_str()),
        Some("UTC")
    );
    drop((a, b, a_session, b_session));
}
