//! Secrets stay secret: one run through the paths that handle them (logins with good and bad tokens in both
//! pooling modes, admin logins and every SHOW, /metrics, an upstream login refused because the server
//! secret is wrong, a server connection killed, a tenant changing its own role's password, a second cluster
//! added with an admin password of its own from `[clusters.<name>]`, a tenant placed and served there, and
//! a pgtenant with a wrong cluster password running SHOW CLUSTERS and MIGRATE TENANTS), with pgtenant's
//! log captured at TRACE (and tokio-postgres's at DEBUG). Then every byte pgtenant produced (log lines, error
//! messages with their detail and hint, SHOW output, the metrics page) is searched for every secret the run
//! used: the JWT secret, the server secret, the superuser's password, the cluster admin passwords (right and
//! wrong), each token (and its signature), and the tenant roles' derived passwords. None may appear.

mod common;

use common::wire::txn_proxy_with;
use common::*;
use pgtenant::auth::{mint_hs256, MintRequest};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything the tracing subscriber wrote in this process.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "pgtenant=trace,tokio_postgres=debug,bb8=debug,warn",
            ))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        log
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All a client can read of an error: SQLSTATE, message, detail, hint.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {} {:?} {:?} {e:?}",
            db.code().code(),
            db.message(),
            db.detail(),
            db.hint()
        ),
        None => format!("{e} {e:?}"),
    }
}

async fn simple_text(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(messages) => messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => error_text(&e),
    }
}

fn admin_token(ttl: Duration) -> String {
    mint_hs256(
        JWT_SECRET.as_bytes(),
        &MintRequest {
            sub: "operator".into(),
            email: None,
            ttl,
            admin: true,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint")
}

async fn http_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics port");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body)).await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_show_output_or_metrics() {
    let log = captured().clone();
    let mut seen = String::new();
    let mut secrets: Vec<(String, String)> = vec![
        ("the JWT secret".into(), JWT_SECRET.into()),
        ("the server secret".into(), SERVER_SECRET.into()),
        (
            "the superuser's password".into(),
            cluster().cluster.superuser_password().into(),
        ),
    ];
    let note_token = |secrets: &mut Vec<(String, String)>, what: &str, token: &str| {
        secrets.push((format!("{what} (whole)"), token.to_string()));
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            secrets.push((format!("{what} (signature)"), signature.to_string()));
        }
    };

    let a = onboard("secrets-a").await;
    let b = onboard("secrets-b").await;
    let passwords = pgtenant::credentials::RolePasswords::new(SERVER_SECRET.as_bytes());
    for t in [&a, &b] {
        secrets.push((
            format!("{}'s role password", t.onboarded.role.as_str()),
            passwords.password_for(t.onboarded.role.as_str()),
        ));
    }
    // A second cluster whose admin role has a password of its own, given in [clusters.secretsb]; the
    // transaction-pooling pgtenant has a wrong one.
    let extra = ExtraCluster::primary().await;
    let cluster_password = "cluster-admin-password-0123456789xyz";
    let wrong_cluster_password = "wrong-cluster-password-0123456789xyz";
    secrets.push((
        "cluster secretsb's admin password".into(),
        cluster_password.into(),
    ));
    secrets.push((
        "a wrong cluster admin password".into(),
        wrong_cluster_password.into(),
    ));
    extra
        .superuser()
        .await
        // As a verifier: this statement is in the (captured) log of the test's own client.
        .batch_execute(&format!(
            "CREATE ROLE b_admin SUPERUSER LOGIN PASSWORD '{}'",
            pgtenant::scram::verifier(
                cluster_password,
                &pgtenant::scram::random_salt(),
                std::num::NonZeroU32::new(4096).expect("nonzero")
            )
        ))
        .await
        .expect("cluster admin role");
    let cluster_secret = |c: &mut pgtenant::config::Config, password: &str| {
        c.clusters.insert(
            "secretsb".into(),
            pgtenant::config::ClusterSecrets {
                admin_password: Some(pgtenant::config::Secret::new(password)),
            },
        );
    };
    let metrics_port = pgcluster::free_port().expect("port");
    // No leeway, so that a token expired two seconds ago is refused.
    let session = TestProxy::start_with(|c| {
        c.auth.leeway_secs = 0;
        c.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        cluster_secret(c, cluster_password);
    })
    .await;
    let txn = txn_proxy_with(2, |c| {
        c.auth.leeway_secs = 0;
        cluster_secret(c, wrong_cluster_password);
    })
    .await;

    // Good logins and queries, both modes, with a notice and an error from the server.
    for (proxy, tenant) in [(&session, &a), (&txn, &b)] {
        let token = tenant.token();
        note_token(&mut secrets, &format!("{}'s token", tenant.email), &token);
        let client = proxy
            .try_connect(&tenant.email, &token)
            .await
            .expect("login");
        seen += &simple_text(&client, "SELECT current_user").await;
        seen += &simple_text(&client, "SELECT 1/0").await;
        seen += &simple_text(&client, "DO $$ BEGIN RAISE NOTICE 'hello'; END $$").await;
        // A tenant changing its own role's password (pgtenant puts it back).
        seen += &simple_text(
            &client,
            "ALTER ROLE CURRENT_USER PASSWORD 'chosen-by-tenant-1234'",
        )
        .await;
    }
    // Refused logins: wrong signature, expired, garbage, unknown user, a token as the admin.
    let wrong_secret = "some-other-secret-0123456789abcdefghijklmn";
    secrets.push(("the wrong JWT secret".into(), wrong_secret.into()));
    let forged = mint_hs256(
        wrong_secret.as_bytes(),
        &MintRequest {
            sub: a.onboarded.admin_user_id.to_string(),
            email: Some(a.email.clone()),
            ttl: Duration::from_secs(600),
            admin: false,
            audience: None,
            issuer: None,
        },
        "pgtenant_admin",
    )
    .expect("mint");
    note_token(&mut secrets, "a forged token", &forged);
    let expired = token_for(
        &a.onboarded.admin_user_id.to_string(),
        Some(&a.email),
        Duration::from_secs(1),
    );
    note_token(&mut secrets, "an expiring token", &expired);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let unknown = token_for(
        &uuid::Uuid::new_v4().to_string(),
        Some("nobody@example.com"),
        Duration::from_secs(600),
    );
    note_token(&mut secrets, "an unknown user's token", &unknown);
    let garbage = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw";
    note_token(&mut secrets, "a garbage token", garbage);
    for (user, token) in [
        (a.email.as_str(), forged.as_str()),
        (a.email.as_str(), expired.as_str()),
        ("nobody@example.com", unknown.as_str()),
        (a.email.as_str(), garbage),
        (a.email.as_str(), "plain-password-not-a-token-42"),
    ] {
        for proxy in [&session, &txn] {
            match proxy.try_connect(user, token).await {
                Ok(_) => panic!("a bad token logged in as {user}: {token}"),
                Err(e) => seen += &error_text(&e),
            }
        }
    }
    secrets.push((
        "a plain password".into(),
        "plain-password-not-a-token-42".into(),
    ));

    // The admin channel: a tenant's token refused, then every SHOW.
    let admin = admin_token(Duration::from_secs(600));
    note_token(&mut secrets, "the admin token", &admin);
    let mut admin_config = tokio_postgres::Config::new();
    admin_config
        .host("127.0.0.1")
        .port(session.addr.port())
        .user("operator")
        .dbname("pgtenant");
    let mut refused = admin_config.clone();
    refused.password(a.token());
    if let Err(e) = refused.connect(tokio_postgres::NoTls).await {
        seen += &error_text(&e);
    }
    admin_config.password(&admin);
    let mut txn_admin_config = tokio_postgres::Config::new();
    txn_admin_config
        .host("127.0.0.1")
        .port(txn.addr.port())
        .user("operator")
        .dbname("pgtenant")
        .password(&admin);
    let admin_client = connect(admin_config).await;
    // The cluster added, a tenant placed on it and served; the other pgtenant's wrong password shows as
    // a refused admin login there, without the password.
    seen += &simple_text(
        &admin_client,
        &format!(
            "ADD CLUSTER secretsb HOST '127.0.0.1' PORT {} DATABASE '{DATABASE}' USER 'b_admin'",
            extra.port()
        ),
    )
    .await;
    let mut placed_config = session.config.clone();
    cluster_secret(&mut placed_config, cluster_password);
    let on_b = {
        let email = format!("owner-{}@secrets-b.test", uuid::Uuid::new_v4().simple());
        let onboarded = pgtenant::tenancy::onboard(
            &mut superuser().await,
            &placed_config,
            &pgtenant::tenancy::OnboardRequest {
                name: format!("Secrets On B {}", uuid::Uuid::new_v4().simple()),
                admin_email: email.clone(),
                slug: None,
                ddl_allowed: None,
                cluster: Some("secretsb".into()),
            },
        )
        .await
        .expect("onboard on secretsb");
        TestTenant { email, onboarded }
    };
    secrets.push((
        "the role password of the tenant on secretsb".into(),
        passwords.password_for(on_b.onboarded.role.as_str()),
    ));
    let on_b_token = on_b.token();
    note_token(&mut secrets, "the secretsb tenant's token", &on_b_token);
    for proxy in [&session, &txn] {
        match proxy.try_connect(&on_b.email, &on_b_token).await {
            Ok(client) => {
                seen += &simple_text(&client, "SELECT current_user, inet_server_port()").await
            }
            Err(e) => seen += &error_text(&e),
        }
    }
    let txn_admin = connect(txn_admin_config).await;
    let refused_cluster = simple_text(&txn_admin, "SHOW CLUSTERS").await;
    assert!(
        refused_cluster.contains("password authentication failed"),
        "the wrong cluster password is refused: {refused_cluster}"
    );
    seen += &refused_cluster;
    seen += &simple_text(&txn_admin, "MIGRATE TENANTS").await;
    for show in [
        "SHOW CLUSTERS",
        "SHOW CONFIG",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW POOLS",
        "SHOW STATS",
        "SHOW TENANTS",
        "SHOW MIGRATIONS",
        "SHOW VERSION",
    ] {
        seen += &simple_text(&admin_client, show).await;
    }
    seen += &http_get(metrics_port, "/metrics").await;

    // A server connection killed under a client.
    let victim = session.connect(&a).await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    superuser()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Err(e) = victim.simple_query("SELECT 1").await {
        seen += &error_text(&e);
    }

    // pgtenant with the wrong server secret: the server refuses its upstream logins.
    let wrong_server_secret = "wrong-server-secret-0123456789abcdef";
    secrets.push(("the wrong server secret".into(), wrong_server_secret.into()));
    let wrong = TestProxy::start_with(|c| {
        c.upstream.server_secret = Some(wrong_server_secret.into());
        c.tenancy.directory_cache_ttl_ms = 0;
    })
    .await;
    let wrong_passwords = pgtenant::credentials::RolePasswords::new(wrong_server_secret.as_bytes());
    secrets.push((
        "the wrongly derived role password".into(),
        wrong_passwords.password_for(a.onboarded.role.as_str()),
    ));
    match wrong.try_connect(&a.email, &a.token()).await {
        Ok(client) => seen += &simple_text(&client, "SELECT 1").await,
        Err(e) => seen += &error_text(&e),
    }
    wrong.stop().await;
    // Clients gone, so that stopping the proxies does not wait out their shutdown grace.
    drop(admin_client);
    drop(victim);
    // The misconfigured instance did not "restore" the role's password to its own idea of it, and the
    // instances with the right secret still get in.
    let stored: String = superuser()
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&a.onboarded.role.as_str()],
        )
        .await
        .expect("pg_authid")
        .get(0);
    assert!(
        !pgtenant::scram::verifier_matches(
            &wrong_passwords.password_for(a.onboarded.role.as_str()),
            &stored
        ),
        "the instance with the wrong server secret set the tenant role's password to its own"
    );
    let fresh = TestProxy::start().await;
    let still = fresh
        .try_connect(&a.email, &a.token())
        .await
        .expect("the right secret still logs in after a wrong one tried");
    assert_eq!(simple_text(&still, "SELECT 1").await, "1");
    fresh.stop().await;
    session.stop().await;
    txn.stop().await;

    let logged = String::from_utf8_lossy(&log.lock().expect("log")).into_owned();
    assert!(
        logged.contains("login refused"),
        "the log capture works (it holds the refusals)"
    );
    assert!(seen.contains("28P01"), "the refusals were read: {seen}");
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (place, text) in [("pgtenant's log", &logged), ("what clients saw", &seen)] {
            if text.contains(secret.as_str()) {
                let at = text.find(secret.as_str()).unwrap_or(0);
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(i, _)| i);
                leaks.push(format!(
                    "{what} in {place}: …{}…",
                    &text[start..(at + secret.len()).min(text.len())]
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    println!(
        "{} secrets searched for in {} bytes of log and {} bytes of client-visible output",
        secrets.len(),
        logged.len(),
        seen.len()
    );
}
