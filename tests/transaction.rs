//! Transaction pooling (`pool.mode = "transaction"`) with real clients: pgbench in its three query modes over a
//! pool smaller than its client count, psycopg 3 with every statement server-prepared across a small pool
//! (and a table altered under a prepared `SELECT *`), pipelined batches, clients that leave while queued or
//! mid-transaction, settings that follow each client from server connection to server connection, the NOTICE
//! for LISTEN, and named statements on the raw protocol compared message for message with PostgreSQL.

mod common;

use bytes::BytesMut;
use common::backends::{backends_of, superuser_conninfo};
use common::run::{describe_run, report_value, run_bounded};
use common::wire::*;
use common::*;
use pgtenant::config::PoolMode;
use pgtenant::names::quote_ident;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// Waits (up to 5 s) until `role` has at most `max` server connections; returns the last count.
async fn settle_backends(role: &str, max: i64) -> i64 {
    let admin = superuser().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = backends_of(&admin, role).await;
        if n <= max || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls pg_stat_activity for a role's connections in the background and keeps the maximum seen.
struct BackendMonitor {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(i64, usize)>,
}

impl BackendMonitor {
    async fn start(role: &str) -> BackendMonitor {
        let admin = superuser().await;
        let role = role.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            let mut samples = 0;
            while !stopped.load(Ordering::Relaxed) {
                max = max.max(backends_of(&admin, &role).await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (max, samples)
        });
        BackendMonitor { stop, task }
    }

    /// (most connections seen at once, number of samples)
    async fn finish(self) -> (i64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("monitor")
    }
}

/// A scratch schema for running a client script directly against PostgreSQL as the superuser; dropped by
/// [`Scratch::drop_schema`].
struct Scratch {
    schema: String,
}

impl Scratch {
    async fn new() -> Scratch {
        let schema = format!(
            "txn_direct_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        superuser()
            .await
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("scratch schema");
        Scratch { schema }
    }

    fn conninfo(&self) -> String {
        format!(
            "{} options='-c search_path={}'",
            superuser_conninfo(),
            self.schema
        )
    }

    async fn drop_schema(self) {
        let _ = superuser()
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await;
    }
}

fn require_psycopg() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import psycopg; print(psycopg.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "psycopg 3 is not installed for python3 (needed by this test): pip install \"psycopg[binary]\"\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 cannot be run ({e}); this test needs python3 with psycopg 3"),
    }
}

/// What one run of tests/clients/psycopg_txn.py reported.
struct ScriptRun {
    ok: bool,
    out: String,
    err: String,
    summary: serde_json::Value,
}

impl ScriptRun {
    fn report(&self, what: &str) -> String {
        describe_run(what, self.ok, &self.out, &self.err)
    }
}

async fn psycopg_txn(mode: &str, conninfo: &str, clients: usize) -> ScriptRun {
    require_psycopg();
    let script = repo_path("tests/clients/psycopg_txn.py")
        .display()
        .to_string();
    let admin = superuser_conninfo();
    let clients = clients.to_string();
    let (ok, out, err) = run_bounded(
        "python3",
        &[&script, mode],
        &[
            ("PGTENANT_CONNINFO", conninfo),
            ("PGTXN_ADMIN_CONNINFO", admin.as_str()),
            ("PGTXN_CLIENTS", clients.as_str()),
        ],
        None,
        120,
    )
    .await;
    let summary = out
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    ScriptRun {
        ok,
        out,
        err,
        summary,
    }
}

/// The script run directly against PostgreSQL (in a scratch schema, as the superuser): the baseline. It must
/// pass, or the script (not pgtenant) is wrong.
async fn psycopg_txn_direct(mode: &str, clients: usize) -> ScriptRun {
    let scratch = Scratch::new().await;
    let run = psycopg_txn(mode, &scratch.conninfo(), clients).await;
    scratch.drop_schema().await;
    assert!(
        run.ok,
        "{}",
        run.report(&format!(
            "psycopg_txn.py {mode} directly against PostgreSQL (the script is wrong, not pgtenant)"
        ))
    );
    run
}

fn simple_values(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// 1. pgbench: 32 clients over 4 server connections, three query modes
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_32_clients_over_a_pool_of_4_in_every_query_mode() {
    let tenant = onboard("txnbench").await;
    let proxy = txn_proxy(4).await;
    let conninfo = proxy.conninfo(&tenant);
    let role = tenant.onboarded.role.as_str().to_string();
    let schema = quote_ident(tenant.onboarded.schema.as_str());
    let pgbench = client_program("pgbench");
    let admin = superuser().await;
    let monitor = BackendMonitor::start(&role).await;

    let started = Instant::now();
    let (ok, out, err) = run_bounded(&pgbench, &["-i", "-s", "1", &conninfo], &[], None, 120).await;
    assert!(
        ok,
        "{}",
        describe_run("pgbench -i -s 1 (transaction pooling)", ok, &out, &err)
    );
    let accounts: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.pgbench_accounts"),
            &[],
        )
        .await
        .expect("count accounts")
        .get(0);
    assert_eq!(accounts, 100_000, "pgbench -i through transaction pooling");
    eprintln!("pgbench -i: {:?}", started.elapsed());

    for mode in ["prepared", "simple", "extended"] {
        admin
            .batch_execute(&format!("TRUNCATE {schema}.pgbench_history"))
            .await
            .expect("truncate history");
        let started = Instant::now();
        let (ok, out, err) = run_bounded(
            &pgbench,
            &[
                "-M", mode, "-c", "32", "-j", "2", "-T", "3", "-n", &conninfo,
            ],
            &[],
            None,
            60,
        )
        .await;
        let report = describe_run(&format!("pgbench -M {mode} -c 32 -T 3"), ok, &out, &err);
        assert!(ok, "{report}");
        assert!(
            !err.to_lowercase().contains("error"),
            "pgbench reported errors\n{report}"
        );
        assert_eq!(
            report_value(&out, "query mode:").as_deref(),
            Some(mode),
            "{report}"
        );
        let processed: i64 = report_value(&out, "number of transactions actually processed:")
            .and_then(|v| v.split('/').next().map(str::to_string))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in the report\n{report}"));
        assert!(processed > 0, "{report}");
        let failed = report_value(&out, "number of failed transactions:").unwrap_or_default();
        assert!(
            failed.starts_with("0 ") || failed == "0",
            "failed transactions: {failed:?}\n{report}"
        );
        let history: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {schema}.pgbench_history"),
                &[],
            )
            .await
            .expect("history")
            .get(0);
        assert_eq!(
            history, processed,
            "every processed transaction inserts one history row (-M {mode})\n{report}"
        );
        let row = admin
            .query_one(
                &format!(
                    "SELECT (SELECT sum(abalance) FROM {schema}.pgbench_accounts), \
                            (SELECT sum(tbalance) FROM {schema}.pgbench_tellers), \
                            (SELECT sum(bbalance) FROM {schema}.pgbench_branches)"
                ),
                &[],
            )
            .await
            .expect("balances");
        let (a, t, b): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(
            a == t && t == b,
            "balances diverge after -M {mode}: accounts {a}, tellers {t}, branches {b}"
        );
        eprintln!(
            "pgbench -M {mode}: {processed} transactions in {:?}",
            started.elapsed()
        );
    }
    let (max, samples) = monitor.finish().await;
    eprintln!("most server connections of the tenant at once: {max} ({samples} samples)");
    assert!(samples > 50, "the monitor took only {samples} samples");
    assert!(
        (1..=4).contains(&max),
        "the tenant had {max} server connections at once; the pool has 4"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 2. psycopg 3, every statement server-prepared, 12 clients over 3 server connections
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_12_clients_over_a_pool_of_3() {
    let tenant = onboard("txnpsy").await;
    let proxy = txn_proxy(3).await;
    let role = tenant.onboarded.role.as_str().to_string();
    let monitor = BackendMonitor::start(&role).await;
    let started = Instant::now();
    let run = psycopg_txn("concurrent", &proxy.conninfo(&tenant), 12).await;
    let (max, _) = monitor.finish().await;
    eprintln!("{}\n{:?}", run.out, started.elapsed());
    assert!(
        run.ok,
        "{}",
        run.report("psycopg concurrent through pgtenant")
    );
    assert_eq!(run.summary["rows"].as_i64(), Some(12 * 50), "{}", run.out);
    // The clients really were spread over the server connections.
    let spread = run.summary["distinct_backends_per_client"]
        .as_object()
        .map(|m| m.values().filter(|v| v.as_i64() > Some(1)).count())
        .unwrap_or(0);
    assert!(
        spread >= 6,
        "most clients should have used several server connections: {}",
        run.summary
    );
    assert!(
        max <= 3,
        "the tenant had {max} server connections at once; the pool has 3"
    );
}

/// After `ALTER TABLE … ADD COLUMN` under a prepared `SELECT *`, PostgreSQL answers each session's next use
/// with 0A000 "cached plan must not change result type"; psycopg in a transaction rolls back, which makes it
/// forget its statements (and send DEALLOCATE ALL), and its next prepare works. Through pgtenant the same
/// client code must recover the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_alter_table_under_prepared_select_star_in_transactions() {
    stale_plan_case("stale", "txnstale").await;
}

/// As above in autocommit, where the client recovers by reconnecting (a fresh prepare); pgtenant gives the
/// new session the same server-side statement, so it must not keep failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_alter_table_under_prepared_select_star_in_autocommit() {
    stale_plan_case("stale-autocommit", "txnstaleac").await;
}

async fn stale_plan_case(mode: &str, label: &str) {
    let pool = 3;
    let direct = psycopg_txn_direct(mode, 12).await;
    let direct_max = direct.summary["max_errors_per_client"]
        .as_i64()
        .unwrap_or(-1);
    assert_eq!(
        direct_max, 1,
        "directly, each session sees the 0A000 once: {}",
        direct.summary
    );
    let tenant = onboard(label).await;
    let proxy = txn_proxy(pool).await;
    let run = psycopg_txn(mode, &proxy.conninfo(&tenant), 12).await;
    eprintln!(
        "directly: {}\nthrough pgtenant: {}",
        direct.summary, run.summary
    );
    assert!(
        run.ok,
        "{}\n(directly against PostgreSQL every client recovered after exactly one 0A000: {})",
        run.report(&format!("psycopg {mode} through pgtenant")),
        direct.summary
    );
    // Each server connection may answer once with the 0A000 before pgtenant re-prepares there.
    let max = run.summary["max_errors_per_client"].as_i64().unwrap_or(-1);
    assert!(
        (0..=pool as i64).contains(&max),
        "a client saw {max} errors before its statement worked again: {}",
        run.summary
    );
}

/// psycopg (not autocommit, prepare_threshold=0) rolls back after an error, forgets its statements and sends
/// `DEALLOCATE ALL`. Directly that is harmless; through pgtenant the statement cache of the server connection
/// the DEALLOCATE ALL ran on must not go out of step with what pgtenant believes is prepared there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_rollback_and_deallocate_all_keep_statements_working() {
    let direct = psycopg_txn_direct("rollback", 12).await;
    let tenant = onboard("txnrollback").await;
    let proxy = txn_proxy(3).await;
    let run = psycopg_txn("rollback", &proxy.conninfo(&tenant), 12).await;
    assert!(
        run.ok,
        "{}\n(directly against PostgreSQL: {})",
        run.report("psycopg rollback through pgtenant"),
        direct.summary
    );
}

/// The smallest reproduction of the above, with tokio-postgres: DEALLOCATE ALL (or DISCARD ALL) sent by a
/// client as SQL drops every statement of the server connection it runs on, pgtenant's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_from_a_client_does_not_break_other_statements() {
    let tenant = onboard("txndealloc").await;
    let proxy = txn_proxy(1).await;
    let mut failures = Vec::new();
    for (sql, text) in [
        ("DEALLOCATE ALL", "SELECT $1::int + 100"),
        ("DISCARD ALL", "SELECT $1::int + 200"),
    ] {
        let base = if sql == "DEALLOCATE ALL" { 100 } else { 200 };
        let a = proxy.connect(&tenant).await;
        let b = proxy.connect(&tenant).await;
        let stmt = a
            .prepare(text)
            .await
            .unwrap_or_else(|e| panic!("prepare {text:?}: {e:?}"));
        assert_eq!(
            a.query_one(&stmt, &[&1i32])
                .await
                .expect("first use")
                .get::<_, i32>(0),
            base + 1
        );
        // Another client (same tenant, same and only server connection) cleans up its own statements.
        b.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        match a.query_one(&stmt, &[&2i32]).await {
            Ok(row) => assert_eq!(row.get::<_, i32>(0), base + 2),
            Err(e) => failures.push(format!(
                "after another client's {sql}, a statement prepared earlier fails: {e:?}"
            )),
        }
        // A fresh prepare of the same text (tokio-postgres gives it a new name), on both clients and on a
        // client that logs in afterwards.
        for (who, client) in [
            ("the first client", &a),
            ("the client that sent it", &b),
            ("a new client", &proxy.connect(&tenant).await),
        ] {
            match client.query_one(text, &[&3i32]).await {
                Ok(row) => assert_eq!(row.get::<_, i32>(0), base + 3),
                Err(e) => failures.push(format!(
                    "after {sql}, {who} cannot prepare {text:?} afresh: {e:?}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "directly against PostgreSQL each of these works (DEALLOCATE ALL / DISCARD ALL drop only the \
         sender's own statements; a client's statements live in its own session):\n{}",
        failures.join("\n")
    );
}

/// A statement prepared (and described) before `ALTER TABLE … ALTER COLUMN … TYPE`: PostgreSQL refuses every
/// later use of it with 0A000 ("cached plan must not change result type"), because the client decodes rows by
/// the RowDescription it got. A fresh prepare works. Through pgtenant the old statement may fail the same way,
/// or work, but it must never return rows of another shape than the client was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_prepared_before_alter_column_type_never_returns_rows_of_another_type() {
    async fn run(
        client: &tokio_postgres::Client,
        admin: &tokio_postgres::Client,
        table: &str,
    ) -> Vec<String> {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL); INSERT INTO {table} VALUES (1, 5)"
            ))
            .await
            .expect("table");
        let stmt = client
            .prepare(&format!("SELECT * FROM {table} WHERE id = $1"))
            .await
            .expect("prepare");
        let v: i32 = client
            .query_one(&stmt, &[&1i32])
            .await
            .expect("before")
            .get(1);
        assert_eq!(v, 5);
        admin
            .batch_execute(&format!(
                "ALTER TABLE {table} ALTER COLUMN v TYPE text USING 'abcd'"
            ))
            .await
            .expect("alter");
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(match client.query_one(&stmt, &[&1i32]).await {
                Ok(row) => match row.try_get::<_, i32>(1) {
                    Ok(v) => format!("rows, v decoded as int4 = {v}"),
                    Err(e) => format!("rows the client cannot decode: {e}"),
                },
                Err(e) => format!("error {}", sqlstate(&e)),
            });
        }
        let fresh: String = client
            .query_one(&format!("SELECT * FROM {table} WHERE id = $1"), &[&1i32])
            .await
            .expect("a fresh prepare works")
            .get(1);
        assert_eq!(fresh, "abcd");
        seen
    }

    let admin = superuser().await;
    let scratch = Scratch::new().await;
    let direct_table = format!("{}.shape", scratch.schema);
    let direct = run(&superuser().await, &admin, &direct_table).await;
    scratch.drop_schema().await;
    assert!(
        direct.iter().all(|s| s == "error 0A000"),
        "PostgreSQL refuses the old statement every time: {direct:?}"
    );

    let tenant = onboard("txnshape").await;
    let proxy = txn_proxy(1).await;
    let table = format!("{}.shape", quote_ident(tenant.onboarded.schema.as_str()));
    let proxied = run(&proxy.connect(&tenant).await, &admin, &table).await;
    let wrong: Vec<&String> = proxied.iter().filter(|s| *s != "error 0A000").collect();
    assert!(
        wrong.is_empty(),
        "through pgtenant the statement described as (id int4, v int4) went on after the ALTER with rows \
         whose v is text: {proxied:?}\n(directly against PostgreSQL: {direct:?})"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 3. Pipelined batches
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipelines_match_postgres() {
    let direct = psycopg_txn_direct("pipeline", 1).await;
    let tenant = onboard("txnpipe").await;
    let proxy = txn_proxy(2).await;
    let run = psycopg_txn("pipeline", &proxy.conninfo(&tenant), 1).await;
    assert!(
        run.ok,
        "{}",
        run.report("psycopg pipeline through pgtenant")
    );
    assert_eq!(
        run.summary, direct.summary,
        "what the pipelines returned through pgtenant differs from PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_concurrent_queries_on_one_client() {
    let tenant = onboard("txnconc").await;
    let proxy = txn_proxy(2).await;
    let client = Arc::new(proxy.connect(&tenant).await);
    // Other clients of the tenant keep the two server connections busy meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let mut noise = Vec::new();
    for _ in 0..2 {
        let other = proxy.connect(&tenant).await;
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                other
                    .batch_execute("BEGIN; SELECT pg_sleep(0.002); COMMIT")
                    .await
                    .expect("noise");
                n += 1;
            }
            n
        }));
    }
    let double = client.prepare("SELECT $1::int * 2").await.expect("prepare");
    let divide = client
        .prepare("SELECT 100 / $1::int")
        .await
        .expect("prepare");
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..300i32 {
            let client = client.clone();
            let (double, divide) = (double.clone(), divide.clone());
            tasks.push(tokio::spawn(async move {
                if i % 50 == 25 {
                    // An error in the middle of the stream of requests: each has its own Sync.
                    client
                        .query_one(&divide, &[&0i32])
                        .await
                        .map(|r| r.get::<_, i32>(0))
                } else if i % 7 == 0 {
                    client
                        .query_one("SELECT $1::int + 1000", &[&i])
                        .await
                        .map(|r| r.get::<_, i32>(0))
                } else {
                    client
                        .query_one(&double, &[&i])
                        .await
                        .map(|r| r.get::<_, i32>(0))
                }
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let i = i as i32;
            let result = task.await.expect("task");
            if i % 50 == 25 {
                let e = result.expect_err("division by zero");
                assert_eq!(sqlstate(&e), "22012", "round {round} request {i}");
            } else if i % 7 == 0 {
                assert_eq!(
                    result.expect("query"),
                    i + 1000,
                    "round {round} request {i}"
                );
            } else {
                assert_eq!(result.expect("query"), i * 2, "round {round} request {i}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for n in noise {
        assert!(n.await.expect("noise") > 0);
    }
    // Still in step afterwards.
    let v: i32 = client
        .query_one(&double, &[&21i32])
        .await
        .expect("after")
        .get(0);
    assert_eq!(v, 42);
}

/// Raw pipelined batches: many statements before one Sync, an error in the middle (the rest up to the Sync
/// skipped), the next batch fine, Flush inside a pipeline; compared message for message with PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pipelined_batches_match_postgres() {
    use Msg::*;
    let mut big = Vec::new();
    for i in 0..40 {
        let name: &'static str = Box::leak(format!("big{i}").into_boxed_str());
        let sql: &'static str =
            Box::leak(format!("SELECT {i} AS n, $1::text AS t").into_boxed_str());
        big.push(Parse(name, sql));
        big.push(Bind("", name, vec![Some("x")]));
        big.push(Execute(""));
    }
    big.push(Sync);
    let steps = vec![
        step(0, "a large batch of named statements", big),
        step(
            0,
            "an error mid-batch skips the rest up to the Sync; the next batch runs",
            vec![
                Parse("e1", "SELECT 100 / $1::int AS q"),
                Bind("", "e1", vec![Some("5")]),
                Execute(""),
                Bind("", "e1", vec![Some("0")]),
                Execute(""),
                Bind("", "big1", vec![Some("skipped")]),
                Execute(""),
                Sync,
                Bind("", "e1", vec![Some("4")]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            1,
            "another client, a batch of its own",
            vec![
                Parse("big1", "SELECT 1 AS n, $1::text AS t"),
                Bind("", "big1", vec![Some("other")]),
                Execute(""),
                Parse("o2", "SELECT 'o2'::text AS s"),
                Bind("", "o2", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "Flush in the middle of a pipeline",
            vec![
                Parse("f1", "SELECT 1 AS one"),
                Flush,
                Bind("", "f1", vec![]),
                Execute(""),
                Flush,
                Bind("", "big3", vec![Some("y")]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "a simple query after the pipelines",
            vec![Query("SELECT 'done' AS d")],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnrawpipe", 1, &steps).await;
    // The baseline itself is what the protocol says.
    assert!(
        direct[1].iter().any(|l| l.starts_with("Error 22012")),
        "{:?}",
        direct[1]
    );
    assert_eq!(
        direct[1]
            .iter()
            .filter(|l| l.starts_with("DataRow"))
            .count(),
        2
    );
    assert!(
        differences.is_empty(),
        "pipelined batches through pgtenant differ from PostgreSQL:\n{}",
        differences.join("\n")
    );
}

/// A named Parse that the server skipped (after an error earlier in the batch) or refused creates no
/// statement: its name stays unknown (26000) and free to Parse, and the same text parsed by anyone later works.
/// pgtenant records a client's statement (and the server connection's) before the server answers, so it must
/// undo that for every Parse the error skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_skipped_and_failed_parses_leave_no_statement_behind() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "an error mid-batch; two named Parses after it are skipped",
            vec![
                Parse("e1", "SELECT 100 / $1::int AS q"),
                Bind("", "e1", vec![Some("0")]),
                Execute(""),
                Parse("skip1", "SELECT 'skip1'::text AS s"),
                Bind("", "skip1", vec![]),
                Execute(""),
                Parse("skip2", "SELECT 'skip2'::text AS s"),
                Sync,
            ],
        ),
        step(
            1,
            "another client parses the same texts afresh",
            vec![
                Parse("other1", "SELECT 'skip1'::text AS s"),
                Bind("", "other1", vec![]),
                Execute(""),
                Parse("other2", "SELECT 'skip2'::text AS s"),
                Bind("", "other2", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "statements whose Parse was skipped do not exist",
            vec![
                Bind("", "skip1", vec![]),
                Execute(""),
                Sync,
                Bind("", "skip2", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "so they can be parsed now, under the same names",
            vec![
                Parse("skip1", "SELECT 'skip1'::text AS s"),
                Bind("", "skip1", vec![]),
                Execute(""),
                Parse("skip2", "SELECT 'skip2'::text AS s"),
                Bind("", "skip2", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            1,
            "and again later: a text parsed by anyone works",
            vec![
                Parse("other3", "SELECT 'skip1'::text AS s"),
                Bind("", "other3", vec![]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "a failed named Parse leaves no statement behind",
            vec![
                Parse("bad", "SELEC 1"),
                Bind("", "bad", vec![]),
                Execute(""),
                Sync,
                Bind("", "bad", vec![]),
                Execute(""),
                Sync,
            ],
        ),
    ];
    let (differences, _) = compare_with_postgres("txnrawskip", 1, &steps).await;
    assert!(
        differences.is_empty(),
        "skipped and failed Parses through pgtenant differ from PostgreSQL:\n{}",
        differences.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------
// 4. A client that leaves while queued for a server connection
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_while_queued_leaks_nothing() {
    let tenant = onboard("txnqueue").await;
    let proxy = txn_proxy_with(1, |c| c.pool.acquire_timeout_ms = 1_500).await;
    let role = tenant.onboarded.role.as_str().to_string();
    let schema = quote_ident(tenant.onboarded.schema.as_str());
    let admin = superuser().await;
    let holder = proxy.connect(&tenant).await;
    holder
        .batch_execute("CREATE TABLE queued (who text)")
        .await
        .expect("table");

    // (leave how, hold for how long after the waiter left): the holder gives the connection back while the
    // waiter's request is still queued, or only after the queue gave up on it.
    for (round, (how, hold_ms)) in [
        ("closes its socket", 400u64),
        ("sends Terminate", 400),
        ("closes its socket", 2_000),
    ]
    .into_iter()
    .enumerate()
    {
        // Log in while the pool is free (logging in takes a server connection too).
        let mut waiter = Raw::proxy(&proxy, &tenant, "waiter").await;
        holder
            .batch_execute(&format!(
                "BEGIN; INSERT INTO queued VALUES ('holder {round}')"
            ))
            .await
            .expect("holder's transaction");
        waiter.send(&[Msg::Query("SELECT pg_backend_pid()")]).await;
        // It is queued: no answer comes while the holder keeps the only connection.
        let early = tokio::time::timeout(
            Duration::from_millis(200),
            pgtenant::protocol::read_message(&mut waiter.stream, 1 << 20),
        )
        .await;
        assert!(
            early.is_err(),
            "round {round}: the waiter was answered while the pool was taken: {early:?}"
        );
        if how == "sends Terminate" {
            let mut out = BytesMut::new();
            pgtenant::protocol::write::terminate(&mut out);
            waiter.stream.write_all(&out).await.expect("terminate");
        }
        drop(waiter);
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        holder.batch_execute("COMMIT").await.expect("commit");

        // A third client is served at once, again and again (a leaked checkout would starve it).
        // (A connection leaked to the gone waiter would leave none: the query would fail with 53300 after
        // the 1.5 s acquire timeout.)
        for i in 0..3 {
            let third = proxy.connect(&tenant).await;
            let n: i64 = third
                .query_one("SELECT count(*) FROM queued", &[])
                .await
                .unwrap_or_else(|e| panic!("round {round} ({how}), third client {i}: {e:?}"))
                .get(0);
            assert_eq!(n, round as i64 + 1, "round {round}: the holder's rows");
        }
        let n = settle_backends(&role, 1).await;
        assert!(
            n <= 1,
            "round {round} ({how}): the tenant has {n} server connections; the pool has 1"
        );
        let in_tx: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename::text = $1 AND state <> 'idle'",
                &[&role],
            )
            .await
            .expect("states")
            .get(0);
        assert_eq!(in_tx, 0, "round {round}: a server connection is not idle");
    }
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {schema}.queued"), &[])
        .await
        .expect("rows")
        .get(0);
    assert_eq!(rows, 3);
    let stats = proxy.proxy.pools.stats();
    let pool = stats
        .iter()
        .find(|s| s.role.as_str() == role)
        .expect("the tenant's pool");
    // The holder is idle between transactions: nothing is checked out.
    assert_eq!(pool.active, 0, "checked-out server connections at rest");
}

// ---------------------------------------------------------------------------------------------------------
// 5. Terminate in the middle of a transaction
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_mid_transaction_rolls_back_and_the_next_client_gets_a_clean_connection() {
    let tenant = onboard("txnterm").await;
    let proxy = txn_proxy(1).await;
    let role = tenant.onboarded.role.as_str().to_string();
    let schema = quote_ident(tenant.onboarded.schema.as_str());
    let admin = superuser().await;
    proxy
        .connect(&tenant)
        .await
        .batch_execute("CREATE TABLE terminated (what text)")
        .await
        .expect("table");

    let cases: [(&str, &str); 3] = [
        (
            "open transaction",
            "BEGIN; INSERT INTO terminated VALUES ('open'); SET LOCAL statement_timeout = '1ms'",
        ),
        (
            "failed transaction",
            "BEGIN; INSERT INTO terminated VALUES ('failed')",
        ),
        (
            "savepoint",
            "BEGIN; SAVEPOINT s; INSERT INTO terminated VALUES ('savepoint'); RELEASE SAVEPOINT s",
        ),
    ];
    for (label, sql) in cases {
        let client = proxy.connect(&tenant).await;
        client.batch_execute(sql).await.expect(label);
        if label == "failed transaction" {
            let e = client
                .batch_execute("SELECT 1 / 0")
                .await
                .expect_err("division by zero");
            assert_eq!(sqlstate(&e), "22012");
        }
        // Dropping a tokio-postgres client sends Terminate and closes the socket.
        drop(client);

        let next = tokio::time::timeout(Duration::from_secs(5), proxy.connect(&tenant))
            .await
            .unwrap_or_else(|_| panic!("{label}: the next client could not log in"));
        // A simple Query: one statement timestamp, so now() = statement_timestamp() exactly when the
        // statement started its own transaction (as directly; with the extended protocol they may differ).
        let row = next
            .simple_query(
                "SELECT count(*), now() = statement_timestamp(), txid_current_if_assigned() IS NULL, \
                        current_setting('statement_timeout') FROM terminated",
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: next client: {e:?}"));
        let row = row
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        let (n, fresh, no_xid, timeout) = (
            row.get(0).unwrap_or_default(),
            row.get(1).unwrap_or_default(),
            row.get(2).unwrap_or_default(),
            row.get(3).unwrap_or_default(),
        );
        assert_eq!(
            n, "0",
            "{label}: the terminated client's insert was committed"
        );
        assert_eq!(
            fresh, "t",
            "{label}: the next client runs inside an old transaction"
        );
        assert_eq!(
            no_xid, "t",
            "{label}: the next client inherited a transaction id"
        );
        assert_eq!(timeout, "0", "{label}: SET LOCAL outlived the transaction");
        // A statement of the next client autocommits: the superuser sees it at once.
        next.batch_execute("INSERT INTO terminated VALUES ('next')")
            .await
            .expect("insert");
        let seen: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {schema}.terminated WHERE what = 'next'"),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            seen, 1,
            "{label}: the next client's insert did not autocommit"
        );
        next.batch_execute("DELETE FROM terminated")
            .await
            .expect("clean");
        let not_idle: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename::text = $1 AND state <> 'idle'",
                &[&role],
            )
            .await
            .expect("states")
            .get(0);
        assert_eq!(
            not_idle, 0,
            "{label}: a server connection is left in a transaction"
        );
    }

    // A client whose socket closes (no Terminate) inside a transaction.
    let mut raw = Raw::proxy(&proxy, &tenant, "vanishing").await;
    let answer = raw
        .exchange(&[Msg::Query(
            "BEGIN; INSERT INTO terminated VALUES ('vanished')",
        )])
        .await;
    assert_eq!(answer.last().map(String::as_str), Some("ReadyForQuery T"));
    drop(raw);
    let next = tokio::time::timeout(Duration::from_secs(5), proxy.connect(&tenant))
        .await
        .expect("the next client logs in");
    let rows = next
        .simple_query("SELECT count(*), txid_current_if_assigned() IS NULL FROM terminated")
        .await
        .expect("after a vanished client");
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(
        (row.get(0), row.get(1)),
        (Some("0"), Some("t")),
        "after a client vanished mid-transaction"
    );
    drop(next);

    // Terminate right behind a request, before its answer: pgtenant must not commit it either.
    let mut raw = Raw::proxy(&proxy, &tenant, "terminating").await;
    let mut out = encode(&[Msg::Query(
        "BEGIN; INSERT INTO terminated VALUES ('behind'); SELECT pg_sleep(0.2)",
    )]);
    pgtenant::protocol::write::terminate(&mut out);
    raw.stream.write_all(&out).await.expect("send");
    drop(raw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = proxy.connect(&tenant).await;
    let n: i64 = next
        .query_one("SELECT count(*) FROM terminated", &[])
        .await
        .expect("after a pipelined Terminate")
        .get(0);
    assert_eq!(n, 0, "a transaction left open by Terminate was committed");
    drop(next);
    let n = settle_backends(&role, 1).await;
    assert!(
        n <= 1,
        "the tenant has {n} server connections; the pool has 1"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 6. Settings follow the client
// ---------------------------------------------------------------------------------------------------------

struct Expected {
    time_zone: String,
    date_style: String,
    /// `'2024-01-01 00:00:00+00'::timestamptz::text` under those settings, as PostgreSQL renders it.
    rendered: String,
}

const RENDER: &str = "SELECT current_setting('TimeZone'), current_setting('DateStyle'), \
                      '2024-01-01 00:00:00+00'::timestamptz::text, pg_backend_pid()";

async fn expected_directly(settings: &[(&str, &str)]) -> Expected {
    let direct = superuser().await;
    for (name, value) in settings {
        direct
            .batch_execute(&format!("SET {name} = '{value}'"))
            .await
            .expect("set");
    }
    let row = direct.query_one(RENDER, &[]).await.expect("render");
    Expected {
        time_zone: row.get(0),
        date_style: row.get(1),
        rendered: row.get(2),
    }
}

/// Runs `iterations` checks on `client`: its own settings every time, whichever server connection it gets.
/// Returns the distinct backend pids seen.
async fn check_settings_loop(
    label: &'static str,
    client: Arc<tokio_postgres::Client>,
    expected: Arc<Expected>,
    iterations: usize,
) -> HashSet<i32> {
    let stmt = client.prepare(RENDER).await.expect("prepare");
    let mut pids = HashSet::new();
    for i in 0..iterations {
        let row = client
            .query_one(&stmt, &[])
            .await
            .unwrap_or_else(|e| panic!("{label} iteration {i}: {e:?}"));
        let (tz, ds, rendered, pid): (String, String, String, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        pids.insert(pid);
        assert_eq!(
            (tz.as_str(), ds.as_str(), rendered.as_str()),
            (
                expected.time_zone.as_str(),
                expected.date_style.as_str(),
                expected.rendered.as_str()
            ),
            "{label} iteration {i} (backend {pid})"
        );
        if i % 3 == 0 {
            let shown = simple_values(
                &client
                    .simple_query("SHOW TimeZone")
                    .await
                    .expect("SHOW TimeZone"),
            );
            assert_eq!(
                shown,
                vec![Some(expected.time_zone.clone())],
                "{label} iteration {i}: SHOW TimeZone"
            );
        }
        if i % 5 == 0 {
            // Hold a connection for a moment so the clients trade connections.
            client
                .batch_execute("BEGIN; SELECT pg_sleep(0.002); COMMIT")
                .await
                .expect("short transaction");
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_each_client_across_server_connections() {
    let tenant = onboard("txnset").await;
    let proxy = txn_proxy(2).await;
    let defaults = Arc::new(expected_directly(&[]).await);
    let tokyo = Arc::new(expected_directly(&[("TimeZone", "Asia/Tokyo")]).await);
    let new_york = Arc::new(
        expected_directly(&[("TimeZone", "America/New_York"), ("DateStyle", "SQL, DMY")]).await,
    );
    assert_ne!(tokyo.rendered, defaults.rendered);
    assert_ne!(new_york.rendered, tokyo.rendered);

    let a = Arc::new(proxy.connect(&tenant).await);
    let b = Arc::new(proxy.connect(&tenant).await);
    let c = Arc::new(proxy.connect(&tenant).await);
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .expect("A's SET");
    b.simple_query("SET DateStyle = 'SQL, DMY'")
        .await
        .expect("B's SET DateStyle");
    b.simple_query("SET TimeZone = 'America/New_York'")
        .await
        .expect("B's SET TimeZone");

    let runs = [
        tokio::spawn(check_settings_loop("A", a.clone(), tokyo.clone(), 120)),
        tokio::spawn(check_settings_loop("B", b.clone(), new_york.clone(), 120)),
        tokio::spawn(check_settings_loop("C", c.clone(), defaults.clone(), 120)),
    ];
    let mut all_pids = HashSet::new();
    let mut swapped = Vec::new();
    for (label, run) in ["A", "B", "C"].into_iter().zip(runs) {
        let pids = run
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        if pids.len() >= 2 {
            swapped.push(label);
        }
        all_pids.extend(pids);
    }
    // Three clients over two connections: at least one of them moved between connections (which one
    // depends on scheduling), and each client's every answer above was its own setting.
    assert!(
        !swapped.is_empty(),
        "no client ever changed server connection ({all_pids:?}): the test proves nothing"
    );
    assert!(
        all_pids.len() <= 2,
        "pool of 2, backends seen: {all_pids:?}"
    );

    // A rolled-back SET leaves the client's value; SET LOCAL lasts one transaction only.
    a.batch_execute("BEGIN; SET TimeZone = 'Europe/Paris'; ROLLBACK")
        .await
        .expect("rolled back SET");
    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'Europe/Paris'; COMMIT")
        .await
        .expect("SET LOCAL");
    check_settings_loop("A after ROLLBACK / SET LOCAL", a.clone(), tokyo.clone(), 12).await;
    // SET inside a committed transaction sticks.
    b.batch_execute("BEGIN; SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'ISO, MDY'; COMMIT")
        .await
        .expect("SET in a transaction");
    check_settings_loop("B after a committed SET", b.clone(), tokyo.clone(), 12).await;

    // RESET goes back to the default.
    a.batch_execute("RESET TimeZone").await.expect("RESET");
    check_settings_loop("A after RESET", a.clone(), defaults.clone(), 12).await;
}

/// The same without any concurrency: a client that logs in after another changed TimeZone / DateStyle /
/// application_name (the other one still connected or gone) must see the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_does_not_inherit_settings_of_earlier_clients() {
    let tenant = onboard("txnsetnew").await;
    let proxy = txn_proxy(1).await;
    let defaults = expected_directly(&[]).await;
    let first = proxy.connect(&tenant).await;
    first
        .batch_execute(
            "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'; SET application_name = 'first-client'",
        )
        .await
        .expect("SET");
    const SETTINGS: &str = "SELECT current_setting('TimeZone'), current_setting('DateStyle'), \
                            current_setting('application_name')";
    let mut seen = Vec::new();
    let fresh = proxy.connect(&tenant).await;
    seen.push((
        "while the first client is connected",
        fresh.query_one(SETTINGS, &[]).await.expect("query"),
    ));
    drop(fresh);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = proxy.connect(&tenant).await;
    seen.push((
        "after it left",
        fresh.query_one(SETTINGS, &[]).await.expect("query"),
    ));
    let mut wrong = Vec::new();
    for (when, row) in seen {
        let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let want = (
            defaults.time_zone.clone(),
            defaults.date_style.clone(),
            String::new(),
        );
        if got != want {
            wrong.push(format!(
                "a client logging in {when} starts with (TimeZone, DateStyle, application_name) = {got:?}; \
                 directly a new session has {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------
// 7. LISTEN (and SQL PREPARE) get a NOTICE
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_sql_prepare_get_a_notice_about_transaction_pooling() {
    let tenant = onboard("txnlisten").await;
    let proxy = txn_proxy(2).await;
    let (client, mut notices) =
        connect_with_notices(proxy.client_config(&tenant.email, &tenant.token())).await;

    async fn notices_after(
        client: &tokio_postgres::Client,
        notices: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
        sql: &str,
    ) -> Vec<tokio_postgres::error::DbError> {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        // A round trip more: notices sent before its answer have surely been delivered.
        client.simple_query("SELECT 1").await.expect("sentinel");
        let mut out = Vec::new();
        while let Ok(n) = notices.try_recv() {
            out.push(n);
        }
        out
    }

    for sql in ["LISTEN txn_channel", "BEGIN; LISTEN txn_channel2; COMMIT"] {
        let got = notices_after(&client, &mut notices, sql).await;
        assert_eq!(got.len(), 1, "{sql}: notices {got:?}");
        assert_eq!(got[0].severity(), "NOTICE", "{sql}");
        assert!(
            got[0].message().contains("transaction pooling"),
            "{sql}: {:?}",
            got[0].message()
        );
    }
    let got = notices_after(&client, &mut notices, "PREPARE txn_p AS SELECT 1").await;
    assert_eq!(got.len(), 1, "PREPARE: notices {got:?}");
    assert!(got[0].message().contains("transaction pooling"), "{got:?}");
    let got = notices_after(&client, &mut notices, "SELECT 1; NOTIFY txn_channel").await;
    assert!(got.is_empty(), "plain statements get no notice: {got:?}");

    // psql shows it too.
    let (ok, out, err) = run_bounded(
        &client_program("psql"),
        &[
            "-X",
            "-d",
            &proxy.conninfo(&tenant),
            "-c",
            "LISTEN txn_psql",
        ],
        &[],
        None,
        30,
    )
    .await;
    assert!(ok, "{}", describe_run("psql LISTEN", ok, &out, &err));
    assert!(out.contains("LISTEN"), "{out}");
    assert!(
        err.contains("NOTICE:") && err.contains("transaction pooling"),
        "psql's stderr: {err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 8. Named statements on the raw protocol, compared with PostgreSQL
// ---------------------------------------------------------------------------------------------------------

/// Describe of a named statement (also on a server connection that must get it injected), Close and re-Parse
/// of the same name with another text, Bind / Describe / Close of unknown names: message for message as
/// PostgreSQL answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_named_statements_match_postgres() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "Parse and Describe a named statement",
            vec![
                Parse("s1", "SELECT $1::int + 1 AS x"),
                DescribeStatement("s1"),
                Sync,
            ],
        ),
        step(
            1,
            "another client holds a server connection",
            vec![Query("BEGIN"), Query("SELECT 1 AS held")],
        ),
        step(
            0,
            "Bind / Describe portal / Execute (on whichever connection)",
            vec![
                Bind("", "s1", vec![Some("41")]),
                DescribePortal(""),
                Execute(""),
                Sync,
            ],
        ),
        step(0, "Describe again", vec![DescribeStatement("s1"), Sync]),
        step(
            0,
            "Close, then Parse the same name with another text",
            vec![
                CloseStatement("s1"),
                Parse("s1", "SELECT 'a'::text AS y, $1::int8 AS z"),
                DescribeStatement("s1"),
                Bind("", "s1", vec![Some("5")]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "Close and re-Parse in separate batches",
            vec![CloseStatement("s1"), Sync],
        ),
        step(
            0,
            "the closed name is unknown",
            vec![Bind("", "s1", vec![Some("1")]), Execute(""), Sync],
        ),
        step(
            0,
            "re-Parse of the closed name",
            vec![
                Parse("s1", "SELECT $1::text || '!' AS bang"),
                DescribeStatement("s1"),
                Bind("", "s1", vec![Some("hi")]),
                Execute(""),
                Sync,
            ],
        ),
        step(
            0,
            "Bind of an unknown statement",
            vec![Bind("", "nosuch", vec![]), Execute(""), Sync],
        ),
        step(
            0,
            "Describe of an unknown statement",
            vec![DescribeStatement("nosuch"), Sync],
        ),
        step(
            0,
            "Close of an unknown statement",
            vec![CloseStatement("nosuch"), Sync],
        ),
        step(1, "the other client commits", vec![Query("COMMIT")]),
        step(
            0,
            "the unnamed statement",
            vec![
                Parse("", "SELECT $1::int * 3 AS t"),
                DescribeStatement(""),
                Bind("", "", vec![Some("3")]),
                Execute(""),
                Sync,
            ],
        ),
    ];
    let (differences, direct) = compare_with_postgres("txnraw", 2, &steps).await;
    // The baseline says what the brief expects of PostgreSQL.
    assert!(
        direct[8].iter().any(|l| l.starts_with("Error 26000")),
        "{:?}",
        direct[8]
    );
    assert!(
        differences.is_empty(),
        "named statements through pgtenant differ from PostgreSQL:\n{}",
        differences.join("\n")
    );
}

/// Two corner cases of named statements: a Parse of a name that already exists is refused (42P05), and a
/// Close that an earlier error made the server skip closes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_parse_of_an_existing_name_and_a_skipped_close_match_postgres() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "Parse a named statement",
            vec![Parse("s1", "SELECT 1 AS one"), Sync],
        ),
        step(
            0,
            "Parse of a name that exists",
            vec![Parse("s1", "SELECT 2 AS two"), Sync],
        ),
        step(
            0,
            "the name still means the first text",
            vec![Bind("", "s1", vec![]), Execute(""), Sync],
        ),
    ];
    let (differences, _) = compare_with_postgres("txnrawedge", 1, &steps).await;
    assert!(
        differences.is_empty(),
        "named statement corner cases through pgtenant differ from PostgreSQL:\n{}",
        differences.join("\n")
    );
}

/// Known limitation (README, transaction pooling): a Close that an error earlier in its batch makes the
/// server skip, followed *in the same pipeline* (before that batch's answer) by a use of the statement.
/// pgtenant decides on the later Bind before it knows the earlier batch failed, so the Bind fails with
/// 26000 where PostgreSQL runs the statement. Once the failed batch was answered, pgtenant puts the
/// statement back, as the step after a separate round trip shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limitation of transaction pooling: a skipped Close followed in the same pipeline by a use"]
async fn raw_skipped_close_followed_in_the_same_pipeline_by_a_use_matches_postgres() {
    use Msg::*;
    let steps = vec![step(
        0,
        "a Close skipped after an error leaves the statement",
        vec![
            Parse("k1", "SELECT 'k'::text AS k"),
            Sync,
            Bind("", "nosuch", vec![]),
            CloseStatement("k1"),
            Sync,
            Bind("", "k1", vec![]),
            Execute(""),
            Sync,
        ],
    )];
    let (differences, _) = compare_with_postgres("txnrawedge2", 1, &steps).await;
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A Close skipped after an error, then a use of the statement in a later round trip: the statement is
/// still there, as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_skipped_close_leaves_the_statement_for_the_next_round_trip() {
    use Msg::*;
    let steps = vec![
        step(
            0,
            "Parse k1",
            vec![Parse("k1", "SELECT 'k'::text AS k"), Sync],
        ),
        step(
            0,
            "a Close skipped after an error",
            vec![Bind("", "nosuch", vec![]), CloseStatement("k1"), Sync],
        ),
        step(
            0,
            "the statement is still there",
            vec![Bind("", "k1", vec![]), Execute(""), Sync],
        ),
    ];
    let (differences, _) = compare_with_postgres("txnrawedge3", 1, &steps).await;
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A named Parse while every server connection is taken is answered at once (ParseComplete, and
/// ReadyForQuery for its Sync) and prepared at first use; the statement then works like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_parse_while_the_pool_is_busy_is_answered_at_once_and_prepared_later() {
    use Msg::*;
    let tenant = onboard("txnlazy").await;
    let proxy = txn_proxy_with(1, |c| c.pool.acquire_timeout_ms = 5_000).await;
    let holder = proxy.connect(&tenant).await;
    let mut x = Raw::proxy(&proxy, &tenant, "lazy").await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("holder");

    // Answered without a connection: had the Parse waited for one, the answer would be 53300 after the
    // 5 s acquire timeout (the holder keeps the only connection until after this exchange).
    let answer = x
        .exchange(&[
            Parse("lz", "SELECT $1::int * 7 AS seven"),
            Sync,
            Parse("lzbad", "SELEC 1"),
            Sync,
        ])
        .await;
    assert_eq!(
        answer,
        vec![
            "ParseComplete",
            "ReadyForQuery I",
            "ParseComplete",
            "ReadyForQuery I"
        ],
        "answered without a server connection"
    );
    // The first use waits for the connection, which the holder gives back meanwhile.
    x.send(&[Bind("", "lz", vec![Some("6")]), Execute(""), Sync])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let used = x.read_ready(1).await;
    assert_eq!(
        used,
        vec![
            "BindComplete",
            "DataRow [\"42\"]",
            "CommandComplete SELECT 1",
            "ReadyForQuery I"
        ]
    );
    let described = x.exchange(&[DescribeStatement("lz"), Sync]).await;
    assert_eq!(
        described,
        vec![
            "ParameterDescription [23]",
            "RowDescription [seven:23]",
            "ReadyForQuery I"
        ]
    );
    // The bad text's error comes at its first use (directly it would have come at the Parse), and the
    // session stays in step.
    let bad = x
        .exchange(&[Bind("", "lzbad", vec![]), Execute(""), Sync])
        .await;
    eprintln!("first use of a lazily parsed bad statement: {bad:?}");
    assert!(
        bad.first().is_some_and(|l| l.starts_with("Error 42601")) && bad.len() == 2,
        "{bad:?}"
    );
    let after = x.exchange(&[Query("SELECT 'in step' AS s")]).await;
    assert!(
        after.contains(&"DataRow [\"in step\"]".to_string()),
        "{after:?}"
    );
}

/// Once a tenant's role defaults are known, a transaction-pooled login takes no server connection: it is
/// answered at once while every connection is busy, reports the role's defaults with the client's
/// application_name, and the first transaction gets that name applied on whatever connection it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_no_server_connection_once_the_role_defaults_are_known() {
    let tenant = onboard("txnlazylogin").await;
    let proxy = txn_proxy_with(1, |c| c.pool.acquire_timeout_ms = 3_000).await;
    // The first login learns the defaults; then it holds the only server connection.
    let holder = proxy.connect(&tenant).await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("holder's transaction");
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.application_name("lazy-login");
    // Had it waited for a server connection, it would end in 53300: the holder keeps it until after.
    let (client, connection) = tokio::time::timeout(Duration::from_secs(20), config.connect(NoTls))
        .await
        .expect("login answered")
        .expect("login while the pool is busy");
    tokio::spawn(connection);
    // Its first statement waits for the connection, which the holder gives back.
    let query = tokio::spawn(async move {
        let rows = client
            .simple_query("SHOW application_name")
            .await
            .expect("show");
        (client, simple_values(&rows))
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let (client, values) = query.await.expect("query task");
    assert_eq!(values, vec![Some("lazy-login".to_string())]);
    // A login asking for more than an application_name takes a server connection, as before: with the one
    // connection held, it waits and ends in 53300.
    holder.batch_execute("BEGIN").await.expect("begin again");
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.options("-c statement_timeout=5s");
    let err = config
        .connect(NoTls)
        .await
        .err()
        .expect("no server connection for a login with options");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    holder.batch_execute("COMMIT").await.expect("commit");
    drop(client);
}

/// Known limitation, as the README's table says: RESET of a setting the client sent at startup goes back to
/// the role's default (PostgreSQL would go back to the startup value), in both pooling modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_of_a_startup_setting_goes_to_the_role_default_as_documented() {
    let tenant = onboard("txnresetstartup").await;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = TestProxy::start_with(|c| c.pool.mode = mode).await;
        let mut config = proxy.client_config(&tenant.email, &tenant.token());
        config.options("-c TimeZone=Asia/Kathmandu");
        let client = connect(config).await;
        let show = |rows: Vec<SimpleQueryMessage>| simple_values(&rows);
        assert_eq!(
            show(client.simple_query("SHOW TimeZone").await.expect("show")),
            vec![Some("Asia/Kathmandu".to_string())],
            "{mode:?}: the startup value applies"
        );
        let default: String = superuser()
            .await
            .query_one(
                "SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'",
                &[],
            )
            .await
            .expect("server default")
            .get(0);
        assert_eq!(
            show(
                client
                    .simple_query("RESET TimeZone; SHOW TimeZone")
                    .await
                    .expect("reset")
            ),
            vec![Some(default)],
            "{mode:?}: RESET goes to the default, not to the startup value (documented)"
        );
        proxy.stop().await;
    }
}
