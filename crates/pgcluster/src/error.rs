//! `ClusterError`, the one error type of the cluster tooling, and `io_err`, which names the path an I/O error
//! is about. Its own file so every step (finding binaries, the OS user, starting, stopping) shares it.

use super::{BINDIR_ENV, POSTGRES_OS_USER};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Errors of this module. Messages name the program or directory involved; start failures quote the end of
/// the server log.
#[derive(thiserror::Error, Debug)]
pub enum ClusterError {
    #[error(
        "PostgreSQL binaries not found (need initdb, pg_ctl and postgres in one directory); searched: {searched}. \
         Install PostgreSQL or set {BINDIR_ENV} to its bin directory"
    )]
    BinariesNotFound { searched: String },

    #[error("{BINDIR_ENV}={} does not hold {missing}", dir.display())]
    BadBindir { dir: PathBuf, missing: String },

    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error("could not run {program}: {source}")]
    Spawn { program: String, source: io::Error },

    #[error("{program} failed ({status}): {output}")]
    CommandFailed {
        program: String,
        status: ExitStatus,
        output: String,
    },

    #[error("OS user `{POSTGRES_OS_USER}`: {0}")]
    OsUser(String),

    #[error(
        "could not start PostgreSQL on data directory {} (port {port}): {reason}\n--- last lines of {} ---\n{log_tail}",
        data_dir.display(),
        log_file.display()
    )]
    StartFailed {
        data_dir: PathBuf,
        port: u16,
        reason: String,
        log_file: PathBuf,
        log_tail: String,
    },

    #[error("could not stop PostgreSQL on data directory {}: {reason}", data_dir.display())]
    StopFailed { data_dir: PathBuf, reason: String },
}

pub(super) fn io_err(what: impl Into<String>, path: &Path, source: io::Error) -> ClusterError {
    ClusterError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    }
}
