//! Onboarding latency and fan-out migration time, on a throwaway cluster.
//!
//! `cargo bench --bench fanout -- [--concurrency N] [TENANT_COUNT...]` (default: 1000 10000, concurrency 8).
//! Prints the onboarding latency (median, p99) over the first 100 tenants, then for each tenant count grows
//! the tenant set to that count and times one `ALTER TABLE … ADD COLUMN` migration fanned out over all of
//! them. Bounded: it creates at most the largest count of tenants, once.

use pgcluster::{Cluster, ClusterSpec, PgBinaries};
use pgtenant::config::Config;
use pgtenant::fanout::progress::Silent;
use pgtenant::fanout::{FanOutOptions, TenantMigrator};
use pgtenant::tenancy::{self, OnboardRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER_SECRET: &str = "bench-server-secret-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn connect(config: tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

async fn onboard_many(
    config: &Arc<Config>,
    from: usize,
    to: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..to {
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let config = config.clone();
        tasks.spawn(async move {
            let mut admin = connect(config.admin_pg_config()).await;
            let started = Instant::now();
            tenancy::onboard(
                &mut admin,
                &config,
                &OnboardRequest {
                    name: format!("Bench Tenant {i}"),
                    admin_email: format!("admin{i}@bench.test"),
                    slug: None,
                    ddl_allowed: None,
                    cluster: None,
                },
            )
            .await
            .expect("onboard");
            drop(permit);
            started.elapsed()
        });
    }
    let mut times = Vec::new();
    while let Some(t) = tasks.join_next().await {
        times.push(t.expect("task"));
    }
    times
}

fn write_migrations(dir: &Path, extra_version: i32) {
    std::fs::create_dir_all(dir).expect("dir");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("tenant-migrations/V001__initial_schema.sql"),
        dir.join("V001__initial_schema.sql"),
    )
    .expect("copy V001");
    for v in 2..=extra_version {
        std::fs::write(
            dir.join(format!("V{v:03}__add_column_{v}.sql")),
            format!("ALTER TABLE patients ADD COLUMN note_{v} text;\n"),
        )
        .expect("write migration");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut concurrency = 8usize;
    let mut counts: Vec<usize> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--concurrency" => {
                concurrency = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--concurrency N")
            }
            "--bench" => {}
            other => {
                if let Ok(n) = other.parse() {
                    counts.push(n)
                }
            }
        }
    }
    if counts.is_empty() {
        counts = vec![1000, 10_000];
    }
    counts.sort_unstable();

    let bins = PgBinaries::find().expect("PostgreSQL binaries");
    let root = std::env::temp_dir().join(format!("pgtenant-bench-fanout-{}", std::process::id()));
    pgcluster::prepare_dir(&root).expect("dir");
    let spec = ClusterSpec::new(root.join("data"), "postgres", "bench-password")
        .setting("fsync", "off")
        .setting("synchronous_commit", "off")
        .setting("full_page_writes", "off")
        .setting("max_connections", "100");
    let cluster = Cluster::start(&bins, spec).expect("cluster");
    cluster
        .stop_when_process_exits(Some(&root))
        .expect("watchdog");
    connect(cluster.superuser_config("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("create database");
    let mut config = Config::default();
    config.upstream.port = cluster.port();
    config.upstream.database = "bench".into();
    config.upstream.admin_password = Some("bench-password".into());
    config.upstream.server_secret = Some(SERVER_SECRET.into());
    let migrations_dir: PathBuf = root.join("tenant-migrations");
    write_migrations(&migrations_dir, 1);
    config.tenancy.tenant_migrations_dir = migrations_dir.clone();
    config.tenancy.shared_migrations_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("shared-migrations");
    let mut admin = connect(config.admin_pg_config()).await;
    pgtenant::migrate::apply_shared(&mut admin, &config.tenancy.shared_migrations_dir)
        .await
        .expect("shared migrations");
    let config = Arc::new(config);

    println!(
        "PostgreSQL {}, {} cores",
        bins.version().unwrap_or_default(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    // Onboarding latency: one at a time, as a signup flow would.
    let mut times = onboard_many(&config, 0, 100, 1).await;
    times.sort();
    println!(
        "onboarding (100 tenants, one at a time): median {:.1} ms, p99 {:.1} ms",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0
    );

    let mut existing = 100;
    let mut version = 1;
    for count in counts {
        if count > existing {
            let started = Instant::now();
            // New tenants get every file present, so grow the set before adding the next migration.
            onboard_many(&config, existing, count, 4).await;
            println!(
                "created {} more tenants in {:.1}s (4 at a time)",
                count - existing,
                started.elapsed().as_secs_f64()
            );
            existing = count;
        }
        version += 1;
        write_migrations(&migrations_dir, version);
        let migrator = TenantMigrator::new(&config, concurrency).expect("migrator");
        let options = FanOutOptions {
            concurrency,
            ..FanOutOptions::default()
        };
        let report = migrator.run(&options, &Silent).await.expect("fan-out");
        assert!(report.ok(), "fan-out failed: {report}");
        println!(
            "fan-out of one ALTER TABLE ADD COLUMN over {count} tenants, concurrency {concurrency}: {:.1}s ({:.0} tenants/s, {:.2} ms/tenant) — {report}",
            report.elapsed.as_secs_f64(),
            count as f64 / report.elapsed.as_secs_f64(),
            report.elapsed.as_secs_f64() * 1000.0 / count as f64
        );
        // A second run finds nothing to do: the cost of a tenant already at the latest version.
        let again = migrator.run(&options, &Silent).await.expect("fan-out");
        println!(
            "  re-run with nothing pending: {:.2}s ({} up to date)",
            again.elapsed.as_secs_f64(),
            again.up_to_date
        );
    }
}
