//! What `pg_prepared_statements` shows a client in transaction pooling.
//!
//! A server connection holds the statements pgtenant prepared for every client of the tenant that used it
//! (`pgt_<hash>` names). A client reading `pg_prepared_statements` must see its own statements under its own
//! names, never another client's. pgtenant rewrites the name of that view in the client's Query and Parse
//! text (found with the [`crate::sql`] lexer, so a string, a comment or a quoted other name is never touched)
//! into a subquery that keeps only the rows of this client's statements, renamed to the client's names, plus
//! statements made with SQL `PREPARE` in the current transaction. A client's statement not yet prepared on the
//! connection it holds is not listed (PostgreSQL prepares it there at its next use).

use super::statements::ClientStatements;
use crate::sql::{self, TokenKind};
use bytes::Bytes;

const VIEW: &str = "pg_prepared_statements";

/// Words after the view's name that are not an alias the client gave it.
const NOT_AN_ALIAS: &[&str] = &[
    "where",
    "group",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "join",
    "inner",
    "left",
    "right",
    "full",
    "cross",
    "natural",
    "on",
    "using",
    "union",
    "except",
    "intersect",
    "window",
    "having",
    "returning",
    "tablesample",
];

/// An E'' literal, right whatever `standard_conforming_strings` is.
fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The subquery standing in for the view.
fn replacement(statements: &ClientStatements, add_alias: bool) -> String {
    let mut server_names = Vec::new();
    let mut client_names = Vec::new();
    for (client_name, statement) in statements.iter() {
        server_names.push(literal(&statement.server_name));
        client_names.push(literal(client_name));
    }
    let mut out = format!(
        "(SELECT v.name, s.statement, s.prepare_time, s.parameter_types, s.from_sql, s.generic_plans, \
         s.custom_plans FROM pg_catalog.pg_prepared_statements s JOIN ROWS FROM (\
         pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]), \
         pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[])) AS v(server_name, name) \
         ON s.name = v.server_name UNION ALL SELECT * FROM pg_catalog.pg_prepared_statements \
         WHERE from_sql)",
        server_names.join(", "),
        client_names.join(", "),
    );
    if add_alias {
        out.push_str(" AS pg_prepared_statements");
    }
    out
}

/// `sql` with every reference to the relation `pg_prepared_statements` (bare or `pg_catalog.`-qualified)
/// replaced by the client's own view of it; `None` when there is none (the common case costs one scan).
pub fn rewrite(sql: &[u8], statements: &ClientStatements) -> Option<Vec<u8>> {
    // "pg" + this: the first byte has no case, so the check is one byte search.
    if !sql::contains_ignore_ascii_case(sql, b"_prepared_statements") {
        return None;
    }
    let significant: Vec<sql::Token> = sql::tokens(sql)
        .filter(|t| !matches!(t.kind, TokenKind::Whitespace | TokenKind::Comment))
        .collect();
    let mut out = Vec::with_capacity(sql.len() + 512);
    let mut copied = 0;
    for (i, token) in significant.iter().enumerate() {
        if !sql::is_identifier(sql, token, VIEW) {
            continue;
        }
        let next = significant.get(i + 1);
        if next.is_some_and(|n| n.kind == TokenKind::Dot) {
            // `pg_prepared_statements.name`: a column qualifier, not the relation.
            continue;
        }
        let qualified = i >= 2
            && significant[i - 1].kind == TokenKind::Dot
            && sql::is_identifier(sql, &significant[i - 2], "pg_catalog");
        if i >= 1 && significant[i - 1].kind == TokenKind::Dot && !qualified {
            // Some other schema's relation of that name.
            continue;
        }
        let mut start = if qualified {
            significant[i - 2].start
        } else {
            token.start
        };
        // `TABLE pg_prepared_statements` takes a relation name, not a subquery.
        let name_index = if qualified { i - 2 } else { i };
        let table_command = name_index >= 1
            && sql::is_identifier(sql, &significant[name_index - 1], "table")
            && (name_index == 1 || matches!(significant[name_index - 2].kind, TokenKind::Other));
        if table_command {
            start = significant[name_index - 1].start;
            out.extend_from_slice(&sql[copied..start]);
            out.extend_from_slice(b"SELECT * FROM ");
            out.extend_from_slice(replacement(statements, true).as_bytes());
            copied = token.end;
            continue;
        }
        let has_alias = next.is_some_and(|n| match n.kind {
            TokenKind::Ident => !NOT_AN_ALIAS
                .iter()
                .any(|w| n.text(sql).eq_ignore_ascii_case(w.as_bytes())),
            TokenKind::QuotedIdent => true,
            _ => false,
        });
        out.extend_from_slice(&sql[copied..start]);
        out.extend_from_slice(replacement(statements, !has_alias).as_bytes());
        copied = token.end;
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&sql[copied..]);
    Some(out)
}

/// The Query or Parse `frame` (whole) with its text rewritten, if it names the view.
pub fn rewrite_frame(msg_tag: u8, frame: &[u8], statements: &ClientStatements) -> Option<Bytes> {
    sql::message::rewrite(msg_tag, frame, |text| rewrite(text, statements))
}

#[cfg(test)]
mod tests {
    use super::super::statements::Statement;
    use super::*;

    fn own() -> ClientStatements {
        let mut s = ClientStatements::default();
        s.insert(
            "mine".into(),
            Statement {
                server_name: "pgt_abc".into(),
                parse: Bytes::new(),
            },
        );
        s
    }

    fn rewritten(sql: &str) -> Option<String> {
        rewrite(sql.as_bytes(), &own()).map(|b| String::from_utf8(b).expect("utf8"))
    }

    #[test]
    fn the_view_is_replaced_where_it_is_a_relation() {
        let r = rewritten("SELECT name FROM pg_prepared_statements").expect("rewritten");
        assert!(r.starts_with("SELECT name FROM (SELECT v.name"), "{r}");
        assert!(r.ends_with(") AS pg_prepared_statements"), "{r}");
        assert!(
            r.contains("ARRAY[E'pgt_abc']") && r.contains("ARRAY[E'mine']"),
            "{r}"
        );
        let r = rewritten("select * from PG_CATALOG.\"pg_prepared_statements\" p where true")
            .expect("rewritten");
        assert!(r.starts_with("select * from (SELECT"), "{r}");
        assert!(r.ends_with("WHERE from_sql) p where true"), "{r}");
        let r = rewritten("SELECT count(*) FROM pg_prepared_statements WHERE name = 'x'")
            .expect("rewritten");
        assert!(
            r.ends_with("AS pg_prepared_statements WHERE name = 'x'"),
            "{r}"
        );
    }

    #[test]
    fn strings_comments_columns_and_other_schemas_are_left_alone() {
        for sql in [
            "SELECT 'pg_prepared_statements'",
            "SELECT 1 -- pg_prepared_statements",
            "SELECT $$pg_prepared_statements$$",
            "SELECT \"PG_PREPARED_STATEMENTS\" FROM t",
            "SELECT other.pg_prepared_statements FROM other",
            "SELECT * FROM myschema.pg_prepared_statements",
            "SELECT pg_prepared_statements.name FROM t",
            "SELECT 1",
        ] {
            assert_eq!(rewritten(sql), None, "{sql}");
        }
    }

    #[test]
    fn names_are_quoted_safely() {
        let mut s = ClientStatements::default();
        s.insert(
            "it's \\ odd".into(),
            Statement {
                server_name: "pgt_x".into(),
                parse: Bytes::new(),
            },
        );
        let r = String::from_utf8(rewrite(b"TABLE pg_prepared_statements", &s).expect("rewritten"))
            .expect("utf8");
        assert!(r.contains("E'it''s \\\\ odd'"), "{r}");
        assert!(r.starts_with("SELECT * FROM (SELECT"), "{r}");
        let empty = rewrite(
            b"TABLE pg_prepared_statements",
            &ClientStatements::default(),
        )
        .expect("rewritten");
        assert!(String::from_utf8_lossy(&empty).contains("ARRAY[]::pg_catalog.text[]"));
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use crate::protocol::tag;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn query_and_parse_frames_keep_their_other_fields() {
        let statements = ClientStatements::default();
        let mut q = BytesMut::new();
        q.put_u8(b'Q');
        let sql = b"SELECT name FROM pg_prepared_statements";
        q.put_i32((4 + sql.len() + 1) as i32);
        q.extend_from_slice(sql);
        q.put_u8(0);
        let out = rewrite_frame(tag::QUERY, &q, &statements).expect("rewritten");
        assert_eq!(out[0], b'Q');
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
        assert_eq!(out.last(), Some(&0));

        let mut p = BytesMut::new();
        p.put_u8(b'P');
        let body: &[u8] = b"s1\0TABLE pg_prepared_statements\0\0\x01\0\0\0\x17";
        p.put_i32((4 + body.len()) as i32);
        p.extend_from_slice(body);
        let out = rewrite_frame(tag::PARSE, &p, &statements).expect("rewritten");
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
        assert!(out[5..].starts_with(b"s1\0SELECT * FROM (SELECT"));
        assert!(out.ends_with(b"\0\0\x01\0\0\0\x17"));
        assert_eq!(
            rewrite_frame(tag::QUERY, b"Q\0\0\0\x0dSELECT 1\0", &statements),
            None
        );
    }
}
