//! Versioned SQL migrations: `shared-migrations/` for the shared schema, `tenant-migrations/` for every
//! tenant schema. Files are named `V<number>__<name>.sql` (or `V<number>_<name>.sql`), ordered by number;
//! each applied file is recorded with its SHA-256 checksum, and an applied file whose checksum changed is an
//! error.
//!
//! - this file: loading migration folders, and applying `shared-migrations/` to the shared schema;
//! - [`split`]: a file cut into statements;
//! - fanning `tenant-migrations/` out over every tenant schema, with history, locks, per-tenant failure
//!   isolation, resume, dry run, status and repair, is [`crate::fanout`]'s job.

pub mod split;

use aws_lc_rs::digest;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
    /// The file asked to run outside a transaction (`-- pgtenant: no-transaction` in its leading comments),
    /// for statements such as `CREATE INDEX CONCURRENTLY`.
    pub no_transaction: bool,
    /// The file's statements, each run on its own (so errors name their line).
    pub statements: Vec<split::Statement>,
}

/// The header comment that takes a migration out of its tenant's transaction.
pub const NO_TRANSACTION_HEADER: &str = "pgtenant: no-transaction";

/// True if the comment lines at the top of `sql` hold the no-transaction header.
fn wants_no_transaction(sql: &str) -> bool {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .any(|l| l.trim_start_matches('-').trim() == NO_TRANSACTION_HEADER)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read migrations folder {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read migration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("migration file {0} is not named V<number>__<name>.sql")]
    BadName(PathBuf),
    #[error("migration file {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("migrations {first} and {second} have the same version number")]
    DuplicateVersion { first: PathBuf, second: PathBuf },
    #[error("applied migration V{version} ({name}) was changed since it was applied (checksum {applied} in history, {current} on disk)")]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration V{version} is recorded as applied but its file is missing")]
    MissingFile { version: i32 },
    #[error("applied migration V{version} ({name}) was changed since it was applied (checksum on disk {current}); tenants affected: {tenants}. Restore the file, or accept the new checksum on purpose with `pgtenant migrate repair`")]
    TenantChecksumMismatch {
        version: i32,
        name: String,
        current: String,
        tenants: String,
    },
    #[error("migration V{version} is recorded as applied for tenants ({tenants}) but its file is missing")]
    TenantMissingFile { version: i32, tenants: String },
    #[error("V{pending} ({name}) is not applied but a later version V{applied} is, for tenants {tenants}: a new file was added below an applied one")]
    OutOfOrder {
        pending: i32,
        name: String,
        applied: i32,
        tenants: String,
    },
    #[error("another fan-out migration holds the run lock")]
    RunLocked,
    #[error("admin database connection unavailable: {0}")]
    AdminPool(String),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream_tls::UpstreamTlsError),
    #[error("migration {file} failed: {source}")]
    Failed {
        file: String,
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Reads and orders the migrations of a folder. A missing folder has no migrations.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(MigrateError::ReadDir {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut migrations: Vec<Migration> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| MigrateError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !file_name.ends_with(".sql") {
            continue;
        }
        let (version, name) =
            parse_file_name(file_name).ok_or_else(|| MigrateError::BadName(path.clone()))?;
        let bytes = std::fs::read(&path).map_err(|source| MigrateError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let checksum = hex::encode(digest::digest(&digest::SHA256, &bytes).as_ref());
        let sql = String::from_utf8(bytes).map_err(|_| MigrateError::NotUtf8(path.clone()))?;
        migrations.push(Migration {
            version,
            name,
            path,
            no_transaction: wants_no_transaction(&sql),
            statements: split::split(&sql),
            sql,
            checksum,
        });
    }
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion {
                first: pair[0].path.clone(),
                second: pair[1].path.clone(),
            });
        }
    }
    Ok(migrations)
}

/// `V001__initial_schema.sql` → (1, "initial_schema"); the single-underscore form too.
fn parse_file_name(file_name: &str) -> Option<(i32, String)> {
    let stem = file_name.strip_suffix(".sql")?;
    let rest = stem.strip_prefix('V').or_else(|| stem.strip_prefix('v'))?;
    let digits_end = rest.find(|c: char| !c.is_ascii_digit())?;
    let version: i32 = rest[..digits_end].parse().ok()?;
    let name = rest[digits_end..]
        .strip_prefix("__")
        .or_else(|| rest[digits_end..].strip_prefix('_'))?;
    if name.is_empty() {
        return None;
    }
    Some((version, name.to_string()))
}

/// Key of the advisory lock held while shared migrations run.
const SHARED_MIGRATIONS_LOCK: i64 = 0x7067_7465_6e61_0001;

/// Applies pending shared migrations, each in its own transaction with its history row, under an advisory
/// lock so that two pgtenant processes starting at once do not race. Returns the versions applied.
pub async fn apply_shared(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<Vec<i32>, MigrateError> {
    let migrations = load_dir(dir)?;
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS pgtenant;
             REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC;
             CREATE TABLE IF NOT EXISTS pgtenant.shared_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 duration_ms integer NOT NULL
             );",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SHARED_MIGRATIONS_LOCK])
        .await?;
    let result = apply_shared_locked(client, &migrations).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SHARED_MIGRATIONS_LOCK])
        .await?;
    result
}

async fn apply_shared_locked(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    let applied = client
        .query(
            "SELECT version, checksum FROM pgtenant.shared_migrations ORDER BY version",
            &[],
        )
        .await?;
    for row in &applied {
        let version: i32 = row.get(0);
        let checksum: String = row.get(1);
        match migrations.iter().find(|m| m.version == version) {
            Some(m) if m.checksum != checksum => {
                return Err(MigrateError::ChecksumMismatch {
                    version,
                    name: m.name.clone(),
                    applied: checksum,
                    current: m.checksum.clone(),
                })
            }
            Some(_) => {}
            None => return Err(MigrateError::MissingFile { version }),
        }
    }
    let mut done = Vec::new();
    for m in migrations {
        if applied.iter().any(|r| r.get::<_, i32>(0) == m.version) {
            continue;
        }
        let started = Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute(&m.sql)
            .await
            .map_err(|source| MigrateError::Failed {
                file: m.path.display().to_string(),
                source,
            })?;
        let ms = started.elapsed().as_millis() as i32;
        tx.execute(
            "INSERT INTO pgtenant.shared_migrations (version, name, checksum, duration_ms) VALUES ($1, $2, $3, $4)",
            &[&m.version, &m.name, &m.checksum, &ms],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = %m.name, duration_ms = ms, "applied shared migration");
        done.push(m.version);
    }
    Ok(done)
}

/// Accepts the checksums on disk for applied shared migrations. Returns the rows changed.
pub async fn repair_shared(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<u64, MigrateError> {
    let mut changed = 0;
    for m in load_dir(dir)? {
        changed += client
            .execute(
                "UPDATE pgtenant.shared_migrations SET checksum = $2 WHERE version = $1 AND checksum <> $2",
                &[&m.version, &m.checksum],
            )
            .await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_transaction_header_only_in_leading_comments() {
        assert!(wants_no_transaction(
            "-- pgtenant: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);"
        ));
        assert!(wants_no_transaction(
            "-- builds an index\n\n--   pgtenant: no-transaction\nSELECT 1;"
        ));
        assert!(!wants_no_transaction(
            "SELECT 1;\n-- pgtenant: no-transaction"
        ));
        assert!(!wants_no_transaction(
            "-- pgtenant: no-transactions please\nSELECT 1;"
        ));
    }

    #[test]
    fn file_names_in_both_forms() {
        assert_eq!(
            parse_file_name("V001__initial_schema.sql"),
            Some((1, "initial_schema".into()))
        );
        assert_eq!(
            parse_file_name("V12_add_col.sql"),
            Some((12, "add_col".into()))
        );
        assert_eq!(parse_file_name("V1.sql"), None);
        assert_eq!(parse_file_name("001__x.sql"), None);
        assert_eq!(parse_file_name("V__x.sql"), None);
    }

    #[test]
    fn duplicate_versions_are_an_error_before_anything_runs() {
        let dir = std::env::temp_dir().join(format!("pgtenant-mig-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("V001__a.sql"), "select 1").expect("write");
        std::fs::write(dir.join("V1_b.sql"), "select 2").expect("write");
        let err = load_dir(&dir);
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(err, Err(MigrateError::DuplicateVersion { .. })));
    }

    #[test]
    fn shipped_migrations_load_in_order() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["shared-migrations", "tenant-migrations"] {
            let loaded = load_dir(&root.join(dir)).expect("loads");
            assert!(!loaded.is_empty(), "{dir} has migrations");
            assert_eq!(loaded[0].version, 1);
            assert_eq!(loaded[0].checksum.len(), 64);
        }
    }
}
