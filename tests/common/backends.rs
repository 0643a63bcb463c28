//! Looking behind pgtenant's back as the test cluster's superuser: its conninfo for psql and driver scripts,
//! and the server connections a role holds.

use super::{cluster, DATABASE};

/// libpq conninfo of the superuser on the test database (password included, TLS off).
pub fn superuser_conninfo() -> String {
    let c = &cluster().cluster;
    format!(
        "host={} port={} user={} dbname={DATABASE} password={} sslmode=disable",
        c.host(),
        c.port(),
        c.superuser(),
        c.superuser_password()
    )
}

/// Server connections of `role` open right now, as `pg_stat_activity` shows them.
pub async fn backends_of(admin: &tokio_postgres::Client, role: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename::text = $1",
            &[&role],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Polls (up to 30 s) until `role` has exactly `want` server connections; returns the last count, for the
/// caller to assert on. Instead of a fixed sleep before asserting: fast when the count is reached soon,
/// and not flaky on a loaded machine.
pub async fn backends_become(admin: &tokio_postgres::Client, role: &str, want: i64) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = backends_of(admin, role).await;
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls (up to 30 s) until the server process `pid` is gone; whether it is.
pub async fn backend_gone(admin: &tokio_postgres::Client, pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
