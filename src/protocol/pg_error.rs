//! Errors and notices in PostgreSQL's terms read from upstream ([`ErrorFields`]), and a [`PgError`] (defined
//! in [`crate::error`]) made of one.

use super::sqlstate;
use crate::error::{PgError, Severity};

/// An error PostgreSQL reported, passed on with its own SQLSTATE.
impl PgError {
    pub fn from_upstream(fields: &ErrorFields) -> Self {
        let code = if fields.code.len() == 5 {
            fields.code.clone()
        } else {
            sqlstate::INTERNAL_ERROR.to_string()
        };
        Self {
            severity: if fields.severity == "ERROR" {
                Severity::Error
            } else {
                Severity::Fatal
            },
            code: std::borrow::Cow::Owned(code),
            message: fields.message.clone(),
            detail: None,
            hint: None,
        }
    }
}

/// Fields of an ErrorResponse / NoticeResponse body read from upstream.
#[derive(Debug, Default, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> Self {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        fields
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}
