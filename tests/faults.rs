//! Faults: clients that vanish mid-transaction or mid-query, server connections killed under a session.
//! Nothing committed is lost, nothing uncommitted leaks, and the pool recovers.

mod common;

use common::*;
use std::time::Duration;

/// A client whose socket can be cut without a Terminate message.
async fn connect_abortable(
    proxy: &TestProxy,
    tenant: &TestTenant,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = proxy
        .client_config(&tenant.email, &tenant.token())
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Connects, retrying while the tenant's only server connection is still on its way back to the pool.
async fn connect_when_free(proxy: &TestProxy, tenant: &TestTenant) -> tokio_postgres::Client {
    for _ in 0..100 {
        match proxy.try_connect(&tenant.email, &tenant.token()).await {
            Ok(c) => return c,
            Err(e) if sqlstate(&e) == "53300" => continue,
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("the server connection never came back to the pool");
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_leaves_a_clean_connection() {
    let tenant = onboard("vanish-tx").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.size_per_tenant = 1;
        c.pool.acquire_timeout_ms = 500;
    })
    .await;

    let (client, connection) = connect_abortable(&proxy, &tenant).await;
    let pid = backend_pid(&client).await;
    client
        .batch_execute("INSERT INTO patients (full_name) VALUES ('committed')")
        .await
        .expect("autocommit insert");
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO patients (full_name) VALUES ('never committed');
             SELECT pg_advisory_xact_lock(77);",
        )
        .await
        .expect("open transaction");
    // Cut the socket: no Terminate, no ROLLBACK from the client.
    connection.abort();
    drop(client);

    let next = connect_when_free(&proxy, &tenant).await;
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "the same server connection was reused"
    );
    let rows = next
        .query("SELECT full_name FROM patients ORDER BY id", &[])
        .await
        .expect("read");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["committed".to_string()]);
    let locks: i64 = next
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77",
            &[],
        )
        .await
        .expect("locks")
        .get(0);
    assert_eq!(locks, 0, "the transaction's lock is gone");
    // And the session is not in a transaction: a plain statement autocommits.
    next.batch_execute("INSERT INTO patients (full_name) VALUES ('after')")
        .await
        .expect("insert");
    let admin = superuser().await;
    let count: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.patients",
                tenant.onboarded.schema.quoted()
            ),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_mid_transaction_rolls_back() {
    let tenant = onboard("terminate-tx").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let client = proxy.connect(&tenant).await;
    client
        .batch_execute("BEGIN; INSERT INTO patients (full_name) VALUES ('dropped');")
        .await
        .expect("open transaction");
    // Dropping a tokio-postgres client sends Terminate.
    drop(client);
    let next = connect_when_free(&proxy, &tenant).await;
    let count: i64 = next
        .query_one("SELECT count(*) FROM patients", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_cancels_it_and_drops_the_connection() {
    let tenant = onboard("vanish-query").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let (client, connection) = connect_abortable(&proxy, &tenant).await;
    let pid = backend_pid(&client).await;
    let sleeper = tokio::spawn(async move {
        let _ = client.batch_execute("SELECT pg_sleep(60)").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    connection.abort();
    sleeper.abort();

    // The abandoned query is cancelled and its server connection closed rather than reused.
    let admin = superuser().await;
    let mut gone = false;
    for _ in 0..50 {
        let rows = admin
            .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .expect("activity");
        if rows.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "backend {pid} still running its abandoned pg_sleep");
    let next = connect_when_free(&proxy, &tenant).await;
    assert_ne!(backend_pid(&next).await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connection_killed_gives_a_clean_error_and_the_pool_recovers() {
    let tenant = onboard("killed").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let client = proxy.connect(&tenant).await;
    let pid = backend_pid(&client).await;
    let admin = superuser().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("the session's server is gone");
    // PostgreSQL's own FATAL (57P01) reaches the client, or the closed connection.
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert!(
        code.as_deref() == Some("57P01") || err.is_closed(),
        "unexpected error: {err:?}"
    );
    drop(client);

    let next = connect_when_free(&proxy, &tenant).await;
    assert_ne!(backend_pid(&next).await, pid);
    let one: i32 = next.query_one("SELECT 1", &[]).await.expect("query").get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connection_killed_is_not_handed_out() {
    let tenant = onboard("killed-idle").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let client = proxy.connect(&tenant).await;
    let pid = backend_pid(&client).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    superuser()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = connect_when_free(&proxy, &tenant).await;
    assert_ne!(backend_pid(&next).await, pid, "a fresh server connection");
}
