//! Bad input over TCP: a corpus of malformed frontend messages sent to a running pgtenant, before and after
//! login, in session and in transaction pooling. After login each bad message must end the same way as
//! directly against PostgreSQL (the same SQLSTATEs, the connection closed or still usable, never a hang);
//! before login every bad packet gets a FATAL ErrorResponse (08P01, or 0A000 for a protocol version) and a
//! closed connection. Seeded random mutations of valid packets follow. Nothing may panic anywhere in the
//! process (a panic hook counts them: pgtenant runs in this process), and pgtenant must serve a normal
//! client afterwards.

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::*;
use common::*;
use pgtenant::config::PoolMode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic on the runtime's worker threads from now on, where pgtenant's tasks run (and still
/// prints it). A failing assertion of a test panics on the test's own thread: not counted.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// How a connection ended up after a bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// SQLSTATEs of the ErrorResponses received, in order.
    errors: Vec<String>,
    /// What the connection did: "closed", "alive" (answered the probe query), or "waiting" (neither within
    /// the deadline).
    end: &'static str,
}

const ALIVE: &str = "alive-probe";

/// Reads messages until the connection closes, the probe query's answer arrives, or `deadline` passes.
async fn outcome<S: AsyncRead + Unpin>(stream: &mut S, deadline: Duration) -> Outcome {
    let mut errors = Vec::new();
    let mut saw_probe = false;
    let end = tokio::time::timeout(deadline, async {
        loop {
            match pgtenant::protocol::read_message(stream, 1 << 24).await {
                Ok((b'E', body)) => errors.push(pgtenant::protocol::ErrorFields::parse(&body).code),
                Ok((b'D', body)) => {
                    if body.windows(ALIVE.len()).any(|w| w == ALIVE.as_bytes()) {
                        saw_probe = true;
                    }
                }
                Ok((b'Z', _)) if saw_probe => return "alive",
                Ok(_) => {}
                Err(_) => return "closed",
            }
        }
    })
    .await
    .unwrap_or("waiting");
    Outcome { errors, end }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A message whose body is `pieces` one after the other.
fn parts(tag: u8, pieces: &[&[u8]]) -> Vec<u8> {
    message(tag, &pieces.concat())
}

/// A message whose length field says `len`, with `body` after it (possibly shorter or longer).
fn with_length(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The probe that follows every bad message: a Sync (ends an extended-protocol error) and a simple query.
fn probe() -> Vec<u8> {
    let mut out = message(b'S', b"");
    out.extend(message(b'Q', format!("SELECT '{ALIVE}'\0").as_bytes()));
    out
}

/// Bad messages after login, each complete (its length field matches what is sent) unless its point is a
/// length PostgreSQL refuses before reading the body.
fn after_login_corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("unknown message type", message(b'z', b"")),
        ("message type NUL (a second startup packet)", {
            let mut b = BytesMut::new();
            b.put_i32(8);
            b.put_i32(196608);
            b.to_vec()
        }),
        ("length below 4", with_length(b'Q', 3, b"")),
        ("negative length", with_length(b'Q', -5, b"")),
        ("Query of 2 GB", with_length(b'Q', i32::MAX, b"SELECT 1")),
        ("Parse of 2 GB", with_length(b'P', i32::MAX, b"")),
        ("Bind of 2 GB", with_length(b'B', i32::MAX, b"")),
        ("Sync with a 2 GB body", with_length(b'S', i32::MAX, b"")),
        ("CopyData of 2 GB", with_length(b'd', i32::MAX, b"")),
        ("Query without its terminator", message(b'Q', b"SELECT 1")),
        (
            "Query with text after its terminator",
            message(b'Q', b"SELECT 1\0SELECT 2\0"),
        ),
        ("Parse without terminators", message(b'P', b"stmt")),
        (
            "Parse announcing 1000 parameter types, giving none",
            parts(b'P', &[b"\0SELECT 1\0", &1000i16.to_be_bytes()]),
        ),
        (
            "Parse with a negative parameter count",
            parts(b'P', &[b"\0SELECT 1\0", &(-1i16).to_be_bytes()]),
        ),
        (
            "Bind announcing 32767 parameters, giving none",
            parts(
                b'B',
                &[b"\0\0", &0i16.to_be_bytes(), &32767i16.to_be_bytes()],
            ),
        ),
        (
            "Bind with a parameter of 2 GB in a short message",
            parts(
                b'B',
                &[
                    b"\0\0",
                    &0i16.to_be_bytes(),
                    &1i16.to_be_bytes(),
                    &i32::MAX.to_be_bytes(),
                    b"x",
                ],
            ),
        ),
        (
            "Bind with a negative format count",
            parts(b'B', &[b"\0\0", &(-3i16).to_be_bytes()]),
        ),
        ("Bind without terminators", message(b'B', b"portal")),
        ("Describe of kind X", message(b'D', b"Xname\0")),
        ("Describe without a body", message(b'D', b"")),
        ("Close of kind Q", message(b'C', b"Qname\0")),
        ("Execute without its row limit", message(b'E', b"\0")),
        ("Execute of an unknown portal", {
            let mut b = message(
                b'E',
                &[b"nosuch\0".as_slice(), &0i32.to_be_bytes()].concat(),
            );
            b.extend(message(b'S', b""));
            b
        }),
        ("Bind of an unknown statement", {
            let body = [
                b"\0nosuch\0".as_slice(),
                &0i16.to_be_bytes(),
                &0i16.to_be_bytes(),
                &0i16.to_be_bytes(),
            ]
            .concat();
            message(b'B', &body)
        }),
        ("Sync with a body", message(b'S', b"junk")),
        ("Flush with a body", message(b'H', b"junk")),
        ("CopyData outside COPY", message(b'd', b"1\t2\n")),
        ("CopyDone outside COPY", message(b'c', b"")),
        ("CopyFail outside COPY", message(b'f', b"because\0")),
        (
            "FunctionCall announcing 30000 arguments, giving none",
            parts(
                b'F',
                &[
                    &1i32.to_be_bytes(),
                    &0i16.to_be_bytes(),
                    &30000i16.to_be_bytes(),
                ],
            ),
        ),
        (
            "FunctionCall of OID 0",
            parts(
                b'F',
                &[
                    &0i32.to_be_bytes(),
                    &0i16.to_be_bytes(),
                    &0i16.to_be_bytes(),
                    &0i16.to_be_bytes(),
                ],
            ),
        ),
        ("FunctionCall cut short", message(b'F', &[0, 0])),
        ("password message after login", message(b'p', b"secret\0")),
    ]
}

/// Runs the corpus on fresh connections made by `connect`, a few at a time.
async fn run_corpus<F, Fut, S>(connect: F) -> Vec<Outcome>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcomes = Vec::new();
    for chunk in after_login_corpus().chunks(6) {
        let mut runs = Vec::new();
        for (_, bytes) in chunk {
            let mut stream = connect().await;
            let bytes = [bytes.clone(), probe()].concat();
            runs.push(async move {
                // A server that closes at the bad message may reset the rest of the write: that is an end too.
                let _ = stream.write_all(&bytes).await;
                outcome(&mut stream, Duration::from_secs(5)).await
            });
        }
        outcomes.extend(futures_util::future::join_all(runs).await);
    }
    outcomes
}

/// Whether pgtenant ended a bad message as PostgreSQL did. One difference is by design: where PostgreSQL
/// closes the connection without a word (a message length it refuses: it only logs it), pgtenant says
/// why first, with a FATAL 08P01.
fn same_end(direct: &Outcome, proxied: &Outcome) -> bool {
    direct == proxied
        || (direct.end == "closed"
            && direct.errors.is_empty()
            && proxied.end == "closed"
            && proxied.errors == ["08P01"])
}

fn differences(against: &str, direct: &[Outcome], proxied: &[Outcome]) -> Vec<String> {
    after_login_corpus()
        .iter()
        .zip(direct.iter().zip(proxied))
        .filter(|(_, (d, p))| !same_end(d, p))
        .map(|((what, _), (d, p))| format!("{what}:\n  PostgreSQL: {d:?}\n  {against}: {p:?}"))
        .collect()
}

/// `virtual_schema`: whether the session relay frames and rewrites the client's messages (on) or only scans
/// them (off).
async fn bad_messages_after_login_end_as_directly(mode: PoolMode, virtual_schema: bool) {
    count_panics();
    let tenant = onboard(match (mode, virtual_schema) {
        (PoolMode::Session, true) => "fuzzsession",
        (PoolMode::Session, false) => "fuzzsessionnovs",
        (PoolMode::Transaction, _) => "fuzztxn",
    })
    .await;
    // Session pooling holds a server connection per client: enough for a chunk of the corpus at once.
    let proxy = TestProxy::start_with(|c| {
        c.pool.mode = mode;
        c.pool.size_per_tenant = if mode == PoolMode::Session { 8 } else { 4 };
        if !virtual_schema {
            c.tenancy.virtual_schema = None;
        }
    })
    .await;
    let direct = run_corpus(|| async { Raw::direct("direct").await.stream }).await;
    let proxied =
        run_corpus(|| async { Raw::proxy(&proxy, &tenant, "proxied").await.stream }).await;
    assert!(
        direct.iter().all(|o| o.end != "waiting"),
        "the corpus is meant to have an end directly: {direct:#?}"
    );
    let found = differences(&format!("pgtenant ({mode:?} pooling)"), &direct, &proxied);
    assert!(
        found.is_empty(),
        "bad messages end otherwise through pgtenant than directly:\n{}",
        found.join("\n")
    );
    // Still serving, nothing leaked or panicked.
    let client = proxy.connect(&tenant).await;
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1")
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login_end_as_directly_in_session_pooling() {
    bad_messages_after_login_end_as_directly(PoolMode::Session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login_end_as_directly_in_session_pooling_without_virtual_schema() {
    bad_messages_after_login_end_as_directly(PoolMode::Session, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_login_end_as_directly_in_transaction_pooling() {
    bad_messages_after_login_end_as_directly(PoolMode::Transaction, true).await;
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    pgtenant::protocol::write::startup_message(&mut out, params);
    out.to_vec()
}

fn before_login_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let packet = |len: i32, body: &[u8]| [len.to_be_bytes().as_slice(), body].concat();
    vec![
        ("length 2 GB", packet(i32::MAX, &196608i32.to_be_bytes())),
        ("negative length", packet(-8, &196608i32.to_be_bytes())),
        ("length 4", packet(4, b"")),
        ("length 7", packet(7, b"abc")),
        ("protocol 2.0", packet(8, &131072i32.to_be_bytes())),
        ("protocol 4.0", packet(8, &262144i32.to_be_bytes())),
        ("protocol 0.0", packet(8, &0i32.to_be_bytes())),
        ("startup without the final terminator", {
            let mut p = startup(&[("user", "x")]);
            p.pop();
            let len = p.len() as i32;
            p[..4].copy_from_slice(&len.to_be_bytes());
            p
        }),
        ("startup with a key and no value", {
            let body = [196608i32.to_be_bytes().as_slice(), b"user\0"].concat();
            packet(body.len() as i32 + 4, &body)
        }),
        ("startup that is not UTF-8", {
            let body = [196608i32.to_be_bytes().as_slice(), b"user\0\xff\xfe\0\0"].concat();
            packet(body.len() as i32 + 4, &body)
        }),
        ("cancel request cut short", {
            let body = [80877102i32.to_be_bytes().as_slice(), &1i32.to_be_bytes()].concat();
            packet(body.len() as i32 + 4, &body)
        }),
        (
            "a tagged message instead of a startup packet",
            message(b'Q', b"SELECT 1\0"),
        ),
        ("a password before any startup", message(b'p', b"x\0")),
        ("startup, then garbage instead of the password", {
            let mut p = startup(&[("user", "someone@example.com"), ("database", "app")]);
            p.extend(message(b'z', b"junk"));
            p
        }),
        ("startup, then a 2 GB password", {
            let mut p = startup(&[("user", "someone@example.com"), ("database", "app")]);
            p.extend(with_length(b'p', i32::MAX, b"x"));
            p
        }),
        ("startup, then a password without its terminator", {
            let mut p = startup(&[("user", "someone@example.com"), ("database", "app")]);
            p.extend(message(b'p', b"not-a-token"));
            p
        }),
    ]
}

/// Before login every bad packet gets a FATAL ErrorResponse and the connection closes: 0A000 for a protocol
/// version pgtenant does not speak, 08P01 for a malformed packet (28P01 if it parses as a password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_before_login_get_an_error_and_a_closed_connection() {
    count_panics();
    let proxy = TestProxy::start_with(|_| {}).await;
    let mut problems = Vec::new();
    for (what, bytes) in before_login_corpus() {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let _ = stream.write_all(&bytes).await;
        let seen = outcome(&mut stream, Duration::from_secs(5)).await;
        let allowed: &[&str] = if what.starts_with("protocol") {
            &["0A000"]
        } else {
            &["08P01", "28P01"]
        };
        let ok = seen.end == "closed"
            && seen.errors.len() == 1
            && allowed.contains(&seen.errors[0].as_str());
        if !ok {
            problems.push(format!(
                "{what}: {seen:?} (want one of {allowed:?}, closed)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "before login:\n{}",
        problems.join("\n")
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    proxy.stop().await;
}

/// A small deterministic generator (xorshift64*), so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `bytes` with a few random edits: bytes flipped, set to 0/0xff, cut, duplicated.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            out.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(5) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = 0,
            2 => out[at] = 0xff,
            3 => out.truncate(at),
            _ => {
                let piece = out[at..].to_vec();
                out.extend(piece);
            }
        }
    }
    out
}

/// Seeded random mutations of valid packets and messages, before and after login, in both pooling modes:
/// whatever pgtenant makes of them, it answers or closes within the deadline (or waits for more bytes, as a
/// server does for a message cut short), never panics, and serves a normal client afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_random_mutations_never_panic_and_pgtenant_keeps_serving() {
    count_panics();
    let tenant = onboard("fuzzrandom").await;
    let session = TestProxy::start_with(|_| {}).await;
    let txn = txn_proxy(2).await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let valid_startup = startup(&[("user", &tenant.email), ("database", "app")]);
    let valid_after_login: Vec<Vec<u8>> = vec![
        message(b'Q', b"SELECT 1\0"),
        [
            message(b'P', b"s1\0SELECT $1::int\0\0\x01\0\0\0\x17"),
            message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"),
            message(b'D', b"P\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat(),
        message(b'Q', b"COPY (SELECT 1) TO STDOUT\0"),
        [
            message(
                b'Q',
                b"CREATE TEMP TABLE IF NOT EXISTS f (a int); COPY f FROM STDIN\0",
            ),
            message(b'd', b"1\n"),
            message(b'c', b""),
        ]
        .concat(),
        message(b'F', &[&1i32.to_be_bytes()[..], &[0, 0, 0, 0]].concat()),
        message(b'C', b"Ss1\0"),
    ];
    let mut cases = 0;
    for proxy in [&session, &txn] {
        // Before login.
        for _ in 0..40 {
            let bytes = mutate(&mut rng, &valid_startup);
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            let _ = stream.write_all(&bytes).await;
            let _ = outcome(&mut stream, Duration::from_millis(300)).await;
            cases += 1;
        }
        // After login.
        for round in 0..60 {
            let base = &valid_after_login[round % valid_after_login.len()];
            let bytes = [mutate(&mut rng, base), probe()].concat();
            let mut stream = Raw::proxy(proxy, &tenant, "mutated").await.stream;
            let _ = stream.write_all(&bytes).await;
            let _ = outcome(&mut stream, Duration::from_millis(500)).await;
            cases += 1;
        }
        let client = proxy.connect(&tenant).await;
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .unwrap_or_else(|e| panic!("pgtenant does not serve after {cases} mutated inputs: {e}"))
            .get(0);
        assert_eq!(one, 1);
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "something panicked during {cases} mutated inputs"
    );
    session.stop().await;
    txn.stop().await;
}
