//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and
//! 2) that an L4 balancer in front sends first on each connection, read
//! before TLS or HTTP. Exactly the header's bytes are consumed (the rest
//! stays in the socket for TLS or HTTP), parsed by the `ppp` crate.

use std::io;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (§2.2): `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (§2.1).
const V1_MAX: usize = 107;
/// The shortest header of either version: "PROXY UNKNOWN\r\n" (v1), so
/// reading this many bytes never takes any of what follows.
const MIN: usize = 15;
/// The longest v2 header accepted: the 16 fixed bytes, the addresses and
/// TLVs (cloud balancers send a few hundred bytes of TLVs at most).
const V2_MAX: usize = 16 + 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("no PROXY protocol header (the connection starts with {0:?})")]
    Missing(String),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the PROXY header at the start of `stream`, consuming exactly its
/// bytes. `Ok(Some(source))`: the client's address as the balancer saw it;
/// `Ok(None)`: a health check of the balancer itself (v2 `LOCAL`, v1
/// `UNKNOWN`, or an address family without one), which keeps the peer's.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut header = vec![0u8; MIN];
    read_exact(stream, &mut header).await?;
    if header[..12] == V2_SIGNATURE {
        // 16 fixed bytes, the last two the length of the rest (§2.2).
        header.resize(16, 0);
        read_exact(stream, &mut header[MIN..]).await?;
        let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + rest > V2_MAX {
            return Err(HeaderError::Malformed(format!(
                "a v2 header of {} bytes (at most {V2_MAX} are accepted)",
                16 + rest
            )));
        }
        header.resize(16 + rest, 0);
        read_exact(stream, &mut header[16..]).await?;
    } else if header.starts_with(b"PROXY ") {
        read_v1_line(stream, &mut header).await?;
    } else {
        let start = String::from_utf8_lossy(&header).into_owned();
        return Err(HeaderError::Missing(start));
    }
    source(&header)
}

/// Reads the rest of a v1 line up to its LF: what is already waiting is
/// peeked at, and only the line's bytes are taken.
async fn read_v1_line(stream: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), HeaderError> {
    let mut peeked = [0u8; V1_MAX];
    while header.last() != Some(&b'\n') {
        let room = V1_MAX.saturating_sub(header.len());
        if room == 0 {
            return Err(HeaderError::Malformed(format!(
                "a v1 line longer than {V1_MAX} bytes"
            )));
        }
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let take = peeked[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        let at = header.len();
        header.resize(at + take, 0);
        stream.read_exact(&mut header[at..]).await?;
    }
    Ok(())
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), HeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The source address a complete header carries.
pub fn source(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::{v1, v2, HeaderResult};
    let malformed = |e: &dyn std::fmt::Display| HeaderError::Malformed(e.to_string());
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => {
            if h.header.len() != header.len() {
                return Err(HeaderError::Malformed("bytes after the v1 line".into()));
            }
            Ok(match h.addresses {
                v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Unknown => None,
            })
        }
        HeaderResult::V2(Ok(h)) => {
            if h.len() != header.len() {
                return Err(HeaderError::Malformed("bytes after the v2 header".into()));
            }
            if h.command == v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
                v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            })
        }
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_addresses_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n";
        assert_eq!(source(h).unwrap(), Some("192.0.2.7:51234".parse().unwrap()));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(
            source(h).unwrap(),
            Some("[2001:db8::7]:51234".parse().unwrap())
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n"[..],
            b"PROXY TCP4 300.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",
        ] {
            assert!(source(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        // TCP over IPv4: 192.0.2.7:51234 -> 198.51.100.1:443, one TLV.
        let addrs = [192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0x01, 0xbb];
        let tlv = [0x04, 0x00, 0x01, 0x2a];
        let h = v2(1, 0x11, &addrs, &tlv);
        assert_eq!(
            source(&h).unwrap(),
            Some("192.0.2.7:51234".parse().unwrap())
        );
        // LOCAL (the balancer's own health check): the peer's address stays.
        assert_eq!(source(&v2(0, 0x00, &[], &[])).unwrap(), None);
        // A bad version/command byte.
        let mut bad = v2(1, 0x11, &addrs, &[]);
        bad[12] = 0x31;
        assert!(source(&bad).is_err());
    }
}
