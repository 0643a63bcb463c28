//! The HTTP endpoints on `server.metrics_listen`: `GET /metrics` (Prometheus text exposition format),
//! `/health` (readiness), `/health/tenants` (every tenant's login check, JSON) and `/live` (liveness).
//! A deliberately small HTTP/1.1 responder: one request per connection, at most [`MAX_CONNECTIONS`] at once,
//! nothing else served.

use crate::health::Health;
use crate::pool::TenantPoolStats;
use crate::proxy::Proxy;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head read (only its first line matters).
const MAX_REQUEST: usize = 4096;

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and health endpoint listening");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let health = Arc::new(Health::default());
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let proxy = proxy.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; MAX_REQUEST];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else {
                return;
            };
            let response = respond(&proxy, &health, &request[..n]).await;
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            drop(slot);
        });
    }
}

/// The method and path (without a query string) of a request's first line.
fn request_target(request: &[u8]) -> Option<(&str, &str)> {
    let line_end = request
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(request.len());
    let line = std::str::from_utf8(&request[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn json_response<T: serde::Serialize>(ok: bool, value: &T) -> String {
    let status = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into()) + "\n";
    response(status, "application/json", &body)
}

async fn respond(proxy: &Proxy, health: &Health, request: &[u8]) -> String {
    let not_found =
        || "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string();
    let Some((method, path)) = request_target(request) else {
        return "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
    };
    if !matches!(path, "/metrics" | "/health" | "/health/tenants" | "/live") {
        return not_found();
    }
    if method != "GET" {
        return "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
    }
    match path {
        "/metrics" => response(
            "200 OK",
            "text/plain; version=0.0.4",
            &(render(proxy) + &render_health(health)),
        ),
        "/live" => response("200 OK", "text/plain", "ok\n"),
        "/health" => {
            let readiness = crate::health::readiness(proxy, health).await;
            json_response(readiness.ready(), &readiness)
        }
        "/health/tenants" => {
            let report = crate::health::tenants(proxy, health).await;
            json_response(report.status == "ok", &report)
        }
        _ => not_found(),
    }
}

/// A counter: name, help text, how to read it from a tenant's metrics.
type Counter = (
    &'static str,
    &'static str,
    fn(&crate::metrics::TenantMetrics) -> u64,
);

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Logins accepted, and refused by reason (every reason, zeros included, so rates can be taken from the start).
fn render_logins(out: &mut String, proxy: &Proxy) {
    let _ = writeln!(out, "# HELP pgtenant_logins_total Logins accepted.\n# TYPE pgtenant_logins_total counter\npgtenant_logins_total {}", proxy.logins.accepted());
    let _ = writeln!(out, "# HELP pgtenant_login_refusals_total Logins refused, by reason.\n# TYPE pgtenant_login_refusals_total counter");
    for (reason, count) in proxy.logins.refused() {
        let _ = writeln!(
            out,
            "pgtenant_login_refusals_total{{reason=\"{}\"}} {count}",
            reason.as_str()
        );
    }
}

/// Key set (JWKS) sources: keys serving, age of the set, fetches, and the last error as an info-style gauge.
fn render_jwks(out: &mut String, proxy: &Proxy) {
    let verifier = proxy.verifier();
    let sources = verifier.jwks_status();
    if sources.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP pgtenant_jwks_keys Keys serving from a key set source.\n# TYPE pgtenant_jwks_keys gauge");
    for s in &sources {
        let _ = writeln!(
            out,
            "pgtenant_jwks_keys{{source=\"{}\"}} {}",
            escape(&s.source),
            s.keys
        );
    }
    let _ = writeln!(out, "# HELP pgtenant_jwks_age_seconds Seconds since the serving key set was fetched (absent: never).\n# TYPE pgtenant_jwks_age_seconds gauge");
    for s in &sources {
        if let Some(age) = s.age_secs() {
            let _ = writeln!(
                out,
                "pgtenant_jwks_age_seconds{{source=\"{}\"}} {age}",
                escape(&s.source)
            );
        }
    }
    let _ = writeln!(out, "# HELP pgtenant_jwks_fetches_total Fetches (or file reads) of a key set source.\n# TYPE pgtenant_jwks_fetches_total counter");
    for s in &sources {
        let source = escape(&s.source);
        let _ = writeln!(
            out,
            "pgtenant_jwks_fetches_total{{source=\"{source}\",result=\"ok\"}} {}",
            s.fetches
        );
        let _ = writeln!(
            out,
            "pgtenant_jwks_fetches_total{{source=\"{source}\",result=\"error\"}} {}",
            s.failures
        );
    }
    let _ = writeln!(out, "# HELP pgtenant_jwks_last_error The last fetch of a key set source failed (1), with the reason.\n# TYPE pgtenant_jwks_last_error gauge");
    for s in &sources {
        let (value, error) = match &s.last_error {
            Some(e) => (1, e.as_str()),
            None => (0, ""),
        };
        let _ = writeln!(
            out,
            "pgtenant_jwks_last_error{{source=\"{}\",error=\"{}\"}} {value}",
            escape(&s.source),
            escape(error)
        );
    }
    if let Some(store) = verifier.jwks() {
        let _ = writeln!(out, "# HELP pgtenant_jwks_unknown_key_refetches_total Refetches asked for by tokens naming an unknown key.\n# TYPE pgtenant_jwks_unknown_key_refetches_total counter\npgtenant_jwks_unknown_key_refetches_total {}", store.forced_refetches());
    }
}

/// The metrics in Prometheus text format.
/// The health checks' own counters, kept by this endpoint (the checks run only when it is asked).
fn render_health(health: &Health) -> String {
    format!("# HELP pgtenant_health_tenant_rounds_total Rounds of tenant login checks run for /health/tenants.\n# TYPE pgtenant_health_tenant_rounds_total counter\npgtenant_health_tenant_rounds_total {}\n", health.tenant_rounds())
}

pub fn render(proxy: &Proxy) -> String {
    let mut out = String::new();
    let tenants = proxy.metrics.all();
    let clients = proxy.sessions.list();
    let pools = proxy.pools.stats();
    let counters: [Counter; 8] = [
        (
            "pgtenant_transactions_total",
            "Transactions completed (ReadyForQuery idle).",
            |m| m.transactions.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_queries_total",
            "Requests answered (Query, Sync, FunctionCall).",
            |m| m.queries.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_received_bytes_total",
            "Bytes received from clients.",
            |m| m.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_sent_bytes_total",
            "Bytes sent to clients from servers.",
            |m| m.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_errors_total",
            "ErrorResponses from servers.",
            |m| m.errors.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_waits_total",
            "Times a client waited for a server connection.",
            |m| m.waits.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_limit_cancels_total",
            "Statements pgtenant cancelled at the tenant's statement_timeout (its ceiling).",
            |m| m.limit_cancels.load(Ordering::Relaxed),
        ),
        (
            "pgtenant_limit_terminations_total",
            "Sessions pgtenant ended at the tenant's idle_in_transaction_session_timeout or transaction_timeout.",
            |m| m.limit_terminations.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (tenant, m) in &tenants {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", escape(tenant), get(m));
        }
    }
    let _ = writeln!(out, "# HELP pgtenant_wait_seconds_total Time clients waited for a server connection.\n# TYPE pgtenant_wait_seconds_total counter");
    for (tenant, m) in &tenants {
        let secs = m.wait_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "pgtenant_wait_seconds_total{{tenant=\"{}\"}} {secs}",
            escape(tenant)
        );
    }
    let _ = writeln!(out, "# HELP pgtenant_query_latency_seconds Request latency quantiles since start.\n# TYPE pgtenant_query_latency_seconds summary");
    for (tenant, m) in &tenants {
        let l = m.latency();
        for (q, v) in [
            ("0.5", l.p50),
            ("0.9", l.p90),
            ("0.99", l.p99),
            ("0.999", l.p999),
        ] {
            let _ = writeln!(
                out,
                "pgtenant_query_latency_seconds{{tenant=\"{}\",quantile=\"{q}\"}} {}",
                escape(tenant),
                v as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "pgtenant_query_latency_seconds_count{{tenant=\"{}\"}} {}",
            escape(tenant),
            l.count
        );
    }
    let mut by_tenant = std::collections::BTreeMap::<String, usize>::new();
    for c in &clients {
        *by_tenant.entry(c.tenant.slug.clone()).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP pgtenant_clients Client sessions.\n# TYPE pgtenant_clients gauge"
    );
    for (tenant, n) in &by_tenant {
        let _ = writeln!(out, "pgtenant_clients{{tenant=\"{}\"}} {n}", escape(tenant));
    }
    // Each family's samples in one group, after its HELP and TYPE (as the text format asks).
    let _ = writeln!(out, "# HELP pgtenant_server_connections Server connections by state.\n# TYPE pgtenant_server_connections gauge");
    for p in &pools {
        // A tenant role has a pool on its primary and on each replica it reads from.
        let role = escape(p.role.as_str());
        let cluster = escape(p.cluster.as_str());
        for (state, n) in [("active", p.active), ("idle", p.idle)] {
            let _ = writeln!(
                out,
                "pgtenant_server_connections{{role=\"{role}\",cluster=\"{cluster}\",state=\"{state}\"}} {n}"
            );
        }
    }
    type PoolGauge = (&'static str, &'static str, fn(&TenantPoolStats) -> usize);
    let gauges: [PoolGauge; 2] = [
        (
            "pgtenant_queued_clients",
            "Clients waiting for a server connection.",
            |p| p.waiting,
        ),
        (
            "pgtenant_server_connections_limit",
            "Server connections a tenant may have at once (pool.size_per_tenant).",
            |p| p.limit,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in &pools {
            let _ = writeln!(
                out,
                "{name}{{role=\"{}\",cluster=\"{}\"}} {}",
                escape(p.role.as_str()),
                escape(p.cluster.as_str()),
                get(p)
            );
        }
    }
    let replicas: Vec<_> = proxy
        .clusters
        .current()
        .iter()
        .filter(|e| e.is_replica())
        .map(|e| (e.name().clone(), proxy.replicas.health(e.name())))
        .collect();
    if !replicas.is_empty() {
        let _ = writeln!(out, "# HELP pgtenant_replica_lag_seconds How far behind its primary a replica is, as this pgtenant measures it (absent: unknown).\n# TYPE pgtenant_replica_lag_seconds gauge");
        for (name, health) in &replicas {
            if let Some(lag) = health.as_ref().and_then(|h| h.lag_ms) {
                let _ = writeln!(
                    out,
                    "pgtenant_replica_lag_seconds{{replica=\"{}\"}} {}",
                    escape(name.as_str()),
                    lag as f64 / 1e3
                );
            }
        }
        let _ = writeln!(out, "# HELP pgtenant_replica_up Whether the replica answered its last lag measure.\n# TYPE pgtenant_replica_up gauge");
        for (name, health) in &replicas {
            let up = health.as_ref().is_some_and(|h| h.lag_ms.is_some());
            let _ = writeln!(
                out,
                "pgtenant_replica_up{{replica=\"{}\"}} {}",
                escape(name.as_str()),
                u8::from(up)
            );
        }
    }
    render_jwks(&mut out, proxy);
    render_logins(&mut out, proxy);
    let _ = writeln!(out, "# HELP pgtenant_clients_total_current All client sessions.\n# TYPE pgtenant_clients_total_current gauge\npgtenant_clients_total_current {}", clients.len());
    out
}

#[cfg(test)]
mod tests {
    use super::request_target;

    #[test]
    fn request_line_is_read_up_to_the_path() {
        assert_eq!(
            request_target(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/health"))
        );
        assert_eq!(
            request_target(b"HEAD /live HTTP/1.1\r\n"),
            Some(("HEAD", "/live"))
        );
        assert_eq!(request_target(b"GET /live"), Some(("GET", "/live")));
        assert_eq!(request_target(b"GET"), None);
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.0"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target(b"\xff\xfe\r\n"), None);
    }
}
