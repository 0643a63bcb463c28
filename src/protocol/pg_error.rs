//! Errors and notices in PostgreSQL's terms: the ones pgtenant reports to a client ([`PgError`]), and the
//! fields of those read from upstream ([`ErrorFields`]).

use super::sqlstate;

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
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code: std::borrow::Cow::Borrowed(code),
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
    /// An error PostgreSQL reported, passed on with its own SQLSTATE.
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
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
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
