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

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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

fn io_err(what: impl Into<String>, path: &Path, source: io::Error) -> ClusterError {
    ClusterError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------------------

/// The directory holding PostgreSQL's server programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

const REQUIRED_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

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

fn is_executable_file(path: &Path) -> bool {
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

// ---------------------------------------------------------------------------------------------------------
// The OS user
// ---------------------------------------------------------------------------------------------------------

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

fn apply_user(cmd: &mut Command, user: &OsUser) {
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

fn chown_to(path: &Path, user: &OsUser) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| io_err(format!("could not chown to {}", user.name), path, e))
}

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

// ---------------------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------------------

fn combined_output(out: &Output) -> String {
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

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` to completion with stdin closed and output captured.
fn run_output(cmd: &mut Command) -> Result<Output, ClusterError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: program_name(cmd),
            source,
        })
}

/// Runs `cmd`; a non-zero exit is an error carrying the program's output.
fn run_checked(cmd: &mut Command) -> Result<Output, ClusterError> {
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
fn pg_command(program: impl AsRef<OsStr>, user: Option<&OsUser>) -> Command {
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
fn conninfo_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Quotes one word for `/bin/sh` (pg_ctl passes `-o` through the shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn shell_quote_path(p: &Path) -> String {
    shell_quote(&p.to_string_lossy())
}

// ---------------------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------------------

/// What cluster to run.
#[derive(Clone)]
pub struct ClusterSpec {
    /// PGDATA. Created if missing; `initdb` runs when it holds no `PG_VERSION`. Relative paths are made
    /// absolute against the current directory.
    pub data_dir: PathBuf,
    /// The bootstrap superuser, e.g. "postgres".
    pub superuser: String,
    /// Set at initdb via `--pwfile` (the file is removed afterwards). Ignored when the data dir already exists.
    pub superuser_password: String,
    /// 0 = pick a free loopback port (and retry on another one if it turns out to be taken).
    pub port: u16,
    /// Extra `-c name=value` for postgres, applied after the defaults (so they can override e.g.
    /// `max_connections`), e.g. `("fsync", "off")`.
    pub extra_settings: Vec<(String, String)>,
    /// Serve TLS (`ssl = on`) with this certificate chain and key, PEM (test and dev clusters).
    pub tls: Option<ClusterTls>,
}

/// A server certificate for a cluster with `ssl = on`: written to `server.crt` / `server.key` in the data dir
/// (the key with mode 0600, owned by the server's OS user, as PostgreSQL requires).
/// With `client_ca_pem`, it becomes `ssl_ca_file`, against which client certificates are checked (for `cert`
/// or `clientcert=` lines in pg_hba.conf).
#[derive(Clone)]
pub struct ClusterTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

impl ClusterSpec {
    /// A spec with port 0 and no extra settings.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        superuser: impl Into<String>,
        superuser_password: impl Into<String>,
    ) -> Self {
        ClusterSpec {
            data_dir: data_dir.into(),
            superuser: superuser.into(),
            superuser_password: superuser_password.into(),
            port: 0,
            extra_settings: Vec::new(),
            tls: None,
        }
    }

    /// Turns on `ssl` with this certificate chain and private key (PEM).
    pub fn tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some(ClusterTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        });
        self
    }

    /// With [`ClusterSpec::tls`]: client certificates are checked against this CA (PEM).
    pub fn tls_client_ca(mut self, ca_pem: impl Into<String>) -> Self {
        if let Some(tls) = self.tls.as_mut() {
            tls.client_ca_pem = Some(ca_pem.into());
        }
        self
    }

    /// Adds an extra `-c name=value`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_settings.push((name.into(), value.into()));
        self
    }
}

impl fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("data_dir", &self.data_dir)
            .field("superuser", &self.superuser)
            .field("superuser_password", &"<redacted>")
            .field("port", &self.port)
            .field("extra_settings", &self.extra_settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A running cluster (until `stop` or drop).
pub struct Cluster {
    bins: PgBinaries,
    user: Option<OsUser>,
    data_dir: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    /// The socket dir is a fallback under the temp dir, removed on stop.
    owns_socket_dir: bool,
    superuser: String,
    superuser_password: String,
    port: u16,
    initialized: bool,
    running: bool,
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

/// Paths derived from the data directory.
struct Layout {
    data_dir: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    owns_socket_dir: bool,
}

fn layout(data_dir: &Path) -> Result<Layout, ClusterError> {
    let data_dir = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| io_err("could not read current directory for", data_dir, e))?;
        cwd.join(data_dir)
    };
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Err(ClusterError::InvalidSpec(format!(
            "data_dir {} has no parent directory",
            data_dir.display()
        )));
    };
    let name = name.to_string_lossy().into_owned();
    let log_file = parent.join(format!("{name}.log"));
    let beside = parent.join(format!("{name}.sock"));
    // "<dir>/.s.PGSQL.65535.lock" must fit in sun_path.
    let fits = |dir: &Path| dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() < SUN_PATH_MAX;
    let (socket_dir, owns_socket_dir) = if fits(&beside) {
        (beside, false)
    } else {
        let unique = format!(
            "pgtenant-sock-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut dir = std::env::temp_dir().join(&unique);
        if !fits(&dir) {
            dir = PathBuf::from("/tmp").join(&unique);
        }
        (dir, true)
    };
    Ok(Layout {
        data_dir,
        log_file,
        socket_dir,
        owns_socket_dir,
    })
}

/// Reads `postmaster.pid`'s first line.
fn postmaster_pid(data_dir: &Path) -> Result<Option<i32>, ClusterError> {
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
fn is_postgres_process(pid: i32) -> bool {
    if !process_alive(pid) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

fn pg_ctl_stop(
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
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
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

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn port_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
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

    fn start_with_ports(
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

    /// Creates the parent, data, socket dirs and the log file; hands them to the postgres OS user when root and
    /// checks that user can reach them.
    fn prepare_paths(&self) -> Result<(), ClusterError> {
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
    fn write_tls_files(&self, tls: &ClusterTls) -> Result<Vec<(String, String)>, ClusterError> {
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
    fn stop_existing_postmaster(&self) -> Result<(), ClusterError> {
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

    fn initdb(&self) -> Result<(), ClusterError> {
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

    fn pg_ctl_start(&self, port: u16, extra: &[(String, String)]) -> Result<(), StartError> {
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), HOST.into()),
            (
                "unix_socket_directories".into(),
                self.socket_dir.to_string_lossy().into_owned(),
            ),
            ("max_connections".into(), "300".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            // Tenant moves copy with logical replication (`crate::moves`).
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

    fn wait_for_tcp(&self) -> Result<(), ClusterError> {
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

    /// Spawns a detached watchdog (`sh`, in its own session, stdio closed) that waits for the current process
    /// to exit, then runs `pg_ctl stop -m immediate` (as the postgres OS user via `runuser` when root; falling
    /// back to SIGQUIT to the postmaster named in `postmaster.pid`), then removes `remove_dir` if given (and a
    /// fallback socket dir). Works even if `Drop` never runs (a cluster kept in a static). Each call spawns one
    /// more watchdog; stopping an already stopped cluster is harmless.
    pub fn stop_when_process_exits(&self, remove_dir: Option<&Path>) -> Result<(), ClusterError> {
        self.spawn_watchdog(std::process::id(), remove_dir)
    }

    fn watchdog_script(
        &self,
        watched_pid: u32,
        remove_dir: Option<&Path>,
    ) -> Result<String, ClusterError> {
        let data = shell_quote_path(&self.data_dir);
        let pg_ctl = shell_quote_path(&self.bins.path("pg_ctl"));
        let as_user = match &self.user {
            Some(user) => format!("runuser -u {} -- ", shell_quote(&user.name)),
            None => String::new(),
        };
        let mut script = format!(
            "while kill -0 {watched_pid} 2>/dev/null; do sleep 1; done\n\
             cd /\n\
             {as_user}{pg_ctl} stop -D {data} -m immediate -w -t 30 >/dev/null 2>&1\n\
             if [ -f {data}/postmaster.pid ]; then\n\
             \x20 p=$(head -n 1 {data}/postmaster.pid)\n\
             \x20 case \"$(cat /proc/$p/comm 2>/dev/null)\" in postgres|postmaster) kill -QUIT \"$p\";; esac\n\
             \x20 i=0; while [ $i -lt 30 ] && kill -0 \"$p\" 2>/dev/null; do sleep 1; i=$((i+1)); done\n\
             fi\n"
        );
        let mut removals: Vec<&Path> = Vec::new();
        if let Some(dir) = remove_dir {
            let dir_ok = dir.is_absolute() && dir.components().count() >= 3;
            if !dir_ok {
                return Err(ClusterError::InvalidSpec(format!(
                    "refusing to remove {} at exit: need an absolute path at least two levels deep",
                    dir.display()
                )));
            }
            removals.push(dir);
        }
        if self.owns_socket_dir {
            removals.push(&self.socket_dir);
        }
        for dir in removals {
            script.push_str(&format!("rm -rf -- {}\n", shell_quote_path(dir)));
        }
        Ok(script)
    }

    fn spawn_watchdog(
        &self,
        watched_pid: u32,
        remove_dir: Option<&Path>,
    ) -> Result<(), ClusterError> {
        let script = self.watchdog_script(watched_pid, remove_dir)?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the closure touches nothing else. Its own session keeps the
        // watchdog out of the terminal's process group (Ctrl-C) and of our exit.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            program: "/bin/sh (watchdog)".into(),
            source,
        })?;
        tracing::debug!(
            watchdog_pid = child.id(),
            watched_pid,
            "PostgreSQL watchdog spawned"
        );
        // Not waited for: it outlives us and is reparented to init.
        drop(child);
        Ok(())
    }
}

struct StartError {
    reason: String,
    /// The log written during this attempt.
    new_log: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping PostgreSQL on drop failed");
        }
    }
}

#[cfg(test)]
mod tests;
