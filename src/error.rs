//! What a client may be told about a failure, in one place: the SQLSTATEs pgtenant sends ([`sqlstate`]) and
//! [`UserFacing`], implemented by every error type that can reach a client. An implementation decides the
//! SQLSTATE, the message (no token, password, role password or server address in it) and the hint; the
//! ErrorResponse is built from it ([`UserFacing::to_error`], [`UserFacing::to_fatal`]).

use crate::protocol::{PgError, Severity};

/// The SQLSTATEs pgtenant sends, by PostgreSQL's names (Appendix A of its manual). `tests/house_rules.rs`
/// fails on an SQLSTATE literal anywhere else in `src/`.
pub mod sqlstate {
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const IO_ERROR: &str = "58030";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    /// A NOTICE that is plain information (PostgreSQL's successful_completion class).
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    /// PostgreSQL 17's transaction_timeout (pgtenant enforces it on any version).
    pub const TRANSACTION_TIMEOUT: &str = "25P04";
    /// A NOTICE of pgtenant's own ("warning" class, as PostgreSQL's plain NOTICEs).
    pub const WARNING: &str = "01000";
}

/// An error a client may see: its SQLSTATE, its message and hint for the client.
pub trait UserFacing {
    fn sqlstate(&self) -> &'static str;
    /// The message for the client: what went wrong in its terms, without secrets or internal addresses.
    fn client_message(&self) -> String;
    fn hint(&self) -> Option<String> {
        None
    }

    /// As an ERROR: the statement failed, the session goes on.
    fn to_error(&self) -> PgError {
        let error = PgError::error(self.sqlstate(), self.client_message());
        match self.hint() {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    /// As a FATAL: the session ends.
    fn to_fatal(&self) -> PgError {
        PgError {
            severity: Severity::Fatal,
            ..self.to_error()
        }
    }
}

// The allowlist: every error type that may reach a client, and what the client is told.

use crate::auth::TokenError;
use crate::clusters::ClusterError;
use crate::directory::MembershipError;
use crate::migrate::MigrateError;
use crate::moves::MoveError;
use crate::pool::PoolError;
use crate::tenancy::ops::TenantOpError;
use crate::tenancy::OnboardError;
use crate::upstream::UpstreamError;

/// Every token problem is `28P01`, with the verifier's reason (it never echoes the token).
impl UserFacing for TokenError {
    fn sqlstate(&self) -> &'static str {
        TokenError::sqlstate(self)
    }
    fn client_message(&self) -> String {
        format!("token rejected: {self}")
    }
}

impl UserFacing for MembershipError {
    fn sqlstate(&self) -> &'static str {
        MembershipError::sqlstate(self)
    }
    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl UserFacing for OnboardError {
    fn sqlstate(&self) -> &'static str {
        match self {
            OnboardError::EmptyName | OnboardError::BadEmail(_) | OnboardError::NotAPrimary(_) => {
                sqlstate::INVALID_PARAMETER_VALUE
            }
            OnboardError::Cluster(ClusterError::Unknown(_)) => sqlstate::UNDEFINED_OBJECT,
            OnboardError::SlugTaken(_) | OnboardError::EmailTaken(_) => sqlstate::DUPLICATE_OBJECT,
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }
    fn client_message(&self) -> String {
        match self.sqlstate() {
            sqlstate::CONNECTION_FAILURE => format!("database error: {self}"),
            _ => self.to_string(),
        }
    }
}

/// Upstream login failures of a tenant role are pgtenant's fault, not the client's, and say so without
/// details of the role's credentials.
impl UserFacing for UpstreamError {
    fn sqlstate(&self) -> &'static str {
        match self {
            UpstreamError::Refused(f) if f.code == sqlstate::TOO_MANY_CONNECTIONS => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            UpstreamError::Refused(f) if f.code.starts_with("57P") => sqlstate::CANNOT_CONNECT_NOW,
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }
    fn client_message(&self) -> String {
        match self {
            UpstreamError::Refused(f)
                if f.code == sqlstate::TOO_MANY_CONNECTIONS || f.code.starts_with("57P") =>
            {
                format!("database server: {}", f.message)
            }
            UpstreamError::Refused(f) if f.code.starts_with("28") => {
                "pgtenant could not log in to the database server as the tenant's role".into()
            }
            UpstreamError::Refused(f) => {
                format!("database server refused the connection: {}", f.message)
            }
            other => other.to_string(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            UpstreamError::Refused(f) if f.code.starts_with("28") => Some(
                "the tenant role's password may have been changed; an administrator can re-run onboarding repair"
                    .into(),
            ),
            _ => None,
        }
    }
}

impl UserFacing for PoolError {
    fn sqlstate(&self) -> &'static str {
        match self {
            PoolError::TenantBusy { .. } | PoolError::GlobalBusy { .. } => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            PoolError::Upstream(e) => e.sqlstate(),
        }
    }
    fn client_message(&self) -> String {
        match self {
            PoolError::Upstream(e) => e.client_message(),
            busy => busy.to_string(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            PoolError::TenantBusy { .. } | PoolError::GlobalBusy { .. } => {
                Some("retry later, or ask the operator to raise pool.size_per_tenant".into())
            }
            PoolError::Upstream(e) => e.hint(),
        }
    }
}

impl UserFacing for ClusterError {
    fn sqlstate(&self) -> &'static str {
        match self {
            ClusterError::Unknown(_) => sqlstate::UNDEFINED_OBJECT,
            ClusterError::Invalid(_) => sqlstate::INVALID_PARAMETER_VALUE,
            ClusterError::Db(db) if db.code().is_some() => sqlstate::INVALID_PARAMETER_VALUE,
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }
    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl UserFacing for MigrateError {
    fn sqlstate(&self) -> &'static str {
        match self {
            MigrateError::RunLocked => sqlstate::LOCK_NOT_AVAILABLE,
            MigrateError::TenantChecksumMismatch { .. }
            | MigrateError::OutOfOrder { .. }
            | MigrateError::TenantMissingFile { .. } => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            MigrateError::Db(_) | MigrateError::AdminPool(_) => sqlstate::CONNECTION_FAILURE,
            _ => sqlstate::IO_ERROR,
        }
    }
    fn client_message(&self) -> String {
        self.to_string()
    }
}

impl UserFacing for TenantOpError {
    fn sqlstate(&self) -> &'static str {
        match self {
            TenantOpError::NotFound(_) => sqlstate::UNDEFINED_OBJECT,
            TenantOpError::NotConfirmed { .. } => sqlstate::INSUFFICIENT_PRIVILEGE,
            TenantOpError::Db(_) | TenantOpError::UpstreamTls(_) | TenantOpError::Cluster(_) => {
                sqlstate::CONNECTION_FAILURE
            }
        }
    }
    fn client_message(&self) -> String {
        match self {
            TenantOpError::Db(e) => format!("database error: {e}"),
            other => other.to_string(),
        }
    }
}

impl UserFacing for MoveError {
    fn sqlstate(&self) -> &'static str {
        match self {
            MoveError::Refused(_) => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            MoveError::Tenant(TenantOpError::NotFound(_))
            | MoveError::Cluster(ClusterError::Unknown(_)) => sqlstate::UNDEFINED_OBJECT,
            MoveError::Timeout { .. } => sqlstate::QUERY_CANCELED,
            MoveError::Dump(_) => sqlstate::INTERNAL_ERROR,
            MoveError::Tenant(_) | MoveError::Cluster(_) | MoveError::Db { .. } => {
                sqlstate::CONNECTION_FAILURE
            }
        }
    }
    fn client_message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorFields;

    fn refused(code: &str, message: &str) -> UpstreamError {
        UpstreamError::Refused(ErrorFields {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
        })
    }

    #[test]
    fn a_refused_tenant_login_names_neither_the_role_nor_its_password() {
        let e = refused(
            "28P01",
            "password authentication failed for user \"org_ab12\"",
        )
        .to_fatal();
        assert_eq!(
            (e.severity, e.code.as_ref()),
            (Severity::Fatal, sqlstate::CONNECTION_FAILURE)
        );
        assert!(!e.message.contains("org_ab12"), "{}", e.message);
        assert!(e.hint.is_some_and(|h| h.contains("onboarding repair")));
        let busy = refused("53300", "sorry, too many clients already").to_error();
        assert_eq!(busy.code.as_ref(), sqlstate::TOO_MANY_CONNECTIONS);
        assert_eq!(
            busy.message,
            "database server: sorry, too many clients already"
        );
        assert_eq!(
            refused("57P03", "the database system is starting up").sqlstate(),
            sqlstate::CANNOT_CONNECT_NOW
        );
    }

    #[test]
    fn a_full_pool_is_53300_with_a_hint_in_either_severity() {
        let busy = PoolError::TenantBusy {
            size: 4,
            waited: std::time::Duration::from_secs(5),
        };
        let (error, fatal) = (busy.to_error(), busy.to_fatal());
        assert_eq!(error.code.as_ref(), sqlstate::TOO_MANY_CONNECTIONS);
        assert_eq!(
            (error.severity, fatal.severity),
            (Severity::Error, Severity::Fatal)
        );
        assert_eq!(error.message, fatal.message);
        assert!(error
            .hint
            .is_some_and(|h| h.contains("pool.size_per_tenant")));
    }
}
