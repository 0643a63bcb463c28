//! The OS user PostgreSQL programs run as: `postgres` (created if missing) when the current process is root,
//! else ourselves; running a command as that user, and handing it the directories it needs. Its own file
//! because it is the one place with `getpwnam_r` and uid switching.

use super::command::{combined_output, pg_command, run_output};
use super::error::{io_err, ClusterError};
use super::POSTGRES_OS_USER;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An OS user PostgreSQL programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Whether the current process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Looks up an OS user by name (through NSS).
fn lookup_user(name: &str) -> Result<Option<OsUser>, ClusterError> {
    let cname = CString::new(name)
        .map_err(|_| ClusterError::OsUser(format!("invalid user name {name:?}")))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: `passwd` is plain data; all-zero is a valid (if meaningless) value, filled by getpwnam_r.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf.len()` is the size of `buf`.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            let new_len = buf.len() * 2;
            buf.resize(new_len, 0);
            continue;
        }
        if rc != 0 {
            return Err(ClusterError::OsUser(format!(
                "getpwnam_r({name}) failed: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: on success pw_dir points to a NUL-terminated string inside `buf`, alive here.
            let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
            PathBuf::from(OsStr::from_bytes(dir.to_bytes()))
        };
        return Ok(Some(OsUser {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

/// The OS user PostgreSQL programs must run as: `None` when the current process is not root (run as
/// ourselves), else the `postgres` user, created with `useradd --system` if missing.
pub fn postgres_os_user() -> Result<Option<OsUser>, ClusterError> {
    if !is_root() {
        return Ok(None);
    }
    if let Some(user) = lookup_user(POSTGRES_OS_USER)? {
        return Ok(Some(user));
    }
    tracing::info!(
        "creating OS user {POSTGRES_OS_USER} to run PostgreSQL (PostgreSQL refuses to run as root)"
    );
    let out = Command::new("useradd")
        .args([
            "--system",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            POSTGRES_OS_USER,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::OsUser(format!("could not run useradd: {e}")))?;
    // A concurrent process may have created it first: look it up again whatever useradd said.
    match lookup_user(POSTGRES_OS_USER)? {
        Some(user) => Ok(Some(user)),
        None => Err(ClusterError::OsUser(format!(
            "missing, and useradd failed ({}): {}",
            out.status,
            combined_output(&out)
        ))),
    }
}

/// Makes `cmd` run as the `postgres` OS user when the current process is root (uid/gid switched before exec,
/// supplementary groups dropped, `HOME`/`USER`/`LOGNAME` set); does nothing otherwise.
pub fn run_as_postgres_user(cmd: &mut Command) -> Result<(), ClusterError> {
    if let Some(user) = postgres_os_user()? {
        apply_user(cmd, &user);
    }
    Ok(())
}

pub(super) fn apply_user(cmd: &mut Command, user: &OsUser) {
    // std drops supplementary groups (setgroups(0)) when switching uid as root.
    cmd.uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name);
}

/// Creates `path` (and missing parents) and, when root, hands it to the `postgres` OS user, so a cluster's
/// data directory can be created inside it. Parents created here get the default mode (traversable).
pub fn prepare_dir(path: &Path) -> Result<(), ClusterError> {
    fs::create_dir_all(path).map_err(|e| io_err("could not create directory", path, e))?;
    if let Some(user) = postgres_os_user()? {
        chown_to(path, &user)?;
    }
    Ok(())
}

/// Whether the OS user PostgreSQL runs as can reach the directory `dir`: search it, through every parent.
/// Always true when the current process is not root. Asked of that user itself (`test -x` run as it), so
/// modes, groups and ACLs all count.
pub fn postgres_can_reach(dir: &Path) -> Result<bool, ClusterError> {
    let Some(user) = postgres_os_user()? else {
        return Ok(true);
    };
    let mut cmd = pg_command("/bin/sh", Some(&user));
    cmd.args(["-c", r#"[ -d "$1" ] && [ -x "$1" ]"#, "sh"])
        .arg(dir);
    Ok(run_output(&mut cmd)?.status.success())
}

pub(super) fn chown_to(path: &Path, user: &OsUser) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| io_err(format!("could not chown to {}", user.name), path, e))
}
