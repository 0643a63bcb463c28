//! Property tests of every decoder that reads client (or server) bytes: the startup packet, tagged messages,
//! the frame scanner of the session relay, the transaction relay's Parse/Bind/Describe/Close readers, the
//! SQL lexer and virtual-schema rewrite, SQL DEALLOCATE and statement classifiers, error fields, and the
//! admin command parser. Arbitrary input must never panic, never make a decoder allocate what a length field
//! claims rather than what arrived, and round trips must give back what was encoded. Fixed seeds and a fixed
//! number of cases: every run tries the same inputs (`PROPTEST_CASES` raises the budget for a longer hunt).

use bytes::{BufMut, BytesMut};
use pgtenant::protocol::{self, FrameScanner, ProtocolError, StartupPacket};
use pgtenant::sql::VirtualSchema;
use pgtenant::txn::{expect, statements};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(seed: u64) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Bytes that look like protocol traffic more often than uniform noise would: lengths, NULs, tags.
fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            Just(0u8),
            Just(0xffu8),
            prop::sample::select(b"QPBDECSHXdcfFpS".to_vec()),
        ],
        0..max,
    )
}

proptest! {
    #![proptest_config(config(0x5eed_0001))]

    /// Any first packet: a startup packet, a request, or a typed error; the body read is never larger than
    /// what the length field allows (at most 10,000 bytes) nor than what arrived.
    #[test]
    fn startup_packets_never_panic(len in prop_oneof![any::<i32>(), 0i32..64, Just(i32::MAX)], body in wire_bytes(96)) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let result = block_on(protocol::read_startup_packet(&mut bytes.as_slice()));
        match result {
            Ok(StartupPacket::Startup(params)) => {
                prop_assert!(params.params.len() <= body.len());
            }
            Ok(_) => {}
            Err(ProtocolError::Closed
                | ProtocolError::BadStartupLength(_)
                | ProtocolError::BadStartup(_)
                | ProtocolError::UnsupportedProtocol { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    /// A startup message built from any parameters reads back as the same parameters.
    #[test]
    fn startup_messages_round_trip(params in prop::collection::btree_map("[a-z_]{1,12}", "[^\u{0}]{0,24}", 0..6)) {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut buf = BytesMut::new();
        protocol::write::startup_message(&mut buf, &pairs);
        match block_on(protocol::read_startup_packet(&mut &buf[..])) {
            Ok(StartupPacket::Startup(read)) => prop_assert_eq!(read.params, params),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Tagged messages: a length beyond `max_body` is refused before anything is allocated for it.
    #[test]
    fn tagged_messages_never_panic(tag in any::<u8>(), len in any::<i32>(), body in wire_bytes(64)) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&body);
        match block_on(protocol::read_message(&mut bytes.as_slice(), 1024)) {
            Ok((t, read)) => {
                prop_assert_eq!(t, tag);
                prop_assert_eq!(read.len() as i64, len as i64 - 4);
                prop_assert!(read.len() <= body.len());
            }
            Err(ProtocolError::BadFrameLength { .. } | ProtocolError::Closed) => {
                prop_assert!(len < 4 || len as i64 - 4 > 1024 || (len as i64 - 4) > body.len() as i64);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    /// The session relay's scanner sees the same frames however the stream is cut into reads, and refuses
    /// a length below 4 or above 1 GiB wherever it falls.
    #[test]
    fn frame_scanner_is_independent_of_read_boundaries(
        frames in prop::collection::vec((prop::sample::select(b"QPBDESdcZTCE".to_vec()), wire_bytes(300)), 0..12),
        cuts in prop::collection::vec(1usize..400, 1..20),
        broken in prop::option::of(prop_oneof![Just(2i32), Just(-1i32), Just(i32::MAX)]),
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &frames {
            stream.push(*tag);
            stream.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            stream.extend_from_slice(body);
        }
        if let Some(len) = broken {
            stream.push(b'Q');
            stream.extend_from_slice(&len.to_be_bytes());
        }
        let mut seen = Vec::new();
        let mut scanner = FrameScanner::default();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        let mut failed = false;
        while pos < stream.len() {
            let end = (pos + cut.next().copied().unwrap_or(1)).min(stream.len());
            let result = scanner.scan(&stream[pos..end], |t| t == b'Z' || t == b'E', |t, body| {
                seen.push((t, body.to_vec()));
                true
            });
            if result.is_err() {
                failed = true;
                break;
            }
            pos = end;
        }
        prop_assert_eq!(failed, broken.is_some());
        let want: Vec<(u8, Vec<u8>)> = frames
            .iter()
            .map(|(t, b)| (*t, if (*t == b'Z' || *t == b'E') && b.len() <= 256 { b.clone() } else { Vec::new() }))
            .collect();
        prop_assert_eq!(seen, want);
    }

    /// The transaction relay's readers of Parse, Bind, Describe/Close: no panic on any body.
    #[test]
    fn extended_protocol_readers_never_panic(body in wire_bytes(128)) {
        if let Some(p) = statements::parse_parse(&body) {
            prop_assert!(p.name.len() + p.query.len() <= body.len());
        }
        let _ = statements::parse_bind(&body);
        let _ = statements::parse_target(&body);
        let mut frame = BytesMut::new();
        frame.put_u8(b'P');
        frame.put_i32(body.len() as i32 + 4);
        frame.extend_from_slice(&body);
        let _ = pgtenant::sql::message::text(b'P', &frame);
        let _ = pgtenant::txn::introspection::rewrite_frame(b'P', &frame, &Default::default());
    }

    /// Parse and Bind as pgtenant writes them read back as written.
    #[test]
    fn parse_and_bind_round_trip(name in "[a-z0-9_]{0,20}", query in "[^\u{0}]{0,80}", types in prop::collection::vec(any::<u32>(), 0..5), rest in wire_bytes(40)) {
        let mut param_types = BytesMut::new();
        param_types.put_i16(types.len() as i16);
        for t in &types {
            param_types.put_u32(*t);
        }
        let frame = statements::encode_parse(&name, query.as_bytes(), &param_types);
        let (tag, body) = statements::split_frame(&frame);
        prop_assert_eq!(tag, b'P');
        let p = statements::parse_parse(body).expect("parse");
        prop_assert_eq!(p.name, name.as_bytes());
        prop_assert_eq!(p.query, query.as_bytes());
        prop_assert_eq!(p.param_types, &param_types[..]);
        let bind = statements::encode_bind(b"portal", &name, &rest);
        let (_, body) = statements::split_frame(&bind);
        let (portal, statement, tail) = statements::parse_bind(body).expect("bind");
        prop_assert_eq!(portal, b"portal");
        prop_assert_eq!(statement, name.as_bytes());
        prop_assert_eq!(tail, &rest[..]);
    }

    /// The lexer, the virtual-schema rewrite and the statement classifiers on any text: no panic, and a
    /// rewrite only ever changes text that names the virtual schema.
    #[test]
    fn sql_readers_never_panic(sql in prop_oneof![
        wire_bytes(200),
        "(public|PUBLIC|\"public\"|'public'|nspname|=|LIKE|IN|\\(|\\)|,|nextval|::|regclass|SET|search_path|TO|set_config|'|\"|\\$\\$|--|/\\*|\\*/|\\.| |;|x|'public\\.t'|DEALLOCATE|PREPARE|a1)*".prop_map(String::into_bytes),
    ]) {
        let vs = VirtualSchema::new("public", "org_x");
        let rewritten = vs.rewrite(&sql);
        if rewritten.is_some() {
            prop_assert!(pgtenant::sql::contains_word_ignore_ascii_case(&sql, b"public"));
        }
        let _ = pgtenant::txn::lasting::lasting_state(&sql);
        let _ = pgtenant::sql::lexer::tokens(&sql).count();
    }

    /// Error and notice bodies from any bytes.
    #[test]
    fn error_fields_never_panic(body in wire_bytes(200)) {
        let fields = protocol::ErrorFields::parse(&body);
        prop_assert!(fields.message.len() <= body.len() * 3);
    }

    /// The admin channel's parser on any text: a command list or a syntax error, never a panic.
    #[test]
    fn admin_commands_never_panic(text in prop_oneof![
        any::<String>(),
        "((SHOW|MIGRATE|TENANTS|PAUSE|RESUME|KICK|ONBOARD|TENANT|RELOAD|CONFIG|POOLS|DRY|RUN|REVOKE|TOKEN|USER|ALTER|SET|RESET|ALL|LIMITS|statement_timeout|=|TO|DEFAULT|ñé|'5 s'|'x'|'|;| |[a-z0-9@.]{1,8}|\"|--|\n))*",
    ]) {
        let _ = pgtenant::admin::parse::parse(&text);
    }

    /// The transaction relay's expectation queue with any server message sequence after any client
    /// requests: no panic, whatever a broken server sends.
    #[test]
    fn expectations_never_panic(
        requests in prop::collection::vec(0u8..8, 0..16),
        server in prop::collection::vec(prop::sample::select(b"123ntsCDIEZGHdcTnVs".to_vec()), 0..40),
    ) {
        let mut queue = expect::Expectations::default();
        for r in requests {
            match r {
                0 => queue.push(expect::Expect::Parse { server_name: None, swallow: false, client_name: None }),
                1 => queue.push(expect::Expect::Bind { server_name: None, swallow: false, client_name: None }),
                2 => queue.push(expect::Expect::DescribePortal),
                3 => queue.push(expect::Expect::Execute),
                4 => { queue.client_sync(); }
                5 => queue.push(expect::Expect::Query),
                6 => queue.client_copy_end(),
                _ => queue.push(expect::Expect::FunctionCall),
            }
        }
        for tag in server {
            let _ = queue.on_server_message(tag);
            let _ = queue.take_synthetic_head();
        }
    }
}
