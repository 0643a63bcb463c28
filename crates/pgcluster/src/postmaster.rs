//! The postmaster on a data directory as seen from outside: its pid (`postmaster.pid`), whether that process
//! is alive and PostgreSQL, `pg_ctl stop`, and the server log (its tail, its length, a port already taken).
//! Used both by a start (a leftover server, a failed attempt) and by stop.

use super::binaries::PgBinaries;
use super::command::{pg_command, run_output};
use super::error::{io_err, ClusterError};
use super::os_user::OsUser;
use super::PG_CTL_TIMEOUT_SECS;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Output;

/// Reads `postmaster.pid`'s first line.
pub(super) fn postmaster_pid(data_dir: &Path) -> Result<Option<i32>, ClusterError> {
    let pidfile = data_dir.join("postmaster.pid");
    match fs::read_to_string(&pidfile) {
        Ok(content) => Ok(content
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("could not read", &pidfile, e)),
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether `pid` is a live PostgreSQL process (checked by its name in /proc where available).
pub(super) fn is_postgres_process(pid: i32) -> bool {
    if !process_alive(pid) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

pub(super) fn pg_ctl_stop(
    bins: &PgBinaries,
    user: Option<&OsUser>,
    data_dir: &Path,
    mode: &str,
) -> Result<Output, ClusterError> {
    let mut cmd = pg_command(bins.path("pg_ctl"), user);
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", mode, "-w", "-t"])
        .arg(PG_CTL_TIMEOUT_SECS.to_string());
    run_output(&mut cmd)
}

/// The last `lines` lines of the file from byte `from` on (lossy UTF-8); empty if unreadable.
pub(super) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub(super) fn port_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}
