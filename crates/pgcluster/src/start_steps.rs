//! The steps of a start, in the order `Cluster::start` takes them: the directories (and their owner), the TLS
//! files, a leftover postmaster, `initdb`, `pg_ctl start` with the settings, waiting for TCP.

use super::cluster::Cluster;
use super::command::{
    combined_output, pg_command, program_name, run_checked, run_output, shell_quote,
};
use super::error::{io_err, ClusterError};
use super::os_user::chown_to;
use super::postmaster::{file_len, is_postgres_process, log_tail, pg_ctl_stop, postmaster_pid};
use super::spec::ClusterTls;
use super::start::StartError;
use super::{HOST, LOG_TAIL_LINES, PG_CTL_TIMEOUT_SECS, TCP_READY_TIMEOUT};
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::time::{Duration, Instant};

impl Cluster {
    /// Creates the parent, data, socket dirs and the log file; hands them to the postgres OS user when root and
    /// checks that user can reach them.
    pub(super) fn prepare_paths(&self) -> Result<(), ClusterError> {
        if let Some(parent) = self.data_dir.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| io_err("could not create directory", parent, e))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.data_dir.is_dir() => {}
            Err(e) => return Err(io_err("could not create data directory", &self.data_dir, e)),
        }
        match fs::DirBuilder::new().mode(0o755).create(&self.socket_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.socket_dir.is_dir() => {}
            Err(e) => {
                return Err(io_err(
                    "could not create socket directory",
                    &self.socket_dir,
                    e,
                ))
            }
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.log_file)
            .map_err(|e| io_err("could not create log file", &self.log_file, e))?;

        let Some(user) = &self.user else {
            return Ok(());
        };
        // An existing cluster keeps its ownership (postgres checks it and says so in the log).
        if !self.data_dir.join("PG_VERSION").exists() {
            chown_to(&self.data_dir, user)?;
        }
        chown_to(&self.socket_dir, user)?;
        chown_to(&self.log_file, user)?;

        // Can the postgres user reach and write them (every parent traversable)?
        let mut cmd = pg_command("/bin/sh", Some(user));
        cmd.args([
            "-c",
            r#"for p in "$@"; do [ -w "$p" ] || { echo "$p"; exit 1; }; done"#,
            "sh",
        ])
        .arg(&self.data_dir)
        .arg(&self.socket_dir)
        .arg(&self.log_file);
        let out = run_output(&mut cmd)?;
        if !out.status.success() {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            return Err(ClusterError::OsUser(format!(
                "cannot write {path}: it must be owned by {name} and every parent directory must be traversable \
                 by it (see pgcluster::prepare_dir)",
                name = user.name
            )));
        }
        Ok(())
    }

    /// Writes the server certificate and key into the data dir; returns the settings that use them.
    pub(super) fn write_tls_files(
        &self,
        tls: &ClusterTls,
    ) -> Result<Vec<(String, String)>, ClusterError> {
        let cert = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        let ca = self.data_dir.join("client-ca.crt");
        let mut files = vec![(&cert, &tls.cert_pem, 0o644), (&key, &tls.key_pem, 0o600)];
        if let Some(ca_pem) = &tls.client_ca_pem {
            files.push((&ca, ca_pem, 0o644));
        }
        for (path, text, mode) in files {
            let _ = fs::remove_file(path);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| io_err("could not write", path, e))?;
            if let Some(user) = &self.user {
                chown_to(path, user)?;
            }
        }
        let mut settings = vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), cert.to_string_lossy().into_owned()),
            ("ssl_key_file".into(), key.to_string_lossy().into_owned()),
        ];
        if tls.client_ca_pem.is_some() {
            settings.push(("ssl_ca_file".into(), ca.to_string_lossy().into_owned()));
        }
        Ok(settings)
    }

    /// Stops a postmaster still running on our data dir; removes a stale `postmaster.pid`.
    pub(super) fn stop_existing_postmaster(&self) -> Result<(), ClusterError> {
        let Some(pid) = postmaster_pid(&self.data_dir)? else {
            return Ok(());
        };
        if !is_postgres_process(pid) {
            let pidfile = self.data_dir.join("postmaster.pid");
            tracing::warn!(pid, file = %pidfile.display(), "removing stale postmaster.pid");
            return match fs::remove_file(&pidfile) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("could not remove stale", &pidfile, e)),
            };
        }
        tracing::warn!(pid, data_dir = %self.data_dir.display(), "a PostgreSQL server is already running on this data directory; stopping it");
        let mut last = String::new();
        for mode in ["fast", "immediate"] {
            let out = pg_ctl_stop(&self.bins, self.user.as_ref(), &self.data_dir, mode)?;
            if out.status.success() || !is_postgres_process(pid) {
                return Ok(());
            }
            last = combined_output(&out);
        }
        Err(ClusterError::StopFailed {
            data_dir: self.data_dir.clone(),
            reason: format!("server already running (pid {pid}) and pg_ctl stop failed: {last}"),
        })
    }

    pub(super) fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self
            .socket_dir
            .join(format!(".pwfile-{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&pwfile)?;
            f.write_all(self.superuser_password.as_bytes())?;
            f.write_all(b"\n")
        };
        write().map_err(|e| io_err("could not write password file", &pwfile, e))?;
        let result = (|| {
            if let Some(user) = &self.user {
                chown_to(&pwfile, user)?;
            }
            tracing::info!(data_dir = %self.data_dir.display(), "running initdb");
            let mut cmd = pg_command(self.bins.path("initdb"), self.user.as_ref());
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-U")
                .arg(&self.superuser)
                .arg(format!("--pwfile={}", pwfile.display()))
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]);
            run_checked(&mut cmd).map(|_| ())
        })();
        let _ = fs::remove_file(&pwfile);
        result
    }

    pub(super) fn pg_ctl_start(
        &self,
        port: u16,
        extra: &[(String, String)],
    ) -> Result<(), StartError> {
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), HOST.into()),
            (
                "unix_socket_directories".into(),
                self.socket_dir.to_string_lossy().into_owned(),
            ),
            ("max_connections".into(), "300".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            // Tenant moves copy with logical replication (pgtenant's `moves`).
            ("wal_level".into(), "logical".into()),
        ];
        settings.extend(extra.iter().cloned());
        let mut opts = format!("-p {port}");
        for (name, value) in &settings {
            opts.push_str(" -c ");
            opts.push_str(&shell_quote(&format!("{name}={value}")));
        }

        let log_start = file_len(&self.log_file);
        let mut cmd = pg_command(self.bins.path("pg_ctl"), self.user.as_ref());
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_TIMEOUT_SECS.to_string())
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(&opts);
        tracing::debug!(port, data_dir = %self.data_dir.display(), "pg_ctl start");
        let result = run_output(&mut cmd);
        let new_log = || log_tail(&self.log_file, log_start, usize::MAX);
        match result {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(StartError {
                reason: format!(
                    "{} start failed ({}): {}",
                    program_name(&cmd),
                    out.status,
                    combined_output(&out)
                ),
                new_log: new_log(),
            }),
            Err(e) => Err(StartError {
                reason: e.to_string(),
                new_log: new_log(),
            }),
        }
    }

    pub(super) fn wait_for_tcp(&self) -> Result<(), ClusterError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + TCP_READY_TIMEOUT;
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClusterError::StartFailed {
                        data_dir: self.data_dir.clone(),
                        port: self.port,
                        reason: format!(
                            "pg_ctl reported the server started but 127.0.0.1:{} refuses TCP: {e}",
                            self.port
                        ),
                        log_file: self.log_file.clone(),
                        log_tail: log_tail(&self.log_file, 0, LOG_TAIL_LINES),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
