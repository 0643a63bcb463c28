//! A running cluster, `Cluster`: its fields, what it tells about itself (port, paths, superuser, a
//! tokio-postgres config), stopping it, and stopping it on drop. Starting is in `start` and `start_steps`,
//! the exit watchdog in `watchdog`.

use super::binaries::PgBinaries;
use super::command::combined_output;
use super::error::ClusterError;
use super::os_user::OsUser;
use super::postmaster::{pg_ctl_stop, postmaster_pid};
use super::HOST;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A running cluster (until `stop` or drop).
pub struct Cluster {
    pub(super) bins: PgBinaries,
    pub(super) user: Option<OsUser>,
    pub(super) data_dir: PathBuf,
    pub(super) log_file: PathBuf,
    pub(super) socket_dir: PathBuf,
    /// The socket dir is a fallback under the temp dir, removed on stop.
    pub(super) owns_socket_dir: bool,
    pub(super) superuser: String,
    pub(super) superuser_password: String,
    pub(super) port: u16,
    pub(super) initialized: bool,
    pub(super) running: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("bindir", &self.bins.bindir)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .field("log_file", &self.log_file)
            .field("superuser", &self.superuser)
            .field("running", &self.running)
            .finish()
    }
}

impl Cluster {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1".
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The Unix socket directory (local connections are trusted for the OS user).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn bins(&self) -> &PgBinaries {
        &self.bins
    }

    /// Whether this `start` ran `initdb` (false when an existing data directory was reused).
    pub fn was_initialized(&self) -> bool {
        self.initialized
    }

    /// Whether the server is running (as far as this handle knows: `start` succeeded, `stop` not called).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A tokio-postgres config for the superuser over TCP to `dbname`.
    pub fn superuser_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(&self.superuser)
            .password(&self.superuser_password)
            .dbname(dbname);
        config
    }

    /// `pg_ctl stop -m fast`. Idempotent: stopping a stopped cluster (or one whose data dir is gone) is Ok.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let result = self.stop_inner();
        if self.owns_socket_dir {
            let _ = fs::remove_dir_all(&self.socket_dir);
        }
        result
    }

    fn stop_inner(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        if postmaster_pid(&self.data_dir).ok().flatten().is_none() {
            self.running = false;
            return Ok(());
        }
        let out = pg_ctl_stop(&self.bins, self.user.as_ref(), &self.data_dir, "fast")?;
        if out.status.success() || !self.data_dir.join("postmaster.pid").exists() {
            self.running = false;
            tracing::info!(data_dir = %self.data_dir.display(), "PostgreSQL stopped");
            return Ok(());
        }
        Err(ClusterError::StopFailed {
            data_dir: self.data_dir.clone(),
            reason: format!(
                "pg_ctl stop -m fast failed ({}): {}",
                out.status,
                combined_output(&out)
            ),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping PostgreSQL on drop failed");
        }
    }
}
