//! Per-tenant limits in PostgreSQL's terms: `statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout` and a `transaction_timeout` (PostgreSQL 17's, which 15 lacks).
//!
//! - Where the values live: columns of `pgtenant.organizations` (shared migration V010; NULL: the `[limits]`
//!   default, 0: off), resolved per session by [`SessionLimits::resolve`].
//! - PostgreSQL's side: statement_timeout, lock_timeout and idle_in_transaction_session_timeout are startup
//!   parameters of every server connection of the tenant ([`ServerSettings`]), so PostgreSQL cancels or ends
//!   with its own SQLSTATEs, and `RESET` / `DISCARD ALL` come back to them.
//! - pgtenant's side ([`crate::limit_watch`]): a ceiling the client cannot `SET` away. A request outstanding longer than
//!   statement_timeout (plus `limits.enforce_grace_ms`, so PostgreSQL's own timer fires first) is cancelled
//!   with a cancel request; a transaction idle longer than idle_in_transaction_session_timeout (plus the
//!   grace), or open longer than transaction_timeout, ends the session with PostgreSQL's FATAL.
//!   lock_timeout cannot be enforced from outside (pgtenant cannot tell a lock wait from work); it is
//!   PostgreSQL's setting only, under statement_timeout's ceiling.
//! - [`crate::pool::queue`]: the NOTICE a client gets while it waits for a server connection.

use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::refusal::Refusal;
use serde::Deserialize;

/// Largest value of a limit: PostgreSQL's own (INT_MAX milliseconds).
pub const MAX_LIMIT_MS: u64 = i32::MAX as u64;

/// The `[limits]` section: global defaults for tenants whose directory row says nothing (NULL).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// statement_timeout of every server connection, and pgtenant's ceiling per request; 0: off.
    pub statement_timeout_ms: u64,
    /// lock_timeout of every server connection (PostgreSQL's alone); 0: off.
    pub lock_timeout_ms: u64,
    /// idle_in_transaction_session_timeout of every server connection, and pgtenant's ceiling; 0: off.
    pub idle_in_transaction_timeout_ms: u64,
    /// A transaction (explicit, or a lone statement's) open longer than this ends the session with FATAL
    /// 25P04, as PostgreSQL 17's transaction_timeout; enforced by pgtenant. 0: off.
    pub transaction_timeout_ms: u64,
    /// pgtenant's ceilings of statement_timeout and idle_in_transaction_session_timeout fire this much after
    /// PostgreSQL's own timer would, so PostgreSQL's normally fires first.
    pub enforce_grace_ms: u64,
    /// A client waiting this long for a server connection gets a NOTICE (once per wait); 0: never.
    pub queue_notice_after_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            statement_timeout_ms: 0,
            lock_timeout_ms: 0,
            idle_in_transaction_timeout_ms: 0,
            transaction_timeout_ms: 0,
            enforce_grace_ms: 1_000,
            queue_notice_after_ms: 5_000,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("limits.statement_timeout_ms", self.statement_timeout_ms),
            ("limits.lock_timeout_ms", self.lock_timeout_ms),
            (
                "limits.idle_in_transaction_timeout_ms",
                self.idle_in_transaction_timeout_ms,
            ),
            ("limits.transaction_timeout_ms", self.transaction_timeout_ms),
            ("limits.enforce_grace_ms", self.enforce_grace_ms),
        ] {
            if value > MAX_LIMIT_MS {
                return Err(format!("{name} must be at most {MAX_LIMIT_MS}"));
            }
        }
        Ok(())
    }

    /// The default of `limit`, in milliseconds (0: off).
    pub fn default_of(&self, limit: Limit) -> u32 {
        let ms = match limit {
            Limit::StatementTimeout => self.statement_timeout_ms,
            Limit::LockTimeout => self.lock_timeout_ms,
            Limit::IdleInTransactionTimeout => self.idle_in_transaction_timeout_ms,
            Limit::TransactionTimeout => self.transaction_timeout_ms,
        };
        ms.min(MAX_LIMIT_MS) as u32
    }
}

/// One of the four limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    StatementTimeout,
    LockTimeout,
    IdleInTransactionTimeout,
    TransactionTimeout,
}

impl Limit {
    pub const ALL: [Limit; 4] = [
        Limit::StatementTimeout,
        Limit::LockTimeout,
        Limit::IdleInTransactionTimeout,
        Limit::TransactionTimeout,
    ];

    /// By PostgreSQL's setting name (any case); `idle_in_transaction_timeout` is accepted too.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "statement_timeout" => Some(Self::StatementTimeout),
            "lock_timeout" => Some(Self::LockTimeout),
            "idle_in_transaction_session_timeout" | "idle_in_transaction_timeout" => {
                Some(Self::IdleInTransactionTimeout)
            }
            "transaction_timeout" => Some(Self::TransactionTimeout),
            _ => None,
        }
    }

    /// PostgreSQL's name of the setting.
    pub fn setting_name(self) -> &'static str {
        match self {
            Self::StatementTimeout => "statement_timeout",
            Self::LockTimeout => "lock_timeout",
            Self::IdleInTransactionTimeout => "idle_in_transaction_session_timeout",
            Self::TransactionTimeout => "transaction_timeout",
        }
    }

    /// The column of `pgtenant.organizations` holding the tenant's value.
    pub fn column(self) -> &'static str {
        match self {
            Self::StatementTimeout => "statement_timeout_ms",
            Self::LockTimeout => "lock_timeout_ms",
            Self::IdleInTransactionTimeout => "idle_in_transaction_timeout_ms",
            Self::TransactionTimeout => "transaction_timeout_ms",
        }
    }
}

/// A tenant's own values, as its directory row holds them (milliseconds; `None`: the global default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    pub statement_timeout_ms: Option<u32>,
    pub lock_timeout_ms: Option<u32>,
    pub idle_in_transaction_timeout_ms: Option<u32>,
    pub transaction_timeout_ms: Option<u32>,
}

impl TenantLimits {
    /// From the columns as read (integers, checked `>= 0` by the table; a negative one counts as unset).
    pub fn from_columns(values: [Option<i32>; 4]) -> Self {
        let ms = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        Self {
            statement_timeout_ms: ms(values[0]),
            lock_timeout_ms: ms(values[1]),
            idle_in_transaction_timeout_ms: ms(values[2]),
            transaction_timeout_ms: ms(values[3]),
        }
    }

    pub fn get(&self, limit: Limit) -> Option<u32> {
        match limit {
            Limit::StatementTimeout => self.statement_timeout_ms,
            Limit::LockTimeout => self.lock_timeout_ms,
            Limit::IdleInTransactionTimeout => self.idle_in_transaction_timeout_ms,
            Limit::TransactionTimeout => self.transaction_timeout_ms,
        }
    }
}

/// The limits one session runs under (milliseconds, 0: off): the tenant's values, else the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLimits {
    pub statement_timeout_ms: u32,
    pub lock_timeout_ms: u32,
    pub idle_in_transaction_timeout_ms: u32,
    pub transaction_timeout_ms: u32,
    pub enforce_grace_ms: u32,
}

impl SessionLimits {
    pub fn resolve(config: &LimitsConfig, tenant: &TenantLimits) -> Self {
        let value = |limit| {
            tenant
                .get(limit)
                .unwrap_or_else(|| config.default_of(limit))
        };
        Self {
            statement_timeout_ms: value(Limit::StatementTimeout),
            lock_timeout_ms: value(Limit::LockTimeout),
            idle_in_transaction_timeout_ms: value(Limit::IdleInTransactionTimeout),
            transaction_timeout_ms: value(Limit::TransactionTimeout),
            enforce_grace_ms: config.enforce_grace_ms.min(MAX_LIMIT_MS) as u32,
        }
    }

    /// What PostgreSQL enforces itself, set on each server connection of the tenant.
    pub fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            statement_timeout_ms: self.statement_timeout_ms,
            lock_timeout_ms: self.lock_timeout_ms,
            idle_in_transaction_timeout_ms: self.idle_in_transaction_timeout_ms,
        }
    }

    /// Whether pgtenant keeps timers of its own for this session.
    pub fn enforced_by_pgtenant(&self) -> bool {
        self.statement_timeout_ms > 0
            || self.idle_in_transaction_timeout_ms > 0
            || self.transaction_timeout_ms > 0
    }
}

/// The limits a server connection was opened with, as startup parameters (0: not set, so the server's and
/// the role's own defaults apply). A connection is handed out only to sessions wanting the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerSettings {
    pub statement_timeout_ms: u32,
    pub lock_timeout_ms: u32,
    pub idle_in_transaction_timeout_ms: u32,
}

impl ServerSettings {
    /// (name, value) pairs for the startup packet, only for the limits that are on.
    pub fn startup_parameters(&self) -> Vec<(&'static str, String)> {
        [
            (Limit::StatementTimeout, self.statement_timeout_ms),
            (Limit::LockTimeout, self.lock_timeout_ms),
            (
                Limit::IdleInTransactionTimeout,
                self.idle_in_transaction_timeout_ms,
            ),
        ]
        .into_iter()
        .filter(|(_, ms)| *ms > 0)
        .map(|(limit, ms)| (limit.setting_name(), ms.to_string()))
        .collect()
    }
}

/// Why pgtenant's own limit ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitEnd {
    /// Idle in a transaction past idle_in_transaction_session_timeout (plus the grace).
    IdleInTransaction { limit_ms: u32 },
    /// In a transaction past transaction_timeout.
    Transaction { limit_ms: u32 },
}

impl LimitEnd {
    /// PostgreSQL's own FATAL for it, with a DETAIL saying it was pgtenant's limit.
    pub fn error(self) -> PgError {
        match self {
            LimitEnd::IdleInTransaction { limit_ms } => Refusal::IdleInTransactionTimeout {
                limit: format_ms(limit_ms),
            }
            .to_fatal(),
            LimitEnd::Transaction { limit_ms } => Refusal::TransactionTimeout {
                limit: format_ms(limit_ms),
            }
            .to_fatal(),
        }
    }
}

/// A duration as PostgreSQL takes one for these settings: a number with an optional unit (`ms`, `s`, `min`,
/// `h`, `d`; none means milliseconds), spaces allowed between them, up to [`MAX_LIMIT_MS`]. `0` is off.
pub fn parse_ms(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid duration \"{text}\": give a number with ms, s, min, h or d")
    })?;
    let factor: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "invalid unit \"{other}\" in \"{text}\": use ms, s, min, h or d"
            ))
        }
    };
    let ms = number
        .checked_mul(factor)
        .filter(|ms| *ms <= MAX_LIMIT_MS)
        .ok_or_else(|| format!("\"{text}\" is out of range (at most {MAX_LIMIT_MS} ms)"))?;
    Ok(ms as u32)
}

/// Milliseconds as PostgreSQL shows them (`SHOW statement_timeout`): the largest unit that divides the
/// value; `0` for off.
pub fn format_ms(ms: u32) -> String {
    if ms == 0 {
        return "0".into();
    }
    for (factor, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ] {
        if ms.is_multiple_of(factor) {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_as_postgres_does() {
        assert_eq!(parse_ms("5s"), Ok(5_000));
        assert_eq!(parse_ms(" 250 "), Ok(250));
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("2 min"), Ok(120_000));
        assert_eq!(parse_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_ms("0"), Ok(0));
        assert!(parse_ms("5 sec").is_err());
        assert!(parse_ms("-1").is_err());
        assert!(parse_ms("s").is_err());
        assert!(parse_ms("30d").is_err(), "over INT_MAX ms");
        assert!(parse_ms("99999999999999999999").is_err());
        assert_eq!(format_ms(5_000), "5s");
        assert_eq!(format_ms(120_000), "2min");
        assert_eq!(format_ms(1_500), "1500ms");
        assert_eq!(format_ms(0), "0");
        assert_eq!(format_ms(86_400_000), "1d");
    }

    #[test]
    fn the_tenant_value_wins_null_takes_the_default_and_zero_is_off() {
        let config = LimitsConfig {
            statement_timeout_ms: 30_000,
            lock_timeout_ms: 2_000,
            ..LimitsConfig::default()
        };
        let tenant = TenantLimits {
            statement_timeout_ms: Some(5_000),
            lock_timeout_ms: Some(0),
            idle_in_transaction_timeout_ms: None,
            transaction_timeout_ms: Some(60_000),
        };
        let limits = SessionLimits::resolve(&config, &tenant);
        assert_eq!(limits.statement_timeout_ms, 5_000);
        assert_eq!(limits.lock_timeout_ms, 0);
        assert_eq!(limits.idle_in_transaction_timeout_ms, 0);
        assert_eq!(limits.transaction_timeout_ms, 60_000);
        assert_eq!(limits.enforce_grace_ms, 1_000);
        assert!(limits.enforced_by_pgtenant());
        assert_eq!(
            limits.server_settings().startup_parameters(),
            vec![("statement_timeout", "5000".to_string())]
        );
        let defaults = SessionLimits::resolve(&config, &TenantLimits::default());
        assert_eq!(
            defaults.server_settings().startup_parameters(),
            vec![
                ("statement_timeout", "30000".to_string()),
                ("lock_timeout", "2000".to_string())
            ]
        );
        let none = SessionLimits::resolve(&LimitsConfig::default(), &TenantLimits::default());
        assert!(!none.enforced_by_pgtenant());
        assert!(none.server_settings().startup_parameters().is_empty());
    }

    #[test]
    fn limits_are_named_as_in_postgres() {
        for limit in Limit::ALL {
            assert_eq!(Limit::parse(limit.setting_name()), Some(limit));
        }
        assert_eq!(
            Limit::parse("IDLE_IN_TRANSACTION_TIMEOUT"),
            Some(Limit::IdleInTransactionTimeout)
        );
        assert_eq!(Limit::parse("work_mem"), None);
        assert_eq!(
            TenantLimits::from_columns([Some(1), None, Some(-1), Some(0)]),
            TenantLimits {
                statement_timeout_ms: Some(1),
                lock_timeout_ms: None,
                idle_in_transaction_timeout_ms: None,
                transaction_timeout_ms: Some(0),
            }
        );
    }

    #[test]
    fn pgtenant_ends_sessions_with_postgres_sqlstates() {
        let idle = LimitEnd::IdleInTransaction { limit_ms: 2_000 }.error();
        assert_eq!(idle.code, "25P03");
        assert_eq!(
            idle.message,
            "terminating connection due to idle-in-transaction timeout"
        );
        let tx = LimitEnd::Transaction { limit_ms: 60_000 }.error();
        assert_eq!(tx.code, "25P04");
        assert!(tx.detail.as_deref().is_some_and(|d| d.contains("1min")));
    }
}
