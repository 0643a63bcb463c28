//! Driver conformance: each real driver of the test suite (psycopg 3, asyncpg, node-postgres, pgjdbc) runs the
//! same script of protocol features directly against PostgreSQL (logged in as the tenant's own role), through
//! pgtenant in session pooling and through pgtenant in transaction pooling (several copies at once over a pool
//! of 2, so server connections change hands), and the transcripts — rows, command tags, errors with SQLSTATE,
//! notices, COPY bytes — must be equal. Then the session features transaction pooling cannot keep (the table
//! in README.md, "Pooling modes") are checked one by one against what that table says.
//!
//! The scripts are tests/clients/conformance_psycopg.py, tests/clients/conformance_asyncpg.py,
//! tests/clients/node/conformance.js (`npm ci` in tests/clients/node installs its packages) and
//! tests/clients/jdbc/Conformance.java (run by Java's single-file source launcher with pgjdbc's jar, Debian's
//! libpostgresql-jdbc-java: /usr/share/java/postgresql.jar, or the jar named by `PGTENANT_JDBC_JAR`). Under
//! CI (`CI=true`) a missing driver fails the test; elsewhere the test is skipped with the reason printed. With
//! `PGTENANT_CONFORMANCE_OUT=DIR` every run's transcript (stdout) and stderr are written to DIR; with
//! `PGTENANT_TEST_LOG=pgtenant=debug` pgtenant's log goes to stderr; with `PGTENANT_JDBC_TRACE=DIR` pgjdbc
//! writes its protocol trace (every message it sends and receives) to DIR/jdbc-<table prefix>.log.

mod common;

use common::drivers::under_ci;
use common::*;
use pgtenant::config::PoolMode;
use pgtenant::credentials::RolePasswords;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

/// Server connections per tenant in transaction pooling.
const TXN_POOL_SIZE: usize = 2;
/// Copies of a script run at once through transaction pooling.
const TXN_COPIES: usize = 4;

// ---------------------------------------------------------------------------------------------------------
// Drivers and their scripts
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Driver {
    Psycopg,
    Asyncpg,
    NodePostgres,
    Jdbc,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::NodePostgres => "node-postgres",
            Driver::Jdbc => "pgjdbc",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Driver::Psycopg | Driver::Asyncpg => "python3",
            Driver::NodePostgres => "node",
            Driver::Jdbc => "java",
        }
    }

    /// The arguments before the script's path.
    fn launcher_args(self) -> Result<Vec<String>, String> {
        match self {
            // C1 only and the serial collector: half the CPU for a short-lived JVM (five run at once here).
            Driver::Jdbc => Ok(vec![
                "-XX:TieredStopAtLevel=1".into(),
                "-XX:+UseSerialGC".into(),
                "-cp".into(),
                jdbc_jar()?.display().to_string(),
            ]),
            _ => Ok(Vec::new()),
        }
    }

    fn script(self) -> String {
        let rel = match self {
            Driver::Psycopg => "tests/clients/conformance_psycopg.py",
            Driver::Asyncpg => "tests/clients/conformance_asyncpg.py",
            Driver::NodePostgres => "tests/clients/node/conformance.js",
            Driver::Jdbc => "tests/clients/jdbc/Conformance.java",
        };
        repo_path(rel).display().to_string()
    }

    /// Whether the driver can be loaded, and how to install it if not.
    fn probe(self) -> Result<(), String> {
        if let Driver::Jdbc = self {
            java_source_launcher()?;
        }
        let (args, install): (Vec<&str>, &str) = match self {
            Driver::Psycopg => (
                vec!["-c", "import psycopg"],
                "pip install \"psycopg[binary]\"",
            ),
            Driver::Asyncpg => (vec!["-c", "import asyncpg"], "pip install asyncpg"),
            Driver::NodePostgres => (
                vec![
                    "-e",
                    "require('pg'); require('pg-copy-streams'); require('pg-cursor')",
                ],
                "npm ci in tests/clients/node",
            ),
            // pgjdbc's Main-Class prints the driver's name and version (and exits 1): the jar loads.
            Driver::Jdbc => (vec!["org.postgresql.util.PGJDBCMain"], JDBC_INSTALL),
        };
        let mut command = std::process::Command::new(self.program());
        match self.launcher_args() {
            Ok(launcher) => command.args(launcher),
            Err(why) => {
                return Err(format!(
                    "{} cannot be loaded ({install}): {why}",
                    self.name()
                ))
            }
        };
        let out = command
            .args(&args)
            .current_dir(repo_path("tests/clients/node"))
            .output();
        let loaded = |out: &std::process::Output| match self {
            Driver::Jdbc => String::from_utf8_lossy(&out.stdout).contains("PostgreSQL JDBC Driver"),
            _ => out.status.success(),
        };
        match out {
            Ok(out) if loaded(&out) => Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let why = stderr
                    .lines()
                    .find(|l| l.contains("Error"))
                    .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Err(format!(
                    "{} cannot be loaded ({install}): {why}",
                    self.name()
                ))
            }
            Err(e) => Err(format!(
                "{} cannot be run ({e}); {} needs it ({install})",
                self.program(),
                self.name()
            )),
        }
    }
}

/// The script runs in Java's single-file source launcher, which compiles it: a JDK's `java`, not a JRE's.
fn java_source_launcher() -> Result<(), String> {
    let modules = std::process::Command::new("java")
        .arg("--list-modules")
        .output()
        .map_err(|e| format!("java cannot be run ({e}); pgjdbc needs it ({JDBC_INSTALL})"))?;
    if String::from_utf8_lossy(&modules.stdout).contains("jdk.compiler@") {
        Ok(())
    } else {
        Err(format!(
            "java has no jdk.compiler module (a JRE?): Java's source launcher, which runs the pgjdbc script, \
             needs a JDK ({JDBC_INSTALL})"
        ))
    }
}

const JDBC_INSTALL: &str =
    "apt-get install libpostgresql-jdbc-java, and default-jdk-headless if java is missing";

/// pgjdbc's jar: `PGTENANT_JDBC_JAR`, Debian's /usr/share/java/postgresql.jar, or the one
/// libpostgresql-jdbc-java installed (`dpkg -L`).
fn jdbc_jar() -> Result<std::path::PathBuf, String> {
    if let Ok(jar) = std::env::var("PGTENANT_JDBC_JAR") {
        let jar = std::path::PathBuf::from(jar);
        return if jar.is_file() {
            Ok(jar)
        } else {
            Err(format!("PGTENANT_JDBC_JAR={} is not a file", jar.display()))
        };
    }
    let debian = std::path::PathBuf::from("/usr/share/java/postgresql.jar");
    if debian.is_file() {
        return Ok(debian);
    }
    let listed = std::process::Command::new("dpkg")
        .args(["-L", "libpostgresql-jdbc-java"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    listed
        .lines()
        .map(std::path::PathBuf::from)
        .find(|p| {
            p.extension().is_some_and(|e| e == "jar")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("postgresql"))
                && p.is_file()
        })
        .ok_or_else(|| {
            "no pgjdbc jar: not at /usr/share/java/postgresql.jar, none listed by dpkg -L \
             libpostgresql-jdbc-java, PGTENANT_JDBC_JAR not set"
                .to_string()
        })
}

/// True if the driver is there. Missing: the test fails under CI and is skipped (with the reason) elsewhere.
fn require_driver(driver: Driver) -> bool {
    match driver.probe() {
        Ok(()) => true,
        Err(why) if under_ci() => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why} (this test fails instead under CI=true)");
            false
        }
    }
}

/// What one run of a conformance script printed.
struct Run {
    label: String,
    ok: bool,
    steps: Vec<Value>,
    stdout: String,
    stderr: String,
    /// Server backends the run's connections were on between steps (reported on stderr by the script).
    backends: BTreeSet<i64>,
}

impl Run {
    fn complete(&self) -> bool {
        self.ok && self.steps.last().and_then(|s| s.get("step")) == Some(&Value::from("end"))
    }

    fn describe(&self) -> String {
        format!(
            "{}: success={}, {} steps\n--- stdout (last 4000 bytes) ---\n{}\n--- stderr (last 4000 bytes) ---\n{}",
            self.label,
            self.ok,
            self.steps.len(),
            tail(&self.stdout, 4000),
            tail(&script_errors(&self.stderr), 4000)
        )
    }
}

/// stderr without the script's `backend_pid` lines.
fn script_errors(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("backend_pid "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

async fn run_script(driver: Driver, url: &str, label: String) -> Run {
    let prefix = format!("cf_{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let script = driver.script();
    let mut args = driver
        .launcher_args()
        .unwrap_or_else(|why| panic!("{label}: {why}"));
    args.extend([script.clone(), url.to_string(), prefix]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(240),
        run_program(driver.program(), &args, &[], None),
    )
    .await
    .unwrap_or_else(|_| panic!("{label}: {script} did not finish within 240 s"));
    let steps = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| Value::from(format!("unparsable line ({e}): {l}")))
        })
        .collect();
    if let Ok(dir) = std::env::var("PGTENANT_CONFORMANCE_OUT") {
        // For reading transcripts side by side: one .jsonl (stdout) and one .err (stderr) per run.
        let file: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("PGTENANT_CONFORMANCE_OUT");
        std::fs::write(dir.join(format!("{file}.jsonl")), &stdout).expect("write transcript");
        std::fs::write(dir.join(format!("{file}.err")), &stderr).expect("write stderr");
    }
    let backends = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("backend_pid "))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    Run {
        label,
        ok,
        steps,
        stdout,
        stderr,
        backends,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------------------

/// A URL straight to PostgreSQL, logged in as the tenant's own role (search_path: its schema).
fn direct_url(tenant: &TestTenant) -> String {
    let c = &cluster().cluster;
    let role = tenant.onboarded.role.as_str();
    let password = RolePasswords::new(SERVER_SECRET.as_bytes()).password_for(role);
    format!(
        "postgresql://{}:{}@{}:{}/{DATABASE}?sslmode=disable",
        uri_component(role),
        uri_component(&password),
        c.host(),
        c.port()
    )
}

/// A URL through `proxy` with the tenant admin's token.
fn proxy_url(proxy: &TestProxy, tenant: &TestTenant) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
        uri_component(&tenant.email),
        uri_component(&tenant.token()),
        proxy.addr.port(),
        proxy.config.upstream.database
    )
}

async fn txn_proxy() -> TestProxy {
    TestProxy::start_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size_per_tenant = TXN_POOL_SIZE;
    })
    .await
}

/// Polls pg_stat_activity for a role's server connections in the background; keeps the most seen at once.
struct BackendMonitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<i64>,
}

impl BackendMonitor {
    async fn start(role: &str) -> BackendMonitor {
        let admin = superuser().await;
        let role = role.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let n = common::backends::backends_of(&admin, &role).await;
                max = max.max(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max
        });
        BackendMonitor { stop, task }
    }

    /// The most server connections seen at once.
    async fn finish(self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("monitor")
    }
}

// ---------------------------------------------------------------------------------------------------------
// Comparing transcripts
// ---------------------------------------------------------------------------------------------------------

/// The first place where `want` and `got` differ: (JSON path, want there, got there).
fn first_difference(path: String, want: &Value, got: &Value) -> Option<(String, Value, Value)> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (wv, gv) = (
                    w.get(k).cloned().unwrap_or(Value::Null),
                    g.get(k).cloned().unwrap_or(Value::Null),
                );
                if w.contains_key(k) != g.contains_key(k) {
                    return Some((
                        format!("{path}.{k}"),
                        w.get(k).cloned().unwrap_or(Value::from("<absent>")),
                        g.get(k).cloned().unwrap_or(Value::from("<absent>")),
                    ));
                }
                first_difference(format!("{path}.{k}"), &wv, &gv)
            })
        }
        (Value::Array(w), Value::Array(g)) => {
            let n = w.len().max(g.len());
            (0..n).find_map(|i| match (w.get(i), g.get(i)) {
                (Some(wv), Some(gv)) => first_difference(format!("{path}[{i}]"), wv, gv),
                (wv, gv) => Some((
                    format!("{path}[{i}]"),
                    wv.cloned().unwrap_or(Value::from("<absent>")),
                    gv.cloned().unwrap_or(Value::from("<absent>")),
                )),
            })
        }
        _ if want == got => None,
        _ => Some((path, want.clone(), got.clone())),
    }
}

fn short(v: &Value, n: usize) -> String {
    let s = v.to_string();
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn step_name(v: &Value) -> String {
    v.get("step")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// None if `run`'s transcript equals the baseline's, else a readable account of the differences.
fn compare(baseline: &Run, run: &Run) -> Option<String> {
    let n = baseline.steps.len().max(run.steps.len());
    let differing: Vec<usize> = (0..n)
        .filter(|&i| baseline.steps.get(i) != run.steps.get(i))
        .collect();
    if differing.is_empty() && run.complete() {
        return None;
    }
    let mut out = format!(
        "{} differs from {}: {} of {} steps differ",
        run.label,
        baseline.label,
        differing.len(),
        n
    );
    if let Some(&i) = differing.first() {
        let absent = Value::from("<absent>");
        let want = baseline.steps.get(i).unwrap_or(&absent);
        let got = run.steps.get(i).unwrap_or(&absent);
        out.push_str(&format!(
            "\nfirst difference at step #{i} \"{}\"",
            step_name(want)
        ));
        if let Some((path, w, g)) = first_difference(String::from("$"), want, got) {
            out.push_str(&format!(
                " at {path}:\n    {:<18} {}\n    {:<18} {}",
                "directly:",
                short(&w, 1500),
                format!("{}:", run.label),
                short(&g, 1500)
            ));
        }
        out.push_str(&format!(
            "\n  whole step directly: {}\n  whole step {}: {}",
            short(want, 3000),
            run.label,
            short(got, 3000)
        ));
        let names: Vec<String> = differing
            .iter()
            .skip(1)
            .take(30)
            .map(|&j| {
                step_name(
                    run.steps
                        .get(j)
                        .or(baseline.steps.get(j))
                        .unwrap_or(&absent),
                )
            })
            .collect();
        if !names.is_empty() {
            out.push_str(&format!("\n  other differing steps: {}", names.join(", ")));
        }
    }
    if !run.complete() {
        out.push_str(&format!("\n{}", run.describe()));
    } else {
        out.push_str(&format!(
            "\n--- stderr of {} (last 2000 bytes) ---\n{}",
            run.label,
            tail(&script_errors(&run.stderr), 2000)
        ));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------------------
// 1. The same script directly, in session pooling and in transaction pooling
// ---------------------------------------------------------------------------------------------------------

/// Stores the tenant role's (derived) password again, hashed by PostgreSQL with its default SCRAM iterations.
async fn store_password_with_postgres_verifier(tenant: &TestTenant) {
    let role = tenant.onboarded.role.as_str();
    let password = RolePasswords::new(SERVER_SECRET.as_bytes()).password_for(role);
    superuser()
        .await
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE \"{}\" PASSWORD '{}'",
            role.replace('"', "\"\""),
            password.replace('\'', "''")
        ))
        .await
        .expect("ALTER ROLE … PASSWORD");
}

async fn conformance(driver: Driver) {
    if !require_driver(driver) {
        return;
    }
    if let Ok(filter) = std::env::var("PGTENANT_TEST_LOG") {
        // pgtenant's own log (e.g. PGTENANT_TEST_LOG=pgtenant=debug), for reading a difference.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let started = Instant::now();
    let name = driver.name();

    // Baseline: straight to PostgreSQL as the tenant's own role. If it fails, the script (or the environment) is
    // wrong, not pgtenant.
    let direct_tenant = onboard("conf-direct").await;
    if let Driver::Jdbc = driver {
        // pgjdbc 42.5's SCRAM client (the ongres library) refuses a server-first message with fewer than 4096
        // iterations ('iteration must be >= 4096', the count RFC 7677 asks of servers), and pgtenant stores
        // tenant verifiers with 16. Through pgtenant the client sends its token in cleartext, so only this
        // direct login needs the same password stored with PostgreSQL's own verifier (4096 iterations).
        store_password_with_postgres_verifier(&direct_tenant).await;
    }
    let baseline = run_script(
        driver,
        &direct_url(&direct_tenant),
        format!("{name} directly against PostgreSQL"),
    )
    .await;
    assert!(
        baseline.complete(),
        "the script fails directly against PostgreSQL (the script is wrong, not pgtenant)\n{}",
        baseline.describe()
    );
    assert!(
        baseline.steps.len() > 50,
        "{} steps only\n{}",
        baseline.steps.len(),
        baseline.describe()
    );

    let session = TestProxy::start().await;
    let session_tenant = onboard("conf-session").await;
    let txn = txn_proxy().await;
    let txn_tenant = onboard("conf-txn").await;
    let session_url = proxy_url(&session, &session_tenant);
    let txn_url = proxy_url(&txn, &txn_tenant);

    let monitor = BackendMonitor::start(txn_tenant.onboarded.role.as_str()).await;
    let session_run = run_script(driver, &session_url, format!("{name} in session pooling"));
    let txn_runs = futures_util::future::join_all((1..=TXN_COPIES).map(|i| {
        run_script(
            driver,
            &txn_url,
            format!("{name} in transaction pooling (copy {i} of {TXN_COPIES})"),
        )
    }));
    let (session_run, txn_runs) = tokio::join!(session_run, txn_runs);
    let most_at_once = monitor.finish().await;

    let mut failures = Vec::new();
    let mut verdicts = Vec::new();
    for run in std::iter::once(&session_run).chain(txn_runs.iter()) {
        match compare(&baseline, run) {
            None => verdicts.push(format!("{}: equal", run.label)),
            Some(report) => {
                verdicts.push(format!("{}: DIFFERENT", run.label));
                failures.push(report);
            }
        }
    }
    let txn_backends: BTreeSet<i64> = txn_runs.iter().flat_map(|r| r.backends.clone()).collect();
    eprintln!(
        "{name}: {} steps; {}; transaction pooling: {TXN_COPIES} copies, at most {most_at_once} server \
         connections at once, backends {:?} (per copy: {:?}); {:?}",
        baseline.steps.len(),
        verdicts.join("; "),
        txn_backends,
        txn_runs
            .iter()
            .map(|r| r.backends.len())
            .collect::<Vec<_>>(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{name}: transcripts differ from PostgreSQL's\n{}\n\n{}",
        verdicts.join("\n"),
        failures.join("\n\n==========\n\n")
    );
    // The copies shared the pool: more clients than server connections at any time. (A connection the pool
    // replaced adds a backend over the run, so the distinct backends are only reported.)
    assert!(
        most_at_once >= 1 && most_at_once <= TXN_POOL_SIZE as i64,
        "{name}: {most_at_once} server connections at once in transaction pooling (pool of {TXN_POOL_SIZE}); \
         backends seen: {txn_backends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_transcripts_match_postgres_in_both_pooling_modes() {
    conformance(Driver::Psycopg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_transcripts_match_postgres_in_both_pooling_modes() {
    conformance(Driver::Asyncpg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_transcripts_match_postgres_in_both_pooling_modes() {
    conformance(Driver::NodePostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_transcripts_match_postgres_in_both_pooling_modes() {
    conformance(Driver::Jdbc).await;
}

// ---------------------------------------------------------------------------------------------------------
// 2. What transaction pooling cannot keep: the README table, row by row
// ---------------------------------------------------------------------------------------------------------

/// A notice as the client saw it: (severity, SQLSTATE, message).
type Notice = (String, String, String);

struct Conn {
    client: tokio_postgres::Client,
    notices: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
}

impl Conn {
    async fn open(config: tokio_postgres::Config) -> Conn {
        let (client, notices) = connect_with_notices(config).await;
        Conn { client, notices }
    }

    async fn through(proxy: &TestProxy, tenant: &TestTenant) -> Conn {
        Conn::open(proxy.client_config(&tenant.email, &tenant.token())).await
    }

    /// Runs `sql` (simple protocol); its rows' first values, or its SQLSTATE.
    async fn run(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        match self.client.simple_query(sql).await {
            Ok(messages) => Ok(messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
                    _ => None,
                })
                .collect()),
            Err(e) => Err(sqlstate(&e)),
        }
    }

    async fn ok(&self, sql: &str) -> Vec<Option<String>> {
        self.run(sql)
            .await
            .unwrap_or_else(|code| panic!("{sql}: failed with {code}"))
    }

    async fn value(&self, sql: &str) -> String {
        self.ok(sql)
            .await
            .last()
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{sql}: no value"))
    }

    async fn pid_after(&self, sql: &str) -> i32 {
        self.value(&format!("{sql}; SELECT pg_backend_pid()"))
            .await
            .parse()
            .expect("pid")
    }

    /// The notices that came with everything run so far (a round trip more makes sure they have arrived).
    async fn notices(&mut self) -> Vec<Notice> {
        self.client
            .simple_query("SELECT 1")
            .await
            .expect("sentinel");
        let mut out = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            out.push((
                n.severity().to_string(),
                n.code().code().to_string(),
                n.message().to_string(),
            ));
        }
        out
    }
}

/// Two helper clients of a transaction-pooled tenant with a pool of 2. They log in before the statements
/// under test run (a login in transaction pooling runs `RESET ALL` on the connection it gets).
struct Helpers {
    first: Conn,
    second: Conn,
}

/// The server connection with backend `pid` held in an open transaction by a helper, so the other clients'
/// next statements run on the other connection (`other_pid`).
struct Pinned<'a> {
    holder: &'a Conn,
    other_pid: i32,
}

impl Helpers {
    async fn new(proxy: &TestProxy, tenant: &TestTenant) -> Helpers {
        Helpers {
            first: Conn::through(proxy, tenant).await,
            second: Conn::through(proxy, tenant).await,
        }
    }

    async fn pin(&self, pid: i32) -> Pinned<'_> {
        // The first holds one connection in its transaction, so the second gets the other.
        let p1: i32 = self
            .first
            .value("BEGIN; SELECT pg_backend_pid()")
            .await
            .parse()
            .expect("pid");
        let p2: i32 = self
            .second
            .value("BEGIN; SELECT pg_backend_pid()")
            .await
            .parse()
            .expect("pid");
        assert_ne!(p1, p2, "two open transactions on one server connection");
        let (holder, released, other_pid) = if p1 == pid {
            (&self.first, &self.second, p2)
        } else if p2 == pid {
            (&self.second, &self.first, p1)
        } else {
            panic!("backend {pid} is not in the tenant's pool (found {p1} and {p2})");
        };
        released.ok("ROLLBACK").await;
        Pinned { holder, other_pid }
    }
}

impl Pinned<'_> {
    async fn release(self) {
        self.holder.ok("ROLLBACK").await;
    }
}

/// Advisory locks that backend `pid` holds on key `key` (as the superuser sees them).
async fn advisory_locks_of(pid: i32, key: i64) -> i64 {
    superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 \
             AND objid = $2::bigint::oid",
            &[&pid, &key],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

async fn advisory_locks_on(key: i64) -> i64 {
    superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objid = $1::bigint::oid",
            &[&key],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

const POOLING_NOTICE: &str = "in transaction pooling";

fn assert_pooling_notice(what: &str, notices: &[Notice], starts: &str) {
    assert!(
        notices.len() == 1
            && notices[0].0 == "NOTICE"
            && notices[0].1 == "01000"
            && notices[0].2.starts_with(starts)
            && notices[0].2.contains(POOLING_NOTICE),
        "{what}: want one NOTICE 01000 starting {starts:?}, got {notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_limitations_behave_as_the_readme_table_says() {
    let tenant = onboard("conf-limits").await;
    let proxy = txn_proxy().await;
    let helpers = Helpers::new(&proxy, &tenant).await;
    let mut a = Conn::through(&proxy, &tenant).await;
    let mut b = Conn::through(&proxy, &tenant).await;
    assert!(a.notices().await.is_empty());

    // LISTEN: pgtenant's NOTICE, in and outside a transaction block.
    for sql in [
        "LISTEN conf_channel",
        "BEGIN; LISTEN conf_channel_2; COMMIT",
    ] {
        a.ok(sql).await;
        assert_pooling_notice(sql, &a.notices().await, "LISTEN has no lasting effect");
    }

    // SQL PREPARE: pgtenant's NOTICE; EXECUTE on another server connection: 26000.
    let x = a.pid_after("PREPARE conf_p AS SELECT 42").await;
    assert_pooling_notice(
        "PREPARE",
        &a.notices().await,
        "SQL PREPARE does not outlast",
    );
    let pinned = helpers.pin(x).await;
    assert_eq!(
        a.value("SELECT pg_backend_pid()").await,
        pinned.other_pid.to_string()
    );
    assert_eq!(
        a.run("EXECUTE conf_p").await,
        Err("26000".into()),
        "EXECUTE elsewhere"
    );
    // The statement stays on the first connection, where the tenant's other clients find it.
    assert_eq!(pinned.holder.value("EXECUTE conf_p").await, "42");
    pinned.release().await;

    // Session advisory lock: pgtenant's NOTICE; the lock stays with the server connection.
    let key: i64 = 7_700_000 + i64::from(rand::random::<u16>());
    let x = a
        .pid_after(&format!("SELECT pg_advisory_lock({key})"))
        .await;
    assert_pooling_notice(
        "pg_advisory_lock",
        &a.notices().await,
        "a session advisory lock is not released",
    );
    let pinned = helpers.pin(x).await;
    assert_eq!(
        a.value(&format!("SELECT pg_advisory_unlock({key})")).await,
        "f",
        "unlock from another server connection"
    );
    let unlock_notices = a.notices().await;
    assert!(
        unlock_notices.len() == 1
            && unlock_notices[0].0 == "WARNING"
            && unlock_notices[0].1 == "01000"
            && unlock_notices[0].2.contains("you don't own a lock"),
        "PostgreSQL's warning for the unlock elsewhere: {unlock_notices:?}"
    );
    pinned.release().await;
    drop(a);
    // The client is gone (and another has used the connection); its lock is not.
    b.ok("SELECT 1").await;
    assert_eq!(
        advisory_locks_of(x, key).await,
        1,
        "backend {x} still holds the advisory lock after its client left"
    );

    // DECLARE … WITH HOLD: pgtenant's NOTICE; FETCH on another server connection: 34000.
    let x = b
        .pid_after("DECLARE conf_held CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g")
        .await;
    assert_pooling_notice(
        "WITH HOLD",
        &b.notices().await,
        "a WITH HOLD cursor stays on its server connection",
    );
    let pinned = helpers.pin(x).await;
    assert_eq!(
        b.run("FETCH conf_held").await,
        Err("34000".into()),
        "FETCH elsewhere"
    );
    assert_eq!(
        pinned.holder.ok("FETCH 2 FROM conf_held").await,
        vec![Some("1".into()), Some("2".into())]
    );
    pinned.holder.ok("CLOSE conf_held").await;
    pinned.release().await;

    // A temp table across transactions: pgtenant's NOTICE; on another server connection: 42P01.
    let x = b
        .pid_after("CREATE TEMP TABLE conf_temp (v int); INSERT INTO conf_temp VALUES (1)")
        .await;
    assert_pooling_notice(
        "CREATE TEMP TABLE",
        &b.notices().await,
        "a temporary table outlives the transaction",
    );
    let pinned = helpers.pin(x).await;
    assert_eq!(
        b.run("SELECT v FROM conf_temp").await,
        Err("42P01".into()),
        "temp table elsewhere"
    );
    assert_eq!(
        pinned.holder.value("SELECT v FROM conf_temp").await,
        "1",
        "left for the tenant's other clients"
    );
    pinned.release().await;

    // SET of an untracked setting: lost on another server connection, left on this one for other clients.
    let default_timeout = b.value("SHOW statement_timeout").await;
    let x = b.pid_after("SET statement_timeout = '4321ms'").await;
    assert!(b.notices().await.is_empty(), "no notice for SET today");
    let pinned = helpers.pin(x).await;
    assert_eq!(
        b.value("SHOW statement_timeout").await,
        default_timeout,
        "SET elsewhere"
    );
    assert_eq!(
        pinned.holder.value("SHOW statement_timeout").await,
        "4321ms",
        "left for the tenant's other clients"
    );
    pinned.holder.ok("ROLLBACK; RESET statement_timeout").await;

    // A tracked setting follows the client onto every connection.
    let x = b.pid_after("SET TimeZone = 'Asia/Kathmandu'").await;
    let pinned = helpers.pin(x).await;
    assert_eq!(
        b.value("SELECT pg_backend_pid()").await,
        pinned.other_pid.to_string()
    );
    assert_eq!(
        b.value("SHOW TimeZone").await,
        "Asia/Kathmandu",
        "tracked setting elsewhere"
    );
    pinned.release().await;

    // Inside one transaction block every one of them works.
    let key2 = key + 1;
    let rows = b
        .ok(&format!(
            "BEGIN; SET LOCAL statement_timeout = '1234ms'; SELECT pg_advisory_xact_lock({key2}); \
             CREATE TEMP TABLE conf_txn_temp (v int) ON COMMIT DROP; INSERT INTO conf_txn_temp VALUES (7); \
             DECLARE conf_c CURSOR FOR SELECT v FROM conf_txn_temp; PREPARE conf_q AS SELECT 5; \
             SELECT current_setting('statement_timeout'); FETCH conf_c; EXECUTE conf_q; COMMIT"
        ))
        .await;
    assert_eq!(
        rows,
        vec![
            Some(String::new()),
            Some("1234ms".into()),
            Some("7".into()),
            Some("5".into())
        ]
    );
    let notices = b.notices().await;
    assert_pooling_notice(
        "PREPARE inside a transaction",
        &notices,
        "SQL PREPARE does not outlast",
    );
    assert_eq!(
        advisory_locks_on(key2).await,
        0,
        "transaction-level lock released at COMMIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_keeps_every_session_feature() {
    let tenant = onboard("conf-session-features").await;
    let proxy = TestProxy::start().await;
    let mut a = Conn::through(&proxy, &tenant).await;
    let key: i64 = 7_800_000 + i64::from(rand::random::<u16>());
    a.ok("LISTEN conf_channel").await;
    a.ok("PREPARE conf_p AS SELECT 42").await;
    a.ok(&format!("SELECT pg_advisory_lock({key})")).await;
    a.ok("DECLARE conf_held CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g")
        .await;
    a.ok("CREATE TEMP TABLE conf_temp (v int); INSERT INTO conf_temp VALUES (1)")
        .await;
    a.ok("SET statement_timeout = '4321ms'").await;
    assert!(
        a.notices().await.is_empty(),
        "no pgtenant notices in session pooling"
    );
    assert_eq!(a.value("EXECUTE conf_p").await, "42");
    assert_eq!(a.value("FETCH conf_held").await, "1");
    assert_eq!(a.value("SELECT v FROM conf_temp").await, "1");
    assert_eq!(a.value("SHOW statement_timeout").await, "4321ms");
    assert_eq!(
        a.value(&format!("SELECT pg_advisory_unlock({key})")).await,
        "t"
    );
    a.ok(&format!("SELECT pg_advisory_lock({key})")).await;
    assert!(a.notices().await.is_empty());
    drop(a);
    // The client leaves: DISCARD ALL releases the lock before the connection is reused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while advisory_locks_on(key).await != 0 {
        assert!(
            Instant::now() < deadline,
            "session advisory lock still held 10 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The README's table lists each of these features with the SQLSTATE the tests above check.
#[test]
fn readme_table_lists_what_the_tests_check() {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = readme
        .split("## Pooling modes")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README section \"Pooling modes\"");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with('|')).collect();
    for (feature, codes) in [
        ("`LISTEN`", &["01000"][..]),
        ("`PREPARE`", &["01000", "26000"][..]),
        ("advisory lock", &["01000"][..]),
        ("WITH HOLD", &["34000"][..]),
        ("temp table", &["42P01"][..]),
        ("`SET`", &[][..]),
        ("TimeZone", &[][..]),
    ] {
        let row = rows
            .iter()
            .find(|r| {
                r.split('|')
                    .nth(1)
                    .is_some_and(|cell| cell.contains(feature))
            })
            .unwrap_or_else(|| {
                panic!("no row for {feature} in the README's pooling table:\n{section}")
            });
        for code in codes {
            assert!(
                row.contains(code),
                "the README row for {feature} does not mention {code}: {row}"
            );
        }
    }
}
