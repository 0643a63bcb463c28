//! An ORM unchanged: a Prisma 7 app (tests/clients/prisma: generated client + `@prisma/adapter-pg`, models in
//! Prisma's default schema `public`) runs through pgtenant with `tenancy.virtual_schema = "public"` for two
//! tenants at once, in session pooling and in transaction pooling. Prisma qualifies every name it generates
//! with `"public".` (tables, columns, its enum type); the app's raw queries name `"public"."User"`,
//! `public."Post"` and unqualified tables. Each tenant must get its own tables in its own schema, see only its
//! own rows, and the app's summary (counts, ids, nested writes, interactive and batch transactions, a rolled
//! back transaction, P2002/P2003 errors, raw queries) must be what the app prints directly against
//! PostgreSQL on fresh tables (tests/clients/prisma/CAPTURED.md tells what it sends).
//!
//! The tables are created beforehand with tests/clients/prisma/schema.sql (the DDL Prisma's migrations would
//! write; `prisma migrate` needs the schema engine, which is not installed), run through pgtenant as the
//! tenant, unqualified. `npm ci` in tests/clients/prisma installs the packages (`bash .ci/run` does it, and
//! generates the client); the test regenerates the client when it is missing or older than schema.prisma or
//! the installed @prisma/client. Under CI (`CI=true`) missing packages fail the test; elsewhere it is skipped
//! with the reason printed. With `PGTENANT_PRISMA_OUT=DIR` each run's stdout and stderr are written to DIR.

mod common;

use common::drivers::under_ci;
use common::*;
use pgtenant::config::PoolMode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

fn app_dir() -> PathBuf {
    repo_path("tests/clients/prisma")
}

/// Whether node and the app's packages can be loaded, and why not.
fn probe_packages() -> Result<(), String> {
    let out = std::process::Command::new("node")
        .args([
            "-e",
            "const [major, minor] = process.versions.node.split('.').map(Number); \
             if (major < 20 || (major === 20 && minor < 19) || (major === 22 && minor < 12) || major === 21 || major === 23) \
               throw new Error(`node ${process.versions.node} is not one Prisma 7 supports (^20.19, ^22.12 or >=24)`); \
             require('@prisma/client/package.json'); require('@prisma/adapter-pg'); require('pg'); \
             require('prisma/package.json')",
        ])
        .current_dir(app_dir())
        .output();
    match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| l.contains("Error"))
                .unwrap_or("")
                .trim()
                .to_string();
            Err(format!(
                "the Prisma app cannot run (it needs Node.js ^20.19, ^22.12 or >=24 and npm ci in tests/clients/prisma): {why}"
            ))
        }
        Err(e) => Err(format!(
            "node cannot be run ({e}); the Prisma app needs it (node 20.19+, npm ci in tests/clients/prisma)"
        )),
    }
}

fn read_json(path: PathBuf) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Whether generated/client was generated from the current schema.prisma by the installed @prisma/client.
fn client_is_fresh() -> bool {
    let dir = app_dir();
    let same_schema = match (
        std::fs::read(dir.join("schema.prisma")),
        std::fs::read(dir.join("generated/client/.generated-from.prisma")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let version = |p: &str| read_json(dir.join(p)).and_then(|v| v.get("version").cloned());
    same_schema
        && version("generated/client/package.json").is_some()
        && version("generated/client/package.json")
            == version("node_modules/@prisma/client/package.json")
}

/// Runs generate.sh once per test binary if the client is missing or stale.
fn ensure_client() -> Result<(), String> {
    static GENERATED: OnceLock<Result<(), String>> = OnceLock::new();
    GENERATED
        .get_or_init(|| {
            if client_is_fresh() {
                return Ok(());
            }
            let out = std::process::Command::new("bash")
                .arg(app_dir().join("generate.sh"))
                .output()
                .map_err(|e| format!("cannot run generate.sh: {e}"))?;
            if !out.status.success() || !client_is_fresh() {
                return Err(format!(
                    "tests/clients/prisma/generate.sh failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })
        .clone()
}

/// True if the app can run. Packages missing: fails under CI, skipped (with the reason) elsewhere. Packages
/// there but the client cannot be generated: fails.
fn require_app() -> bool {
    match probe_packages() {
        Ok(()) => {}
        Err(why) if under_ci() => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why} (this test fails instead under CI=true)");
            return false;
        }
    }
    if let Err(why) = ensure_client() {
        panic!("{why}");
    }
    true
}

/// The URL an application would be given: the user's email and token, pgtenant's address, the database.
fn proxy_url(proxy: &TestProxy, tenant: &TestTenant) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
        uri_component(&tenant.email),
        uri_component(&tenant.token()),
        proxy.addr.port(),
        proxy.config.upstream.database
    )
}

/// The app's tables, created through pgtenant as the tenant, exactly as schema.sql has them (unqualified).
async fn create_tables(proxy: &TestProxy, tenant: &TestTenant) {
    let ddl = std::fs::read_to_string(app_dir().join("schema.sql")).expect("schema.sql");
    proxy
        .connect(tenant)
        .await
        .batch_execute(&ddl)
        .await
        .unwrap_or_else(|e| panic!("schema.sql as {}: {e:?}", tenant.email));
}

/// Runs app.mjs; returns its summary (the last line of stdout), or panics with what it printed.
async fn run_app(url: &str, label: &str, run: &str) -> Value {
    let script = app_dir().join("app.mjs").display().to_string();
    let (ok, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(240),
        run_program("node", &[&script, url, label], &[], None),
    )
    .await
    .unwrap_or_else(|_| panic!("{run}: app.mjs did not finish within 240 s"));
    if let Ok(dir) = std::env::var("PGTENANT_PRISMA_OUT") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("PGTENANT_PRISMA_OUT");
        let file: String = run
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::fs::write(dir.join(format!("{file}.json")), &stdout).expect("write stdout");
        std::fs::write(dir.join(format!("{file}.err")), &stderr).expect("write stderr");
    }
    assert!(
        ok,
        "{run}: app.mjs failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    let last = stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("{run}: no JSON summary ({e})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
    })
}

/// What app.mjs prints for `label` on fresh tables (as it does directly against PostgreSQL): ids follow the
/// tables' own sequences, which a duplicate, a failed insert and a rolled-back transaction use up too.
fn expected_summary(label: &str) -> Value {
    let email = |who: &str| format!("{who}@{label}.example");
    let title = |what: &str| format!("{label}: {what}");
    json!({
        "label": label,
        "steps": 23,
        "users": 4,
        "posts": 5,
        "userIds": [1, 2, 3, 7],
        "postIds": [1, 3, 4, 5, 7],
        "emails": [email("alice"), email("bob"), email("carol"), email("dave")],
        "postTitles": [title("hello"), title("bob one"), title("bob two"), title("carol one"), title("carol two")],
        "usersByRole": { "MEMBER": 2, "ADMIN": 2 },
        "checks": {
            "nestedCreatePosts": 2,
            "createManyCount": 2,
            "createManyAndReturn": 3,
            "adminsWithPublished": [[email("alice"), 1]],
            "postsTaggedWithLabel": [[title("hello"), email("alice"), "ADMIN"]],
            "bobPostCount": 2,
            "errors": { "duplicate": "P2002 User_email_key", "foreignKey": "P2003 Post_authorId_fkey" },
            "interactive": { "postId": 7, "carolPosts": 2 },
            "rolledBack": true,
            "batch": { "published": 2, "dave": email("dave"), "postCount": 6 },
            "rawCount": 4,
            "rawQualified": [[email("alice"), 2], [email("bob"), 2], [email("carol"), 2], [email("dave"), 0]],
            "rawExecuted": 2,
            "rawUnsafe": [title("carol one"), title("carol two")],
        },
    })
}

/// Checks one tenant's summary and, behind pgtenant's back, its schema's tables.
async fn check_tenant(run: &str, tenant: &TestTenant, label: &str, mut summary: Value) {
    let schema = tenant.onboarded.schema.as_str();
    let role = tenant.onboarded.role.as_str();
    let object = summary.as_object_mut().expect("summary is an object");
    let seen_role = object.remove("role");
    let seen_schema = object.remove("schema");
    assert_eq!(
        seen_role,
        Some(Value::from(role)),
        "{run}: current_user is not the tenant's role"
    );
    // current_schema() as the server says it (the tenant's schema); a pgtenant that also shows the virtual
    // name there is fine.
    assert!(
        seen_schema == Some(Value::from(schema)) || seen_schema == Some(Value::from("public")),
        "{run}: current_schema() is {seen_schema:?}, neither {schema} nor public"
    );
    let want = expected_summary(label);
    assert_eq!(
        summary,
        want,
        "{run}: the app's summary differs from what it prints directly against PostgreSQL\n got: {summary}\nwant: {want}"
    );

    // The rows are in the tenant's own schema, and nowhere else.
    let admin = superuser().await;
    let quoted = tenant.onboarded.schema.quoted();
    let rows = admin
        .query(
            &format!(r#"SELECT "id", "email" FROM {quoted}."User" ORDER BY "id""#),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{run}: {schema}.\"User\": {e:?}"));
    let users: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want_users: Vec<(i32, String)> = want["userIds"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["emails"].as_array().unwrap())
        .map(|(id, e)| (id.as_i64().unwrap() as i32, e.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        users, want_users,
        "{run}: {schema}.\"User\" as the superuser sees it"
    );
    let posts: Vec<i32> = admin
        .query(
            &format!(r#"SELECT "id" FROM {quoted}."Post" ORDER BY "id""#),
            &[],
        )
        .await
        .expect("Post")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(posts, vec![1, 3, 4, 5, 7], "{run}: {schema}.\"Post\"");
}

async fn prisma_app_through_pgtenant(mode: PoolMode) {
    if !require_app() {
        return;
    }
    let name = match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    };
    let a = onboard(&format!("prisma-{name}-a")).await;
    let b = onboard(&format!("prisma-{name}-b")).await;
    let proxy = TestProxy::start_with(|c| {
        c.tenancy.virtual_schema = Some("public".into());
        c.pool.mode = mode;
        if mode == PoolMode::Transaction {
            // Prisma's node-postgres pool opens several connections: they share these two.
            c.pool.size_per_tenant = 2;
        }
    })
    .await;
    create_tables(&proxy, &a).await;
    create_tables(&proxy, &b).await;

    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (label_a, label_b) = (format!("a-{unique}"), format!("b-{unique}"));
    let (url_a, url_b) = (proxy_url(&proxy, &a), proxy_url(&proxy, &b));
    let (run_a, run_b) = (
        format!("{name} pooling, tenant A"),
        format!("{name} pooling, tenant B"),
    );
    // Both tenants at once.
    let (summary_a, summary_b) = tokio::join!(
        run_app(&url_a, &label_a, &run_a),
        run_app(&url_b, &label_b, &run_b)
    );
    check_tenant(&run_a, &a, &label_a, summary_a).await;
    check_tenant(&run_b, &b, &label_b, summary_b).await;

    // `public` itself got nothing: no tenant could create there, and pgtenant sent nothing there.
    let leaked: Option<String> = superuser()
        .await
        .query_one(
            r#"SELECT coalesce(to_regclass('public."User"')::text, to_regclass('public."Post"')::text,
                              to_regtype('public."Role"')::text)"#,
            &[],
        )
        .await
        .expect("public")
        .get(0);
    assert_eq!(
        leaked, None,
        "{name} pooling: the app's objects ended up in public"
    );

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_app_in_public_runs_unchanged_in_session_pooling() {
    prisma_app_through_pgtenant(PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_app_in_public_runs_unchanged_in_transaction_pooling() {
    prisma_app_through_pgtenant(PoolMode::Transaction).await;
}
