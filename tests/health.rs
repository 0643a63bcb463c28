//! The health endpoints on the metrics listener, against real PostgreSQL: `/live`, `/health` (503 while
//! draining and when the directory is unreachable), `/health/tenants` (per tenant latency and error; a burst of
//! requests runs one round of checks, counted by pgtenant and in the server's own connection log).

mod common;

use common::TestProxy;
use pgtenant::config::Config;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A GET over a fresh TCP connection: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics listener");
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("response within 30 s")
        .expect("read response");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A proxy with the metrics listener on a free port, answering `/live` before it is returned.
async fn start_with_health(adjust: impl FnOnce(&mut Config)) -> (TestProxy, SocketAddr) {
    let port = pgcluster::free_port().expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let proxy = TestProxy::start_with(|c| {
        c.server.metrics_listen = Some(addr);
        adjust(c);
    })
    .await;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (proxy, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics listener at {addr} never came up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_ready_and_503_while_draining() {
    let tenant = common::onboard("health").await;
    let (proxy, addr) = start_with_health(|c| c.server.shutdown_grace_secs = 20).await;

    let (status, body) = http_get(addr, "/live").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(addr, "/health").await;
    assert_eq!(status, 200, "{body}");
    let ready = json(&body);
    assert_eq!(ready["status"], "ok", "{body}");
    assert_eq!(ready["listener"], "up", "{body}");
    assert_eq!(ready["directory"], "ok", "{body}");
    let (status, body) = http_get(addr, "/health?verbose=1").await;
    assert_eq!(status, 200, "a query string is ignored: {body}");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("pgtenant_health_tenant_rounds_total 0"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/nothing").await.0, 404);
    assert_eq!(http_request(addr, "POST", "/health").await.0, 405);

    // A session in a transaction keeps the drain going.
    let client = proxy.connect(&tenant).await;
    client.batch_execute("BEGIN").await.expect("begin");
    proxy.proxy.shutdown.cancel();
    let (status, body) = http_get(addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    let draining = json(&body);
    assert_eq!(draining["status"], "draining", "{body}");
    let (status, _) = http_get(addr, "/live").await;
    assert_eq!(status, 200, "alive while draining");
    // The listener stops accepting once the drain began.
    let mut listener_down = false;
    for _ in 0..100 {
        let (_, body) = http_get(addr, "/health").await;
        if json(&body)["listener"] == "down" {
            listener_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(listener_down, "listener still reported up while draining");
    // The transaction still works, and the session ends after it.
    client
        .batch_execute("SELECT 1")
        .await
        .expect("in transaction");
    let _ = client.batch_execute("COMMIT").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_directory_is_unreachable() {
    let dead_port = pgcluster::free_port().expect("free port");
    let (proxy, addr) = start_with_health(|c| {
        c.upstream.port = dead_port;
        c.health.check_timeout_ms = 2_000;
    })
    .await;
    let (status, body) = http_get(addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    let ready = json(&body);
    assert_eq!(ready["status"], "unavailable", "{body}");
    assert_ne!(ready["directory"], "ok", "{body}");
    let (status, body) = http_get(addr, "/health/tenants").await;
    assert_eq!(status, 503, "{body}");
    let report = json(&body);
    assert_eq!(report["status"], "error", "{body}");
    assert!(report["error"].is_string(), "{body}");
    assert_eq!(http_get(addr, "/live").await.0, 200);
    proxy.stop().await;
}

/// Connections the server authorized for `role` from the tenant check, per its own log.
fn check_logins(role: &str) -> usize {
    let log = std::fs::read_to_string(common::cluster().cluster.log_file()).expect("server log");
    let needle = format!("connection authorized: user={role} ");
    log.lines()
        .filter(|l| l.contains(&needle) && l.contains("application_name=pgtenant-check"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_checks_report_each_tenant_and_a_burst_runs_one_round() {
    // A database of its own, so the round sees only these tenants.
    let db = common::fresh_database().await;
    let superuser = db.superuser().await;
    superuser
        .batch_execute("ALTER SYSTEM SET log_connections = on")
        .await
        .expect("log connections");
    superuser
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let healthy = [db.onboard("alpha").await, db.onboard("beta").await];
    let broken = db.onboard("broken").await;
    superuser
        .batch_execute(&format!(
            "ALTER ROLE {} NOLOGIN",
            broken.onboarded.role.quoted()
        ))
        .await
        .expect("break a tenant's login");

    let config = db.config.clone();
    let (proxy, addr) = start_with_health(|c| {
        *c = Config {
            server: c.server.clone(),
            ..config
        };
        c.health.tenants_cache_ms = 3_000;
        c.health.tenants_concurrency = 2;
    })
    .await;

    let burst: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { http_get(addr, "/health/tenants").await }))
        .collect();
    let mut reports = Vec::new();
    for request in burst {
        let (status, body) = request.await.expect("request task");
        assert_eq!(status, 503, "a tenant is unhealthy: {body}");
        reports.push(json(&body));
    }
    for report in &reports {
        assert_eq!(
            report["round"], 1,
            "one round for the whole burst: {report}"
        );
        assert_eq!(report["status"], "degraded", "{report}");
        assert_eq!(report["healthy"], 2, "{report}");
        assert_eq!(report["unhealthy"], 1, "{report}");
    }
    let tenants = reports[0]["tenants"].as_array().expect("tenants").clone();
    assert_eq!(tenants.len(), 3, "{tenants:?}");
    for t in &healthy {
        let entry = tenants
            .iter()
            .find(|e| e["tenant"] == t.onboarded.slug.as_str())
            .unwrap_or_else(|| panic!("{} missing in {tenants:?}", t.onboarded.slug));
        assert_eq!(entry["healthy"], true, "{entry}");
        assert!(entry["error"].is_null(), "{entry}");
        assert!(entry["latency_ms"].is_u64(), "{entry}");
    }
    let entry = tenants
        .iter()
        .find(|e| e["tenant"] == broken.onboarded.slug.as_str())
        .expect("broken tenant listed");
    assert_eq!(entry["healthy"], false, "{entry}");
    let error = entry["error"].as_str().expect("an error");
    assert!(error.contains("not permitted to log in"), "{error}");

    // pgtenant counted one round, and the server saw one check login per healthy tenant.
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("pgtenant_health_tenant_rounds_total 1\n"),
        "{metrics}"
    );
    for t in &healthy {
        assert_eq!(
            check_logins(t.onboarded.role.as_str()),
            1,
            "server log: check logins of {}",
            t.onboarded.role.as_str()
        );
    }

    // Once the result is older than tenants_cache_ms, the next request runs a new round.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (_, body) = http_get(addr, "/health/tenants").await;
    assert_eq!(json(&body)["round"], 2, "{body}");
    for t in &healthy {
        assert_eq!(check_logins(t.onboarded.role.as_str()), 2);
    }
    superuser
        .batch_execute("ALTER SYSTEM RESET log_connections")
        .await
        .expect("reset log_connections");
    superuser
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    proxy.stop().await;
}
