//! The corners of the protocol in transaction pooling. COPY through tokio-postgres, which runs it on the
//! extended protocol: Bind, Execute and Sync before the data (the server ignores a Sync received in copy-in
//! mode), CopyDone or CopyFail and a second Sync after it; text and binary, in and out of explicit
//! transactions, a bad row and an abandoned COPY, other clients taking the server connection in between,
//! prepared statements before and after: the connection stays usable and goes back to the pool clean. Then
//! the raw protocol compared message for message with PostgreSQL: COPY both ways, FunctionCall, empty
//! queries, portals suspended by row limits, errors in every phase.

mod common;

use common::wire::*;
use common::*;
use futures_util::{SinkExt, TryStreamExt};
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;

/// Copies `rows` text rows `(id, label)` into `table` with COPY FROM STDIN; returns the row count.
async fn copy_in_text(
    client: &tokio_postgres::Client,
    table: &str,
    ids: std::ops::Range<i32>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client
        .copy_in(&format!("COPY {table} (id, label) FROM STDIN"))
        .await?;
    tokio::pin!(sink);
    let mut data = String::new();
    for id in ids {
        data.push_str(&format!("{id}\tlabel {id} \\\\ \u{00e9}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await?;
    sink.as_mut().finish().await
}

async fn copy_out_text(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<u8>, tokio_postgres::Error> {
    let stream = client.copy_out(sql).await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

/// Server connections the tenant's pool holds in use right now, per pgtenant's own books.
fn busy_connections(proxy: &TestProxy) -> usize {
    proxy.proxy.pools.active(None)
}

/// Waits (up to 5 s) until no server connection is checked out; returns the last count.
async fn settle_in_use(proxy: &TestProxy) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = busy_connections(proxy);
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_copy_in_and_out_in_transaction_pooling() {
    let tenant = onboard("txncopy").await;
    let proxy = txn_proxy(1).await;
    let client = proxy.connect(&tenant).await;
    let other = proxy.connect(&tenant).await;
    client
        .batch_execute("CREATE TABLE copy_rows (id int PRIMARY KEY, label text)")
        .await
        .expect("create table");
    let count = client
        .prepare("SELECT count(*) FROM copy_rows")
        .await
        .expect("prepare count");

    // Outside a transaction, twice in a row, with another client using the one server connection between.
    for round in 0..3 {
        let first = round * 100;
        let copied = copy_in_text(&client, "copy_rows", first..first + 100)
            .await
            .unwrap_or_else(|e| panic!("copy in round {round}: {e}"));
        assert_eq!(copied, 100);
        let n: i64 = other
            .query_one("SELECT count(*) FROM copy_rows", &[])
            .await
            .expect("other client between copies")
            .get(0);
        assert_eq!(n, i64::from(first) + 100);
        let n: i64 = client
            .query_one(&count, &[])
            .await
            .expect("prepared statement after copy")
            .get(0);
        assert_eq!(n, i64::from(first) + 100);
    }
    assert_eq!(
        settle_in_use(&proxy).await,
        0,
        "connection back in the pool"
    );

    // COPY TO STDOUT, text and CSV, matches what PostgreSQL has.
    let out = copy_out_text(
        &client,
        "COPY (SELECT * FROM copy_rows ORDER BY id) TO STDOUT",
    )
    .await
    .expect("copy out");
    let expected: String = (0..300)
        .map(|id| format!("{id}\tlabel {id} \\\\ \u{00e9}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out), expected);
    let csv = copy_out_text(
        &client,
        "COPY (SELECT id, label FROM copy_rows WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT csv)",
    )
    .await
    .expect("copy out csv");
    assert_eq!(
        String::from_utf8_lossy(&csv),
        "0,label 0 \\ \u{00e9}\n1,label 1 \\ \u{00e9}\n2,label 2 \\ \u{00e9}\n"
    );

    // A bad row in the middle: the server's error, the connection usable, nothing of that COPY stored.
    let err = copy_in_text(&client, "copy_rows", 250..400)
        .await
        .expect_err("duplicate keys");
    assert_eq!(sqlstate(&err), "23505", "{err}");
    let sink = client
        .copy_in("COPY copy_rows (id, label) FROM STDIN")
        .await
        .expect("copy in");
    tokio::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1000\tok\nnot a number\tbad\n"))
        .await
        .expect("send");
    let err = sink.as_mut().finish().await.expect_err("bad row");
    assert_eq!(sqlstate(&err), "22P02", "{err}");
    // Abandoned: dropping the sink sends CopyFail.
    {
        let sink = client
            .copy_in("COPY copy_rows (id, label) FROM STDIN")
            .await
            .expect("copy in");
        tokio::pin!(sink);
        sink.send(bytes::Bytes::from_static(b"2000\tabandoned\n"))
            .await
            .expect("send");
    }
    let n: i64 = client
        .query_one(&count, &[])
        .await
        .expect("usable after failed copies")
        .get(0);
    assert_eq!(n, 300);
    assert_eq!(
        settle_in_use(&proxy).await,
        0,
        "connection back in the pool"
    );

    // Inside an explicit transaction: copy in, copy out, commit; and one rolled back.
    client.batch_execute("BEGIN").await.expect("begin");
    copy_in_text(&client, "copy_rows", 300..350)
        .await
        .expect("copy in inside a transaction");
    let inside = copy_out_text(&client, "COPY (SELECT count(*) FROM copy_rows) TO STDOUT")
        .await
        .expect("copy out inside a transaction");
    assert_eq!(inside, b"350\n");
    client.batch_execute("COMMIT").await.expect("commit");
    client.batch_execute("BEGIN").await.expect("begin");
    copy_in_text(&client, "copy_rows", 350..400)
        .await
        .expect("copy in inside a transaction");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    // An error in a COPY inside a transaction fails the transaction, as directly.
    client.batch_execute("BEGIN").await.expect("begin");
    let err = copy_in_text(&client, "copy_rows", 0..1)
        .await
        .expect_err("duplicate key in a transaction");
    assert_eq!(sqlstate(&err), "23505");
    let err = client
        .query_one(&count, &[])
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(sqlstate(&err), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let n: i64 = other
        .query_one("SELECT count(*) FROM copy_rows", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 350);
    assert_eq!(
        settle_in_use(&proxy).await,
        0,
        "connection back in the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_binary_copy_with_several_clients_over_one_connection() {
    use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
    let tenant = onboard("txnbincopy").await;
    let proxy = txn_proxy(1).await;
    let setup = proxy.connect(&tenant).await;
    setup
        .batch_execute(
            "CREATE TABLE bin_rows (client int, id int, payload bytea, PRIMARY KEY (client, id))",
        )
        .await
        .expect("create table");
    let mut tasks = Vec::new();
    for c in 0..4i32 {
        let client = proxy.connect(&tenant).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..5i32 {
                let sink = client
                    .copy_in("COPY bin_rows FROM STDIN (FORMAT binary)")
                    .await
                    .expect("copy in");
                let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::INT4, Type::BYTEA]);
                tokio::pin!(writer);
                for i in 0..50i32 {
                    let id = round * 50 + i;
                    let payload: Vec<u8> = (0..(id % 7) * 1000).map(|b| (b + c) as u8).collect();
                    writer
                        .as_mut()
                        .write(&[&c, &id, &payload])
                        .await
                        .expect("write row");
                }
                assert_eq!(writer.finish().await.expect("finish"), 50);
                let stream = client
                    .copy_out(&format!(
                        "COPY (SELECT id, payload FROM bin_rows WHERE client = {c} ORDER BY id) TO STDOUT (FORMAT binary)"
                    ))
                    .await
                    .expect("copy out");
                let rows: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::INT4, Type::BYTEA])
                    .try_collect()
                    .await
                    .expect("copy out rows");
                assert_eq!(rows.len() as i32, (round + 1) * 50);
                for row in &rows {
                    let id: i32 = row.get(0);
                    let payload: Vec<u8> = row.get(1);
                    assert_eq!(payload.len() as i32, (id % 7) * 1000, "client {c} row {id}");
                    assert!(payload.iter().enumerate().all(|(b, v)| *v == (b as i32 + c) as u8));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let n: i64 = setup
        .query_one("SELECT count(*) FROM bin_rows", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 4 * 250);
    assert_eq!(
        settle_in_use(&proxy).await,
        0,
        "connection back in the pool"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The raw protocol, message for message with PostgreSQL
// ---------------------------------------------------------------------------------------------------------

fn assert_no_differences(what: &str, differences: &[String]) {
    assert!(
        differences.is_empty(),
        "{what} through pgtenant differ from PostgreSQL:\n{}",
        differences.join("\n")
    );
}

/// COPY FROM STDIN and TO STDOUT on the simple and the extended protocol, pipelined with the data, a Sync and
/// a Flush inside copy-in mode (ignored by the server), a bad row, CopyFail, inside a transaction, and named
/// statements and another client on the one server connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copy_in_both_protocols_matches_postgres() {
    use Msg::*;
    let copy_in = "COPY rawcopy FROM STDIN";
    let steps = vec![
        step(
            0,
            "create the table",
            vec![Query("CREATE TABLE rawcopy (id int PRIMARY KEY, t text)")],
        ),
        step(
            0,
            "simple COPY FROM STDIN pipelined with its data",
            vec![
                Query(copy_in),
                CopyData("1\ta\n"),
                CopyData("2\tb\n"),
                CopyDone,
            ],
        ),
        step_ready(
            0,
            "extended COPY: Bind, Execute, Sync, data, CopyDone, Sync (the first Sync is ignored)",
            vec![
                Parse("", copy_in),
                Bind("", "", vec![]),
                Execute(""),
                Sync,
                CopyData("3\tc\n"),
                CopyDone,
                Sync,
            ],
            1,
        ),
        step(
            1,
            "another client on the server connection",
            vec![Query("SELECT count(*) FROM rawcopy")],
        ),
        step_ready(
            0,
            "extended COPY with a bad row",
            vec![
                Parse("", copy_in),
                Bind("", "", vec![]),
                Execute(""),
                Sync,
                CopyData("4\td\nx\ty\n"),
                CopyDone,
                Sync,
            ],
            1,
        ),
        step_ready(
            0,
            "extended COPY abandoned with CopyFail",
            vec![
                Parse("", copy_in),
                Bind("", "", vec![]),
                Execute(""),
                Sync,
                CopyData("5\te\n"),
                CopyFail("the client gave up"),
                Sync,
            ],
            1,
        ),
        step(
            0,
            "simple COPY abandoned with CopyFail",
            vec![Query(copy_in), CopyData("6\tf\n"), CopyFail("no")],
        ),
        step_ready(
            0,
            "Sync and Flush inside a simple COPY are ignored",
            vec![
                Query(copy_in),
                CopyData("7\tg\n"),
                Sync,
                Flush,
                CopyData("8\th\n"),
                CopyDone,
            ],
            1,
        ),
        step(
            0,
            "a named statement after the copies",
            vec![
                Parse("count", "SELECT count(*) AS n FROM rawcopy"),
                Bind("", "count", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            1,
            "the other client prepares the same text",
            vec![
                Parse("count", "SELECT count(*) AS n FROM rawcopy"),
                Bind("", "count", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "COPY in a transaction, then COMMIT",
            vec![
                Query("BEGIN"),
                Query(copy_in),
                CopyData("9\ti\n"),
                CopyDone,
                Bind("", "count", vec![]),
                Execute(""),
                Sync,
                Query("COMMIT"),
            ],
        ),
        step(
            0,
            "a bad row in a transaction fails it",
            vec![
                Query("BEGIN"),
                Query(copy_in),
                CopyData("1\tduplicate\n"),
                CopyDone,
                Bind("", "count", vec![]),
                Execute(""),
                Sync,
                Query("ROLLBACK"),
            ],
        ),
        step(
            1,
            "what is stored",
            vec![Query("SELECT id, t FROM rawcopy ORDER BY id")],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawcopy", 1, &steps).await;
    assert!(
        direct[4].iter().any(|l| l.starts_with("Error 22P02")),
        "{:?}",
        direct[4]
    );
    assert!(
        direct[5].iter().any(|l| l.starts_with("Error 57014")),
        "{:?}",
        direct[5]
    );
    assert_eq!(
        direct[12]
            .iter()
            .filter(|l| l.starts_with("DataRow"))
            .count(),
        6,
        "{:?}",
        direct[12]
    );
    assert_no_differences("COPY FROM STDIN", &differences);
}

/// COPY TO STDOUT, text and CSV, simple and extended, with a row limit on Execute, and in a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copy_out_both_protocols_matches_postgres() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "simple COPY TO STDOUT",
            vec![Query(
                "COPY (SELECT g, 'row ' || g AS t FROM generate_series(1, 20) g) TO STDOUT",
            )],
        ),
        step(
            0,
            "extended COPY TO STDOUT (FORMAT csv), Execute with a row limit",
            vec![
                Parse(
                    "out",
                    "COPY (SELECT g, 'a,b' AS t FROM generate_series(1, 5) g) TO STDOUT (FORMAT csv)",
                ),
                Bind("", "out", vec![]),
                ExecuteMax("", 2),
                Sync,
            ],
        ),
        step(
            1,
            "another client reuses the statement name for other text",
            vec![
                Parse("out", "SELECT 1 AS one"),
                Bind("", "out", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "COPY TO STDOUT in a transaction",
            vec![
                Query("BEGIN"),
                Bind("", "out", vec![]),
                Execute(""),
                Sync,
                Query("COPY (SELECT now() = now()) TO STDOUT"),
                Query("COMMIT"),
            ],
        ),
        step(
            0,
            "COPY TO STDOUT of an error",
            vec![Query("COPY (SELECT 1 / (g - 3) FROM generate_series(1, 5) g) TO STDOUT")],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawcopyout", 1, &steps).await;
    assert_eq!(
        direct[0]
            .iter()
            .filter(|l| l.starts_with("CopyData"))
            .count(),
        20,
        "{:?}",
        direct[0]
    );
    assert!(
        direct[4].iter().any(|l| l.starts_with("Error 22012")),
        "{:?}",
        direct[4]
    );
    assert_no_differences("COPY TO STDOUT", &differences);
}

/// FunctionCall (libpq's fast path: large objects, `PQfn`), empty queries in both protocols, portals
/// suspended by a row limit, in an implicit transaction and a named one across Syncs inside BEGIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_function_calls_empty_queries_and_suspended_portals_match_postgres() {
    use Msg::*;
    // pg_catalog.int4pl and int4div.
    const INT4PL: u32 = 177;
    const INT4DIV: u32 = 154;
    let series = "SELECT g FROM generate_series(1, 5) g";
    let steps = vec![
        step(
            0,
            "FunctionCall int4pl(2, 3)",
            vec![FunctionCall(INT4PL, vec![Some(2), Some(3)])],
        ),
        step(
            0,
            "FunctionCall int4div(1, 0)",
            vec![FunctionCall(INT4DIV, vec![Some(1), Some(0)])],
        ),
        step(
            0,
            "FunctionCall of a strict function with NULL",
            vec![FunctionCall(INT4PL, vec![None, Some(1)])],
        ),
        step(
            1,
            "another client in between",
            vec![Query("SELECT 'between' AS b")],
        ),
        step(
            0,
            "FunctionCalls inside a transaction",
            vec![
                Query("BEGIN"),
                FunctionCall(INT4PL, vec![Some(40), Some(2)]),
                FunctionCall(INT4DIV, vec![Some(1), Some(0)]),
                FunctionCall(INT4PL, vec![Some(1), Some(1)]),
                Query("ROLLBACK"),
            ],
        ),
        step(0, "empty simple query", vec![Query("")]),
        step(0, "blank simple query", vec![Query("  ;  ")]),
        step(
            0,
            "empty extended query",
            vec![
                Parse("", ""),
                Bind("", "", vec![]),
                DescribePortal(""),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "unnamed portal suspended twice, then run to the end",
            vec![
                Parse("", series),
                Bind("", "", vec![]),
                ExecuteMax("", 2),
                ExecuteMax("", 2),
                ExecuteMax("", 2),
                Sync,
            ],
        ),
        step(0, "BEGIN", vec![Query("BEGIN")]),
        step(
            0,
            "a named portal in a transaction, suspended",
            vec![
                Parse("", series),
                Bind("p1", "", vec![]),
                ExecuteMax("p1", 2),
                Sync,
            ],
        ),
        step(
            1,
            "another client while the first is in its transaction",
            vec![Query("SELECT 'other' AS o")],
        ),
        step(
            0,
            "the portal continues after a Sync",
            vec![ExecuteMax("p1", 2), Sync],
        ),
        step(0, "and runs to its end", vec![Execute("p1"), Sync]),
        step(0, "COMMIT", vec![Query("COMMIT")]),
        step(
            0,
            "the portal is gone after COMMIT",
            vec![Execute("p1"), Sync],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawfn", 2, &steps).await;
    assert!(
        direct[0]
            .iter()
            .any(|l| l.contains("FunctionCallResponse [0, 0, 0, 4, 0, 0, 0, 5]")),
        "{:?}",
        direct[0]
    );
    assert!(
        direct[8].iter().filter(|l| *l == "PortalSuspended").count() == 2,
        "{:?}",
        direct[8]
    );
    assert_no_differences("function calls, empty queries and portals", &differences);
}

/// An error in each phase of the extended protocol (Parse, Bind, Describe, Execute, a COMMIT failing on a
/// deferred constraint), in an implicit and in an explicit transaction, and in a multi-statement simple
/// query: the same errors, the same skipped messages, the same transaction status afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_errors_in_every_phase_match_postgres() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "Parse error",
            vec![
                Parse("", "SELEC 1"),
                Bind("", "", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "Parse error of a named statement",
            vec![Parse("bad", "SELECT nope FROM nowhere"), Sync],
        ),
        step(
            0,
            "Bind error: a value of the wrong type",
            vec![
                Parse("b1", "SELECT 10 / $1::int AS x"),
                Bind("", "b1", vec![Some("notint")]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "Bind error: wrong number of parameters",
            vec![Bind("", "b1", vec![]), Execute(""), Sync],
        ),
        step(
            0,
            "Bind of an unknown statement",
            vec![Bind("", "nope", vec![]), Execute(""), Sync],
        ),
        step(
            0,
            "Describe of an unknown statement",
            vec![DescribeStatement("nope"), Sync],
        ),
        step(
            0,
            "Describe of an unknown portal",
            vec![DescribePortal("nope"), Sync],
        ),
        step(
            0,
            "Execute error",
            vec![Bind("", "b1", vec![Some("0")]), Execute(""), Sync],
        ),
        step(
            0,
            "Execute of an unknown portal",
            vec![Execute("nope"), Sync],
        ),
        step(
            0,
            "Close of unknown names",
            vec![CloseStatement("nope"), Sync],
        ),
        step(1, "another client between", vec![Query("SELECT 2 AS two")]),
        step(0, "BEGIN", vec![Query("BEGIN")]),
        step(
            0,
            "an error in a transaction",
            vec![Bind("", "b1", vec![Some("0")]), Execute(""), Sync],
        ),
        step(
            0,
            "the transaction is aborted",
            vec![Bind("", "b1", vec![Some("5")]), Execute(""), Sync],
        ),
        step(
            0,
            "simple query in the aborted transaction",
            vec![Query("SELECT 1")],
        ),
        step(0, "ROLLBACK", vec![Query("ROLLBACK")]),
        step(
            0,
            "the statement works again",
            vec![Bind("", "b1", vec![Some("5")]), Execute(""), Sync],
        ),
        step(
            0,
            "errors in a multi-statement simple query",
            vec![Query("SELECT 1 AS a; SELECT 1 / 0; SELECT 2 AS b")],
        ),
        step(
            0,
            "a COMMIT that fails on a deferred constraint",
            vec![
                Query("CREATE TABLE rawdeferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"),
                Query("BEGIN"),
                Query("INSERT INTO rawdeferred VALUES (1), (1)"),
                Parse("", "COMMIT"),
                Bind("", "", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            1,
            "the other client after the failed COMMIT",
            vec![Query("SELECT count(*) FROM rawdeferred")],
        ),
        step(
            0,
            "the first client after the failed COMMIT",
            vec![Bind("", "b1", vec![Some("2")]), Execute(""), Sync],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawerr", 1, &steps).await;
    for (i, code) in [
        (0, "42601"),
        (2, "22P02"),
        (3, "08P01"),
        (4, "26000"),
        (7, "22012"),
        (12, "22012"),
        (13, "25P02"),
        (17, "22012"),
        (18, "23505"),
    ] {
        assert!(
            direct[i]
                .iter()
                .any(|l| l.starts_with(&format!("Error {code}"))),
            "step {i}: {:?}",
            direct[i]
        );
    }
    assert_no_differences("errors", &differences);
}

/// SQL `DEALLOCATE name` of a statement prepared through the protocol (Active Record drops its statements
/// this way): it is gone afterwards, the name can be prepared again, and in a failed transaction it is
/// refused, as directly; a name nobody prepared gets PostgreSQL's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_deallocate_of_protocol_statements_matches_postgres() {
    use Msg::*;
    let steps = vec![
        step(0, "prepare a1", vec![Parse("a1", "SELECT 1 AS one"), Sync]),
        step(0, "DEALLOCATE a1", vec![Query("DEALLOCATE a1")]),
        step(
            0,
            "a1 is gone",
            vec![Bind("", "a1", vec![]), Execute(""), Sync],
        ),
        step(
            0,
            "a1 can be prepared again",
            vec![
                Parse("a1", "SELECT 2 AS two"),
                Bind("", "a1", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(0, "BEGIN", vec![Query("BEGIN")]),
        step(
            0,
            "prepare a2 in a transaction",
            vec![Parse("a2", "SELECT 3"), Sync],
        ),
        step(
            0,
            "DEALLOCATE PREPARE a2; in it",
            vec![Query("deallocate prepare A2;")],
        ),
        step(
            0,
            "a2 is gone in it",
            vec![Bind("", "a2", vec![]), Execute(""), Sync],
        ),
        step(0, "ROLLBACK", vec![Query("ROLLBACK")]),
        step(0, "prepare a3", vec![Parse("a3", "SELECT 4"), Sync]),
        step(0, "BEGIN again", vec![Query("BEGIN")]),
        step(0, "fail the transaction", vec![Query("SELECT 1/0")]),
        step(
            0,
            "DEALLOCATE in a failed transaction",
            vec![Query("DEALLOCATE a3")],
        ),
        step(0, "ROLLBACK again", vec![Query("ROLLBACK")]),
        step(
            0,
            "a3 survived",
            vec![Bind("", "a3", vec![]), Execute(""), Sync],
        ),
        step(0, "DEALLOCATE a3", vec![Query("DEALLOCATE a3")]),
        step(
            0,
            "DEALLOCATE of an unknown name",
            vec![Query("DEALLOCATE nosuch")],
        ),
        step(
            1,
            "the other client's a1 is its own",
            vec![Bind("", "a1", vec![]), Sync],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawdealloc", 1, &steps).await;
    for (i, code) in [
        (2, "26000"),
        (7, "26000"),
        (12, "25P02"),
        (16, "26000"),
        (17, "26000"),
    ] {
        assert!(
            direct[i]
                .iter()
                .any(|l| l.starts_with(&format!("Error {code}"))),
            "step {i}: {:?}",
            direct[i]
        );
    }
    assert_no_differences("SQL DEALLOCATE", &differences);
}

/// `pg_prepared_statements` in transaction pooling: a client sees its own statements under its own names, as
/// directly, and never the statements other clients of the tenant left on the shared server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_prepared_statements_shows_only_the_clients_own_statements() {
    let tenant = onboard("txnprepview").await;
    let proxy = txn_proxy(1).await;
    let a = proxy.connect(&tenant).await;
    let b = proxy.connect(&tenant).await;
    let direct = superuser().await;
    let listing = "SELECT name, statement FROM pg_prepared_statements ORDER BY name";
    let rows = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<(String, String)> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_string(),
                    r.get(1).unwrap_or_default().to_string(),
                )),
                _ => None,
            })
            .collect()
    };
    // Client a's statements stay on the one server connection.
    for i in 0..3 {
        let s = a
            .prepare(&format!("SELECT 'a-secret-{i}'::text"))
            .await
            .expect("prepare a");
        a.query(&s, &[]).await.expect("query a");
    }
    // b and a direct session prepare the same statements and list them the same way.
    for client in [&b, &direct] {
        let s = client
            .prepare("SELECT 'b-own'::text")
            .await
            .expect("prepare b");
        client.query(&s, &[]).await.expect("query b");
    }
    let through = rows(
        b.simple_query(listing)
            .await
            .expect("listing through pgtenant"),
    );
    let directly = rows(
        direct
            .simple_query(listing)
            .await
            .expect("listing directly"),
    );
    assert_eq!(
        through, directly,
        "what b sees through pgtenant vs directly"
    );
    assert!(
        through.iter().all(|(_, text)| !text.contains("a-secret")),
        "{through:?}"
    );
    // Qualified, aliased, counted, in a transaction: still only b's own.
    for sql in [
        "SELECT count(*) FROM pg_catalog.pg_prepared_statements p WHERE p.statement LIKE '%secret%'",
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%secret%'",
    ] {
        let n = b.simple_query(sql).await.expect("count");
        let n = rows_first(&n);
        assert_eq!(n.as_deref(), Some("0"), "{sql}");
    }
    b.batch_execute("BEGIN; PREPARE in_sql AS SELECT 1")
        .await
        .expect("sql prepare");
    let inside = rows(b.simple_query(listing).await.expect("listing"));
    assert!(
        inside.iter().any(|(name, _)| name == "in_sql"),
        "{inside:?}"
    );
    assert!(
        inside.iter().all(|(_, text)| !text.contains("a-secret")),
        "{inside:?}"
    );
    b.batch_execute("ROLLBACK").await.expect("rollback");
}

fn rows_first(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// pgjdbc running COPY through a plain Statement: Parse … Execute and Sync, then, at CopyInResponse, CopyFail
/// and a second Sync (the first was ignored in copy-in mode). The server skips messages after its error until
/// that second Sync, so the connection must not go to another client before it; here another client's query
/// waits in between, and both get PostgreSQL's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_failed_by_the_client_keeps_the_connection_until_its_sync() {
    use tokio::io::AsyncWriteExt;
    let tenant = onboard("txncopyfail").await;
    let proxy = txn_proxy(1).await;
    let setup = proxy.connect(&tenant).await;
    setup
        .batch_execute("CREATE TABLE copyfail_t (v int)")
        .await
        .expect("create");
    let mut a = Raw::proxy(&proxy, &tenant, "copier").await;
    let mut b = Raw::proxy(&proxy, &tenant, "other").await;
    a.send(&[
        Msg::Parse("", "COPY copyfail_t FROM STDIN"),
        Msg::Bind("", "", vec![]),
        Msg::DescribePortal(""),
        Msg::Execute(""),
        Msg::Sync,
    ])
    .await;
    // Up to the CopyInResponse.
    loop {
        let (tag, _) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            pgtenant::protocol::read_message(&mut a.stream, 1 << 20),
        )
        .await
        .expect("CopyInResponse in time")
        .expect("read");
        if tag == b'G' {
            break;
        }
    }
    a.send(&[Msg::CopyFail("only through the copy API")]).await;
    a.stream.flush().await.expect("flush");
    // The other client's query, while the server waits for the copier's Sync.
    let other = tokio::spawn(async move {
        let lines = b.exchange(&[Msg::Query("SELECT 'other' AS o")]).await;
        (b, lines)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let copier = a.exchange(&[Msg::Sync]).await;
    assert_eq!(
        copier,
        vec![
            "Error 57014 COPY from stdin failed: only through the copy API".to_string(),
            "ReadyForQuery I".to_string()
        ]
    );
    let (_b, lines) = tokio::time::timeout(std::time::Duration::from_secs(10), other)
        .await
        .expect("the other client is served")
        .expect("task");
    assert!(
        lines.contains(&"DataRow [\"other\"]".to_string()),
        "{lines:?}"
    );
    // The copier's connection is fine afterwards.
    let after = a
        .exchange(&[Msg::Query("SELECT count(*) FROM copyfail_t")])
        .await;
    assert!(after.contains(&"DataRow [\"0\"]".to_string()), "{after:?}");
}

/// A client preparing a statement whose text another client already prepared on the shared server connection
/// gets its ParseComplete (pgtenant answers it, the server has the statement), in every batch shape drivers
/// use: Parse + Sync (libpq's PQprepare, psycopg), Parse + Describe + Sync (tokio-postgres, asyncpg), and
/// Parse + Bind + Execute + Sync; and the client's Close + Sync of it later gets its CloseComplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_server_connection_already_has_is_still_acknowledged() {
    use Msg::*;
    let text = "SELECT $1::int * 2 AS doubled";
    let steps = vec![
        step(0, "client 0 prepares", vec![Parse("p0", text), Sync]),
        step(
            0,
            "client 0 runs it",
            vec![Bind("", "p0", vec![Some("21")]), Execute(""), Sync],
        ),
        step(
            1,
            "client 1 prepares the same text",
            vec![Parse("q0", text), Sync],
        ),
        step(
            1,
            "client 1 runs it",
            vec![Bind("", "q0", vec![Some("4")]), Execute(""), Sync],
        ),
        step(
            1,
            "client 1 prepares it again under another name, with Describe",
            vec![Parse("q1", text), DescribeStatement("q1"), Sync],
        ),
        step(
            0,
            "client 0 prepares it again in one batch with its use",
            vec![
                Parse("p1", text),
                Bind("", "p1", vec![Some("5")]),
                Execute(""),
                Sync,
            ],
        ),
        step(1, "client 1 closes q0", vec![CloseStatement("q0"), Sync]),
        step(
            1,
            "q1 still runs",
            vec![Bind("", "q1", vec![Some("6")]), Execute(""), Sync],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawshared", 1, &steps).await;
    assert!(
        direct[2].iter().any(|l| l.starts_with("ParseComplete")),
        "baseline: {:?}",
        direct[2]
    );
    assert_no_differences("statements the server connection already has", &differences);
}

/// After an error in an extended-protocol batch the server skips every message up to the client's next Sync,
/// including the ones the client sends after it saw the error (a pipelining driver: psycopg's executemany,
/// a Flush, then more): they get no answer, a statement they Parse does not exist, and the session goes on
/// as directly. (pgtenant's books once expected answers to them: the ReadyForQuery then matched nothing,
/// the connection never went back to the pool, and later answers went to the wrong requests, a psycopg
/// "message type 0x31 arrived from server while idle".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_an_error_up_to_the_sync_are_skipped_as_by_postgres() {
    use Msg::*;
    async fn script(client: &mut Raw) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        client
            .send(&[
                Parse("", "SELECT 1/0"),
                Bind("", "", vec![]),
                Execute(""),
                Flush,
            ])
            .await;
        out.push(client.read_until(b'E').await);
        out.push(
            client
                .exchange(&[
                    Parse("after_error", "SELECT 2 AS two"),
                    Bind("", "after_error", vec![]),
                    DescribePortal(""),
                    Execute(""),
                    CloseStatement("nosuch"),
                    Sync,
                ])
                .await,
        );
        out.push(
            client
                .exchange(&[Bind("", "after_error", vec![]), Execute(""), Sync])
                .await,
        );
        out.push(
            client
                .exchange(&[
                    Parse("after_error", "SELECT 3 AS three"),
                    Bind("", "after_error", vec![]),
                    Execute(""),
                    Sync,
                ])
                .await,
        );
        out.push(client.exchange(&[Query("SELECT 4 AS four")]).await);
        out
    }
    let mut direct = Raw::direct("direct").await;
    let baseline = script(&mut direct).await;
    assert!(
        baseline[2].iter().any(|l| l.starts_with("Error 26000")),
        "directly, the skipped Parse created nothing: {baseline:?}"
    );
    let tenant = onboard("txnskipsync").await;
    let proxy = txn_proxy(1).await;
    let mut client = Raw::proxy(&proxy, &tenant, "pgtenant").await;
    let proxied = script(&mut client).await;
    assert_eq!(proxied, baseline, "through pgtenant vs directly");
    assert_eq!(
        settle_in_use(&proxy).await,
        0,
        "the server connection went back to the pool"
    );
    // The connection serves another client cleanly.
    let mut other = Raw::proxy(&proxy, &tenant, "pgtenant other").await;
    let lines = other.exchange(&[Query("SELECT 5 AS five")]).await;
    assert!(lines.iter().any(|l| l.contains('5')), "{lines:?}");
}
