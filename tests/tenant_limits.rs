//! Per-tenant limits (issue 11, item 4): statement_timeout as PostgreSQL's own and as pgtenant's ceiling after
//! the client `SET statement_timeout = 0`, in both pooling modes, the pool slot clean afterwards; a tenant
//! without a limit unaffected; the `[limits]` default for a NULL column; transaction_timeout (FATAL 25P04, the
//! transaction's work not committed); the idle-in-transaction ceiling (FATAL 25P03); lock_timeout from the
//! tenant's row (55P03); the NOTICE of a client queued for a server connection; SHOW POOLS and /metrics with
//! each tenant's connections against its limit; ALTER TENANT … SET / RESET reaching new sessions.
//!
//! Real PostgreSQL, real clients; no timing is asserted beyond "within a generous deadline".

mod common;

use bytes::BytesMut;
use common::*;
use pgtenant::auth::{mint_hs256, MintRequest};
use pgtenant::config::PoolMode;
use pgtenant::protocol::{self, ErrorFields};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

fn admin_token() -> String {
    mint_hs256(
        JWT_SECRET.as_bytes(),
        &MintRequest {
            sub: "operator".into(),
            email: None,
            ttl: Duration::from_secs(600),
            admin: true,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint")
}

async fn admin_client(proxy: &TestProxy) -> tokio_postgres::Client {
    let mut config = proxy.client_config("operator", &admin_token());
    config.dbname("pgtenant");
    connect(config).await
}

/// Rows of a simple query, as `|`-joined text.
async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// Sets columns of the tenant's directory row behind pgtenant's back (plain SQL, as an operator might).
async fn set_limits(tenant: &TestTenant, assignments: &str) {
    superuser()
        .await
        .execute(
            &format!("UPDATE pgtenant.organizations SET {assignments} WHERE id = $1"),
            &[&tenant.onboarded.organization_id],
        )
        .await
        .expect("set limits");
}

fn row_count(messages: &[tokio_postgres::SimpleQueryMessage]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count()
}

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {setting}: {e}"))
        .get(0)
}

/// `what` must finish within `secs` (a generous deadline, never a measurement).
async fn within<T>(what: &str, secs: u64, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

/// The DbError of a failed query (panics on success or on an error without one).
fn db_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tokio_postgres::Error>,
) -> tokio_postgres::error::DbError {
    match result {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected an error"),
        Err(e) => e
            .as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("{what}: not a server error: {e}")),
    }
}

/// A client whose connection task reports how the connection ended (the error that ended it, if any).
async fn connect_watched(
    config: tokio_postgres::Config,
) -> (
    tokio_postgres::Client,
    tokio::sync::oneshot::Receiver<Option<tokio_postgres::Error>>,
) {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await.err());
    });
    (client, rx)
}

/// The SQLSTATE, message and detail a session was ended with.
async fn ended_with(
    what: &str,
    ended: tokio::sync::oneshot::Receiver<Option<tokio_postgres::Error>>,
) -> tokio_postgres::error::DbError {
    let error = within(what, 30, ended)
        .await
        .expect("connection task")
        .unwrap_or_else(|| panic!("{what}: the connection ended without an error"));
    error
        .as_db_error()
        .cloned()
        .unwrap_or_else(|| panic!("{what}: not a server error: {error}"))
}

/// The tenant's SHOW POOLS row: tenant|role|active|idle|waiting|server_connections|limit|cluster.
async fn pool_row(proxy: &TestProxy, tenant: &TestTenant) -> Option<String> {
    let admin = admin_client(proxy).await;
    simple_rows(&admin, "SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r.starts_with(&format!("{}|", tenant.onboarded.slug)))
}

/// Waits until the tenant's pool has no connection lent out.
async fn pool_back_to_idle(proxy: &TestProxy, tenant: &TestTenant) {
    within("SHOW POOLS active back to 0", 30, async {
        loop {
            let row = pool_row(proxy, tenant).await.unwrap_or_default();
            if row.split('|').nth(2) == Some("0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

fn limit_cancels(proxy: &TestProxy, tenant: &TestTenant) -> u64 {
    proxy
        .proxy
        .metrics
        .tenant(&tenant.onboarded.slug)
        .limit_cancels
        .load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_postgres_own_and_pgtenant_ceiling_in_both_modes() {
    // pgtenant's own log (e.g. PGTENANT_TEST_LOG=pgtenant::limits=info), for reading a failure.
    if let Ok(filter) = std::env::var("PGTENANT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    for mode in MODES {
        let tenant = onboard("stmt").await;
        let slug = &tenant.onboarded.slug;
        let proxy = TestProxy::start_with(|c| {
            c.pool.mode = mode;
            c.pool.size_per_tenant = 1;
            // The default grace: PostgreSQL's own cancel must reach pgtenant before its ceiling fires.
            c.limits.enforce_grace_ms = 1_000;
        })
        .await;
        let admin = admin_client(&proxy).await;
        admin
            .simple_query(&format!("ALTER TENANT {slug} SET statement_timeout = '1s'"))
            .await
            .expect("ALTER TENANT");
        let limits = simple_rows(&admin, "SHOW LIMITS").await;
        assert!(
            limits.contains(&format!("{slug}|1s|0 (default)|0 (default)|0 (default)")),
            "{mode:?}: {limits:?}"
        );

        let client = proxy.connect(&tenant).await;
        assert_eq!(show(&client, "statement_timeout").await, "1s", "{mode:?}");
        // PostgreSQL's own timer, from the server connection's startup parameter.
        let e = db_error(
            "pg_sleep under PostgreSQL's statement_timeout",
            within(
                "PostgreSQL's cancel",
                20,
                client.simple_query("SELECT pg_sleep(30)"),
            )
            .await,
        );
        assert_eq!(e.code().code(), "57014", "{mode:?}: {e}");
        assert!(e.message().contains("statement timeout"), "{mode:?}: {e}");
        assert_eq!(limit_cancels(&proxy, &tenant), 0, "{mode:?}");

        // Set away by the client: pgtenant's ceiling cancels (simple protocol).
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .expect("SET");
        let e = db_error(
            "pg_sleep after SET statement_timeout = 0",
            within(
                "pgtenant's cancel",
                20,
                client.simple_query("SELECT pg_sleep(30)"),
            )
            .await,
        );
        assert_eq!(e.code().code(), "57014", "{mode:?}: {e}");
        assert_eq!(
            e.message(),
            "canceling statement due to user request",
            "{mode:?}"
        );
        // Extended protocol, inside a transaction.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let e = db_error(
            "extended pg_sleep in a transaction",
            within(
                "pgtenant's cancel",
                20,
                client.query("SELECT pg_sleep($1)", &[&30.0f64]),
            )
            .await,
        );
        assert_eq!(e.code().code(), "57014", "{mode:?}: {e}");
        assert_eq!(
            e.message(),
            "canceling statement due to user request",
            "{mode:?}"
        );
        client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("usable after")
            .get(0);
        assert_eq!(one, 1);
        let cancels = limit_cancels(&proxy, &tenant);
        assert!(cancels >= 2, "{mode:?}: {cancels} cancels counted");

        // Left in an aborted transaction: the only server connection comes back clean for the next client.
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let _ = client.simple_query("SELECT pg_sleep(30)").await;
        drop(client);
        let next = proxy.connect(&tenant).await;
        let rows = within("the next client's query", 20, next.simple_query("SELECT 1"))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: next client on the same connection: {e}"));
        assert_eq!(row_count(&rows), 1, "{mode:?}");
        if mode == PoolMode::Session {
            // DISCARD ALL between clients comes back to the startup parameter.
            assert_eq!(show(&next, "statement_timeout").await, "1s");
        }
        drop(next);
        pool_back_to_idle(&proxy, &tenant).await;
        drop(admin);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_limit_is_unaffected() {
    for mode in MODES {
        let limited = onboard("limited").await;
        let free = onboard("free").await;
        set_limits(&limited, "statement_timeout_ms = 500").await;
        let proxy = TestProxy::start_with(|c| {
            c.pool.mode = mode;
            c.limits.enforce_grace_ms = 300;
        })
        .await;
        let limited_client = proxy.connect(&limited).await;
        let free_client = proxy.connect(&free).await;
        // Both sleep longer than the limited tenant's limit and grace, at the same time.
        let (limited_result, free_result) = within("both sleeps", 20, async {
            tokio::join!(
                limited_client.simple_query("SELECT pg_sleep(30)"),
                free_client.simple_query("SELECT pg_sleep(2)"),
            )
        })
        .await;
        assert_eq!(
            db_error("limited", limited_result).code().code(),
            "57014",
            "{mode:?}"
        );
        free_result.unwrap_or_else(|e| panic!("{mode:?}: the free tenant's sleep: {e}"));
        assert_eq!(show(&free_client, "statement_timeout").await, "0");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_default_applies_when_the_tenant_column_is_null() {
    let follows = onboard("default").await;
    let off = onboard("off").await;
    set_limits(&off, "statement_timeout_ms = 0").await;
    let proxy = TestProxy::start_with(|c| {
        c.limits.statement_timeout_ms = 700;
        c.limits.enforce_grace_ms = 300;
    })
    .await;
    let client = proxy.connect(&follows).await;
    assert_eq!(show(&client, "statement_timeout").await, "700ms");
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("SET");
    let e = db_error(
        "the default's ceiling",
        within("cancel", 20, client.simple_query("SELECT pg_sleep(30)")).await,
    );
    assert_eq!(e.code().code(), "57014", "{e}");
    // 0 in the row: off for that tenant, whatever the default.
    let client = proxy.connect(&off).await;
    assert_eq!(show(&client, "statement_timeout").await, "0");
    within(
        "a sleep past the default",
        20,
        client.simple_query("SELECT pg_sleep(1.5)"),
    )
    .await
    .expect("no limit for this tenant");
    let admin = admin_client(&proxy).await;
    let limits = simple_rows(&admin, "SHOW LIMITS").await;
    assert!(
        limits.contains(&format!(
            "{}|700ms (default)|0 (default)|0 (default)|0 (default)",
            follows.onboarded.slug
        )),
        "{limits:?}"
    );
    assert!(
        limits
            .iter()
            .any(|r| r.starts_with(&format!("{}|0|", off.onboarded.slug))),
        "{limits:?}"
    );
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_the_session_with_25p04_and_nothing_is_committed() {
    for mode in MODES {
        let tenant = onboard("txtimeout").await;
        let proxy = TestProxy::start_with(|c| {
            c.pool.mode = mode;
            c.pool.size_per_tenant = 1;
        })
        .await;
        proxy
            .connect(&tenant)
            .await
            .batch_execute("CREATE TABLE tt_rows (note text)")
            .await
            .expect("table");
        set_limits(&tenant, "transaction_timeout_ms = 1500").await;

        // Idle in the transaction.
        let (client, ended) =
            connect_watched(proxy.client_config(&tenant.email, &tenant.token())).await;
        client
            .batch_execute("BEGIN; INSERT INTO tt_rows VALUES ('idle')")
            .await
            .expect("work");
        let e = ended_with("idle in the transaction", ended).await;
        assert_eq!(e.code().code(), "25P04", "{mode:?}: {e}");
        assert_eq!(
            e.message(),
            "terminating connection due to transaction timeout"
        );
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "{mode:?}: ended"
        );

        // A statement running in the transaction.
        let (client, _ended) =
            connect_watched(proxy.client_config(&tenant.email, &tenant.token())).await;
        client
            .batch_execute("BEGIN; INSERT INTO tt_rows VALUES ('busy')")
            .await
            .expect("work");
        let e = db_error(
            "a statement running in the transaction",
            within("FATAL", 30, client.simple_query("SELECT pg_sleep(30)")).await,
        );
        assert_eq!(e.code().code(), "25P04", "{mode:?}: {e}");

        // Nothing of it was committed, and the pool is itself again.
        pool_back_to_idle(&proxy, &tenant).await;
        let count: i64 = superuser()
            .await
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.tt_rows",
                    tenant.onboarded.schema.quoted()
                ),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(count, 0, "{mode:?}");
        let client = proxy.connect(&tenant).await;
        let rows = within("the next client", 20, client.simple_query("SELECT 1"))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(row_count(&rows), 1);
        drop(client);
        pool_back_to_idle(&proxy, &tenant).await;
        assert!(
            proxy
                .proxy
                .metrics
                .tenant(&tenant.onboarded.slug)
                .limit_terminations
                .load(Ordering::Relaxed)
                >= 2
        );
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_is_postgres_own_and_pgtenant_ceiling() {
    for mode in MODES {
        let tenant = onboard("idletx").await;
        set_limits(&tenant, "idle_in_transaction_timeout_ms = 800").await;
        let proxy = TestProxy::start_with(|c| {
            c.pool.mode = mode;
            c.pool.size_per_tenant = 1;
            c.limits.enforce_grace_ms = 500;
        })
        .await;
        // PostgreSQL's own, from the startup parameter.
        let (client, ended) =
            connect_watched(proxy.client_config(&tenant.email, &tenant.token())).await;
        assert_eq!(
            show(&client, "idle_in_transaction_session_timeout").await,
            "800ms"
        );
        client.batch_execute("BEGIN; SELECT 1").await.expect("work");
        let e = ended_with("PostgreSQL's idle-in-transaction timeout", ended).await;
        assert_eq!(e.code().code(), "25P03", "{mode:?}: {e}");
        assert!(
            e.message().contains("idle-in-transaction timeout"),
            "{mode:?}: {e}"
        );
        pool_back_to_idle(&proxy, &tenant).await;

        // Set away inside the transaction: pgtenant's ceiling.
        let (client, ended) =
            connect_watched(proxy.client_config(&tenant.email, &tenant.token())).await;
        client
            .batch_execute("BEGIN; SET idle_in_transaction_session_timeout = 0; SELECT 1")
            .await
            .expect("work");
        let e = ended_with("pgtenant's idle-in-transaction ceiling", ended).await;
        assert_eq!(e.code().code(), "25P03", "{mode:?}: {e}");
        assert_eq!(
            e.message(),
            "terminating connection due to idle-in-transaction timeout"
        );
        assert!(
            e.detail().is_some_and(|d| d.contains("pgtenant")),
            "{mode:?}: {e:?}"
        );
        // The server connection was rolled back and reset, and serves the next client.
        pool_back_to_idle(&proxy, &tenant).await;
        let next = proxy.connect(&tenant).await;
        assert_eq!(
            show(&next, "idle_in_transaction_session_timeout").await,
            "800ms"
        );
        drop(next);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_comes_from_the_tenant_row() {
    for mode in MODES {
        let tenant = onboard("locks").await;
        set_limits(&tenant, "lock_timeout_ms = 500").await;
        let proxy = TestProxy::start_with(|c| c.pool.mode = mode).await;
        let client = proxy.connect(&tenant).await;
        assert_eq!(show(&client, "lock_timeout").await, "500ms", "{mode:?}");
        client
            .batch_execute("CREATE TABLE lt (id int)")
            .await
            .expect("table");
        let holder = superuser().await;
        holder
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {}.lt IN ACCESS EXCLUSIVE MODE",
                tenant.onboarded.schema.quoted()
            ))
            .await
            .expect("lock");
        let e = db_error(
            "a lock wait",
            within("lock timeout", 20, client.simple_query("SELECT * FROM lt")).await,
        );
        assert_eq!(e.code().code(), "55P03", "{mode:?}: {e}");
        holder.batch_execute("ROLLBACK").await.expect("unlock");
        client
            .simple_query("SELECT * FROM lt")
            .await
            .expect("usable after");
        proxy.stop().await;
    }
}

/// Reads one message from a raw client stream within a generous deadline.
async fn read_raw(stream: &mut tokio::net::TcpStream, what: &str) -> (u8, BytesMut) {
    within(what, 20, protocol::read_message(stream, 1 << 20))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_gets_a_notice_while_it_waits_in_both_modes() {
    // Session pooling: the wait is in the login; the NOTICE follows AuthenticationOk, before the rest.
    let tenant = onboard("queue").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.size_per_tenant = 1;
        c.pool.acquire_timeout_ms = 20_000;
        c.limits.queue_notice_after_ms = 300;
    })
    .await;
    let holder = proxy.connect(&tenant).await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    let mut out = BytesMut::new();
    protocol::write::startup_message(
        &mut out,
        &[("user", tenant.email.as_str()), ("database", DATABASE)],
    );
    raw.write_all(&out).await.expect("startup");
    let (tag, _) = read_raw(&mut raw, "password request").await;
    assert_eq!(tag, b'R');
    let mut out = BytesMut::new();
    protocol::write::password_message(&mut out, &tenant.token());
    raw.write_all(&out).await.expect("password");
    let (tag, body) = read_raw(&mut raw, "AuthenticationOk").await;
    assert_eq!((tag, &body[..]), (b'R', &[0u8, 0, 0, 0][..]));
    let (tag, body) = read_raw(&mut raw, "the NOTICE while the holder holds").await;
    assert_eq!(tag, b'N', "{:?}", ErrorFields::parse(&body));
    let notice = ErrorFields::parse(&body);
    assert_eq!(notice.code, "01000");
    assert_eq!(
        notice.message,
        format!(
            "waiting for a server connection of tenant \"{}\": all 1 in use",
            tenant.onboarded.slug
        )
    );
    let row = pool_row(&proxy, &tenant).await.expect("pool row");
    assert!(row.ends_with("|1|0|1|1|1|default"), "one waits: {row}");
    drop(holder);
    loop {
        let (tag, body) = read_raw(&mut raw, "the rest of the login").await;
        assert_ne!(tag, b'E', "{:?}", ErrorFields::parse(&body));
        assert_ne!(tag, b'N', "one NOTICE per wait");
        if tag == b'Z' {
            break;
        }
    }
    let mut out = BytesMut::new();
    protocol::write::query(&mut out, "SELECT 1");
    raw.write_all(&out).await.expect("query");
    loop {
        let (tag, body) = read_raw(&mut raw, "SELECT 1").await;
        assert_ne!(tag, b'E', "{:?}", ErrorFields::parse(&body));
        if tag == b'Z' {
            break;
        }
    }
    drop(raw);
    proxy.stop().await;

    // Transaction pooling: the wait is at the transaction's first message; the NOTICE is written at once.
    let tenant = onboard("queue-txn").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size_per_tenant = 1;
        c.pool.acquire_timeout_ms = 20_000;
        c.limits.queue_notice_after_ms = 300;
    })
    .await;
    let holder = proxy.connect(&tenant).await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let (waiter, mut notices) =
        connect_with_notices(proxy.client_config(&tenant.email, &tenant.token())).await;
    let query =
        tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|r| row_count(&r)) });
    let notice = within("the NOTICE while the holder holds", 20, notices.recv())
        .await
        .expect("notice");
    assert_eq!(notice.code().code(), "01000");
    assert!(
        notice.message().contains("all 1 in use"),
        "{}",
        notice.message()
    );
    assert!(!query.is_finished(), "the waiter still waits");
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    let rows = within("the waiter's query", 20, query)
        .await
        .expect("task")
        .expect("query after the wait");
    assert_eq!(rows, 1);
    assert!(notices.try_recv().is_err(), "one NOTICE per wait");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_and_metrics_show_connections_against_the_limit() {
    let tenant = onboard("pools").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 3).await;
    let first = proxy.connect(&tenant).await;
    let second = proxy.connect(&tenant).await;
    let role = tenant.onboarded.role.as_str();
    let row = pool_row(&proxy, &tenant).await.expect("pool row");
    assert_eq!(
        row,
        format!("{}|{role}|2|0|0|2|3|default", tenant.onboarded.slug)
    );
    let admin = admin_client(&proxy).await;
    let header: Vec<String> = admin
        .simple_query("SHOW POOLS")
        .await
        .expect("SHOW POOLS")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.columns().iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(
        header,
        [
            "tenant",
            "role",
            "active",
            "idle",
            "waiting",
            "server_connections",
            "limit",
            "cluster"
        ]
    );
    let metrics = pgtenant::metrics_http::render(&proxy.proxy);
    assert!(
        metrics.contains(&format!(
            "pgtenant_server_connections_limit{{role=\"{role}\",cluster=\"default\"}} 3"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "pgtenant_server_connections{{role=\"{role}\",cluster=\"default\",state=\"active\"}} 2"
    )));
    assert!(metrics.contains("# TYPE pgtenant_limit_cancels_total counter"));
    drop((first, second));
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_reaches_new_sessions_without_a_restart() {
    let tenant = onboard("change").await;
    let slug = tenant.onboarded.slug.clone();
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let client = proxy.connect(&tenant).await;
    assert_eq!(show(&client, "statement_timeout").await, "0");
    drop(client);
    pool_back_to_idle(&proxy, &tenant).await;
    let admin = admin_client(&proxy).await;
    admin
        .simple_query(&format!(
            "ALTER TENANT {slug} SET statement_timeout TO 2000; ALTER TENANT {slug} SET lock_timeout = '1 min'"
        ))
        .await
        .expect("ALTER TENANT");
    // The idle connection opened without limits is replaced.
    let client = proxy.connect(&tenant).await;
    assert_eq!(show(&client, "statement_timeout").await, "2s");
    assert_eq!(show(&client, "lock_timeout").await, "1min");
    drop(client);
    pool_back_to_idle(&proxy, &tenant).await;
    let e = db_error(
        "an unknown setting",
        admin
            .simple_query(&format!("ALTER TENANT {slug} SET work_mem = '4MB'"))
            .await,
    );
    assert_eq!(e.code().code(), "42601");
    admin
        .simple_query(&format!("ALTER TENANT {slug} RESET ALL"))
        .await
        .expect("RESET ALL");
    let client = proxy.connect(&tenant).await;
    assert_eq!(show(&client, "statement_timeout").await, "0");
    assert_eq!(show(&client, "lock_timeout").await, "0");
    let e = db_error(
        "an unknown tenant",
        admin
            .simple_query("ALTER TENANT no_such_tenant RESET ALL")
            .await,
    );
    assert_eq!(e.code().code(), "42704");
    drop(admin);
    proxy.stop().await;
}

fn write_cli_config() -> std::path::PathBuf {
    let c = cluster();
    let dir = std::env::temp_dir().join(format!(
        "pgtenant-limits-cli-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("pgtenant.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nadmin_user = \"{}\"\n\
             admin_password = \"{}\"\nserver_secret = \"{SERVER_SECRET}\"\n[auth]\nhs_secret = \"{JWT_SECRET}\"\n\
             [limits]\nlock_timeout_ms = 250\n",
            c.cluster.port(),
            c.cluster.superuser(),
            c.cluster.superuser_password()
        ),
    )
    .expect("write config");
    path
}

async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--config", config.to_str().expect("path"), "tenant"];
    all.extend_from_slice(args);
    run_program(env!("CARGO_BIN_EXE_pgtenant"), &all, &[], None).await
}

/// The statement_timeout a new session of `tenant` gets, once it is `expected` (within a generous deadline).
async fn new_sessions_get(proxy: &TestProxy, tenant: &TestTenant, expected: &str) {
    within(
        &format!("new sessions with statement_timeout {expected}"),
        20,
        async {
            loop {
                let client = proxy.connect(tenant).await;
                if show(&client, "statement_timeout").await == expected {
                    return;
                }
                drop(client);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_limits_and_every_pgtenant_hears_of_it() {
    let tenant = onboard("cli").await;
    let slug = tenant.onboarded.slug.clone();
    // A long directory cache: only the change's announcement (the table's trigger) makes it reach new
    // sessions soon.
    let proxy = TestProxy::start_with(|c| c.tenancy.directory_cache_ttl_ms = 600_000).await;
    new_sessions_get(&proxy, &tenant, "0").await;
    let config = write_cli_config();
    let (ok, stdout, stderr) = cli(&config, &["set", &slug, "statement_timeout", "3s"]).await;
    assert!(ok, "tenant set: {stdout} {stderr}");
    assert!(stdout.contains("statement_timeout = 3s"), "{stdout}");
    new_sessions_get(&proxy, &tenant, "3s").await;
    let (ok, stdout, stderr) = cli(&config, &["limits"]).await;
    assert!(ok, "tenant limits: {stdout} {stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&slug))
        .unwrap_or_else(|| panic!("{slug} listed: {stdout}"));
    let shown: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        shown,
        [
            slug.as_str(),
            "3s",
            "250ms",
            "(default)",
            "0",
            "(default)",
            "0",
            "(default)"
        ],
        "{line}"
    );
    let (ok, _, stderr) = cli(&config, &["set", &slug, "work_mem", "4MB"]).await;
    assert!(!ok && stderr.contains("unknown tenant setting"), "{stderr}");
    let (ok, _, stderr) = cli(&config, &["set", &slug, "statement_timeout", "5 sec"]).await;
    assert!(!ok && stderr.contains("invalid unit"), "{stderr}");
    let (ok, stdout, stderr) = cli(&config, &["reset", &slug, "all"]).await;
    assert!(ok, "tenant reset: {stdout} {stderr}");
    new_sessions_get(&proxy, &tenant, "0").await;
    let row = superuser()
        .await
        .query_one(
            "SELECT statement_timeout_ms FROM pgtenant.organizations WHERE id = $1",
            &[&tenant.onboarded.organization_id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, Option<i32>>(0), None);
    proxy.stop().await;
}
