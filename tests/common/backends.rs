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
