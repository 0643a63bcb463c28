//! A dev cluster whose secrets are gone. The cluster of a project under a private folder lives outside it
//! (`cluster_home`), keyed by the project's path, while its secrets live in the project's `.pgtenant/`.
//! Delete the clone and clone again at the same path (or delete `.pgtenant/dev-secrets.toml`), and the next
//! run makes new secrets but finds the old cluster, whose superuser password is the old one: every
//! connection failed with "password authentication failed". Such a cluster cannot be used (its roles'
//! passwords came from the lost secrets), and a dev cluster is a throwaway one: it is removed, and a new one
//! is made. One that a postmaster still runs on is left alone, with an error saying so.
//!
//! Which secrets made a cluster is recorded beside it ([`record`]: a keyed hash of the superuser password,
//! in `secrets-id` next to the data directory). A cluster with no record (made before there were records)
//! counts as made with other secrets when the secrets were just made.

use super::{io_err, DevError};
use aws_lc_rs::digest;
use std::path::{Path, PathBuf};

const RECORD_FILE_NAME: &str = "secrets-id";

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.with_file_name(RECORD_FILE_NAME)
}

/// What identifies the secrets, without revealing the password (a hash of a random 256-bit secret).
fn fingerprint(superuser_password: &str) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"pgtenant dev cluster secrets\0");
    context.update(superuser_password.as_bytes());
    hex::encode(&context.finish().as_ref()[..16])
}

/// Notes that the cluster in `data_dir` was made with (or is used with) these secrets.
pub fn record(data_dir: &Path, superuser_password: &str) -> Result<(), DevError> {
    let path = record_path(data_dir);
    std::fs::write(&path, fingerprint(superuser_password)).map_err(io_err("cannot write", &path))
}

/// Removes the cluster in `data_dir` if it was made with other secrets than `superuser_password`'s (by its
/// record; with no record, when the secrets were just made). Returns whether it removed one.
pub fn remove_if_orphaned(
    data_dir: &Path,
    superuser_password: &str,
    secrets_are_new: bool,
) -> Result<bool, DevError> {
    if !data_dir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    let orphaned = match std::fs::read_to_string(record_path(data_dir)) {
        Ok(recorded) => recorded.trim() != fingerprint(superuser_password),
        Err(_) => secrets_are_new,
    };
    if !orphaned {
        return Ok(false);
    }
    if data_dir.join("postmaster.pid").exists() {
        return Err(DevError::UnsafeClusterHome {
            path: data_dir.to_owned(),
            reason: "it was made with secrets that are gone (not those of .pgtenant/dev-secrets.toml) and a \
                     postmaster may still run on it: stop it (pg_ctl stop -D <that folder>) or remove the \
                     folder, then run pgtenant dev again"
                .into(),
        });
    }
    std::fs::remove_dir_all(data_dir).map_err(io_err("cannot remove", data_dir))?;
    let _ = std::fs::remove_file(record_path(data_dir));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cluster(root: &Path) -> std::path::PathBuf {
        let data_dir = root.join("pgdata");
        std::fs::create_dir_all(data_dir.join("base")).expect("data dir");
        std::fs::write(data_dir.join("PG_VERSION"), "15\n").expect("PG_VERSION");
        data_dir
    }

    fn temp_root(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "pgtenant-orphaned-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root).expect("temp root");
        root
    }

    #[test]
    fn an_unrecorded_cluster_is_removed_only_when_the_secrets_are_new() {
        let root = temp_root("unrecorded");
        let data_dir = fake_cluster(&root);
        assert!(!remove_if_orphaned(&data_dir, "a", false).expect("kept"));
        assert!(
            data_dir.join("PG_VERSION").exists(),
            "a cluster with its secrets was removed"
        );
        assert!(remove_if_orphaned(&data_dir, "a", true).expect("removed"));
        assert!(!data_dir.exists(), "the orphaned cluster is still there");
        // Nothing to remove: a first run.
        assert!(!remove_if_orphaned(&data_dir, "a", true).expect("nothing there"));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_recorded_cluster_is_kept_with_its_secrets_and_removed_with_others() {
        let root = temp_root("recorded");
        let data_dir = fake_cluster(&root);
        record(&data_dir, "old").expect("record");
        // New secrets that match the record (a dev-secrets.toml restored): kept.
        assert!(!remove_if_orphaned(&data_dir, "old", true).expect("kept"));
        // Secrets made by an earlier failed run, not new any more: still not the cluster's.
        assert!(remove_if_orphaned(&data_dir, "new", false).expect("removed"));
        assert!(!data_dir.exists());
        assert!(
            !record_path(&data_dir).exists(),
            "the record outlived its cluster"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn an_orphaned_cluster_with_a_postmaster_is_left_alone_with_an_error() {
        let root = temp_root("running");
        let data_dir = fake_cluster(&root);
        std::fs::write(data_dir.join("postmaster.pid"), "12345\n").expect("pid file");
        let refused = remove_if_orphaned(&data_dir, "a", true).expect_err("refused");
        assert!(refused.to_string().contains("postmaster"), "{refused}");
        assert!(data_dir.join("PG_VERSION").exists());
        std::fs::remove_dir_all(&root).ok();
    }
}
