//! The allowlist: every error type that may reach a client, and what the client is told (SQLSTATE, message,
//! hint) through [`UserFacing`]. Kept in one file to be read as one list; nothing imports this module (a
//! trait's implementations need no import), so it depends on the modules it describes and none on it.

use crate::auth::TokenError;
use crate::clusters::ClusterError;
use crate::directory::MembershipError;
use crate::error::{sqlstate, UserFacing};
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
    use crate::protocol::Severity;

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
