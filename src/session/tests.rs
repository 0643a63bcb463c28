//! Unit tests of the session stages.

use super::login::plaintext_password_refused;
use super::settings::parse_options;

#[test]
fn plaintext_tokens_only_from_loopback_unless_allowed() {
    let lan: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
    let mapped_loopback: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
    assert!(plaintext_password_refused(false, lan, false));
    assert!(!plaintext_password_refused(true, lan, false));
    assert!(!plaintext_password_refused(false, lan, true));
    assert!(!plaintext_password_refused(
        false,
        "127.0.0.1".parse().expect("ip"),
        false
    ));
    assert!(!plaintext_password_refused(
        false,
        "::1".parse().expect("ip"),
        false
    ));
    assert!(!plaintext_password_refused(false, mapped_loopback, false));
}

#[test]
fn options_are_parsed_like_postgres() {
    let parsed =
        parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=with\\ space")
            .expect("parses");
    assert_eq!(
        parsed,
        vec![
            ("search_path".to_string(), "a,b".to_string()),
            ("statement_timeout".to_string(), "5s".to_string()),
            ("work_mem".to_string(), "4MB".to_string()),
            ("x".to_string(), "with space".to_string()),
        ]
    );
    assert!(parse_options("-c novalue").is_err());
}

use super::{finish, serve_client, serve_transaction, FirstServer, ServerPool, Who};
use crate::config::Config;
use crate::directory::{Tenant, TenantStatus, User};
use crate::login_guard::TokenFacts;
use crate::names::{ClusterName, RoleName, SchemaName};
use crate::pool::PoolKey;
use crate::protocol::{write, ErrorFields, TxStatus};
use crate::proxy::Proxy;
use crate::tls::ClientStream;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A pgtenant of the default configuration with the secrets it needs: nothing connects until a client logs
/// in (no PostgreSQL here).
fn proxy(adjust: impl FnOnce(&mut Config)) -> Arc<Proxy> {
    let mut config = Config::default();
    config.upstream.server_secret = Some("session tests server secret".into());
    config.auth.hs_secret = Some("session tests token secret, 32 bytes or more".into());
    adjust(&mut config);
    Proxy::from_config(config, tokio_util::sync::CancellationToken::new())
        .expect("a proxy from the default configuration")
}

/// `future`'s output. The tests run in virtual time: one that never completes fails the test (once every
/// task waits, time jumps to the bound) instead of hanging it.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: waited in vain"))
}

/// `n` bytes from `stream` (bounded).
async fn read_exactly(stream: &mut DuplexStream, n: usize, what: &str) -> Vec<u8> {
    let mut got = vec![0u8; n];
    bounded(what, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    got
}

/// What the client got until the connection closed, and the error that closed it if not EOF.
async fn read_until_closed(
    client: &mut tokio::net::TcpStream,
) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match bounded("the connection closes", client.read(&mut buf)).await {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_log_in_is_dropped_at_the_login_timeout() {
    let login_timeout = Duration::from_millis(5_000);
    let mut startup = BytesMut::new();
    write::startup_message(&mut startup, &[("user", "someone"), ("database", "app")]);
    let half = startup[..startup.len() / 2].to_vec();
    for (what, sent) in [("nothing", Vec::new()), ("half a startup packet", half)] {
        let proxy = proxy(|c| c.server.login_timeout_ms = login_timeout.as_millis() as u64);
        // A real loopback socket (the handshake peeks at it); time is virtual and moves on only when every
        // task waits.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        client.write_all(&sent).await.expect("client writes");
        let started = tokio::time::Instant::now();
        let served = tokio::spawn(serve_client(proxy, tcp, peer));
        let (got, error) = read_until_closed(&mut client).await;
        let waited = started.elapsed();
        // Dropped without a word: no ErrorResponse, the socket closed (reset if unread bytes remained).
        assert!(got.is_empty(), "{what}: the client got {got:?}");
        if let Some(e) = error {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
        }
        assert!(
            waited >= login_timeout && waited < login_timeout + Duration::from_millis(100),
            "{what}: dropped after {waited:?}, the login timeout is {login_timeout:?}"
        );
        bounded("the session's end", served)
            .await
            .expect("the session task ended");
    }
}

/// The parameters the scripted server reports, and the client is shown at login.
fn reported() -> Vec<(String, String)> {
    [("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn user() -> User {
    User {
        id: uuid::Uuid::nil(),
        email: "someone@example.com".into(),
        disabled: false,
        role: "member".into(),
        tenant: std::sync::Arc::new(Tenant {
            id: uuid::Uuid::nil(),
            name: "T".into(),
            slug: "t".into(),
            schema: SchemaName::new("org_t"),
            role: RoleName::new("tenant_t"),
            status: TenantStatus::Active,
            cluster: ClusterName::default(),
            ddl_allowed: false,
            pool_mode: Some(crate::config::PoolMode::Transaction),
            virtual_schema: None,
            limits: Default::default(),
        }),
    }
}

/// Reads one whole message.
async fn read_frame(stream: &mut DuplexStream) -> (u8, Vec<u8>) {
    let header = read_exactly(stream, 5, "a message").await;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    (header[0], read_exactly(stream, len - 4, "its body").await)
}

/// A logged-in transaction-pooled session, run as `serve_client` runs it after the login (relay, then
/// `finish`), over an in-memory client, with one scripted server connection in its pool.
struct Session {
    client: DuplexStream,
    server: DuplexStream,
    proxy: Arc<Proxy>,
    key: PoolKey,
    task: tokio::task::JoinHandle<()>,
}

async fn logged_in(proxy: Arc<Proxy>) -> Session {
    let cluster = proxy.clusters.current().default_entry();
    let target = cluster.target().expect("the default cluster's target");
    let key = PoolKey::new(cluster.name().clone(), user().tenant.role.clone());
    let server = proxy.pools.add_scripted(&key, &target, 4242, &reported());
    let (mut client, relay_client) = tokio::io::duplex(64 * 1024);
    let pool = ServerPool {
        key: key.clone(),
        target,
        cluster,
    };
    let p = proxy.clone();
    let task = tokio::spawn(async move {
        let user = user();
        let token = TokenFacts {
            expires_at: u64::MAX,
            issued_at: None,
            jti: None,
        };
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 50_000).into();
        let who = Who {
            user: &user,
            peer: &peer,
            token: &token,
            limits: Default::default(),
            authenticated: false,
            pool: &pool,
        };
        let mut client = ClientStream::Duplex(relay_client);
        let later = FirstServer::Later(Arc::new(reported()));
        let ended = serve_transaction(&p, &mut client, later, &who, None)
            .await
            .expect("the client stayed for its login");
        finish(&p, client, *ended, &who).await;
    });
    // AuthenticationOk, the parameters, BackendKeyData (pgtenant's key), ReadyForQuery.
    let mut tags = Vec::new();
    loop {
        let (tag, body) = read_frame(&mut client).await;
        tags.push(tag);
        if tag == b'Z' {
            assert_eq!(body, [b'I']);
            break;
        }
    }
    assert_eq!(tags, b"RSSKZ", "the login's messages");
    Session {
        client,
        server,
        proxy,
        key,
        task,
    }
}

impl Session {
    /// The client runs `sql`, which the server answers with CommandComplete and `status`.
    async fn round_trip(&mut self, sql: &str, status: TxStatus) {
        let mut q = BytesMut::new();
        write::query(&mut q, sql);
        self.client.write_all(&q).await.expect("client writes");
        assert_eq!(read_exactly(&mut self.server, q.len(), sql).await, q[..]);
        let mut answer = BytesMut::new();
        write::command_complete(&mut answer, sql);
        write::ready_for_query(&mut answer, status);
        self.server
            .write_all(&answer)
            .await
            .expect("server answers");
        let got = read_exactly(&mut self.client, answer.len(), sql).await;
        assert_eq!(got, answer[..]);
    }

    /// (idle, live) connections of the tenant's pool.
    fn pool(&self) -> (usize, usize) {
        let stats = self.proxy.pools.stats();
        let pool = stats
            .iter()
            .find(|s| s.role == self.key.role)
            .expect("the tenant's pool");
        (pool.idle, pool.server_connections())
    }

    /// The session's last message (an ErrorResponse) and that the connection then closed.
    async fn last_words(mut self) -> (ErrorFields, (usize, usize)) {
        let (tag, body) = read_frame(&mut self.client).await;
        assert_eq!(tag, b'E', "an ErrorResponse, got {body:?}");
        let mut rest = Vec::new();
        bounded("the end", self.client.read_to_end(&mut rest))
            .await
            .expect("client reads");
        assert!(rest.is_empty(), "after the error: {rest:?}");
        bounded("the session's end", &mut self.task)
            .await
            .expect("the session task ended");
        (ErrorFields::parse(&body), self.pool())
    }

    /// The server goes away without a word.
    fn server_gone(&mut self) {
        drop(std::mem::replace(&mut self.server, tokio::io::duplex(1).0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_transaction_pooled_client_idle_past_the_limit_is_told_57p05() {
    let limit = Duration::from_secs(60);
    let proxy = proxy(|c| c.server.client_idle_timeout_secs = limit.as_secs());
    let mut session = logged_in(proxy).await;
    session.round_trip("BEGIN", TxStatus::InTransaction).await;
    // Inside a transaction the client idle timeout does not apply.
    tokio::time::sleep(2 * limit).await;
    assert!(!session.task.is_finished(), "ended inside a transaction");
    session.round_trip("COMMIT", TxStatus::Idle).await;
    let idle_since = tokio::time::Instant::now();
    let (error, pool) = session.last_words().await;
    let waited = idle_since.elapsed();
    assert!(
        waited >= limit && waited < limit + Duration::from_secs(1),
        "ended after {waited:?} idle"
    );
    assert_eq!(
        (
            error.severity.as_str(),
            error.code.as_str(),
            error.message.as_str()
        ),
        (
            "FATAL",
            "57P05",
            "terminating connection due to idle-session timeout"
        )
    );
    assert_eq!(pool, (1, 1), "the connection stays in the pool");
}

#[tokio::test(start_paused = true)]
async fn a_server_connection_lost_mid_transaction_is_told_08006() {
    let proxy = proxy(|_| {});
    let mut session = logged_in(proxy).await;
    session.round_trip("BEGIN", TxStatus::InTransaction).await;
    let mut q = BytesMut::new();
    write::query(&mut q, "SELECT 1");
    session.client.write_all(&q).await.expect("client writes");
    read_exactly(&mut session.server, q.len(), "the query").await;
    session.server_gone();
    // Bounded in virtual time: the client is told, it is not left hanging.
    let (error, pool) = session.last_words().await;
    assert_eq!(
        (
            error.severity.as_str(),
            error.code.as_str(),
            error.message.as_str()
        ),
        ("FATAL", "08006", "server connection lost")
    );
    assert_eq!(pool, (0, 0), "the dead connection is closed");
}

/// A connected loopback TCP stream (never accepted: the tests only measure futures made with it), with
/// the listener that keeps it open and its address.
async fn loopback_connection() -> (
    tokio::net::TcpListener,
    tokio::net::TcpStream,
    std::net::SocketAddr,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback listener");
    let addr = listener.local_addr().expect("its address");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("a connection to it");
    (listener, tcp, addr)
}

/// A session's task holds its future for the session's whole life (10,000 idle clients hold 10,000 of them):
/// what it only awaits once (the login, session pooling's relay, the end) is boxed, and what the login
/// found stays in the login's box. 4,992 bytes before that, 2,344 after (rustc 1.95, debug build); 2,072
/// since the connection goes into the login's box at once, the relay's end is boxed and the login's last
/// messages are awaited in a block of their own; 1,640 since the session's layers are functions returning
/// blocks (an async fn keeps a copy of each argument beside its body's); 1,440 with the relay's message
/// handling done so too and a moved tenant's pool boxed; 1,416 with `Who` borrowing the peer's address.
/// This fails when a large future or value is held inline again.
#[tokio::test]
async fn the_task_future_of_a_session_stays_small() {
    let proxy = proxy(|_| {});
    let (_listener, tcp, addr) = loopback_connection().await;
    let session = serve_client(proxy, tcp, addr);
    let size = std::mem::size_of_val(&session);
    assert!(size <= 1536, "the session's future takes {size} bytes");
}

/// Every login writes its future into a fresh box (and the compiler builds it on the stack first, then
/// copies it there): the branches a transaction-pooled login with a warm cache does not take (the server
/// connection a login waits for when the role's defaults are not known, restoring a role's password, TLS,
/// a forwarded cancel) are boxed where awaited. 20,176 bytes before that, 2,944 after (rustc 1.95, release
/// build; 2,960 in the debug build of this test). This fails when a large future is awaited inline on the
/// login's path again.
#[tokio::test]
async fn the_login_future_stays_small() {
    let proxy = proxy(|_| {});
    let (_listener, tcp, addr) = loopback_connection().await;
    let login = super::handshake::handshake_and_login(&proxy, tcp, addr);
    let size = std::mem::size_of_val(&login);
    assert!(size <= 4 * 1024, "the login's future takes {size} bytes");
}

#[test]
fn one_startup_setting_is_what_the_whole_list_ends_with() {
    use super::settings::{startup_setting, startup_settings};
    let params = |pairs: &[(&str, &str)]| crate::protocol::StartupParams {
        params: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let last_of_list = |p: &crate::protocol::StartupParams, name: &str| {
        startup_settings(p).map(|all| {
            all.into_iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        })
    };
    let cases = [
        params(&[("user", "u"), ("pgtenant.virtual_schema", "public")]),
        params(&[
            ("pgtenant.virtual_schema", "public"),
            (
                "options",
                "-c pgtenant.virtual_schema=off -c pgtenant.virtual_schema=app",
            ),
        ]),
        params(&[("options", "-c work_mem=4MB")]),
        params(&[("options", "--pgtenant.virtual-schema=x")]),
        params(&[("database", "d")]),
    ];
    for p in &cases {
        for name in [
            "pgtenant.virtual_schema",
            "work_mem",
            "database",
            "target_session_attrs",
        ] {
            assert_eq!(
                startup_setting(p, name).expect("parsable"),
                last_of_list(p, name).expect("parsable"),
                "{name} of {p:?}"
            );
        }
    }
    let bad = params(&[("options", "-c novalue")]);
    assert!(startup_setting(&bad, "work_mem").is_err());
    assert_eq!(
        startup_setting(&cases[1], "pgtenant.virtual_schema").expect("parsable"),
        Some("app".to_string())
    );
}
