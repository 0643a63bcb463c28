//! The server side of transaction pooling: the server's messages matched to what the client asked for,
//! what they mean for the books of the client and the connection, and what the client is shown.

use super::client::session_feature_notice;
use super::expect;
use super::expect::Disposition;
use super::expect::Undo;
use super::statements::ClientStatements;
use super::{checked_header, server_needs_whole, State, TxnSession};
use crate::protocol;
use crate::protocol::sqlstate;
use crate::protocol::ErrorFields;
use crate::protocol::ProtocolError;
use crate::protocol::TxStatus;
use bytes::Buf;
use bytes::BufMut;
use bytes::BytesMut;

impl TxnSession<'_> {
    /// Applies what a server message implied for the books of the client and the connection.
    pub(super) fn apply(&self, state: &mut State, outcome: &expect::Outcome) {
        if let Some(checkout) = state.server.as_mut() {
            let conn = checkout.conn();
            for name in &outcome.forget {
                conn.prepared.remove(name);
            }
            for undo in &outcome.undo {
                if let Undo::ServerStillHas(name) = undo {
                    if !name.is_empty() {
                        conn.prepared.insert(name.clone());
                    }
                }
            }
        }
        for undo in &outcome.undo {
            match undo {
                Undo::ForgetClientStatement {
                    client_name,
                    server_name,
                } => {
                    if state
                        .statements
                        .get(client_name)
                        .is_some_and(|s| s.server_name == *server_name)
                    {
                        state.statements.remove(client_name);
                    }
                }
                Undo::RestoreClientStatement {
                    client_name,
                    statement,
                } => state
                    .statements
                    .insert(client_name.clone(), statement.clone()),
                Undo::ServerStillHas(_) => {}
            }
        }
    }

    /// Walks server bytes: matches each message against what the client expects, forwards, swallows,
    /// adds pgtenant's own, and follows settings and transaction status.
    pub(super) fn process_server(&self, state: &mut State) -> Result<(), ProtocolError> {
        loop {
            if state.server_streaming > 0 {
                let n = state.server_streaming.min(state.server_in.len());
                if n == 0 {
                    return Ok(());
                }
                state.to_client.extend_from_slice(&state.server_in[..n]);
                state.server_in.advance(n);
                state.server_streaming -= n;
                continue;
            }
            if state.server_in.len() < 5 {
                return Ok(());
            }
            let (msg_tag, total) = checked_header(&state.server_in)?;
            let whole = state.server_in.len() >= total;
            if !whole && server_needs_whole(msg_tag) {
                return Ok(());
            }
            let mut notice_after = None;
            if whole {
                let body = &state.server_in[5..total];
                match msg_tag {
                    b'E' => {
                        state.recorder.error();
                        // What failed left nothing behind (or rolled back with its transaction).
                        state.lasting = None;
                        let fields = ErrorFields::parse(body);
                        if fields.code == sqlstate::FEATURE_NOT_SUPPORTED
                            && fields
                                .message
                                .contains("cached plan must not change result type")
                        {
                            if let (Some(name), Some(checkout)) =
                                (state.expect.head_bind_statement(), state.server.as_mut())
                            {
                                // Stale everywhere: no client statement may be quietly re-prepared under it
                                // with another result shape; new Parses get a new name.
                                checkout.conn().prepared.mark_stale(name);
                                self.pools.retire_statement(self.pool, name);
                            }
                        }
                    }
                    b'S' => {
                        let mut b = BytesMut::from(body);
                        if let (Some(name), Some(value)) =
                            (protocol::get_cstr(&mut b), protocol::get_cstr(&mut b))
                        {
                            if let Some(checkout) = state.server.as_mut() {
                                checkout.conn().set_parameter(name.clone(), value.clone());
                            }
                            // Shared with other sessions until this one changes a value.
                            match state.desired.iter().position(|(n, _)| *n == name) {
                                Some(i) if state.desired[i].1 == value => {}
                                Some(i) => {
                                    std::sync::Arc::make_mut(&mut state.desired)[i].1 = value
                                }
                                None => {
                                    std::sync::Arc::make_mut(&mut state.desired).push((name, value))
                                }
                            }
                        }
                    }
                    b'Z' => {
                        state.status = body
                            .first()
                            .and_then(|b| TxStatus::from_byte(*b))
                            .unwrap_or(TxStatus::Failed);
                        state.pending = state.pending.saturating_sub(1);
                        state.answered += 1;
                        if state.status == TxStatus::Idle {
                            if let Some(found) = state.lasting.take() {
                                protocol::write::notice_response(
                                    &mut state.to_client,
                                    &found.notice(),
                                );
                            }
                        }
                    }
                    b'C' => {
                        let command = body.split(|b| *b == 0).next().unwrap_or(&[]);
                        if command == b"DEALLOCATE ALL" || command == b"DISCARD ALL" {
                            // Every prepared statement of the session is gone: pgtenant's and the client's.
                            if let Some(checkout) = state.server.as_mut() {
                                checkout.conn().prepared.clear();
                            }
                            state.statements = ClientStatements::default();
                        }
                        notice_after = session_feature_notice(command);
                    }
                    _ => {}
                }
            }
            // An error naming pgtenant's server-side statement names the client's instead.
            let renamed = if msg_tag == b'E' && whole {
                state
                    .expect
                    .head_statement_names()
                    .and_then(|(server, client)| {
                        rename_in_error(&state.server_in[..total], server, client)
                    })
            } else {
                None
            };
            let outcome = state.expect.on_server_message(msg_tag);
            if outcome.unmatched {
                tracing::warn!(
                    tag = %(msg_tag as char),
                    // Nothing was taken off the queue: its head is what the books expected instead.
                    expected = %state.expect.head_for_log(),
                    pending = state.pending,
                    backend_pid = state.server.as_mut().map(|c| c.conn().process_id),
                    "a server response matched no request of the client's (forwarded as is)"
                );
            }
            // What the client last saw: a FATAL pgtenant swallowed (the answer to a message it injected)
            // leaves the client without an error, so pgtenant adds its own when the server then closes.
            if outcome.disposition != Some(Disposition::Swallow) {
                state.last_server_error = msg_tag == b'E';
            }
            state.pending = state.pending.saturating_sub(outcome.syncs_ignored);
            self.apply(state, &outcome);
            let take = if whole { total } else { state.server_in.len() };
            if outcome.disposition != Some(Disposition::Swallow) {
                match &renamed {
                    Some(renamed) => state.to_client.extend_from_slice(renamed),
                    None => state.to_client.extend_from_slice(&state.server_in[..take]),
                }
            }
            state.server_in.advance(take);
            if !whole {
                state.server_streaming = total - take;
            }
            if let Some(notice) = notice_after {
                protocol::write::notice_response(&mut state.to_client, &notice);
            }
            self.emit_synthetic(state);
        }
    }
}

/// The ErrorResponse `frame` with `"server"` replaced by `"client"`, if it names it.
pub(super) fn rename_in_error(frame: &[u8], server: &str, client: &str) -> Option<BytesMut> {
    let needle = format!("\"{server}\"");
    let body = &frame[5..];
    let text = String::from_utf8_lossy(body);
    if !text.contains(&needle) {
        return None;
    }
    let replaced = text.replace(&needle, &format!("\"{client}\""));
    let mut out = BytesMut::with_capacity(replaced.len() + 5);
    out.put_u8(b'E');
    out.put_i32((replaced.len() + 4) as i32);
    out.extend_from_slice(replaced.as_bytes());
    Some(out)
}
