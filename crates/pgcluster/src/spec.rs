//! What cluster to run: `ClusterSpec` (data directory, superuser, port, extra settings) and `ClusterTls`
//! (a server certificate, and a client CA). Plain data, kept apart from the code that starts a cluster.

use std::fmt;
use std::path::PathBuf;

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
