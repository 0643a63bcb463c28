//! SQL text as a proxy sees it: a lexer (token kinds and spans), no parser.

pub mod lexer;

pub use lexer::{is_identifier, tokens, Token, TokenKind};

/// Whether `haystack` contains `needle` (lower-case ASCII) in any ASCII case: a cheap first check before
/// lexing a message.
pub fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    if haystack.len() < needle.len() {
        return false;
    }
    (0..=haystack.len() - needle.len()).any(|i| {
        haystack[i].to_ascii_lowercase() == first
            && haystack[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}
