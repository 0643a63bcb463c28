//! TLS to PostgreSQL: `upstream.sslmode` with libpq's meaning, one rustls client configuration (aws-lc-rs)
//! for every connection pgtenant opens to the server: the raw tenant connections of the pools (SSLRequest,
//! then the handshake, then the startup message over TLS), cancel requests, and tokio-postgres connections
//! (directory, onboarding, migrations, admin) through `tokio-postgres-rustls`.
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | `disable` (default) | never | - |
//! | `prefer` | if the server accepts (plain after its `N`) | none; the chain when `sslrootcert` is set |
//! | `require` | always | none; the chain when `sslrootcert` is set (as libpq) |
//! | `verify-ca` | always | the chain, against `sslrootcert` |
//! | `verify-full` | always | the chain and the host name (`upstream.host`) |

use crate::config::{SslMode, UpstreamConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The SSLRequest code (1234.5679), as in PostgreSQL's protocol.
const SSL_REQUEST_CODE: i32 = 80_877_103;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read upstream.sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("cannot read upstream.sslcert {path}: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("cannot read upstream.sslkey {path}: {reason}")]
    ClientKey { path: PathBuf, reason: String },
    #[error(
        "upstream.host {0:?} is not a host name or IP address a certificate can be checked against"
    )]
    ServerName(String),
    #[error("invalid upstream TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a TLS connection to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the database server does not accept TLS (upstream.sslmode = {0})")]
    NotOffered(&'static str),
    #[error("the database server answered the SSLRequest with {0:#04x}, neither 'S' nor 'N'")]
    BadAnswer(u8),
    #[error("handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("I/O error during the SSLRequest: {0}")]
    Io(std::io::Error),
}

/// The upstream TLS settings, ready to connect with.
#[derive(Clone)]
pub struct UpstreamTls {
    mode: SslMode,
    /// None with `disable`.
    connector: Option<tokio_rustls::TlsConnector>,
    server_name: Option<ServerName<'static>>,
    /// For tokio-postgres (never used with `disable`).
    postgres: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl UpstreamTls {
    /// No TLS (sslmode = disable).
    pub fn disabled() -> Self {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            });
        let config = match config {
            Ok(c) => c,
            // The provider's default versions always build; an empty root store is never used here.
            Err(_) => unreachable!("aws-lc-rs supports the default protocol versions"),
        };
        Self {
            mode: SslMode::Disable,
            connector: None,
            server_name: None,
            postgres: tokio_postgres_rustls::MakeRustlsConnect::new(config),
        }
    }

    /// Reads the certificate files named in `upstream` and builds the client configuration.
    pub fn from_config(upstream: &UpstreamConfig) -> Result<Self, UpstreamTlsError> {
        let mode = upstream.sslmode;
        if mode == SslMode::Disable {
            return Ok(Self::disabled());
        }
        let provider = provider();
        let roots = match &upstream.sslrootcert {
            Some(path) => Some(Arc::new(read_roots(path)?)),
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?
            }
            (_, Some(roots)) => Arc::new(ChainOnly {
                roots,
                provider: provider.clone(),
            }),
            // Config validation requires sslrootcert for verify-ca and verify-full.
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(UpstreamTlsError::RootCert {
                    path: PathBuf::new(),
                    reason: format!("upstream.sslmode = {} needs sslrootcert", mode.as_str()),
                })
            }
            (_, None) => Arc::new(NoCheck {
                provider: provider.clone(),
            }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&upstream.sslcert, &upstream.sslkey) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_client_certs(cert)?, read_client_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        // As libpq 17: PostgreSQL 17+ refuses a different protocol name, older servers ignore it.
        config.alpn_protocols = vec![crate::tls::ALPN_POSTGRESQL.to_vec()];
        let server_name = ServerName::try_from(upstream.host.clone())
            .map_err(|_| UpstreamTlsError::ServerName(upstream.host.clone()))?;
        Ok(Self {
            mode,
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(config.clone()))),
            server_name: Some(server_name),
            postgres: tokio_postgres_rustls::MakeRustlsConnect::new(config),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connector to hand tokio-postgres (with `config.ssl_mode(mode.postgres())`).
    pub fn postgres(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        self.postgres.clone()
    }

    /// Negotiates TLS on a fresh TCP connection as `sslmode` says: SSLRequest, the server's 'S' or 'N', the
    /// handshake. Nothing else has been sent on `tcp`.
    pub async fn negotiate(&self, mut tcp: TcpStream) -> Result<UpstreamStream, HandshakeError> {
        let (Some(connector), Some(server_name)) = (&self.connector, &self.server_name) else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await.map_err(HandshakeError::Io)?;
        // One byte exactly: anything the server sent after it belongs to the handshake.
        let answer = tcp.read_u8().await.map_err(HandshakeError::Io)?;
        match answer {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(UpstreamStream::Plain(tcp)),
            b'N' => return Err(HandshakeError::NotOffered(self.mode.as_str())),
            other => return Err(HandshakeError::BadAnswer(other)),
        }
        let tls = connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(HandshakeError::Handshake)?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }

    /// Connects to `addr` and negotiates TLS (for cancel requests, which go to the address of the connection
    /// they cancel).
    pub async fn connect_addr(&self, addr: SocketAddr) -> Result<UpstreamStream, HandshakeError> {
        let tcp = TcpStream::connect(addr).await.map_err(HandshakeError::Io)?;
        tcp.set_nodelay(true).ok();
        self.negotiate(tcp).await
    }
}

/// An error with its sources, `: `-separated: tokio-postgres says only "error performing TLS handshake" and
/// keeps rustls' reason (wrong name, unknown issuer) in its source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

fn read_roots(path: &Path) -> Result<RootCertStore, UpstreamTlsError> {
    let err = |reason: String| UpstreamTlsError::RootCert {
        path: path.to_owned(),
        reason,
    };
    let certs = read_certs(path).map_err(err)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err("no usable CA certificate in it".into()));
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

fn read_client_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    read_certs(path).map_err(|reason| UpstreamTlsError::ClientCert {
        path: path.to_owned(),
        reason,
    })
}

fn read_client_key(path: &Path) -> Result<PrivateKeyDer<'static>, UpstreamTlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| UpstreamTlsError::ClientKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// `require` / `prefer` without `sslrootcert`: any certificate is taken (as libpq), the handshake's own
/// signatures are still checked.
#[derive(Debug)]
struct NoCheck {
    provider: Arc<CryptoProvider>,
}

/// `verify-ca`, and `require` / `prefer` with `sslrootcert`: the chain must lead to one of the roots; the name
/// in the certificate is not looked at.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

fn check_tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn check_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls12(&self.provider, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls12(&self.provider, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An upstream connection's byte stream, plain or encrypted (in unit tests also in memory: a scripted server).
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(test)]
    Duplex(tokio::io::DuplexStream),
}

impl UpstreamStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// Reads what is there without waiting: `WouldBlock` when nothing is.
    pub fn try_read_now(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.try_read(buf),
            // Decrypted bytes may already be buffered, so poll once instead of asking the socket.
            UpstreamStream::Tls(s) => poll_read_once(s.as_mut(), buf),
            #[cfg(test)]
            UpstreamStream::Duplex(s) => poll_read_once(s, buf),
        }
    }
}

/// One poll of `stream`'s read, without waiting: `WouldBlock` when nothing is there.
fn poll_read_once<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut read = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => Ok(read.filled().len()),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            UpstreamStream::Duplex(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            UpstreamStream::Duplex(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            UpstreamStream::Duplex(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            UpstreamStream::Duplex(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_are_libpq_names() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            #[derive(serde::Deserialize)]
            struct W {
                m: SslMode,
            }
            let w: W = toml::from_str(&format!("m = {text:?}")).expect("parses");
            assert_eq!(w.m, mode);
            assert_eq!(mode.as_str(), text);
        }
    }

    #[test]
    fn a_missing_root_file_is_a_clear_error() {
        let upstream = UpstreamConfig {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some(PathBuf::from("/nonexistent/root.crt")),
            ..UpstreamConfig::default()
        };
        let err = UpstreamTls::from_config(&upstream).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
    }
}
