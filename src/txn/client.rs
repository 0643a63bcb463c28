//! The client side of transaction pooling: every client message in turn (framing, streaming large ones),
//! what it asks of the server connection (taken when a transaction starts), prepared statements that follow
//! the client to whichever connection it holds, and what pgtenant answers itself.

use super::expect::Expect;
use super::expect::Undo;
use super::inject::{close_stale, ensure_prepared, inject_error, make_room};
use super::statements::Statement;
use super::{
    checked_header, client_needs_whole, is_whole, simple_frame, NotTaken, State, Step, TakenNow,
    TxnSession,
};
use super::{deallocate, introspection, lasting, statements};
use crate::error::UserFacing;
use crate::protocol;
use crate::protocol::sqlstate;
use crate::protocol::tag;
use crate::protocol::PgError;
use crate::protocol::ProtocolError;
use crate::protocol::TxStatus;
use crate::refusal::Refusal;
use crate::relay::RelayEnd;
use crate::upstream::UpstreamConn;
use bytes::Buf;
use bytes::Bytes;
use tokio::io::AsyncWrite;

impl TxnSession<'_> {
    /// Handles every complete client message buffered (streaming large ones through).
    // Functions returning blocks, not async fns (here and below): an async fn keeps a copy of each
    // argument beside its body's, and the relay's future carries the room of this one while idle.
    pub(super) fn process_client<'a, CW: AsyncWrite + Unpin>(
        &'a self,
        state: &'a mut State,
        client_write: &'a mut CW,
    ) -> impl std::future::Future<Output = Result<Step, ProtocolError>> + 'a {
        async move {
            loop {
                if state.client_streaming > 0 {
                    let n = state.client_streaming.min(state.client_in.len());
                    if n == 0 {
                        return Ok(Step::Continue);
                    }
                    if !state.skipping_to_sync {
                        state.to_server.extend_from_slice(&state.client_in[..n]);
                    }
                    state.client_in.advance(n);
                    state.client_streaming -= n;
                    continue;
                }
                if state.client_in.len() < 5 {
                    return Ok(Step::Continue);
                }
                let (msg_tag, total) = checked_header(&state.client_in)?;
                let whole = state.client_in.len() >= total;
                // A Query is read whole too (up to the size the virtual schema rewrites), so its text can be
                // checked and rewritten even when it arrives in several reads.
                let query_held_whole =
                    msg_tag == tag::QUERY && total <= crate::relay::MAX_REWRITTEN;
                if !whole && (client_needs_whole(msg_tag) || query_held_whole) {
                    return Ok(Step::Continue);
                }
                if whole {
                    let frame = state.client_in.split_to(total).freeze();
                    if let Step::End(end) = self
                        .client_message(state, msg_tag, frame, client_write)
                        .await
                    {
                        return Ok(Step::End(end));
                    }
                } else {
                    // A large Query, CopyData or FunctionCall: account for it, then stream its bytes.
                    let available = state.client_in.len();
                    let head = state.client_in.split_to(available).freeze();
                    if let Step::End(end) = self
                        .client_message(state, msg_tag, head, client_write)
                        .await
                    {
                        return Ok(Step::End(end));
                    }
                    state.client_streaming = total - available;
                }
                self.emit_synthetic(state);
            }
        }
    }

    /// One client message (or the head of a large one).
    pub(super) fn client_message<'a, CW: AsyncWrite + Unpin>(
        &'a self,
        state: &'a mut State,
        msg_tag: u8,
        frame: Bytes,
        client_write: &'a mut CW,
    ) -> impl std::future::Future<Output = Step> + 'a {
        async move {
            if msg_tag == tag::TERMINATE {
                return Step::End(RelayEnd::ClientTerminated);
            }
            if state.expect.awaiting_sync() && msg_tag != tag::SYNC {
                // An error ended the batch and the server now discards every message up to the client's next
                // Sync, those sent after the error too: so does pgtenant (no answers, nothing injected or made
                // for them), then forwards the Sync.
                state.skipping_to_sync = true;
            }
            if state.skipping_to_sync {
                if msg_tag == tag::SYNC {
                    state.skipping_to_sync = false;
                    state.unsynced = false;
                    if state.server.is_none() {
                        protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                    } else {
                        if state.expect.client_sync() {
                            state.pending += 1;
                        }
                        state.to_server.extend_from_slice(&frame);
                    }
                }
                return Step::Continue;
            }
            let frame = match msg_tag {
                tag::QUERY | tag::PARSE if is_whole(&frame) => {
                    // The rewritten text is what the server sees, what statement names are derived from, and
                    // what is carried across server connections: done once per Parse, never per Bind.
                    let frame = match &self.virtual_schema {
                        Some(vs) => {
                            crate::sql::message::rewrite(msg_tag, &frame, |sql| vs.rewrite(sql))
                                .unwrap_or(frame)
                        }
                        None => frame,
                    };
                    if let Some(found) =
                        crate::sql::message::text(msg_tag, &frame).and_then(lasting::lasting_state)
                    {
                        state.lasting = Some(found);
                    }
                    introspection::rewrite_frame(msg_tag, &frame, &state.statements)
                        .unwrap_or(frame)
                }
                _ => frame,
            };
            if msg_tag == tag::QUERY && self.answer_deallocate(state, &frame) {
                return Step::Continue;
            }
            let body = &frame[5.min(frame.len())..];
            // Answered without a server: closing a named statement, and a Sync or Flush with nothing pending.
            if state.server.is_none() {
                match msg_tag {
                    tag::CLOSE => {
                        if let Some((b'S', name)) = statements::parse_target(body) {
                            if !name.is_empty() {
                                state.statements.remove(&String::from_utf8_lossy(name));
                                state.to_client.extend_from_slice(&simple_frame(b'3'));
                                return Step::Continue;
                            }
                        }
                    }
                    tag::PARSE => {
                        // A named Parse between transactions (a driver preparing, e.g. libpq's PQprepare, which
                        // blocks its caller) must not wait for a connection another of that caller's clients
                        // holds: if none is free now, the statement is kept and prepared on the server at its
                        // first Bind or Describe, and the client gets ParseComplete at once.
                        if let Some(p) =
                            statements::parse_parse(body).filter(|p| !p.name.is_empty())
                        {
                            let client_name = String::from_utf8_lossy(p.name).into_owned();
                            if state.statements.get(&client_name).is_some() {
                                protocol::write::error_response(
                                    &mut state.to_client,
                                    &Refusal::DuplicatePreparedStatement {
                                        name: client_name.clone(),
                                    }
                                    .to_error(),
                                );
                                state.skipping_to_sync = true;
                                return Step::Continue;
                            }
                            // Boxed, as below.
                            match Box::pin(self.try_ensure_server(state)).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    let statement = self.new_statement(p.query, p.param_types);
                                    state.statements.insert(client_name, statement);
                                    state.to_client.extend_from_slice(&simple_frame(b'1'));
                                    return Step::Continue;
                                }
                                Err(error) => {
                                    protocol::write::error_response(&mut state.to_client, &error);
                                    state.skipping_to_sync = true;
                                    return Step::Continue;
                                }
                            }
                        }
                    }
                    // A Sync or Flush with a body is malformed: PostgreSQL reports it (and, after a Flush,
                    // skips to the next Sync).
                    tag::SYNC | tag::FLUSH if !body.is_empty() => {
                        protocol::write::error_response(
                            &mut state.to_client,
                            &Refusal::InvalidMessageFormat.to_error(),
                        );
                        if msg_tag == tag::SYNC && state.expect.is_empty() && state.pending == 0 {
                            protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                        } else {
                            state.skipping_to_sync = true;
                        }
                        return Step::Continue;
                    }
                    tag::SYNC if state.expect.is_empty() && state.pending == 0 => {
                        protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle);
                        return Step::Continue;
                    }
                    tag::FLUSH => return Step::Continue,
                    _ => {}
                }
            }
            // Boxed, and only when the client holds no connection (once per transaction): taking one (pool wait,
            // health check, settings) is a large future, which inline every session would carry, idle or not,
            // for its whole life.
            let taken = match state.server {
                Some(_) => Ok(()),
                None => match self.take_server_now(state) {
                    TakenNow::Attached => Ok(()),
                    TakenNow::Taken(checkout) => Box::pin(self.attach(state, checkout))
                        .await
                        .map_err(NotTaken::Refused),
                    TakenNow::NoneNow => Box::pin(self.ensure_server(state, client_write)).await,
                },
            };
            if let Err(not_taken) = taken {
                let NotTaken::Refused(error) = not_taken else {
                    // Kicked while waiting: the relay's next turn ends the session; nothing more is said here.
                    return Step::Continue;
                };
                protocol::write::error_response(&mut state.to_client, &error);
                match msg_tag {
                    tag::QUERY | tag::FUNCTION_CALL | tag::SYNC => {
                        protocol::write::ready_for_query(&mut state.to_client, TxStatus::Idle)
                    }
                    _ => state.skipping_to_sync = true,
                }
                return Step::Continue;
            }
            let Some(checkout) = state.server.as_mut() else {
                return Step::Continue;
            };
            let conn = checkout.conn();
            match msg_tag {
                tag::QUERY | tag::FUNCTION_CALL => {
                    state.pending += 1;
                    state.recorder.request_sent();
                    state.expect.push(if msg_tag == tag::QUERY {
                        Expect::Query
                    } else {
                        Expect::FunctionCall
                    });
                    state.to_server.extend_from_slice(&frame);
                }
                tag::SYNC => {
                    if state.expect.client_sync() {
                        state.pending += 1;
                        state.recorder.request_sent();
                    }
                    state.unsynced = false;
                    state.to_server.extend_from_slice(&frame);
                }
                tag::COPY_DONE | tag::COPY_FAIL => {
                    state.expect.client_copy_end();
                    state.to_server.extend_from_slice(&frame);
                }
                tag::PARSE => {
                    close_stale(conn, &mut state.to_server, &mut state.expect);
                    state.unsynced = true;
                    match statements::parse_parse(body) {
                        Some(p) if !p.name.is_empty() => {
                            let client_name = String::from_utf8_lossy(p.name).into_owned();
                            if state.statements.get(&client_name).is_some() {
                                // As PostgreSQL: the name is taken; the server raises the error, so the batch
                                // (and an open transaction) fails there too.
                                inject_error(
                                    &mut state.to_server,
                                    &mut state.expect,
                                    &Refusal::DuplicatePreparedStatement {
                                        name: client_name.clone(),
                                    }
                                    .to_error(),
                                );
                            } else {
                                let statement = self.new_statement(p.query, p.param_types);
                                let server_name = statement.server_name.clone();
                                if conn.prepared.contains(&server_name) {
                                    conn.prepared.touch(&server_name);
                                    state.expect.push(Expect::Synthetic {
                                        frame: simple_frame(b'1'),
                                        undo: Some(Undo::ForgetClientStatement {
                                            client_name: client_name.clone(),
                                            server_name,
                                        }),
                                    });
                                } else {
                                    make_room(conn, &mut state.to_server, &mut state.expect);
                                    state.to_server.extend_from_slice(&statement.parse);
                                    conn.prepared.insert(server_name.clone());
                                    state.expect.push(Expect::Parse {
                                        server_name: Some(server_name),
                                        swallow: false,
                                        client_name: Some(client_name.clone()),
                                    });
                                }
                                state.statements.insert(client_name, statement);
                            }
                        }
                        _ => {
                            state.to_server.extend_from_slice(&frame);
                            state.expect.push(Expect::Parse {
                                server_name: None,
                                swallow: false,
                                client_name: None,
                            });
                        }
                    }
                }
                tag::BIND => {
                    close_stale(conn, &mut state.to_server, &mut state.expect);
                    state.unsynced = true;
                    let named = statements::parse_bind(body).and_then(|(portal, name, rest)| {
                        let client_name = String::from_utf8_lossy(name).into_owned();
                        let statement = state.statements.get(&client_name)?.clone();
                        Some((portal.to_vec(), statement, rest.to_vec(), client_name))
                    });
                    match named {
                        Some((_, statement, _, _)) if self.is_retired(conn, &statement) => {
                            inject_error(
                                &mut state.to_server,
                                &mut state.expect,
                                &Refusal::CachedPlanChanged.to_error(),
                            );
                        }
                        Some((portal, statement, rest, client_name)) => {
                            ensure_prepared(
                                conn,
                                &mut state.to_server,
                                &mut state.expect,
                                &statement,
                            );
                            state.to_server.extend_from_slice(&statements::encode_bind(
                                &portal,
                                &statement.server_name,
                                &rest,
                            ));
                            state.expect.push(Expect::Bind {
                                server_name: Some(statement.server_name),
                                swallow: false,
                                client_name: Some(client_name),
                            });
                        }
                        None => {
                            state.to_server.extend_from_slice(&frame);
                            state.expect.push(Expect::Bind {
                                server_name: None,
                                swallow: false,
                                client_name: None,
                            });
                        }
                    }
                }
                tag::DESCRIBE => {
                    close_stale(conn, &mut state.to_server, &mut state.expect);
                    state.unsynced = true;
                    match statements::parse_target(body) {
                        Some((b'S', name)) => {
                            let client_name = String::from_utf8_lossy(name).into_owned();
                            let known = state.statements.get(&client_name).cloned();
                            let names = known
                                .as_ref()
                                .map(|s| (s.server_name.clone(), client_name.clone()));
                            match known {
                                Some(statement) if self.is_retired(conn, &statement) => {
                                    inject_error(
                                        &mut state.to_server,
                                        &mut state.expect,
                                        &Refusal::CachedPlanChanged.to_error(),
                                    );
                                    return Step::Continue;
                                }
                                Some(statement) => {
                                    ensure_prepared(
                                        conn,
                                        &mut state.to_server,
                                        &mut state.expect,
                                        &statement,
                                    );
                                    state
                                        .to_server
                                        .extend_from_slice(&statements::encode_target(
                                            tag::DESCRIBE,
                                            b'S',
                                            &statement.server_name,
                                        ));
                                }
                                None => state.to_server.extend_from_slice(&frame),
                            }
                            state.expect.push(Expect::DescribeStatement { names });
                        }
                        _ => {
                            state.to_server.extend_from_slice(&frame);
                            state.expect.push(Expect::DescribePortal);
                        }
                    }
                }
                tag::CLOSE => {
                    state.unsynced = true;
                    match statements::parse_target(body) {
                        Some((b'S', name)) if !name.is_empty() => {
                            // The server-side statement stays for other clients; the client's name goes
                            // (unless an earlier error makes the server skip this Close).
                            let client_name = String::from_utf8_lossy(name).into_owned();
                            let undo = state.statements.remove(&client_name).map(|statement| {
                                Undo::RestoreClientStatement {
                                    client_name,
                                    statement,
                                }
                            });
                            state.expect.push(Expect::Synthetic {
                                frame: simple_frame(b'3'),
                                undo,
                            });
                        }
                        _ => {
                            state.to_server.extend_from_slice(&frame);
                            state.expect.push(Expect::Close { swallow: None });
                        }
                    }
                }
                tag::EXECUTE => {
                    state.unsynced = true;
                    state.expect.push(Expect::Execute);
                    state.to_server.extend_from_slice(&frame);
                }
                _ => state.to_server.extend_from_slice(&frame),
            }
            Step::Continue
        }
    }

    /// The client statement for a Parse: its server-side name carries the generation of that query (bumped
    /// each time a statement of it went stale).
    pub(super) fn new_statement(&self, query: &[u8], param_types: &[u8]) -> Statement {
        let base = crate::upstream::statements::server_name(query, param_types);
        let generation = self.pools.statement_generation(self.pool, &base);
        let server_name = crate::upstream::statements::with_generation(&base, generation);
        Statement {
            parse: statements::encode_parse(&server_name, query, param_types),
            server_name,
        }
    }

    /// The statement went stale after DDL and this connection does not have it: PostgreSQL would keep
    /// failing it, so pgtenant must not prepare it again under the client's old name.
    pub(super) fn is_retired(&self, conn: &UpstreamConn, statement: &Statement) -> bool {
        !conn.prepared.contains(&statement.server_name)
            && self.pools.is_retired(self.pool, &statement.server_name)
    }

    /// Sends synthetic responses that reached the head of the queue.
    /// A Query that is one SQL `DEALLOCATE` of one of the client's protocol-level statements, with nothing
    /// outstanding: answered here as PostgreSQL would (see [`deallocate`]). Returns whether it was.
    pub(super) fn answer_deallocate(&self, state: &mut State, frame: &Bytes) -> bool {
        if state.statements.is_empty()
            || !is_whole(frame)
            || !state.expect.is_empty()
            || state.pending > 0
        {
            return false;
        }
        let Some(name) =
            crate::sql::message::text(tag::QUERY, frame).and_then(deallocate::deallocated_name)
        else {
            return false;
        };
        if state.statements.get(&name).is_none() {
            return false;
        }
        let status = if state.server.is_none() {
            TxStatus::Idle
        } else {
            state.status
        };
        if status == TxStatus::Failed {
            protocol::write::error_response(
                &mut state.to_client,
                &Refusal::TransactionAborted.to_error(),
            );
        } else {
            state.statements.remove(&name);
            protocol::write::command_complete(&mut state.to_client, "DEALLOCATE");
        }
        protocol::write::ready_for_query(&mut state.to_client, status);
        true
    }

    pub(super) fn emit_synthetic(&self, state: &mut State) {
        for frame in state.expect.take_synthetic_head() {
            state.to_client.extend_from_slice(&frame);
        }
    }
}

/// A NOTICE for commands whose effect cannot outlast the transaction in transaction pooling.
pub(super) fn session_feature_notice(command: &[u8]) -> Option<PgError> {
    let text = match command {
        b"LISTEN" => "LISTEN has no lasting effect in transaction pooling: notifications reach this client only while it holds a server connection (inside a transaction); use session pooling for LISTEN",
        b"PREPARE" => "SQL PREPARE does not outlast the transaction in transaction pooling; use the protocol's prepared statements (your driver's), which pgtenant carries across server connections",
        _ => return None,
    };
    Some(PgError::notice(sqlstate::WARNING, text))
}
