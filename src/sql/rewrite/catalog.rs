//! The virtual schema in the places where ORMs name a schema inside a string literal: catalog lookups and
//! relation names passed as text. Only the forms captured from the real tools (tests/clients/*/CAPTURED.md):
//!
//! - a schema-name column of the catalogs compared with the name:
//!   `n.nspname LIKE 'public'` (pgjdbc's `DatabaseMetaData.getTables`/`getColumns`, which Hibernate's
//!   `hbm2ddl validate` calls), `n.nspname = 'public'` (Active Record's `table_exists?("public.x")`),
//!   `"table_schema" = 'public'` (information_schema), with `=`, `<>`, `!=`, `[NOT] LIKE`, `[NOT] ILIKE`,
//!   `[NOT] IN ('public', …)`;
//! - a relation name given as text: the first argument of `nextval`, `currval`, `setval`, `to_regclass` and
//!   `pg_get_serial_sequence` (`nextval ('public.gadget_ids')` is how Hibernate reads a sequence), and a
//!   literal cast to `regclass` (`'"public"."books"'::regclass`, Active Record's column lookup of a
//!   qualified table name): its qualifier.
//!
//! A string anywhere else (`SELECT 'public'`, `WHERE note = 'public'`) is data and stays as written.

use super::{plain_string, plain_string_value, VirtualSchema};
use crate::sql::lexer::{is_identifier, tokens, Token, TokenKind};

/// Catalog columns that hold a schema name: pg_namespace, the pg_* views and information_schema.
const SCHEMA_NAME_COLUMNS: &[&str] = &[
    "nspname",
    "schemaname",
    "table_schema",
    "schema_name",
    "sequence_schema",
    "constraint_schema",
    "unique_constraint_schema",
    "routine_schema",
    "specific_schema",
    "trigger_schema",
    "event_object_schema",
    "udt_schema",
    "view_schema",
];

/// Functions whose first argument is a relation name given as text.
const RELATION_NAME_FUNCTIONS: &[&str] = &[
    "nextval",
    "currval",
    "setval",
    "to_regclass",
    "pg_get_serial_sequence",
];

/// Where the tokens stand in `<schema column> <operator> 'name'` or `<schema column> IN ('name', …)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(super) enum SchemaComparison {
    #[default]
    None,
    Column,
    Operator,
    In,
    InList,
}

impl SchemaComparison {
    /// Advances over the significant token `t`; returns the replacement for `t` when it is the virtual name
    /// compared with a schema column.
    pub(super) fn step(&mut self, sql: &[u8], t: &Token, vs: &VirtualSchema) -> Option<String> {
        let is_word = |w: &str| is_identifier(sql, t, w);
        let is_operator_char =
            t.kind == TokenKind::Other && matches!(t.text(sql), [b'='] | [b'<'] | [b'>'] | [b'!']);
        let (next, replace) = match *self {
            SchemaComparison::Column | SchemaComparison::Operator if is_operator_char => {
                (SchemaComparison::Operator, false)
            }
            SchemaComparison::Column if is_word("not") => (SchemaComparison::Column, false),
            SchemaComparison::Column if is_word("like") || is_word("ilike") => {
                (SchemaComparison::Operator, false)
            }
            SchemaComparison::Column if is_word("in") => (SchemaComparison::In, false),
            SchemaComparison::Operator if t.kind == TokenKind::String => {
                (SchemaComparison::None, true)
            }
            SchemaComparison::In if t.kind == TokenKind::Other && t.text(sql) == b"(" => {
                (SchemaComparison::InList, false)
            }
            SchemaComparison::InList if t.kind == TokenKind::String => {
                (SchemaComparison::InList, true)
            }
            SchemaComparison::InList if t.kind == TokenKind::Other && t.text(sql) == b"," => {
                (SchemaComparison::InList, false)
            }
            _ if is_schema_name_column(sql, t) => (SchemaComparison::Column, false),
            _ => (SchemaComparison::None, false),
        };
        *self = next;
        if !replace {
            return None;
        }
        let value = plain_string_value(t.text(sql))?;
        (value == vs.virtual_name).then(|| plain_string(&vs.real_name))
    }
}

fn is_schema_name_column(sql: &[u8], t: &Token) -> bool {
    if !matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent) {
        return false;
    }
    // Every such column ends in "name" or "schema": most identifiers are out after one comparison.
    let name = t.text(sql);
    let name = match t.kind {
        TokenKind::QuotedIdent if name.len() >= 2 => &name[1..name.len() - 1],
        _ => name,
    };
    let ends_with = |suffix: &[u8]| {
        name.len() >= suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    (ends_with(b"name") || ends_with(b"schema"))
        && SCHEMA_NAME_COLUMNS
            .iter()
            .any(|column| is_identifier(sql, t, column))
}

/// Whether `t` names one of [`RELATION_NAME_FUNCTIONS`] (their lengths first: one comparison for most).
fn is_relation_name_function(sql: &[u8], t: &Token) -> bool {
    t.kind == TokenKind::Ident
        && matches!(t.end - t.start, 6 | 7 | 11 | 22)
        && RELATION_NAME_FUNCTIONS
            .iter()
            .any(|f| is_identifier(sql, t, f))
}

/// Where the tokens stand in `f('name'` (a relation-name function) or `'name'::regclass`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(super) enum RelationName {
    #[default]
    None,
    Function,
    Open,
    /// A string literal, waiting for `::regclass`.
    Literal(Token),
    Colon(Token),
    Cast(Token),
}

impl RelationName {
    /// Advances over the significant token `t`; returns a string-literal token and its replacement when
    /// that literal is a relation name qualified with the virtual schema.
    pub(super) fn step(
        &mut self,
        sql: &[u8],
        t: &Token,
        vs: &VirtualSchema,
    ) -> Option<(Token, String)> {
        let is_char = |ch: u8| t.kind == TokenKind::Other && t.text(sql) == [ch];
        let mut found = None;
        *self = match *self {
            RelationName::Function if is_char(b'(') => RelationName::Open,
            RelationName::Open if t.kind == TokenKind::String => {
                found = Some(*t);
                RelationName::None
            }
            RelationName::Literal(s) if is_char(b':') => RelationName::Colon(s),
            RelationName::Colon(s) if is_char(b':') => RelationName::Cast(s),
            RelationName::Cast(s) if is_identifier(sql, t, "regclass") => {
                found = Some(s);
                RelationName::None
            }
            _ if t.kind == TokenKind::String => RelationName::Literal(*t),
            _ if is_relation_name_function(sql, t) => RelationName::Function,
            _ => RelationName::None,
        };
        let literal = found?;
        let name = plain_string_value(literal.text(sql))?;
        let rewritten = qualified_name(&name, vs)?;
        Some((literal, plain_string(&rewritten)))
    }
}

/// `name` (a relation name as `regclass` input reads it: `public.x`, `"public"."X"`) with a qualifier naming
/// the virtual schema replaced by the real schema, or `None` when it has no such qualifier.
fn qualified_name(name: &str, vs: &VirtualSchema) -> Option<String> {
    let text = name.as_bytes();
    let mut significant = tokens(text).filter(|t| t.kind != TokenKind::Whitespace);
    let first = significant.next()?;
    let dot = significant.next()?;
    if dot.kind != TokenKind::Dot || !is_identifier(text, &first, &vs.virtual_name) {
        return None;
    }
    let mut out = String::with_capacity(name.len() + vs.real_name.len());
    out.push_str(&name[..first.start]);
    out.push_str(&vs.quoted_real());
    out.push_str(&name[first.end..]);
    Some(out)
}
