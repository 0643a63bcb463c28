//! The virtual schema: in a tenant's session, the schema name an application writes (`public` by default)
//! means the tenant's own schema. Rewritten in the client's SQL text, token by token (the [`super::lexer`]
//! tells names from literals and comments):
//!
//! - a qualifier: `public.orders`, `"public"."User"`, `PUBLIC.f(x)` (the name followed by a `.`);
//! - `SET [SESSION | LOCAL] search_path TO | = …`: each element naming it;
//! - `set_config('search_path', '…', …)`: each element of the value naming it;
//! - in catalog lookups and relation names given as text, the forms ORMs send ([`catalog`]):
//!   `n.nspname LIKE 'public'`, `nextval('public.seq')`, `'public.t'::regclass`.
//!
//! Everything else is left as written: the same letters in a string, a comment, a column called `public`,
//! another schema's name (isolation stays PostgreSQL's), results and error messages.

use super::lexer::{is_identifier, tokens, Token, TokenKind};

mod catalog;

/// What to rewrite into what.
#[derive(Clone, Debug)]
pub struct VirtualSchema {
    /// The name clients write, lower case (`public`).
    pub virtual_name: String,
    /// The tenant's real schema name.
    pub real_name: String,
}

impl VirtualSchema {
    pub fn new(virtual_name: &str, real_name: &str) -> Self {
        Self {
            virtual_name: virtual_name.to_ascii_lowercase(),
            real_name: real_name.to_string(),
        }
    }

    fn quoted_real(&self) -> String {
        format!("\"{}\"", self.real_name.replace('"', "\"\""))
    }

    /// Whether `name` (as written inside a search_path value: bare or double-quoted) is the virtual name.
    fn is_virtual_in_list(&self, name: &str) -> bool {
        let name = name.trim();
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted == self.virtual_name,
            None => name.eq_ignore_ascii_case(&self.virtual_name),
        }
    }

    /// `sql` with the virtual schema rewritten, or `None` when nothing names it (the common case: one
    /// byte search, no lexing, no copy). One pass over the tokens, nothing collected: a small state machine
    /// per statement for `SET search_path` and `set_config`.
    pub fn rewrite(&self, sql: &[u8]) -> Option<Vec<u8>> {
        if !super::contains_word_ignore_ascii_case(sql, self.virtual_name.as_bytes()) {
            return None;
        }
        let mut out = Splicer::new(sql);
        let quoted_real = self.quoted_real();
        // The virtual name just seen, waiting for a `.` to make it a qualifier.
        let mut candidate: Option<Token> = None;
        let mut set = SetStatement::Start;
        let mut set_config = SetConfigCall::None;
        let mut schema_comparison = catalog::SchemaComparison::default();
        let mut relation_name = catalog::RelationName::default();
        for t in tokens(sql) {
            if matches!(t.kind, TokenKind::Whitespace | TokenKind::Comment) {
                continue;
            }
            if let Some(c) = candidate.take() {
                if t.kind == TokenKind::Dot {
                    out.replace(&c, quoted_real.as_bytes());
                }
            }
            if let Some(real) = schema_comparison.step(sql, &t, self) {
                out.replace(&t, real.as_bytes());
            }
            if let Some((literal, real)) = relation_name.step(sql, &t, self) {
                out.replace(&literal, real.as_bytes());
            }
            let is_word = |w: &str| is_identifier(sql, &t, w);
            let is_char = |ch: u8| t.kind == TokenKind::Other && t.text(sql) == [ch];
            if is_char(b';') {
                set = SetStatement::Start;
                set_config = SetConfigCall::None;
                continue;
            }
            // SET [SESSION | LOCAL] search_path TO | = list
            set = match set {
                SetStatement::Start if is_word("set") => SetStatement::Set,
                SetStatement::Set if is_word("session") || is_word("local") => SetStatement::Scope,
                SetStatement::Set | SetStatement::Scope if is_word("search_path") => {
                    SetStatement::Name
                }
                SetStatement::Name if is_word("to") || is_char(b'=') => SetStatement::List,
                SetStatement::List => SetStatement::List,
                _ => SetStatement::Other,
            };
            if set == SetStatement::List {
                match t.kind {
                    TokenKind::Ident | TokenKind::QuotedIdent
                        if is_identifier(sql, &t, &self.virtual_name) =>
                    {
                        out.replace(&t, quoted_real.as_bytes())
                    }
                    TokenKind::String if self.is_plain_string_naming_virtual(t.text(sql)) => {
                        out.replace(&t, plain_string(&self.real_name).as_bytes())
                    }
                    _ => {}
                }
                continue;
            }
            // set_config('search_path', 'value', …)
            set_config = match set_config {
                _ if is_word("set_config") => SetConfigCall::Name,
                SetConfigCall::Name if is_char(b'(') => SetConfigCall::Open,
                SetConfigCall::Open
                    if t.kind == TokenKind::String
                        && plain_string_value(t.text(sql))
                            .is_some_and(|v| v.eq_ignore_ascii_case("search_path")) =>
                {
                    SetConfigCall::Setting
                }
                SetConfigCall::Setting if is_char(b',') => SetConfigCall::Comma,
                SetConfigCall::Comma => {
                    if t.kind == TokenKind::String {
                        if let Some(new_value) = plain_string_value(t.text(sql))
                            .and_then(|value| self.rewrite_list(&value))
                        {
                            out.replace(&t, plain_string(&new_value).as_bytes());
                        }
                    }
                    SetConfigCall::None
                }
                _ => SetConfigCall::None,
            };
            if is_identifier(sql, &t, &self.virtual_name) {
                candidate = Some(t);
            }
        }
        out.finish()
    }

    fn is_plain_string_naming_virtual(&self, literal: &[u8]) -> bool {
        plain_string_value(literal).is_some_and(|v| self.is_virtual_in_list(&v))
    }

    /// A search_path value (`"$user", public`) with the elements naming the virtual schema replaced.
    pub fn rewrite_list(&self, value: &str) -> Option<String> {
        let mut changed = false;
        let parts: Vec<String> = value
            .split(',')
            .map(|part| {
                if self.is_virtual_in_list(part) {
                    changed = true;
                    self.quoted_real()
                } else {
                    part.trim().to_string()
                }
            })
            .collect();
        changed.then(|| parts.join(", "))
    }
}

/// Where the tokens of a statement stand in `SET [SESSION | LOCAL] search_path TO | = list`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetStatement {
    Start,
    Set,
    Scope,
    Name,
    List,
    Other,
}

/// Where the tokens stand in `set_config('search_path', 'value'`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetConfigCall {
    None,
    Name,
    Open,
    Setting,
    Comma,
}

/// The text with token spans replaced, copied only from the first replacement on.
struct Splicer<'a> {
    sql: &'a [u8],
    out: Option<Vec<u8>>,
    copied: usize,
}

impl<'a> Splicer<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Self {
            sql,
            out: None,
            copied: 0,
        }
    }

    /// Replaces `token`, which must lie after every token replaced so far (one that does not is left).
    fn replace(&mut self, token: &Token, with: &[u8]) {
        if token.start < self.copied {
            return;
        }
        let sql = self.sql;
        let out = self
            .out
            .get_or_insert_with(|| Vec::with_capacity(sql.len() + 64));
        out.extend_from_slice(&sql[self.copied..token.start]);
        out.extend_from_slice(with);
        self.copied = token.end;
    }

    fn finish(self) -> Option<Vec<u8>> {
        let mut out = self.out?;
        out.extend_from_slice(&self.sql[self.copied..]);
        Some(out)
    }
}

/// The value of a plain `'…'` literal (not `E''`, `U&''` or dollar-quoted), if it is one.
fn plain_string_value(literal: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(literal).ok()?;
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

fn plain_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests;
