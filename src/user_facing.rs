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
use crate::refusal::Refusal;
use crate::tenancy::ops::TenantOpError;
use crate::tenancy::revoke::RevokeError;
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

impl UserFacing for RevokeError {
    fn sqlstate(&self) -> &'static str {
        match self {
            RevokeError::NoSuchUser(_) => sqlstate::UNDEFINED_OBJECT,
            RevokeError::BadJti => sqlstate::INVALID_PARAMETER_VALUE,
            RevokeError::Db(_) => sqlstate::CONNECTION_FAILURE,
        }
    }
    fn client_message(&self) -> String {
        match self {
            RevokeError::Db(e) => format!("database error: {e}"),
            other => other.to_string(),
        }
    }
}

/// pgtenant's own refusals and endings, each with the SQLSTATE PostgreSQL would use for it.
impl UserFacing for Refusal {
    fn sqlstate(&self) -> &'static str {
        use Refusal::*;
        match self {
            Unsupported(_) | ReplicationNotServed | AdminSimpleQueryOnly | CachedPlanChanged => {
                sqlstate::FEATURE_NOT_SUPPORTED
            }
            Protocol(_)
            | EncryptionInsideEncryption
            | StartupOption(_)
            | ExpectedPassword
            | InvalidFrontendMessage(_)
            | InvalidMessageFormat => sqlstate::PROTOCOL_VIOLATION,
            StartupParameter(_) | ReloadRefused(_) => sqlstate::INVALID_PARAMETER_VALUE,
            TokenOverPlaintext
            | UserDisabled { .. }
            | TenantSuspended { .. }
            | TenantRemoved { .. } => sqlstate::INVALID_AUTHORIZATION,
            UserDisabledEnded => sqlstate::INVALID_AUTHORIZATION,
            NotAnAdminToken => sqlstate::INSUFFICIENT_PRIVILEGE,
            TokenTooLarge
            | TokenNotUtf8
            | TokenRevoked { .. }
            | TokenRevokedEnded
            | TokenExpired { .. } => sqlstate::INVALID_PASSWORD,
            LoginsLimited { .. } | TooManyTenantClients { .. } | TooManyClients { .. } => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            DirectoryUnreachable { .. }
            | TenantClusterUnreachable { .. }
            | ClusterUnreachable { .. }
            | ServerConnectionLost { .. }
            | ClientGone(_)
            | AdminDatabase(_)
            | ServerSyncFailed(_) => sqlstate::CONNECTION_FAILURE,
            TenantBeingSetUp { .. } | NoReplica { .. } => sqlstate::CANNOT_CONNECT_NOW,
            UnknownDatabase { .. } => sqlstate::INVALID_CATALOG_NAME,
            ShuttingDown | TenantClosed { .. } | MaxSessionDuration { .. } => {
                sqlstate::ADMIN_SHUTDOWN
            }
            IdleSessionTimeout => sqlstate::IDLE_SESSION_TIMEOUT,
            IdleInTransactionTimeout { .. } => sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
            TransactionTimeout { .. } => sqlstate::TRANSACTION_TIMEOUT,
            AdminSyntax { .. } => sqlstate::SYNTAX_ERROR,
            DuplicatePreparedStatement { .. } => sqlstate::DUPLICATE_PREPARED_STATEMENT,
            TransactionAborted => sqlstate::IN_FAILED_SQL_TRANSACTION,
            ServerLeftInTransaction => sqlstate::INTERNAL_ERROR,
        }
    }

    fn client_message(&self) -> String {
        use Refusal::*;
        match self {
            Unsupported(words) | Protocol(words) | StartupParameter(words) | ClientGone(words)
            | ReloadRefused(words) | ServerSyncFailed(words) => words.clone(),
            EncryptionInsideEncryption => "encryption request inside an encrypted connection".into(),
            ReplicationNotServed => "pgtenant does not serve replication connections".into(),
            StartupOption(word) => format!("invalid command-line argument in options: {word}"),
            TokenOverPlaintext => {
                "pgtenant refuses to take a token over an unencrypted connection".into()
            }
            NotAnAdminToken => {
                "this token does not grant access to the pgtenant admin channel".into()
            }
            ExpectedPassword => "expected a password message".into(),
            TokenTooLarge => "token rejected: the token is too large".into(),
            TokenNotUtf8 => "token rejected: the token is not valid UTF-8".into(),
            TokenRevoked { whole_user: false } => "token rejected: the token was revoked".into(),
            TokenRevoked { whole_user: true } => {
                "token rejected: the user's tokens issued before a revocation are refused".into()
            }
            LoginsLimited { what, retry_secs } => format!("{what}; try again in {retry_secs} s"),
            DirectoryUnreachable { .. } => "pgtenant cannot reach its directory database".into(),
            UserDisabled { email } => format!("user \"{email}\" is disabled"),
            TenantSuspended { tenant } => format!("organization \"{tenant}\" is suspended"),
            TenantRemoved { tenant } => format!("organization \"{tenant}\" was removed"),
            TenantBeingSetUp { tenant } => format!("organization \"{tenant}\" is still being set up"),
            UnknownDatabase { database, .. } => format!("database \"{database}\" does not exist"),
            TooManyTenantClients { tenant, limit } => {
                format!("too many clients for organization \"{tenant}\" (limit {limit})")
            }
            TooManyClients { limit } => {
                format!("sorry, too many clients already (pgtenant's limit is {limit})")
            }
            TenantClusterUnreachable { tenant, .. } => {
                format!("pgtenant cannot reach the cluster of organization \"{tenant}\"")
            }
            ClusterUnreachable { .. } => "pgtenant cannot reach the tenant's cluster".into(),
            NoReplica { cluster, .. } => {
                format!("no replica of cluster \"{cluster}\" can take a read-only session")
            }
            ServerConnectionLost { .. } => "server connection lost".into(),
            InvalidFrontendMessage(why) => format!("invalid frontend message: {why}"),
            ShuttingDown => "pgtenant is shutting down".into(),
            IdleSessionTimeout => "terminating connection due to idle-session timeout".into(),
            IdleInTransactionTimeout { .. } => {
                "terminating connection due to idle-in-transaction timeout".into()
            }
            TransactionTimeout { .. } => "terminating connection due to transaction timeout".into(),
            TenantClosed { why } => format!("terminating connection: the organization was {why}"),
            UserDisabledEnded => "terminating connection: the user was disabled".into(),
            TokenRevokedEnded => "terminating connection: the login token was revoked".into(),
            TokenExpired { expired_at } => format!(
                "terminating connection: the login token expired (exp {expired_at}, Unix time)"
            ),
            MaxSessionDuration { secs } => format!(
                "terminating connection: the session reached its maximum duration ({secs} s, server.max_session_secs)"
            ),
            AdminSimpleQueryOnly => {
                "the pgtenant admin channel speaks only the simple query protocol".into()
            }
            AdminSyntax { message, .. } => message.clone(),
            AdminDatabase(why) => format!("database error: {why}"),
            DuplicatePreparedStatement { name } => {
                format!("prepared statement \"{name}\" already exists")
            }
            InvalidMessageFormat => "invalid message format".into(),
            TransactionAborted => {
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into()
            }
            CachedPlanChanged => "cached plan must not change result type".into(),
            ServerLeftInTransaction => "server connection left in a transaction".into(),
        }
    }

    fn hint(&self) -> Option<String> {
        use Refusal::*;
        Some(match self {
            TokenOverPlaintext => "connect with sslmode=require".into(),
            NotAnAdminToken => {
                "the admin channel needs a token whose admin claim is true (pgtenant token --admin)"
                    .into()
            }
            TokenRevoked { .. } => "log in with a token issued after the revocation".into(),
            UnknownDatabase {
                directory_database, ..
            } => format!(
                "connect to database \"{directory_database}\" (or your organization's name)"
            ),
            TokenExpired { .. } => {
                "log in again with a fresh token (auth.session_expiry = \"end\")".into()
            }
            AdminSimpleQueryOnly => "use psql, or a driver's simple-query mode".into(),
            NoReplica { .. } => {
                "ask for prefer-standby to fall back to the primary, or try again".into()
            }
            AdminSyntax { hint, .. } => hint.clone(),
            _ => return None,
        })
    }

    fn detail(&self) -> Option<String> {
        use Refusal::*;
        match self {
            TenantClusterUnreachable { why, .. } | ClusterUnreachable { why } | NoReplica { why, .. } => {
                Some(why.clone())
            }
            DirectoryUnreachable { why } => why.clone(),
            ServerConnectionLost { why } => Some(
                why.clone()
                    .unwrap_or_else(|| "the database server closed the connection".into()),
            ),
            IdleInTransactionTimeout { limit } => Some(format!(
                "pgtenant ended the session: the organization's idle_in_transaction_session_timeout is {limit}"
            )),
            TransactionTimeout { limit } => Some(format!(
                "pgtenant ended the session: the organization's transaction_timeout is {limit}"
            )),
            _ => None,
        }
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

    #[test]
    fn refusals_say_what_postgresql_would_and_name_the_way_out() {
        let unknown = Refusal::UnknownDatabase {
            database: "nope".into(),
            directory_database: "app".into(),
        }
        .to_fatal();
        assert_eq!(
            (
                unknown.severity,
                unknown.code.as_ref(),
                unknown.message.as_str()
            ),
            (
                Severity::Fatal,
                sqlstate::INVALID_CATALOG_NAME,
                "database \"nope\" does not exist"
            )
        );
        assert_eq!(
            unknown.hint.as_deref(),
            Some("connect to database \"app\" (or your organization's name)")
        );
        let lost = Refusal::ServerConnectionLost { why: None }.to_fatal();
        assert_eq!(lost.code.as_ref(), sqlstate::CONNECTION_FAILURE);
        assert_eq!(
            lost.detail.as_deref(),
            Some("the database server closed the connection")
        );
        let aborted = Refusal::TransactionAborted.to_error();
        assert_eq!(
            (aborted.severity, aborted.code.as_ref()),
            (Severity::Error, sqlstate::IN_FAILED_SQL_TRANSACTION)
        );
        assert!(Refusal::TokenRevoked { whole_user: true }
            .to_fatal()
            .hint
            .is_some_and(|h| h.contains("issued after the revocation")));
    }
}
