//! The global cap on server connections: idle connections of other tenants make room; busy ones do not.

mod common;

use common::backends::{backends_become, backends_of};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_another_tenant_are_closed_to_make_room() {
    let a = onboard("cap-a").await;
    let b = onboard("cap-b").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.size_per_tenant = 2;
        c.pool.max_server_connections = 2;
        c.pool.acquire_timeout_ms = 1_000;
    })
    .await;

    // A fills the global cap, then its clients leave: two idle server connections of A.
    let a1 = proxy.connect(&a).await;
    let a2 = proxy.connect(&a).await;
    a1.query_one("SELECT 1", &[]).await.expect("a1");
    a2.query_one("SELECT 1", &[]).await.expect("a2");
    drop(a1);
    drop(a2);
    let admin = superuser().await;
    assert_eq!(
        backends_become(&admin, a.onboarded.role.as_str(), 2).await,
        2
    );

    // B gets a connection: one of A's idle ones was closed for it. (Without eviction B would wait for a
    // free slot that never comes and get 53300 after the acquire timeout.)
    let b1 = proxy
        .try_connect(&b.email, &b.token())
        .await
        .expect("B is served within the global cap");
    b1.query_one("SELECT 1", &[]).await.expect("b1");
    assert_eq!(
        backends_become(&admin, a.onboarded.role.as_str(), 1).await,
        1
    );
    assert_eq!(backends_of(&admin, b.onboarded.role.as_str()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_never_taken_and_the_wait_ends_in_53300() {
    let a = onboard("busy-a").await;
    let b = onboard("busy-b").await;
    let proxy = TestProxy::start_with(|c| {
        c.pool.size_per_tenant = 2;
        c.pool.max_server_connections = 2;
        c.pool.acquire_timeout_ms = 300;
    })
    .await;
    let a1 = proxy.connect(&a).await;
    let a2 = proxy.connect(&a).await;
    let err = proxy
        .try_connect(&b.email, &b.token())
        .await
        .expect_err("no room for B while A's sessions hold both connections");
    assert_eq!(sqlstate(&err), "53300");
    // A's sessions were not disturbed.
    a1.query_one("SELECT 1", &[]).await.expect("a1 still works");
    a2.query_one("SELECT 1", &[]).await.expect("a2 still works");
}
