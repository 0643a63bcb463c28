//! Moving a tenant between clusters while it is served (issue 9, item 3): pgbench's TPC-B runs through
//! pgtenant (transaction pooling) during a whole move and afterwards every committed transaction is on the
//! target; the `pgtenant` CLI is SIGKILLed at each step of a move under a writer, and the move is resumed
//! or cancelled: the tenant is then served from exactly one cluster with every row a client saw committed;
//! what logical replication cannot carry is refused with the way out.
//!
//! The directory and the source are a fresh database on the binary's shared cluster (the default cluster,
//! started with wal_level = logical); the target is a cluster the test starts.

mod common;

use common::clusters::*;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// The directory database with cluster b added, and b itself.
async fn two_clusters() -> (TestDb, ExtraCluster) {
    let mut db = fresh_database().await;
    with_cluster_secret(&mut db.config, "b");
    let b = ExtraCluster::primary().await;
    add_cluster(&db, add_request("b", b.port(), None)).await;
    (db, b)
}

/// `pgtenant --config <config> <args>`: (success, stdout, stderr).
async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run_program(env!("CARGO_BIN_EXE_pgtenant"), &all, &[], None).await
}

fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgtenant-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// The cluster the directory names for the tenant.
async fn cluster_of(db: &TestDb, tenant: &TestTenant) -> String {
    db.superuser()
        .await
        .query_one(
            "SELECT cluster FROM pgtenant.organizations WHERE id = $1",
            &[&tenant.onboarded.organization_id],
        )
        .await
        .expect("organization")
        .get(0)
}

/// Whether the tenant's schema exists on a cluster, through a superuser connection to it.
async fn has_schema(client: &tokio_postgres::Client, tenant: &TestTenant) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&tenant.onboarded.schema.as_str()],
        )
        .await
        .expect("pg_namespace")
        .get(0)
}

async fn b_superuser(b: &ExtraCluster) -> tokio_postgres::Client {
    connect(b.cluster.superuser_config(DATABASE)).await
}

/// `pgbench -i` of the tenant's schema (as the superuser, tables then given to the tenant's role).
async fn pgbench_tables(db: &TestDb, tenant: &TestTenant) {
    let c = &db.config.upstream;
    let schema = tenant.onboarded.schema.as_str();
    let options = format!("-c search_path={schema}");
    let port = c.port.to_string();
    let password = c
        .admin_password
        .as_ref()
        .map(pgtenant::secret::Secret::expose)
        .unwrap_or_default();
    let (ok, out, err) = run_program(
        &client_program("pgbench"),
        &[
            "-i",
            "-s",
            "1",
            "-I",
            "dtgp",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            &c.admin_user,
            &db.name,
        ],
        &[("PGPASSWORD", password), ("PGOPTIONS", options.as_str())],
        None,
    )
    .await;
    assert!(ok, "pgbench -i: {out}{err}");
    let role = tenant.onboarded.role.quoted();
    db.superuser()
        .await
        .batch_execute(&format!(
            "ALTER TABLE {schema}.pgbench_accounts OWNER TO {role};
             ALTER TABLE {schema}.pgbench_branches OWNER TO {role};
             ALTER TABLE {schema}.pgbench_tellers OWNER TO {role};
             ALTER TABLE {schema}.pgbench_history OWNER TO {role};"
        ))
        .await
        .expect("owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_under_pgbench_and_every_committed_transaction_is_on_the_target() {
    let (db, b) = two_clusters().await;
    let tenant = db.onboard("moving").await;
    pgbench_tables(&db, &tenant).await;
    let proxy = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.pool.mode = pgtenant::config::PoolMode::Transaction;
        c.pool.size_per_tenant = 4;
    })
    .await;
    // A second pgtenant over the same directory, pooling by session, with a session open on the source.
    let session_proxy = TestProxy::start_with(|c| *c = db.config.clone()).await;
    let dir = temp_dir("move");
    let config = cli_config(&db, &dir, "default");
    let slug = tenant.onboarded.slug.clone();

    // pgbench_history has no primary key: refused, with the way out.
    let (ok, out, err) = cli(&config, &["tenant", "move", &slug, "--to", "b"]).await;
    assert!(!ok, "a table without replica identity: {out}");
    assert!(
        err.contains("pgbench_history (no replica identity)")
            && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );
    db.superuser()
        .await
        .batch_execute(&format!(
            "ALTER TABLE {}.pgbench_history REPLICA IDENTITY FULL",
            tenant.onboarded.schema.as_str()
        ))
        .await
        .expect("replica identity");
    let (ok, out, err) = cli(
        &config,
        &["tenant", "move", &slug, "--to", "b", "--dry-run"],
    )
    .await;
    assert!(ok, "dry run: {out}{err}");
    assert!(
        out.contains("wal_level = logical")
            && out.contains("with 8 tables")
            && out.contains("dry run (from default to b)"),
        "{out}"
    );
    assert!(
        !has_schema(&b_superuser(&b).await, &tenant).await,
        "a dry run makes nothing"
    );

    // TPC-B through pgtenant during the whole move.
    let port = proxy.addr.port().to_string();
    let token = tenant.token();
    let pgbench = {
        let (port, token, email, database) = (
            port.clone(),
            token.clone(),
            tenant.email.clone(),
            db.config.upstream.database.clone(),
        );
        tokio::spawn(async move {
            run_program(
                &client_program("pgbench"),
                &[
                    "-n",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    "14",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    &email,
                    &database,
                ],
                &[("PGPASSWORD", &token)],
                None,
            )
            .await
        })
    };
    let old_session = session_proxy.connect(&tenant).await;
    old_session
        .simple_query("SELECT 1")
        .await
        .expect("a session on the source");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let (ok, out, err) = cli(&config, &["tenant", "move", &slug, "--to", "b"]).await;
    let move_time = started.elapsed();
    assert!(ok, "move: {out}{err}");
    assert!(out.contains("switched (from default to b)"), "{out}");
    let held_ms: u64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("the tenant's new transactions were held ")
                .and_then(|rest| rest.strip_suffix(" ms"))
        })
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("pause reported: {out}"));
    println!(
        "move under TPC-B: {} ms in all, the tenant's new transactions held {held_ms} ms",
        move_time.as_millis()
    );
    assert_eq!(cluster_of(&db, &tenant).await, "b");

    let (ok, bench_out, bench_err) = pgbench.await.expect("pgbench task");
    assert!(ok, "pgbench saw an error: {bench_out}{bench_err}");
    assert!(!bench_err.contains("aborted"), "{bench_err}");
    let processed: i64 = bench_out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("pgbench summary: {bench_out}"));
    println!("pgbench through the move: {processed} transactions");
    assert!(processed > 0);

    // Every committed transaction is on b: one history row each, and the balances agree with them.
    let on_b = b_superuser(&b).await;
    let schema = tenant.onboarded.schema.as_str();
    let row = on_b
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {schema}.pgbench_history),
                        (SELECT coalesce(sum(delta), 0) FROM {schema}.pgbench_history)::bigint,
                        (SELECT sum(abalance) FROM {schema}.pgbench_accounts)::bigint,
                        (SELECT sum(bbalance) FROM {schema}.pgbench_branches)::bigint,
                        (SELECT sum(tbalance) FROM {schema}.pgbench_tellers)::bigint"
            ),
            &[],
        )
        .await
        .expect("sums on b");
    let (history, deltas, accounts, branches, tellers): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        history, processed,
        "one history row per committed transaction"
    );
    assert_eq!((accounts, branches, tellers), (deltas, deltas, deltas));

    // Served from b: a new session lands there; the source's role may not log in any more.
    let client = proxy.connect(&tenant).await;
    let server_port: i32 = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0);
    assert_eq!(server_port, i32::from(b.port()));
    let can_login: bool = db
        .superuser()
        .await
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&tenant.onboarded.role.as_str()],
        )
        .await
        .expect("role")
        .get(0);
    assert!(!can_login, "the source's role is locked out");
    // The session-pooled session was on the source: PostgreSQL ended it at the switch; a new one, through
    // the other pgtenant, lands on b.
    let ended = old_session
        .simple_query("SELECT 1")
        .await
        .expect_err("the session on the source was ended");
    assert!(
        ended.as_db_error().map(|e| e.code().code()) == Some("57P01") || ended.is_closed(),
        "{ended:?}"
    );
    let new_session = session_proxy.connect(&tenant).await;
    let port: i32 = new_session
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0);
    assert_eq!(
        port,
        i32::from(b.port()),
        "the other pgtenant heard of the move"
    );
    drop(new_session);
    let (ok, out, err) = psql_admin(&proxy, &["SHOW MOVES"]).await;
    assert!(
        ok && out.contains(&format!("{slug}|default|b|switched|")),
        "{out}{err}"
    );

    // Cancelling is refused now; FINISH drops the source's copy.
    let (ok, _, err) = cli(&config, &["tenant", "cancel-move", &slug]).await;
    assert!(!ok && err.contains("FINISH MOVE"), "{err}");
    let (ok, out, err) = cli(&config, &["tenant", "finish-move", &slug]).await;
    assert!(ok, "finish: {out}{err}");
    assert!(
        !has_schema(&db.superuser().await, &tenant).await,
        "source copy dropped"
    );
    let slots: i64 = db
        .superuser()
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtenant_move_%' AND database = current_database()", &[])
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 0, "no slot left to hold WAL");
    let count: i64 = client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("still served")
        .get(0);
    assert_eq!(count, processed);
    session_proxy.stop().await;
    proxy.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Inserts rows through pgtenant until told to stop; remembers the ids the server said were committed.
fn spawn_writer(
    proxy: &TestProxy,
    tenant: &TestTenant,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<usize>, Arc<Mutex<Vec<i64>>>) {
    let committed = Arc::new(Mutex::new(Vec::new()));
    let config = proxy.client_config(&tenant.email, &tenant.token());
    let seen = committed.clone();
    let task = tokio::spawn(async move {
        let mut errors = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match config.connect(tokio_postgres::NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        Some(c)
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
            }
            let Some(c) = client.as_ref() else { continue };
            match c
                .query_one(
                    "INSERT INTO employees (email, full_name) VALUES (gen_random_uuid()::text, 'w') RETURNING id",
                    &[],
                )
                .await
            {
                Ok(row) => seen.lock().expect("ids").push(row.get(0)),
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        errors
    });
    (task, committed)
}

/// Runs `pgtenant tenant move` and SIGKILLs it as soon as it prints a line starting with `at`.
async fn move_killed_at(config: &std::path::Path, slug: &str, at: &str) -> Vec<String> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "tenant",
            "move",
            slug,
            "--to",
            "b",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pgtenant");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.starts_with(at);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    // SIGKILL: no chance to clean up.
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    assert!(reached, "the move never printed {at:?}: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_any_step_resumes_or_cancels_and_the_tenant_lives_on_one_cluster() {
    let (db, b) = two_clusters().await;
    let proxy = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.pool.mode = pgtenant::config::PoolMode::Transaction;
        c.pool.size_per_tenant = 2;
    })
    .await;
    let dir = temp_dir("move-kill");
    let config = cli_config(&db, &dir, "default");
    let on_b = b_superuser(&b).await;
    for (i, at) in [
        "moving tenant",
        "step: copying",
        "step: catching_up",
        "step: switching",
    ]
    .into_iter()
    .enumerate()
    {
        let resume = i % 2 == 0;
        let tenant = db.onboard(&format!("killed{i}")).await;
        let slug = tenant.onboarded.slug.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (writer, committed) = spawn_writer(&proxy, &tenant, stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = move_killed_at(&config, &slug, at).await;
        let second = Instant::now();
        let (ok, out, err) = if resume {
            cli(&config, &["tenant", "move", &slug, "--to", "b"]).await
        } else {
            cli(&config, &["tenant", "cancel-move", &slug]).await
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let errors = writer.await.expect("writer");
        let ids = committed.lock().expect("ids").clone();
        println!(
            "killed at {at:?} (last line {:?}), then {} in {} ms: {} rows committed by the writer, {errors} errors",
            seen.last(),
            if resume { "resumed" } else { "cancelled" },
            second.elapsed().as_millis(),
            ids.len()
        );
        // A kill late in the switch may leave nothing to cancel: the move went through.
        let cancelled_after_switch =
            !resume && !ok && err.contains("served from cluster b already");
        assert!(ok || cancelled_after_switch, "{at}: {out}{err}");
        let expected = if resume || cancelled_after_switch {
            "b"
        } else {
            "default"
        };
        assert_eq!(cluster_of(&db, &tenant).await, expected, "{at}: {out}");

        // Exactly one cluster serves it, with every row the writer saw committed.
        let source = db.superuser().await;
        let (serving, other) = if expected == "b" {
            (&on_b, &source)
        } else {
            (&source, &on_b)
        };
        let schema = tenant.onboarded.schema.as_str();
        let present: Vec<i64> = serving
            .query(&format!("SELECT id FROM {schema}.employees"), &[])
            .await
            .expect("rows")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<&i64> = ids.iter().filter(|id| !present.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{at}: committed rows missing: {missing:?}"
        );
        if expected == "default" {
            assert!(!has_schema(other, &tenant).await, "{at}: nothing left on b");
        } else {
            let login: bool = other
                .query_one(
                    "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                    &[&tenant.onboarded.role.as_str()],
                )
                .await
                .expect("role")
                .get(0);
            assert!(!login, "{at}: the old copy cannot be written");
        }
        // And the tenant is served through pgtenant, where the directory says.
        let client = proxy.connect(&tenant).await;
        let row = client
            .query_one("SELECT inet_server_port(), count(*) FROM employees", &[])
            .await
            .expect("served");
        let port: i32 = row.get(0);
        let served_from_b = port == i32::from(b.port());
        assert_eq!(served_from_b, expected == "b", "{at}");
        assert_eq!(row.get::<_, i64>(1), present.len() as i64, "{at}");
    }
    proxy.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_logical_replication_cannot_carry_move_offline_through_the_admin_channel() {
    let (db, b) = two_clusters().await;
    let tenant = db.onboard("offline").await;
    let schema = tenant.onboarded.schema.as_str();
    let role = tenant.onboarded.role.quoted();
    db.superuser()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {schema}.notes (body text);
             CREATE UNLOGGED TABLE {schema}.scratch (id int PRIMARY KEY);
             ALTER TABLE {schema}.notes OWNER TO {role};
             ALTER TABLE {schema}.scratch OWNER TO {role};
             INSERT INTO {schema}.notes SELECT 'note ' || g FROM generate_series(1, 500) g;
             INSERT INTO {schema}.scratch SELECT g FROM generate_series(1, 20) g;
             INSERT INTO {schema}.employees (email, full_name)
               SELECT 'e' || g || '@x.test', 'E' FROM generate_series(1, 300) g;"
        ))
        .await
        .expect("tables");
    let proxy = TestProxy::start_with(|c| *c = db.config.clone()).await;
    let slug = tenant.onboarded.slug.clone();
    let client = proxy.connect(&tenant).await;
    let max_id: i64 = client
        .query_one("SELECT max(id) FROM employees", &[])
        .await
        .expect("max")
        .get(0);

    let (ok, _, err) = psql_admin(&proxy, &[&format!("MOVE TENANT {slug} TO b")]).await;
    assert!(!ok, "refused");
    assert!(
        err.contains("notes (no replica identity)")
            && err.contains("scratch (unlogged)")
            && err.contains(&format!("MOVE TENANT {slug} TO b OFFLINE")),
        "{err}"
    );
    let (ok, out, err) = psql_admin(&proxy, &[&format!("MOVE TENANT {slug} TO b OFFLINE")]).await;
    assert!(ok, "offline move: {out}{err}");
    assert!(
        out.contains(&format!("{slug}|default|b|switched|")),
        "{out}"
    );
    assert!(err.contains("copied offline"), "progress as NOTICEs: {err}");

    // The old session was on the source and is gone; a new one is on b with every row.
    assert!(client.simple_query("SELECT 1").await.is_err());
    let client = proxy.connect(&tenant).await;
    let row = client
        .query_one(
            "SELECT inet_server_port(), (SELECT count(*) FROM notes), (SELECT count(*) FROM scratch),
                    (SELECT count(*) FROM employees)",
            &[],
        )
        .await
        .expect("served from b");
    assert_eq!(row.get::<_, i32>(0), i32::from(b.port()));
    assert_eq!(
        (
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (500, 20, 301)
    );
    // The sequence came along: a new row gets an id after the copied ones.
    let new_id: i64 = client
        .query_one(
            "INSERT INTO employees (email, full_name) VALUES ('after@x.test', 'A') RETURNING id",
            &[],
        )
        .await
        .expect("insert on b")
        .get(0);
    assert!(new_id > max_id, "{new_id} after {max_id}");
    let (ok, out, err) = psql_admin(&proxy, &[&format!("FINISH MOVE {slug}"), "SHOW MOVES"]).await;
    assert!(
        ok && out.contains(&format!("{slug}|default|b|finished|")),
        "{out}{err}"
    );
    assert!(!has_schema(&db.superuser().await, &tenant).await);
    proxy.stop().await;
}
