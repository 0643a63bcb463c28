//! The admin channel, driven with psql as a person would: every command, an ordinary tenant's token
//! refused, malformed commands answered with a hint, and suspension reaching every pgtenant.

mod common;

use common::*;
use std::time::Duration;

fn admin_conninfo(proxy: &TestProxy) -> String {
    format!(
        "host=127.0.0.1 port={} user=ops dbname=pgtenant password={} sslmode=disable",
        proxy.addr.port(),
        admin_token()
    )
}

async fn admin_ok(proxy: &TestProxy, command: &str) -> String {
    let (ok, stdout, stderr) = psql_admin(proxy, &[command]).await;
    assert!(ok, "{command} failed: {stderr}");
    format!("{stdout}{stderr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_through_psql() {
    let db = fresh_database().await;
    let proxy = TestProxy::start_with(|c| *c = db.config.clone()).await;
    let first = db.onboard("admin-first").await;

    let help = admin_ok(&proxy, "HELP").await;
    for form in [
        "SHOW TENANTS",
        "CREATE TENANT",
        "MIGRATE TENANTS",
        "SUSPEND TENANT",
        "CHECK TENANTS",
        "RELOAD",
        "SHOW CLUSTERS",
        "ADD CLUSTER",
    ] {
        assert!(help.contains(form), "HELP lacks {form}: {help}");
    }
    assert!(admin_ok(&proxy, "SHOW VERSION")
        .await
        .starts_with("pgtenant "));
    // One cluster: the default one, [upstream]'s.
    let clusters = admin_ok(&proxy, "SHOW CLUSTERS").await;
    let fields: Vec<&str> = clusters.trim().split('|').collect();
    assert_eq!(fields[0..3], ["default", "primary", ""], "{clusters}");
    assert_eq!(
        fields[3],
        format!("127.0.0.1:{}/{}", db.config.upstream.port, db.name),
        "{clusters}"
    );
    assert_eq!(fields.last().copied(), Some("ok"), "{clusters}");
    let (ok, _, stderr) = psql_admin(
        &proxy,
        &["CREATE TENANT 'x' ADMIN 'x@x.test' ON CLUSTER nowhere"],
    )
    .await;
    assert!(!ok && stderr.contains("no cluster \"nowhere\""), "{stderr}");

    let created = admin_ok(
        &proxy,
        "CREATE TENANT 'Created Through Admin' ADMIN 'owner@created.test'",
    )
    .await;
    let fields: Vec<&str> = created.trim().split('|').collect();
    assert_eq!(fields[0], "created-through-admin", "{created}");
    assert!(fields[1].starts_with("org_"), "{created}");
    assert_eq!(fields[5], "1", "one tenant migration applied: {created}");

    let tenants = admin_ok(&proxy, "SHOW TENANTS").await;
    assert!(tenants.contains(&first.onboarded.slug), "{tenants}");
    assert!(tenants.contains("created-through-admin|"), "{tenants}");
    assert!(
        tenants.contains("|active|1|"),
        "status and version shown: {tenants}"
    );

    // A live client shows up in CLIENTS, SERVERS, POOLS and the tenant's counts.
    let client = proxy.connect(&first).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let clients = admin_ok(&proxy, "SHOW CLIENTS").await;
    assert!(
        clients.contains(&first.email) && clients.contains(&pid.to_string()),
        "{clients}"
    );
    let servers = admin_ok(&proxy, "SHOW SERVERS").await;
    assert!(
        servers.contains(&format!("{}|{pid}|active", first.onboarded.role)),
        "{servers}"
    );
    let pools = admin_ok(&proxy, "SHOW POOLS").await;
    assert!(
        pools.contains(&format!(
            "{}|{}|1|0|",
            first.onboarded.slug, first.onboarded.role
        )),
        "{pools}"
    );

    let migrations = admin_ok(&proxy, "SHOW MIGRATIONS").await;
    assert!(
        migrations.contains(&format!(
            "{}|{}|active|1|1|",
            first.onboarded.slug, first.onboarded.schema
        )),
        "{migrations}"
    );
    let history = admin_ok(&proxy, &format!("SHOW MIGRATIONS {}", first.onboarded.slug)).await;
    assert!(history.starts_with("1|initial_schema|"), "{history}");

    let config = admin_ok(&proxy, "SHOW CONFIG").await;
    assert!(config.contains("auth.hs_secret|(set)"), "{config}");
    assert!(
        !config.contains(JWT_SECRET) && !config.contains(SERVER_SECRET),
        "secrets leaked: {config}"
    );

    let dry = admin_ok(&proxy, "MIGRATE TENANTS DRY RUN").await;
    assert_eq!(dry.trim(), "", "nothing pending: {dry}");
    let (ok, stdout, stderr) = psql_admin(&proxy, &["MIGRATE TENANTS"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("NOTICE:  migrating 0 tenants"),
        "progress as NOTICE: {stderr}"
    );
    assert!(stdout.contains("(all)|ok|"), "{stdout}");

    let (ok, stdout, stderr) = psql_admin(&proxy, &["CHECK TENANTS"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "{}|{}|active|healthy|",
            first.onboarded.slug, first.onboarded.schema
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 tenants checked, 0 unhealthy"),
        "{stderr}"
    );

    // RELOAD needs a config file; the test proxy has none, and says so as an error, not a dropped connection.
    let (ok, _, stderr) = psql_admin(&proxy, &["RELOAD"]).await;
    assert!(!ok && stderr.contains("without a config file"), "{stderr}");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_tokens_are_refused_and_bad_commands_get_hints() {
    let tenant = onboard("admin-refused").await;
    let proxy = TestProxy::start().await;
    let mut config = proxy.client_config(&tenant.email, &tenant.token());
    config.dbname("pgtenant");
    let err = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => panic!("a tenant token must not open the admin channel"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&err), "42501");

    for (command, hint) in [
        ("SHOW TENANT", "SHOW TENANTS"),
        ("CREATE TENANT 'x'", "ADMIN"),
        ("SELECT 1", "HELP"),
        ("DROP TENANT", "DROP TENANT x"),
    ] {
        let (ok, _, stderr) = psql_admin(&proxy, &[command]).await;
        assert!(!ok, "{command} should fail");
        assert!(
            stderr.contains("ERROR:  ") && stderr.contains(hint),
            "{command}: {stderr}"
        );
    }
    // The session survives a bad command: the next one in the same session works.
    let conninfo = admin_conninfo(&proxy);
    let (ok, stdout, stderr) = run_program(
        &client_program("psql"),
        &[&conninfo, "-X", "-A", "-t"],
        &[],
        Some("SHOW NONSENSE;\nSHOW VERSION;\n"),
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("syntax error"), "{stderr}");
    assert!(stdout.contains("pgtenant "), "{stdout}");
    // Unknown tenants are errors with SQLSTATE 42704, not crashes.
    let (ok, _, stderr) = psql_admin(&proxy, &["SUSPEND TENANT no-such-tenant"]).await;
    assert!(!ok && stderr.contains("no tenant"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_is_refused_cleanly() {
    let proxy = TestProxy::start().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("ops")
        .password(admin_token())
        .dbname("pgtenant");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin login");
    tokio::spawn(connection);
    let err = client
        .query("SHOW VERSION", &[])
        .await
        .expect_err("extended protocol refused");
    assert_eq!(sqlstate(&err), "0A000");
    // Simple protocol on the same connection still works.
    let rows = client
        .simple_query("SHOW VERSION")
        .await
        .expect("simple query");
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_reaches_every_pgtenant_and_ends_sessions() {
    let db = fresh_database().await;
    let tenant = db.onboard("suspend-me").await;
    let other = db.onboard("bystander").await;
    // Two pgtenant instances on the same directory, with a long directory cache TTL: only the change
    // announcement can make the second one refuse quickly.
    let first = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.tenancy.directory_cache_ttl_ms = 600_000;
    })
    .await;
    let second = TestProxy::start_with(|c| {
        *c = db.config.clone();
        c.tenancy.directory_cache_ttl_ms = 600_000;
    })
    .await;
    // Warm both caches and keep a session open on the second.
    first
        .connect(&tenant)
        .await
        .simple_query("SELECT 1")
        .await
        .expect("first works");
    let open_session = second.connect(&tenant).await;
    open_session
        .simple_query("SELECT 1")
        .await
        .expect("second works");
    let bystander = second.connect(&other).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    admin_ok(&first, &format!("SUSPEND TENANT {}", tenant.onboarded.slug)).await;

    // The second instance refuses within a second or two and ended the open session.
    let mut refused = false;
    for _ in 0..40 {
        match second.try_connect(&tenant.email, &tenant.token()).await {
            Err(e) if sqlstate(&e) == "28000" => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        refused,
        "the second pgtenant still lets the suspended tenant in"
    );
    let err = open_session
        .simple_query("SELECT 1")
        .await
        .expect_err("session ended");
    let ended_by_us = err
        .as_db_error()
        .map(|e| e.code().code() == "57P01")
        .unwrap_or(false)
        || err.is_closed();
    assert!(ended_by_us, "{err:?}");
    // Other tenants are untouched.
    bystander
        .simple_query("SELECT 1")
        .await
        .expect("bystander still served");

    admin_ok(&second, &format!("RESUME TENANT {}", tenant.onboarded.slug)).await;
    let mut back = false;
    for _ in 0..40 {
        if first
            .try_connect(&tenant.email, &tenant.token())
            .await
            .is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "resumed tenant still refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_archives_then_drops_on_confirmation() {
    let db = fresh_database().await;
    let tenant = db.onboard("drop-me").await;
    let proxy = TestProxy::start_with(|c| *c = db.config.clone()).await;
    let slug = tenant.onboarded.slug.clone();

    admin_ok(&proxy, &format!("DROP TENANT {slug}")).await;
    let err = proxy
        .try_connect(&tenant.email, &tenant.token())
        .await
        .expect_err("archived: refused");
    assert_eq!(sqlstate(&err), "28000");
    let admin = db.superuser().await;
    let schema_kept: bool = admin
        .query_one(
            "SELECT to_regnamespace($1) IS NOT NULL",
            &[&tenant.onboarded.schema.as_str()],
        )
        .await
        .expect("schema")
        .get(0);
    assert!(schema_kept, "archive keeps the data");

    let (ok, _, stderr) =
        psql_admin(&proxy, &[&format!("DROP TENANT {slug} CONFIRM 'wrong'")]).await;
    assert!(!ok && stderr.contains("confirm with its slug"), "{stderr}");
    admin_ok(&proxy, &format!("DROP TENANT {slug} CONFIRM '{slug}'")).await;
    let row = admin
        .query_one(
            "SELECT to_regnamespace($1) IS NULL,
                    NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2),
                    NOT EXISTS (SELECT 1 FROM pgtenant.organizations WHERE slug = $3),
                    NOT EXISTS (SELECT 1 FROM pgtenant.users WHERE lower(email) = lower($4))",
            &[
                &tenant.onboarded.schema.as_str(),
                &tenant.onboarded.role.as_str(),
                &slug,
                &tenant.email,
            ],
        )
        .await
        .expect("after drop");
    for i in 0..4 {
        assert!(row.get::<_, bool>(i), "column {i} of the drop check");
    }
}
