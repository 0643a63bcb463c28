//! Protocol fidelity: real clients (psql, pgbench, psycopg 3, tokio-postgres) through pgtenant must see what
//! they see talking to PostgreSQL directly: COPY in both directions and formats, the extended protocol with
//! binary parameters and results, pipelining, errors mid-stream, cancel requests, notices, LISTEN/NOTIFY,
//! values far larger than the relay's buffer and result sets of many rows.
//!
//! Where a byte-for-byte comparison is possible (COPY exports), the same export is also done directly against
//! PostgreSQL as the superuser and the bytes compared.

mod common;

use bytes::BytesMut;
use common::backends::superuser_conninfo;
use common::run::{describe_run, report_value, run_bounded};
use common::*;
use pgtenant::names::quote_ident;
use pgtenant::upstream::{Login, SaltedPasswordCache, UpstreamConn, UpstreamTarget};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed when dropped (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pgtenant-fidelity-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A path as a single-quoted psql argument (for `\copy ... 'path'`).
fn psql_quoted_path(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// Runs psql without psqlrc, in unaligned tuples-only mode, with UTF-8 as client encoding.
async fn psql(
    conninfo: &str,
    password: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let psql = client_program("psql");
    let mut all_args = vec!["-X", "-A", "-t", "-d", conninfo];
    all_args.extend_from_slice(args);
    let mut env = vec![("PGCLIENTENCODING", "UTF8"), ("PGCONNECT_TIMEOUT", "10")];
    if let Some(p) = password {
        env.push(("PGPASSWORD", p));
    }
    run_bounded(&psql, &all_args, &env, stdin, 120).await
}

/// A CSV field as PostgreSQL's `COPY ... TO (FORMAT csv)` writes it: NULL is an empty unquoted field, and a
/// value is quoted when it is empty or holds the delimiter, a quote or a line break.
fn csv_field(value: Option<&str>) -> String {
    match value {
        None => String::new(),
        Some(v) if v.is_empty() || v.contains([',', '"', '\n', '\r']) => {
            format!("\"{}\"", v.replace('"', "\"\""))
        }
        Some(v) => v.to_string(),
    }
}

/// Where the first difference between two byte strings lies, for a readable failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => {
            let from = i.saturating_sub(40);
            format!(
                "first difference at byte {i} (lengths {} and {}): {:?} vs {:?}",
                a.len(),
                b.len(),
                String::from_utf8_lossy(&a[from..(i + 40).min(a.len())]),
                String::from_utf8_lossy(&b[from..(i + 40).min(b.len())])
            )
        }
        None => format!(
            "one is a prefix of the other (lengths {} and {})",
            a.len(),
            b.len()
        ),
    }
}

/// xorshift64*: deterministic test data without a seed file.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What a raw simple-protocol `COPY ... TO STDOUT` returned: the CopyOutResponse body, the concatenated
/// CopyData payloads and the CommandComplete tag.
#[derive(Debug)]
struct RawCopyOut {
    response: Vec<u8>,
    data: Vec<u8>,
    copy_data_messages: usize,
    tag: String,
}

/// Runs `sql` (a `COPY ... TO STDOUT`) as a simple Query on a raw protocol connection and collects the
/// COPY stream exactly as it came off the wire. Logs in with cleartext (pgtenant) or SCRAM (PostgreSQL).
///
/// (tokio-postgres's `copy_out` returns a `futures` Stream, and this crate has no `futures` dependency to
/// drive it with; the raw exchange compares the bytes more strictly anyway.)
async fn raw_copy_out(port: u16, user: &str, password: &str, sql: &str) -> RawCopyOut {
    let target = UpstreamTarget {
        host: "127.0.0.1".into(),
        port,
        database: DATABASE.into(),
        connect_timeout: Duration::from_secs(10),
        tls: pgtenant::upstream_tls::UpstreamTls::disabled(),
    };
    let cache = SaltedPasswordCache::default();
    let mut conn = UpstreamConn::connect(
        &target,
        Login {
            user,
            password,
            salted_cache: &cache,
            settings: Default::default(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("raw login to port {port} as {user}: {e}"));
    let mut out = BytesMut::new();
    pgtenant::protocol::write::query(&mut out, sql);
    conn.stream.write_all(&out).await.expect("send query");
    let mut result = RawCopyOut {
        response: Vec::new(),
        data: Vec::new(),
        copy_data_messages: 0,
        tag: String::new(),
    };
    loop {
        let (tag, body) = tokio::time::timeout(
            Duration::from_secs(60),
            pgtenant::protocol::read_message(&mut conn.stream, 256 << 20),
        )
        .await
        .expect("COPY OUT timed out")
        .expect("read message");
        match tag {
            b'H' => result.response = body.to_vec(),
            b'd' => {
                result.data.extend_from_slice(&body);
                result.copy_data_messages += 1;
            }
            b'c' | b'N' | b'S' => {}
            b'C' => {
                result.tag = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_string()
            }
            b'E' => panic!(
                "COPY OUT failed: {}",
                pgtenant::protocol::ErrorFields::parse(&body)
            ),
            b'Z' => break,
            other => panic!("unexpected message {:?} during COPY OUT", other as char),
        }
    }
    let mut out = BytesMut::new();
    pgtenant::protocol::write::terminate(&mut out);
    let _ = conn.stream.write_all(&out).await;
    result
}

/// Waits until the backend `pid` runs a query containing `needle` (seen by the superuser).
async fn wait_until_active(pid: i32, needle: &str) {
    let admin = superuser().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = admin
            .query_opt(
                "SELECT state, query FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            let state: Option<String> = row.get(0);
            let query: Option<String> = row.get(1);
            if state.as_deref() == Some("active") && query.unwrap_or_default().contains(needle) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never showed {needle:?} as active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. psql: a script with \copy in and out; COPY FROM STDIN with a bad row
// ---------------------------------------------------------------------------------------------------------

const CSV_ROWS: usize = 3000;

struct CsvData {
    text: String,
    null_cities: usize,
    empty_cities: usize,
    tokyo: usize,
}

/// A CSV file (with header) in exactly the form PostgreSQL exports it, so import-then-export must give it back.
fn generate_csv() -> CsvData {
    let names = [
        "plain name",
        "Smith, John",
        "O\"Brien \"the best\"",
        "O'Neil",
        "back\\slash \\N",
        "line one\nline two",
        "  padded  ",
        "🙂 emoji",
        "tab\there",
        "carriage\r\nreturn",
        "NULL",
        "\\.",
    ];
    let cities: [Option<&str>; 8] = [
        Some("Zürich"),
        Some("東京"),
        Some("São Paulo"),
        Some("Kraków"),
        Some("New York, NY"),
        Some("Ελλάδα"),
        Some(""),
        None,
    ];
    let mut text = String::from("id,name,city,note,amount\n");
    let (mut null_cities, mut empty_cities, mut tokyo) = (0, 0, 0);
    for i in 1..=CSV_ROWS {
        let name = format!("{} #{i}", names[i % names.len()]);
        let city = cities[i % cities.len()];
        match city {
            None => null_cities += 1,
            Some("") => empty_cities += 1,
            Some("東京") => tokyo += 1,
            _ => {}
        }
        let note = match i % 7 {
            0 => None,
            1 => Some(format!("he said \"hi\", then left ({i})")),
            2 => Some(String::new()),
            3 => Some(format!("Straße {i}; 東京都; ü")),
            _ => Some(format!("note {i}")),
        };
        let amount = (i % 11 != 0).then(|| format!("{}.{:02}", (i * 37) % 100_000, i % 100));
        text.push_str(&format!(
            "{i},{},{},{},{}\n",
            csv_field(Some(&name)),
            csv_field(city),
            csv_field(note.as_deref()),
            csv_field(amount.as_deref()),
        ));
    }
    CsvData {
        text,
        null_cities,
        empty_cities,
        tokyo,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_copy_round_trip_matches_direct_export() {
    let tenant = onboard("psqlcopy").await;
    let proxy = TestProxy::start().await;
    let dir = TempDir::new("psqlcopy");
    let csv = generate_csv();
    let input = dir.path("in.csv");
    let via_proxy = dir.path("out-proxy.csv");
    let direct = dir.path("out-direct.csv");
    std::fs::write(&input, &csv.text).expect("write csv");

    let script = format!(
        "CREATE TABLE fidelity_copy (id int PRIMARY KEY, name text, city text, note text, amount numeric(12, 2));\n\
         \\copy fidelity_copy FROM {input} WITH (FORMAT csv, HEADER true)\n\
         SELECT 'loaded=' || count(*) || ' null_cities=' || count(*) FILTER (WHERE city IS NULL) \
           || ' empty_cities=' || count(*) FILTER (WHERE city = '') \
           || ' tokyo=' || count(*) FILTER (WHERE city = '東京') FROM fidelity_copy;\n\
         SELECT 'schema=' || current_schema() || ' user=' || current_user;\n\
         \\copy (SELECT * FROM fidelity_copy ORDER BY id) TO {out} WITH (FORMAT csv, HEADER true)\n",
        input = psql_quoted_path(&input),
        out = psql_quoted_path(&via_proxy),
    );
    let script_file = dir.path("script.sql");
    std::fs::write(&script_file, &script).expect("write script");
    let script_arg = script_file.display().to_string();
    let (ok, out, err) = psql(
        &proxy.conninfo(&tenant),
        None,
        &["-v", "ON_ERROR_STOP=1", "-f", &script_arg],
        None,
    )
    .await;
    let report = describe_run("psql script through pgtenant", ok, &out, &err);
    assert!(ok, "{report}");
    assert!(err.trim().is_empty(), "{report}");
    assert_eq!(
        out.matches(&format!("COPY {CSV_ROWS}")).count(),
        2,
        "\\copy from and \\copy to each report {CSV_ROWS} rows: {report}"
    );
    let expected = format!(
        "loaded={CSV_ROWS} null_cities={} empty_cities={} tokyo={}",
        csv.null_cities, csv.empty_cities, csv.tokyo
    );
    assert!(out.contains(&expected), "expected {expected:?}: {report}");
    let schema = tenant.onboarded.schema.as_str();
    let role = tenant.onboarded.role.as_str();
    assert!(
        out.contains(&format!("schema={schema} user={role}")),
        "{report}"
    );

    // The same export, directly against PostgreSQL as the superuser.
    let direct_script = format!(
        "\\copy (SELECT * FROM {}.fidelity_copy ORDER BY id) TO {} WITH (FORMAT csv, HEADER true)\n",
        quote_ident(schema),
        psql_quoted_path(&direct)
    );
    let (ok, out, err) = psql(
        &superuser_conninfo(),
        Some(cluster().cluster.superuser_password()),
        &["-v", "ON_ERROR_STOP=1"],
        Some(&direct_script),
    )
    .await;
    assert!(ok, "{}", describe_run("direct export", ok, &out, &err));

    let exported = std::fs::read(&via_proxy).expect("export through pgtenant");
    let exported_directly = std::fs::read(&direct).expect("direct export");
    assert!(
        exported == exported_directly,
        "export through pgtenant differs from the direct export: {}",
        first_difference(&exported, &exported_directly)
    );
    assert!(
        exported == csv.text.as_bytes(),
        "export differs from the imported file: {}",
        first_difference(&exported, csv.text.as_bytes())
    );
    assert!(
        String::from_utf8_lossy(&exported).contains("Zürich") && exported.len() > 100_000,
        "the export looks too small: {} bytes",
        exported.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_from_stdin_bad_row_errors_like_postgres_and_session_survives() {
    let tenant = onboard("badcopy").await;
    let proxy = TestProxy::start().await;
    // The same script directly (as the superuser, in a scratch schema) and through pgtenant: psql's output,
    // errors included, must be identical.
    let script = "CREATE TABLE fidelity_badcopy (id int PRIMARY KEY, name text);\n\
                  INSERT INTO fidelity_badcopy VALUES (1, 'existing');\n\
                  COPY fidelity_badcopy (id, name) FROM STDIN WITH (FORMAT csv);\n\
                  900001,first good row\n\
                  not-a-number,bad row\n\
                  900003,never reached\n\
                  \\.\n\
                  SELECT 'after-copy=' || count(*) FROM fidelity_badcopy;\n\
                  BEGIN;\n\
                  COPY fidelity_badcopy (id, name) FROM STDIN WITH (FORMAT csv);\n\
                  900004,good\n\
                  900004,duplicate key\n\
                  \\.\n\
                  SELECT 'in-aborted-transaction';\n\
                  ROLLBACK;\n\
                  COPY fidelity_badcopy (id, name) FROM STDIN WITH (FORMAT csv);\n\
                  900005,\"Zürich, 東京\"\n\
                  \\.\n\
                  SELECT 'usable=' || count(*) || ',' || max(name) FROM fidelity_badcopy WHERE id > 1;\n";

    let scratch = format!(
        "fidelity_direct_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = superuser().await;
    admin
        .batch_execute(&format!("CREATE SCHEMA {scratch}"))
        .await
        .expect("scratch schema");
    let direct_conninfo = format!(
        "{} options='-c search_path={scratch}'",
        superuser_conninfo()
    );
    let direct = psql(
        &direct_conninfo,
        Some(cluster().cluster.superuser_password()),
        &[],
        Some(script),
    )
    .await;
    let proxied = psql(&proxy.conninfo(&tenant), None, &[], Some(script)).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {scratch} CASCADE"))
        .await
        .expect("drop scratch schema");

    let report = format!(
        "{}\n{}",
        describe_run("directly", direct.0, &direct.1, &direct.2),
        describe_run("through pgtenant", proxied.0, &proxied.1, &proxied.2)
    );
    // First what PostgreSQL itself says, so a wrong expectation is not blamed on pgtenant.
    assert!(direct.0, "{report}");
    for needle in [
        "ERROR:  invalid input syntax for type integer: \"not-a-number\"",
        "CONTEXT:  COPY fidelity_badcopy, line 2, column id: \"not-a-number\"",
        "ERROR:  duplicate key value violates unique constraint \"fidelity_badcopy_pkey\"",
        "ERROR:  current transaction is aborted, commands ignored until end of transaction block",
    ] {
        assert!(direct.2.contains(needle), "directly: {needle:?}\n{report}");
    }
    for needle in ["after-copy=1\n", "usable=1,Zürich, 東京\n"] {
        assert!(direct.1.contains(needle), "directly: {needle:?}\n{report}");
    }
    assert!(proxied.0, "{report}");
    assert_eq!(proxied.1, direct.1, "stdout differs\n{report}");
    assert_eq!(proxied.2, direct.2, "stderr differs\n{report}");

    // And the table behind pgtenant holds what the output says.
    let rows = admin
        .query(
            &format!(
                "SELECT id, name FROM {}.fidelity_badcopy ORDER BY id",
                quote_ident(tenant.onboarded.schema.as_str())
            ),
            &[],
        )
        .await
        .expect("rows");
    let rows: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        vec![
            (1, "existing".to_string()),
            (900005, "Zürich, 東京".to_string())
        ]
    );
}

/// Startup parameters a libpq client sends from its environment (client encoding, time zone, date style,
/// `options`) take effect as they would directly: psql's output bytes are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_startup_settings_match_direct() {
    let tenant = onboard("psqlenv").await;
    let proxy = TestProxy::start().await;
    let dir = TempDir::new("psqlenv");
    let sql = "SELECT 'Z' || chr(252) || 'rich', '2024-02-29 12:34:56.789+00'::timestamptz, 1.0::float8 / 3, \
               interval '1 day 2 hours 3 seconds', current_setting('TimeZone'), \
               current_setting('client_encoding'), current_setting('DateStyle'), \
               current_setting('extra_float_digits'), current_setting('IntervalStyle')";
    let env = [
        ("PGCLIENTENCODING", "LATIN1"),
        ("PGTZ", "Asia/Tokyo"),
        ("PGDATESTYLE", "SQL, DMY"),
        (
            "PGOPTIONS",
            "-c extra_float_digits=0 -c intervalstyle=postgres_verbose",
        ),
        ("PGCONNECT_TIMEOUT", "10"),
    ];
    let psql = client_program("psql");
    let mut outputs = Vec::new();
    for (label, conninfo, password) in [
        (
            "direct",
            superuser_conninfo(),
            Some(cluster().cluster.superuser_password()),
        ),
        ("through pgtenant", proxy.conninfo(&tenant), None),
    ] {
        let out_file = dir.path(&format!("{}.out", label.replace(' ', "-")));
        let out_arg = out_file.display().to_string();
        let mut env = env.to_vec();
        if let Some(p) = password {
            env.push(("PGPASSWORD", p));
        }
        let (ok, out, err) = run_bounded(
            &psql,
            &["-X", "-A", "-t", "-d", &conninfo, "-o", &out_arg, "-c", sql],
            &env,
            None,
            120,
        )
        .await;
        assert!(ok, "{}", describe_run(label, ok, &out, &err));
        outputs.push(std::fs::read(&out_file).expect("psql output"));
    }
    // "Zürich" in LATIN1 is 5a fc 72 69 63 68.
    assert!(
        outputs[0].starts_with(b"Z\xfcrich|"),
        "direct output is not LATIN1: {:?}",
        String::from_utf8_lossy(&outputs[0])
    );
    assert!(
        String::from_utf8_lossy(&outputs[0])
            .contains("|Asia/Tokyo|LATIN1|SQL, DMY|0|postgres_verbose"),
        "direct: {:?}",
        String::from_utf8_lossy(&outputs[0])
    );
    assert!(
        outputs[1] == outputs[0],
        "psql output through pgtenant {:?} differs from the direct one {:?}",
        String::from_utf8_lossy(&outputs[1]),
        String::from_utf8_lossy(&outputs[0])
    );
}

// ---------------------------------------------------------------------------------------------------------
// 2. pgbench
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_every_query_mode() {
    let tenant = onboard("pgbench").await;
    let proxy = TestProxy::start().await;
    let pgbench = client_program("pgbench");
    let conninfo = proxy.conninfo(&tenant);
    let schema = quote_ident(tenant.onboarded.schema.as_str());
    let admin = superuser().await;

    let (ok, out, err) = run_bounded(&pgbench, &["-i", "-s", "1", &conninfo], &[], None, 120).await;
    assert!(ok, "{}", describe_run("pgbench -i -s 1", ok, &out, &err));
    let schemas: Vec<String> = admin
        .query(
            "SELECT schemaname::text FROM pg_tables WHERE tablename = 'pgbench_accounts'",
            &[],
        )
        .await
        .expect("pg_tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        schemas,
        vec![tenant.onboarded.schema.as_str().to_string()],
        "pgbench tables belong in the tenant's schema only"
    );
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'pgbench_accounts'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, tenant.onboarded.role.as_str());
    let accounts: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.pgbench_accounts"),
            &[],
        )
        .await
        .expect("count accounts")
        .get(0);
    assert_eq!(
        accounts, 100_000,
        "pgbench -i loads 100000 accounts per scale unit through COPY"
    );

    for mode in ["simple", "extended", "prepared"] {
        let started = Instant::now();
        let (ok, out, err) = run_bounded(
            &pgbench,
            &["-c", "4", "-j", "2", "-t", "200", "-M", mode, &conninfo],
            &[],
            None,
            120,
        )
        .await;
        let report = describe_run(&format!("pgbench -M {mode}"), ok, &out, &err);
        assert!(ok, "{report}");
        assert_eq!(
            report_value(&out, "query mode:").as_deref(),
            Some(mode),
            "{report}"
        );
        assert_eq!(
            report_value(&out, "number of transactions actually processed:").as_deref(),
            Some("800/800"),
            "{report}"
        );
        let failed = report_value(&out, "number of failed transactions:").unwrap_or_default();
        assert!(
            failed.starts_with("0 "),
            "failed transactions: {failed:?}\n{report}"
        );
        // pgbench truncates pgbench_history before each run; every transaction adds one row.
        let history: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {schema}.pgbench_history"),
                &[],
            )
            .await
            .expect("history")
            .get(0);
        assert_eq!(history, 800, "pgbench_history after -M {mode}\n{report}");
        // TPC-B's invariant: every delta went to one account, one teller and one branch.
        let row = admin
            .query_one(
                &format!(
                    "SELECT (SELECT sum(abalance) FROM {schema}.pgbench_accounts), \
                            (SELECT sum(tbalance) FROM {schema}.pgbench_tellers), \
                            (SELECT sum(bbalance) FROM {schema}.pgbench_branches)"
                ),
                &[],
            )
            .await
            .expect("balances");
        let (a, t, b): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(
            a == t && t == b,
            "balances diverge after -M {mode}: accounts {a}, tellers {t}, branches {b}"
        );
        eprintln!("pgbench -M {mode}: {:?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. psycopg 3
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_checks_pass_directly_and_through_pgtenant() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import psycopg; print(psycopg.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "psycopg 3 is not installed for python3 (needed by this test): pip install \"psycopg[binary]\"\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "python3 cannot be run ({e}); this test needs python3 with psycopg 3: pip install \"psycopg[binary]\""
        ),
    }
    let script = repo_path("tests/clients/psycopg_checks.py")
        .display()
        .to_string();

    // Baseline: the same checks directly against PostgreSQL, as the superuser in a scratch schema holding the
    // tenant tables. If they fail here, the script (or the environment) is wrong, not pgtenant.
    let scratch = format!(
        "fidelity_py_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = superuser().await;
    let migration =
        std::fs::read_to_string(repo_path("tenant-migrations/V001__initial_schema.sql"))
            .expect("tenant migration");
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {scratch}; SET search_path = {scratch}; {migration}; RESET search_path;"
        ))
        .await
        .expect("scratch schema with the tenant tables");
    let direct_conninfo = format!(
        "{} options='-c search_path={scratch}'",
        superuser_conninfo()
    );
    let direct = run_bounded(
        "python3",
        &[&script],
        &[
            ("PGTENANT_CONNINFO", direct_conninfo.as_str()),
            ("PGPASSWORD", cluster().cluster.superuser_password()),
        ],
        None,
        120,
    )
    .await;
    admin
        .batch_execute(&format!("DROP SCHEMA {scratch} CASCADE"))
        .await
        .expect("drop scratch schema");
    assert!(
        direct.0,
        "{}",
        describe_run(
            "psycopg checks directly against PostgreSQL (the script is wrong, not pgtenant)",
            direct.0,
            &direct.1,
            &direct.2
        )
    );

    let tenant = onboard("psycopg").await;
    let proxy = TestProxy::start().await;
    let conninfo = proxy.conninfo(&tenant);
    let (ok, out, err) = run_bounded(
        "python3",
        &[&script],
        &[("PGTENANT_CONNINFO", conninfo.as_str())],
        None,
        120,
    )
    .await;
    assert!(
        ok,
        "{}",
        describe_run("psycopg checks through pgtenant", ok, &out, &err)
    );
    assert!(out.contains("all psycopg checks passed"), "{out}");
    eprintln!("{out}");
}

// ---------------------------------------------------------------------------------------------------------
// 4. tokio-postgres: binary parameters and results, pipelining, binary COPY
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_binary_parameters_and_pipelining() {
    let tenant = onboard("tokiobin").await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&tenant).await;

    let at = UNIX_EPOCH + Duration::from_micros(1_709_251_199_123_456);
    let before_epoch = UNIX_EPOCH - Duration::from_micros(962_654_399_000_001);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let id = uuid::Uuid::new_v4();
    let text = "Zürich 東京 'single' \"double\" \\ 🙂".to_string();
    let ints: Vec<Option<i32>> = vec![Some(i32::MIN), None, Some(0), Some(i32::MAX)];
    let texts: Vec<String> = vec![
        "a".into(),
        "b,c".into(),
        "{}".into(),
        "\"q\"".into(),
        String::new(),
    ];
    let none: Option<String> = None;
    let sql = "SELECT $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::text, $8::bytea, \
               $9::uuid, $10::timestamptz, $11::timestamptz, $12::int4[], $13::text[], $14::text, $15::\"char\", $16::oid";
    let statement = client.prepare(sql).await.expect("prepare");
    for (how, rows) in [
        (
            "unnamed statement",
            client
                .query(
                    sql,
                    &[
                        &i16::MIN,
                        &i32::MAX,
                        &i64::MIN,
                        &0.1f32,
                        &-0.0f64,
                        &true,
                        &text,
                        &bytes,
                        &id,
                        &at,
                        &before_epoch,
                        &ints,
                        &texts,
                        &none,
                        &(-7i8),
                        &4_000_000_000u32,
                    ],
                )
                .await,
        ),
        (
            "prepared statement",
            client
                .query(
                    &statement,
                    &[
                        &i16::MIN,
                        &i32::MAX,
                        &i64::MIN,
                        &0.1f32,
                        &-0.0f64,
                        &true,
                        &text,
                        &bytes,
                        &id,
                        &at,
                        &before_epoch,
                        &ints,
                        &texts,
                        &none,
                        &(-7i8),
                        &4_000_000_000u32,
                    ],
                )
                .await,
        ),
    ] {
        let rows = rows.unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_eq!(rows.len(), 1, "{how}");
        let row = &rows[0];
        assert_eq!(row.get::<_, i16>(0), i16::MIN, "{how}");
        assert_eq!(row.get::<_, i32>(1), i32::MAX, "{how}");
        assert_eq!(row.get::<_, i64>(2), i64::MIN, "{how}");
        assert_eq!(row.get::<_, f32>(3).to_bits(), 0.1f32.to_bits(), "{how}");
        assert_eq!(row.get::<_, f64>(4).to_bits(), (-0.0f64).to_bits(), "{how}");
        assert!(row.get::<_, bool>(5), "{how}");
        assert_eq!(row.get::<_, String>(6), text, "{how}");
        assert!(row.get::<_, Vec<u8>>(7) == bytes, "{how}: bytea differs");
        assert_eq!(row.get::<_, uuid::Uuid>(8), id, "{how}");
        assert_eq!(row.get::<_, SystemTime>(9), at, "{how}");
        assert_eq!(row.get::<_, SystemTime>(10), before_epoch, "{how}");
        assert_eq!(row.get::<_, Vec<Option<i32>>>(11), ints, "{how}");
        assert_eq!(row.get::<_, Vec<String>>(12), texts, "{how}");
        assert_eq!(row.get::<_, Option<String>>(13), None, "{how}");
        assert_eq!(row.get::<_, i8>(14), -7, "{how}");
        assert_eq!(row.get::<_, u32>(15), 4_000_000_000, "{how}");
    }

    // The same statement executed many times, and float corner cases through one statement.
    let echo = client
        .prepare("SELECT $1::float8, $2::text")
        .await
        .expect("prepare");
    for (i, f) in [
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1.0 / 3.0,
        5e-324,
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("value {i}: {}", "x".repeat(i * 1000));
        let row = client.query_one(&echo, &[&f, &label]).await.expect("echo");
        assert_eq!(row.get::<_, f64>(0).to_bits(), f.to_bits());
        assert_eq!(row.get::<_, String>(1), label);
    }
    let nan: f64 = client
        .query_one("SELECT 'NaN'::float8", &[])
        .await
        .expect("nan")
        .get(0);
    assert!(nan.is_nan());

    // Pipelining: several requests in flight on one connection, one of them failing; each gets its own
    // answer, in order, and the failure does not disturb the others.
    let (a, b, c, d, e) = tokio::join!(
        client.query_one("SELECT 1::int4 + $1", &[&1i32]),
        client.query("SELECT g FROM generate_series(1, 1000) g", &[]),
        client.query_one("SELECT 1 / $1::int4", &[&0i32]),
        client.simple_query("SELECT 'simple in the middle'"),
        client.query_one("SELECT $1::text || '!'", &[&"last"]),
    );
    assert_eq!(a.expect("a").get::<_, i32>(0), 2);
    assert_eq!(b.expect("b").len(), 1000);
    assert_eq!(sqlstate(&c.expect_err("division by zero")), "22012");
    let simple = d.expect("d");
    assert!(
        matches!(&simple[..], [SimpleQueryMessage::RowDescription(_), SimpleQueryMessage::Row(r), SimpleQueryMessage::CommandComplete(1)] if r.get(0) == Some("simple in the middle")),
        "simple query in a pipeline: {} messages",
        simple.len()
    );
    assert_eq!(e.expect("e").get::<_, String>(0), "last!");

    // A transaction rolled back through the extended protocol.
    let mut client = client;
    client
        .batch_execute("CREATE TABLE fidelity_tx (id int PRIMARY KEY)")
        .await
        .expect("create");
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO fidelity_tx VALUES ($1)", &[&1i32])
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    let count: i64 = client
        .query_one("SELECT count(*) FROM fidelity_tx", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
}

/// One row of the binary COPY test; floats compare by bits.
#[derive(Debug)]
struct CopyRow {
    id: i32,
    label: String,
    data: Vec<u8>,
    score: f64,
    at: SystemTime,
    tags: Vec<String>,
    maybe: Option<i64>,
}

impl PartialEq for CopyRow {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.label == other.label
            && self.data == other.data
            && self.score.to_bits() == other.score.to_bits()
            && self.at == other.at
            && self.tags == other.tags
            && self.maybe == other.maybe
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_in_and_copy_out_match_direct() {
    let tenant = onboard("bincopy").await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&tenant).await;
    client
        .batch_execute(
            "CREATE TABLE fidelity_bincopy (id int4 PRIMARY KEY, label text, data bytea, score float8, \
             at timestamptz, tags text[], maybe int8, n numeric)",
        )
        .await
        .expect("create");

    const ROWS: i32 = 5000;
    let types = [
        Type::INT4,
        Type::TEXT,
        Type::BYTEA,
        Type::FLOAT8,
        Type::TIMESTAMPTZ,
        Type::TEXT_ARRAY,
        Type::INT8,
    ];
    let copy_sql = "COPY fidelity_bincopy (id, label, data, score, at, tags, maybe) FROM STDIN (FORMAT binary)";
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut sent: Vec<CopyRow> = Vec::with_capacity(ROWS as usize);
    for id in 0..ROWS {
        // Mostly small values, every 500th one far larger than the relay's buffer.
        let len = if id % 500 == 0 {
            200_000
        } else {
            (rng.next() % 300) as usize
        };
        sent.push(CopyRow {
            id,
            label: format!("row {id} · Zürich 東京 \"q\" \\ \t|"),
            data: (0..len).map(|_| rng.next() as u8).collect(),
            score: f64::from_bits(rng.next() >> 2) * if id % 2 == 0 { 1.0 } else { -1.0 },
            at: UNIX_EPOCH
                + Duration::from_micros(1_600_000_000_000_000 + rng.next() % 100_000_000_000_000),
            tags: (0..(id % 4)).map(|t| format!("tag{t},\"{id}\"")).collect(),
            maybe: (id % 13 != 0).then(|| rng.next() as i64),
        });
    }
    let data_bytes: usize = sent.iter().map(|r| r.data.len()).sum();
    let sink = client.copy_in(copy_sql).await.expect("copy in");
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    for r in &sent {
        writer
            .as_mut()
            .write(&[&r.id, &r.label, &r.data, &r.score, &r.at, &r.tags, &r.maybe])
            .await
            .expect("write row");
    }
    let copied = writer.finish().await.expect("finish copy in");
    assert_eq!(copied, ROWS as u64);
    // What PostgreSQL stored, read directly: exactly what was sent.
    let schema = quote_ident(tenant.onboarded.schema.as_str());
    let stored: Vec<CopyRow> = superuser()
        .await
        .query(
            &format!(
                "SELECT id, label, data, score, at, tags, maybe FROM {schema}.fidelity_bincopy ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("read back directly")
        .iter()
        .map(|row| CopyRow {
            id: row.get(0),
            label: row.get(1),
            data: row.get(2),
            score: row.get(3),
            at: row.get(4),
            tags: row.get(5),
            maybe: row.get(6),
        })
        .collect();
    assert_eq!(stored.len(), sent.len());
    for (got, want) in stored.iter().zip(&sent) {
        assert!(
            got == want,
            "row {} stored differently from what was sent through COPY FROM STDIN (FORMAT binary)",
            want.id
        );
    }
    client
        .execute(
            "UPDATE fidelity_bincopy SET n = id / 7.0 + 0.000000000000000000001",
            &[],
        )
        .await
        .expect("update");

    // A COPY IN that the server rejects (duplicate key at CopyDone), and one the client abandons (CopyFail):
    // each ends with an error and leaves the connection usable.
    let sink = client.copy_in(copy_sql).await.expect("copy in");
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let none_i64: Option<i64> = None;
    let empty: Vec<String> = Vec::new();
    writer
        .as_mut()
        .write(&[
            &1i32,
            &"duplicate",
            &vec![1u8],
            &1.0f64,
            &SystemTime::now(),
            &empty,
            &none_i64,
        ])
        .await
        .expect("write");
    let err = writer.finish().await.expect_err("duplicate key");
    assert_eq!(sqlstate(&err), "23505");
    {
        let sink = client.copy_in(copy_sql).await.expect("copy in");
        let writer = BinaryCopyInWriter::new(sink, &types);
        tokio::pin!(writer);
        writer
            .as_mut()
            .write(&[
                &-1i32,
                &"abandoned",
                &vec![2u8],
                &2.0f64,
                &SystemTime::now(),
                &empty,
                &none_i64,
            ])
            .await
            .expect("write");
        // Dropped without finish: tokio-postgres sends CopyFail.
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM fidelity_bincopy", &[])
        .await
        .expect("usable after failed copies")
        .get(0);
    assert_eq!(count, ROWS as i64);

    // COPY OUT, binary and text, through pgtenant as the tenant and directly as the superuser: same bytes.
    let c = &cluster().cluster;
    let token = tenant.token();
    for format in ["binary", "text", "csv"] {
        let tenant_sql = format!(
            "COPY (SELECT * FROM fidelity_bincopy ORDER BY id) TO STDOUT (FORMAT {format})"
        );
        let direct_sql = format!(
            "COPY (SELECT * FROM {schema}.fidelity_bincopy ORDER BY id) TO STDOUT (FORMAT {format})"
        );
        let through = raw_copy_out(proxy.addr.port(), &tenant.email, &token, &tenant_sql).await;
        let direct =
            raw_copy_out(c.port(), c.superuser(), c.superuser_password(), &direct_sql).await;
        assert_eq!(through.tag, format!("COPY {ROWS}"), "{format}");
        assert_eq!(through.tag, direct.tag, "{format}");
        assert_eq!(
            through.response, direct.response,
            "{format}: CopyOutResponse"
        );
        assert_eq!(
            through.copy_data_messages, direct.copy_data_messages,
            "{format}: number of CopyData messages"
        );
        assert!(
            through.data == direct.data,
            "{format} COPY OUT through pgtenant differs from the direct one: {}",
            first_difference(&through.data, &direct.data)
        );
        assert!(
            through.data.len() > data_bytes,
            "{format}: {} bytes",
            through.data.len()
        );
        if format == "binary" {
            assert!(
                through.data.starts_with(b"PGCOPY\n\xff\r\n\0"),
                "binary COPY signature"
            );
            assert_eq!(through.response[0], 1, "overall binary format");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 5. Large values and many rows
// ---------------------------------------------------------------------------------------------------------

/// About `bytes` bytes of varied text: printable ASCII, quotes, backslashes, line breaks and multi-byte UTF-8.
fn big_text(bytes: usize) -> String {
    let mut rng = Xorshift(0x0123_4567_89ab_cdef);
    let mut s = String::with_capacity(bytes + 8);
    while s.len() < bytes {
        let r = rng.next();
        for b in r.to_le_bytes() {
            s.push((b' ' + b % 95) as char);
        }
        match r % 97 {
            0 => s.push_str("Zürich"),
            1 => s.push('東'),
            2 => s.push('\n'),
            3 => s.push_str("\\'\""),
            _ => {}
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_value_and_many_rows() {
    let tenant = onboard("large").await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&tenant).await;
    let big = big_text(20 * 1024 * 1024);
    client
        .batch_execute("CREATE TABLE fidelity_big (id int PRIMARY KEY, v text)")
        .await
        .expect("create");
    let inserted = client
        .execute("INSERT INTO fidelity_big VALUES (1, $1)", &[&big])
        .await
        .expect("insert 20 MB through a Bind message");
    assert_eq!(inserted, 1);

    // Back through the extended protocol (binary DataRow) ...
    let row = client
        .query_one(
            "SELECT v, octet_length(v), md5(v) FROM fidelity_big WHERE id = 1",
            &[],
        )
        .await
        .expect("select 20 MB");
    let back: String = row.get(0);
    assert_eq!(row.get::<_, i32>(1) as usize, big.len());
    assert!(
        back == big,
        "20 MB value differs: {}",
        first_difference(back.as_bytes(), big.as_bytes())
    );
    // ... and through the simple protocol (text DataRow).
    let messages = client
        .simple_query("SELECT v FROM fidelity_big WHERE id = 1")
        .await
        .expect("simple select 20 MB");
    let simple_back = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    assert!(
        simple_back == big,
        "20 MB value differs through the simple protocol"
    );
    // What PostgreSQL stored is what was sent.
    let md5_through: String = row.get(2);
    let md5_direct: String = superuser()
        .await
        .query_one(
            &format!(
                "SELECT md5(v) FROM {}.fidelity_big WHERE id = 1",
                quote_ident(tenant.onboarded.schema.as_str())
            ),
            &[],
        )
        .await
        .expect("md5 directly")
        .get(0);
    assert_eq!(md5_through, md5_direct);
    drop((back, simple_back, messages));

    // 200k rows, binary (extended protocol) and text (simple protocol).
    let rows = client
        .query(
            "SELECT g, repeat(chr(65 + g % 26), g % 50) FROM generate_series(1, 200000) g ORDER BY g",
            &[],
        )
        .await
        .expect("200k rows");
    assert_eq!(rows.len(), 200_000);
    for (i, row) in rows.iter().enumerate() {
        let g: i32 = row.get(0);
        assert_eq!(g as usize, i + 1);
        let s: &str = row.get(1);
        assert_eq!(s.len(), (g % 50) as usize);
    }
    drop(rows);
    let messages = client
        .simple_query("SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
        .await
        .expect("200k rows, simple");
    let count = messages
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(count, 200_000);
    assert!(matches!(
        messages.last(),
        Some(SimpleQueryMessage::CommandComplete(200_000))
    ));
    let after: i64 = client
        .query_one("SELECT count(*) FROM fidelity_big", &[])
        .await
        .expect("usable")
        .get(0);
    assert_eq!(after, 1);
}

// ---------------------------------------------------------------------------------------------------------
// 6. Cancel through tokio-postgres
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_the_running_query_only() {
    let tenant = onboard("cancel").await;
    let proxy = TestProxy::start().await;
    let client = proxy.connect(&tenant).await;
    let other = proxy.connect(&tenant).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let token = client.cancel_token();

    // The other session's key (its backend is idle) cancels nothing here.
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let result = client.query("SELECT pg_sleep(1.5)", &[]).await;
        (result, started.elapsed(), client)
    });
    wait_until_active(pid, "pg_sleep(1.5)").await;
    other
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("send cancel with the other session's key");
    let (result, elapsed, client) = sleeper.await.expect("join");
    result.expect("a cancel with another session's key must not cancel this query");
    assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");

    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let result = client.query("SELECT pg_sleep(30)", &[]).await;
        (result, started.elapsed(), client)
    });
    wait_until_active(pid, "pg_sleep(30)").await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let (result, elapsed, client) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancelled query returns within seconds")
        .expect("join");
    let err = result.expect_err("pg_sleep(30) is cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let row = client
        .query_one("SELECT 40 + $1::int4, pg_backend_pid()", &[&2i32])
        .await
        .expect("usable after cancel");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(
        row.get::<_, i32>(1),
        pid,
        "same server session after the cancel"
    );
    let still: i32 = other
        .query_one("SELECT 7", &[])
        .await
        .expect("other session unaffected")
        .get(0);
    assert_eq!(still, 7);
}

// ---------------------------------------------------------------------------------------------------------
// 7. Protocol version negotiation
// ---------------------------------------------------------------------------------------------------------

/// Sends a StartupMessage of protocol 3.`minor` with `params` and returns the first message the server
/// answers with, and the open connection.
async fn raw_startup(
    port: u16,
    minor: u16,
    params: &[(&str, &str)],
) -> (u8, BytesMut, tokio::net::TcpStream) {
    use bytes::BufMut;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut body = BytesMut::new();
    body.put_u16(3);
    body.put_u16(minor);
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.put_u8(0);
        body.extend_from_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut packet = BytesMut::new();
    packet.put_i32(body.len() as i32 + 4);
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.expect("send startup");
    let (tag, body) = tokio::time::timeout(
        Duration::from_secs(10),
        pgtenant::protocol::read_message(&mut stream, 1 << 16),
    )
    .await
    .expect("answer to the startup packet")
    .expect("read");
    (tag, body, stream)
}

/// A client asking for a newer minor protocol version (libpq 18 with `max_protocol_version=3.2` or
/// `latest`), or sending `_pq_.` protocol options, gets a NegotiateProtocolVersion. PostgreSQL puts the full
/// protocol number it speaks there (`PG_PROTOCOL_LATEST`, 3 << 16 for 3.0), and libpq refuses anything below
/// 3.0 ("server requested downgrade to pre-3.0 protocol version"). pgtenant must send the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_protocol_version_matches_postgres() {
    let tenant = onboard("protover").await;
    let proxy = TestProxy::start().await;
    let c = &cluster().cluster;
    for (label, minor, extra) in [
        ("protocol 3.2 requested", 2u16, None),
        (
            "protocol 3.0 with a _pq_ option",
            0u16,
            Some(("_pq_.fidelity_test", "on")),
        ),
    ] {
        let mut direct_params = vec![("user", c.superuser()), ("database", DATABASE)];
        let mut proxy_params = vec![("user", tenant.email.as_str()), ("database", DATABASE)];
        if let Some(option) = extra {
            direct_params.push(option);
            proxy_params.push(option);
        }
        let (direct_tag, direct_body, _direct) = raw_startup(c.port(), minor, &direct_params).await;
        assert_eq!(
            direct_tag, b'v',
            "{label}: PostgreSQL answers with NegotiateProtocolVersion"
        );
        assert_eq!(
            &direct_body[..4],
            &[0, 3, 0, 0],
            "{label}: PostgreSQL 15 offers protocol 3.0 as (3 << 16) | 0"
        );
        let (tag, body, mut stream) = raw_startup(proxy.addr.port(), minor, &proxy_params).await;
        assert_eq!(
            tag, b'v',
            "{label}: pgtenant answers with NegotiateProtocolVersion"
        );
        assert_eq!(
            body, direct_body,
            "{label}: NegotiateProtocolVersion body through pgtenant {:02x?} differs from PostgreSQL's {:02x?}",
            &body[..], &direct_body[..]
        );

        // The login then goes on as usual.
        let (tag, auth) = pgtenant::protocol::read_message(&mut stream, 1 << 16)
            .await
            .expect("authentication request");
        assert_eq!(
            (tag, &auth[..]),
            (b'R', &[0u8, 0, 0, 3][..]),
            "{label}: cleartext password request"
        );
        let mut out = BytesMut::new();
        pgtenant::protocol::write::password_message(&mut out, &tenant.token());
        pgtenant::protocol::write::query(&mut out, "SELECT 6 * 7");
        stream.write_all(&out).await.expect("password and query");
        let mut answer = None;
        loop {
            let (tag, body) = pgtenant::protocol::read_message(&mut stream, 1 << 20)
                .await
                .expect("login and query");
            match tag {
                b'E' => panic!("{label}: {}", pgtenant::protocol::ErrorFields::parse(&body)),
                b'D' => answer = Some(String::from_utf8_lossy(&body[6..]).into_owned()),
                b'C' => break,
                _ => {}
            }
        }
        assert_eq!(answer.as_deref(), Some("42"), "{label}");
    }
}
