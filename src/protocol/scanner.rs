//! Following frame boundaries in a byte stream that arrives in arbitrary chunks (the relay's view of both
//! streams): each frame's tag, and the body of short ones it asks for.

use super::ProtocolError;

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
