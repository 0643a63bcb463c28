//! Session state that outlives the transaction on its server connection in transaction pooling, spotted in
//! the client's SQL so that pgtenant can say so (a NOTICE before the ReadyForQuery that ends the
//! transaction): session advisory locks, `WITH HOLD` cursors and temporary tables not dropped at commit.
//! LISTEN and SQL `PREPARE` are told by their command tags instead. The check is a byte search for the
//! words involved; only a text that has one is lexed.

use crate::protocol::PgError;
use crate::sql::{self, Token, TokenKind};

/// What a client's SQL leaves on the server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastingState {
    AdvisoryLock,
    HoldCursor,
    TempTable,
}

impl LastingState {
    pub fn notice(self) -> PgError {
        let text = match self {
            LastingState::AdvisoryLock => "a session advisory lock is not released when the transaction ends in transaction pooling: it stays with the server connection, which the tenant's other clients use next, even after this client leaves; use pg_advisory_xact_lock inside a transaction, or session pooling",
            LastingState::HoldCursor => "a WITH HOLD cursor stays on its server connection in transaction pooling: this client's next transaction may run elsewhere; FETCH from it inside the same transaction, or use session pooling",
            LastingState::TempTable => "a temporary table outlives the transaction only on its server connection in transaction pooling: this client's next transaction may not see it and the tenant's other clients may; create it with ON COMMIT DROP inside a transaction, or use session pooling",
        };
        PgError::notice(crate::protocol::sqlstate::WARNING, text)
    }
}

const ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Whether the text may hold one of the words (case-insensitively): the cheap first check.
fn may_mention(sql: &[u8]) -> bool {
    [&b"advisory_lock"[..], b"hold", b"temp"]
        .iter()
        .any(|w| sql::contains_ignore_ascii_case(sql, w))
}

/// The first lasting state the SQL text creates, if any.
pub fn lasting_state(sql: &[u8]) -> Option<LastingState> {
    if !may_mention(sql) {
        return None;
    }
    let tokens: Vec<Token> = sql::tokens(sql)
        .filter(|t| !matches!(t.kind, TokenKind::Whitespace | TokenKind::Comment))
        .collect();
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| sql::is_identifier(sql, t, w));
    let other = |i: usize, c: u8| {
        tokens
            .get(i)
            .is_some_and(|t| t.kind == TokenKind::Other && t.text(sql) == [c])
    };
    let mut statement_start = 0;
    for i in 0..tokens.len() {
        if other(i, b';') {
            statement_start = i + 1;
            continue;
        }
        if ADVISORY_LOCKS.iter().any(|f| word(i, f)) && other(i + 1, b'(') {
            return Some(LastingState::AdvisoryLock);
        }
        if word(i, "with") && word(i + 1, "hold") {
            return Some(LastingState::HoldCursor);
        }
        let temp_at = |j: usize| word(j, "temp") || word(j, "temporary");
        let creates_temp = (word(i, "create")
            && (temp_at(i + 1)
                || ((word(i + 1, "global") || word(i + 1, "local")) && temp_at(i + 2))))
            || (word(i, "into") && temp_at(i + 1) && i > statement_start);
        if creates_temp {
            let end = (i..tokens.len())
                .find(|&j| other(j, b';'))
                .unwrap_or(tokens.len());
            let dropped_at_commit =
                (i..end).any(|j| word(j, "on") && word(j + 1, "commit") && word(j + 2, "drop"));
            if !dropped_at_commit {
                return Some(LastingState::TempTable);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use LastingState::*;

    #[test]
    fn spots_what_outlives_the_transaction() {
        let cases: &[(&str, Option<LastingState>)] = &[
            ("SELECT pg_advisory_lock(1)", Some(AdvisoryLock)),
            (
                "select PG_TRY_ADVISORY_LOCK_SHARED (1, 2)",
                Some(AdvisoryLock),
            ),
            ("SELECT pg_advisory_xact_lock(1)", None),
            ("SELECT 'pg_advisory_lock(1)'", None),
            ("SELECT pg_advisory_unlock(1)", None),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Some(HoldCursor)),
            ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", None),
            ("DECLARE c CURSOR FOR SELECT hold FROM t", None),
            ("CREATE TEMP TABLE t (v int)", Some(TempTable)),
            ("create local temporary table t (v int)", Some(TempTable)),
            ("CREATE TEMP TABLE t (v int) ON COMMIT DROP", None),
            (
                "CREATE TEMP TABLE t (v int) ON COMMIT DROP; CREATE TEMP VIEW w AS SELECT 1",
                Some(TempTable),
            ),
            ("SELECT 1 INTO TEMP t", Some(TempTable)),
            ("SELECT temp, hold FROM t -- CREATE TEMP TABLE x", None),
            ("CREATE TABLE temp (v int)", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(lasting_state(sql.as_bytes()), *want, "{sql}");
        }
    }

    #[test]
    fn every_notice_names_transaction_pooling() {
        for s in [AdvisoryLock, HoldCursor, TempTable] {
            let n = s.notice();
            assert_eq!(n.code, "01000");
            assert!(
                n.message.contains("in transaction pooling"),
                "{}",
                n.message
            );
        }
    }
}
