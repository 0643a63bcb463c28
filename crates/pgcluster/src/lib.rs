//! Finding PostgreSQL's binaries and running a throwaway PostgreSQL cluster, for `pgtenant dev` and the tests.
//!
//! PostgreSQL refuses to run as root, and these machines run everything as root. When the current process is
//! root, every PostgreSQL program (`initdb`, `pg_ctl`, and through it `postgres`) is run as the OS user
//! `postgres` (created with `useradd --system` if the machine lacks it): the child process switches to that
//! user's uid and gid (supplementary groups dropped) before `exec`, which is what `runuser -u postgres --` does
//! minus PAM. The data directory, the socket directory and the log file are created by this module and
//! `chown`ed to that user; their parent directories must be traversable by it (checked before `initdb`, with a
//! clear error; `postgres_can_reach` lets a caller ask first and choose another place). When the current
//! process is not root, everything runs as the current user.
//!
//! Layout for a data directory `DIR/data`:
//! - `DIR/data.log`: the server log (`pg_ctl -l`), appended to across starts.
//! - `DIR/data.sock/`: `unix_socket_directories` (local connections trust the OS user). If that path is too
//!   long for a Unix socket address, a short directory under the temp dir is used instead and removed on stop.
//!
//! A postmaster still running on the data directory (left behind by a crashed run) is stopped
//! (`pg_ctl stop -m fast`) before the new start, with a warning; a stale `postmaster.pid` naming a dead or
//! non-PostgreSQL process is removed. The server listens on 127.0.0.1 only.
//!
//! A file per job: `binaries` (finding the programs), `os_user` (the `postgres` OS user), `command` (running
//! a program), `spec` (what to run), `cluster` (the running cluster, stop), `layout` (paths beside the data
//! directory), `postmaster` (a server seen from outside: pid, `pg_ctl stop`, log), `start` and
//! `start_steps` (starting), `watchdog` (stopping when the process exits), `error`.

mod binaries;
mod cluster;
mod command;
mod error;
mod layout;
mod os_user;
mod postmaster;
mod spec;
mod start;
mod start_steps;
mod watchdog;

pub use binaries::PgBinaries;
pub use cluster::Cluster;
pub use error::ClusterError;
pub use os_user::{
    is_root, postgres_can_reach, postgres_os_user, prepare_dir, run_as_postgres_user, OsUser,
};
pub use spec::{ClusterSpec, ClusterTls};
pub use start::free_port;
use std::time::Duration;

/// The loopback address every cluster listens on.
pub const HOST: &str = "127.0.0.1";

/// The environment variable naming the directory holding `initdb`, `pg_ctl` and `postgres`.
pub const BINDIR_ENV: &str = "PGTENANT_PG_BINDIR";

/// The OS user PostgreSQL programs run as when the current process is root.
pub const POSTGRES_OS_USER: &str = "postgres";

/// How many ports are tried when `ClusterSpec::port` is 0 and the chosen port turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// `pg_ctl -t` for start and stop.
const PG_CTL_TIMEOUT_SECS: u32 = 60;
/// How long to wait for the TCP port to accept connections after `pg_ctl start -w` returned.
const TCP_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server log quoted in start errors.
const LOG_TAIL_LINES: usize = 40;
/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
const SUN_PATH_MAX: usize = 108;

#[cfg(test)]
mod tests;
