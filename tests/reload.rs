//! RELOAD changes what it says it changes (issue 12): the pool's acquire timeout and the directory's cache
//! time apply to what comes after a RELOAD; the pool sizes are reported as needing a restart.

mod common;

use common::*;
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn write_config(path: &std::path::Path, size: usize, acquire_timeout_ms: u64) {
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
[auth]
hs_secret = "{JWT_SECRET}"
[tenancy]
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
    let dir =
        std::env::temp_dir().join(format!("pgtenant-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("pgtenant.toml");
    write_config(&path, 1, 60_000);
    let config = Config::load(&path).expect("config loads");
    let listener = pgtenant::server::bind(&config).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let proxy = Proxy::from_config_file(config, path.clone(), shutdown.clone()).expect("proxy");
    tokio::spawn(pgtenant::server::run(listener, proxy.clone()));
    let client_config = || {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(addr.port())
            .user(&tenant.email)
            .password(tenant.token())
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(120));
        c
    };
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

    write_config(&path, 1, 200);
    let needs_restart = proxy.reload().expect("reload");
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
    write_config(&path, 2, 200);
    let needs_restart = proxy.reload().expect("reload");
    assert_eq!(needs_restart, vec!["pool sizes"]);
    drop(holder);
    shutdown.cancel();
    std::fs::remove_dir_all(&dir).ok();
}
