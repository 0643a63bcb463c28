//! The settings of ALTER TENANT: a limit by its name, and `setting = value` of ALTER TENANT … SET.

use super::SyntaxError;
use crate::limits::Limit;

/// The form of ALTER TENANT, for hints.
pub(super) const ALTER_TENANT_FORM: &str =
    "ALTER TENANT x SET statement_timeout = '5s' | ALTER TENANT x RESET statement_timeout | ALL";

pub(super) fn limit_named(name: &str) -> Result<Limit, SyntaxError> {
    Limit::parse(name).ok_or_else(|| SyntaxError {
        message: format!("unknown tenant setting \"{name}\""),
        hint: "the settings are statement_timeout, lock_timeout, idle_in_transaction_session_timeout and transaction_timeout".into(),
    })
}

/// `setting = value` or `setting TO value` (value `DEFAULT`: back to the default) of ALTER TENANT … SET.
pub(super) fn limit_assignment(text: &str) -> Result<(Limit, Option<u32>), SyntaxError> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    let rest = rest.trim_start();
    let value = if let Some(v) = rest.strip_prefix('=') {
        v
    } else if rest
        .get(..3)
        .is_some_and(|to| to.eq_ignore_ascii_case("to "))
    {
        &rest[3..]
    } else {
        return Err(SyntaxError {
            message: format!("syntax error in admin command \"ALTER TENANT … SET {text}\""),
            hint: format!("expected: {ALTER_TENANT_FORM}"),
        });
    };
    let limit = limit_named(name)?;
    let value = value.trim();
    if value.eq_ignore_ascii_case("default") {
        return Ok((limit, None));
    }
    let ms = crate::limits::parse_ms(value).map_err(|message| SyntaxError {
        message: format!("invalid value for {}: {message}", limit.setting_name()),
        hint: "give a duration such as '500ms', '5s', '2min' or '1h'; 0 turns the limit off".into(),
    })?;
    Ok((limit, Some(ms)))
}
