//! The exit watchdog: a detached shell that stops the cluster (and removes its directory) once the process
//! that started it is gone, even when `Drop` never runs. Its own file: the shell script it runs is the
//! subtle part.

use super::cluster::Cluster;
use super::command::{shell_quote, shell_quote_path};
use super::error::ClusterError;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

impl Cluster {
    /// Spawns a detached watchdog (`sh`, in its own session, stdio closed) that waits for the current process
    /// to exit, then runs `pg_ctl stop -m immediate` (as the postgres OS user via `runuser` when root; falling
    /// back to SIGQUIT to the postmaster named in `postmaster.pid`), then removes `remove_dir` if given (and a
    /// fallback socket dir). Works even if `Drop` never runs (a cluster kept in a static). Each call spawns one
    /// more watchdog; stopping an already stopped cluster is harmless.
    pub fn stop_when_process_exits(&self, remove_dir: Option<&Path>) -> Result<(), ClusterError> {
        self.spawn_watchdog(std::process::id(), remove_dir)
    }

    fn watchdog_script(
        &self,
        watched_pid: u32,
        remove_dir: Option<&Path>,
    ) -> Result<String, ClusterError> {
        let data = shell_quote_path(&self.data_dir);
        let pg_ctl = shell_quote_path(&self.bins.path("pg_ctl"));
        let as_user = match &self.user {
            Some(user) => format!("runuser -u {} -- ", shell_quote(&user.name)),
            None => String::new(),
        };
        let mut script = format!(
            "while kill -0 {watched_pid} 2>/dev/null; do sleep 1; done\n\
             cd /\n\
             {as_user}{pg_ctl} stop -D {data} -m immediate -w -t 30 >/dev/null 2>&1\n\
             if [ -f {data}/postmaster.pid ]; then\n\
             \x20 p=$(head -n 1 {data}/postmaster.pid)\n\
             \x20 case \"$(cat /proc/$p/comm 2>/dev/null)\" in postgres|postmaster) kill -QUIT \"$p\";; esac\n\
             \x20 i=0; while [ $i -lt 30 ] && kill -0 \"$p\" 2>/dev/null; do sleep 1; i=$((i+1)); done\n\
             fi\n"
        );
        let mut removals: Vec<&Path> = Vec::new();
        if let Some(dir) = remove_dir {
            let dir_ok = dir.is_absolute() && dir.components().count() >= 3;
            if !dir_ok {
                return Err(ClusterError::InvalidSpec(format!(
                    "refusing to remove {} at exit: need an absolute path at least two levels deep",
                    dir.display()
                )));
            }
            removals.push(dir);
        }
        if self.owns_socket_dir {
            removals.push(&self.socket_dir);
        }
        for dir in removals {
            script.push_str(&format!("rm -rf -- {}\n", shell_quote_path(dir)));
        }
        Ok(script)
    }

    pub(super) fn spawn_watchdog(
        &self,
        watched_pid: u32,
        remove_dir: Option<&Path>,
    ) -> Result<(), ClusterError> {
        let script = self.watchdog_script(watched_pid, remove_dir)?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the closure touches nothing else. Its own session keeps the
        // watchdog out of the terminal's process group (Ctrl-C) and of our exit.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            program: "/bin/sh (watchdog)".into(),
            source,
        })?;
        tracing::debug!(
            watchdog_pid = child.id(),
            watched_pid,
            "PostgreSQL watchdog spawned"
        );
        // Not waited for: it outlives us and is reparented to init.
        drop(child);
        Ok(())
    }
}
