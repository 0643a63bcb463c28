//! The PostgreSQL v3 wire format, in one place: message tags, frame headers, startup packets and the few
//! backend messages pgtenant writes itself. The relay never decodes rows; it reads frame headers and the tags
//! named here.
//!
//! A file per job: `startup` (the first packet of a connection), `read` (a tagged message), `write` (the
//! messages pgtenant writes), `pg_error` (errors and notices, pgtenant's and upstream's), `scanner` (frame
//! boundaries in a relayed byte stream); the tags, request codes and shared types are here.

mod pg_error;
mod read;
mod scanner;
mod startup;
pub mod write;

pub use crate::error::{PgError, Severity};
pub use pg_error::ErrorFields;
pub use read::{get_cstr, read_message};
pub use scanner::{FrameScanner, StopAt, MAX_FRAME_LEN};
pub use startup::{read_startup_packet, StartupPacket, StartupParams};

/// Largest startup packet accepted (PostgreSQL's own limit is 10,000 bytes).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Message tags pgtenant looks at. Frontend and backend tags share a byte space, so they are grouped.
pub mod tag {
    // frontend
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // backend
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const COMMAND_COMPLETE: u8 = b'C';
}

/// Type OID of `text`.
pub const TEXT_OID: i32 = 25;

/// Request codes that take the place of a protocol version in the first packet.
pub mod request_code {
    pub const SSL: i32 = 80_877_103;
    pub const GSSENC: i32 = 80_877_104;
    pub const CANCEL: i32 = 80_877_102;
    pub const PROTOCOL_3_0: i32 = 196_608;
}

/// Transaction status carried by ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    BadStartupLength(usize),
    #[error("invalid message length {len} for message type {tag:?}")]
    BadFrameLength { tag: char, len: usize },
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("expected {expected:?} message, got {got:?}")]
    Unexpected { expected: char, got: char },
}

/// SQLSTATE codes pgtenant uses.
pub use crate::error::sqlstate;

#[cfg(test)]
mod tests;
