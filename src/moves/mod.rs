//! Moving a tenant between clusters while it is served (issue 9, item 3): `MOVE TENANT x TO c [DRY RUN]`,
//! `CANCEL MOVE x`, `FINISH MOVE x`, `SHOW MOVES`, and the CLI `pgtenant tenant move | cancel-move |
//! finish-move | moves`. PostgreSQL's logical replication does the copying; pgtenant only orders the steps.
//!
//! A move's state is a row of `pgtenant.tenant_moves` (shared migration V012), so whoever runs the command
//! next (any pgtenant, the CLI) resumes a move that stopped half way, at the step the row names. Every step
//! finds the work it did before and goes on:
//!
//! 1. `preparing` ([`target`]): the tenant's role (same name and derived password), its schema
//!    (`pg_dump --schema-only -n`, restored in one transaction), its `tenant_roles` row and its migration
//!    history, on the target.
//! 2. `copying` ([`replication`]): a publication of the schema's tables on the source (and of the tenant's
//!    row of `pgtenant.move_marks`), a subscription on the target that copies them; done when every table
//!    is synchronized.
//! 3. `catching_up`: until a mark written on the source reaches the target within `catch_up_lag`.
//! 4. `switching` ([`switch`]): every pgtenant holds the tenant's new transactions (an announcement with a
//!    lease, so a crashed mover does not hold them for ever); once the running ones end (or after
//!    `pause_timeout` they are ended), the tenant's role on the source may not log in and its backends are
//!    ended; a last mark is waited for on the target, sequences are copied, and the directory names the
//!    target, in one transaction with the announcement that resumes the held transactions there.
//! 5. `switched`: the tenant is served from the target. The source keeps its copy (role NOLOGIN) until
//!    `FINISH MOVE` drops it with the subscription and the publication. `CANCEL MOVE` before `switched`
//!    drops what the target got and lets the tenant's role on the source log in again.
//!
//! The cluster the directory names is the one place the tenant is served from at every moment; nothing is
//! ever dropped on it (checked against the directory right before dropping).

mod checks;
mod end;
pub mod offline;
pub mod replication;
pub mod switch;
pub mod target;

use crate::clusters::{ClusterEntry, ClusterError, ClusterSet};
use crate::config::Config;
use crate::directory::Tenant;
use crate::names::ClusterName;
use crate::tenancy::ops::{find_tenant, TenantOpError};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveState {
    Preparing,
    Copying,
    CatchingUp,
    Switching,
    Switched,
    Finished,
    Cancelled,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::Copying => "copying",
            Self::CatchingUp => "catching_up",
            Self::Switching => "switching",
            Self::Switched => "switched",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "preparing" => Self::Preparing,
            "copying" => Self::Copying,
            "catching_up" => Self::CatchingUp,
            "switching" => Self::Switching,
            "switched" => Self::Switched,
            "finished" => Self::Finished,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Still under way: the tenant is served from the source and the target holds a partial copy.
    pub fn before_switch(self) -> bool {
        matches!(
            self,
            Self::Preparing | Self::Copying | Self::CatchingUp | Self::Switching
        )
    }

    /// Over: a new move of the tenant may start.
    pub fn is_over(self) -> bool {
        matches!(self, Self::Finished | Self::Cancelled)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The move cannot be done as asked; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tenant(#[from] TenantOpError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("database error on cluster {cluster}: {reason}")]
    Db { cluster: String, reason: String },
    #[error("copying the schema with pg_dump: {0}")]
    Dump(String),
    #[error("{what} did not happen within {secs} s{detail}")]
    Timeout {
        what: String,
        secs: u64,
        detail: String,
    },
}

impl MoveError {
    pub(crate) fn db(cluster: &ClusterName) -> impl Fn(tokio_postgres::Error) -> MoveError + '_ {
        move |e| MoveError::Db {
            cluster: cluster.to_string(),
            reason: crate::upstream_tls::error_chain(&e),
        }
    }
}

/// How a move runs (`[tenancy]`-independent: the CLI and the admin command give them).
#[derive(Clone, Debug)]
pub struct MoveOptions {
    /// Only check and say what would be done.
    pub dry_run: bool,
    /// Copy with COPY during the switch instead of logical replication (see [`offline`]).
    pub offline: bool,
    /// How long the switch waits for the tenant's running transactions before ending them.
    pub pause_timeout: Duration,
    /// Catching up ends when a mark reaches the target within this.
    pub catch_up_lag: Duration,
    /// How long the initial copy and catching up may take (a big tenant needs more).
    pub copy_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            offline: false,
            pause_timeout: Duration::from_secs(5),
            catch_up_lag: Duration::from_millis(500),
            copy_timeout: Duration::from_secs(3600),
        }
    }
}

/// One row of `pgtenant.tenant_moves`.
#[derive(Clone, Debug)]
pub struct MoveRow {
    pub organization_id: Uuid,
    pub slug: String,
    pub source: ClusterName,
    pub target: ClusterName,
    pub state: MoveState,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub started_at: String,
    pub updated_at: String,
    pub note: Option<String>,
    pub pause_ms: Option<i32>,
    /// Copied with COPY during the switch (`OFFLINE`).
    pub offline: bool,
}

/// What a move command did, for its caller to print.
#[derive(Clone, Debug)]
pub struct MoveReport {
    pub slug: String,
    pub source: ClusterName,
    pub target: ClusterName,
    pub state: MoveState,
    /// What was checked or done, one line each.
    pub lines: Vec<String>,
    /// How long the tenant's new transactions were held at the switch.
    pub pause: Option<Duration>,
    /// Only checked: nothing was done.
    pub dry_run: bool,
}

impl MoveReport {
    /// The state, or `dry run` when nothing was done.
    pub fn outcome(&self) -> &'static str {
        if self.dry_run {
            "dry run"
        } else {
            self.state.as_str()
        }
    }
}

/// Where progress lines go (NOTICEs of the admin channel, the CLI's stdout).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What a move needs: the directory, the clusters with this pgtenant's secrets, the config.
pub struct Mover<'a> {
    pub directory: &'a Client,
    pub clusters: &'a ClusterSet,
    pub config: &'a Config,
    pub progress: Progress<'a>,
}

/// The names of a move's publication, subscription and replication slot (one name for all three).
pub fn replication_name(organization_id: Uuid) -> String {
    format!("pgtenant_move_{}", organization_id.simple())
}

const MOVE_COLUMNS: &str = "m.organization_id, o.slug, m.source, m.target, m.state, \
     to_char(m.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC'), \
     to_char(m.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC'), m.note, m.pause_ms, \
     m.mode = 'offline'";

fn move_from_row(r: &tokio_postgres::Row) -> Option<MoveRow> {
    Some(MoveRow {
        organization_id: r.get(0),
        slug: r.get(1),
        source: ClusterName::new(r.get::<_, String>(2)),
        target: ClusterName::new(r.get::<_, String>(3)),
        state: MoveState::parse(r.get(4))?,
        started_at: r.get(5),
        updated_at: r.get(6),
        note: r.get(7),
        pause_ms: r.get(8),
        offline: r.get(9),
    })
}

/// Every move on record, newest first.
pub async fn list_moves(directory: &Client) -> Result<Vec<MoveRow>, MoveError> {
    let rows = directory
        .query(
            &format!(
                "SELECT {MOVE_COLUMNS} FROM pgtenant.tenant_moves m
                 JOIN pgtenant.organizations o ON o.id = m.organization_id
                 ORDER BY m.started_at DESC"
            ),
            &[],
        )
        .await
        .map_err(MoveError::db(&ClusterName::default_cluster()))?;
    Ok(rows.iter().filter_map(move_from_row).collect())
}

async fn load_move(
    directory: &Client,
    organization_id: Uuid,
) -> Result<Option<MoveRow>, MoveError> {
    let row = directory
        .query_opt(
            &format!(
                "SELECT {MOVE_COLUMNS} FROM pgtenant.tenant_moves m
                 JOIN pgtenant.organizations o ON o.id = m.organization_id
                 WHERE m.organization_id = $1"
            ),
            &[&organization_id],
        )
        .await
        .map_err(MoveError::db(&ClusterName::default_cluster()))?;
    Ok(row.as_ref().and_then(move_from_row))
}

impl Mover<'_> {
    fn say(&self, line: impl AsRef<str>) {
        (self.progress)(line.as_ref());
    }

    fn entry(&self, name: &ClusterName) -> Result<Arc<ClusterEntry>, MoveError> {
        Ok(self.clusters.get(name)?)
    }

    /// Records the step a move reached (and clears the note of an earlier failed attempt).
    async fn set_state(&self, tenant: &Tenant, state: MoveState) -> Result<(), MoveError> {
        self.directory
            .execute(
                "UPDATE pgtenant.tenant_moves SET state = $2, updated_at = now(), note = NULL
                 WHERE organization_id = $1",
                &[&tenant.id, &state.as_str()],
            )
            .await
            .map_err(MoveError::db(&ClusterName::default_cluster()))?;
        self.say(format!("step: {}", state.as_str()));
        Ok(())
    }

    /// Notes why a step stopped, for `SHOW MOVES`; the move stays at its step, to be run again.
    async fn note_failure(&self, tenant: &Tenant, error: &MoveError) {
        let _ = self
            .directory
            .execute(
                "UPDATE pgtenant.tenant_moves SET note = $2, updated_at = now() WHERE organization_id = $1",
                &[&tenant.id, &error.to_string()],
            )
            .await;
    }

    /// `MOVE TENANT x TO c`: starts a move, or resumes the tenant's move to `target` where it stopped, and
    /// runs it to `switched`.
    pub async fn run(
        &self,
        selector: &str,
        target: &ClusterName,
        options: &MoveOptions,
    ) -> Result<MoveReport, MoveError> {
        let tenant = find_tenant(self.directory, selector).await?;
        let existing = load_move(self.directory, tenant.id).await?;
        let resumed = match existing {
            Some(m) if !m.state.is_over() => {
                if &m.target != target {
                    return Err(MoveError::Refused(format!(
                        "tenant \"{}\" is being moved to cluster {} ({}); CANCEL MOVE {} first",
                        tenant.slug,
                        m.target,
                        m.state.as_str(),
                        tenant.slug
                    )));
                }
                if m.state == MoveState::Switched {
                    return Ok(MoveReport {
                        slug: tenant.slug.clone(),
                        source: m.source,
                        target: m.target,
                        state: m.state,
                        lines: vec![format!(
                            "tenant \"{}\" was moved already; FINISH MOVE {} drops the copy on the source",
                            tenant.slug, tenant.slug
                        )],
                        pause: m.pause_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
                        dry_run: false,
                    });
                }
                Some(m)
            }
            _ => None,
        };
        let source = match &resumed {
            Some(m) => m.source.clone(),
            None => tenant.cluster.clone(),
        };
        if resumed.is_none() {
            let lines = checks::check(self, &tenant, &source, target, options).await?;
            if options.dry_run {
                return Ok(MoveReport {
                    slug: tenant.slug.clone(),
                    source,
                    target: target.clone(),
                    state: MoveState::Preparing,
                    lines,
                    pause: None,
                    dry_run: true,
                });
            }
            for line in &lines {
                self.say(line);
            }
            self.directory
                .execute(
                    "INSERT INTO pgtenant.tenant_moves (organization_id, source, target, mode)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (organization_id) DO UPDATE
                       SET source = EXCLUDED.source, target = EXCLUDED.target, mode = EXCLUDED.mode,
                           state = 'preparing', started_at = now(), updated_at = now(), note = NULL,
                           pause_ms = NULL",
                    &[
                        &tenant.id,
                        &source.as_str(),
                        &target.as_str(),
                        &if options.offline {
                            "offline"
                        } else {
                            "logical"
                        },
                    ],
                )
                .await
                .map_err(MoveError::db(&ClusterName::default_cluster()))?;
            self.say(format!(
                "moving tenant \"{}\" from cluster {source} to cluster {target}",
                tenant.slug
            ));
        } else if options.dry_run {
            return Err(MoveError::Refused(format!(
                "tenant \"{}\" is being moved already; MOVE TENANT {} TO {target} resumes it",
                tenant.slug, tenant.slug
            )));
        } else {
            self.say(format!(
                "resuming the move of tenant \"{}\" from cluster {source} to cluster {target}",
                tenant.slug
            ));
        }
        let mut options = options.clone();
        if let Some(m) = &resumed {
            options.offline = m.offline;
        }
        let state = resumed.map(|m| m.state).unwrap_or(MoveState::Preparing);
        let result = self
            .run_from(&tenant, &source, target, state, &options)
            .await;
        if let Err(e) = &result {
            self.note_failure(&tenant, e).await;
        }
        result
    }

    async fn run_from(
        &self,
        tenant: &Tenant,
        source: &ClusterName,
        target: &ClusterName,
        mut state: MoveState,
        options: &MoveOptions,
    ) -> Result<MoveReport, MoveError> {
        let source_entry = self.entry(source)?;
        let target_entry = self.entry(target)?;
        let mut lines = Vec::new();
        let mut pause = None;
        loop {
            match state {
                MoveState::Preparing => {
                    target::prepare(self, tenant, &source_entry, &target_entry).await?;
                    state = if options.offline {
                        MoveState::Switching
                    } else {
                        MoveState::Copying
                    };
                }
                MoveState::Copying => {
                    replication::start(self, tenant, &source_entry, &target_entry).await?;
                    replication::wait_synchronized(self, tenant, &target_entry, options).await?;
                    state = MoveState::CatchingUp;
                }
                MoveState::CatchingUp => {
                    let lag =
                        replication::catch_up(self, tenant, &source_entry, &target_entry, options)
                            .await?;
                    lines.push(format!(
                        "replication lag before the switch: {} ms",
                        lag.as_millis()
                    ));
                    state = MoveState::Switching;
                }
                MoveState::Switching => {
                    let held =
                        switch::switch(self, tenant, &source_entry, &target_entry, options).await?;
                    lines.push(format!(
                        "the tenant's new transactions were held {} ms",
                        held.as_millis()
                    ));
                    pause = Some(held);
                    self.say(format!(
                        "tenant \"{}\" is served from cluster {target}; FINISH MOVE {} drops its copy on {source}",
                        tenant.slug, tenant.slug
                    ));
                    return Ok(MoveReport {
                        slug: tenant.slug.clone(),
                        source: source.clone(),
                        target: target.clone(),
                        state: MoveState::Switched,
                        lines,
                        pause,
                        dry_run: false,
                    });
                }
                MoveState::Switched | MoveState::Finished | MoveState::Cancelled => {
                    return Ok(MoveReport {
                        slug: tenant.slug.clone(),
                        source: source.clone(),
                        target: target.clone(),
                        state,
                        lines,
                        pause,
                        dry_run: false,
                    })
                }
            }
            self.set_state(tenant, state).await?;
        }
    }
}

/// Polls `check` every `every` until it gives `Some`, for at most `limit`.
pub(crate) async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, MoveError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, MoveError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MoveError::Timeout {
                what: what.to_string(),
                secs: limit.as_secs(),
                detail: String::new(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_say_where_the_tenant_is_served() {
        for state in [
            MoveState::Preparing,
            MoveState::Copying,
            MoveState::CatchingUp,
            MoveState::Switching,
            MoveState::Switched,
            MoveState::Finished,
            MoveState::Cancelled,
        ] {
            assert_eq!(MoveState::parse(state.as_str()), Some(state));
        }
        assert!(MoveState::Switching.before_switch());
        assert!(!MoveState::Switched.before_switch());
        assert!(!MoveState::Switched.is_over());
        assert!(MoveState::Cancelled.is_over());
        assert_eq!(MoveState::parse("done"), None);
    }

    #[test]
    fn replication_names_are_valid_slot_names() {
        let name = replication_name(Uuid::from_u128(0xABCDEF));
        assert!(name.len() <= 63);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
