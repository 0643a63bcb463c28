//! SQL text as a proxy sees it: a lexer (token kinds and spans), no parser.

pub mod lexer;
pub mod rewrite;

pub use lexer::{is_identifier, tokens, Token, TokenKind};
pub use rewrite::VirtualSchema;

/// Whether `haystack` contains `needle` (lower-case ASCII) in any ASCII case: the cheap first check before
/// lexing a message. Candidates are found with a SIMD search for the needle's first byte (both cases).
pub fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), haystack).any(|i| {
        haystack
            .get(i + 1..i + 1 + rest.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
    })
}

/// As [`contains_ignore_ascii_case`]; the name says what it is used for (a name that may be written in
/// any case).
pub fn contains_word_ignore_ascii_case(haystack: &[u8], word: &[u8]) -> bool {
    contains_ignore_ascii_case(haystack, word)
}

/// The SQL text of a whole Query or Parse frame, and a frame with that text replaced.
pub mod message {
    use bytes::{BufMut, Bytes, BytesMut};

    const QUERY: u8 = b'Q';
    const PARSE: u8 = b'P';

    /// (bytes before the text, the text, bytes after its terminating zero) of a whole Query or Parse.
    fn split(msg_tag: u8, frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
        let body = frame.get(5..)?;
        let head_len = match msg_tag {
            QUERY => 0,
            PARSE => memchr::memchr(0, body)? + 1,
            _ => return None,
        };
        let rest = &body[head_len..];
        let end = memchr::memchr(0, rest)?;
        Some((&body[..head_len], &rest[..end], &rest[end + 1..]))
    }

    /// The SQL text of a whole Query or Parse frame.
    pub fn text(msg_tag: u8, frame: &[u8]) -> Option<&[u8]> {
        split(msg_tag, frame).map(|(_, text, _)| text)
    }

    /// The frame with its SQL text passed through `rewrite`; `None` when `rewrite` changes nothing.
    pub fn rewrite(
        msg_tag: u8,
        frame: &[u8],
        rewrite: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<Bytes> {
        let (head, sql, tail) = split(msg_tag, frame)?;
        let new_sql = rewrite(sql)?;
        let len = 4 + head.len() + new_sql.len() + 1 + tail.len();
        let mut out = BytesMut::with_capacity(1 + len);
        out.put_u8(msg_tag);
        out.put_i32(len as i32);
        out.extend_from_slice(head);
        out.extend_from_slice(&new_sql);
        out.put_u8(0);
        out.extend_from_slice(tail);
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_needle_in_any_case() {
        assert!(contains_ignore_ascii_case(
            b"select * from PG_PREPARED_STATEMENTS",
            b"_prepared_statements"
        ));
        assert!(contains_ignore_ascii_case(
            b"x_prepared_statements",
            b"_prepared_statements"
        ));
        assert!(!contains_ignore_ascii_case(
            b"select a_b from prepared_statements_",
            b"_prepared_statements"
        ));
        assert!(!contains_ignore_ascii_case(
            b"_prepared_statement",
            b"_prepared_statements"
        ));
        assert!(!contains_ignore_ascii_case(b"", b"_x"));
        assert!(contains_ignore_ascii_case(b"FROM Public.x", b"public"));
        assert!(!contains_ignore_ascii_case(b"FROM publi", b"public"));
    }
}
