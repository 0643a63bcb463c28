//! `pgtenant dev`, as a newcomer runs it: the real binary starts a cluster, onboards the demo tenant, prints
//! a psql line and a URL that work, stops everything on Ctrl-C, and a second start reuses the cluster; from a
//! folder the postgres OS user cannot reach too. User errors print one line, no backtrace.

mod common;

use common::*;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Started {
    child: tokio::process::Child,
    psql_line: String,
    url: String,
    /// Collects stderr (echoed to ours as it comes) until the child closes it.
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

async fn start_dev(dir: &Path, port: u16) -> Started {
    start_dev_in(&repo_path("."), Some(dir), port).await
}

/// `pgtenant dev --port PORT [--dir DIR]` run in the folder `cwd`.
async fn start_dev_in(cwd: &Path, dir: Option<&Path>, port: u16) -> Started {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    cmd.args(["dev", "--port", &port.to_string()]);
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir);
    }
    let mut child = cmd
        .current_dir(cwd)
        .env("PGTENANT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgtenant dev");
    let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let stderr = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = errors.next_line().await {
            eprintln!("pgtenant dev: {line}");
            seen.push(line);
        }
        seen
    });
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
        stderr,
    }
}

/// Ctrl-C, a clean exit; returns what it printed on stderr.
async fn stop_dev(mut started: Started) -> Vec<String> {
    let pid = started.child.id().expect("pid") as i32;
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), started.child.wait())
        .await
        .expect("pgtenant dev stops after Ctrl-C")
        .expect("wait");
    assert!(status.success(), "pgtenant dev exited with {status}");
    tokio::time::timeout(Duration::from_secs(30), started.stderr)
        .await
        .expect("stderr closed after exit")
        .expect("stderr reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_end_to_end_and_restarts_on_the_same_cluster() {
    let root = std::env::temp_dir().join(format!("pgtenant-dev-{}", uuid::Uuid::new_v4().simple()));
    pgcluster::prepare_dir(&root).expect("dir");
    let dir = root.join("state");
    let port = pgcluster::free_port().expect("port");

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
    // The postgres user reaches the state dir: the cluster lives in it, as it always did.
    assert!(
        dir.join("pgdata/PG_VERSION").is_file(),
        "no cluster in {}",
        dir.display()
    );
    let said = stop_dev(started).await;
    assert!(!said.iter().any(|l| l.contains("cannot reach")), "{said:?}");

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

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn accepts_on(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Like a clone in root's home (mode 0700): the project folder is out of the postgres OS user's reach, so
/// the cluster lives in the folder derived from the project's path, the same on the second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_from_a_private_folder_keeps_the_cluster_where_postgres_reaches_it() {
    use pgtenant::dev::cluster_home::{derived_dir_for, DERIVED_BASE};
    if !pgcluster::is_root() {
        println!(
            "skipped: not root, so PostgreSQL runs as ourselves and no project folder is out of its reach"
        );
        return;
    }
    let private = std::env::temp_dir().join(format!(
        "pgtenant-private-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .expect("private dir");
    // Whatever the umask, the private folder stays 0700 (root-owned).
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let project = private.join("clone");
    std::fs::create_dir(&project).expect("project dir");
    for needed in ["shared-migrations", "tenant-migrations"] {
        std::os::unix::fs::symlink(repo_path(needed), project.join(needed))
            .expect("link migrations");
    }
    assert!(
        !pgcluster::postgres_can_reach(&project).expect("reachability"),
        "the test folder is reachable by the postgres user: nothing to test"
    );
    let state = project.join(".pgtenant");
    let port = pgcluster::free_port().expect("port");

    // The first command of the README, from the private folder, no options but the port.
    let started = start_dev_in(&project, None, port).await;
    let home = derived_dir_for(&state).expect("derived folder");
    assert!(home.starts_with(DERIVED_BASE), "{}", home.display());
    assert!(
        home.join("pgdata/PG_VERSION").is_file(),
        "no cluster in {}",
        home.display()
    );
    assert!(
        home.join("pgdata/postmaster.pid").is_file(),
        "PostgreSQL not running in {}",
        home.display()
    );
    assert!(
        !state.join("pgdata").exists(),
        "a data directory was made in the private folder"
    );
    assert!(
        state.join("dev.toml").is_file(),
        "the config stays in the project"
    );
    let upstream_port = pgtenant::config::Config::load(&state.join("dev.toml"))
        .expect("dev.toml")
        .upstream
        .port;
    let (ok, stdout, stderr) = run_program(
        "sh",
        &["-c", &format!("{} -X -At -c 'SELECT 1'", started.psql_line)],
        &[],
        None,
    )
    .await;
    assert!(ok, "the printed psql line failed: {stderr}");
    assert_eq!(stdout.trim(), "1");
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
    let said = stop_dev(started).await;
    let home_text = home.display().to_string();
    assert!(
        said.iter()
            .any(|l| l.contains("cannot reach") && l.contains(&home_text)),
        "pgtenant dev did not say where the cluster lives: {said:?}"
    );
    assert!(!said.iter().any(|l| l.contains("error")), "{said:?}");
    assert!(
        !home.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL still running after Ctrl-C"
    );
    assert!(
        !accepts_on(upstream_port),
        "PostgreSQL still listens on {upstream_port}"
    );
    assert!(!accepts_on(port), "the proxy still listens on {port}");

    // Second run from the same folder: the same derived folder, the same cluster.
    let started = start_dev_in(&project, None, port).await;
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
    assert!(
        !home.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL still running after Ctrl-C"
    );
    assert!(!state.join("pgdata").exists());

    std::fs::remove_dir_all(&home).expect("remove the derived folder");
    std::fs::remove_dir_all(&private).expect("remove the private folder");
}

/// A user error (here a missing config file) is one `error:` line and exit code 1, even with backtraces on.
#[tokio::test]
async fn a_user_error_is_one_line_without_a_backtrace() {
    let missing = "/nonexistent/pgtenant.toml";
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--config", missing, "serve"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env("PGTENANT_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run pgtenant");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "more than one line on stderr: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(missing),
        "the error does not name the file: {stderr}"
    );
    assert_eq!(
        lines[0].matches("(os error 2)").count(),
        1,
        "the cause is said once: {stderr}"
    );
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
