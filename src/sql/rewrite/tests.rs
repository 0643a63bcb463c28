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

#[test]
fn catalog_lookups_of_the_virtual_schema_are_rewritten_as_captured_from_the_tools() {
    let cases: &[(&str, &str)] = &[
        // pgjdbc DatabaseMetaData.getTables / getColumns (Hibernate hbm2ddl validate)
        (
            "WHERE c.relnamespace = n.oid AND n.nspname LIKE 'public' AND c.relname LIKE 'gadgets'",
            "WHERE c.relnamespace = n.oid AND n.nspname LIKE 'org_abc' AND c.relname LIKE 'gadgets'",
        ),
        // Active Record table_exists?("public.authors")
        (
            "WHERE n.nspname = 'public' AND c.relname = 'authors'",
            "WHERE n.nspname = 'org_abc' AND c.relname = 'authors'",
        ),
        (
            "WHERE \"table_schema\" = 'public' AND \"table_name\" = 'x'",
            "WHERE \"table_schema\" = 'org_abc' AND \"table_name\" = 'x'",
        ),
        (
            "WHERE schemaname <> 'public' AND nspname NOT ILIKE 'public'",
            "WHERE schemaname <> 'org_abc' AND nspname NOT ILIKE 'org_abc'",
        ),
        (
            "WHERE nspname != 'public'",
            "WHERE nspname != 'org_abc'",
        ),
        (
            "WHERE table_schema IN ('pg_catalog', 'public') AND x = 1",
            "WHERE table_schema IN ('pg_catalog', 'org_abc') AND x = 1",
        ),
        // Hibernate's sequence and identity reads
        (
            "select nextval ('public.gadget_ids')",
            "select nextval ('\"org_abc\".gadget_ids')",
        ),
        (
            "SELECT currval('\"public\".\"T_id_seq\"'), setval('PUBLIC.s', 5), pg_catalog.to_regclass('public.t')",
            "SELECT currval('\"org_abc\".\"T_id_seq\"'), setval('\"org_abc\".s', 5), pg_catalog.to_regclass('\"org_abc\".t')",
        ),
        (
            "SELECT pg_get_serial_sequence('public.books', 'id')",
            "SELECT pg_get_serial_sequence('\"org_abc\".books', 'id')",
        ),
        // Active Record's column lookup of a qualified table name
        (
            "WHERE a.attrelid = '\"public\".\"books\"'::regclass AND a.attnum > 0",
            "WHERE a.attrelid = '\"org_abc\".\"books\"'::regclass AND a.attnum > 0",
        ),
        (
            "SELECT 'public.books' :: regclass",
            "SELECT '\"org_abc\".books' :: regclass",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(rewritten(sql), *want, "for {sql}");
    }
}

#[test]
fn strings_that_are_data_are_left_alone() {
    let unchanged = [
        "SELECT 'public'",
        "SELECT * FROM notes WHERE visibility = 'public'",
        "SELECT * FROM notes WHERE nspname_note = 'public'",
        "WHERE n.nspname = ANY (current_schemas(false)) AND c.relname = 'public'",
        "WHERE n.nspname = 'publicity'",
        "WHERE n.nspname = 'PUBLIC'",
        "SELECT nextval('orders_id_seq'), nextval('other.public')",
        "SELECT 'public.books'::text, 'public.t'::regtype",
        "SELECT nspname, 'public' FROM pg_namespace",
        "SELECT upper('public.x'), '\"public\".x'",
        "WHERE nspname = E'public'",
    ];
    for sql in unchanged {
        assert_eq!(rewritten(sql), sql, "for {sql}");
    }
}
