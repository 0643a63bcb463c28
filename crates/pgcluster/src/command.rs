//! Running the PostgreSQL programs: a `Command` with a clean environment as the right OS user, its output
//! captured and quoted in errors, and the quoting of words for `/bin/sh` and libpq connection strings. Shared
//! by every step that runs a program.

use super::error::ClusterError;
use super::os_user::{apply_user, OsUser};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub(super) fn combined_output(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    if !err.is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(err);
    }
    const MAX: usize = 4000;
    if s.len() > MAX {
        let mut cut = s.len() - MAX;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("...{}", &s[cut..]);
    }
    s
}

pub(super) fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` to completion with stdin closed and output captured.
pub(super) fn run_output(cmd: &mut Command) -> Result<Output, ClusterError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: program_name(cmd),
            source,
        })
}

/// Runs `cmd`; a non-zero exit is an error carrying the program's output.
pub(super) fn run_checked(cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = run_output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::CommandFailed {
            program: program_name(cmd),
            status: out.status,
            output: combined_output(&out),
        })
    }
}

/// A command for a PostgreSQL program, run as the right OS user, in `/`, with a predictable locale and without
/// libpq/PGDATA environment that could interfere.
pub(super) fn pg_command(program: impl AsRef<OsStr>, user: Option<&OsUser>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/").env("LC_ALL", "C").env("LANG", "C");
    for var in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGHOSTADDR",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    if let Some(user) = user {
        apply_user(&mut cmd, user);
    }
    cmd
}

/// Escapes a value for a single-quoted libpq connection string value.
pub(super) fn conninfo_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Quotes one word for `/bin/sh` (pg_ctl passes `-o` through the shell).
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) fn shell_quote_path(p: &Path) -> String {
    shell_quote(&p.to_string_lossy())
}
