//! The admin channel's command language: keywords (any case), names as bare words or quoted ('…' or "…"),
//! statements separated by `;`.
//!
//! A file per job: `tokens` (the words, quoted names and `;` of a text, and the cursor over them),
//! `statement` (one statement's tokens to a [`Command`]), `limits` (the settings of ALTER TENANT), `forms`
//! (every command's form, for HELP and hints).

mod forms;
mod limits;
mod statement;
mod tokens;

pub use forms::FORMS;

use crate::limits::Limit;
use statement::parse_statement;
use tokens::{tokenize, Token};

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowTenants,
    ShowPools,
    ShowClients,
    ShowServers,
    ShowMigrations {
        tenant: Option<String>,
    },
    ShowConfig,
    ShowVersion,
    CreateTenant {
        name: String,
        admin_email: String,
        ddl: bool,
        /// `ON CLUSTER c`; `None`: as `tenancy.placement` says.
        cluster: Option<String>,
    },
    /// Every cluster: role, address, status, tenants, connections, size, replica lag.
    ShowClusters,
    /// Check a cluster and record it in the directory.
    AddCluster(crate::clusters::ops::AddCluster),
    Migrate {
        tenant: Option<String>,
        dry_run: bool,
    },
    SuspendTenant {
        tenant: String,
    },
    ResumeTenant {
        tenant: String,
    },
    DropTenant {
        tenant: String,
        confirm: Option<String>,
    },
    CheckTenants,
    ShowStats,
    /// Hold new transactions of a tenant (or of all).
    Pause {
        tenant: Option<String>,
    },
    /// Let paused transactions go on.
    Unpause {
        tenant: Option<String>,
    },
    Shutdown,
    Reload,
    Help,
    /// Recent refused logins, newest first.
    ShowLogins,
    /// Refuse the token with this `jti` from now on; with `sessions`, end the sessions it opened.
    RevokeToken {
        jti: String,
        sessions: bool,
    },
    /// Refuse every token of the user (all its memberships) issued until now; with `sessions`, end its
    /// sessions.
    RevokeUser {
        email: String,
        sessions: bool,
    },
    /// Refuse the user's logins and end its sessions / undo.
    DisableUser {
        email: String,
    },
    EnableUser {
        email: String,
    },
    /// Every tenant's limits: its own values, or the defaults it follows.
    ShowLimits,
    /// `ALTER TENANT x SET setting = value` (`Some(ms)`, 0: off), `… RESET setting` / `RESET ALL` (`None`:
    /// back to the `[limits]` default).
    AlterTenantLimits {
        tenant: String,
        changes: Vec<(Limit, Option<u32>)>,
    },
    /// `MOVE TENANT x TO c [DRY RUN]`: start or resume the tenant's move to cluster c.
    MoveTenant {
        tenant: String,
        cluster: String,
        /// `OFFLINE`: copied with COPY during the switch.
        offline: bool,
        dry_run: bool,
    },
    /// `CANCEL MOVE x`: before the switch, drop what the target got.
    CancelMove {
        tenant: String,
    },
    /// `FINISH MOVE x`: after the switch, drop the tenant's copy on the source.
    FinishMove {
        tenant: String,
    },
    /// Every tenant move on record.
    ShowMoves,
}

/// What was wrong with a command, with a hint toward the right form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub hint: String,
}

/// Parses a Query message's text into its statements. An empty text gives no statements.
pub fn parse(text: &str) -> Result<Vec<Command>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut commands = Vec::new();
    for statement in tokens.split(|t| *t == Token::Semicolon) {
        if statement.is_empty() {
            continue;
        }
        commands.push(parse_statement(statement)?);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests;
