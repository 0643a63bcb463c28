//! SQL text as a proxy sees it: a lexer (token kinds and spans), no parser.

pub mod lexer;

pub use lexer::{is_identifier, tokens, Token, TokenKind};

/// Whether `haystack` contains `needle` (lower-case ASCII, starting with a byte that has no case, such as
/// `_`) in any ASCII case: a cheap first check before lexing a message. Finds candidates with a SIMD byte
/// search for that first byte.
pub fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    debug_assert!(!first.is_ascii_alphabetic());
    memchr::memchr_iter(first, haystack).any(|i| {
        haystack
            .get(i + 1..i + 1 + rest.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
    })
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
    }
}
