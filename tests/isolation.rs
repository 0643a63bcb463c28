//! Isolation between tenants, enforced by PostgreSQL through per-tenant roles: whatever tenant A types
//! through pgtenant, it sees nothing of tenant B nor of the shared schema. Also: state one client leaves on
//! a server connection is gone for the next client, and the per-tenant DDL switch.

mod common;

use common::*;

/// Two tenants with the same table names, each with one row only it should see.
async fn two_tenants() -> (TestTenant, TestTenant) {
    let a = onboard("iso-a").await;
    let b = onboard("iso-b").await;
    let admin = superuser().await;
    for (tenant, secret) in [(&a, "secret of A"), (&b, "secret of B")] {
        admin
            .batch_execute(&format!(
                "INSERT INTO {}.patients (full_name) VALUES ('{secret}')",
                tenant.onboarded.schema.quoted()
            ))
            .await
            .expect("seed");
    }
    (a, b)
}

/// Runs `sql` as tenant A; returns the error's SQLSTATE, or the rows as text if it succeeded.
async fn attempt(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()),
        Err(e) => Err(sqlstate(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_cannot_reach_tenant_b_or_the_shared_schema() {
    let (a, b) = two_tenants().await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&a).await;
    let b_schema = b.onboarded.schema.quoted();
    let b_role = b.onboarded.role.quoted();

    // Its own data is there.
    assert_eq!(
        attempt(&client, "SELECT full_name FROM patients").await,
        Ok(vec!["secret of A".to_string()])
    );

    let denied = [
        format!("SELECT * FROM {b_schema}.patients"),
        format!("INSERT INTO {b_schema}.patients (full_name) VALUES ('from A')"),
        format!("UPDATE {b_schema}.patients SET full_name = 'x'"),
        format!("DELETE FROM {b_schema}.patients"),
        format!("SET ROLE {b_role}"),
        format!("SET SESSION AUTHORIZATION {b_role}"),
        format!("SELECT set_config('role', '{}', false)", b.onboarded.role),
        format!("DO $$ BEGIN PERFORM * FROM {b_schema}.patients; END $$"),
        format!("DROP SCHEMA {b_schema} CASCADE"),
        format!("CREATE TABLE {b_schema}.planted (x int)"),
        format!("GRANT {b_role} TO CURRENT_USER"),
        "SELECT * FROM pgtenant.organizations".to_string(),
        "SELECT * FROM pgtenant.users".to_string(),
        "SELECT * FROM pgtenant.tenant_migrations".to_string(),
        "CREATE SCHEMA planted".to_string(),
        "CREATE ROLE planted".to_string(),
        "ALTER ROLE CURRENT_USER SUPERUSER".to_string(),
    ];
    for sql in &denied {
        let result = attempt(&client, sql).await;
        assert!(
            matches!(&result, Err(code) if code == "42501" || code == "3F000" || code == "42P01" || code == "22023"),
            "{sql} should be refused by PostgreSQL, got {result:?}"
        );
    }

    // PostgreSQL's public: with the virtual schema (on by default) `public` is A's own schema, so the table
    // lands there and never in the real public; with it off, PostgreSQL refuses CREATE in public.
    assert_eq!(
        attempt(&client, "CREATE TABLE public.planted (x int)").await,
        Ok(vec![])
    );
    let admin = superuser().await;
    let where_planted: Vec<String> = admin
        .query(
            "SELECT schemaname::text FROM pg_tables WHERE tablename = 'planted'",
            &[],
        )
        .await
        .expect("pg_tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(where_planted, vec![a.onboarded.schema.as_str().to_string()]);
    let mut raw_config = proxy.client_config(&a.email, &a.token());
    raw_config.options("-c pgtenant.virtual_schema=off");
    let raw = connect(raw_config).await;
    assert_eq!(
        attempt(&raw, "CREATE TABLE public.planted_raw (x int)").await,
        Err("42501".to_string()),
        "CREATE in PostgreSQL's public with the virtual schema off"
    );

    // search_path tricks resolve only into schemas A may use: B's table stays out of reach.
    assert_eq!(
        attempt(&client, &format!("SET search_path = {b_schema}")).await,
        Ok(vec![])
    );
    // A schema without USAGE is skipped in search_path: "relation does not exist".
    assert_eq!(
        attempt(&client, "SELECT * FROM patients").await,
        Err("42P01".to_string())
    );
    assert_eq!(attempt(&client, "RESET search_path").await, Ok(vec![]));
    // RESET ROLE is harmless: the session user is A's own role.
    assert_eq!(attempt(&client, "RESET ROLE").await, Ok(vec![]));
    assert_eq!(
        attempt(
            &client,
            "SELECT current_user = session_user, full_name FROM patients"
        )
        .await,
        Ok(vec!["t|secret of A".to_string()])
    );

    // B's rows are untouched.
    let admin = superuser().await;
    let rows = admin
        .query(&format!("SELECT full_name FROM {b_schema}.patients"), &[])
        .await
        .expect("read B");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "secret of B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_role_has_no_memberships_and_no_privileges_elsewhere() {
    let (a, b) = two_tenants().await;
    let admin = superuser().await;
    let role = a.onboarded.role.as_str();
    let row = admin
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolinherit,
                    (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid),
                    has_schema_privilege(r.rolname, $2, 'USAGE'),
                    has_schema_privilege(r.rolname, 'pgtenant', 'USAGE'),
                    has_schema_privilege(r.rolname, 'public', 'CREATE'),
                    has_database_privilege(r.rolname, current_database(), 'CREATE'),
                    has_schema_privilege(r.rolname, $3, 'USAGE')
             FROM pg_roles r WHERE r.rolname = $1",
            &[
                &role,
                &b.onboarded.schema.as_str(),
                &a.onboarded.schema.as_str(),
            ],
        )
        .await
        .expect("role facts");
    assert!(!row.get::<_, bool>(0), "not superuser");
    assert!(!row.get::<_, bool>(1), "no CREATEROLE");
    assert!(!row.get::<_, bool>(2), "no CREATEDB");
    assert!(!row.get::<_, bool>(3), "no BYPASSRLS");
    assert!(!row.get::<_, bool>(4), "NOINHERIT");
    assert_eq!(row.get::<_, i64>(5), 0, "member of no role");
    assert!(
        !row.get::<_, bool>(6),
        "no USAGE on another tenant's schema"
    );
    assert!(!row.get::<_, bool>(7), "no USAGE on the shared schema");
    assert!(!row.get::<_, bool>(8), "no CREATE on public");
    assert!(!row.get::<_, bool>(9), "no CREATE on the database");
    assert!(row.get::<_, bool>(10), "USAGE on its own schema");
    // Its password is stored only as a SCRAM verifier.
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("authid")
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$16:"), "{verifier}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_one_client_is_gone_for_the_next() {
    let tenant = onboard("reset").await;
    // One server connection: the second client is sure to get the first one's.
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;

    let first = proxy.connect(&tenant).await;
    let first_pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    first
        .batch_execute(
            "CREATE TEMP TABLE scratch (x int);
             PREPARE leftover AS SELECT 42;
             SET statement_timeout = '123s';
             SET search_path = pg_catalog;
             LISTEN leftover_channel;
             SELECT pg_advisory_lock(4242);
             DECLARE held CURSOR WITH HOLD FOR SELECT 1;",
        )
        .await
        .expect("leave state behind");
    drop(first);

    // The pool gets the connection back after the reset; wait for that.
    let second = connect_when_free(&proxy, &tenant).await;
    // Inspected with the simple protocol: tokio-postgres would prepare a statement of its own otherwise.
    let inspected = attempt(
        &second,
        "SELECT pg_backend_pid(),
                to_regclass('pg_temp.scratch') IS NULL,
                (SELECT count(*) FROM pg_prepared_statements),
                current_setting('statement_timeout'),
                current_setting('search_path'),
                (SELECT count(*) FROM pg_listening_channels()),
                (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                (SELECT count(*) FROM pg_cursors)",
    )
    .await
    .expect("inspect");
    let fields: Vec<&str> = inspected[0].split('|').collect();
    assert_eq!(
        fields[0],
        first_pid.to_string(),
        "same server connection reused"
    );
    assert_eq!(fields[1], "t", "temp table gone");
    assert_eq!(fields[2], "0", "prepared statements gone");
    assert_eq!(fields[3], "0", "SET undone");
    assert_eq!(
        fields[4],
        tenant.onboarded.schema.as_str(),
        "search_path back to the role's"
    );
    assert_eq!(fields[5], "0", "LISTEN undone");
    assert_eq!(fields[6], "0", "advisory lock released");
    assert_eq!(fields[7], "0", "WITH HOLD cursor closed");
}

/// Connects, retrying while the only server connection is still being reset and returned.
async fn connect_when_free(proxy: &TestProxy, tenant: &TestTenant) -> tokio_postgres::Client {
    for _ in 0..50 {
        match proxy.try_connect(&tenant.email, &tenant.token()).await {
            Ok(c) => return c,
            Err(e) if sqlstate(&e) == "53300" => continue,
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("the server connection never came back to the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_switch_refuses_create_table() {
    let locked = onboard_with("noddl", Some(false)).await;
    let open = onboard_with("ddl", Some(true)).await;
    let proxy = TestProxy::start().await;

    let client = proxy.connect(&locked).await;
    let err = client
        .batch_execute("CREATE TABLE mine (x int)")
        .await
        .expect_err("DDL refused");
    assert_eq!(sqlstate(&err), "42501");
    let err = client
        .batch_execute("ALTER TABLE patients ADD COLUMN sneaky text")
        .await
        .expect_err("ALTER refused");
    assert_eq!(sqlstate(&err), "42501");
    let err = client
        .batch_execute("DROP TABLE orders")
        .await
        .expect_err("DROP refused");
    assert_eq!(sqlstate(&err), "42501");
    // Regaining CREATE as the schema's owner does not help either.
    let _ = client
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA {} TO CURRENT_USER",
            locked.onboarded.schema.quoted()
        ))
        .await;
    assert_eq!(
        sqlstate(
            &client
                .batch_execute("CREATE TABLE mine (x int)")
                .await
                .expect_err("still refused")
        ),
        "42501"
    );
    // Data changes are still allowed.
    client
        .batch_execute("INSERT INTO patients (full_name) VALUES ('ok')")
        .await
        .expect("DML allowed");

    let client = proxy.connect(&open).await;
    client
        .batch_execute("CREATE TABLE mine (x int); DROP TABLE mine;")
        .await
        .expect("DDL allowed for the other tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_do_not_reveal_customers() {
    let tenant = onboard_named("Very Secret Customer", "secret").await;
    assert!(
        tenant.onboarded.schema.as_str().starts_with("org_")
            && !tenant.onboarded.schema.as_str().contains("secret"),
        "{}",
        tenant.onboarded.schema
    );
    assert!(!tenant.onboarded.role.as_str().contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_changing_its_role_password_does_not_lock_pgtenant_out() {
    let tenant = onboard("pwchange").await;
    let proxy = TestProxy::start_with(|c| c.pool.size_per_tenant = 1).await;
    let client = proxy.connect(&tenant).await;
    client
        .batch_execute("ALTER ROLE CURRENT_USER PASSWORD 'tenant-chose-this'")
        .await
        .expect("PostgreSQL lets a role change its own password");
    // Force a new upstream login: end this session and kill the pooled server connection.
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    drop(client);
    let admin = superuser().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    assert!(
        common::backends::backend_gone(&admin, pid).await,
        "server process {pid} still there"
    );
    let again = connect_when_free(&proxy, &tenant).await;
    let row = again
        .query_one("SELECT 1", &[])
        .await
        .expect("works after the password was restored");
    assert_eq!(row.get::<_, i32>(0), 1);
}
