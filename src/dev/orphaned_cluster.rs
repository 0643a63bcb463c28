//! A dev cluster whose secrets are gone. The cluster of a project under a private folder lives outside it
//! (`cluster_home`), keyed by the project's path, while its secrets live in the project's `.pgtenant/`.
//! Delete the clone and clone again at the same path (or delete `.pgtenant/dev-secrets.toml`), and the next
//! run makes new secrets but finds the old cluster, whose superuser password is the old one: every
//! connection failed with "password authentication failed". Such a cluster cannot be used (its roles'
//! passwords came from the lost secrets), and a dev cluster is a throwaway one: it is removed, and a new one
//! is made. One that a postmaster still runs on is left alone, with an error saying so.

use super::{io_err, DevError};
use std::path::Path;

/// Removes the cluster in `data_dir` if the secrets were just made (`secrets_are_new`) and it was
/// initialised with other ones. Returns whether it removed one.
pub fn remove_if_orphaned(data_dir: &Path, secrets_are_new: bool) -> Result<bool, DevError> {
    if !secrets_are_new || !data_dir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    if data_dir.join("postmaster.pid").exists() {
        return Err(DevError::UnsafeClusterHome {
            path: data_dir.to_owned(),
            reason: "it was made with secrets that are gone (.pgtenant/dev-secrets.toml is new) and a \
                     postmaster may still run on it: stop it (pg_ctl stop -D <that folder>) or remove the \
                     folder, then run pgtenant dev again"
                .into(),
        });
    }
    std::fs::remove_dir_all(data_dir).map_err(io_err("cannot remove", data_dir))?;
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
    fn a_cluster_made_with_lost_secrets_is_removed_and_one_with_its_secrets_kept() {
        let root = temp_root("kept");
        let data_dir = fake_cluster(&root);
        assert!(!remove_if_orphaned(&data_dir, false).expect("kept"));
        assert!(
            data_dir.join("PG_VERSION").exists(),
            "a cluster with its secrets was removed"
        );
        assert!(remove_if_orphaned(&data_dir, true).expect("removed"));
        assert!(!data_dir.exists(), "the orphaned cluster is still there");
        // Nothing to remove: a first run.
        assert!(!remove_if_orphaned(&data_dir, true).expect("nothing there"));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn an_orphaned_cluster_with_a_postmaster_is_left_alone_with_an_error() {
        let root = temp_root("running");
        let data_dir = fake_cluster(&root);
        std::fs::write(data_dir.join("postmaster.pid"), "12345\n").expect("pid file");
        let refused = remove_if_orphaned(&data_dir, true).expect_err("refused");
        assert!(refused.to_string().contains("postmaster"), "{refused}");
        assert!(data_dir.join("PG_VERSION").exists());
        std::fs::remove_dir_all(&root).ok();
    }
}
