//! COPY in transaction pooling through tokio-postgres, which runs COPY on the extended protocol: Bind, Execute
//! and Sync before the data (the server ignores a Sync received in copy-in mode), CopyDone or CopyFail and a
//! second Sync after it. Text and binary, in and out of explicit transactions, a bad row and an abandoned
//! COPY in the middle, other clients taking the server connection in between, prepared statements before and
//! after; the connection must stay usable and go back to the pool clean.

mod common;

use common::*;
use futures_util::{SinkExt, TryStreamExt};
use pgtenant::config::PoolMode;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;

async fn txn_proxy(size: usize) -> TestProxy {
    TestProxy::start_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size_per_tenant = size;
    })
    .await
}

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
