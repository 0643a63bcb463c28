//! Reading one tagged message whole (its length checked before anything is allocated), and the
//! NUL-terminated strings of a message body.

use super::ProtocolError;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(super) async fn read_exact_or_closed<R: AsyncRead + Unpin>(
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
