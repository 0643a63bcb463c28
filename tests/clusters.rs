//! Several clusters (issue 9): tenants on two clusters, each cluster with its guards; isolation on both;
//! two pgtenants over one directory both serving a tenant placed on the second cluster; the fan-out over
//! both clusters with one stopped midway (reported, its tenants pending, a rerun completes them); read-only
//! sessions on a streaming replica (`pg_basebackup -R`), and a lagging or stopped replica skipped.
//!
//! The directory is a fresh database on the binary's shared cluster (the default cluster); every test
//! starts the clusters it adds itself.

mod common;

use common::clusters::*;
use common::*;
use pgtenant::fanout::progress::Silent;
use pgtenant::fanout::{FanOutOptions, TenantMigrator};
use std::time::{Duration, Instant};

/// The `-A -t` output of one admin command (rows of `|`-separated columns), asserting it succeeded.
async fn admin_rows(proxy: &TestProxy, command: &str) -> Vec<Vec<String>> {
    let (ok, stdout, stderr) = psql_admin(proxy, &[command]).await;
    assert!(ok, "{command} failed: {stderr}");
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// A connection through `proxy` as `tenant`, to database `dbname`, with startup `options` if any.
async fn tenant_session(
    proxy: &TestProxy,
    tenant: &TestTenant,
    dbname: &str,
    options: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.dbname(dbname);
    if let Some(options) = options {
        config.options(options);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// (in recovery, server port) of the server a session is on.
async fn where_is(client: &tokio_postgres::Client) -> (bool, i32) {
    let row = client
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await
        .expect("where");
    (row.get(0), row.get(1))
}

/// The body of an HTTP GET on loopback.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics listener");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_two_clusters_are_isolated_and_served_by_two_pgtenants() {
    let mut db = fresh_database().await;
    with_cluster_secret(&mut db.config, "b");
    let b = ExtraCluster::primary().await;
    let first = TestProxy::start_with(|c| *c = db.config.clone()).await;
    // The second pgtenant runs before the cluster exists: the directory's announcement reaches it. It
    // pools by transaction.
    let second = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.pool.mode = pgtenant::config::PoolMode::Transaction;
        c.pool.size_per_tenant = 2;
    })
    .await;

    let added = admin_rows(
        &first,
        &format!(
            "ADD CLUSTER b HOST '127.0.0.1' PORT {} DATABASE '{DATABASE}'",
            b.port()
        ),
    )
    .await;
    assert_eq!(added[0][0..2], ["b".to_string(), "primary".to_string()]);
    let duplicate = psql_admin(
        &first,
        &[&format!("ADD CLUSTER b HOST '127.0.0.1' PORT {}", b.port())],
    )
    .await;
    assert!(
        !duplicate.0 && duplicate.2.contains("exists already"),
        "{duplicate:?}"
    );
    let b_name = pgtenant::names::ClusterName::new("b");
    wait_until(
        "the second pgtenant learns of cluster b",
        Duration::from_secs(10),
        || async { second.proxy.clusters.current().contains(&b_name) },
    )
    .await;

    // The second cluster's guards: cluster migrations, the DDL event trigger, the secret check role, no
    // CREATE on public.
    let on_b = b.superuser().await;
    let guards = on_b
        .query_one(
            "SELECT (SELECT count(*) FROM pgtenant.shared_migrations),
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgtenant_ddl_guard'),
                    (SELECT count(*) FROM pg_roles WHERE rolname = 'pgtenant_secret_check'),
                    has_schema_privilege('public', 'public', 'CREATE'),
                    to_regclass('pgtenant.organizations') IS NULL",
            &[],
        )
        .await
        .expect("guards");
    assert!(guards.get::<_, i64>(0) >= 1, "cluster migrations recorded");
    assert_eq!(guards.get::<_, i64>(1), 1, "DDL guard on cluster b");
    assert_eq!(guards.get::<_, i64>(2), 1, "secret check role on cluster b");
    assert!(!guards.get::<_, bool>(3), "no CREATE on public for PUBLIC");
    assert!(
        guards.get::<_, bool>(4),
        "the directory stays on the default cluster"
    );

    // One tenant on each cluster; one on b through the admin channel.
    let on_default = db.onboard_on("two-a", None, None).await;
    let on_b_tenant = db.onboard_on("two-b", Some("b"), None).await;
    let created = admin_rows(
        &first,
        "CREATE TENANT 'Made On B' ADMIN 'owner@made-on-b.test' ON CLUSTER b",
    )
    .await;
    assert_eq!(
        created[0].last().map(String::as_str),
        Some("b"),
        "{created:?}"
    );
    let placed = db
        .superuser()
        .await
        .query_one(
            "SELECT cluster FROM pgtenant.organizations WHERE slug = $1",
            &[&on_b_tenant.onboarded.slug],
        )
        .await
        .expect("placement")
        .get::<_, String>(0);
    assert_eq!(placed, "b");
    // Role and schema exist where the tenant lives, and only there.
    let exists = |client: tokio_postgres::Client, role: String, schema: String| async move {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
                        EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2)",
                &[&role, &schema],
            )
            .await
            .expect("exists");
        (row.get::<_, bool>(0), row.get::<_, bool>(1))
    };
    let b_role = on_b_tenant.onboarded.role.as_str().to_string();
    let b_schema = on_b_tenant.onboarded.schema.as_str().to_string();
    assert_eq!(
        exists(b.superuser().await, b_role.clone(), b_schema.clone()).await,
        (true, true)
    );
    assert_eq!(
        exists(db.superuser().await, b_role.clone(), b_schema.clone()).await,
        (false, false)
    );
    let history_on_b: i64 = on_b
        .query_one(
            "SELECT count(*) FROM pgtenant.tenant_migrations WHERE organization_id = $1",
            &[&on_b_tenant.onboarded.organization_id],
        )
        .await
        .expect("history")
        .get(0);
    assert!(
        history_on_b >= 1,
        "the history lives on the tenant's cluster"
    );

    // Both pgtenants serve the tenant on b, on b's server.
    for proxy in [&first, &second] {
        let session = proxy.connect(&on_b_tenant).await;
        let row = session
            .query_one(
                "SELECT current_user::text, current_schema()::text, inet_server_port()",
                &[],
            )
            .await
            .expect("query on b");
        assert_eq!(row.get::<_, String>(0), b_role);
        assert_eq!(row.get::<_, String>(1), b_schema);
        assert_eq!(row.get::<_, i32>(2), i32::from(b.port()));
        session
            .batch_execute(&format!(
                "INSERT INTO employees (email, full_name) VALUES ('x{}@b.test', 'Seen On B')",
                proxy.addr.port()
            ))
            .await
            .expect("insert on b");
    }
    let seen: i64 = second
        .connect(&on_b_tenant)
        .await
        .query_one(
            "SELECT count(*) FROM employees WHERE full_name = 'Seen On B'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(seen, 2, "both pgtenants wrote to the same tenant schema");

    // Isolation on b: the other cluster's tenant does not exist there, the guards refuse what they refuse.
    let session = first.connect(&on_b_tenant).await;
    let a_schema = on_default.onboarded.schema.as_str();
    let a_role = on_default.onboarded.role.as_str();
    for (sql, code) in [
        (format!("SELECT * FROM {a_schema}.employees"), "42P01"),
        (format!("SET ROLE {a_role}"), "22023"),
        ("SELECT * FROM pgtenant.tenant_roles".to_string(), "42501"),
        (
            "SELECT * FROM pgtenant.tenant_migrations".to_string(),
            "42501",
        ),
        (
            "SELECT pgtenant_api.record_migration(99, 1)".to_string(),
            "42501",
        ),
    ] {
        let err = session.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&err), code, "{sql}: {err:?}");
    }
    let visible: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&a_schema],
        )
        .await
        .expect("namespaces")
        .get(0);
    assert_eq!(visible, 0, "cluster b holds nothing of cluster a's tenant");
    // (`public` in tenant SQL means the tenant's own schema: the virtual schema; the real one is closed.)
    let privileges = on_b
        .query_one(
            "SELECT has_schema_privilege($1, 'public', 'CREATE'),
                    has_schema_privilege($1, 'pgtenant', 'USAGE'),
                    has_schema_privilege($1, 'pgtenant_api', 'USAGE')",
            &[&b_role],
        )
        .await
        .expect("privileges");
    assert_eq!(
        (
            privileges.get::<_, bool>(0),
            privileges.get::<_, bool>(1),
            privileges.get::<_, bool>(2)
        ),
        (false, false, true)
    );
    // And the other way round.
    let session_a = first.connect(&on_default).await;
    let err = session_a
        .batch_execute(&format!("SELECT * FROM {b_schema}.employees"))
        .await
        .expect_err("b's schema from a");
    assert_eq!(sqlstate(&err), "42P01");
    // The DDL switch holds on b.
    let locked = db.onboard_on("two-b-noddl", Some("b"), Some(false)).await;
    let err = first
        .connect(&locked)
        .await
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect_err("DDL off");
    assert_eq!(sqlstate(&err), "42501");
    assert!(format!("{err:?}").contains("DDL is not allowed"), "{err:?}");

    // What the admin channel shows.
    let clusters = admin_rows(&first, "SHOW CLUSTERS").await;
    let row_b = clusters
        .iter()
        .find(|r| r[0] == "b")
        .expect("b in SHOW CLUSTERS");
    assert_eq!(row_b[1], "primary");
    assert_eq!(row_b[3], format!("127.0.0.1:{}/{DATABASE}", b.port()));
    assert_eq!(row_b[6], "3", "{row_b:?}");
    assert_ne!(row_b[7], "0", "this pgtenant has server connections to b");
    assert!(
        row_b[8].ends_with("B") || row_b[8].ends_with("bytes"),
        "{row_b:?}"
    );
    assert_eq!(row_b[11], "ok");
    assert!(clusters.iter().any(|r| r[0] == "default" && r[11] == "ok"));
    let tenants = admin_rows(&first, "SHOW TENANTS").await;
    let listed = tenants
        .iter()
        .find(|r| r[1] == on_b_tenant.onboarded.slug)
        .expect("tenant on b listed");
    assert_eq!(listed.last().map(String::as_str), Some("b"));
    assert!(
        listed[4].parse::<i32>().is_ok(),
        "version read on b: {listed:?}"
    );
    let check = admin_rows(&first, "CHECK TENANTS").await;
    assert!(
        check.iter().all(|r| r[3] == "healthy"),
        "every tenant logs in on its cluster: {check:?}"
    );

    // Dropping a tenant on b removes its role and schema there.
    admin_rows(
        &first,
        &format!(
            "DROP TENANT {slug} CONFIRM '{slug}'",
            slug = locked.onboarded.slug
        ),
    )
    .await;
    assert_eq!(
        exists(
            b.superuser().await,
            locked.onboarded.role.as_str().to_string(),
            locked.onboarded.schema.as_str().to_string()
        )
        .await,
        (false, false)
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_over_two_clusters_with_one_stopped_midway() {
    let mut db = fresh_database().await;
    with_cluster_secret(&mut db.config, "b");
    let migrations = std::env::temp_dir().join(format!(
        "pgtenant-cluster-migrations-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&migrations).expect("mkdir");
    std::fs::copy(
        repo_path("tenant-migrations/V001__initial_schema.sql"),
        migrations.join("V001__initial_schema.sql"),
    )
    .expect("copy");
    db.config.tenancy.tenant_migrations_dir = migrations.clone();
    let mut b = ExtraCluster::primary().await;
    add_cluster(&db, add_request("b", b.port(), None)).await;
    let mut on_default = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_default.push(db.onboard_on(&format!("fan-a{i}"), None, None).await);
        on_b.push(db.onboard_on(&format!("fan-b{i}"), Some("b"), None).await);
    }
    // A new file, slow enough to stop cluster b in the middle of its tenants.
    std::fs::write(
        migrations.join("V002__nickname.sql"),
        "SELECT pg_sleep(0.7);\nALTER TABLE employees ADD COLUMN nickname text;\n",
    )
    .expect("write");
    let migrator = TenantMigrator::new(&db.config, 1).expect("migrator");
    let run = {
        let migrator = migrator.clone();
        tokio::spawn(async move {
            migrator
                .run(
                    &FanOutOptions {
                        concurrency: 1,
                        ..FanOutOptions::default()
                    },
                    &Silent,
                )
                .await
        })
    };
    let b_done = || async {
        let client = b.superuser().await;
        client
            .query_one(
                "SELECT count(*) FROM pgtenant.tenant_migrations WHERE version = 2",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while b_done().await < 1 {
        assert!(Instant::now() < deadline, "no tenant on b migrated in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
    let report = run.await.expect("task").expect("run");
    println!("first run: {report}");
    assert_eq!(report.tenants, 6);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let b_name = pgtenant::names::ClusterName::new("b");
    let default = pgtenant::names::ClusterName::default_cluster();
    let of_b = &report.clusters[&b_name];
    assert!(of_b.down.is_some(), "cluster b reported down: {report}");
    assert!(of_b.migrated >= 1 && of_b.pending >= 1, "{report}");
    assert_eq!(of_b.migrated + of_b.pending, 3, "{report}");
    assert_eq!(
        report.clusters[&default].migrated, 3,
        "the default cluster went on: {report}"
    );
    assert!(report.pending.iter().all(|(_, c)| *c == b_name));
    assert!(!report.ok());
    assert!(
        report
            .to_string()
            .contains("pending (cluster down, or tenant being moved)"),
        "{report}"
    );

    // While b is down, a run reports all its tenants pending at once (their history is on b).
    let again = migrator
        .run(&FanOutOptions::default(), &Silent)
        .await
        .expect("run with b down");
    assert_eq!(again.pending.len(), 3, "{again}");
    assert_eq!(again.up_to_date, 3, "{again}");
    assert!(again.clusters[&b_name].down.is_some(), "{again}");

    b.restart().await;
    let report = TenantMigrator::new(&db.config, 2)
        .expect("migrator")
        .run(&FanOutOptions::default(), &Silent)
        .await
        .expect("rerun");
    println!("rerun: {report}");
    assert!(report.ok(), "{report}");
    assert_eq!(report.migrated, of_b.pending, "{report}");
    // Every tenant at version 2 on its own cluster, with the column.
    for (client, tenants) in [
        (db.superuser().await, &on_default),
        (b.superuser().await, &on_b),
    ] {
        for t in tenants {
            let row = client
                .query_one(
                    &format!(
                        "SELECT (SELECT max(version) FROM pgtenant.tenant_migrations WHERE organization_id = $1),
                                EXISTS (SELECT 1 FROM information_schema.columns
                                        WHERE table_schema = '{}' AND table_name = 'employees'
                                          AND column_name = 'nickname')",
                        t.onboarded.schema
                    ),
                    &[&t.onboarded.organization_id],
                )
                .await
                .expect("version");
            assert_eq!(
                row.get::<_, Option<i32>>(0),
                Some(2),
                "{}",
                t.onboarded.slug
            );
            assert!(row.get::<_, bool>(1), "{}", t.onboarded.slug);
        }
    }
    std::fs::remove_dir_all(&migrations).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sessions_go_to_a_replica_within_lag() {
    let mut db = fresh_database().await;
    with_cluster_secret(&mut db.config, "b");
    db.config.replicas.max_replica_lag_ms = 1_500;
    db.config.replicas.check_interval_ms = 100;
    let b = ExtraCluster::primary().await;
    add_cluster(&db, add_request("b", b.port(), None)).await;
    let tenant = db.onboard_on("reads", Some("b"), None).await;
    let mut replica = ExtraCluster::replica_of(&b).await;
    let metrics_port = pgcluster::free_port().expect("port");
    let proxy = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port)));
    })
    .await;
    // Added through the admin channel: checked to be a standby of b.
    let wrong = psql_admin(
        &proxy,
        &[&format!(
            "ADD CLUSTER not_a_replica HOST '127.0.0.1' PORT {} DATABASE '{DATABASE}' REPLICA OF b",
            b.port()
        )],
    )
    .await;
    assert!(!wrong.0 && wrong.2.contains("not in recovery"), "{wrong:?}");
    let added = admin_rows(
        &proxy,
        &format!(
            "ADD CLUSTER b_r1 HOST '127.0.0.1' PORT {} DATABASE '{DATABASE}' REPLICA OF b",
            replica.port()
        ),
    )
    .await;
    assert_eq!(
        added[0][0..3],
        ["b_r1".to_string(), "replica".to_string(), "b".to_string()]
    );
    let r1 = pgtenant::names::ClusterName::new("b_r1");
    let max_lag = Duration::from_millis(1_500);
    wait_until(
        "the replica is measured",
        Duration::from_secs(10),
        || async { proxy.proxy.replicas.usable(&r1, max_lag).is_ok() },
    )
    .await;

    // The database name suffix and the startup option both land on the replica.
    let writer = proxy.connect(&tenant).await;
    assert_eq!(where_is(&writer).await, (false, i32::from(b.port())));
    let reader = tenant_session(
        &proxy,
        &tenant,
        &format!("{}.ro", proxy.config.upstream.database),
        None,
    )
    .await
    .expect("read-only session");
    assert_eq!(where_is(&reader).await, (true, i32::from(replica.port())));
    let standby = tenant_session(
        &proxy,
        &tenant,
        &proxy.config.upstream.database,
        Some("-c pgtenant.target_session_attrs=standby"),
    )
    .await
    .expect("standby session");
    assert_eq!(where_is(&standby).await, (true, i32::from(replica.port())));
    let current_user: String = reader
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("user")
        .get(0);
    assert_eq!(
        current_user,
        tenant.onboarded.role.as_str(),
        "same tenant role"
    );
    let err = reader
        .batch_execute("INSERT INTO employees (email, full_name) VALUES ('r@o', 'no')")
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&err), "25006");
    // Transaction pooling: every transaction of a read-only session goes to the replica chosen at login.
    let txn = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.pool.mode = pgtenant::config::PoolMode::Transaction;
        c.pool.size_per_tenant = 1;
    })
    .await;
    wait_until(
        "the replica is measured by the second pgtenant",
        Duration::from_secs(10),
        || async { txn.proxy.replicas.usable(&r1, max_lag).is_ok() },
    )
    .await;
    let pooled = tenant_session(
        &txn,
        &tenant,
        &format!("{}.ro", txn.config.upstream.database),
        None,
    )
    .await
    .expect("transaction-pooled read-only session");
    for _ in 0..3 {
        assert_eq!(where_is(&pooled).await, (true, i32::from(replica.port())));
    }
    drop(pooled);
    txn.stop().await;
    let clients = admin_rows(&proxy, "SHOW CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|r| r.last().map(String::as_str) == Some("b_r1")),
        "{clients:?}"
    );

    // Committed data shows on the replica within the lag limit.
    writer
        .batch_execute("INSERT INTO employees (email, full_name) VALUES ('w@b.test', 'Replicated')")
        .await
        .expect("write");
    let written = Instant::now();
    wait_until("the row reaches the replica", max_lag, || async {
        reader
            .query_one(
                "SELECT count(*) FROM employees WHERE full_name = 'Replicated'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    println!("replicated within {:?}", written.elapsed());
    let metrics = http_get(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("pgtenant_replica_lag_seconds{replica=\"b_r1\"}")
            && metrics.contains("pgtenant_replica_up{replica=\"b_r1\"} 1")
            && metrics.contains("cluster=\"b_r1\",state=\"active\"}"),
        "{metrics}"
    );
    let shown = admin_rows(&proxy, "SHOW CLUSTERS").await;
    let row = shown
        .iter()
        .find(|r| r[0] == "b_r1")
        .expect("replica listed");
    assert_eq!((row[1].as_str(), row[2].as_str()), ("replica", "b"));
    assert!(row[9].parse::<u64>().is_ok(), "lag_ms: {row:?}");
    assert_eq!(row[11], "ok", "{row:?}");

    // A lagging replica (replay paused, the primary writing) is skipped: prefer-standby falls back to the
    // primary, standby is refused with 57P03 saying why.
    replica
        .superuser()
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    writer
        .batch_execute("INSERT INTO employees (email, full_name) VALUES ('w2@b.test', 'Later')")
        .await
        .expect("write");
    wait_until(
        "the replica counts as lagging",
        Duration::from_secs(10),
        || async { proxy.proxy.replicas.usable(&r1, max_lag).is_err() },
    )
    .await;
    let fallback = tenant_session(
        &proxy,
        &tenant,
        &format!("{}.ro", proxy.config.upstream.database),
        None,
    )
    .await
    .expect("prefer-standby falls back");
    assert_eq!(where_is(&fallback).await, (false, i32::from(b.port())));
    let refused = tenant_session(
        &proxy,
        &tenant,
        &proxy.config.upstream.database,
        Some("-c pgtenant.target_session_attrs=read-only"),
    )
    .await
    .expect_err("no replica within lag");
    assert_eq!(sqlstate(&refused), "57P03", "{refused:?}");
    let detail = refused
        .as_db_error()
        .and_then(|e| e.detail())
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("ms behind"), "{detail}");
    let shown = admin_rows(&proxy, "SHOW CLUSTERS").await;
    let row = shown
        .iter()
        .find(|r| r[0] == "b_r1")
        .expect("replica listed");
    assert!(row[11].starts_with("skipped:"), "{row:?}");

    // Replay resumed: usable again.
    replica
        .superuser()
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    wait_until(
        "the replica catches up",
        Duration::from_secs(10),
        || async { proxy.proxy.replicas.usable(&r1, max_lag).is_ok() },
    )
    .await;
    let back = tenant_session(
        &proxy,
        &tenant,
        &format!("{}.ro", proxy.config.upstream.database),
        None,
    )
    .await
    .expect("replica again");
    assert!(where_is(&back).await.0, "on the replica again");

    // A stopped replica is skipped the same way.
    drop((reader, standby, back));
    replica.stop().await;
    wait_until(
        "the stopped replica is skipped",
        Duration::from_secs(10),
        || async { proxy.proxy.replicas.usable(&r1, max_lag).is_err() },
    )
    .await;
    let fallback = tenant_session(
        &proxy,
        &tenant,
        &format!("{}.ro", proxy.config.upstream.database),
        None,
    )
    .await
    .expect("falls back to the primary");
    assert_eq!(where_is(&fallback).await, (false, i32::from(b.port())));
    let refused = tenant_session(
        &proxy,
        &tenant,
        &proxy.config.upstream.database,
        Some("-c pgtenant.target_session_attrs=standby"),
    )
    .await
    .expect_err("no replica up");
    assert_eq!(sqlstate(&refused), "57P03", "{refused:?}");
    let bad = tenant_session(
        &proxy,
        &tenant,
        &proxy.config.upstream.database,
        Some("-c pgtenant.target_session_attrs=sometimes"),
    )
    .await
    .expect_err("unknown value");
    assert_eq!(sqlstate(&bad), "22023", "{bad:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_places_on_clusters() {
    let db = fresh_database().await;
    let b = ExtraCluster::primary().await;
    let dir = std::env::temp_dir().join(format!("pgtenant-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = cli_config(&db, &dir, "default");
    let by_count = cli_config(&db, &dir, "fewest_tenants");
    let cli_with = |config: std::path::PathBuf, args: Vec<String>| async move {
        let mut all = vec!["--config".to_string(), config.display().to_string()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_program(env!("CARGO_BIN_EXE_pgtenant"), &refs, &[], None).await
    };
    let cli = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let mut all = vec!["--config".to_string(), config.display().to_string()];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_program(env!("CARGO_BIN_EXE_pgtenant"), &refs, &[], None).await
        }
    };
    let (ok, out, err) = cli(vec![
        "cluster".into(),
        "add".into(),
        "b".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        b.port().to_string(),
        "--database".into(),
        DATABASE.into(),
    ])
    .await;
    assert!(ok, "cluster add: {out}{err}");
    assert!(out.contains("added cluster b (primary)"), "{out}");
    let (ok, out, err) = cli(vec![
        "onboard".into(),
        "--name".into(),
        "Cli On B".into(),
        "--admin-email".into(),
        format!("cli-{}@b.test", uuid::Uuid::new_v4().simple()),
        "--cluster".into(),
        "b".into(),
    ])
    .await;
    assert!(ok, "onboard: {out}{err}");
    assert!(out.contains("cluster:      b"), "{out}");
    // By the fewest tenants: the default cluster (0 against 1), then b (1 each: the first name).
    for expected in ["default", "b"] {
        let (ok, out, err) = cli_with(
            by_count.clone(),
            vec![
                "onboard".into(),
                "--name".into(),
                format!("Placed {expected}"),
                "--admin-email".into(),
                format!("placed-{}@b.test", uuid::Uuid::new_v4().simple()),
            ],
        )
        .await;
        assert!(ok, "onboard by placement: {out}{err}");
        assert!(out.contains(&format!("cluster:      {expected}")), "{out}");
    }
    let (ok, out, err) = cli(vec!["cluster".into(), "list".into()]).await;
    assert!(ok, "cluster list: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_else(|| panic!("b listed: {out}"));
    assert!(
        line.contains("primary") && line.trim_end().ends_with("ok"),
        "{line}"
    );
    let (ok, out, err) = cli(vec!["tenant".into(), "list".into()]).await;
    assert!(ok, "tenant list: {out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-on-b ") && l.trim_end().ends_with(" b")),
        "{out}"
    );
    let (ok, out, err) = cli(vec!["migrate".into(), "status".into()]).await;
    assert!(ok, "migrate status: {out}{err}");
    assert!(out.contains("cli-on-b"), "{out}");
    let (ok, out, err) = cli(vec!["tenant".into(), "check".into()]).await;
    assert!(ok, "tenant check: {out}{err}");
    let (ok, out, err) = cli(vec!["cluster".into(), "guards".into(), "b".into()]).await;
    assert!(
        ok && out.contains("applied: []"),
        "guards again: {out}{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
