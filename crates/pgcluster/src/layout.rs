//! The paths a data directory implies: its log file beside it and its socket directory (beside it, or a
//! short one under the temp dir when that path would not fit a Unix socket address).

use super::error::{io_err, ClusterError};
use super::SUN_PATH_MAX;
use std::path::{Path, PathBuf};

/// Paths derived from the data directory.
pub(super) struct Layout {
    pub(super) data_dir: PathBuf,
    pub(super) log_file: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) owns_socket_dir: bool,
}

pub(super) fn layout(data_dir: &Path) -> Result<Layout, ClusterError> {
    let data_dir = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| io_err("could not read current directory for", data_dir, e))?;
        cwd.join(data_dir)
    };
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Err(ClusterError::InvalidSpec(format!(
            "data_dir {} has no parent directory",
            data_dir.display()
        )));
    };
    let name = name.to_string_lossy().into_owned();
    let log_file = parent.join(format!("{name}.log"));
    let beside = parent.join(format!("{name}.sock"));
    // "<dir>/.s.PGSQL.65535.lock" must fit in sun_path.
    let fits = |dir: &Path| dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() < SUN_PATH_MAX;
    let (socket_dir, owns_socket_dir) = if fits(&beside) {
        (beside, false)
    } else {
        let unique = format!(
            "pgtenant-sock-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut dir = std::env::temp_dir().join(&unique);
        if !fits(&dir) {
            dir = PathBuf::from("/tmp").join(&unique);
        }
        (dir, true)
    };
    Ok(Layout {
        data_dir,
        log_file,
        socket_dir,
        owns_socket_dir,
    })
}
