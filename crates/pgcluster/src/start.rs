//! Starting a cluster: `Cluster::start` (initdb when new, `pg_ctl start`, retrying on another port when the
//! picked one is taken), `Cluster::start_replica` (`pg_basebackup` first), and `free_port`. The single steps
//! a start takes are in `start_steps`.

use super::binaries::PgBinaries;
use super::cluster::Cluster;
use super::command::{conninfo_quote, pg_command, run_checked};
use super::error::{io_err, ClusterError};
use super::layout::{layout, Layout};
use super::os_user::{chown_to, postgres_os_user};
use super::postmaster::{is_postgres_process, pg_ctl_stop, port_in_use, postmaster_pid};
use super::spec::ClusterSpec;
use super::{HOST, LOG_TAIL_LINES, PORT_ATTEMPTS};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// A free TCP port on 127.0.0.1 (bind port 0, read it, close). Another process may take it before it is used;
/// `Cluster::start` retries on a new port when that happens.
pub fn free_port() -> Result<u16, ClusterError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = TcpListener::bind(addr)
        .map_err(|e| io_err("could not bind", Path::new("127.0.0.1:0"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io_err("could not read address of", Path::new("127.0.0.1:0"), e))?
        .port();
    Ok(port)
}

impl Cluster {
    /// Runs `initdb` if `data_dir` has no `PG_VERSION` (`-U superuser --pwfile --auth-local=trust
    /// --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync`; passwords stored as SCRAM-SHA-256), then starts the
    /// server with `pg_ctl start -w` (`-p PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=<data
    /// dir>.sock -c max_connections=300 -c password_encryption=scram-sha-256 -c wal_level=logical`, then
    /// `spec.extra_settings`), logging to `<data dir>.log`. A postmaster already running on the data dir is stopped first (`pg_ctl stop -m fast`).
    /// When `spec.port` is 0, a free port is picked and start is retried on a new one if the log says the port is
    /// taken. Returns once the server accepts TCP connections on 127.0.0.1.
    pub fn start(bins: &PgBinaries, spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        Self::start_with_ports(bins, spec, free_port)
    }

    pub(super) fn start_with_ports(
        bins: &PgBinaries,
        spec: ClusterSpec,
        mut pick_port: impl FnMut() -> Result<u16, ClusterError>,
    ) -> Result<Cluster, ClusterError> {
        if spec.superuser.is_empty() {
            return Err(ClusterError::InvalidSpec("superuser is empty".into()));
        }
        if spec.superuser_password.is_empty()
            || spec.superuser_password.contains(['\n', '\r', '\0'])
        {
            return Err(ClusterError::InvalidSpec(
                "superuser_password must be non-empty and hold no newline or NUL".into(),
            ));
        }
        for (name, value) in &spec.extra_settings {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return Err(ClusterError::InvalidSpec(format!(
                    "bad extra setting {name:?}"
                )));
            }
        }

        let user = postgres_os_user()?;
        let Layout {
            data_dir,
            log_file,
            socket_dir,
            owns_socket_dir,
        } = layout(&spec.data_dir)?;
        let mut cluster = Cluster {
            bins: bins.clone(),
            user,
            data_dir,
            log_file,
            socket_dir,
            owns_socket_dir,
            superuser: spec.superuser.clone(),
            superuser_password: spec.superuser_password.clone(),
            port: spec.port,
            initialized: false,
            running: false,
        };
        // From here on, dropping `cluster` on an error path stops a half-started server and removes an owned
        // socket dir.
        cluster.prepare_paths()?;
        cluster.stop_existing_postmaster()?;
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb()?;
            cluster.initialized = true;
        }

        let mut settings = spec.extra_settings.clone();
        if let Some(tls) = &spec.tls {
            settings.extend(cluster.write_tls_files(tls)?);
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = if spec.port == 0 {
                pick_port()?
            } else {
                spec.port
            };
            cluster.port = port;
            match cluster.pg_ctl_start(port, &settings) {
                Ok(()) => break,
                Err(StartError { reason, new_log }) => {
                    // pg_ctl may give up (timeout) on a postmaster that is still starting: stop it.
                    if let Ok(Some(pid)) = postmaster_pid(&cluster.data_dir) {
                        if is_postgres_process(pid) {
                            let _ = pg_ctl_stop(
                                bins,
                                cluster.user.as_ref(),
                                &cluster.data_dir,
                                "immediate",
                            );
                        }
                    }
                    if spec.port == 0 && port_in_use(&new_log) && attempt < PORT_ATTEMPTS {
                        tracing::debug!(
                            port,
                            "port taken, retrying PostgreSQL start on another port"
                        );
                        continue;
                    }
                    let log_tail = {
                        let lines: Vec<&str> = new_log.lines().collect();
                        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
                    };
                    return Err(ClusterError::StartFailed {
                        data_dir: cluster.data_dir.clone(),
                        port,
                        reason,
                        log_file: cluster.log_file.clone(),
                        log_tail,
                    });
                }
            }
        }
        cluster.running = true;
        cluster.wait_for_tcp()?;
        tracing::info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            log = %cluster.log_file.display(),
            "PostgreSQL started"
        );
        Ok(cluster)
    }

    /// Starts a streaming replica of `primary` on `spec.data_dir`: when the data directory holds no cluster
    /// yet, `pg_basebackup -R -X stream -c fast` from the primary (as the primary's superuser, over TCP, run
    /// as the `postgres` OS user when root) makes it a standby (`standby.signal`, `primary_conninfo` in
    /// `postgresql.auto.conf`); then it starts like any cluster ([`Cluster::start`]), in hot standby. The
    /// primary's `pg_hba.conf` (initdb's) allows replication connections from loopback. Returns once the
    /// standby accepts TCP connections; being in recovery and caught up is the caller's to wait for (e.g.
    /// `pg_last_wal_replay_lsn()` reaching the primary's `pg_current_wal_lsn()`).
    pub fn start_replica(
        bins: &PgBinaries,
        primary: &Cluster,
        spec: ClusterSpec,
    ) -> Result<Cluster, ClusterError> {
        let user = postgres_os_user()?;
        let Layout { data_dir, .. } = layout(&spec.data_dir)?;
        if !data_dir.join("PG_VERSION").exists() {
            if let Some(parent) = data_dir.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| io_err("could not create directory", parent, e))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(&data_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && data_dir.is_dir() => {}
                Err(e) => return Err(io_err("could not create data directory", &data_dir, e)),
            }
            if let Some(user) = &user {
                chown_to(&data_dir, user)?;
            }
            let conninfo = format!(
                "host={HOST} port={} user='{}' password='{}' dbname=postgres",
                primary.port,
                conninfo_quote(&primary.superuser),
                conninfo_quote(&primary.superuser_password)
            );
            tracing::info!(data_dir = %data_dir.display(), primary_port = primary.port, "pg_basebackup for a replica");
            let mut cmd = pg_command(bins.path("pg_basebackup"), user.as_ref());
            cmd.arg("-D").arg(&data_dir).arg("-d").arg(&conninfo).args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
            // The output never holds the connection string; the error says which program failed.
            run_checked(&mut cmd)?;
        }
        Cluster::start(bins, spec)
    }
}

pub(super) struct StartError {
    pub(super) reason: String,
    /// The log written during this attempt.
    pub(super) new_log: String,
}
