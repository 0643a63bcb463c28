use super::*;
use crate::sql::lexer::{tokens, TokenKind};

fn vs() -> VirtualSchema {
    VirtualSchema::new("public", "org_abc")
}

fn rewritten(sql: &str) -> String {
    vs().rewrite(sql.as_bytes())
        .map(|b| String::from_utf8(b).expect("utf8"))
        .unwrap_or_else(|| sql.to_string())
}

#[test]
fn qualifiers_are_rewritten_and_nothing_else() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT * FROM public.orders",
            "SELECT * FROM \"org_abc\".orders",
        ),
        (
            "SELECT \"public\".\"User\".\"id\" FROM \"public\".\"User\"",
            "SELECT \"org_abc\".\"User\".\"id\" FROM \"org_abc\".\"User\"",
        ),
        (
            "INSERT INTO PUBLIC.t VALUES (1)",
            "INSERT INTO \"org_abc\".t VALUES (1)",
        ),
        ("SELECT public . f(1)", "SELECT \"org_abc\" . f(1)"),
        ("SELECT public.\"Order\"", "SELECT \"org_abc\".\"Order\""),
        ("COPY public.t FROM STDIN", "COPY \"org_abc\".t FROM STDIN"),
        ("SELECT 'public.x'", "SELECT 'public.x'"),
        (
            "SELECT E'public.x\\' public.y'",
            "SELECT E'public.x\\' public.y'",
        ),
        (
            "SELECT $$public.x$$, $f$ public.y $f$",
            "SELECT $$public.x$$, $f$ public.y $f$",
        ),
        ("SELECT 1 -- public.x", "SELECT 1 -- public.x"),
        ("SELECT /* public.x */ 1", "SELECT /* public.x */ 1"),
        ("SELECT public FROM t", "SELECT public FROM t"),
        ("SELECT t.public FROM t", "SELECT t.public FROM t"),
        ("SELECT \"Public\".x", "SELECT \"Public\".x"),
        ("SELECT U&\"public\".x", "SELECT U&\"public\".x"),
        (
            "SELECT publicity.x, my_public.y",
            "SELECT publicity.x, my_public.y",
        ),
        ("SELECT * FROM org_other.t", "SELECT * FROM org_other.t"),
        (
            "SELECT 1 FROM public.a; SELECT 'public.b'; SELECT * FROM public.c",
            "SELECT 1 FROM \"org_abc\".a; SELECT 'public.b'; SELECT * FROM \"org_abc\".c",
        ),
        ("CREATE SCHEMA public", "CREATE SCHEMA public"),
    ];
    for (sql, want) in cases {
        assert_eq!(rewritten(sql), *want, "{sql}");
    }
}

#[test]
fn search_path_settings_point_at_the_tenant_schema() {
    let cases: &[(&str, &str)] = &[
        (
            "SET search_path TO public",
            "SET search_path TO \"org_abc\"",
        ),
        (
            "set SEARCH_PATH = \"$user\", public",
            "set SEARCH_PATH = \"$user\", \"org_abc\"",
        ),
        (
            "SET LOCAL search_path TO 'public'",
            "SET LOCAL search_path TO 'org_abc'",
        ),
        (
            "SET SESSION search_path = \"public\", x",
            "SET SESSION search_path = \"org_abc\", x",
        ),
        ("SET search_path TO other", "SET search_path TO other"),
        (
            "SET statement_timeout = 5; SET search_path TO public",
            "SET statement_timeout = 5; SET search_path TO \"org_abc\"",
        ),
        (
            "SELECT set_config('search_path', 'public', false)",
            "SELECT set_config('search_path', '\"org_abc\"', false)",
        ),
        (
            "SELECT pg_catalog.set_config('search_path', '\"$user\", public', true)",
            "SELECT pg_catalog.set_config('search_path', '\"$user\", \"org_abc\"', true)",
        ),
        (
            "SELECT set_config('application_name', 'public', false)",
            "SELECT set_config('application_name', 'public', false)",
        ),
        ("UPDATE t SET public = 1", "UPDATE t SET public = 1"),
    ];
    for (sql, want) in cases {
        assert_eq!(rewritten(sql), *want, "{sql}");
    }
    assert_eq!(
        vs().rewrite_list("\"$user\", public").as_deref(),
        Some("\"$user\", \"org_abc\"")
    );
    assert_eq!(vs().rewrite_list("a, b"), None);
}

#[test]
fn nothing_to_rewrite_costs_no_copy() {
    assert!(vs().rewrite(b"SELECT 1").is_none());
    assert!(vs().rewrite(b"SELECT 'public'").is_none());
}

/// Random statements built from pieces: the rewritten text lexes into the same tokens as the original,
/// except that each rewritten token is the tenant schema's quoted name (or a literal naming it).
#[test]
fn the_token_stream_is_kept_but_for_the_rewritten_names() {
    let pieces = [
        "public",
        ".",
        "\"public\"",
        "x",
        "'public.y'",
        "$$ public.z $$",
        "-- public.c\n",
        "/* public */",
        " ",
        ",",
        ";",
        "SELECT",
        "FROM",
        "(",
        ")",
        "E'\\'public'",
        "\"Pub\"",
        "publicity",
        "=",
        "1",
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..3_000 {
        let mut sql = String::new();
        for _ in 0..(seed % 12 + 1) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            sql.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            sql.push(' ');
        }
        let Some(out) = vs().rewrite(sql.as_bytes()) else {
            continue;
        };
        let before: Vec<_> = tokens(sql.as_bytes())
            .filter(|t| t.kind != TokenKind::Whitespace)
            .map(|t| (t.kind, sql[t.start..t.end].to_string()))
            .collect();
        let out = String::from_utf8(out).expect("utf8");
        let after: Vec<_> = tokens(out.as_bytes())
            .filter(|t| t.kind != TokenKind::Whitespace)
            .map(|t| (t.kind, out[t.start..t.end].to_string()))
            .collect();
        assert_eq!(before.len(), after.len(), "{sql} -> {out}");
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert!(
                    a.1 == "\"org_abc\"" || a.1 == "'org_abc'",
                    "{sql} -> {out}: {b:?} became {a:?}"
                );
                assert!(b.1.to_ascii_lowercase().contains("public"), "{b:?}");
            }
        }
    }
}
