//! TLS with clients: psql (libpq) over SSLRequest, PostgreSQL 17-style direct TLS with ALPN, and the
//! plaintext-after-SSLRequest injection refused.

mod common;

use common::*;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TestCert {
    dir: PathBuf,
    cert_pem: String,
}

impl TestCert {
    fn new() -> TestCert {
        let dir =
            std::env::temp_dir().join(format!("pgtenant-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.join("server.crt"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
        TestCert {
            dir,
            cert_pem: cert.pem(),
        }
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn tls_proxy(cert: &TestCert) -> TestProxy {
    let dir = cert.dir.clone();
    TestProxy::start_with(move |c| {
        c.server.tls_cert = Some(dir.join("server.crt"));
        c.server.tls_key = Some(dir.join("server.key"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_over_tls() {
    let cert = TestCert::new();
    let tenant = onboard("tls").await;
    let proxy = tls_proxy(&cert).await;
    let root = cert.dir.join("server.crt");
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={} host=localhost",
        proxy.conninfo(&tenant).replace("sslmode=disable", ""),
        root.display()
    );
    let (ok, stdout, stderr) = run_program(
        &client_program("psql"),
        &[
            &conninfo,
            "-X",
            "-c",
            "\\conninfo",
            "-c",
            "SELECT count(*) FROM employees",
        ],
        &[],
        None,
    )
    .await;
    assert!(ok, "psql over TLS failed: {stderr}");
    assert!(stdout.contains("SSL connection"), "{stdout}");
    assert!(
        stdout.contains("TLSv1.3") || stdout.contains("TLSv1.2"),
        "{stdout}"
    );

    // Without TLS from loopback still works, and sslmode=require to a proxy without TLS fails cleanly.
    let plain = TestProxy::start().await;
    let (ok, _, stderr) = run_program(
        &client_program("psql"),
        &[
            &plain
                .conninfo(&tenant)
                .replace("sslmode=disable", "sslmode=require"),
            "-X",
            "-c",
            "SELECT 1",
        ],
        &[],
        None,
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("does not support SSL"), "{stderr}");
}

fn client_tls_config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Arc::new(config)
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", DATABASE, ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_gets_a_password_request() {
    let cert = TestCert::new();
    let proxy = tls_proxy(&cert).await;
    let connector = tokio_rustls::TlsConnector::from(client_tls_config(&cert.cert_pem));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("direct TLS handshake");
    tls.write_all(&startup_packet("someone"))
        .await
        .expect("startup");
    let mut reply = [0u8; 9];
    tls.read_exact(&mut reply).await.expect("reply");
    assert_eq!(reply[0], b'R', "an authentication request");
    assert_eq!(
        i32::from_be_bytes([reply[5], reply[6], reply[7], reply[8]]),
        3,
        "cleartext password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sent_after_ssl_request_is_not_taken_as_the_startup() {
    let cert = TestCert::new();
    let proxy = tls_proxy(&cert).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    // SSLRequest immediately followed by a plaintext StartupMessage, as a man in the middle would inject.
    let mut bytes = 8i32.to_be_bytes().to_vec();
    bytes.extend(80_877_103i32.to_be_bytes());
    bytes.extend(startup_packet("injected"));
    // One write: the proxy reads the injected bytes with the request, before it could answer it.
    tcp.write_all(&bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut answer),
    )
    .await;
    // PostgreSQL's answer to the same bytes: a FATAL 08P01, not 'S' (and never a password request).
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("C08P01"), "{text}");
    assert!(
        text.contains("received unencrypted data after SSL request"),
        "{text}"
    );
    // That one message and the end: no authentication request for the injected startup packet.
    let length = i32::from_be_bytes([answer[1], answer[2], answer[3], answer[4]]) as usize;
    assert_eq!(
        answer.len(),
        1 + length,
        "the injected startup packet was served: {answer:?}"
    );
}
