//! ORMs that read the catalog, unchanged: a Hibernate app (`hibernate.default_schema=public`,
//! `hbm2ddl.auto=validate`, tests/clients/hibernate) and a Rails app (Active Record, `schema_search_path:
//! public`, migrations, schema dump; tests/clients/rails) run through pgtenant with `tenancy.virtual_schema
//! = "public"` for two tenants at once, in session and in transaction pooling. What they send was captured
//! from the tools themselves (tests/clients/*/CAPTURED.md): Hibernate validates through pgjdbc's
//! `DatabaseMetaData` (`n.nspname LIKE 'public'`) and reads sequences with `nextval ('public.seq')`; Active
//! Record sets `search_path TO public`, looks tables up in `current_schemas(false)` and, for a qualified
//! name, with `n.nspname = 'public'`. Each app must print exactly what it prints directly against
//! PostgreSQL with its tables in `public`, and its rows must land in the tenant's own schema.
//!
//! The apps come from Debian (`libhibernate3-java` with `libpostgresql-jdbc-java` and a JDK; `ruby-activerecord`
//! and `ruby-pg`): `.ci/run` installs them. Under CI (`CI=true`) a missing one fails the test; elsewhere the
//! test is skipped with the reason printed.

mod common;

use common::drivers::require;
use common::*;
use pgtenant::config::PoolMode;
use std::time::Duration;

/// What tests/clients/hibernate/App.java prints directly against PostgreSQL (schema.sql run in `public`).
const HIBERNATE_EXPECTED: &str = "validate: ok
identity insert: id assigned
sequence insert: id assigned
hql: [sprocket]
native: 1
done";

/// What tests/clients/rails/app.rb prints directly against PostgreSQL on an empty database.
const RAILS_EXPECTED: &str = "schema_search_path: public
pending before: 2
migrate: 1,2
pending after: 0
table_exists: true,true,true,true
tables: ar_internal_metadata,authors,books,schema_migrations
columns: id:bigint,author_id:bigint,title:character varying,price:numeric(8,2),created_at:timestamp(6) without time zone,updated_at:timestamp(6) without time zone
primary_key: id
indexes: index_authors_on_name
foreign_keys: authors.id
schema dump: authors,books,books
create: 2
query: The Dispossessed
reset_column_information: 6
done";

const HIBERNATE_JARS: &[&str] = &[
    "hibernate3.jar",
    "antlr.jar",
    "commons-collections3.jar",
    "dom4j.jar",
    "geronimo-jpa_2.0_spec.jar",
    "geronimo-jta-1.2-spec.jar",
    "hibernate-commons-annotations.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "cglib.jar",
    "postgresql.jar",
];

fn hibernate_classpath() -> String {
    HIBERNATE_JARS
        .iter()
        .map(|jar| format!("/usr/share/java/{jar}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn require_hibernate() -> bool {
    let probe = format!(
        "for j in {}; do test -f \"$j\" || {{ echo \"missing $j\" >&2; exit 1; }}; done; javac -version",
        hibernate_classpath().replace(':', " ")
    );
    require(
        "sh",
        &["-c", &probe],
        "apt-get install libhibernate3-java libpostgresql-jdbc-java default-jdk-headless",
    )
}

fn require_rails() -> bool {
    require(
        "ruby",
        &["-e", "require 'active_record'; require 'pg'"],
        "apt-get install ruby ruby-activerecord ruby-pg",
    )
}

/// Runs an app; returns its stdout, or panics with what it printed.
async fn run_app(run: &str, program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(240),
        run_program(program, args, &[], None),
    )
    .await
    .unwrap_or_else(|_| panic!("{run}: the app did not finish within 240 s"));
    assert!(
        ok,
        "{run}: the app failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    stdout
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

async fn proxy_for(mode: PoolMode) -> TestProxy {
    TestProxy::start_with(|c| {
        c.tenancy.virtual_schema = Some("public".into());
        c.pool.mode = mode;
        if mode == PoolMode::Transaction {
            c.pool.size_per_tenant = 2;
        }
    })
    .await
}

/// Rows of `table` in the tenant's schema, counted by the superuser behind pgtenant's back.
async fn rows_in_tenant_schema(tenant: &TestTenant, table: &str) -> i64 {
    superuser()
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.{table}",
                tenant.onboarded.schema.quoted()
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{}.{table}: {e:?}", tenant.onboarded.schema.as_str()))
        .get(0)
}

/// Nothing of the apps' tables was created in PostgreSQL's own `public`.
async fn assert_public_untouched(tables: &[&str]) {
    let admin = superuser().await;
    for table in tables {
        let found: Option<String> = admin
            .query_one(&format!("SELECT to_regclass('public.{table}')::text"), &[])
            .await
            .expect("to_regclass")
            .get(0);
        assert_eq!(
            found, None,
            "public.{table} exists: the app wrote to public"
        );
    }
}

async fn hibernate_through_pgtenant(mode: PoolMode) {
    if !require_hibernate() {
        return;
    }
    let name = mode_name(mode);
    let a = onboard(&format!("hibernate-{name}-a")).await;
    let b = onboard(&format!("hibernate-{name}-b")).await;
    let proxy = proxy_for(mode).await;
    let ddl = std::fs::read_to_string(repo_path("tests/clients/hibernate/schema.sql"))
        .expect("schema.sql");
    for tenant in [&a, &b] {
        proxy
            .connect(tenant)
            .await
            .batch_execute(&ddl)
            .await
            .unwrap_or_else(|e| panic!("schema.sql as {}: {e:?}", tenant.email));
    }
    let classpath = hibernate_classpath();
    let script = repo_path("tests/clients/hibernate/App.java")
        .display()
        .to_string();
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/{}?sslmode=disable",
        proxy.addr.port(),
        proxy.config.upstream.database
    );
    let (token_a, token_b) = (a.token(), b.token());
    let (run_a, run_b) = (
        format!("Hibernate, {name} pooling, tenant A"),
        format!("Hibernate, {name} pooling, tenant B"),
    );
    let args_a = ["-cp", &classpath, &script, &url, &a.email, &token_a];
    let args_b = ["-cp", &classpath, &script, &url, &b.email, &token_b];
    let (out_a, out_b) = tokio::join!(
        run_app(&run_a, "java", &args_a),
        run_app(&run_b, "java", &args_b),
    );
    for (run, out, tenant) in [(&run_a, out_a, &a), (&run_b, out_b, &b)] {
        assert_eq!(
            out.trim(),
            HIBERNATE_EXPECTED,
            "{run}: the app's output differs from what it prints directly against PostgreSQL"
        );
        assert_eq!(rows_in_tenant_schema(tenant, "widgets").await, 1, "{run}");
        assert_eq!(rows_in_tenant_schema(tenant, "gadgets").await, 1, "{run}");
    }
    assert_public_untouched(&["widgets", "gadgets", "gadget_ids"]).await;
    proxy.stop().await;
}

async fn rails_through_pgtenant(mode: PoolMode) {
    if !require_rails() {
        return;
    }
    let name = mode_name(mode);
    let a = onboard(&format!("rails-{name}-a")).await;
    let b = onboard(&format!("rails-{name}-b")).await;
    let proxy = proxy_for(mode).await;
    let script = repo_path("tests/clients/rails/app.rb")
        .display()
        .to_string();
    let url = |tenant: &TestTenant| {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            uri_component(&tenant.email),
            uri_component(&tenant.token()),
            proxy.addr.port(),
            proxy.config.upstream.database
        )
    };
    let (url_a, url_b) = (url(&a), url(&b));
    let (run_a, run_b) = (
        format!("Rails, {name} pooling, tenant A"),
        format!("Rails, {name} pooling, tenant B"),
    );
    let (out_a, out_b) = match mode {
        // Active Record's migration lock is a session advisory lock whose key comes from the database name:
        // database-wide, so two tenants' migrations take turns, as they would directly.
        PoolMode::Session => {
            let out_a = run_app(&run_a, "ruby", &[&script, &url_a]).await;
            (out_a, run_app(&run_b, "ruby", &[&script, &url_b]).await)
        }
        // Behind a transaction pooler a Rails app turns that lock off (database.yml `advisory_locks: false`,
        // as with PgBouncer): both tenants at once.
        PoolMode::Transaction => {
            let no_locks = "advisory_locks=false";
            let (args_a, args_b) = (
                [script.as_str(), &url_a, no_locks],
                [script.as_str(), &url_b, no_locks],
            );
            tokio::join!(
                run_app(&run_a, "ruby", &args_a),
                run_app(&run_b, "ruby", &args_b),
            )
        }
    };
    for (run, out, tenant) in [(&run_a, out_a, &a), (&run_b, out_b, &b)] {
        assert_eq!(
            out.trim(),
            RAILS_EXPECTED,
            "{run}: the app's output differs from what it prints directly against PostgreSQL"
        );
        assert_eq!(rows_in_tenant_schema(tenant, "books").await, 2, "{run}");
        assert_eq!(
            rows_in_tenant_schema(tenant, "schema_migrations").await,
            2,
            "{run}"
        );
    }
    assert_public_untouched(&[
        "authors",
        "books",
        "schema_migrations",
        "ar_internal_metadata",
    ])
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_validates_and_writes_in_session_pooling() {
    hibernate_through_pgtenant(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_validates_and_writes_in_transaction_pooling() {
    hibernate_through_pgtenant(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_migrates_dumps_and_writes_in_session_pooling() {
    rails_through_pgtenant(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_migrates_dumps_and_writes_in_transaction_pooling() {
    rails_through_pgtenant(PoolMode::Transaction).await;
}
