//! The virtual schema: in a tenant's session, the schema name an application writes (`public` by default)
//! means the tenant's own schema. Rewritten in the client's SQL text, token by token (the [`super::lexer`]
//! tells names from literals and comments):
//!
//! - a qualifier: `public.orders`, `"public"."User"`, `PUBLIC.f(x)` (the name followed by a `.`);
//! - `SET [SESSION | LOCAL] search_path TO | = …`: each element naming it;
//! - `set_config('search_path', '…', …)`: each element of the value naming it.
//!
//! Everything else is left as written: the same letters in a string, a comment, a column called `public`,
//! another schema's name (isolation stays PostgreSQL's), results and error messages.

use super::lexer::{is_identifier, tokens, Token, TokenKind};

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
    /// byte search, no lexing, no copy).
    pub fn rewrite(&self, sql: &[u8]) -> Option<Vec<u8>> {
        if !super::contains_word_ignore_ascii_case(sql, self.virtual_name.as_bytes()) {
            return None;
        }
        let all: Vec<Token> = tokens(sql).collect();
        let significant: Vec<usize> = (0..all.len())
            .filter(|&i| !matches!(all[i].kind, TokenKind::Whitespace | TokenKind::Comment))
            .collect();
        let sig = |k: usize| significant.get(k).map(|&i| &all[i]);
        let word = |k: usize, w: &str| sig(k).is_some_and(|t| is_identifier(sql, t, w));
        let other = |k: usize, c: u8| {
            sig(k).is_some_and(|t| t.kind == TokenKind::Other && t.text(sql) == [c])
        };
        // (token index in `all`, replacement)
        let mut replacements: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut statement_start = 0;
        let mut k = 0;
        while k < significant.len() {
            let token = &all[significant[k]];
            if other(k, b';') {
                statement_start = k + 1;
                k += 1;
                continue;
            }
            // A qualifier.
            if is_identifier(sql, token, &self.virtual_name)
                && sig(k + 1).is_some_and(|t| t.kind == TokenKind::Dot)
            {
                replacements.push((significant[k], self.quoted_real().into_bytes()));
                k += 1;
                continue;
            }
            // SET [SESSION | LOCAL] search_path TO | = list
            if k == statement_start && word(k, "set") {
                let mut name_at = k + 1;
                if word(name_at, "session") || word(name_at, "local") {
                    name_at += 1;
                }
                if word(name_at, "search_path")
                    && (word(name_at + 1, "to") || other(name_at + 1, b'='))
                {
                    let mut j = name_at + 2;
                    while let Some(t) = sig(j) {
                        if other(j, b';') {
                            break;
                        }
                        match t.kind {
                            TokenKind::Ident | TokenKind::QuotedIdent
                                if is_identifier(sql, t, &self.virtual_name) =>
                            {
                                replacements
                                    .push((significant[j], self.quoted_real().into_bytes()));
                            }
                            TokenKind::String
                                if self.is_plain_string_naming_virtual(t.text(sql)) =>
                            {
                                replacements.push((
                                    significant[j],
                                    plain_string(&self.real_name).into_bytes(),
                                ));
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    k = j;
                    continue;
                }
            }
            // set_config('search_path', 'value', …)
            if word(k, "set_config") && other(k + 1, b'(') {
                let name_is_search_path = sig(k + 2).is_some_and(|t| {
                    t.kind == TokenKind::String
                        && plain_string_value(t.text(sql))
                            .is_some_and(|v| v.eq_ignore_ascii_case("search_path"))
                });
                if name_is_search_path && other(k + 3, b',') {
                    if let Some(value_token) = sig(k + 4).filter(|t| t.kind == TokenKind::String) {
                        if let Some(value) = plain_string_value(value_token.text(sql)) {
                            if let Some(new_value) = self.rewrite_list(&value) {
                                replacements.push((
                                    significant[k + 4],
                                    plain_string(&new_value).into_bytes(),
                                ));
                            }
                        }
                    }
                }
            }
            k += 1;
        }
        if replacements.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(sql.len() + replacements.len() * self.real_name.len());
        let mut copied = 0;
        for (index, replacement) in replacements {
            let t = &all[index];
            out.extend_from_slice(&sql[copied..t.start]);
            out.extend_from_slice(&replacement);
            copied = t.end;
        }
        out.extend_from_slice(&sql[copied..]);
        Some(out)
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
