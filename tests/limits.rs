//! Limits, queueing, fairness, drain and metrics: a tenant hammering with 200 clients does not starve
//! another; the wait ends in 53300; SIGTERM under load loses nothing committed and leaves no half-done
//! transaction; PAUSE holds and RESUME releases; SHOW STATS and /metrics count what happened.

mod common;

use common::*;
use pgtenant::auth::{mint_hs256, MintRequest};
use pgtenant::config::PoolMode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("operator")
        .password(admin_token())
        .dbname("pgtenant");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hammering_tenant_does_not_starve_another() {
    let busy = onboard("hammer").await;
    let quiet = onboard("quiet").await;
    let proxy = Arc::new(
        TestProxy::start_with(|c| {
            c.pool.mode = PoolMode::Transaction;
            c.pool.max_server_connections = 4;
            c.pool.size_per_tenant = 4;
            c.pool.reserve_per_tenant = 1;
            c.pool.acquire_timeout_ms = 20_000;
        })
        .await,
    );
    // 200 clients of one tenant, each running short transactions back to back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy_done = Arc::new(AtomicUsize::new(0));
    let mut hammers = Vec::new();
    for _ in 0..200 {
        let proxy = proxy.clone();
        let busy = busy.clone();
        let stop = stop.clone();
        let done = busy_done.clone();
        hammers.push(tokio::spawn(async move {
            let client = proxy.connect(&busy).await;
            while !stop.load(Ordering::Relaxed) {
                client
                    .simple_query("SELECT pg_sleep(0.005)")
                    .await
                    .expect("hammer query");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Let the hammering tenant take every connection it can.
    let deadline = Instant::now() + Duration::from_secs(30);
    while busy_done.load(Ordering::Relaxed) < 400 {
        assert!(
            Instant::now() < deadline,
            "the busy tenant made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The quiet tenant is served all the same, every time.
    let quiet_client = proxy.connect(&quiet).await;
    for i in 0..20 {
        let rows = simple_rows(&quiet_client, &format!("SELECT {i}")).await;
        assert_eq!(rows, vec![i.to_string()]);
    }
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.await.expect("hammer task");
    }
    let stats = proxy.proxy.pools.stats();
    let total: usize = stats.iter().map(|s| s.active + s.idle).sum();
    assert!(total <= 4, "global cap held: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_the_timeout_is_53300_and_the_session_survives() {
    let tenant = onboard("waits").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size_per_tenant = 1;
        c.pool.acquire_timeout_ms = 300;
    })
    .await;
    let holder = proxy.connect(&tenant).await;
    let waiter = proxy.connect(&tenant).await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("hold the only connection");
    let err = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("no connection within the timeout");
    assert_eq!(sqlstate(&err), "53300");
    holder.batch_execute("COMMIT").await.expect("release");
    assert_eq!(
        simple_rows(&waiter, "SELECT 2").await,
        vec!["2"],
        "the waiting session still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let tenant = onboard("paused").await;
    let other = onboard("unpaused").await;
    let proxy = TestProxy::start_with(|c| c.pool.mode = PoolMode::Transaction).await;
    let client = proxy.connect(&tenant).await;
    let bystander = proxy.connect(&other).await;
    let admin = admin_client(&proxy).await;
    admin
        .simple_query(&format!("PAUSE {}", tenant.onboarded.slug))
        .await
        .expect("pause");
    let held = tokio::spawn(async move { simple_rows(&client, "SELECT 'ran'").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a paused tenant's transaction ran");
    assert_eq!(
        simple_rows(&bystander, "SELECT 'other'").await,
        vec!["other"],
        "other tenants are not paused"
    );
    admin
        .simple_query(&format!("RESUME {}", tenant.onboarded.slug))
        .await
        .expect("resume");
    let rows = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released after RESUME")
        .expect("task");
    assert_eq!(rows, vec!["ran"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_prometheus_metrics_count_the_traffic() {
    let tenant = onboard("metered").await;
    let metrics_port = pgcluster::free_port().expect("port");
    let proxy = TestProxy::start_with(|c| {
        c.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port)));
    })
    .await;
    let client = proxy.connect(&tenant).await;
    for _ in 0..25 {
        client.simple_query("SELECT 1").await.expect("query");
    }
    let _ = client.simple_query("SELECT 1/0").await;
    let admin = admin_client(&proxy).await;
    let stats = simple_rows(&admin, "SHOW STATS").await;
    let row = stats
        .iter()
        .find(|r| r.starts_with(&format!("{}|", tenant.onboarded.slug)))
        .unwrap_or_else(|| panic!("tenant missing from SHOW STATS: {stats:?}"));
    let fields: Vec<&str> = row.split('|').collect();
    let transactions: u64 = fields[4].parse().expect("transactions");
    let queries: u64 = fields[5].parse().expect("queries");
    let errors: u64 = fields[12].parse().expect("errors");
    // The last ReadyForQuery may still be on its way when the error reached the client.
    assert!(transactions >= 25 && queries >= 25, "{row}");
    assert_eq!(errors, 1, "{row}");
    assert!(
        fields[6].parse::<u64>().expect("p50") > 0,
        "latency recorded: {row}"
    );

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .expect("metrics port");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "pgtenant_transactions_total{{tenant=\"{}\"}}",
                tenant.onboarded.slug
            ))
        })
        .unwrap_or_else(|| panic!("no transactions counter for the tenant: {body}"));
    let value: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(value >= 25, "{line}");
    assert!(body.contains("pgtenant_query_latency_seconds{"), "{body}");
    assert!(body.contains("pgtenant_clients{"), "{body}");
}

/// Writes a config file for the real binary against the test cluster.
fn binary_config(listen_port: u16, mode: &str) -> std::path::PathBuf {
    let c = cluster();
    let path = std::env::temp_dir().join(format!(
        "pgtenant-limits-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\nshutdown_grace_secs = 20\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nadmin_user = \"{}\"\n\n\
         [pool]\nmode = \"{mode}\"\nsize_per_tenant = 4\n\n\
         [auth]\nalgorithms = [\"HS256\"]\n\n\
         [tenancy]\ntenant_migrations_dir = \"{}\"\nshared_migrations_dir = \"{}\"\n",
        c.cluster.port(),
        c.cluster.superuser(),
        repo_path("tenant-migrations").display(),
        repo_path("shared-migrations").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn sigterm_under_load(mode: &str) {
    let tenant = onboard(&format!("sigterm-{mode}")).await;
    let admin = superuser().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.ledger (txn int NOT NULL, part int NOT NULL);
             ALTER TABLE {schema}.ledger OWNER TO {role};",
            schema = tenant.onboarded.schema.quoted(),
            role = tenant.onboarded.role.quoted(),
        ))
        .await
        .expect("table");
    let port = pgcluster::free_port().expect("port");
    let config = binary_config(port, mode);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--config", &config.display().to_string(), "serve"])
        .env("PGTENANT_SERVER_SECRET", SERVER_SECRET)
        .env("PGTENANT_JWT_SECRET", JWT_SECRET)
        .env(
            "PGTENANT_ADMIN_PASSWORD",
            cluster().cluster.superuser_password(),
        )
        .env("PGTENANT_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("pgtenant serve");
    let connect_config = |token: String| {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(port)
            .user(&tenant.email)
            .password(token)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(5));
        c
    };
    // Wait until it accepts logins.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if connect_config(tenant.token())
            .connect(tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "pgtenant serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Eight clients commit two-row transactions in a loop and note every commit they saw succeed.
    let committed = Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let next_id = Arc::new(AtomicUsize::new(1));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let config = connect_config(tenant.token());
        let committed = committed.clone();
        let next_id = next_id.clone();
        workers.push(tokio::spawn(async move {
            let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await else {
                return;
            };
            tokio::spawn(connection);
            loop {
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i32;
                let sql = format!(
                    "BEGIN; INSERT INTO ledger VALUES ({id}, 1); SELECT pg_sleep(0.002); INSERT INTO ledger VALUES ({id}, 2); COMMIT;"
                );
                match client.batch_execute(&sql).await {
                    Ok(()) => committed.lock().expect("lock").push(id),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().expect("pid") as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("pgtenant stops after SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let committed = committed.lock().expect("lock").clone();
    assert!(
        committed.len() > 10,
        "load ran: {} commits",
        committed.len()
    );
    let rows = admin
        .query(
            &format!(
                "SELECT txn, count(*) FROM {}.ledger GROUP BY txn",
                tenant.onboarded.schema.quoted()
            ),
            &[],
        )
        .await
        .expect("ledger");
    let counts: std::collections::HashMap<i32, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (txn, count) in &counts {
        assert_eq!(*count, 2, "transaction {txn} is half done");
    }
    for id in &committed {
        assert_eq!(
            counts.get(id),
            Some(&2),
            "committed transaction {id} is missing"
        );
    }
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_in_transaction_pooling() {
    sigterm_under_load("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_in_session_pooling() {
    sigterm_under_load("session").await;
}

/// A client still in a transaction when the shutdown grace period runs out gets 57P01, in both pooling
/// modes (transaction pooling once ignored the forced close and only had its socket cut).
async fn forced_close_after_grace(mode: PoolMode, label: &str) {
    let tenant = onboard(label).await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.mode = mode;
        c.server.shutdown_grace_secs = 1;
    })
    .await;
    let (client, connection) = proxy
        .client_config(&tenant.email, &tenant.token())
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .simple_query("SELECT 1")
        .await
        .expect("in the transaction");
    let started = Instant::now();
    proxy.proxy.shutdown.cancel();
    // The connection task ends with the server's error once pgtenant closes the session.
    let ended = tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: the session was not closed after the grace period"))
        .expect("connection task");
    let err = ended.expect_err("the connection ends with an error");
    assert_eq!(sqlstate(&err), "57P01", "{mode:?}: {err}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{mode:?}: closed before the grace period"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_close_after_the_grace_period_in_transaction_pooling() {
    forced_close_after_grace(PoolMode::Transaction, "forcetxn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_close_after_the_grace_period_in_session_pooling() {
    forced_close_after_grace(PoolMode::Session, "forcesess").await;
}
