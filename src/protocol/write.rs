//! Writes backend (and a few frontend) messages into a buffer. Every function appends one whole frame.

use super::{request_code, tag, PgError, TxStatus, TEXT_OID};
use bytes::{BufMut, BytesMut};

fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_pos = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - len_pos) as i32;
    buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the peer's side; strip it.
    for piece in s.as_bytes().split(|b| *b == 0) {
        buf.extend_from_slice(piece);
    }
    buf.put_u8(0);
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    frame(buf, tag::AUTHENTICATION, |b| b.put_i32(3));
}
pub fn authentication_ok(buf: &mut BytesMut) {
    frame(buf, tag::AUTHENTICATION, |b| b.put_i32(0));
}
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    frame(buf, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}
pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    frame(buf, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    frame(buf, tag::READY_FOR_QUERY, |b| b.put_u8(status.as_byte()));
}
/// NegotiateProtocolVersion: the newest protocol pgtenant speaks (3.`minor`, sent as the full version
/// number as PostgreSQL does) and the protocol options it does not know.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[String]) {
    frame(buf, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32((3 << 16) | minor);
        b.put_i32(unsupported.len() as i32);
        for option in unsupported {
            put_cstr(b, option);
        }
    });
}
/// ErrorResponse (or NoticeResponse with `tag::NOTICE_RESPONSE`).
pub fn error_response(buf: &mut BytesMut, err: &PgError) {
    frame(buf, tag::ERROR_RESPONSE, |b| put_error_fields(b, err));
}
pub fn notice_response(buf: &mut BytesMut, err: &PgError) {
    frame(buf, tag::NOTICE_RESPONSE, |b| put_error_fields(b, err));
}
fn put_error_fields(b: &mut BytesMut, err: &PgError) {
    b.put_u8(b'S');
    put_cstr(b, err.severity.as_str());
    b.put_u8(b'V');
    put_cstr(b, err.severity.as_str());
    b.put_u8(b'C');
    put_cstr(b, &err.code);
    b.put_u8(b'M');
    put_cstr(b, &err.message);
    if let Some(detail) = &err.detail {
        b.put_u8(b'D');
        put_cstr(b, detail);
    }
    if let Some(hint) = &err.hint {
        b.put_u8(b'H');
        put_cstr(b, hint);
    }
    b.put_u8(0);
}

/// RowDescription with every column of type text, in text format.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    frame(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for name in columns {
            put_cstr(b, name);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(TEXT_OID);
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}
pub fn data_row(buf: &mut BytesMut, values: &[Option<String>]) {
    frame(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}
pub fn command_complete(buf: &mut BytesMut, tag_text: &str) {
    frame(buf, tag::COMMAND_COMPLETE, |b| put_cstr(b, tag_text));
}
pub fn empty_query_response(buf: &mut BytesMut) {
    frame(buf, b'I', |_| {});
}

// Frontend messages pgtenant sends upstream.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let len_pos = buf.len();
    buf.put_i32(0);
    buf.put_i32(request_code::PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - len_pos) as i32;
    buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
}
pub fn cancel_request(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    buf.put_i32(16);
    buf.put_i32(request_code::CANCEL);
    buf.put_i32(process_id);
    buf.put_i32(secret_key);
}
pub fn password_message(buf: &mut BytesMut, password: &str) {
    frame(buf, tag::PASSWORD, |b| put_cstr(b, password));
}
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    frame(buf, tag::PASSWORD, |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.extend_from_slice(data);
    });
}
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, tag::PASSWORD, |b| b.extend_from_slice(data));
}
pub fn query(buf: &mut BytesMut, sql: &str) {
    frame(buf, tag::QUERY, |b| put_cstr(b, sql));
}
pub fn terminate(buf: &mut BytesMut) {
    frame(buf, tag::TERMINATE, |_| {});
}
