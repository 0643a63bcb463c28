//! pgtenant's own refusals and session endings, by name: the login refusals, the ends of a session, the
//! admin channel's and transaction pooling's own errors. Each says what happened in the caller's terms; what
//! the client is told (SQLSTATE, message, hint, detail) is decided in one place, `crate::user_facing`, so a
//! call site names the case (`Refusal::UserDisabled { email }.to_fatal()`) and never an SQLSTATE or a text.

/// A refusal or an end that pgtenant itself decides (not an error of a lower layer, which has its own
/// `UserFacing` implementation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    // The first packet and the login.
    /// The first packet asks for a protocol or feature pgtenant does not speak (the reader's words).
    Unsupported(String),
    /// A message that breaks the protocol (the reader's words).
    Protocol(String),
    EncryptionInsideEncryption,
    ReplicationNotServed,
    /// A startup parameter pgtenant cannot apply (the check's words).
    StartupParameter(String),
    /// A word of the `options` startup parameter pgtenant cannot apply.
    StartupOption(String),
    TokenOverPlaintext,
    NotAnAdminToken,
    ExpectedPassword,
    TokenTooLarge,
    TokenNotUtf8,
    /// Refused by the revocation list: this token, or every token of its user issued before a revocation.
    TokenRevoked {
        whole_user: bool,
    },
    /// Too many (failed) logins: `what` says of whom, the client may retry after `retry_secs`.
    LoginsLimited {
        what: &'static str,
        retry_secs: u64,
    },
    /// The directory cannot be read; `why` when it is a connection problem the client may be told of.
    DirectoryUnreachable {
        why: Option<String>,
    },
    UserDisabled {
        email: String,
    },
    TenantSuspended {
        tenant: String,
    },
    TenantRemoved {
        tenant: String,
    },
    TenantBeingSetUp {
        tenant: String,
    },
    /// The database name names no organization of the user; `directory_database` is the name that always
    /// works.
    UnknownDatabase {
        database: String,
        directory_database: String,
    },
    TooManyTenantClients {
        tenant: String,
        limit: usize,
    },
    TooManyClients {
        limit: usize,
    },
    TenantClusterUnreachable {
        tenant: String,
        why: String,
    },
    ClusterUnreachable {
        why: String,
    },
    NoReplica {
        cluster: String,
        why: String,
    },

    // A session ended.
    ServerConnectionLost {
        why: Option<String>,
    },
    /// Writing to the client failed (the client is gone: nothing reaches it).
    ClientGone(String),
    InvalidFrontendMessage(String),
    ShuttingDown,
    IdleSessionTimeout,
    /// pgtenant's ceiling on idle_in_transaction_session_timeout (`limit` as PostgreSQL prints it).
    IdleInTransactionTimeout {
        limit: String,
    },
    /// pgtenant's transaction_timeout (`limit` as PostgreSQL prints it).
    TransactionTimeout {
        limit: String,
    },
    /// The tenant's sessions were ended (`why`: "suspended", "archived", …).
    TenantClosed {
        why: String,
    },
    UserDisabledEnded,
    TokenRevokedEnded,
    /// The login token's `exp` (Unix time) passed.
    TokenExpired {
        expired_at: u64,
    },
    MaxSessionDuration {
        secs: u64,
    },

    // The admin channel.
    AdminSimpleQueryOnly,
    AdminSyntax {
        message: String,
        hint: String,
    },
    ReloadRefused(String),
    /// A directory query of an admin command failed.
    AdminDatabase(String),

    // Transaction pooling, in PostgreSQL's words where PostgreSQL would say it.
    DuplicatePreparedStatement {
        name: String,
    },
    InvalidMessageFormat,
    TransactionAborted,
    CachedPlanChanged,
    ServerLeftInTransaction,
    ServerSyncFailed(String),
}
