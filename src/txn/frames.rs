//! Frames as the relay reads them: a message's header, whether it is whole, which messages are read whole,
//! and the empty frames pgtenant answers with.

use super::MAX_WHOLE_MESSAGE;
use crate::protocol::tag;
use crate::protocol::ProtocolError;
use bytes::{BufMut, Bytes, BytesMut};

fn frame_header(buf: &[u8]) -> (u8, i32) {
    (buf[0], i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
}

/// The tag and the whole length (tag included) of the message `buf` starts with (at least 5 bytes), if its
/// length is one pgtenant takes.
pub(super) fn checked_header(buf: &[u8]) -> Result<(u8, usize), ProtocolError> {
    let (msg_tag, len) = frame_header(buf);
    if len < 4 || len as usize > MAX_WHOLE_MESSAGE {
        return Err(ProtocolError::BadFrameLength {
            tag: msg_tag as char,
            len: len.max(0) as usize,
        });
    }
    Ok((msg_tag, 1 + len as usize))
}

/// Whether `frame` holds its whole message (not the head of a large one being streamed).
pub(super) fn is_whole(frame: &[u8]) -> bool {
    frame.len() >= 5 && frame_header(frame).1 as usize + 1 == frame.len()
}

/// Client messages pgtenant must see whole (to rewrite statement names, or to stop at).
pub(super) fn client_needs_whole(msg_tag: u8) -> bool {
    matches!(
        msg_tag,
        tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::CLOSE
            | tag::TERMINATE
            | tag::SYNC
            | tag::FLUSH
    )
}

/// Server messages pgtenant reads whole: small ones it acts on.
pub(super) fn server_needs_whole(msg_tag: u8) -> bool {
    matches!(
        msg_tag,
        b'Z' | b'E' | b'S' | b'C' | b'1' | b'2' | b'3' | b'n' | b'I' | b's'
    )
}

pub(super) fn simple_frame(msg_tag: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(msg_tag);
    b.put_i32(4);
    b.freeze()
}
