//! A raw protocol client for tests: exact messages in, a readable transcript of the answers out, and the
//! comparison of transcripts between PostgreSQL and pgtenant in transaction pooling.

use super::*;
use bytes::{BufMut, BytesMut};
use pgtenant::config::PoolMode;
use pgtenant::upstream::{Login, SaltedPasswordCache, UpstreamConn, UpstreamTarget};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A proxy in transaction pooling with `size` server connections per tenant.
pub async fn txn_proxy(size: usize) -> TestProxy {
    txn_proxy_with(size, |_| {}).await
}

pub async fn txn_proxy_with(
    size: usize,
    adjust: impl FnOnce(&mut pgtenant::config::Config),
) -> TestProxy {
    TestProxy::start_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size_per_tenant = size;
        adjust(c);
    })
    .await
}

#[derive(Clone, Debug)]
pub enum Msg {
    Parse(&'static str, &'static str),
    Bind(&'static str, &'static str, Vec<Option<&'static str>>),
    DescribeStatement(&'static str),
    DescribePortal(&'static str),
    Execute(&'static str),
    CloseStatement(&'static str),
    Sync,
    Flush,
    Query(&'static str),
    /// Execute with a row limit.
    ExecuteMax(&'static str, i32),
    CopyData(&'static str),
    CopyDone,
    CopyFail(&'static str),
    /// FunctionCall of a function by OID with int4 arguments in binary, result in binary.
    FunctionCall(u32, Vec<Option<i32>>),
}

pub fn cstr(b: &mut BytesMut, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.put_u8(0);
}

pub fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(body);
}

pub fn encode(msgs: &[Msg]) -> BytesMut {
    let mut out = BytesMut::new();
    for m in msgs {
        let mut b = BytesMut::new();
        let tag = match m {
            Msg::Parse(name, sql) => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.put_i16(0);
                b'P'
            }
            Msg::Bind(portal, stmt, params) => {
                cstr(&mut b, portal);
                cstr(&mut b, stmt);
                b.put_i16(0);
                b.put_i16(params.len() as i16);
                for p in params {
                    match p {
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.extend_from_slice(v.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
                b.put_i16(0);
                b'B'
            }
            Msg::DescribeStatement(name) => {
                b.put_u8(b'S');
                cstr(&mut b, name);
                b'D'
            }
            Msg::DescribePortal(name) => {
                b.put_u8(b'P');
                cstr(&mut b, name);
                b'D'
            }
            Msg::Execute(portal) => {
                cstr(&mut b, portal);
                b.put_i32(0);
                b'E'
            }
            Msg::CloseStatement(name) => {
                b.put_u8(b'S');
                cstr(&mut b, name);
                b'C'
            }
            Msg::Sync => b'S',
            Msg::Flush => b'H',
            Msg::Query(sql) => {
                cstr(&mut b, sql);
                b'Q'
            }
            Msg::ExecuteMax(portal, max) => {
                cstr(&mut b, portal);
                b.put_i32(*max);
                b'E'
            }
            Msg::CopyData(data) => {
                b.extend_from_slice(data.as_bytes());
                b'd'
            }
            Msg::CopyDone => b'c',
            Msg::CopyFail(message) => {
                cstr(&mut b, message);
                b'f'
            }
            Msg::FunctionCall(oid, args) => {
                b.put_u32(*oid);
                b.put_i16(1);
                b.put_i16(1);
                b.put_i16(args.len() as i16);
                for a in args {
                    match a {
                        Some(v) => {
                            b.put_i32(4);
                            b.put_i32(*v);
                        }
                        None => b.put_i32(-1),
                    }
                }
                b.put_i16(1);
                b'F'
            }
        };
        frame(&mut out, tag, &b);
    }
    out
}

/// One readable line per message (ParameterStatus and notices left out).
pub fn describe_message(tag: u8, body: &[u8]) -> Option<String> {
    let mut b = body;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Some(match tag {
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b's' => "PortalSuspended".into(),
        b'I' => "EmptyQueryResponse".into(),
        b't' => {
            let n = i16::from_be_bytes([b[0], b[1]]) as usize;
            let oids: Vec<u32> = (0..n)
                .map(|i| u32::from_be_bytes(b[2 + 4 * i..6 + 4 * i].try_into().expect("oid")))
                .collect();
            format!("ParameterDescription {oids:?}")
        }
        b'T' => {
            let n = i16::from_be_bytes([b[0], b[1]]) as usize;
            b = &b[2..];
            let mut cols = Vec::new();
            for _ in 0..n {
                let end = b.iter().position(|x| *x == 0).expect("column name");
                let name = text(&b[..end]);
                let oid = u32::from_be_bytes(b[end + 7..end + 11].try_into().expect("type oid"));
                cols.push(format!("{name}:{oid}"));
                b = &b[end + 19..];
            }
            format!("RowDescription [{}]", cols.join(", "))
        }
        b'D' => {
            let n = i16::from_be_bytes([b[0], b[1]]) as usize;
            b = &b[2..];
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(b[..4].try_into().expect("len"));
                b = &b[4..];
                if len < 0 {
                    vals.push("NULL".to_string());
                } else {
                    vals.push(text(&b[..len as usize]));
                    b = &b[len as usize..];
                }
            }
            format!("DataRow {vals:?}")
        }
        b'C' => format!("CommandComplete {}", text(body).trim_end_matches('\0')),
        b'E' => {
            let pgtenant::protocol::ErrorFields { code, message, .. } =
                pgtenant::protocol::ErrorFields::parse(body);
            format!("Error {code} {message}")
        }
        b'Z' => format!(
            "ReadyForQuery {}",
            body.first().copied().unwrap_or(b'?') as char
        ),
        b'G' | b'H' | b'W' => {
            let kind = match tag {
                b'G' => "CopyInResponse",
                b'H' => "CopyOutResponse",
                _ => "CopyBothResponse",
            };
            format!("{kind} {body:?}")
        }
        b'd' => format!("CopyData {:?}", text(body)),
        b'c' => "CopyDone".into(),
        b'V' => format!("FunctionCallResponse {body:?}"),
        b'S' | b'N' | b'A' => return None,
        other => format!("message {:?}", other as char),
    })
}

pub struct Raw {
    pub stream: pgtenant::upstream_tls::UpstreamStream,
    pub label: &'static str,
}

impl Raw {
    pub async fn login(port: u16, user: &str, password: &str, label: &'static str) -> Raw {
        let target = UpstreamTarget {
            host: "127.0.0.1".into(),
            port,
            database: DATABASE.into(),
            connect_timeout: Duration::from_secs(10),
            tls: pgtenant::upstream_tls::UpstreamTls::disabled(),
        };
        let cache = SaltedPasswordCache::default();
        let conn = UpstreamConn::connect(
            &target,
            Login {
                user,
                password,
                salted_cache: &cache,
                settings: Default::default(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("raw login to port {port} as {user}: {e}"));
        Raw {
            stream: conn.stream,
            label,
        }
    }

    pub async fn proxy(proxy: &TestProxy, tenant: &TestTenant, label: &'static str) -> Raw {
        Raw::login(proxy.addr.port(), &tenant.email, &tenant.token(), label).await
    }

    pub async fn direct(label: &'static str) -> Raw {
        let c = &cluster().cluster;
        Raw::login(c.port(), c.superuser(), c.superuser_password(), label).await
    }

    pub async fn send(&mut self, msgs: &[Msg]) {
        self.stream
            .write_all(&encode(msgs))
            .await
            .expect("send messages");
    }

    /// Reads until `n` ReadyForQuery messages arrived.
    pub async fn read_ready(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut ready = 0;
        while ready < n {
            let (tag, body) = tokio::time::timeout(
                Duration::from_secs(10),
                pgtenant::protocol::read_message(&mut self.stream, 1 << 24),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no ReadyForQuery within 10 s; so far: {lines:#?}",
                    self.label
                )
            })
            .unwrap_or_else(|e| panic!("{}: read: {e}; so far: {lines:#?}", self.label));
            if tag == b'Z' {
                ready += 1;
            }
            if let Some(line) = describe_message(tag, &body) {
                lines.push(line);
            }
        }
        lines
    }

    /// Reads until a message with `tag` arrived (an ErrorResponse after a Flush, say).
    pub async fn read_until(&mut self, tag: u8) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let (got, body) = tokio::time::timeout(
                Duration::from_secs(10),
                pgtenant::protocol::read_message(&mut self.stream, 1 << 24),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no '{}' within 10 s; so far: {lines:#?}",
                    self.label, tag as char
                )
            })
            .unwrap_or_else(|e| panic!("{}: read: {e}; so far: {lines:#?}", self.label));
            if let Some(line) = describe_message(got, &body) {
                lines.push(line);
            }
            if got == tag {
                return lines;
            }
        }
    }

    /// Sends a batch and reads the answers up to its last ReadyForQuery.
    pub async fn exchange(&mut self, msgs: &[Msg]) -> Vec<String> {
        let syncs = msgs
            .iter()
            .filter(|m| matches!(m, Msg::Sync | Msg::Query(_) | Msg::FunctionCall(..)))
            .count();
        self.exchange_ready(msgs, syncs).await
    }

    /// Sends a batch and reads the answers up to the `ready`-th ReadyForQuery.
    pub async fn exchange_ready(&mut self, msgs: &[Msg], ready: usize) -> Vec<String> {
        self.send(msgs).await;
        self.read_ready(ready).await
    }
}

/// One step of a scripted raw exchange: which client sends what.
pub struct Step {
    pub client: usize,
    pub what: &'static str,
    pub msgs: Vec<Msg>,
    /// ReadyForQuery messages the step waits for; by default one per Sync and per Query.
    pub ready: Option<usize>,
}

pub fn step(client: usize, what: &'static str, msgs: Vec<Msg>) -> Step {
    Step {
        client,
        what,
        msgs,
        ready: None,
    }
}

/// A step that waits for exactly `ready` ReadyForQuery messages (a Sync sent in copy-in mode gets none).
pub fn step_ready(client: usize, what: &'static str, msgs: Vec<Msg>, ready: usize) -> Step {
    Step {
        ready: Some(ready),
        ..step(client, what, msgs)
    }
}

/// Runs the steps on `clients` and returns each step's transcript.
pub async fn run_steps(clients: &mut [Raw], steps: &[Step]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for s in steps {
        let client = &mut clients[s.client];
        out.push(match s.ready {
            Some(ready) => client.exchange_ready(&s.msgs, ready).await,
            None => client.exchange(&s.msgs).await,
        });
    }
    out
}

/// Differences between the transcripts of PostgreSQL and pgtenant, step by step.
pub fn transcript_differences(
    steps: &[Step],
    direct: &[Vec<String>],
    proxied: &[Vec<String>],
) -> Vec<String> {
    steps
        .iter()
        .zip(direct.iter().zip(proxied))
        .filter(|(_, (d, p))| d != p)
        .map(|(s, (d, p))| {
            format!(
                "step \"{}\" (client {}):\n  PostgreSQL: {d:?}\n  pgtenant:   {p:?}",
                s.what, s.client
            )
        })
        .collect()
}

/// Runs `steps` directly against PostgreSQL (two superuser sessions) and through pgtenant (two sessions of one
/// tenant, pool of `pool`), and returns every difference, including pgtenant's internal statement names
/// reaching the client. Returns the direct transcripts too, to check the baseline.
pub async fn compare_with_postgres(
    label: &str,
    pool: usize,
    steps: &[Step],
) -> (Vec<String>, Vec<Vec<String>>) {
    let direct = {
        let mut clients = vec![Raw::direct("direct 0").await, Raw::direct("direct 1").await];
        run_steps(&mut clients, steps).await
    };
    let tenant = onboard(label).await;
    let proxy = txn_proxy(pool).await;
    let proxied = {
        let mut clients = vec![
            Raw::proxy(&proxy, &tenant, "pgtenant 0").await,
            Raw::proxy(&proxy, &tenant, "pgtenant 1").await,
        ];
        run_steps(&mut clients, steps).await
    };
    let mut differences = transcript_differences(steps, &direct, &proxied);
    for (s, lines) in steps.iter().zip(&proxied) {
        if lines.iter().any(|l| l.contains("pgt_")) {
            differences.push(format!(
                "step \"{}\": pgtenant's internal statement name reaches the client: {lines:?}",
                s.what
            ));
        }
    }
    (differences, direct)
}
