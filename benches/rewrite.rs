//! What the virtual schema costs per client message: `VirtualSchema::rewrite` on typical Query/Parse texts,
//! with and without `public` in them (nanoseconds per message, best of 5 runs of 200,000 calls).
//!
//! Usage: cargo bench --bench rewrite

use pgtenant::sql::VirtualSchema;
use std::hint::black_box;
use std::time::Instant;

fn per_call(vs: &VirtualSchema, sql: &[u8]) -> f64 {
    const CALLS: u32 = 200_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..CALLS {
            black_box(vs.rewrite(black_box(sql)));
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
    }
    best
}

fn main() {
    let vs = VirtualSchema::new("public", "org_0123456789ab");
    let cases: &[(&str, &str)] = &[
        ("pgbench -S (no public)", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
        (
            "pgbench TPC-B update (no public)",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
        ),
        (
            "Prisma findMany (public qualified)",
            "SELECT \"public\".\"User\".\"id\", \"public\".\"User\".\"email\", \"public\".\"User\".\"name\" \
             FROM \"public\".\"User\" WHERE 1=1 OFFSET $1",
        ),
        (
            "Prisma insert (public qualified)",
            "INSERT INTO \"public\".\"Post\" (\"title\",\"authorId\") VALUES ($1,$2) RETURNING \
             \"public\".\"Post\".\"id\", \"public\".\"Post\".\"title\"",
        ),
        ("SET search_path TO public", "SET search_path TO public"),
    ];
    println!("{:<40} {:>10} {:>12}", "message", "bytes", "ns/message");
    for (what, sql) in cases {
        let ns = per_call(&vs, sql.as_bytes());
        println!("{what:<40} {:>10} {ns:>12.0}", sql.len());
    }
}
