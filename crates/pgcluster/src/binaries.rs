//! Finding PostgreSQL's server programs: `PgBinaries` and its search order (`PGTENANT_PG_BINDIR`, `PATH`,
//! `pg_config`, the Debian paths). Apart from the cluster itself since `pgtenant dev` and the tests find
//! binaries before anything runs.

use super::command::run_checked;
use super::error::ClusterError;
use super::BINDIR_ENV;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory holding PostgreSQL's server programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

pub(super) const REQUIRED_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

impl PgBinaries {
    /// Search order: env `PGTENANT_PG_BINDIR` (if set and non-empty it must be right: no fallback), `initdb` on
    /// `PATH` (symlinks resolved to the real bindir so `pg_ctl`/`postgres` are found beside it), `pg_config
    /// --bindir`, `/usr/lib/postgresql/{17,16,15,14,13}/bin`. A candidate is accepted when it holds `initdb`,
    /// `pg_ctl` and `postgres`.
    pub fn find() -> Result<Self, ClusterError> {
        if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            let missing = missing_tools(&dir);
            if !missing.is_empty() {
                return Err(ClusterError::BadBindir {
                    dir,
                    missing: missing.join(", "),
                });
            }
            return Ok(PgBinaries { bindir: dir });
        }

        let mut searched: Vec<String> = Vec::new();

        // `initdb` on PATH.
        if let Some(path) = std::env::var_os("PATH") {
            for entry in std::env::split_paths(&path) {
                let candidate = entry.join("initdb");
                if !is_executable_file(&candidate) {
                    continue;
                }
                let real = fs::canonicalize(&candidate).unwrap_or(candidate.clone());
                if let Some(dir) = real.parent() {
                    if missing_tools(dir).is_empty() {
                        return Ok(PgBinaries {
                            bindir: dir.to_path_buf(),
                        });
                    }
                    searched.push(format!("{} (from PATH)", dir.display()));
                }
            }
        }
        searched.push("initdb on PATH".to_string());

        // pg_config --bindir.
        match Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if !dir.as_os_str().is_empty() && missing_tools(&dir).is_empty() {
                    return Ok(PgBinaries { bindir: dir });
                }
                searched.push(format!("{} (pg_config --bindir)", dir.display()));
            }
            _ => searched.push("pg_config --bindir".to_string()),
        }

        for version in [17, 16, 15, 14, 13] {
            let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
            if missing_tools(&dir).is_empty() {
                return Ok(PgBinaries { bindir: dir });
            }
            searched.push(dir.display().to_string());
        }

        Err(ClusterError::BinariesNotFound {
            searched: searched.join(", "),
        })
    }

    /// The path of one program in the bindir (`initdb`, `pg_ctl`, `postgres`, `psql`, ...).
    pub fn path(&self, tool: &str) -> PathBuf {
        self.bindir.join(tool)
    }

    /// The output of `postgres --version`, e.g. `postgres (PostgreSQL) 15.8 (Debian 15.8-1)`.
    pub fn version(&self) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.path("postgres"));
        cmd.arg("--version");
        let out = run_checked(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `psql` from the bindir if present, else `/usr/bin/psql`, else `psql` (looked up on PATH).
    pub fn psql(&self) -> PathBuf {
        let own = self.path("psql");
        if is_executable_file(&own) {
            return own;
        }
        let usr = PathBuf::from("/usr/bin/psql");
        if is_executable_file(&usr) {
            return usr;
        }
        PathBuf::from("psql")
    }
}

pub(super) fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn missing_tools(dir: &Path) -> Vec<&'static str> {
    REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|t| !is_executable_file(&dir.join(t)))
        .collect()
}
