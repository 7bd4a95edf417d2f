//! The client id of a request, from a header, a cookie, a query parameter or
//! the peer address. Borrows from the request; never allocates. Also the
//! generated ids of `routing.sticky_cookie`.

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
    /// A sticky cookie is configured: a key-less request gets a generated id.
    generate: bool,
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
    /// A fresh id for the sticky cookie.
    Generated,
}

impl KeyKind {
    pub const ALL: [KeyKind; 6] = [
        KeyKind::Header,
        KeyKind::Cookie,
        KeyKind::Query,
        KeyKind::ClientIp,
        KeyKind::Random,
        KeyKind::Generated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Header => "header",
            KeyKind::Cookie => "cookie",
            KeyKind::Query => "query",
            KeyKind::ClientIp => "client_ip",
            KeyKind::Random => "random",
            KeyKind::Generated => "generated",
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

/// The request carries none of the key sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// The policy is `reject`.
    Rejected,
    /// A sticky cookie is configured: route by the connection's generated id.
    Generate,
}

/// A generated client id: 128 random bits, base64url without padding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GeneratedId([u8; GENERATED_LEN]);

const GENERATED_LEN: usize = 22;

impl GeneratedId {
    /// A fresh id from the operating system's secure random source.
    pub fn new() -> Self {
        let mut bits = [0u8; 16];
        if getrandom::fill(&mut bits).is_err() {
            // Not a secret, only an identity: a weaker source still routes.
            tracing::warn!("secure random source failed; sticky id from a fast generator");
            fastrand::fill(&mut bits);
        }
        Self::from_bits(bits)
    }

    /// `bits` encoded as base64url without padding.
    pub fn from_bits(bits: [u8; 16]) -> Self {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = [0u8; GENERATED_LEN];
        let mut acc: u32 = 0;
        let mut nbits = 0;
        let mut n = 0;
        for b in bits {
            acc = (acc << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out[n] = ALPHABET[((acc >> nbits) & 63) as usize];
                n += 1;
            }
        }
        // 128 bits = 21 sextets + 2 bits, padded with zeros on the right.
        out[n] = ALPHABET[((acc << (6 - nbits)) & 63) as usize];
        GeneratedId(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII from the base64url alphabet is ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Default for GeneratedId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for GeneratedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeySpec {
    /// `sticky_cookie`: the cookie name, read as the last key source when
    /// `sources` does not already list it.
    pub fn new(
        sources: &[KeySource],
        missing: MissingKey,
        sticky_cookie: Option<&str>,
    ) -> Result<Self, String> {
        let mut sources = sources.to_vec();
        if let Some(name) = sticky_cookie {
            let cookie = KeySource::Cookie(name.to_string());
            if !sources.contains(&cookie) {
                sources.push(cookie);
            }
        }
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
        Ok(KeySpec {
            sources,
            missing,
            generate: sticky_cookie.is_some(),
        })
    }

    /// The first configured source present in the request, else a generated
    /// id (with a sticky cookie), else the missing-key policy. Empty values
    /// count as absent.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
        peer: IpAddr,
    ) -> Result<(KeyKind, Key<'a>), NoKey> {
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
        if self.generate {
            return Err(NoKey::Generate);
        }
        match self.missing {
            MissingKey::ClientIp => Ok((KeyKind::ClientIp, ip_key(peer))),
            MissingKey::Random => {
                let mut buf = [0u8; INLINE];
                buf[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
                Ok((KeyKind::Random, Key::Inline { buf, len: 8 }))
            }
            MissingKey::Reject => Err(NoKey::Rejected),
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
        KeySpec::new(sources, missing, None).unwrap()
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
            Some(NoKey::Rejected)
        );
    }

    #[test]
    fn sticky_cookie_is_read_back_and_generated_otherwise() {
        let s = KeySpec::new(
            &[KeySource::Header("x-client-id".into())],
            MissingKey::Reject,
            Some("lb"),
        )
        .unwrap();
        let uri: Uri = "/".parse().unwrap();
        let h = headers(&[("cookie", "a=1; lb=abc")]);
        let (kind, key) = s.extract(&h, &uri, PEER).unwrap();
        assert_eq!((kind, key.as_bytes()), (KeyKind::Cookie, &b"abc"[..]));
        assert_eq!(
            s.extract(&HeaderMap::new(), &uri, PEER).err(),
            Some(NoKey::Generate)
        );
    }

    #[test]
    fn generated_ids_are_url_safe_base64() {
        assert_eq!(
            GeneratedId::from_bits([0; 16]).as_str(),
            "AAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(
            GeneratedId::from_bits([0xff; 16]).as_str(),
            "_____________________w"
        );
        let mut bits = [0u8; 16];
        bits[..3].copy_from_slice(b"Man");
        assert!(GeneratedId::from_bits(bits).as_str().starts_with("TWFu"));
        let (a, b) = (GeneratedId::new(), GeneratedId::new());
        assert_ne!(a, b);
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(c)));
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
