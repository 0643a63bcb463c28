//! `pgtenant dev`, as a newcomer runs it: the real binary starts a cluster, onboards the demo tenant, prints
//! a psql line and a URL that work, stops everything on Ctrl-C, and a second start reuses the cluster.

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Started {
    child: tokio::process::Child,
    psql_line: String,
    url: String,
}

async fn start_dev(dir: &std::path::Path, port: u16) -> Started {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args([
            "dev",
            "--dir",
            &dir.display().to_string(),
            "--port",
            &port.to_string(),
        ])
        .current_dir(repo_path("."))
        .env("PGTENANT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgtenant dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut psql_line = None;
    let mut url = None;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.trim_start().starts_with("PGPASSWORD=") {
                psql_line = Some(line.trim().to_string());
            }
            if line.starts_with("postgres://") {
                url = Some(line.trim().to_string());
            }
            if line.starts_with("Ctrl-C") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("pgtenant dev printed its connection lines in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Started {
        child,
        psql_line: psql_line.expect("a psql line"),
        url: url.expect("a connection URL"),
    }
}

async fn stop_dev(mut started: Started) {
    let pid = started.child.id().expect("pid") as i32;
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), started.child.wait())
        .await
        .expect("pgtenant dev stops after Ctrl-C")
        .expect("wait");
    assert!(status.success(), "pgtenant dev exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_end_to_end_and_restarts_on_the_same_cluster() {
    let root = std::env::temp_dir().join(format!("pgtenant-dev-{}", uuid::Uuid::new_v4().simple()));
    pgtenant::pgcluster::prepare_dir(&root).expect("dir");
    let dir = root.join("state");
    let port = pgtenant::pgcluster::free_port().expect("port");

    let started = start_dev(&dir, port).await;
    // The printed psql line, run as printed (through a shell), with a query added.
    let (ok, stdout, stderr) = run_program(
        "sh",
        &[
            "-c",
            &format!(
                "{} -X -At -c 'SELECT current_user, count(*) FROM employees GROUP BY 1'",
                started.psql_line
            ),
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "the printed psql line failed: {stderr}");
    assert!(
        stdout.starts_with("tenant_") && stdout.trim_end().ends_with("|1"),
        "{stdout}"
    );
    // The URL works as a libpq connection string too; create something to find after the restart.
    let (ok, _, stderr) = run_program(
        &client_program("psql"),
        &[
            &started.url,
            "-X",
            "-c",
            "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "the printed URL failed: {stderr}");
    // dev.toml works for the CLI from a second terminal.
    let config = dir.join("dev.toml");
    let (ok, stdout, stderr) = run_program(
        env!("CARGO_BIN_EXE_pgtenant"),
        &[
            "--config",
            &config.display().to_string(),
            "onboard",
            "--name",
            "Other Co",
            "--admin-email",
            "admin@other.test",
        ],
        &[("PGTENANT_LOG", "warn")],
        None,
    )
    .await;
    assert!(ok, "onboard against the dev setup failed: {stderr}");
    assert!(stdout.contains("schema:"), "{stdout}");
    let (ok, token, stderr) = run_program(
        env!("CARGO_BIN_EXE_pgtenant"),
        &[
            "--config",
            &config.display().to_string(),
            "token",
            "--email",
            "admin@other.test",
            "--ttl",
            "10m",
        ],
        &[("PGTENANT_LOG", "warn")],
        None,
    )
    .await;
    assert!(ok, "token failed: {stderr}");
    let other = format!("host=127.0.0.1 port={port} user=admin@other.test dbname=pgtenant_dev password={} sslmode=disable", token.trim());
    let (ok, stdout, stderr) = run_program(
        &client_program("psql"),
        &[
            &other,
            "-X",
            "-At",
            "-c",
            "SELECT to_regclass('kept') IS NULL",
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "the other tenant's token failed: {stderr}");
    assert_eq!(
        stdout.trim(),
        "t",
        "the other tenant does not see the demo tenant's table"
    );
    stop_dev(started).await;

    // Second start: same cluster, same tenants, the table is still there.
    let started = start_dev(&dir, port).await;
    let (ok, stdout, stderr) = run_program(
        &client_program("psql"),
        &[&started.url, "-X", "-At", "-c", "SELECT x FROM kept"],
        &[],
        None,
    )
    .await;
    assert!(ok, "after restart: {stderr}");
    assert_eq!(stdout.trim(), "7");
    stop_dev(started).await;
    std::fs::remove_dir_all(&root).ok();
}
