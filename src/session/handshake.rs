//! The handshake of a client connection: the first packet (SSLRequest, GSSENCRequest, a cancel request, the
//! startup packet), TLS, the protocol version; then the login.

use super::login::login;
use super::{send_error, LoggedIn, LoginError};
use crate::auth::audit::LoginAttempt;
use crate::cancel::ClientKey;
use crate::client_socket::ClientSocket;
use crate::error::UserFacing;
use crate::login_guard;
use crate::protocol;
use crate::protocol::ProtocolError;
use crate::protocol::StartupPacket;
use crate::protocol::StartupParams;
use crate::proxy::Proxy;
use crate::refusal::Refusal;
use crate::tls::ClientStream;
use crate::tls::ALPN_POSTGRESQL;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use std::net::SocketAddr;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the handshake ends in: the client's stream (TLS or not, as negotiated) and its startup packet.
pub(super) struct Handshake {
    pub client: ClientStream,
    pub params: StartupParams,
}

pub(super) async fn handshake_and_login(
    proxy: &Proxy,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Option<(ClientStream, LoggedIn)>, LoginError> {
    let Some(Handshake { mut client, params }) = handshake(proxy, tcp).await? else {
        return Ok(None);
    };
    let mut attempt = LoginAttempt::new(peer.ip());
    let result = login(proxy, &mut client, &params, &mut attempt).await;
    login_guard::record(proxy, &mut attempt, result.as_ref().err());
    match result {
        Ok(ready) => Ok(Some((client, ready))),
        Err(err) => {
            tracing::info!(%peer, code = %err.code, reason = %err.message, "login refused");
            let _ = send_error(&mut client, &err).await;
            Err(LoginError::Refused(err.message))
        }
    }
}

/// Reads the first packets: SSLRequest / GSSENCRequest / direct TLS, then the StartupMessage. Cancel
/// requests are served here and end the connection (`Ok(None)`). The TLS handshake and a forwarded cancel
/// are boxed where awaited: their futures are large, and a plain login's would carry their room.
pub(super) async fn handshake(
    proxy: &Proxy,
    tcp: TcpStream,
) -> Result<Option<Handshake>, LoginError> {
    let mut tcp = ClientSocket::new(tcp);
    // PostgreSQL 17 clients may open TLS directly (sslnegotiation=direct): a TLS ClientHello starts 0x16.
    // Read ahead, not peeked: the first packet then takes one system call (`ClientSocket`).
    if tcp.first_byte().await.map_err(ProtocolError::Io)? == Some(0x16) {
        let Some(acceptor) = &proxy.tls() else {
            return Err(LoginError::Refused(
                "direct TLS without TLS configured".into(),
            ));
        };
        let tls = Box::pin(acceptor.accept(tcp))
            .await
            .map_err(LoginError::Tls)?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(LoginError::Refused(
                "direct TLS without ALPN postgresql".into(),
            ));
        }
        let mut client = ClientStream::Tls(Box::new(tls));
        return startup_after_tls(proxy, &mut client)
            .await
            .map(|p| p.map(|params| Handshake { client, params }));
    }
    loop {
        match read_first_packet(&mut tcp).await? {
            StartupPacket::Ssl => match &proxy.tls() {
                Some(acceptor) => {
                    if tcp.has_read_ahead() {
                        // Sent before the 'S' it must wait for: not the client's TLS (PostgreSQL's words).
                        let e =
                            Refusal::Protocol("received unencrypted data after SSL request".into())
                                .to_fatal();
                        let _ = send_error(&mut tcp, &e).await;
                        return Err(LoginError::Refused(e.message));
                    }
                    tcp.write_all(b"S").await.map_err(ProtocolError::Io)?;
                    // Only bytes read after 'S' reach rustls: nothing was read ahead of the handshake.
                    let tls = Box::pin(acceptor.accept(tcp))
                        .await
                        .map_err(LoginError::Tls)?;
                    let mut client = ClientStream::Tls(Box::new(tls));
                    return startup_after_tls(proxy, &mut client)
                        .await
                        .map(|p| p.map(|params| Handshake { client, params }));
                }
                None => tcp.write_all(b"N").await.map_err(ProtocolError::Io)?,
            },
            StartupPacket::GssEnc => tcp.write_all(b"N").await.map_err(ProtocolError::Io)?,
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                Box::pin(forward_cancel(
                    proxy,
                    ClientKey {
                        process_id,
                        secret_key,
                    },
                ))
                .await;
                return Ok(None);
            }
            StartupPacket::Startup(params) => {
                return Ok(Some(Handshake {
                    client: ClientStream::Plain(tcp),
                    params,
                }))
            }
        }
    }
}

pub(super) async fn startup_after_tls(
    proxy: &Proxy,
    client: &mut ClientStream,
) -> Result<Option<StartupParams>, LoginError> {
    match read_first_packet(client).await? {
        StartupPacket::Startup(params) => Ok(Some(params)),
        StartupPacket::Cancel {
            process_id,
            secret_key,
        } => {
            Box::pin(forward_cancel(
                proxy,
                ClientKey {
                    process_id,
                    secret_key,
                },
            ))
            .await;
            Ok(None)
        }
        StartupPacket::Ssl | StartupPacket::GssEnc => {
            let e = Refusal::EncryptionInsideEncryption.to_fatal();
            let _ = send_error(client, &e).await;
            Err(LoginError::Refused(e.message))
        }
    }
}

/// Reads a StartupMessage, SSLRequest, GSSENCRequest or CancelRequest. One pgtenant cannot read gets a FATAL
/// ErrorResponse saying why before the connection closes (0A000 for a protocol version other than 3, 08P01
/// for a malformed packet), as PostgreSQL does for most of them; a connection that closed gets nothing.
pub(super) async fn read_first_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<StartupPacket, ProtocolError> {
    let result = protocol::read_startup_packet(stream).await;
    if let Err(e) = &result {
        let refusal = match e {
            ProtocolError::UnsupportedProtocol { .. } => Some(Refusal::Unsupported(e.to_string())),
            ProtocolError::BadStartupLength(_) | ProtocolError::BadStartup(_) => {
                Some(Refusal::Protocol(e.to_string()))
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            tracing::info!(reason = %e, "first packet refused");
            let mut out = BytesMut::new();
            protocol::write::error_response(&mut out, &refusal.to_fatal());
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        }
    }
    result
}

pub(super) async fn forward_cancel(proxy: &Proxy, key: ClientKey) {
    // As PostgreSQL, say nothing back either way.
    match proxy.cancels.lookup(key) {
        Some(ticket) => {
            let upstream = &ticket.upstream;
            if let Err(e) = UpstreamConn::cancel(
                &upstream.tls,
                upstream.addr,
                upstream.process_id,
                upstream.secret_key,
            )
            .await
            {
                tracing::warn!(error = %e, "could not forward a cancel request upstream");
            } else {
                tracing::info!(
                    backend_pid = upstream.process_id,
                    "cancel request forwarded"
                );
            }
        }
        None => tracing::info!("cancel request with an unknown key ignored"),
    }
}
