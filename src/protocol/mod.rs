//! The PostgreSQL v3 wire format, in one place: message tags, frame headers, startup packets and the few
//! backend messages pgtenant writes itself. The relay never decodes rows; it reads frame headers and the tags
//! named here.

use bytes::{Buf, BufMut, BytesMut};
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet accepted (PostgreSQL's own limit is 10,000 bytes).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Message tags pgtenant looks at. Frontend and backend tags share a byte space, so they are grouped.
pub mod tag {
    // frontend
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // backend
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const COMMAND_COMPLETE: u8 = b'C';
}

/// Type OID of `text`.
pub const TEXT_OID: i32 = 25;

/// Request codes that take the place of a protocol version in the first packet.
pub mod request_code {
    pub const SSL: i32 = 80_877_103;
    pub const GSSENC: i32 = 80_877_104;
    pub const CANCEL: i32 = 80_877_102;
    pub const PROTOCOL_3_0: i32 = 196_608;
}

/// Transaction status carried by ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    BadStartupLength(usize),
    #[error("invalid message length {len} for message type {tag:?}")]
    BadFrameLength { tag: char, len: usize },
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("expected {expected:?} message, got {got:?}")]
    Unexpected { expected: char, got: char },
}

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

async fn read_exact_or_closed<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProtocolError::Closed),
        Err(e) => Err(ProtocolError::Io(e)),
    }
}

/// Reads one tagged message whose body must fit in `max_body`; longer ones are refused before allocation.
/// Cancel-safe: no.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
) -> Result<(u8, BytesMut), ProtocolError> {
    let mut header = [0u8; 5];
    read_exact_or_closed(reader, &mut header).await?;
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || (len as usize - 4) > max_body {
        return Err(ProtocolError::BadFrameLength {
            tag: tag as char,
            len: len.max(0) as usize,
        });
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    read_exact_or_closed(reader, &mut body).await?;
    Ok((tag, body))
}

/// Reads a NUL-terminated string from a message body.
pub fn get_cstr(buf: &mut BytesMut) -> Option<String> {
    let end = buf.iter().position(|b| *b == 0)?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(s)
}

/// Writes backend (and a few frontend) messages into a buffer. Every function appends one whole frame.
pub mod write {
    use super::*;

    fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        buf.put_u8(tag);
        let len_pos = buf.len();
        buf.put_i32(0);
        body(buf);
        let len = (buf.len() - len_pos) as i32;
        buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn put_cstr(buf: &mut BytesMut, s: &str) {
        // A NUL inside would end the string early on the peer's side; strip it.
        buf.extend(s.bytes().filter(|b| *b != 0));
        buf.put_u8(0);
    }

    pub fn authentication_cleartext(buf: &mut BytesMut) {
        frame(buf, tag::AUTHENTICATION, |b| b.put_i32(3));
    }
    pub fn authentication_ok(buf: &mut BytesMut) {
        frame(buf, tag::AUTHENTICATION, |b| b.put_i32(0));
    }
    pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
        frame(buf, tag::PARAMETER_STATUS, |b| {
            put_cstr(b, name);
            put_cstr(b, value);
        });
    }
    pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
        frame(buf, tag::BACKEND_KEY_DATA, |b| {
            b.put_i32(process_id);
            b.put_i32(secret_key);
        });
    }
    pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
        frame(buf, tag::READY_FOR_QUERY, |b| b.put_u8(status.as_byte()));
    }
    /// NegotiateProtocolVersion: the newest protocol pgtenant speaks (3.`minor`, sent as the full version
    /// number as PostgreSQL does) and the protocol options it does not know.
    pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[String]) {
        frame(buf, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
            b.put_i32((3 << 16) | minor);
            b.put_i32(unsupported.len() as i32);
            for option in unsupported {
                put_cstr(b, option);
            }
        });
    }
    /// ErrorResponse (or NoticeResponse with `tag::NOTICE_RESPONSE`).
    pub fn error_response(buf: &mut BytesMut, err: &PgError) {
        frame(buf, tag::ERROR_RESPONSE, |b| put_error_fields(b, err));
    }
    pub fn notice_response(buf: &mut BytesMut, err: &PgError) {
        frame(buf, tag::NOTICE_RESPONSE, |b| put_error_fields(b, err));
    }
    fn put_error_fields(b: &mut BytesMut, err: &PgError) {
        b.put_u8(b'S');
        put_cstr(b, err.severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, err.severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, &err.code);
        b.put_u8(b'M');
        put_cstr(b, &err.message);
        if let Some(detail) = &err.detail {
            b.put_u8(b'D');
            put_cstr(b, detail);
        }
        if let Some(hint) = &err.hint {
            b.put_u8(b'H');
            put_cstr(b, hint);
        }
        b.put_u8(0);
    }

    /// RowDescription with every column of type text, in text format.
    pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
        frame(buf, b'T', |b| {
            b.put_i16(columns.len() as i16);
            for name in columns {
                put_cstr(b, name);
                b.put_i32(0); // table oid
                b.put_i16(0); // column number
                b.put_i32(TEXT_OID);
                b.put_i16(-1); // variable length
                b.put_i32(-1); // no type modifier
                b.put_i16(0); // text format
            }
        });
    }
    pub fn data_row(buf: &mut BytesMut, values: &[Option<String>]) {
        frame(buf, b'D', |b| {
            b.put_i16(values.len() as i16);
            for value in values {
                match value {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.extend_from_slice(v.as_bytes());
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }
    pub fn command_complete(buf: &mut BytesMut, tag_text: &str) {
        frame(buf, tag::COMMAND_COMPLETE, |b| put_cstr(b, tag_text));
    }
    pub fn empty_query_response(buf: &mut BytesMut) {
        frame(buf, b'I', |_| {});
    }

    // Frontend messages pgtenant sends upstream.
    pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
        let len_pos = buf.len();
        buf.put_i32(0);
        buf.put_i32(request_code::PROTOCOL_3_0);
        for (k, v) in params {
            put_cstr(buf, k);
            put_cstr(buf, v);
        }
        buf.put_u8(0);
        let len = (buf.len() - len_pos) as i32;
        buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
    }
    pub fn cancel_request(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
        buf.put_i32(16);
        buf.put_i32(request_code::CANCEL);
        buf.put_i32(process_id);
        buf.put_i32(secret_key);
    }
    pub fn password_message(buf: &mut BytesMut, password: &str) {
        frame(buf, tag::PASSWORD, |b| put_cstr(b, password));
    }
    pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
        frame(buf, tag::PASSWORD, |b| {
            put_cstr(b, mechanism);
            b.put_i32(data.len() as i32);
            b.extend_from_slice(data);
        });
    }
    pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
        frame(buf, tag::PASSWORD, |b| b.extend_from_slice(data));
    }
    pub fn query(buf: &mut BytesMut, sql: &str) {
        frame(buf, tag::QUERY, |b| put_cstr(b, sql));
    }
    pub fn terminate(buf: &mut BytesMut) {
        frame(buf, tag::TERMINATE, |_| {});
    }
}

/// An error PostgreSQL reported, passed on with its own SQLSTATE.
impl PgError {
    pub fn from_upstream(fields: &ErrorFields) -> Self {
        let code = if fields.code.len() == 5 {
            fields.code.clone()
        } else {
            sqlstate::INTERNAL_ERROR.to_string()
        };
        Self {
            severity: if fields.severity == "ERROR" {
                Severity::Error
            } else {
                Severity::Fatal
            },
            code: std::borrow::Cow::Owned(code),
            message: fields.message.clone(),
            detail: None,
            hint: None,
        }
    }
}

/// SQLSTATE codes pgtenant uses, and the error or notice pgtenant reports ([`crate::error`]).
pub use crate::error::{sqlstate, PgError, Severity};

/// Fields of an ErrorResponse / NoticeResponse body read from upstream.
#[derive(Debug, Default, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> Self {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        fields
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}

/// Follows frame boundaries in a byte stream that arrives in arbitrary chunks, so the relay can see each
/// message's tag (and, for short messages it asks for, the body) without buffering whole frames.
#[derive(Debug, Default)]
pub struct FrameScanner {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current frame still to come.
    remaining: usize,
    /// Body of the current frame being collected, when the caller asked to peek at it.
    peek: Option<PeekBody>,
    /// Offset in the current chunk where the current frame's header began, if it began in this chunk.
    frame_start: Option<usize>,
}

/// Longest frame either side may send (PostgreSQL's own limit for a client message is just under 1 GiB, and
/// it cannot build a larger one): a length field beyond it is a broken stream, not a message to relay.
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Largest body [`FrameScanner`] collects for a peek.
const PEEK_MAX: usize = 256;

/// A short body being collected, inline (no allocation per message).
#[derive(Debug)]
struct PeekBody {
    tag: u8,
    body: [u8; PEEK_MAX],
    len: usize,
    want: usize,
}

impl FrameScanner {
    /// True when the scanner stands exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0 && self.peek.is_none()
    }

    /// Walks `chunk`. For every frame whose header completes, `want_body(tag)` decides whether to collect its
    /// body (bodies of at most 256 bytes only); `on_frame` is then called once per frame with the tag and the
    /// collected body (empty if not collected). When `on_frame` returns `false`, scanning stops there and
    /// `scan` returns where that frame lies in this chunk (the relay stops at a Terminate this way).
    /// Returns `Err` on a length below 4 or above [`MAX_FRAME_LEN`].
    pub fn scan(
        &mut self,
        chunk: &[u8],
        mut want_body: impl FnMut(u8) -> bool,
        mut on_frame: impl FnMut(u8, &[u8]) -> bool,
    ) -> Result<Option<StopAt>, ProtocolError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if let Some(peek) = &mut self.peek {
                let take = (peek.want - peek.len).min(chunk.len() - pos);
                peek.body[peek.len..peek.len + take].copy_from_slice(&chunk[pos..pos + take]);
                peek.len += take;
                pos += take;
                self.remaining -= take;
                if peek.len == peek.want {
                    let peek = self.peek.take().expect("peek present");
                    if !on_frame(peek.tag, &peek.body[..peek.len]) {
                        return Ok(Some(StopAt {
                            frame_start: self.frame_start.take(),
                            frame_end: pos,
                        }));
                    }
                }
                continue;
            }
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() - pos);
                self.remaining -= skip;
                pos += skip;
                continue;
            }
            if self.header_len == 0 {
                self.frame_start = Some(pos);
            }
            let take = (5 - self.header_len).min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            let tag = self.header[0];
            let len = i32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 || len as usize > MAX_FRAME_LEN {
                return Err(ProtocolError::BadFrameLength {
                    tag: tag as char,
                    len: len.max(0) as usize,
                });
            }
            let body_len = len as usize - 4;
            self.remaining = body_len;
            if body_len > 0 && body_len <= PEEK_MAX && want_body(tag) {
                if chunk.len() - pos >= body_len {
                    // The whole body is in this chunk: hand out the slice.
                    let body = &chunk[pos..pos + body_len];
                    pos += body_len;
                    self.remaining = 0;
                    if !on_frame(tag, body) {
                        return Ok(Some(StopAt {
                            frame_start: self.frame_start.take(),
                            frame_end: pos,
                        }));
                    }
                    continue;
                }
                self.peek = Some(PeekBody {
                    tag,
                    body: [0; PEEK_MAX],
                    len: 0,
                    want: body_len,
                });
                continue;
            }
            if !on_frame(tag, &[]) {
                let skip = self.remaining.min(chunk.len() - pos);
                self.remaining -= skip;
                pos += skip;
                return Ok(Some(StopAt {
                    frame_start: self.frame_start.take(),
                    frame_end: pos,
                }));
            }
        }
        // A header that began in this chunk and is still incomplete began "before" the next chunk.
        self.frame_start = None;
        Ok(None)
    }
}

/// Where the frame at which a scan stopped lies in the chunk: `frame_start` is `None` when its first bytes
/// came in an earlier chunk; `frame_end` is the offset just past its last byte in this chunk.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct StopAt {
    pub frame_start: Option<usize>,
    pub frame_end: usize,
}

#[cfg(test)]
mod tests;
