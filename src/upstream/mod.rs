//! A raw upstream PostgreSQL connection, logged in as a tenant role: startup, SCRAM-SHA-256 login, the
//! parameters the server reported, its cancel key, and the small simple-query exchanges pgtenant runs itself
//! (applying a client's startup parameters, resetting the session before reuse). [`statements`]: the names of
//! the prepared statements pgtenant keeps on a connection in transaction pooling.

pub mod statements;

use crate::protocol::{self, tag, ErrorFields, PgError, ProtocolError, TxStatus};
use crate::scram::{self, ScramClient, ScramError};
use crate::upstream_tls::{HandshakeError, UpstreamStream, UpstreamTls};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest message body pgtenant reads whole from upstream during its own exchanges.
const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Where upstream connections go.
#[derive(Clone, Debug)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub connect_timeout: Duration,
    /// `upstream.sslmode` and its certificates.
    pub tls: UpstreamTls,
}

/// The login of one upstream connection. `salted` caches SCRAM's PBKDF2 result per role: the salt and
/// iteration count of a stored verifier do not change between logins.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub salted_cache: &'a SaltedPasswordCache,
    /// The tenant's limits PostgreSQL enforces, sent as startup parameters.
    pub settings: crate::limits::ServerSettings,
}

/// (user, salt, iterations) of a SCRAM login.
type SaltedKey = (String, Vec<u8>, u32);

/// Cache of SCRAM salted passwords, keyed by (user, salt, iterations).
#[derive(Default)]
pub struct SaltedPasswordCache {
    entries: std::sync::Mutex<std::collections::HashMap<SaltedKey, [u8; 32]>>,
}

impl SaltedPasswordCache {
    fn get_or_compute(
        &self,
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: NonZeroU32,
    ) -> [u8; 32] {
        let key = (user.to_string(), salt.to_vec(), iterations.get());
        if let Ok(entries) = self.entries.lock() {
            if let Some(found) = entries.get(&key) {
                return *found;
            }
        }
        let salted = scram::salted_password(password.as_bytes(), salt, iterations);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 100_000 {
                entries.clear();
            }
            entries.insert(key, salted);
        }
        salted
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the database server at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to the database server at {0}")]
    ConnectTimeout(String),
    #[error("TLS with the database server at {addr} failed: {source}")]
    Tls {
        addr: String,
        source: HandshakeError,
    },
    #[error("database server refused the login: {0}")]
    Refused(ErrorFields),
    #[error("upstream login failed: {0}")]
    Scram(#[from] ScramError),
    #[error("upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(i32),
    #[error("protocol error talking to the database server: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("database server error: {0}")]
    Server(ErrorFields),
}

impl UpstreamError {
    /// What a client is told (see its [`crate::error::UserFacing`] entry), as a FATAL.
    pub fn to_client_error(&self) -> PgError {
        crate::error::UserFacing::to_fatal(self)
    }
}

/// Why a cancel request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Tls(#[from] HandshakeError),
    #[error("timed out connecting to the database server")]
    Timeout,
    #[error("I/O error sending the cancel request: {0}")]
    Io(std::io::Error),
}

/// A logged-in upstream connection.
pub struct UpstreamConn {
    /// Plain TCP or TLS, as `upstream.sslmode` and the server decided.
    pub stream: UpstreamStream,
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
    /// ParameterStatus values, in the order the server sent them, kept current.
    pub parameters: Vec<(String, String)>,
    pub created_at: Instant,
    pub last_used: Instant,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// Prepared statements pgtenant created on it (transaction pooling); emptied by a reset.
    pub prepared: statements::ServerStatements,
    /// The limits it was opened with (startup parameters: `RESET` and `DISCARD ALL` come back to them).
    pub settings: crate::limits::ServerSettings,
    /// The TLS settings it was opened with (a cancel request for it goes the same way).
    pub tls: std::sync::Arc<UpstreamTls>,
    /// The transaction relay's buffers, lent with the connection (see [`RelayBuffers`]).
    pub buffers: RelayBuffers,
    /// The client settings it was last brought to (`txn::sync`), kept until the server reports a change:
    /// the next client sharing the same list (usually every client of the role) needs no comparison.
    pub synced_with: Option<SharedParameters>,
}

/// Reported parameters (name, value) shared between the sessions that see the same ones: a transaction-pooled
/// login answered from the role's defaults takes a reference, not a copy; a session that changes one
/// copies first (`Arc::make_mut`).
pub type SharedParameters = std::sync::Arc<Vec<(String, String)>>;

/// Buffers the transaction relay uses while a client holds this connection. They stay with the connection
/// between clients, so a client idle between transactions holds none of them and a busy one allocates
/// nothing to take a connection. (What is bound for the client is still being written when the connection
/// goes back, so that buffer stays with the client: `spare_buffers`.)
#[derive(Default)]
pub struct RelayBuffers {
    pub from_server: bytes::BytesMut,
    pub to_server: bytes::BytesMut,
}

impl UpstreamConn {
    pub async fn connect(target: &UpstreamTarget, login: Login<'_>) -> Result<Self, UpstreamError> {
        let addr_text = format!("{}:{}", target.host, target.port);
        let stream = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&addr_text))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr_text.clone()))?
            .map_err(|source| UpstreamError::Connect {
                addr: addr_text.clone(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        let addr = stream
            .peer_addr()
            .map_err(|source| UpstreamError::Connect {
                addr: addr_text.clone(),
                source,
            })?;
        let stream = tokio::time::timeout(target.connect_timeout, target.tls.negotiate(stream))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr_text.clone()))?
            .map_err(|source| UpstreamError::Tls {
                addr: addr_text.clone(),
                source,
            })?;
        let mut conn = UpstreamConn {
            stream,
            addr,
            process_id: 0,
            secret_key: 0,
            parameters: Vec::new(),
            created_at: Instant::now(),
            last_used: Instant::now(),
            broken: false,
            prepared: Default::default(),
            settings: login.settings,
            tls: std::sync::Arc::new(target.tls.clone()),
            buffers: RelayBuffers::default(),
            synced_with: None,
        };
        tokio::time::timeout(target.connect_timeout, conn.startup(target, login))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr_text))??;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        target: &UpstreamTarget,
        login: Login<'_>,
    ) -> Result<(), UpstreamError> {
        let mut out = BytesMut::new();
        // No application_name: a client that sets none sees '' as it would directly, and a reset brings a
        // reused connection back to that. The tenant's limits are startup parameters, PostgreSQL's session
        // defaults for this connection.
        let limits = login.settings.startup_parameters();
        let mut parameters: Vec<(&str, &str)> =
            vec![("user", login.user), ("database", &target.database)];
        parameters.extend(limits.iter().map(|(name, value)| (*name, value.as_str())));
        protocol::write::startup_message(&mut out, &parameters);
        self.send(&out).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let (msg_tag, mut body) = self.read().await?;
            match msg_tag {
                tag::AUTHENTICATION => {
                    if body.len() < 4 {
                        return Err(
                            ProtocolError::BadStartup("short authentication message").into()
                        );
                    }
                    let code = body.get_i32();
                    match code {
                        0 => {}
                        3 => {
                            let mut out = BytesMut::new();
                            protocol::write::password_message(&mut out, login.password);
                            self.send(&out).await?;
                        }
                        10 => {
                            let offered = body[..]
                                .split(|b| *b == 0)
                                .any(|m| m == scram::MECHANISM.as_bytes());
                            if !offered {
                                return Err(ScramError::MechanismNotOffered.into());
                            }
                            let client = ScramClient::new();
                            let mut out = BytesMut::new();
                            protocol::write::sasl_initial_response(
                                &mut out,
                                scram::MECHANISM,
                                client.client_first().as_bytes(),
                            );
                            self.send(&out).await?;
                            scram = Some(client);
                        }
                        11 => {
                            let client = scram.as_mut().ok_or(ScramError::Malformed)?;
                            let cache = login.salted_cache;
                            let reply = client.client_final(&body, |salt, iterations| {
                                cache.get_or_compute(login.user, login.password, salt, iterations)
                            })?;
                            let mut out = BytesMut::new();
                            protocol::write::sasl_response(&mut out, reply.as_bytes());
                            self.send(&out).await?;
                        }
                        12 => {
                            let client = scram.as_ref().ok_or(ScramError::Malformed)?;
                            client.verify_server_final(&body)?;
                        }
                        other => return Err(UpstreamError::UnsupportedAuth(other)),
                    }
                }
                tag::PARAMETER_STATUS => self.record_parameter(&mut body),
                tag::BACKEND_KEY_DATA => {
                    if body.len() >= 8 {
                        self.process_id = body.get_i32();
                        self.secret_key = body.get_i32();
                    }
                }
                tag::ERROR_RESPONSE => {
                    return Err(UpstreamError::Refused(ErrorFields::parse(&body)))
                }
                tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
                tag::READY_FOR_QUERY => return Ok(()),
                other => {
                    return Err(ProtocolError::Unexpected {
                        expected: 'R',
                        got: other as char,
                    }
                    .into())
                }
            }
        }
    }

    fn record_parameter(&mut self, body: &mut BytesMut) {
        let (Some(name), Some(value)) = (protocol::get_cstr(body), protocol::get_cstr(body)) else {
            return;
        };
        self.set_parameter(name, value);
    }

    pub fn set_parameter(&mut self, name: String, value: String) {
        self.synced_with = None;
        match self.parameters.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.parameters.push((name, value)),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        // Flushed: over TLS, bytes taken while the socket was full go out only on a flush (no-op on TCP).
        let sent = match self.stream.write_all(bytes).await {
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| {
            self.broken = true;
            UpstreamError::Protocol(ProtocolError::Io(e))
        })
    }

    async fn read(&mut self) -> Result<(u8, BytesMut), UpstreamError> {
        protocol::read_message(&mut self.stream, MAX_CONTROL_MESSAGE)
            .await
            .map_err(|e| {
                self.broken = true;
                UpstreamError::Protocol(e)
            })
    }

    /// Runs queries pgtenant issues itself, pipelined, each as its own simple Query, and reads until every
    /// ReadyForQuery arrived. Returns the first error the server reported, if any, and the last
    /// transaction status. ParameterStatus changes are recorded; notices are dropped.
    pub async fn run_simple(
        &mut self,
        queries: &[&str],
    ) -> Result<(Option<ErrorFields>, TxStatus), UpstreamError> {
        let mut out = BytesMut::new();
        for q in queries {
            protocol::write::query(&mut out, q);
        }
        self.send(&out).await?;
        let mut pending = queries.len();
        let mut first_error = None;
        let mut status = TxStatus::Idle;
        while pending > 0 {
            let (msg_tag, mut body) = self.read().await?;
            match msg_tag {
                tag::READY_FOR_QUERY => {
                    pending -= 1;
                    status = body
                        .first()
                        .and_then(|b| TxStatus::from_byte(*b))
                        .unwrap_or(TxStatus::Failed);
                }
                tag::ERROR_RESPONSE => {
                    let fields = ErrorFields::parse(&body);
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        self.broken = true;
                        return Err(UpstreamError::Server(fields));
                    }
                    first_error.get_or_insert(fields);
                }
                tag::PARAMETER_STATUS => self.record_parameter(&mut body),
                _ => {}
            }
        }
        self.last_used = Instant::now();
        Ok((first_error, status))
    }

    /// Makes the session as new for the next client: rolls back an open transaction, then `DISCARD ALL`
    /// (prepared statements, portals, LISTEN, advisory locks, temp tables, settings). Marks the connection
    /// broken if that fails.
    pub async fn reset(&mut self, status: TxStatus) -> Result<(), UpstreamError> {
        self.prepared.clear();
        let queries: &[&str] = if status == TxStatus::Idle {
            &["DISCARD ALL"]
        } else {
            &["ROLLBACK", "DISCARD ALL"]
        };
        match self.run_simple(queries).await {
            Ok((None, TxStatus::Idle)) => Ok(()),
            Ok((Some(err), _)) => {
                self.broken = true;
                Err(UpstreamError::Server(err))
            }
            Ok((None, _)) => {
                self.broken = true;
                Err(UpstreamError::Protocol(ProtocolError::BadStartup(
                    "session still in a transaction after reset",
                )))
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Checks, without waiting, that an idle connection has not been closed or sent an error while it sat in
    /// the pool; parameter changes and notices it sent meanwhile are taken in. Returns false if it must go.
    pub fn check_idle(&mut self) -> bool {
        if self.broken {
            return false;
        }
        // Usually nothing is waiting (tokio knows without a system call); notices that are get read in
        // small steps.
        let mut buf = [0u8; 512];
        let mut pending = BytesMut::new();
        loop {
            match self.stream.try_read_now(&mut buf) {
                Ok(0) => return false,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        while !pending.is_empty() {
            if pending.len() < 5 {
                return false;
            }
            let msg_tag = pending[0];
            let len = i32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
            if len < 4 || pending.len() < 1 + len as usize {
                return false;
            }
            pending.advance(5);
            let mut body = pending.split_to(len as usize - 4);
            match msg_tag {
                tag::PARAMETER_STATUS => self.record_parameter(&mut body),
                tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE => {}
                _ => return false,
            }
        }
        true
    }

    /// Sends a CancelRequest for this connection's running query, on a new connection to the same server,
    /// encrypted as `upstream.sslmode` says (PostgreSQL reads a CancelRequest after an SSLRequest too).
    pub async fn cancel(
        tls: &UpstreamTls,
        addr: SocketAddr,
        process_id: i32,
        secret_key: i32,
    ) -> Result<(), CancelError> {
        let mut stream = tokio::time::timeout(Duration::from_secs(10), tls.connect_addr(addr))
            .await
            .map_err(|_| CancelError::Timeout)??;
        let mut out = BytesMut::new();
        protocol::write::cancel_request(&mut out, process_id, secret_key);
        stream.write_all(&out).await.map_err(CancelError::Io)?;
        stream.flush().await.map_err(CancelError::Io)?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
        )
        .await;
        Ok(())
    }

    /// Says goodbye politely; errors do not matter.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        protocol::write::terminate(&mut out);
        if self.stream.write_all(&out).await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}
