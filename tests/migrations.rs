//! The fan-out migration engine (`pgtenant migrate tenants`) against a real PostgreSQL: per-tenant atomicity
//! and failure isolation, resume after a kill -9, checksum / order checks, run and tenant locks, history the
//! tenant cannot forge or read, DDL-locked tenants, no-transaction files, dry run and status.
//!
//! Every test uses a database of its own, so a fan-out only ever sees that test's tenants.

mod common;

use common::*;
use pgtenant::config::Config;
use pgtenant::fanout::progress::Silent;
use pgtenant::fanout::{FanOutOptions, FanOutReport, TenantMigrator};
use pgtenant::migrate::MigrateError;
use pgtenant::tenancy::{self, OnboardRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------------
// Harness helpers (local to this test binary)
// ---------------------------------------------------------------------------------------------------------

/// A temporary `tenant-migrations/` folder, starting with a copy of the repository's V001.
struct MigDir {
    path: PathBuf,
}

impl MigDir {
    fn new() -> MigDir {
        let path =
            std::env::temp_dir().join(format!("pgtenant-migtest-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("mkdir");
        let v1 = "V001__initial_schema.sql";
        std::fs::copy(repo_path("tenant-migrations").join(v1), path.join(v1)).expect("copy V001");
        MigDir { path }
    }

    fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.path.join(name), sql).expect("write migration");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("remove migration");
    }

    /// (version, sha-256 hex) of every file, ascending: what a complete history must hold.
    fn expected(&self) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let digits: String = name[1..].chars().take_while(char::is_ascii_digit).collect();
            let bytes = std::fs::read(&path).expect("read file");
            let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
            out.push((digits.parse().expect("version"), hex::encode(sum.as_ref())));
        }
        out.sort();
        out
    }
}

impl Drop for MigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        // The binary's config file and log sit next to the folder (see write_binary_config).
        for ext in ["toml", "log"] {
            let _ = std::fs::remove_file(self.path.with_extension(ext));
        }
    }
}

/// A database of its own whose config takes tenant migrations from a new temporary folder holding a copy of
/// the repository's V001 (so tenants are onboarded at V1 even if the repository gains files).
async fn fresh() -> (TestDb, MigDir) {
    let mut db = fresh_database().await;
    let dir = MigDir::new();
    db.config.tenancy.tenant_migrations_dir = dir.path.clone();
    (db, dir)
}

/// A TestDb whose config points at `dir` for tenant migrations.
fn config_with(db: &TestDb, dir: &MigDir) -> Config {
    let mut config = db.config.clone();
    config.tenancy.tenant_migrations_dir = dir.path.clone();
    config
}

async fn superuser_of(db_name: &str) -> tokio_postgres::Client {
    connect(cluster().cluster.superuser_config(db_name)).await
}

/// Onboards one tenant on an existing admin connection.
async fn onboard_on(
    admin: &mut tokio_postgres::Client,
    config: &Config,
    label: &str,
    ddl_allowed: Option<bool>,
) -> TestTenant {
    let unique = Uuid::new_v4().simple().to_string()[..8].to_string();
    let email = format!("admin-{label}-{unique}@example.com");
    let onboarded = tenancy::onboard(
        admin,
        config,
        &OnboardRequest {
            name: format!("{label} {unique}"),
            admin_email: email.clone(),
            slug: None,
            ddl_allowed,
            cluster: None,
        },
    )
    .await
    .expect("onboard");
    TestTenant { email, onboarded }
}

async fn onboard_one(db_name: &str, config: &Config, label: &str, ddl: Option<bool>) -> TestTenant {
    let mut admin = superuser_of(db_name).await;
    onboard_on(&mut admin, config, label, ddl).await
}

/// Onboards `n` tenants, `parallel` at a time, in creation order of their index.
async fn onboard_many(
    db_name: &str,
    config: &Config,
    label: &str,
    n: usize,
    parallel: usize,
) -> Vec<TestTenant> {
    let config = Arc::new(config.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..parallel {
        let config = config.clone();
        let db_name = db_name.to_string();
        let label = label.to_string();
        tasks.spawn(async move {
            let mut admin = superuser_of(&db_name).await;
            let mut out = Vec::new();
            for i in (worker..n).step_by(parallel) {
                out.push((
                    i,
                    onboard_on(&mut admin, &config, &format!("{label}{i}"), None).await,
                ));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("onboarding task"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

fn migrator(config: &Config, concurrency: usize) -> TenantMigrator {
    TenantMigrator::new(config, concurrency).expect("migrator")
}

fn options(concurrency: usize) -> FanOutOptions {
    FanOutOptions {
        concurrency,
        ..FanOutOptions::default()
    }
}

async fn fan_out(config: &Config, concurrency: usize) -> Result<FanOutReport, MigrateError> {
    migrator(config, concurrency)
        .run(&options(concurrency), &Silent)
        .await
}

/// `fut`, or a panic naming `what` after `secs` seconds (a hung fan-out fails the test instead of stalling it).
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

/// slug → applied (version, checksum), ascending, for every organization of the database.
async fn histories(su: &tokio_postgres::Client) -> BTreeMap<String, Vec<(i32, String)>> {
    su.query(
        "SELECT o.slug,
                coalesce(array_agg(m.version ORDER BY m.version) FILTER (WHERE m.version IS NOT NULL), '{}'),
                coalesce(array_agg(m.checksum ORDER BY m.version) FILTER (WHERE m.version IS NOT NULL), '{}')
         FROM pgtenant.organizations o
         LEFT JOIN pgtenant.tenant_migrations m ON m.organization_id = o.id
         GROUP BY o.slug",
        &[],
    )
    .await
    .expect("histories")
    .into_iter()
    .map(|r| {
        let versions: Vec<i32> = r.get(1);
        let sums: Vec<String> = r.get(2);
        (r.get(0), versions.into_iter().zip(sums).collect())
    })
    .collect()
}

fn versions(history: &[(i32, String)]) -> Vec<i32> {
    history.iter().map(|(v, _)| *v).collect()
}

/// schema → owner of the table `table` that has a live column `column`.
async fn columns(
    su: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> BTreeMap<String, String> {
    su.query(
        "SELECT n.nspname::text, pg_get_userbyid(c.relowner)::text
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[&table, &column],
    )
    .await
    .expect("columns")
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// schema → owner of every relation (table, index, …) named `name`.
async fn relations(su: &tokio_postgres::Client, name: &str) -> BTreeMap<String, String> {
    su.query(
        "SELECT n.nspname::text, pg_get_userbyid(c.relowner)::text
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = $1",
        &[&name],
    )
    .await
    .expect("relations")
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Schemas holding a constraint named `name`.
async fn constraints(su: &tokio_postgres::Client, name: &str) -> BTreeSet<String> {
    su.query(
        "SELECT n.nspname::text FROM pg_constraint con
         JOIN pg_namespace n ON n.oid = con.connamespace WHERE con.conname = $1",
        &[&name],
    )
    .await
    .expect("constraints")
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

async fn count(su: &tokio_postgres::Client, sql: &str) -> i64 {
    su.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Rows left in the ticket and DDL-unlock tables.
async fn leftovers(su: &tokio_postgres::Client) -> (i64, i64) {
    (
        count(su, "SELECT count(*) FROM pgtenant.migration_tickets").await,
        count(su, "SELECT count(*) FROM pgtenant.ddl_unlocks").await,
    )
}

/// Same as `tenant_lock_key` in src/migrate/tenants.rs.
fn tenant_lock_key(id: &Uuid) -> i64 {
    let mut key = [0u8; 8];
    key.copy_from_slice(&id.as_bytes()[..8]);
    i64::from_be_bytes(key) ^ 0x7067_7465_6e61_0000
}

fn slug(t: &TestTenant) -> String {
    t.onboarded.slug.clone()
}

fn schema(t: &TestTenant) -> String {
    t.onboarded.schema.as_str().to_string()
}

fn role(t: &TestTenant) -> String {
    t.onboarded.role.as_str().to_string()
}

/// A client through `proxy` for `tenant`, asking for the test database by name.
async fn proxy_client(
    proxy: &TestProxy,
    db: &TestDb,
    tenant: &TestTenant,
) -> tokio_postgres::Client {
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.dbname(&db.name);
    connect(config).await
}

async fn sqlstate_of(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => format!("no error for {sql}"),
        Err(e) => sqlstate(&e),
    }
}

/// Waits (up to 15 s) until no backend of a migrator (admin pool or tenant login) is left in `db`.
async fn wait_for_migrator_backends_gone(su: &tokio_postgres::Client, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name IN ('pgtenant-migrate', 'pgtenant-admin')",
                &[&db],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} backends of a killed migrator are still alive after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config file for the `pgtenant` binary pointing at `db`, with tenant migrations from `dir`. Secrets go
/// through the environment (see [`pgtenant_command`]).
fn write_binary_config(db: &TestDb, dir: &MigDir) -> PathBuf {
    let c = cluster();
    let text = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = {db:?}\nadmin_user = {user:?}\n\n\
         [tenancy]\ntenant_migrations_dir = {tm:?}\nshared_migrations_dir = {sm:?}\n\n\
         [migrations]\nconcurrency = 4\nlock_timeout_ms = 10000\n",
        port = c.cluster.port(),
        db = db.name,
        user = c.cluster.superuser(),
        tm = dir.path.display().to_string(),
        sm = repo_path("shared-migrations").display().to_string(),
    );
    let path = dir.path.with_extension("toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn pgtenant_command(config_file: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    cmd.arg("--config")
        .arg(config_file)
        .args(args)
        .env_remove("PGTENANT_CONFIG")
        .env("PGTENANT_SERVER_SECRET", SERVER_SECRET)
        .env(
            "PGTENANT_ADMIN_PASSWORD",
            cluster().cluster.superuser_password(),
        )
        .env("PGTENANT_JWT_SECRET", JWT_SECRET)
        .env("PGTENANT_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion: (success, stdout, stderr).
async fn run_binary(config_file: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        pgtenant_command(config_file, args).output(),
    )
    .await
    .expect("pgtenant binary timed out")
    .expect("run pgtenant binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------------------
// 1. 200 tenants, one fails: isolation, per-tenant atomicity, ownership, then the retry
// ---------------------------------------------------------------------------------------------------------

const V002_NICKNAME: &str =
    "-- patients get a nickname\nALTER TABLE patients ADD COLUMN nickname text;\n";
/// The ALTER starts on line 4, its CHECK clause is on line 5.
const V003_AMOUNT_CAP: &str = "-- caps order amounts\n\
-- (tenants with larger orders must clean them up first)\n\
\n\
ALTER TABLE orders\n    ADD CONSTRAINT orders_amount_cap CHECK (amount < 100000);\n";
const V004_NICKNAME_IDX: &str = "CREATE INDEX patients_nickname_idx ON patients (nickname);\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_three_fail_and_are_untouched_then_retry() {
    let started = Instant::now();
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    // Onboarded with the repository's tenant-migrations (V001 only).
    let tenants = onboard_many(&db.name, &db.config, "fan", 200, 4).await;
    let onboarded_in = started.elapsed();
    let bad_idx = [17usize, 101, 188];
    let bad: BTreeSet<String> = bad_idx.iter().map(|i| slug(&tenants[*i])).collect();
    for i in bad_idx {
        su.batch_execute(&format!(
            "INSERT INTO {s}.patients (full_name) VALUES ('Big Spender');
             INSERT INTO {s}.orders (patient_id, description, amount)
                 SELECT id, 'yacht', 500000 FROM {s}.patients WHERE full_name = 'Big Spender';",
            s = tenants[i].onboarded.schema.quoted()
        ))
        .await
        .expect("violating rows");
    }

    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    dir.write("V003__order_amount_cap.sql", V003_AMOUNT_CAP);
    dir.write("V004__patients_nickname_idx.sql", V004_NICKNAME_IDX);
    // db.config.tenancy.tenant_migrations_dir already points at `dir` (V001 only at onboarding).
    assert_eq!(db.config.tenancy.tenant_migrations_dir, dir.path);
    let expected = dir.expected();
    assert_eq!(versions(&expected), vec![1, 2, 3, 4]);

    let run_started = Instant::now();
    let report = TenantMigrator::new(&db.config, 8)
        .expect("migrator")
        .run(&options(8), &Silent)
        .await
        .expect("fan-out runs");
    let first_run = run_started.elapsed();
    assert_eq!(report.tenants, 200, "{report}");
    assert_eq!(report.migrated, 197, "{report}");
    assert_eq!(report.up_to_date, 0, "{report}");
    assert!(
        report.busy.is_empty() && report.not_started == 0,
        "{report}"
    );
    let failed: BTreeSet<String> = report.failed.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(failed, bad, "exactly the three tenants with bad data fail");
    assert_eq!(
        report.failed.len(),
        3,
        "each failing tenant is reported once"
    );

    // Problems that do not stop the rest of the checks; reported at the end.
    let mut problems = Vec::new();
    for (slug, f) in &report.failed {
        assert_eq!(
            f.file.as_deref(),
            Some("V003__order_amount_cap.sql"),
            "{slug}: {f}"
        );
        assert_eq!(f.version, Some(3), "{slug}: {f}");
        assert_eq!(f.sqlstate, "23514", "{slug}: {f}");
        assert!(f.message.contains("orders_amount_cap"), "{slug}: {f}");
        let shown = f.to_string();
        assert!(
            shown.contains("V003__order_amount_cap.sql") && shown.contains("23514"),
            "{shown}"
        );
        match f.line {
            Some(4) | Some(5) => {}
            other => problems.push(format!(
                "{slug}: failure has line {other:?}, expected the ALTER on line 4 (or its CHECK on 5); failure shown as: {shown}"
            )),
        }
    }

    let history = histories(&su).await;
    let nickname = columns(&su, "patients", "nickname").await;
    let index = relations(&su, "patients_nickname_idx").await;
    let cap = constraints(&su, "orders_amount_cap").await;
    for t in &tenants {
        let h = &history[&slug(t)];
        if bad.contains(&slug(t)) {
            // Untouched: V002 and V004 were in the same transaction as the failing V003.
            assert_eq!(versions(h), vec![1], "{}: history", slug(t));
            assert!(
                !nickname.contains_key(&schema(t)),
                "{}: V002 column rolled back",
                slug(t)
            );
            assert!(
                !index.contains_key(&schema(t)),
                "{}: no V004 index",
                slug(t)
            );
            assert!(!cap.contains(&schema(t)), "{}: no V003 constraint", slug(t));
        } else {
            assert_eq!(
                h,
                &expected,
                "{}: history 1..4 with the files' checksums",
                slug(t)
            );
            assert_eq!(
                nickname.get(&schema(t)),
                Some(&role(t)),
                "{}: nickname column on patients owned by the tenant",
                slug(t)
            );
            assert_eq!(
                index.get(&schema(t)),
                Some(&role(t)),
                "{}: index owned by the tenant",
                slug(t)
            );
            assert!(cap.contains(&schema(t)), "{}: constraint", slug(t));
        }
    }
    assert_eq!(
        leftovers(&su).await,
        (0, 0),
        "no tickets or DDL unlocks left"
    );

    // Fix the data, run again.
    for i in bad_idx {
        su.batch_execute(&format!(
            "UPDATE {}.orders SET amount = 99 WHERE amount >= 100000",
            tenants[i].onboarded.schema.quoted()
        ))
        .await
        .expect("fix data");
    }
    let report = fan_out(&db.config, 8).await.expect("second fan-out");
    assert_eq!(report.migrated, 3, "{report}");
    assert_eq!(report.up_to_date, 197, "{report}");
    assert!(report.ok(), "{report} {:?}", report.failed);
    let history = histories(&su).await;
    let nickname = columns(&su, "patients", "nickname").await;
    let index = relations(&su, "patients_nickname_idx").await;
    let cap = constraints(&su, "orders_amount_cap").await;
    for t in &tenants {
        assert_eq!(history[&slug(t)], expected, "{}: at version 4", slug(t));
        assert_eq!(nickname.get(&schema(t)), Some(&role(t)), "{}", slug(t));
        assert_eq!(index.get(&schema(t)), Some(&role(t)), "{}", slug(t));
        assert!(cap.contains(&schema(t)), "{}", slug(t));
    }
    assert_eq!(leftovers(&su).await, (0, 0));
    eprintln!(
        "200 tenants: onboarded in {onboarded_in:?}, first fan-out {first_run:?}, whole test {:?}",
        started.elapsed()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------
// 2. kill -9 mid fan-out: every tenant migrated with history or untouched; a second run finishes
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_killed_mid_fan_out_leaves_each_tenant_whole_and_resumes() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenants = onboard_many(&db.name, &db.config, "kill", 100, 4).await;
    dir.write(
        "V002__loyalty_points.sql",
        "SELECT pg_sleep(0.1);\nALTER TABLE patients ADD COLUMN loyalty_points integer NOT NULL DEFAULT 0;\n",
    );
    dir.write(
        "V003__appointments.sql",
        "CREATE TABLE appointments (id bigserial PRIMARY KEY, patient_id bigint REFERENCES patients (id), at timestamptz);\n",
    );
    let expected = dir.expected();
    let config_file = write_binary_config(&db, &dir);

    let log = dir.path.with_extension("log");
    let mut child = pgtenant_command(&config_file, &["migrate", "tenants", "--concurrency", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn pgtenant");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Kill once some tenants are done and one is inside its migration transaction (in the pg_sleep).
    let (done_at_kill, in_flight) = loop {
        let row = su
            .query_one(
                "SELECT (SELECT count(*) FROM pgtenant.tenant_migrations WHERE version = 2),
                        (SELECT min(pid) FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name = 'pgtenant-migrate'
                            AND state = 'active' AND query LIKE '%pg_sleep%')",
                &[],
            )
            .await
            .expect("progress");
        let (done, sleeping): (i64, Option<i32>) = (row.get(0), row.get(1));
        if let (true, Some(pid)) = (done >= 8, sleeping) {
            child.start_kill().expect("kill -9");
            break (done, pid);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "migrator exited ({status}) before it could be killed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the fan-out made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let status = child.wait().await.expect("wait");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    assert!(
        done_at_kill < 100,
        "killed before the end ({done_at_kill} done)"
    );
    // The killed migrator's backends (admin and tenant logins) notice and roll back.
    wait_for_migrator_backends_gone(&su, &db.name).await;
    let (tickets_after_kill, unlocks_after_kill) = leftovers(&su).await;
    // Tickets are issued when a tenant starts and consumed by its commit: the tenant seen in flight at the
    // kill still has its ticket, so its transaction did not commit.
    let in_flight_tickets: i64 = su
        .query_one(
            "SELECT count(*) FROM pgtenant.migration_tickets WHERE backend_pid = $1",
            &[&in_flight],
        )
        .await
        .expect("tickets")
        .get(0);
    assert!(
        in_flight_tickets > 0,
        "the tenant in flight at the kill (pid {in_flight}) committed after it"
    );

    let check = |history: &BTreeMap<String, Vec<(i32, String)>>,
                 loyalty: &BTreeMap<String, String>,
                 appointments: &BTreeMap<String, String>|
     -> (usize, usize) {
        let (mut migrated, mut untouched) = (0, 0);
        for t in &tenants {
            let h = &history[&slug(t)];
            let has_col = loyalty.contains_key(&schema(t));
            let has_table = appointments.contains_key(&schema(t));
            if h == &expected {
                assert!(
                    has_col && has_table,
                    "{}: history 1..3 but change missing",
                    slug(t)
                );
                assert_eq!(loyalty[&schema(t)], role(t));
                assert_eq!(appointments[&schema(t)], role(t));
                migrated += 1;
            } else {
                assert_eq!(versions(h), vec![1], "{}: partial history {h:?}", slug(t));
                assert!(
                    !has_col && !has_table,
                    "{}: change present (column {has_col}, table {has_table}) without history",
                    slug(t)
                );
                untouched += 1;
            }
        }
        (migrated, untouched)
    };
    let history = histories(&su).await;
    let (migrated, untouched) = check(
        &history,
        &columns(&su, "patients", "loyalty_points").await,
        &relations(&su, "appointments").await,
    );
    assert!(
        migrated >= done_at_kill as usize && migrated < 100 && untouched > 0,
        "some but not all tenants migrated before the kill: {migrated} migrated, {untouched} untouched"
    );

    // Run again with the binary: only the rest is migrated.
    let (ok, stdout, stderr) =
        run_binary(&config_file, &["migrate", "tenants", "--concurrency", "4"]).await;
    assert!(ok, "second run succeeds: {stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "100 tenants: {untouched} migrated, {migrated} already up to date, 0 failed"
        )),
        "{stdout}"
    );
    let history = histories(&su).await;
    let (migrated, untouched) = check(
        &history,
        &columns(&su, "patients", "loyalty_points").await,
        &relations(&su, "appointments").await,
    );
    assert_eq!((migrated, untouched), (100, 0));
    assert_eq!(
        leftovers(&su).await,
        (0, 0),
        "tickets / DDL unlocks left after the second run (after the kill: {tickets_after_kill} tickets, {unlocks_after_kill} unlocks)"
    );
    let _ = std::fs::remove_file(&config_file);
    let _ = std::fs::remove_file(&log);
}

/// A killed migrator's tenant backend can outlive it (PostgreSQL only notices the lost client at its next
/// read or write, so a backend blocked on a lock or busy in a long statement stays). The next run must end
/// that orphan and remove its ticket and DDL unlock, which would otherwise wait, keyed by a pid that no
/// longer exists, for a future backend of the same role that gets that pid. (Tickets are also bound to the
/// backend's start time since shared migration V006.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_of_a_killed_migrators_blocked_backend_are_gone_after_the_next_run() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    // DDL-locked, so its migration backend also gets a ddl_unlocks row.
    let t = onboard_one(&db.name, &db.config, "zombie", Some(false)).await;
    let config = config_with(&db, &dir);
    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    let config_file = write_binary_config(&db, &dir);

    // The tenant's application holds a lock on patients: the migration's ALTER waits.
    let blocker = db.superuser().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {}.patients IN ACCESS SHARE MODE",
            t.onboarded.schema.quoted()
        ))
        .await
        .expect("hold a lock");
    let waiting = |n: i64| {
        let su = &su;
        let db = db.name.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let pids: Vec<i32> = su
                    .query(
                        "SELECT pid FROM pg_stat_activity WHERE datname = $1
                         AND application_name = 'pgtenant-migrate' AND wait_event_type = 'Lock'
                         ORDER BY backend_start",
                        &[&db],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                if pids.len() as i64 >= n {
                    return pids;
                }
                assert!(Instant::now() < deadline, "no migration backend waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut child = pgtenant_command(&config_file, &["migrate", "tenants"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pgtenant");
    let zombie = waiting(1).await[0];
    child.start_kill().expect("kill -9");
    child.wait().await.expect("wait");
    let zombie_rows = |pid: i32| {
        let su = &su;
        async move {
            let tickets: i64 = su
                .query_one(
                    "SELECT count(*) FROM pgtenant.migration_tickets WHERE backend_pid = $1",
                    &[&pid],
                )
                .await
                .expect("tickets")
                .get(0);
            let unlocks: i64 = su
                .query_one(
                    "SELECT count(*) FROM pgtenant.ddl_unlocks WHERE backend_pid = $1",
                    &[&pid],
                )
                .await
                .expect("unlocks")
                .get(0);
            (tickets, unlocks)
        }
    };
    assert_eq!(
        zombie_rows(zombie).await,
        (1, 1),
        "the killed run's ticket and unlock"
    );

    // Run again right away, while the killed run's backend still waits. The new run ends that orphan
    // (its transaction rolls back) before it migrates, so one migration backend waits: the new one.
    let task = {
        let m = migrator(&config, 1);
        tokio::spawn(async move { m.run(&options(1), &Silent).await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = waiting(1).await;
        if !pids.contains(&zombie) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned migration backend {zombie} was not ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    blocker.batch_execute("ROLLBACK").await.expect("release");
    let report = within(30, "the second run", task)
        .await
        .expect("join")
        .expect("second run");
    assert_eq!(report.migrated, 1, "{report} {:?}", report.failed);
    // The killed run's backend got the lock, ran the ALTER, found its client gone and rolled back.
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(
        &su,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {zombie}"),
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "the killed run's backend stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let history = histories(&su).await;
    assert_eq!(history[&slug(&t)], dir.expected(), "migrated once");
    assert_eq!(
        columns(&su, "patients", "nickname").await.get(&schema(&t)),
        Some(&role(&t))
    );
    assert_eq!(
        leftovers(&su).await,
        (0, 0),
        "after a complete run, the ticket and DDL unlock of the killed run's backend (pid {zombie}, now gone) \
         are still there ({:?} for that pid): a future backend of role {} that gets pid {zombie} could record \
         history or run DDL with them",
        zombie_rows(zombie).await,
        role(&t)
    );
    let _ = std::fs::remove_file(&config_file);
}

// ---------------------------------------------------------------------------------------------------------
// 3. Edited applied files, files below an applied one, duplicate and missing versions
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_reordered_duplicate_and_missing_files_are_refused_before_anything_runs() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenants = onboard_many(&db.name, &db.config, "sum", 3, 3).await;
    let config = config_with(&db, &dir);
    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    dir.write("V004__patients_nickname_idx.sql", V004_NICKNAME_IDX);
    let report = fan_out(&config, 2).await.expect("first run");
    assert_eq!(report.migrated, 3, "{report}");
    let applied = dir.expected();

    // An applied file is edited and a new one added: nothing runs.
    dir.write(
        "V002__patient_nickname.sql",
        "-- patients get a nickname (edited)\nALTER TABLE patients ADD COLUMN nickname text;\n",
    );
    dir.write(
        "V005__doctor_phone.sql",
        "ALTER TABLE doctors ADD COLUMN phone text;\n",
    );
    let m = migrator(&config, 2);
    let assert_mismatch = |e: &MigrateError| match e {
        MigrateError::TenantChecksumMismatch {
            version,
            name,
            tenants: listed,
            ..
        } => {
            assert_eq!(*version, 2);
            assert!(name.contains("V002__patient_nickname.sql"), "{name}");
            for t in &tenants {
                assert!(listed.contains(&slug(t)), "{listed} names {}", slug(t));
            }
            let text = e.to_string();
            assert!(
                text.contains("V002__patient_nickname.sql") && text.contains(&slug(&tenants[0])),
                "{text}"
            );
        }
        other => panic!("expected TenantChecksumMismatch, got {other:?}"),
    };
    assert_mismatch(&m.run(&options(2), &Silent).await.expect_err("run refuses"));
    assert_mismatch(&m.dry_run(None).await.expect_err("dry run refuses"));
    let history = histories(&su).await;
    for t in &tenants {
        assert_eq!(
            history[&slug(t)],
            applied,
            "{}: nothing applied, checksums untouched",
            slug(t)
        );
    }
    assert!(
        columns(&su, "doctors", "phone").await.is_empty(),
        "V005 not applied"
    );

    // Accepted on purpose: repair, then the run goes on.
    assert_eq!(m.repair().await.expect("repair"), 3, "one row per tenant");
    assert_eq!(m.repair().await.expect("repair again"), 0, "idempotent");
    let report = m.run(&options(2), &Silent).await.expect("run after repair");
    assert_eq!((report.migrated, report.up_to_date), (3, 0), "{report}");
    let expected = dir.expected();
    let history = histories(&su).await;
    for t in &tenants {
        assert_eq!(history[&slug(t)], expected, "{}", slug(t));
    }
    assert_eq!(columns(&su, "doctors", "phone").await.len(), 3);

    // A new file numbered below an applied one.
    dir.write(
        "V003__late.sql",
        "ALTER TABLE doctors ADD COLUMN fax text;\n",
    );
    let m = migrator(&config, 2);
    for result in [
        m.run(&options(2), &Silent).await.map(|_| ()),
        m.dry_run(None).await.map(|_| ()),
    ] {
        match result {
            Err(MigrateError::OutOfOrder {
                pending,
                name,
                applied,
                tenants: listed,
            }) => {
                assert_eq!((pending, applied), (3, 5));
                assert!(name.contains("V003__late.sql"), "{name}");
                for t in &tenants {
                    assert!(listed.contains(&slug(t)), "{listed}");
                }
            }
            other => panic!("expected OutOfOrder, got {other:?}"),
        }
    }
    assert!(
        columns(&su, "doctors", "fax").await.is_empty(),
        "V003 not applied"
    );
    dir.remove("V003__late.sql");

    // Two files with one version: refused when the files are loaded, before any database work.
    dir.write("V006__a.sql", "ALTER TABLE doctors ADD COLUMN a text;\n");
    dir.write("V6_b.sql", "ALTER TABLE doctors ADD COLUMN b text;\n");
    match TenantMigrator::new(&config, 2) {
        Err(MigrateError::DuplicateVersion { first, second }) => {
            let both = format!("{} {}", first.display(), second.display());
            assert!(
                both.contains("V006__a.sql") && both.contains("V6_b.sql"),
                "{both}"
            );
        }
        Err(other) => panic!("expected DuplicateVersion, got {other:?}"),
        Ok(_) => panic!("expected DuplicateVersion, got a migrator"),
    }
    dir.remove("V006__a.sql");
    dir.remove("V6_b.sql");

    // An applied file that disappeared.
    std::fs::rename(
        dir.path.join("V004__patients_nickname_idx.sql"),
        dir.path.with_extension("v4"),
    )
    .expect("hide V004");
    dir.write(
        "V007__doctor_room.sql",
        "ALTER TABLE doctors ADD COLUMN room text;\n",
    );
    match fan_out(&config, 2).await {
        Err(MigrateError::TenantMissingFile {
            version,
            tenants: listed,
        }) => {
            assert_eq!(version, 4);
            assert!(listed.contains(&slug(&tenants[1])), "{listed}");
        }
        other => panic!("expected TenantMissingFile, got {other:?}"),
    }
    assert!(
        columns(&su, "doctors", "room").await.is_empty(),
        "V007 not applied"
    );
    std::fs::rename(
        dir.path.with_extension("v4"),
        dir.path.join("V004__patients_nickname_idx.sql"),
    )
    .expect("restore V004");
    dir.remove("V007__doctor_room.sql");

    // A syntax error is reported with its line, and the tenant stays where it was.
    dir.write(
        "V008__broken.sql",
        "-- a typo on line 3\nALTER TABLE doctors ADD COLUMN ok1 text;\nALTR TABLE doctors ADD COLUMN ok2 text;\n",
    );
    let report = fan_out(&config, 2).await.expect("run with a broken file");
    assert_eq!(report.failed.len(), 3, "{report}");
    for (slug, f) in &report.failed {
        assert_eq!(f.file.as_deref(), Some("V008__broken.sql"), "{slug}: {f}");
        assert_eq!(
            (f.sqlstate.as_str(), f.line),
            ("42601", Some(3)),
            "{slug}: {f}"
        );
    }
    assert!(
        columns(&su, "doctors", "ok1").await.is_empty(),
        "rolled back"
    );
    let history = histories(&su).await;
    for t in &tenants {
        assert_eq!(history[&slug(t)], expected, "{}", slug(t));
    }
    assert_eq!(leftovers(&su).await, (0, 0));
}

// ---------------------------------------------------------------------------------------------------------
// 4. Run lock and tenant lock
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrators_never_both_migrate_a_tenant_and_a_locked_tenant_is_busy() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenants = onboard_many(&db.name, &db.config, "lock", 12, 4).await;
    let config = config_with(&db, &dir);
    dir.write(
        "V002__slow_nickname.sql",
        "SELECT pg_sleep(0.1);\nALTER TABLE patients ADD COLUMN nickname text;\n",
    );

    // A second migrator started while the first one runs is refused with RunLocked.
    let first = migrator(&config, 2);
    let task = {
        let first = first.clone();
        tokio::spawn(async move { first.run(&options(2), &Silent).await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &su,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtenant-migrate'
         AND datname = current_database()",
    )
    .await
        == 0
    {
        assert!(
            !task.is_finished(),
            "first run ended before the second started"
        );
        assert!(Instant::now() < deadline, "first run did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = migrator(&config, 2).run(&options(2), &Silent).await;
    assert!(
        matches!(second, Err(MigrateError::RunLocked)),
        "second migrator during a run: {second:?}"
    );
    assert!(
        !task.is_finished(),
        "the first run was still going when the second was refused"
    );
    let report = within(60, "the first run", task)
        .await
        .expect("join")
        .expect("first run");
    assert_eq!(report.migrated, 12, "{report}");
    assert!(report.ok(), "{report}");

    // Two migrators started at the same instant: one is refused, or they run one after the other; either way
    // each tenant is migrated once.
    dir.write(
        "V003__slow_phone.sql",
        "SELECT pg_sleep(0.05);\nALTER TABLE doctors ADD COLUMN phone text;\n",
    );
    let (a, b) = (migrator(&config, 3), migrator(&config, 3));
    let opts = options(3);
    let (ra, rb) = tokio::join!(a.run(&opts, &Silent), b.run(&opts, &Silent));
    let mut migrated = 0;
    let mut locked = 0;
    for r in [&ra, &rb] {
        match r {
            Ok(report) => {
                assert!(report.failed.is_empty(), "{report} {:?}", report.failed);
                migrated += report.migrated;
            }
            Err(MigrateError::RunLocked) => locked += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(locked < 2, "one of them runs");
    assert_eq!(
        migrated, 12,
        "each tenant migrated by exactly one migrator: {ra:?} {rb:?}"
    );
    let expected = dir.expected();
    let history = histories(&su).await;
    for t in &tenants {
        assert_eq!(history[&slug(t)], expected, "{}", slug(t));
    }
    assert_eq!(
        count(&su, "SELECT count(*) FROM pgtenant.tenant_migrations").await,
        12 * 3,
        "one history row per tenant and version"
    );
    assert_eq!(columns(&su, "doctors", "phone").await.len(), 12);

    // A tenant whose lock another session holds is reported busy and left alone.
    dir.write(
        "V004__fax.sql",
        "ALTER TABLE doctors ADD COLUMN fax text;\n",
    );
    let held = &tenants[5];
    let holder = db.superuser().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&tenant_lock_key(&held.onboarded.organization_id)],
        )
        .await
        .expect("hold the tenant lock");
    let report = fan_out(&config, 3).await.expect("run with a held lock");
    assert_eq!(report.busy, vec![slug(held)], "{report}");
    assert_eq!(report.migrated, 11, "{report}");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(!report.ok(), "a busy tenant makes the run not ok");
    let history = histories(&su).await;
    let fax = columns(&su, "doctors", "fax").await;
    for t in &tenants {
        if t.onboarded.slug == held.onboarded.slug {
            assert_eq!(versions(&history[&slug(t)]), vec![1, 2, 3]);
            assert!(!fax.contains_key(&schema(t)), "busy tenant untouched");
        } else {
            assert_eq!(versions(&history[&slug(t)]), vec![1, 2, 3, 4]);
            assert!(fax.contains_key(&schema(t)));
        }
    }
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&tenant_lock_key(&held.onboarded.organization_id)],
        )
        .await
        .expect("release");
    let report = fan_out(&config, 3).await.expect("run after release");
    assert_eq!((report.migrated, report.up_to_date), (1, 11), "{report}");
    assert_eq!(columns(&su, "doctors", "fax").await.len(), 12);
    assert_eq!(leftovers(&su).await, (0, 0));

    // A tenant whose application holds a lock on a table the migration alters fails after lock_timeout
    // (instead of stalling the fan-out), untouched; the others go on.
    let mut config = config;
    config.migrations.lock_timeout_ms = 300;
    dir.write(
        "V005__room.sql",
        "ALTER TABLE patients ADD COLUMN room text;\nALTER TABLE doctors ADD COLUMN room text;\n",
    );
    let app = db.superuser().await;
    let blocked = &tenants[7];
    app.batch_execute(&format!(
        "BEGIN; LOCK TABLE {}.doctors IN ACCESS SHARE MODE",
        blocked.onboarded.schema.quoted()
    ))
    .await
    .expect("application lock");
    // lock_timeout applies: the blocked tenant fails with 55P03 (below) instead of the run waiting.
    let report = within(20, "a run blocked by a tenant's lock", fan_out(&config, 3))
        .await
        .expect("run with a locked table");
    assert_eq!(report.migrated, 11, "{report}");
    assert_eq!(report.failed.len(), 1, "{report}");
    let (failed_slug, f) = &report.failed[0];
    assert_eq!(failed_slug, &slug(blocked));
    assert_eq!(
        (f.sqlstate.as_str(), f.file.as_deref()),
        ("55P03", Some("V005__room.sql")),
        "{f}"
    );
    let patients_room = columns(&su, "patients", "room").await;
    assert!(
        !patients_room.contains_key(&schema(blocked)),
        "the blocked tenant's first ALTER was rolled back"
    );
    assert_eq!(patients_room.len(), 11);
    assert_eq!(
        versions(&histories(&su).await[&slug(blocked)]),
        vec![1, 2, 3, 4]
    );
    app.batch_execute("ROLLBACK").await.expect("release");
    let report = fan_out(&config, 3)
        .await
        .expect("run after the lock is gone");
    assert_eq!((report.migrated, report.up_to_date), (1, 11), "{report}");
    assert_eq!(columns(&su, "doctors", "room").await.len(), 12);
    assert_eq!(leftovers(&su).await, (0, 0));
}

// ---------------------------------------------------------------------------------------------------------
// 5. The tenant can neither forge nor read history
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_cannot_forge_or_read_migration_history() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenant = onboard_one(&db.name, &db.config, "forge", None).await;
    let other = onboard_one(&db.name, &db.config, "forge-other", None).await;
    let config = config_with(&db, &dir);
    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    assert_eq!(fan_out(&config, 2).await.expect("run").migrated, 2);
    let before = histories(&su).await;

    let proxy = TestProxy::start_with(|c| *c = config.clone()).await;
    let client = proxy_client(&proxy, &db, &tenant).await;
    let who: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("query through pgtenant")
        .get(0);
    assert_eq!(who, role(&tenant), "connected as the tenant role");

    for sql in [
        "SELECT pgtenant_api.record_migration(99, 1)",
        "SELECT pgtenant_api.record_migration(2, 1)",
        "SELECT * FROM pgtenant.tenant_migrations",
        "SELECT * FROM pgtenant.migration_tickets",
        "INSERT INTO pgtenant.migration_tickets (role_name, backend_pid, version, name, checksum)
             VALUES (session_user, pg_backend_pid(), 99, 'forged', 'x')",
        "INSERT INTO pgtenant.tenant_migrations (organization_id, version, name, checksum, duration_ms)
             SELECT gen_random_uuid(), 99, 'forged', 'x', 1",
        "INSERT INTO pgtenant.ddl_unlocks VALUES (session_user, pg_backend_pid())",
        "SELECT * FROM pgtenant.organizations",
    ] {
        assert_eq!(sqlstate_of(&client, sql).await, "42501", "{sql}");
    }
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM pgtenant.tenant_migrations WHERE version = 99"
        )
        .await,
        0,
        "no forged row"
    );
    assert_eq!(histories(&su).await, before, "history unchanged");
    assert_eq!(leftovers(&su).await, (0, 0));
    assert_eq!(before[&slug(&other)], dir.expected());
    drop(client);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// 6. A DDL-locked tenant is migrated, and stays locked for its own sessions
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_locked_tenant_is_migrated_but_its_sessions_stay_locked() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let locked = onboard_one(&db.name, &db.config, "noddl", Some(false)).await;
    let open = onboard_one(&db.name, &db.config, "ddl", None).await;
    let config = config_with(&db, &dir);
    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    dir.write(
        "V003__appointments.sql",
        "CREATE TABLE appointments (id bigserial PRIMARY KEY, at timestamptz);\n",
    );

    let proxy = TestProxy::start_with(|c| *c = config.clone()).await;
    let client = proxy_client(&proxy, &db, &locked).await;
    assert_eq!(
        sqlstate_of(&client, "CREATE TABLE mine (x int)").await,
        "42501",
        "locked before"
    );
    drop(client);

    let report = fan_out(&config, 2).await.expect("run");
    assert_eq!(report.migrated, 2, "{report} {:?}", report.failed);
    assert!(report.ok(), "{report}");
    let history = histories(&su).await;
    let expected = dir.expected();
    let nickname = columns(&su, "patients", "nickname").await;
    let appointments = relations(&su, "appointments").await;
    for t in [&locked, &open] {
        assert_eq!(history[&slug(t)], expected, "{}", slug(t));
        assert_eq!(nickname.get(&schema(t)), Some(&role(t)), "{}", slug(t));
        assert_eq!(appointments.get(&schema(t)), Some(&role(t)), "{}", slug(t));
    }
    assert_eq!(
        leftovers(&su).await,
        (0, 0),
        "the migration backend's unlock is gone"
    );
    let ddl_allowed: bool = su
        .query_one(
            "SELECT ddl_allowed FROM pgtenant.organizations WHERE id = $1",
            &[&locked.onboarded.organization_id],
        )
        .await
        .expect("org")
        .get(0);
    assert!(!ddl_allowed, "still DDL-locked");

    let client = proxy_client(&proxy, &db, &locked).await;
    for sql in [
        "CREATE TABLE mine (x int)",
        "ALTER TABLE patients ADD COLUMN sneaky text",
        "DROP TABLE appointments",
    ] {
        assert_eq!(
            sqlstate_of(&client, sql).await,
            "42501",
            "locked after: {sql}"
        );
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM appointments", &[])
        .await
        .expect("the migrated table is usable")
        .get(0);
    assert_eq!(n, 0);
    let open_client = proxy_client(&proxy, &db, &open).await;
    open_client
        .batch_execute("CREATE TABLE mine (x int)")
        .await
        .expect("the other tenant may still run DDL");
    drop(client);
    drop(open_client);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// 7. A no-transaction file (CREATE INDEX CONCURRENTLY)
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_file_with_create_index_concurrently_reaches_every_tenant() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenants = onboard_many(&db.name, &db.config, "cic", 6, 3).await;
    let config = config_with(&db, &dir);
    dir.write("V002__patient_nickname.sql", V002_NICKNAME);
    dir.write(
        "V003__patients_email_idx.sql",
        "-- pgtenant: no-transaction\n-- builds the index without blocking writes\n\
         CREATE INDEX CONCURRENTLY patients_email_idx ON patients (email);\n",
    );
    dir.write(
        "V004__doctor_phone.sql",
        "ALTER TABLE doctors ADD COLUMN phone text;\n",
    );
    let m = migrator(&config, 3);
    assert!(m.migrations()[2].no_transaction, "header recognised");
    let report = m.run(&options(3), &Silent).await.expect("run");
    assert_eq!(report.migrated, 6, "{report} {:?}", report.failed);
    assert!(report.ok(), "{report}");
    let expected = dir.expected();
    let history = histories(&su).await;
    let index = relations(&su, "patients_email_idx").await;
    let phone = columns(&su, "doctors", "phone").await;
    let nickname = columns(&su, "patients", "nickname").await;
    let valid: BTreeSet<String> = su
        .query(
            "SELECT n.nspname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = 'patients_email_idx' AND i.indisvalid AND i.indisready",
            &[],
        )
        .await
        .expect("pg_index")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for t in &tenants {
        assert_eq!(history[&slug(t)], expected, "{}", slug(t));
        assert_eq!(
            index.get(&schema(t)),
            Some(&role(t)),
            "{}: index owned by tenant",
            slug(t)
        );
        assert!(valid.contains(&schema(t)), "{}: index valid", slug(t));
        assert!(phone.contains_key(&schema(t)) && nickname.contains_key(&schema(t)));
    }
    assert_eq!(leftovers(&su).await, (0, 0));
    let report = m.run(&options(3), &Silent).await.expect("rerun");
    assert_eq!((report.migrated, report.up_to_date), (0, 6), "{report}");
}

/// `-- pgtenant: no-transaction` is meant for statements that cannot run in a transaction block; a file with
/// two of them must work too (each statement on its own, as the header promises "outside a transaction").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_file_with_two_concurrent_index_builds_is_applied() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let tenants = onboard_many(&db.name, &db.config, "cic-two", 2, 2).await;
    let config = config_with(&db, &dir);
    dir.write(
        "V002__two_indexes.sql",
        "-- pgtenant: no-transaction\n\
         CREATE INDEX CONCURRENTLY patients_email_idx ON patients (email);\n\
         CREATE INDEX CONCURRENTLY patients_name_idx ON patients (full_name);\n",
    );
    let report = fan_out(&config, 2).await.expect("run");
    assert!(
        report.failed.is_empty(),
        "a no-transaction file with two statements fails: {:?}",
        report.failed
    );
    assert_eq!(report.migrated, 2, "{report}");
    let history = histories(&su).await;
    let email = relations(&su, "patients_email_idx").await;
    let name = relations(&su, "patients_name_idx").await;
    for t in &tenants {
        assert_eq!(history[&slug(t)], dir.expected(), "{}", slug(t));
        assert!(email.contains_key(&schema(t)) && name.contains_key(&schema(t)));
    }
}

// ---------------------------------------------------------------------------------------------------------
// 8. Dry run, status, and a tenant onboarded during a fan-out
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_status_and_onboarding_during_a_fan_out() {
    let (db, dir) = fresh().await;
    let su = db.superuser().await;
    let config = config_with(&db, &dir);
    // A and ten others at V1, B at V2, C (onboarded later) at V4.
    let fillers = onboard_many(&db.name, &db.config, "dry", 10, 3).await;
    let a = onboard_one(&db.name, &db.config, "dry-a", None).await;
    let b = onboard_one(&db.name, &db.config, "dry-b", None).await;
    dir.write(
        "V002__slow_nickname.sql",
        "SELECT pg_sleep(0.1);\nALTER TABLE patients ADD COLUMN nickname text;\n",
    );
    let report = migrator(&config, 1)
        .run(
            &FanOutOptions {
                concurrency: 1,
                only: Some(slug(&b)),
                ..FanOutOptions::default()
            },
            &Silent,
        )
        .await
        .expect("migrate only B");
    assert_eq!((report.tenants, report.migrated), (1, 1), "{report}");
    dir.write(
        "V003__doctor_phone.sql",
        "ALTER TABLE doctors ADD COLUMN phone text;\n",
    );
    dir.write(
        "V004__appointments.sql",
        "CREATE TABLE appointments (id bigserial PRIMARY KEY);\n",
    );
    let c = onboard_one(&db.name, &config, "dry-c", None).await;

    let m = migrator(&config, 2);
    assert_eq!(m.latest(), Some(4));
    let plan: BTreeMap<String, Vec<i32>> = m
        .dry_run(None)
        .await
        .expect("dry run")
        .into_iter()
        .map(|(t, files)| (t.tenant.slug, files.iter().map(|f| f.version).collect()))
        .collect();
    let mut want: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for t in fillers.iter().chain([&a]) {
        want.insert(slug(t), vec![2, 3, 4]);
    }
    want.insert(slug(&b), vec![3, 4]);
    assert_eq!(
        plan, want,
        "dry run: exactly the pending files of each tenant behind"
    );
    let only_b: Vec<Vec<i32>> = m
        .dry_run(Some(&slug(&b)))
        .await
        .expect("dry run for B")
        .into_iter()
        .map(|(_, files)| files.iter().map(|f| f.version).collect())
        .collect();
    assert_eq!(only_b, vec![vec![3, 4]]);
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM pgtenant.tenant_migrations WHERE version > 2"
        )
        .await,
        2,
        "a dry run applies nothing (the only rows above V2 are C's, from its onboarding)"
    );

    let status: BTreeMap<String, (Option<i32>, Vec<i32>)> = m
        .status(None)
        .await
        .expect("status")
        .into_iter()
        .map(|s| (s.slug, (s.version, s.pending)))
        .collect();
    assert_eq!(status.len(), 13);
    assert_eq!(status[&slug(&a)], (Some(1), vec![2, 3, 4]));
    assert_eq!(status[&slug(&b)], (Some(2), vec![3, 4]));
    assert_eq!(status[&slug(&c)], (Some(4), vec![]));
    let behind = status.values().filter(|(_, p)| !p.is_empty()).count();
    assert_eq!(behind, 12);

    // The same through the binary.
    let config_file = write_binary_config(&db, &dir);
    let (ok, stdout, stderr) = run_binary(&config_file, &["migrate", "status"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("13 tenants, latest version 4, 12 behind"),
        "{stdout}"
    );
    let c_line = stdout
        .lines()
        .find(|l| l.starts_with(&slug(&c)))
        .expect("C listed");
    assert!(c_line.contains(" 4 ") && c_line.ends_with("[]"), "{c_line}");
    let (ok, stdout, stderr) = run_binary(&config_file, &["migrate", "dry-run"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("12 tenants would be migrated"), "{stdout}");
    let b_line = stdout
        .lines()
        .find(|l| l.starts_with(&slug(&b)))
        .expect("B listed");
    assert!(
        b_line.ends_with(": V3__doctor_phone, V4__appointments"),
        "{b_line}"
    );
    assert!(!stdout.contains(&slug(&c)), "C is up to date: {stdout}");

    // A fan-out, and a tenant onboarded (with the new files) while it runs.
    let task = {
        let m = m.clone();
        tokio::spawn(async move { m.run(&options(2), &Silent).await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &su,
        "SELECT count(*) FROM pgtenant.tenant_migrations WHERE version = 4",
    )
    .await
        < 2
    {
        assert!(
            !task.is_finished(),
            "the fan-out ended before anything was seen"
        );
        assert!(Instant::now() < deadline, "fan-out made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = onboard_one(&db.name, &config, "dry-d", None).await;
    assert!(
        !task.is_finished(),
        "D was onboarded while the fan-out was still running"
    );
    let report = within(60, "the fan-out", task)
        .await
        .expect("join")
        .expect("fan-out");
    assert!(report.ok(), "{report} {:?}", report.failed);
    assert_eq!(report.migrated, 12, "{report}");
    let expected = dir.expected();
    let history = histories(&su).await;
    let nickname = columns(&su, "patients", "nickname").await;
    let appointments = relations(&su, "appointments").await;
    assert_eq!(history.len(), 14);
    for (slug, h) in &history {
        assert_eq!(h, &expected, "{slug}: at the latest version");
    }
    for t in fillers.iter().chain([&a, &b, &c, &d]) {
        assert_eq!(nickname.get(&schema(t)), Some(&role(t)), "{}", slug(t));
        assert_eq!(appointments.get(&schema(t)), Some(&role(t)), "{}", slug(t));
    }
    let status = m.status(None).await.expect("status after");
    assert!(status
        .iter()
        .all(|s| s.version == Some(4) && s.pending.is_empty()));
    assert!(m.dry_run(None).await.expect("dry run after").is_empty());
    let (ok, stdout, _) = run_binary(&config_file, &["migrate", "status"]).await;
    assert!(
        ok && stdout.contains("14 tenants, latest version 4, 0 behind"),
        "{stdout}"
    );
    let _ = std::fs::remove_file(&config_file);
}
