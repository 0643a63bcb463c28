//! The first packet of a connection: an SSL, GSSENC or cancel request, or a StartupMessage with its
//! parameters.

use super::read::read_exact_or_closed;
use super::{request_code, ProtocolError, MAX_STARTUP_PACKET};
use bytes::Buf;
use std::collections::BTreeMap;
use tokio::io::AsyncRead;

/// The first packet of a connection.
#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { process_id: i32, secret_key: i32 },
    Startup(StartupParams),
}

/// The parameters of a StartupMessage, plus the protocol minor version the client asked for and the
/// `_pq_.` protocol options it sent (which pgtenant does not support and reports back).
#[derive(Debug, Clone, Default)]
pub struct StartupParams {
    pub minor_version: u16,
    pub params: BTreeMap<String, String>,
    pub unsupported_options: Vec<String>,
}

impl StartupParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Reads the length-prefixed first packet (no tag byte). Cancel-safe: no (only used outside `select!`).
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<StartupPacket, ProtocolError> {
    let mut len_buf = [0u8; 4];
    read_exact_or_closed(reader, &mut len_buf).await?;
    let len = i32::from_be_bytes(len_buf);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(ProtocolError::BadStartupLength(len.max(0) as usize));
    }
    let mut body = vec![0u8; len as usize - 4];
    read_exact_or_closed(reader, &mut body).await?;
    parse_startup_body(&body)
}

fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut buf = body;
    let code = buf.get_i32();
    match code {
        request_code::SSL => Ok(StartupPacket::Ssl),
        request_code::GSSENC => Ok(StartupPacket::GssEnc),
        request_code::CANCEL => {
            if buf.remaining() < 8 {
                return Err(ProtocolError::BadStartup("short cancel request"));
            }
            let process_id = buf.get_i32();
            let secret_key = buf.get_i32();
            Ok(StartupPacket::Cancel {
                process_id,
                secret_key,
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            let mut params = BTreeMap::new();
            let mut unsupported_options = Vec::new();
            loop {
                let key = read_cstr(&mut buf)?;
                if key.is_empty() {
                    break;
                }
                let value = read_cstr(&mut buf)?;
                if key.starts_with("_pq_.") {
                    unsupported_options.push(key);
                } else {
                    params.insert(key, value);
                }
            }
            Ok(StartupPacket::Startup(StartupParams {
                minor_version: minor,
                params,
                unsupported_options,
            }))
        }
    }
}

fn read_cstr(buf: &mut &[u8]) -> Result<String, ProtocolError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or(ProtocolError::BadStartup("missing terminator"))?;
    let s = String::from_utf8(buf[..end].to_vec())
        .map_err(|_| ProtocolError::BadStartup("parameter is not valid UTF-8"))?;
    buf.advance(end + 1);
    Ok(s)
}
