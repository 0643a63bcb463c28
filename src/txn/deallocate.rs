//! SQL `DEALLOCATE name` of a protocol-level statement, in transaction pooling.
//!
//! Drivers that prepare through the protocol (Parse with a name) but drop their statements with SQL (Active
//! Record, for one, sends `DEALLOCATE a1` when it clears its statement cache) name the statement as they
//! prepared it. On pgtenant's server connections the statement has another name (see [`super::statements`]),
//! so the server would answer "prepared statement \"a1\" does not exist". pgtenant answers such a Query
//! itself, as PostgreSQL would, and forgets the client's statement: the server-side statement stays for the
//! tenant's other clients that share it.

use crate::sql::lexer::{tokens, TokenKind};

/// The statement name of a Query text that is exactly one `DEALLOCATE [PREPARE] name` (an optional `;`,
/// whitespace and comments around it), as PostgreSQL reads the name: unquoted folded to lower case,
/// quoted taken as written. `None` for anything else, `DEALLOCATE ALL` included.
pub fn deallocated_name(sql: &[u8]) -> Option<String> {
    let mut words =
        tokens(sql).filter(|t| !matches!(t.kind, TokenKind::Whitespace | TokenKind::Comment));
    let is_word = |t: &crate::sql::lexer::Token, w: &str| {
        t.kind == TokenKind::Ident && t.text(sql).eq_ignore_ascii_case(w.as_bytes())
    };
    let first = words.next()?;
    if !is_word(&first, "deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if is_word(&name, "prepare") {
        name = words.next()?;
    }
    let text = std::str::from_utf8(name.text(sql)).ok()?;
    let name = match name.kind {
        TokenKind::Ident if is_word(&name, "all") => return None,
        TokenKind::Ident => text.to_ascii_lowercase(),
        TokenKind::QuotedIdent
            if text.starts_with('"') && text.len() >= 2 && text.ends_with('"') =>
        {
            text[1..text.len() - 1].replace("\"\"", "\"")
        }
        _ => return None,
    };
    match words.next() {
        None => Some(name),
        Some(t) if t.kind == TokenKind::Other && t.text(sql) == b";" && words.next().is_none() => {
            Some(name)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::deallocated_name;

    #[test]
    fn one_deallocate_of_a_name_is_recognized() {
        let cases: &[(&str, Option<&str>)] = &[
            ("DEALLOCATE a1", Some("a1")),
            ("deallocate prepare A1;", Some("a1")),
            ("  DEALLOCATE \"My \"\"S\"\"\" ; ", Some("My \"S\"")),
            ("/* c */ DEALLOCATE s_1 -- done", Some("s_1")),
            ("DEALLOCATE ALL", None),
            ("DEALLOCATE PREPARE ALL", None),
            ("DEALLOCATE a1; SELECT 1", None),
            ("DEALLOCATE a1 a2", None),
            ("DEALLOCATE", None),
            ("SELECT 'DEALLOCATE a1'", None),
            ("DEALLOCATE 'a1'", None),
        ];
        for (sql, want) in cases {
            assert_eq!(
                deallocated_name(sql.as_bytes()).as_deref(),
                *want,
                "for {sql}"
            );
        }
    }
}
