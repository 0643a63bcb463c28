//! The announcements of directory changes on the channel every pgtenant listens to (LISTEN/NOTIFY): what
//! each says, its payload, and sending one (in the caller's transaction, if any).

use crate::auth::revocation::Revocation;
use uuid::Uuid;

/// The channel on which directory changes are announced.
pub const DIRECTORY_CHANNEL: &str = "pgtenant_directory";

/// What a directory change announcement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// Forget cached lookups.
    Changed,
    /// Forget cached lookups and end the tenant's sessions.
    Closed {
        tenant_id: Uuid,
        role: String,
        why: String,
    },
    /// A token (or every token of a user issued before a time) was revoked (trigger on
    /// `pgtenant.revoked_tokens`, shared migration V009).
    Revoked(Revocation),
    /// Revocations were removed: reload them.
    RevocationsChanged,
    /// A user was disabled: end its sessions (trigger on `pgtenant.users`).
    UserDisabled { user_id: Uuid },
    /// `pgtenant.clusters` changed (trigger of shared migration V011): read it again.
    ClustersChanged,
    /// A tenant move is switching (see `crate::moves::switch`): hold the role's new transactions, for at most
    /// `lease_ms` unless told otherwise.
    MovePause { role: String, lease_ms: u64 },
    /// The move switched: the role's server connections go to cluster `to` instead of `from`; let the held
    /// transactions go on.
    MoveSwitched {
        role: String,
        from: crate::names::ClusterName,
        to: crate::names::ClusterName,
    },
    /// A switch was undone: let the held transactions go on where they were.
    MoveResume { role: String },
}

impl DirectoryEvent {
    pub fn payload(&self) -> String {
        match self {
            DirectoryEvent::Changed => "changed".into(),
            DirectoryEvent::Closed {
                tenant_id,
                role,
                why,
            } => format!("closed {tenant_id} {role} {why}"),
            DirectoryEvent::Revoked(Revocation::Token { jti, end_sessions }) => {
                format!("revoked jti {end_sessions} {jti}")
            }
            DirectoryEvent::Revoked(Revocation::User {
                user_id,
                before,
                end_sessions,
            }) => format!("revoked user {end_sessions} {user_id} {before}"),
            DirectoryEvent::RevocationsChanged => "revocations changed".into(),
            DirectoryEvent::UserDisabled { user_id } => format!("user_disabled {user_id}"),
            DirectoryEvent::ClustersChanged => "clusters changed".into(),
            DirectoryEvent::MovePause { role, lease_ms } => format!("move pause {lease_ms} {role}"),
            DirectoryEvent::MoveSwitched { role, from, to } => {
                format!("move switched {from} {to} {role}")
            }
            DirectoryEvent::MoveResume { role } => format!("move resume {role}"),
        }
    }

    pub fn parse(payload: &str) -> DirectoryEvent {
        if let Some(event) = Self::parse_revocation(payload) {
            return event;
        }
        if payload == "clusters changed" {
            return DirectoryEvent::ClustersChanged;
        }
        if let Some(event) = Self::parse_move(payload) {
            return event;
        }
        let mut parts = payload.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("closed"), Some(id), Some(role), why) => match Uuid::parse_str(id) {
                Ok(tenant_id) => DirectoryEvent::Closed {
                    tenant_id,
                    role: role.to_string(),
                    why: why.unwrap_or("closed").to_string(),
                },
                Err(_) => DirectoryEvent::Changed,
            },
            _ => DirectoryEvent::Changed,
        }
    }
}

impl DirectoryEvent {
    /// The announcements of a tenant move; `None` for others. A move announcement that does not parse
    /// resumes nothing and pauses nothing: it is taken as `Changed`.
    fn parse_move(payload: &str) -> Option<DirectoryEvent> {
        let rest = payload.strip_prefix("move ")?;
        let role = |r: &str| (!r.is_empty()).then(|| r.to_string());
        let event = if let Some(rest) = rest.strip_prefix("pause ") {
            rest.split_once(' ').and_then(|(ms, r)| {
                Some(DirectoryEvent::MovePause {
                    role: role(r)?,
                    lease_ms: ms.parse().ok()?,
                })
            })
        } else if let Some(rest) = rest.strip_prefix("switched ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(from), Some(to), Some(r)) => {
                    role(r).map(|role| DirectoryEvent::MoveSwitched {
                        role,
                        from: crate::names::ClusterName::new(from),
                        to: crate::names::ClusterName::new(to),
                    })
                }
                _ => None,
            }
        } else if let Some(r) = rest.strip_prefix("resume ") {
            role(r).map(|role| DirectoryEvent::MoveResume { role })
        } else {
            None
        };
        Some(event.unwrap_or(DirectoryEvent::Changed))
    }

    /// The announcements of the revocation triggers (and of a disabled user); `None` for others. A payload
    /// that starts like one but does not parse is `RevocationsChanged`: reload rather than miss it.
    fn parse_revocation(payload: &str) -> Option<DirectoryEvent> {
        // `format('%s', boolean)` in PL/pgSQL gives t / f; the migration's trigger spells them out.
        let flag = |s: &str| s == "true" || s == "t";
        if payload == "revocations changed" {
            return Some(DirectoryEvent::RevocationsChanged);
        }
        if let Some(id) = payload.strip_prefix("user_disabled ") {
            return Some(match Uuid::parse_str(id) {
                Ok(user_id) => DirectoryEvent::UserDisabled { user_id },
                Err(_) => DirectoryEvent::Changed,
            });
        }
        if let Some(rest) = payload.strip_prefix("revoked jti ") {
            return Some(match rest.split_once(' ') {
                Some((end_sessions, jti)) if !jti.is_empty() => {
                    DirectoryEvent::Revoked(Revocation::Token {
                        jti: jti.to_string(),
                        end_sessions: flag(end_sessions),
                    })
                }
                _ => DirectoryEvent::RevocationsChanged,
            });
        }
        if let Some(rest) = payload.strip_prefix("revoked user ") {
            let mut parts = rest.split(' ');
            let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(end_sessions), Some(id), Some(before), None) => {
                    match (Uuid::parse_str(id), before.parse::<u64>()) {
                        (Ok(user_id), Ok(before)) => Some(Revocation::User {
                            user_id,
                            before,
                            end_sessions: flag(end_sessions),
                        }),
                        _ => None,
                    }
                }
                _ => None,
            };
            return Some(
                parsed
                    .map(DirectoryEvent::Revoked)
                    .unwrap_or(DirectoryEvent::RevocationsChanged),
            );
        }
        None
    }
}

/// Announces a change to every pgtenant (in the caller's transaction, if any).
pub async fn announce(
    client: &impl tokio_postgres::GenericClient,
    event: &DirectoryEvent,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&DIRECTORY_CHANNEL, &event.payload()],
        )
        .await?;
    Ok(())
}
