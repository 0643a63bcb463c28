//! Unit tests of `pgcluster`.

use super::binaries::{is_executable_file, REQUIRED_TOOLS};
use super::command::{combined_output, shell_quote};
use super::*;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn test_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "pgtenant-pgcluster-{name}-{}-{nanos}",
        std::process::id()
    ));
    prepare_dir(&dir).unwrap();
    dir
}

fn psql(cluster: &Cluster, password: &str, sql: &str) -> Output {
    Command::new(cluster.bins().psql())
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            cluster.host(),
            "-p",
        ])
        .arg(cluster.port().to_string())
        .args(["-U", cluster.superuser(), "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn psql_ok(cluster: &Cluster, sql: &str) -> String {
    let out = psql(cluster, cluster.superuser_password(), sql);
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        combined_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn find_binaries() {
    let bins = PgBinaries::find().unwrap();
    for tool in REQUIRED_TOOLS {
        assert!(
            is_executable_file(&bins.path(tool)),
            "{}",
            bins.path(tool).display()
        );
    }
    let version = bins.version().unwrap();
    println!("bindir {} {version}", bins.bindir.display());
    assert!(version.contains("PostgreSQL"), "{version}");
}

#[test]
fn shell_quoting() {
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
}

#[test]
fn start_connect_stop_restart() {
    let bins = PgBinaries::find().unwrap();
    let dir = test_dir("restart");
    let data = dir.join("data");
    let password = "s3cret 'pw\" $x";
    let spec = ClusterSpec::new(&data, "postgres", password).setting("fsync", "off");

    let mut cluster = Cluster::start(&bins, spec.clone()).unwrap();
    println!("{cluster:?}");
    assert!(cluster.was_initialized());
    assert!(cluster.port() != 0);
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.log_file(), dir.join("data.log"));
    assert!(data.join("PG_VERSION").exists());
    assert_eq!(psql_ok(&cluster, "select 1"), "1");
    assert_eq!(psql_ok(&cluster, "show fsync"), "off");
    assert_eq!(psql_ok(&cluster, "show max_connections"), "300");
    assert_eq!(psql_ok(&cluster, "show listen_addresses"), "127.0.0.1");
    assert!(psql_ok(
        &cluster,
        "select rolpassword from pg_authid where rolname = 'postgres'"
    )
    .starts_with("SCRAM-SHA-256$"));
    let wrong = psql(&cluster, "wrong", "select 1");
    assert!(!wrong.status.success(), "wrong password accepted");
    assert!(
        combined_output(&wrong).contains("password authentication failed"),
        "{}",
        combined_output(&wrong)
    );
    psql_ok(
        &cluster,
        "create table marker (x int); insert into marker values (42)",
    );

    let first_port = cluster.port();
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    assert!(!data.join("postmaster.pid").exists());
    assert!(TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, first_port)),
        Duration::from_secs(1)
    )
    .is_err());
    cluster.stop().unwrap(); // idempotent
    drop(cluster);

    let again = Cluster::start(&bins, spec.clone()).unwrap();
    assert!(!again.was_initialized(), "second start ran initdb");
    assert_eq!(psql_ok(&again, "select x from marker"), "42");

    // A postmaster left running on the data dir (here: a leaked handle) is stopped by the next start.
    let leaked_port = again.port();
    std::mem::forget(again);
    let mut third = Cluster::start(&bins, spec).unwrap();
    assert!(!third.was_initialized());
    assert_eq!(psql_ok(&third, "select x from marker"), "42");
    if third.port() != leaked_port {
        assert!(TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, leaked_port)),
            Duration::from_secs(1)
        )
        .is_err());
    }
    third.stop().unwrap();
    drop(third);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn port_taken_explicit_fails_clearly_and_auto_retries() {
    let bins = PgBinaries::find().unwrap();
    let dir = test_dir("porttaken");
    let data = dir.join("data");
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().port();

    let mut spec = ClusterSpec::new(&data, "postgres", "pw");
    spec.port = taken;
    let err = Cluster::start(&bins, spec.clone()).unwrap_err();
    let msg = err.to_string();
    println!("expected error: {msg}");
    assert!(matches!(err, ClusterError::StartFailed { port, .. } if port == taken));
    assert!(msg.contains("Address already in use"), "{msg}");

    // Port 0: the first pick is taken, the start retries on another one.
    spec.port = 0;
    let mut picks = vec![taken];
    let mut cluster = Cluster::start_with_ports(&bins, spec, move || match picks.pop() {
        Some(p) => Ok(p),
        None => free_port(),
    })
    .unwrap();
    assert_ne!(cluster.port(), taken);
    assert!(
        !cluster.was_initialized(),
        "initdb ran in the first, failed attempt already"
    );
    assert_eq!(psql_ok(&cluster, "select 1"), "1");
    cluster.stop().unwrap();
    drop(cluster);
    drop(blocker);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn long_path_uses_short_socket_dir() {
    let bins = PgBinaries::find().unwrap();
    let dir = test_dir("longpath");
    let deep =
        dir.join("a-rather-long-directory-name-to-push-the-socket-path-past-the-limit-of-sun-path");
    prepare_dir(&deep).unwrap();
    let mut cluster =
        Cluster::start(&bins, ClusterSpec::new(deep.join("data"), "postgres", "pw")).unwrap();
    let sock = cluster.socket_dir().to_path_buf();
    assert!(!sock.starts_with(&dir), "{}", sock.display());
    assert!(sock.join(format!(".s.PGSQL.{}", cluster.port())).exists());
    assert_eq!(psql_ok(&cluster, "select 1"), "1");
    cluster.stop().unwrap();
    assert!(!sock.exists(), "owned socket dir not removed");
    drop(cluster);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn untraversable_parent_is_a_clear_error() {
    if !is_root() {
        return;
    }
    let bins = PgBinaries::find().unwrap();
    let dir = test_dir("private");
    let private = dir.join("private");
    fs::DirBuilder::new().mode(0o700).create(&private).unwrap(); // root-owned, 0700
    let err = Cluster::start(
        &bins,
        ClusterSpec::new(private.join("x").join("data"), "postgres", "pw"),
    )
    .unwrap_err();
    let msg = err.to_string();
    println!("expected error: {msg}");
    assert!(matches!(err, ClusterError::OsUser(_)), "{msg}");
    assert!(msg.contains("traversable"), "{msg}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reachability_by_the_postgres_user() {
    let dir = test_dir("reach");
    assert!(postgres_can_reach(&dir).unwrap());
    assert!(!postgres_can_reach(&dir.join("missing")).unwrap());
    if is_root() {
        let private = dir.join("private");
        fs::DirBuilder::new().mode(0o700).create(&private).unwrap(); // root-owned, 0700
        let inside = private.join("project");
        fs::DirBuilder::new().mode(0o755).create(&inside).unwrap();
        assert!(!postgres_can_reach(&private).unwrap());
        assert!(!postgres_can_reach(&inside).unwrap());
    } else {
        println!("not root: only the trivial cases are checked");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watchdog_stops_cluster_and_removes_dir() {
    let bins = PgBinaries::find().unwrap();
    let dir = test_dir("watchdog");
    let cluster =
        Cluster::start(&bins, ClusterSpec::new(dir.join("data"), "postgres", "pw")).unwrap();
    assert_eq!(psql_ok(&cluster, "select 1"), "1");
    let port = cluster.port();

    // Watch a short-lived child instead of ourselves.
    let mut child = Command::new("sleep").arg("1").spawn().unwrap();
    cluster.spawn_watchdog(child.id(), Some(&dir)).unwrap();
    // Also exercise the real entry point: it only acts when this test process exits.
    cluster.stop_when_process_exits(None).unwrap();
    child.wait().unwrap(); // reaped, so `kill -0` fails

    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.exists(), "watchdog did not remove {}", dir.display());
    assert!(TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1)
    )
    .is_err());
    drop(cluster); // stop on a vanished cluster is Ok
}
