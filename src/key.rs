//! The client id of a request, from a header, a cookie, a query parameter or
//! the peer address. Borrows from the request; never allocates.

use crate::config::{KeySource, MissingKey};
use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, Uri};
use std::fmt::Write as _;
use std::net::IpAddr;

/// Compiled key sources and the missing-key policy.
#[derive(Debug, Clone)]
pub struct KeySpec {
    sources: Box<[Source]>,
    missing: MissingKey,
}

#[derive(Debug, Clone)]
enum Source {
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
    ClientIp,
}

/// Where the key came from (the `source` label of `key_source_total`).
/// `ALL` lists the kinds in declaration order, so `kind as usize` indexes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Header,
    Cookie,
    Query,
    ClientIp,
    Random,
}

impl KeyKind {
    pub const ALL: [KeyKind; 5] = [
        KeyKind::Header,
        KeyKind::Cookie,
        KeyKind::Query,
        KeyKind::ClientIp,
        KeyKind::Random,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Header => "header",
            KeyKind::Cookie => "cookie",
            KeyKind::Query => "query",
            KeyKind::ClientIp => "client_ip",
            KeyKind::Random => "random",
        }
    }
}

/// A request's key bytes: borrowed from the request, or built inline (an
/// address as text, random bytes).
pub enum Key<'a> {
    Borrowed(&'a [u8]),
    Inline { buf: [u8; INLINE], len: u8 },
}

const INLINE: usize = 48;

impl Key<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(b) => b,
            Key::Inline { buf, len } => &buf[..usize::from(*len)],
        }
    }
}

/// The request has no key and the policy is `reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

impl KeySpec {
    pub fn new(sources: &[KeySource], missing: MissingKey) -> Result<Self, String> {
        let sources = sources
            .iter()
            .map(|s| {
                Ok(match s {
                    KeySource::Header(n) => Source::Header(
                        HeaderName::from_bytes(n.as_bytes())
                            .map_err(|_| format!("{n:?} is not a valid header name"))?,
                    ),
                    KeySource::Cookie(n) => Source::Cookie(n.as_str().into()),
                    KeySource::Query(n) => Source::Query(n.as_str().into()),
                    KeySource::ClientIp => Source::ClientIp,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(KeySpec { sources, missing })
    }

    /// The first configured source present in the request, else the
    /// missing-key policy. Empty values count as absent.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
        peer: IpAddr,
    ) -> Result<(KeyKind, Key<'a>), Rejected> {
        for source in self.sources.iter() {
            let found = match source {
                Source::Header(name) => headers
                    .get(name)
                    .map(|v| v.as_bytes())
                    .filter(|v| !v.is_empty())
                    .map(|v| (KeyKind::Header, Key::Borrowed(v))),
                Source::Cookie(name) => {
                    cookie(headers, name).map(|v| (KeyKind::Cookie, Key::Borrowed(v)))
                }
                Source::Query(name) => uri
                    .query()
                    .and_then(|q| query_param(q, name))
                    .map(|v| (KeyKind::Query, Key::Borrowed(v))),
                Source::ClientIp => Some((KeyKind::ClientIp, ip_key(peer))),
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        match self.missing {
            MissingKey::ClientIp => Ok((KeyKind::ClientIp, ip_key(peer))),
            MissingKey::Random => {
                let mut buf = [0u8; INLINE];
                buf[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
                Ok((KeyKind::Random, Key::Inline { buf, len: 8 }))
            }
            MissingKey::Reject => Err(Rejected),
        }
    }
}

/// The value of cookie `name` across all `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|h| {
        h.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            (k == name.as_bytes() && !v.is_empty()).then_some(v)
        })
    })
}

/// The raw (not percent-decoded) value of query parameter `name`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v.as_bytes())
    })
}

/// The peer address as text (IPv4-mapped IPv6 shown as IPv4), so
/// `stickylb route 10.0.0.1` agrees with a client from 10.0.0.1.
fn ip_key(peer: IpAddr) -> Key<'static> {
    struct Buf {
        buf: [u8; INLINE],
        len: usize,
    }
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut b = Buf {
        buf: [0; INLINE],
        len: 0,
    };
    // An IP address is at most 45 characters, so it always fits.
    if write!(b, "{}", peer.to_canonical()).is_err() {
        b.len = 0;
    }
    Key::Inline {
        buf: b.buf,
        len: b.len as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sources: &[KeySource], missing: MissingKey) -> KeySpec {
        KeySpec::new(sources, missing).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn sources_in_order() {
        let s = spec(
            &[
                KeySource::Header("x-client-id".into()),
                KeySource::Cookie("sid".into()),
                KeySource::Query("u".into()),
            ],
            MissingKey::Reject,
        );
        let uri: Uri = "/p?a=1&u=carol".parse().unwrap();
        let h = headers(&[("x-client-id", "alice"), ("cookie", "x=1; sid=bob")]);
        let (kind, key) = s.extract(&h, &uri, PEER).unwrap();
        assert_eq!((kind, key.as_bytes()), (KeyKind::Header, &b"alice"[..]));
        let h = headers(&[("cookie", "x=1"), ("cookie", "sid=\"bob\"")]);
        let (kind, key) = s.extract(&h, &uri, PEER).unwrap();
        assert_eq!((kind, key.as_bytes()), (KeyKind::Cookie, &b"bob"[..]));
        let empty = HeaderMap::new();
        let (kind, key) = s.extract(&empty, &uri, PEER).unwrap();
        assert_eq!((kind, key.as_bytes()), (KeyKind::Query, &b"carol"[..]));
        let bare: Uri = "/p?u=".parse().unwrap();
        assert_eq!(
            s.extract(&HeaderMap::new(), &bare, PEER).err(),
            Some(Rejected)
        );
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, k) in KeyKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn missing_policies() {
        let uri: Uri = "/".parse().unwrap();
        let h = HeaderMap::new();
        let s = spec(&[], MissingKey::ClientIp);
        let (kind, key) = s.extract(&h, &uri, PEER).unwrap();
        assert_eq!(
            (kind, key.as_bytes()),
            (KeyKind::ClientIp, &b"10.1.2.3"[..])
        );
        let s = spec(&[], MissingKey::Random);
        let a = s.extract(&h, &uri, PEER).unwrap().1.as_bytes().to_vec();
        let b = s.extract(&h, &uri, PEER).unwrap().1.as_bytes().to_vec();
        assert_ne!(a, b);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let s = spec(&[KeySource::ClientIp], MissingKey::Reject);
        assert_eq!(
            s.extract(&h, &uri, mapped).unwrap().1.as_bytes(),
            b"10.1.2.3"
        );
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(
            s.extract(&h, &uri, v6).unwrap().1.as_bytes(),
            v6.to_string().as_bytes()
        );
    }
}
