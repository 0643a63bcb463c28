//! Where `pgtenant dev` keeps its cluster: the data directory, its log and its socket directory.
//!
//! Normally beside the config, in `<state dir>/pgdata` (`.pgtenant/pgdata`). When the process is root,
//! PostgreSQL runs as the OS user `postgres`, which must reach all three; a project under a private folder
//! (root's home is mode 0700) is out of its reach. Then the cluster lives in
//! `/var/tmp/pgtenant-dev/<project folder name>-<hash>/pgdata`, where the hash is the first 12 hex digits of
//! the SHA-256 of the state dir's canonical path: every run from the same folder finds the same cluster, and
//! two projects never share one. The config and the secrets stay in the state dir (root reads them).

use super::{io_err, DevError};

use aws_lc_rs::digest;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The folder holding every derived cluster folder.
pub const DERIVED_BASE: &str = "/var/tmp/pgtenant-dev";

/// The name of the data directory inside a cluster home.
const DATA_DIR_NAME: &str = "pgdata";
/// A file in a derived folder naming the state dir it belongs to, for people looking at `DERIVED_BASE`.
const PROJECT_FILE_NAME: &str = "project-path";
/// Hex digits of the hash in a derived folder's name.
const HASH_HEX_DIGITS: usize = 12;
/// Characters of the project folder's name kept in a derived folder's name.
const LABEL_MAX_CHARS: usize = 32;

/// The folder a dev cluster lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterHome {
    /// Holds `pgdata/`, `pgdata.log` and `pgdata.sock/`.
    pub dir: PathBuf,
    /// True when `dir` is a folder under `DERIVED_BASE` because the state dir is out of the postgres user's reach.
    pub derived: bool,
}

impl ClusterHome {
    /// The cluster home for the state dir `state_dir` (which must exist): the state dir itself when the
    /// postgres OS user can reach it, else its derived folder, created if missing.
    pub fn choose(state_dir: &Path) -> Result<ClusterHome, DevError> {
        if pgcluster::postgres_can_reach(state_dir)? {
            return Ok(ClusterHome {
                dir: state_dir.to_path_buf(),
                derived: false,
            });
        }
        let canonical = canonical(state_dir)?;
        let dir = derived_dir(&canonical);
        prepare_derived(&dir, &canonical)?;
        tracing::debug!(
            state_dir = %canonical.display(),
            cluster_dir = %dir.display(),
            "state dir out of reach of the postgres OS user; using a derived cluster folder"
        );
        Ok(ClusterHome { dir, derived: true })
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join(DATA_DIR_NAME)
    }
}

/// The derived folder for the state dir `state_dir` (which must exist), whether or not it is used.
pub fn derived_dir_for(state_dir: &Path) -> Result<PathBuf, DevError> {
    Ok(derived_dir(&canonical(state_dir)?))
}

fn canonical(path: &Path) -> Result<PathBuf, DevError> {
    fs::canonicalize(path).map_err(io_err("cannot resolve", path))
}

/// `DERIVED_BASE/<label>-<hash>` for a canonical state dir.
fn derived_dir(canonical: &Path) -> PathBuf {
    let hash = digest::digest(&digest::SHA256, canonical.as_os_str().as_encoded_bytes());
    let mut name = hex::encode(hash.as_ref());
    name.truncate(HASH_HEX_DIGITS);
    if let Some(label) = project_label(canonical) {
        name = format!("{label}-{name}");
    }
    Path::new(DERIVED_BASE).join(name)
}

/// The project folder's name (the state dir's parent), reduced to `[A-Za-z0-9._-]`; `None` at `/`.
fn project_label(canonical: &Path) -> Option<String> {
    let name = canonical.parent()?.file_name()?.to_string_lossy();
    let label: String = name
        .chars()
        .take(LABEL_MAX_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(label.trim_start_matches('.').to_string()).filter(|l| !l.is_empty())
}

/// Creates `DERIVED_BASE` and `dir` (mode 0755 whatever the umask, so the postgres user can traverse them),
/// refuses a `DERIVED_BASE` someone else could write into, and records the state dir in `dir`.
fn prepare_derived(dir: &Path, state_dir: &Path) -> Result<(), DevError> {
    let base = Path::new(DERIVED_BASE);
    make_traversable_dir(base)?;
    check_private_to_us(base)?;
    make_traversable_dir(dir)?;
    check_private_to_us(dir)?;
    let record = dir.join(PROJECT_FILE_NAME);
    let text = format!("{}\n", state_dir.display());
    fs::write(&record, text).map_err(io_err("cannot write", &record))
}

fn make_traversable_dir(dir: &Path) -> Result<(), DevError> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot set the mode of", dir)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("cannot create", dir)(e)),
    }
}

/// `dir` must be a real directory (not a symlink), owned by the current user, writable by no one else: a
/// folder in a world-writable place that another user prepared could hand them the cluster.
fn check_private_to_us(dir: &Path) -> Result<(), DevError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err("cannot read", dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let reason = if !meta.file_type().is_dir() {
        Some("it is not a directory".to_string())
    } else if meta.uid() != euid {
        Some(format!("it is owned by uid {}, not {euid}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DevError::UnsafeClusterHome {
            path: dir.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_name_is_stable_and_per_project() {
        let a = derived_dir(Path::new("/root/work/my project/.pgtenant"));
        assert_eq!(a, derived_dir(Path::new("/root/work/my project/.pgtenant")));
        assert_eq!(a.parent(), Some(Path::new(DERIVED_BASE)));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("my_project-"), "{name}");
        assert_eq!(name.len(), "my_project-".len() + HASH_HEX_DIGITS, "{name}");
        assert_ne!(
            a,
            derived_dir(Path::new("/root/other/my project/.pgtenant"))
        );
    }

    #[test]
    fn labels() {
        assert_eq!(project_label(Path::new("/.pgtenant")), None);
        assert_eq!(
            project_label(Path::new("/x/.hidden/s")),
            Some("hidden".into())
        );
        assert_eq!(project_label(Path::new("/x/../s")), None);
        let long = format!("/{}/s", "é".repeat(40));
        assert_eq!(project_label(Path::new(&long)), Some("_".repeat(32)));
    }
}
