//! RELOAD changes what it says it changes (issue 12): the pool's acquire timeout, its idle timeout and the
//! directory's cache time apply to what comes after a RELOAD (pool and directory read the one live
//! configuration); the pool sizes are reported as needing a restart.

mod common;

use common::backends::{backends_become, backends_of};
use common::*;
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The keys the tests change between RELOADs.
#[derive(Clone, Copy)]
struct Knobs {
    size: usize,
    acquire_timeout_ms: u64,
    idle_timeout_secs: u64,
    directory_cache_ttl_ms: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            size: 1,
            acquire_timeout_ms: 60_000,
            idle_timeout_secs: 600,
            directory_cache_ttl_ms: 600_000,
        }
    }
}

fn write_knobs(path: &std::path::Path, knobs: Knobs) {
    let Knobs {
        size,
        acquire_timeout_ms,
        idle_timeout_secs,
        directory_cache_ttl_ms,
    } = knobs;
    let c = config();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
host = "{host}"
port = {port}
database = "{database}"
admin_user = "{admin_user}"
admin_password = "{admin_password}"
server_secret = "{SERVER_SECRET}"
[pool]
mode = "session"
size_per_tenant = {size}
acquire_timeout_ms = {acquire_timeout_ms}
idle_timeout_secs = {idle_timeout_secs}
[auth]
hs_secret = "{JWT_SECRET}"
identity_claim = "email"
[tenancy]
directory_cache_ttl_ms = {directory_cache_ttl_ms}
tenant_migrations_dir = "{tenant_migrations}"
shared_migrations_dir = "{shared_migrations}"
"#,
        host = c.upstream.host,
        port = c.upstream.port,
        database = c.upstream.database,
        admin_user = c.upstream.admin_user,
        admin_password = c
            .upstream
            .admin_password
            .as_ref()
            .map(pgtenant::secret::Secret::expose)
            .unwrap_or_default(),
        tenant_migrations = c.tenancy.tenant_migrations_dir.display(),
        shared_migrations = c.tenancy.shared_migrations_dir.display(),
    );
    std::fs::write(path, text).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_pool_timeout_to_new_waits_and_names_what_needs_a_restart() {
    let tenant = onboard("reload").await;
    let (proxy, addr, path, shutdown) = start_from_file(Knobs::default()).await;
    let client_config = || tenant_config(addr, &tenant);
    // The tenant's one server connection is held by a session.
    let holder = connect(client_config()).await;
    holder.simple_query("SELECT 1").await.expect("holder");

    // With 60 s to wait, a second login is still waiting a second later.
    let waiting = tokio::spawn({
        let c = client_config();
        async move { c.connect(tokio_postgres::NoTls).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the first waiter waits (60 s)");

    let needs_restart = reload_with(
        &proxy,
        &path,
        Knobs {
            acquire_timeout_ms: 200,
            ..Knobs::default()
        },
    );
    assert!(needs_restart.is_empty(), "{needs_restart:?}");
    // A wait that starts after the RELOAD ends after 200 ms with 53300.
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        client_config().connect(tokio_postgres::NoTls),
    )
    .await
    .expect("the new timeout applies")
    .map(|_| ())
    .expect_err("no server connection");
    assert_eq!(sqlstate(&refused), "53300", "{refused:?}");
    waiting.abort();

    // Sizes need a restart, and RELOAD says so.
    let needs_restart = reload_with(
        &proxy,
        &path,
        Knobs {
            size: 2,
            acquire_timeout_ms: 200,
            ..Knobs::default()
        },
    );
    assert_eq!(needs_restart, vec!["pool sizes"]);
    drop(holder);
    shutdown.cancel();
    std::fs::remove_dir_all(path.parent().expect("config dir")).ok();
}

/// Rewrites the config file with `knobs` and RELOADs: the settings it says need a restart.
fn reload_with(proxy: &Proxy, path: &std::path::Path, knobs: Knobs) -> Vec<&'static str> {
    write_knobs(path, knobs);
    proxy.reload().expect("reload")
}

/// A proxy started from a config file written with `knobs`, serving on loopback.
async fn start_from_file(
    knobs: Knobs,
) -> (
    std::sync::Arc<Proxy>,
    std::net::SocketAddr,
    std::path::PathBuf,
    CancellationToken,
) {
    let dir =
        std::env::temp_dir().join(format!("pgtenant-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("pgtenant.toml");
    write_knobs(&path, knobs);
    let config = Config::load(&path).expect("config loads");
    let listener = pgtenant::server::bind(&config).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let proxy = Proxy::from_config_file(config, path.clone(), shutdown.clone()).expect("proxy");
    tokio::spawn(pgtenant::server::run(listener, proxy.clone()));
    (proxy, addr, path, shutdown)
}

fn tenant_config(addr: std::net::SocketAddr, tenant: &TestTenant) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(addr.port())
        .user(&tenant.email)
        .password(tenant.token())
        .dbname(DATABASE)
        .connect_timeout(Duration::from_secs(60));
    c
}

/// Logs in, runs one query and leaves; the error of a refused login.
async fn log_in_once(
    addr: std::net::SocketAddr,
    tenant: &TestTenant,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tenant_config(addr, tenant)
        .connect(tokio_postgres::NoTls)
        .await?;
    let task = tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    drop(client);
    task.await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_how_long_directory_lookups_are_reused() {
    let tenant = onboard("reload-ttl").await;
    let admin = superuser().await;
    let rename = |from: String, to: String| {
        let admin = &admin;
        async move {
            let n = admin
                .execute(
                    "UPDATE pgtenant.users SET email = $2 WHERE email = $1",
                    &[&from, &to],
                )
                .await
                .expect("rename user");
            assert_eq!(n, 1, "one user renamed from {from}");
        }
    };
    let elsewhere = format!("elsewhere-{}", tenant.email);
    let (proxy, addr, path, shutdown) = start_from_file(Knobs::default()).await;

    // Lookups are reused for 10 minutes at start. (That a login made now is served from the cache is not
    // asserted: any directory announcement, even another test's onboarding or the listener's own start,
    // empties the cache. A frozen cache time fails the assertion below instead.)
    log_in_once(addr, &tenant).await.expect("first login");

    // After a RELOAD to 0 ms, no lookup is reused: the rename is seen at the very next login.
    let needs_restart = reload_with(
        &proxy,
        &path,
        Knobs {
            directory_cache_ttl_ms: 0,
            ..Knobs::default()
        },
    );
    assert!(needs_restart.is_empty());
    log_in_once(addr, &tenant)
        .await
        .expect("login after the RELOAD");
    rename(tenant.email.clone(), elsewhere.clone()).await;
    let refused = log_in_once(addr, &tenant)
        .await
        .expect_err("the lookup made after the RELOAD is not reused");
    assert_eq!(sqlstate(&refused), "28000", "{refused:?}");
    shutdown.cancel();
    std::fs::remove_dir_all(path.parent().expect("config dir")).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_the_idle_timeout_of_pooled_server_connections() {
    let tenant = onboard("reload-idle").await;
    let role = tenant.onboarded.role.to_string();
    let admin = superuser().await;
    let (proxy, addr, path, shutdown) = start_from_file(Knobs::default()).await;

    // With idle_timeout_secs = 600 the server connection stays in the pool after the client leaves.
    log_in_once(addr, &tenant).await.expect("login");
    assert_eq!(backends_of(&admin, &role).await, 1, "one pooled connection");

    // RELOAD to 1 s: the reaper (every 5 s) closes it. Polled with a deadline far below 600 s.
    let needs_restart = reload_with(
        &proxy,
        &path,
        Knobs {
            idle_timeout_secs: 1,
            ..Knobs::default()
        },
    );
    assert!(needs_restart.is_empty());
    let left = backends_become(&admin, &role, 0).await;
    assert_eq!(
        left, 0,
        "{left} idle server connection(s) still open 30 s after RELOAD set idle_timeout_secs = 1"
    );
    shutdown.cancel();
    std::fs::remove_dir_all(path.parent().expect("config dir")).ok();
}
