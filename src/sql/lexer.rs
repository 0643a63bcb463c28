//! A lexer for PostgreSQL's SQL, as far as a proxy needs one: it splits query text into tokens with their
//! byte spans so that an identifier can be told from the same letters inside a string literal, a quoted
//! identifier, a dollar-quoted body or a comment. It does not parse.
//!
//! Covered: `'…'` with `''` (and backslash escapes in `E'…'`), `U&'…'`, `B'…'`/`X'…'`, `$tag$…$tag$`,
//! `"…"` with `""`, `U&"…"`, `--` and nested `/* */` comments, `$1` parameters, numbers, operators.
//! Assumed: `standard_conforming_strings = on` (PostgreSQL's default since 9.1), so a backslash in a plain
//! `'…'` is an ordinary character. Invalid input (an unterminated literal) ends in a last token that runs to
//! the end of the text; the lexer never fails and never panics.

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// An unquoted identifier or key word (`public`, `SELECT`, `pg_catalog`).
    Ident,
    /// A double-quoted identifier, quotes included (`"User"`, `U&"d\0061t"`).
    QuotedIdent,
    /// A string literal of any kind, quotes included (`'x'`, `E'\n'`, `$$…$$`, `B'01'`).
    String,
    /// `-- …` to the end of the line, or `/* … */`.
    Comment,
    Whitespace,
    /// A number, or a `$n` parameter.
    Number,
    /// `.`
    Dot,
    /// Anything else: operators, punctuation, `;`.
    Other,
}

/// A token: its kind and where it lies in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, sql: &'a [u8]) -> &'a [u8] {
        &sql[self.start..self.end]
    }
}

/// The tokens of `sql`, in order; their spans cover the text without gaps.
pub fn tokens(sql: &[u8]) -> Lexer<'_> {
    Lexer { sql, pos: 0 }
}

/// Iterator over the tokens of a query text.
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.sql.get(i).copied()
    }

    /// End of a `'…'` literal whose opening quote is at `open`.
    fn quoted_end(&self, open: usize, quote: u8, backslash_escapes: bool) -> usize {
        let mut i = open + 1;
        while i < self.sql.len() {
            let b = self.sql[i];
            if backslash_escapes && b == b'\\' {
                i += 2;
                continue;
            }
            if b == quote {
                if self.at(i + 1) == Some(quote) {
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i += 1;
        }
        self.sql.len()
    }

    /// End of a dollar-quoted string starting at `open`, if `open` starts a valid `$tag$`.
    fn dollar_end(&self, open: usize) -> Option<usize> {
        let mut i = open + 1;
        while let Some(b) = self.at(i) {
            if b == b'$' {
                break;
            }
            let ok = if i == open + 1 {
                is_ident_start(b)
            } else {
                is_ident_char(b) && b != b'$'
            };
            if !ok {
                return None;
            }
            i += 1;
        }
        self.at(i)?;
        let delimiter = &self.sql[open..=i];
        let body = i + 1;
        let end = self.sql[body..]
            .windows(delimiter.len())
            .position(|w| w == delimiter)
            .map(|p| body + p + delimiter.len())
            .unwrap_or(self.sql.len());
        Some(end)
    }

    fn block_comment_end(&self, open: usize) -> usize {
        let mut depth = 0usize;
        let mut i = open;
        while i + 1 < self.sql.len() {
            match (self.sql[i], self.sql[i + 1]) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        self.sql.len()
    }

    fn token_at(&self, start: usize) -> (TokenKind, usize) {
        let sql = self.sql;
        let b = sql[start];
        let next = self.at(start + 1);
        let upper = b.to_ascii_uppercase();
        match b {
            _ if b.is_ascii_whitespace() => {
                let len = sql[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_whitespace())
                    .count();
                (TokenKind::Whitespace, start + len)
            }
            b'-' if next == Some(b'-') => {
                let end = sql[start..]
                    .iter()
                    .position(|c| *c == b'\n' || *c == b'\r')
                    .map(|p| start + p)
                    .unwrap_or(sql.len());
                (TokenKind::Comment, end)
            }
            b'/' if next == Some(b'*') => (TokenKind::Comment, self.block_comment_end(start)),
            b'\'' => (TokenKind::String, self.quoted_end(start, b'\'', false)),
            b'"' => (TokenKind::QuotedIdent, self.quoted_end(start, b'"', false)),
            b'$' => {
                if let Some(end) = self.dollar_end(start) {
                    return (TokenKind::String, end);
                }
                let len = sql[start + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if len > 0 {
                    (TokenKind::Number, start + 1 + len)
                } else {
                    (TokenKind::Other, start + 1)
                }
            }
            b'.' if !next.is_some_and(|n| n.is_ascii_digit()) => (TokenKind::Dot, start + 1),
            _ if (upper == b'E') && next == Some(b'\'') => {
                (TokenKind::String, self.quoted_end(start + 1, b'\'', true))
            }
            _ if (upper == b'B' || upper == b'X' || upper == b'N') && next == Some(b'\'') => {
                (TokenKind::String, self.quoted_end(start + 1, b'\'', false))
            }
            _ if upper == b'U' && next == Some(b'&') => match self.at(start + 2) {
                Some(b'\'') => (TokenKind::String, self.quoted_end(start + 2, b'\'', false)),
                Some(b'"') => (
                    TokenKind::QuotedIdent,
                    self.quoted_end(start + 2, b'"', false),
                ),
                _ => self.identifier(start),
            },
            _ if is_ident_start(b) => self.identifier(start),
            _ if b.is_ascii_digit() || b == b'.' => {
                let len = sql[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'.' || **c == b'_')
                    .count();
                (TokenKind::Number, start + len)
            }
            _ => (TokenKind::Other, start + 1),
        }
    }

    fn identifier(&self, start: usize) -> (TokenKind, usize) {
        let len = self.sql[start..]
            .iter()
            .take_while(|c| is_ident_char(**c))
            .count();
        (TokenKind::Ident, start + len)
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if self.pos >= self.sql.len() {
            return None;
        }
        let start = self.pos;
        let (kind, end) = self.token_at(start);
        let end = end.clamp(start + 1, self.sql.len());
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

/// Whether `token` is the identifier `name` (lower case ASCII): unquoted in any case, or quoted exactly.
pub fn is_identifier(sql: &[u8], token: &Token, name: &str) -> bool {
    let text = token.text(sql);
    match token.kind {
        TokenKind::Ident => text.eq_ignore_ascii_case(name.as_bytes()),
        TokenKind::QuotedIdent => {
            text.len() == name.len() + 2 && &text[1..text.len() - 1] == name.as_bytes()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        tokens(sql.as_bytes())
            .filter(|t| t.kind != TokenKind::Whitespace)
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    #[test]
    fn literals_comments_and_quoted_names_are_single_tokens() {
        use TokenKind::*;
        let cases: &[(&str, &[(TokenKind, &str)])] = &[
            ("'public.x'", &[(String, "'public.x'")]),
            ("'it''s' x", &[(String, "'it''s'"), (Ident, "x")]),
            (r"E'a\'b' x", &[(String, r"E'a\'b'"), (Ident, "x")]),
            (r"'a\' x", &[(String, r"'a\'"), (Ident, "x")]),
            (
                "$$ public.x $$ y",
                &[(String, "$$ public.x $$"), (Ident, "y")],
            ),
            (
                "$f$ a $$ b $f$ y",
                &[(String, "$f$ a $$ b $f$"), (Ident, "y")],
            ),
            ("$1 + $2", &[(Number, "$1"), (Other, "+"), (Number, "$2")]),
            (
                "\"Public\".\"User\"",
                &[
                    (QuotedIdent, "\"Public\""),
                    (Dot, "."),
                    (QuotedIdent, "\"User\""),
                ],
            ),
            ("\"a\"\"b\"", &[(QuotedIdent, "\"a\"\"b\"")]),
            ("U&\"d\\0061t\"", &[(QuotedIdent, "U&\"d\\0061t\"")]),
            ("u&'x'", &[(String, "u&'x'")]),
            (
                "-- public.x\nselect",
                &[(Comment, "-- public.x"), (Ident, "select")],
            ),
            (
                "/* a /* nested */ public */ b",
                &[(Comment, "/* a /* nested */ public */"), (Ident, "b")],
            ),
            ("x'1F' b'01'", &[(String, "x'1F'"), (String, "b'01'")]),
            (
                "public.orders",
                &[(Ident, "public"), (Dot, "."), (Ident, "orders")],
            ),
            (
                "a.b1 1.5 .5",
                &[
                    (Ident, "a"),
                    (Dot, "."),
                    (Ident, "b1"),
                    (Number, "1.5"),
                    (Number, ".5"),
                ],
            ),
            ("publicity", &[(Ident, "publicity")]),
            ("x$y", &[(Ident, "x$y")]),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql), want.to_vec(), "{sql}");
        }
    }

    #[test]
    fn unterminated_input_runs_to_the_end_and_spans_cover_the_text() {
        for sql in [
            "'open", "\"open", "$a$ open", "/* open", "E'\\", "U&", "$", "-",
        ] {
            let toks: Vec<Token> = tokens(sql.as_bytes()).collect();
            assert_eq!(toks.first().map(|t| t.start), Some(0), "{sql}");
            assert_eq!(toks.last().map(|t| t.end), Some(sql.len()), "{sql}");
            for w in toks.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{sql}");
            }
        }
    }

    #[test]
    fn identifiers_match_unquoted_in_any_case_and_quoted_exactly() {
        let sql = b"PUBLIC \"public\" \"Public\" 'public'";
        let toks: Vec<Token> = tokens(sql)
            .filter(|t| t.kind != TokenKind::Whitespace)
            .collect();
        let matches: Vec<bool> = toks
            .iter()
            .map(|t| is_identifier(sql, t, "public"))
            .collect();
        assert_eq!(matches, vec![true, true, false, false]);
    }

    /// Any bytes: no panic, and the tokens tile the input.
    #[test]
    fn arbitrary_bytes_tile_without_panicking() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"'\"$-/*.\\EeUu&xb_1 \n;a\x80\xff";
        for _ in 0..2_000 {
            let len = (seed % 40) as usize;
            let mut sql = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                sql.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let mut pos = 0;
            for t in tokens(&sql) {
                assert_eq!(t.start, pos);
                assert!(t.end > t.start);
                pos = t.end;
            }
            assert_eq!(pos, sql.len());
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
    }
}
