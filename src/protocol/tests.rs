use super::*;
use bytes::BytesMut;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn scanner_sees_every_frame_across_arbitrary_chunk_splits() {
    let mut stream = Vec::new();
    stream.extend(frame(b'T', &[1; 300]));
    stream.extend(frame(b'D', &[2; 10]));
    stream.extend(frame(b'C', b"SELECT 1\0"));
    stream.extend(frame(b'Z', b"T"));
    stream.extend(frame(b'Z', b"I"));
    for split in 1..stream.len() {
        let mut scanner = FrameScanner::default();
        let mut seen = Vec::new();
        for chunk in stream.chunks(split) {
            let stop = scanner
                .scan(
                    chunk,
                    |t| t == b'Z',
                    |t, body| {
                        seen.push((t, body.to_vec()));
                        true
                    },
                )
                .expect("valid stream");
            assert_eq!(stop, None);
        }
        assert!(scanner.at_boundary(), "split {split}");
        assert_eq!(
            seen,
            vec![
                (b'T', vec![]),
                (b'D', vec![]),
                (b'C', vec![]),
                (b'Z', b"T".to_vec()),
                (b'Z', b"I".to_vec())
            ],
            "split {split}"
        );
    }
}

#[test]
fn scanner_stops_just_past_the_requested_frame() {
    let mut stream = frame(b'Q', b"select 1\0");
    let terminate_start = stream.len();
    let terminate_end = stream.len() + 5;
    stream.extend(frame(b'X', b""));
    stream.extend(frame(b'Q', b"select 2\0"));
    let mut scanner = FrameScanner::default();
    let stop = scanner
        .scan(&stream, |_| false, |t, _| t != b'X')
        .expect("valid stream");
    assert_eq!(
        stop,
        Some(StopAt {
            frame_start: Some(terminate_start),
            frame_end: terminate_end
        })
    );
    // The same Terminate split over two chunks: its start lies in the earlier chunk.
    let mut scanner = FrameScanner::default();
    let first = &stream[..terminate_start + 2];
    assert_eq!(
        scanner
            .scan(first, |_| false, |t, _| t != b'X')
            .expect("valid"),
        None
    );
    let stop = scanner
        .scan(&stream[terminate_start + 2..], |_| false, |t, _| t != b'X')
        .expect("valid");
    assert_eq!(
        stop,
        Some(StopAt {
            frame_start: None,
            frame_end: 3
        })
    );
}

#[test]
fn scanner_refuses_length_below_four() {
    let mut scanner = FrameScanner::default();
    let err = scanner.scan(&[b'Q', 0, 0, 0, 3], |_| false, |_, _| true);
    assert!(matches!(
        err,
        Err(ProtocolError::BadFrameLength { len: 3, .. })
    ));
}

#[tokio::test]
async fn startup_packet_with_params_and_protocol_options() {
    let mut body = Vec::new();
    body.extend_from_slice(&196_610i32.to_be_bytes());
    for s in [
        "user",
        "alice",
        "database",
        "app",
        "_pq_.command_marker",
        "1",
        "",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    let parsed = read_startup_packet(&mut packet.as_slice())
        .await
        .expect("parses");
    let StartupPacket::Startup(params) = parsed else {
        panic!("expected startup, got {parsed:?}");
    };
    assert_eq!(params.minor_version, 2);
    assert_eq!(params.get("user"), Some("alice"));
    assert_eq!(params.get("database"), Some("app"));
    assert_eq!(
        params.unsupported_options,
        vec!["_pq_.command_marker".to_string()]
    );
}

#[tokio::test]
async fn startup_packet_length_is_bounded_before_allocation() {
    let packet = 1_000_000i32.to_be_bytes();
    let err = read_startup_packet(&mut packet.as_slice()).await;
    assert!(matches!(
        err,
        Err(ProtocolError::BadStartupLength(1_000_000))
    ));
}

#[tokio::test]
async fn cancel_and_ssl_requests_are_recognised() {
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend(request_code::SSL.to_be_bytes());
    assert!(matches!(
        read_startup_packet(&mut ssl.as_slice()).await,
        Ok(StartupPacket::Ssl)
    ));
    let mut cancel = BytesMut::new();
    write::cancel_request(&mut cancel, 42, -7);
    assert!(matches!(
        read_startup_packet(&mut &cancel[..]).await,
        Ok(StartupPacket::Cancel {
            process_id: 42,
            secret_key: -7
        })
    ));
}

#[test]
fn error_response_round_trips_through_the_field_parser() {
    let mut buf = BytesMut::new();
    write::error_response(
        &mut buf,
        &PgError::fatal(sqlstate::INVALID_PASSWORD, "bad token\0x"),
    );
    assert_eq!(buf[0], b'E');
    let fields = ErrorFields::parse(&buf[5..]);
    assert_eq!(fields.code, "28P01");
    assert_eq!(fields.severity, "FATAL");
    assert_eq!(fields.message, "bad tokenx");
}
