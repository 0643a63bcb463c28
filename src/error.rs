//! What a client may be told about a failure, in one place: the SQLSTATEs pgtenant sends ([`sqlstate`]),
//! the error or notice itself ([`PgError`]; `protocol` encodes it), and [`UserFacing`], implemented by every
//! error type that can reach a client. An implementation decides the SQLSTATE, the message (no token,
//! password, role password or server address in it) and the hint; the ErrorResponse is built from it
//! ([`UserFacing::to_error`], [`UserFacing::to_fatal`]). The implementations, the allowlist itself, are all
//! in [`crate::user_facing`], which nothing imports: this module stays below every module whose errors it
//! describes.

use std::borrow::Cow;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Notice,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "FATAL",
            Self::Error => "ERROR",
            Self::Notice => "NOTICE",
            Self::Warning => "WARNING",
        }
    }
}

/// An error or notice pgtenant reports to a client in PostgreSQL's own terms.
#[derive(Clone, Debug)]
pub struct PgError {
    pub severity: Severity,
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// A FATAL of this SQLSTATE. Only the allowlist (`user_facing`) and this module build errors this way
    /// (`tests/house_rules.rs`); everywhere else an error comes from a `UserFacing` value.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }
    /// A NOTICE (not an error: the request goes on) of pgtenant's own, such as a queued client's or an
    /// admin command's progress line.
    pub fn notice(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Notice,
            ..Self::fatal(code, message)
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// An error a client may see: its SQLSTATE, its message and hint for the client.
pub trait UserFacing {
    fn sqlstate(&self) -> &'static str;
    /// The message for the client: what went wrong in its terms, without secrets or internal addresses.
    fn client_message(&self) -> String;
    fn hint(&self) -> Option<String> {
        None
    }
    fn detail(&self) -> Option<String> {
        None
    }

    /// As an ERROR: the statement failed, the session goes on.
    fn to_error(&self) -> PgError {
        PgError {
            hint: self.hint(),
            detail: self.detail(),
            ..PgError::error(self.sqlstate(), self.client_message())
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
