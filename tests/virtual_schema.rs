//! The virtual schema (`tenancy.virtual_schema = "public"`, the default): an application that writes
//! `public` works unchanged behind pgtenant, on its tenant's own schema, in both pooling modes. psycopg and
//! node-postgres clients that `SET search_path TO public` and qualify every table, for two tenants; the
//! schema-qualified forms through tokio-postgres; what is never rewritten (strings, other schemas); the
//! per-tenant and per-session switches.

mod common;

use common::drivers::{require_node_postgres, require_psycopg};
use common::*;
use pgtenant::config::PoolMode;
use serde_json::Value;

async fn proxy(mode: PoolMode) -> TestProxy {
    TestProxy::start_with(|c| {
        c.pool.mode = mode;
        c.pool.size_per_tenant = 4;
    })
    .await
}

async fn simple_values(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    client
        .simple_query(sql)
        .await
        .map(|messages| {
            messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap_or("NULL").to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .map_err(|e| sqlstate(&e))
}

/// Tables named in the real `public` schema (none of the tenants' may land there).
async fn tables_in_real_public(name: &str) -> i64 {
    superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = $1",
            &[&name],
        )
        .await
        .expect("pg_tables")
        .get(0)
}

async fn run_json(program: &str, args: &[&str]) -> Value {
    let (ok, out, err) = run_program(program, args, &[], None).await;
    assert!(ok, "{program} {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{program} output {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_node_postgres_writing_public_see_only_their_tenant() {
    let psycopg = require_psycopg();
    let node = require_node_postgres();
    if !psycopg && !node {
        return;
    }
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = proxy(mode).await;
        let a = onboard("vs-drivers-a").await;
        let b = onboard("vs-drivers-b").await;
        for (tenant, label) in [(&a, "alpha"), (&b, "beta")] {
            if psycopg {
                let script = repo_path("tests/clients/virtual_schema_psycopg.py");
                let got = run_json(
                    "python3",
                    &[
                        script.to_str().expect("path"),
                        &proxy.conninfo(tenant),
                        label,
                    ],
                )
                .await;
                assert_eq!(
                    got["qualified"],
                    serde_json::json!([label, format!("{label}-2")]),
                    "{mode:?} {got}"
                );
                assert_eq!(got["unqualified"], 2, "{mode:?} {got}");
                assert_eq!(got["after_update"], format!("{label}!"), "{mode:?} {got}");
                assert_eq!(got["after_set_config"], 2, "{mode:?} {got}");
                assert_eq!(
                    got["string"], "public.\"Item\"",
                    "strings are never rewritten"
                );
                assert_eq!(got["current_schema_is_real"], true);
                assert_eq!(got["after_copy"], 3, "{mode:?} {got}");
            }
            if node {
                let script = repo_path("tests/clients/node/virtual_schema.js");
                let got = run_json(
                    "node",
                    &[script.to_str().expect("path"), &proxy.url(tenant), label],
                )
                .await;
                assert_eq!(
                    got["qualified"],
                    serde_json::json!([label, format!("{label}-2")]),
                    "{mode:?} {got}"
                );
                assert_eq!(got["unqualified"], 2, "{mode:?} {got}");
                assert_eq!(got["after_update"], format!("{label}!"), "{mode:?} {got}");
                assert_eq!(got["string"], "public.\"Note\"");
                assert_eq!(got["current_schema_is_real"], true);
            }
        }
        // Each tenant's tables are in its own schema; PostgreSQL's public has none of them.
        for table in ["Item", "Note"] {
            assert_eq!(
                tables_in_real_public(table).await,
                0,
                "{table} in the real public"
            );
        }
        let admin = superuser().await;
        for tenant in [&a, &b] {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('Item', 'Note')",
                    &[&tenant.onboarded.schema.as_str()],
                )
                .await
                .expect("tables")
                .get(0);
            assert_eq!(n, i64::from(psycopg) + i64::from(node), "{mode:?}");
        }
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qualified_names_strings_and_other_schemas() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = proxy(mode).await;
        let a = onboard("vs-forms-a").await;
        let b = onboard("vs-forms-b").await;
        let client = proxy.connect(&a).await;
        let other = proxy.connect(&b).await;
        client
            .batch_execute(
                "CREATE TABLE public.vs_orders (id int PRIMARY KEY, note text); \
                 INSERT INTO PUBLIC.vs_orders VALUES (1, 'public.vs_orders'), (2, $$ public.x $$)",
            )
            .await
            .expect("create and insert through public");
        other
            .batch_execute("CREATE TABLE \"public\".\"vs_orders\" (id int PRIMARY KEY, note text)")
            .await
            .expect("the other tenant's own orders");
        // Extended protocol, prepared: the statement text is rewritten once, at Parse.
        let statement = client
            .prepare("SELECT note FROM \"public\".vs_orders WHERE id = $1")
            .await
            .expect("prepare");
        for _ in 0..3 {
            let row = client.query_one(&statement, &[&1i32]).await.expect("query");
            assert_eq!(
                row.get::<_, String>(0),
                "public.vs_orders",
                "{mode:?}: string left as written"
            );
        }
        assert_eq!(
            simple_values(&client, "SELECT count(*) FROM public.vs_orders").await,
            Ok(vec!["2".to_string()])
        );
        assert_eq!(
            simple_values(&other, "SELECT count(*) FROM public.vs_orders").await,
            Ok(vec!["0".to_string()]),
            "{mode:?}: the other tenant sees its own, empty table"
        );
        // A column named public, a comment, a string: untouched.
        assert_eq!(
            simple_values(
                &client,
                "SELECT 'public.vs_orders' /* public.x */ AS public"
            )
            .await,
            Ok(vec!["public.vs_orders".to_string()])
        );
        // current_schema() is the real schema.
        assert_eq!(
            simple_values(&client, "SELECT current_schema()").await,
            Ok(vec![a.onboarded.schema.as_str().to_string()])
        );
        // Another tenant's real schema is not rewritten: PostgreSQL refuses it.
        let b_schema = b.onboarded.schema.as_str();
        assert_eq!(
            simple_values(&client, &format!("SELECT * FROM {b_schema}.vs_orders")).await,
            Err("42501".to_string()),
            "{mode:?}"
        );
        // SET search_path TO public keeps the session on the tenant's schema.
        assert_eq!(
            simple_values(
                &client,
                "SET search_path TO public; SELECT count(*) FROM vs_orders"
            )
            .await,
            Ok(vec!["2".to_string()]),
            "{mode:?}"
        );
        assert_eq!(tables_in_real_public("vs_orders").await, 0);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_virtual_schema_can_be_turned_off_per_session_and_per_tenant() {
    let proxy = proxy(PoolMode::Session).await;
    let a = onboard("vs-off").await;
    let on = proxy.connect(&a).await;
    on.batch_execute("CREATE TABLE public.switch_t (v int)")
        .await
        .expect("on by default");
    // Per session: `-c pgtenant.virtual_schema=off` means PostgreSQL's public (no CREATE there: 42501).
    let mut config = proxy.client_config(&a.email, &a.token());
    config.options("-c pgtenant.virtual_schema=off");
    let off = connect(config).await;
    assert_eq!(
        simple_values(&off, "SELECT * FROM public.switch_t").await,
        Err("42P01".to_string())
    );
    assert_eq!(
        simple_values(&off, "CREATE TABLE public.switch_planted (v int)").await,
        Err("42501".to_string())
    );
    // A search_path given at startup names the virtual schema: the session is on the tenant's.
    let mut config = proxy.client_config(&a.email, &a.token());
    config.options("-c search_path=public");
    let startup = connect(config).await;
    assert_eq!(
        simple_values(&startup, "SELECT count(*) FROM switch_t").await,
        Ok(vec!["0".to_string()])
    );
    // Per tenant: organizations.virtual_schema = '' turns it off.
    superuser()
        .await
        .execute(
            "UPDATE pgtenant.organizations SET virtual_schema = '' WHERE id = $1",
            &[&a.onboarded.organization_id],
        )
        .await
        .expect("turn off for the tenant");
    let tenant_off = proxy.connect(&a).await;
    assert_eq!(
        simple_values(&tenant_off, "SELECT * FROM public.switch_t").await,
        Err("42P01".to_string())
    );
    proxy.stop().await;
}

/// A Query that arrives in several reads, and one larger than a read buffer, are rewritten like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_in_pieces_and_large_queries_are_rewritten() {
    use common::wire::{Msg, Raw};
    use tokio::io::AsyncWriteExt;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = proxy(mode).await;
        let tenant = onboard("vs-pieces").await;
        proxy
            .connect(&tenant)
            .await
            .batch_execute("CREATE TABLE public.vs_pieces (v text)")
            .await
            .expect("create");
        let mut raw = Raw::proxy(&proxy, &tenant, "pieces").await;
        let big = "x".repeat(100_000);
        let sql: &'static str = Box::leak(
            format!("INSERT INTO public.vs_pieces VALUES ('{big}'); SELECT count(*) FROM public.vs_pieces")
                .into_boxed_str(),
        );
        let frame = common::wire::encode(&[Msg::Query(sql)]);
        for piece in frame.chunks(7_000) {
            raw.stream.write_all(piece).await.expect("write piece");
            raw.stream.flush().await.expect("flush");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let lines = raw.read_ready(1).await;
        assert!(
            lines.iter().any(|l| l == "DataRow [\"1\"]"),
            "{mode:?}: {lines:?}"
        );
        assert_eq!(tables_in_real_public("vs_pieces").await, 0);
        proxy.stop().await;
    }
}
