//! What pgtenant writes into the server stream on the client's behalf: Closes of stale or least recently
//! used statements, the Parse of a statement the connection lacks, and an error raised in the client's batch.

use super::expect::{Expect, Expectations};
use super::statements::{self, Statement};
use super::SERVER_STATEMENT_CACHE;
use crate::protocol::tag;
use crate::protocol::PgError;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;

/// Closes statements the server reported stale, before the next extended message on this connection.
pub(super) fn close_stale(
    conn: &mut UpstreamConn,
    to_server: &mut BytesMut,
    expect: &mut Expectations,
) {
    for name in conn.prepared.take_stale() {
        to_server.extend_from_slice(&statements::encode_target(tag::CLOSE, b'S', &name));
        // If skipped, the stale statement stays; it is not listed as prepared, and it is retired, so it
        // is never injected again under that name.
        expect.push(Expect::Close {
            swallow: Some(String::new()),
        });
    }
}

/// Closes the least recently used statement on a full connection.
pub(super) fn make_room(
    conn: &mut UpstreamConn,
    to_server: &mut BytesMut,
    expect: &mut Expectations,
) {
    while conn.prepared.len() >= SERVER_STATEMENT_CACHE {
        let Some(victim) = conn.prepared.least_recently_used() else {
            break;
        };
        conn.prepared.remove(&victim);
        to_server.extend_from_slice(&statements::encode_target(tag::CLOSE, b'S', &victim));
        expect.push(Expect::Close {
            swallow: Some(victim),
        });
    }
}

/// Injects the Parse of a statement the connection lacks.
pub(super) fn ensure_prepared(
    conn: &mut UpstreamConn,
    to_server: &mut BytesMut,
    expect: &mut Expectations,
    statement: &Statement,
) {
    if conn.prepared.contains(&statement.server_name) {
        conn.prepared.touch(&statement.server_name);
        return;
    }
    make_room(conn, to_server, expect);
    to_server.extend_from_slice(&statement.parse);
    conn.prepared.insert(statement.server_name.clone());
    expect.push(Expect::Parse {
        server_name: Some(statement.server_name.clone()),
        swallow: true,
        client_name: None,
    });
}

/// Makes the server raise `error` in the client's batch, in place of the request that PostgreSQL would
/// have refused: the batch and an open transaction then fail on the server exactly as they would
/// directly. (Uses the unnamed statement and portal, as a client's failed request leaves them unusable.)
pub(super) fn inject_error(to_server: &mut BytesMut, expect: &mut Expectations, error: &PgError) {
    let body = format!(
        "DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}; END$pgtenant$",
        crate::names::quote_literal(&error.code),
        crate::names::quote_literal(&error.message.replace("$pgtenant$", "")),
    );
    to_server.extend_from_slice(&statements::encode_parse("", body.as_bytes(), &[0, 0]));
    expect.push(Expect::Parse {
        server_name: None,
        swallow: true,
        client_name: None,
    });
    to_server.extend_from_slice(&statements::encode_bind(b"", "", &[0, 0, 0, 0, 0, 0]));
    expect.push(Expect::Bind {
        server_name: None,
        swallow: true,
        client_name: None,
    });
    to_server.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    expect.push(Expect::Execute);
}
