//! A client's address as text for the per-login log lines, the same text as its `Display` writes, made
//! without the formatting machinery for IPv4 (std formats each octet through a `Formatter`, which was a
//! visible part of a login's CPU). Other addresses fall back to `Display`.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Long enough for any `SocketAddr` (a scoped IPv6 address in brackets, with a port).
const ROOM: usize = 64;

pub struct AddrText {
    text: [u8; ROOM],
    len: usize,
}

impl AddrText {
    pub fn ip(ip: IpAddr) -> Self {
        let mut out = Self::empty();
        match ip {
            IpAddr::V4(v4) => out.push_v4(v4),
            IpAddr::V6(_) => out.push_display(&ip),
        }
        out
    }

    pub fn socket(addr: SocketAddr) -> Self {
        let mut out = Self::empty();
        match addr {
            SocketAddr::V4(v4) => {
                out.push_v4(*v4.ip());
                out.push(b':');
                out.push_decimal(u32::from(v4.port()));
            }
            SocketAddr::V6(_) => out.push_display(&addr),
        }
        out
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and what `Display` wrote are ever pushed.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or("")
    }

    fn empty() -> Self {
        Self {
            text: [0; ROOM],
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        if self.len < ROOM {
            self.text[self.len] = byte;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, value: u32) {
        for &digit in crate::log_line::decimal(u64::from(value), &mut [0; 20]).as_bytes() {
            self.push(digit);
        }
    }

    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.push_decimal(u32::from(octet));
        }
    }

    fn push_display(&mut self, value: &dyn fmt::Display) {
        let mut cursor = std::io::Cursor::new(&mut self.text[..]);
        // Cannot overflow ROOM (see there); a cut text would still be valid UTF-8 (ASCII only).
        let _ = write!(cursor, "{value}");
        self.len = cursor.position() as usize;
    }
}

impl fmt::Display for AddrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_display_writes() {
        let ips: Vec<IpAddr> = vec![
            "127.0.0.1".parse().expect("v4"),
            "0.0.0.0".parse().expect("v4"),
            "255.255.255.255".parse().expect("v4"),
            "10.0.100.9".parse().expect("v4"),
            "::1".parse().expect("v6"),
            "fe80::1:2:3:4".parse().expect("v6"),
            "::ffff:192.168.0.1".parse().expect("v6"),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse()
                .expect("v6"),
        ];
        for ip in ips {
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            for port in [0, 5432, 65535] {
                let addr = SocketAddr::new(ip, port);
                assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            }
        }
        let scoped: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .expect("scoped v6");
        assert_eq!(AddrText::socket(scoped).as_str(), scoped.to_string());
    }
}
