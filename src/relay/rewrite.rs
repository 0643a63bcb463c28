//! The client's messages with the virtual schema rewritten (session pooling): whole Query and Parse
//! messages are collected and passed through [`VirtualSchema::rewrite`]; every other byte passes as it came.
//! A Query or Parse larger than [`MAX_REWRITTEN`] passes unchanged (it is streamed, not held).

use crate::sql::{message, VirtualSchema};

/// Largest Query or Parse held whole to be rewritten.
pub const MAX_REWRITTEN: usize = 16 << 20;

pub struct ClientRewriter {
    schema: VirtualSchema,
    header: [u8; 5],
    header_len: usize,
    /// A Query or Parse being collected (header included), and its whole length.
    frame: Vec<u8>,
    frame_len: usize,
    /// Bytes of the current message still to pass unchanged.
    passthrough: usize,
}

impl ClientRewriter {
    pub fn new(schema: VirtualSchema) -> Self {
        Self {
            schema,
            header: [0; 5],
            header_len: 0,
            frame: Vec::new(),
            frame_len: 0,
            passthrough: 0,
        }
    }

    /// Appends to `out` what `input` (the next bytes of the client's stream) becomes.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.passthrough > 0 {
                let n = self.passthrough.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.passthrough -= n;
                input = &input[n..];
                continue;
            }
            if self.frame_len > 0 {
                let n = (self.frame_len - self.frame.len()).min(input.len());
                self.frame.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.frame.len() == self.frame_len {
                    let msg_tag = self.frame[0];
                    match message::rewrite(msg_tag, &self.frame, |sql| self.schema.rewrite(sql)) {
                        Some(rewritten) => out.extend_from_slice(&rewritten),
                        None => out.extend_from_slice(&self.frame),
                    }
                    self.frame.clear();
                    self.frame_len = 0;
                }
                continue;
            }
            let n = (5 - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
            self.header_len += n;
            input = &input[n..];
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let msg_tag = self.header[0];
            let len = i32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            // A bad length is the relay's frame scanner's to refuse; pass what came.
            let body = (len.max(4) - 4) as usize;
            let total = 5 + body;
            if matches!(msg_tag, b'Q' | b'P') && len >= 4 && total <= MAX_REWRITTEN {
                self.frame.extend_from_slice(&self.header);
                self.frame_len = total;
                if total == 5 {
                    out.extend_from_slice(&self.frame);
                    self.frame.clear();
                    self.frame_len = 0;
                }
            } else {
                out.extend_from_slice(&self.header);
                self.passthrough = body;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write;
    use bytes::BytesMut;

    fn stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        write::query(&mut b, "SELECT * FROM public.t");
        b.extend_from_slice(b"d\0\0\0\x0cpublic.x");
        write::query(&mut b, "SELECT 'public.y'");
        // Parse "s1" "INSERT INTO public.t VALUES ($1)" with one parameter type.
        let body = b"s1\0INSERT INTO public.t VALUES ($1)\0\0\x01\0\0\0\x17";
        b.extend_from_slice(b"P");
        b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        b.extend_from_slice(body);
        write::terminate(&mut b);
        b.to_vec()
    }

    fn expected() -> Vec<u8> {
        let mut b = BytesMut::new();
        write::query(&mut b, "SELECT * FROM \"org_a\".t");
        b.extend_from_slice(b"d\0\0\0\x0cpublic.x");
        write::query(&mut b, "SELECT 'public.y'");
        let body = b"s1\0INSERT INTO \"org_a\".t VALUES ($1)\0\0\x01\0\0\0\x17";
        b.extend_from_slice(b"P");
        b.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        b.extend_from_slice(body);
        write::terminate(&mut b);
        b.to_vec()
    }

    #[test]
    fn queries_and_parses_are_rewritten_whatever_the_chunking() {
        let input = stream();
        for chunk in [1, 2, 3, 5, 7, 64, input.len()] {
            let mut r = ClientRewriter::new(VirtualSchema::new("public", "org_a"));
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                r.feed(piece, &mut out);
            }
            assert_eq!(out, expected(), "chunks of {chunk}");
        }
    }
}
