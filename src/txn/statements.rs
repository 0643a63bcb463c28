//! Named prepared statements in transaction pooling.
//!
//! A client's statement names mean nothing on the server connection it happens to get, so pgtenant keeps,
//! per client, the Parse of every named statement, and gives it a server-side name derived from the query
//! text and parameter types (`pgt_<hash>`): every client of a tenant that prepares the same query shares it
//! on a server connection. Each server connection remembers which server-side names it has prepared
//! (bounded, least recently used evicted: [`crate::upstream::statements`]); a Bind or Describe of a
//! statement the connection lacks is preceded by an injected Parse.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// A named statement a client prepared.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Name on server connections.
    pub server_name: String,
    /// The Parse message to send to a server connection that lacks it (already using `server_name`).
    pub parse: Bytes,
}

/// The statements of one client.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Statement>,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Statement> {
        self.by_name.get(name)
    }
    pub fn insert(&mut self, name: String, statement: Statement) {
        self.by_name.insert(name, statement);
    }
    pub fn remove(&mut self, name: &str) -> Option<Statement> {
        self.by_name.remove(name)
    }
    pub fn len(&self) -> usize {
        self.by_name.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
    /// (client name, statement) of every statement.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Statement)> {
        self.by_name.iter().map(|(n, s)| (n.as_str(), s))
    }
}

/// A decoded Parse message body.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter-type part (count and OIDs), kept as bytes.
    pub param_types: &'a [u8],
}

fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|b| *b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

pub fn parse_parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(body)?;
    let (query, rest) = cstr(rest)?;
    Some(Parse {
        name,
        query,
        param_types: rest,
    })
}

/// A Parse message (whole frame) for `name`.
pub fn encode_parse(name: &str, query: &[u8], param_types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(query.len() + param_types.len() + name.len() + 8);
    out.put_u8(b'P');
    out.put_i32((4 + name.len() + 1 + query.len() + 1 + param_types.len()) as i32);
    out.extend_from_slice(name.as_bytes());
    out.put_u8(0);
    out.extend_from_slice(query);
    out.put_u8(0);
    out.extend_from_slice(param_types);
    out.freeze()
}

/// The statement name a Bind body refers to: (portal, statement, rest after the statement name).
pub fn parse_bind(body: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = cstr(body)?;
    let (statement, rest) = cstr(rest)?;
    Some((portal, statement, rest))
}

/// A Bind frame with the statement name replaced.
pub fn encode_bind(portal: &[u8], statement: &str, rest: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(portal.len() + statement.len() + rest.len() + 8);
    out.put_u8(b'B');
    out.put_i32((4 + portal.len() + 1 + statement.len() + 1 + rest.len()) as i32);
    out.extend_from_slice(portal);
    out.put_u8(0);
    out.extend_from_slice(statement.as_bytes());
    out.put_u8(0);
    out.extend_from_slice(rest);
    out.freeze()
}

/// Describe or Close: (kind 'S' or 'P', name).
pub fn parse_target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// A Describe ('D') or Close ('C') frame for a statement or portal.
pub fn encode_target(tag: u8, kind: u8, name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + 8);
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.extend_from_slice(name.as_bytes());
    out.put_u8(0);
    out.freeze()
}

/// Reads the 1-byte tag and the body of a complete frame.
pub fn split_frame(frame: &[u8]) -> (u8, &[u8]) {
    let mut header = &frame[..5];
    let tag = header.get_u8();
    (tag, &frame[5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bind_and_targets_round_trip() {
        let parse = encode_parse("pgt_x", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let (tag, body) = split_frame(&parse);
        assert_eq!(tag, b'P');
        let p = parse_parse(body).expect("parse");
        assert_eq!(p.name, b"pgt_x");
        assert_eq!(p.query, b"SELECT $1");
        assert_eq!(p.param_types, &[0, 1, 0, 0, 0, 23]);

        let bind = encode_bind(b"", "pgt_x", &[0, 0, 0, 0, 0, 0]);
        let (tag, body) = split_frame(&bind);
        assert_eq!(tag, b'B');
        let (portal, statement, rest) = parse_bind(body).expect("bind");
        assert_eq!(
            (portal, statement, rest),
            (&b""[..], &b"pgt_x"[..], &[0u8, 0, 0, 0, 0, 0][..])
        );

        let describe = encode_target(b'D', b'S', "pgt_x");
        let (_, body) = split_frame(&describe);
        assert_eq!(parse_target(body), Some((b'S', &b"pgt_x"[..])));
    }
}
