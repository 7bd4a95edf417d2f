//! The message rules of an HTTP intermediary (RFC 9110, 9112, 9113), as
//! pure functions over request and response heads: which requests are
//! malformed, how a client's request becomes the backend's (origin-form
//! target, one `Host`, hop-by-hop fields removed, forwarding fields added,
//! multi-line fields joined), and how a backend's response becomes the
//! client's. No IO, no routing: `proxy` calls these between its phases.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{request, response, Method, Uri, Version};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Why a request head is refused before any backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2: 400).
    NoHost,
    /// More than one `Host` line (RFC 9112 §3.2: 400).
    ManyHosts,
    /// A `Host` (or target authority) that is not `host[:port]`, or that
    /// carries userinfo (RFC 9112 §3.2, RFC 9110 §4.2.4: 400).
    BadHost,
    /// A request target in a form its method may not use: `*` other than
    /// with `OPTIONS`, authority-form other than with `CONNECT` (RFC 9112
    /// §3.2.3, §3.2.4: 400).
    BadTarget,
    /// A transfer coding other than `chunked`, which the proxy would have
    /// to understand to forward (RFC 9112 §6.1: 501).
    TransferCoding,
    /// `CONNECT`: a reverse proxy opens no tunnels to arbitrary authorities
    /// (405).
    Connect,
}

const HOP_BY_HOP_LEN: usize = 9;

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the de-facto `Proxy-Connection` and the proxy authentication pair.
/// `Trailer` is not among them: it describes the message and travels with it.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_LEN] = [
    header::CONNECTION,
    // The settings of an h2c upgrade, for the next hop only (RFC 7540 §3.2.1).
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The methods RFC 9110 §9.2.2 calls idempotent: a request of one of these
/// may be sent again after a connection failed under it.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Checks what the proxy must refuse in a request head: `CONNECT`; a
/// target form the method may not use; a missing Host in HTTP/1.1 (or no
/// authority at all in HTTP/2), more than one, or an invalid one (RFC 9112
/// §3.2, RFC 9113 §8.3.1); a transfer coding other than `chunked`.
pub fn check_request(parts: &request::Parts) -> Result<(), Refusal> {
    if parts.method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let uri = &parts.uri;
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if authority_form || (uri.path() == "*" && parts.method != Method::OPTIONS) {
        return Err(Refusal::BadTarget);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Refusal::ManyHosts),
        (host, None) => host,
    };
    if let Some(a) = uri.authority() {
        if a.as_str().contains('@') {
            return Err(Refusal::BadHost);
        }
    }
    match host {
        Some(h) if !is_host(h.as_bytes()) => return Err(Refusal::BadHost),
        None if parts.version == Version::HTTP_11 => return Err(Refusal::NoHost),
        None if parts.version == Version::HTTP_2 && uri.authority().is_none() => {
            return Err(Refusal::NoHost)
        }
        _ => {}
    }
    if has_other_codings(&parts.headers) {
        return Err(Refusal::TransferCoding);
    }
    Ok(())
}

/// Whether `Transfer-Encoding` names a coding besides `chunked` (`gzip,
/// chunked`, say). Empty list elements do not count (RFC 9110 §5.6.1).
pub fn has_other_codings(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
}

/// Whether `v` is a `Host` value: `uri-host [":" port]` (RFC 9110 §7.2,
/// RFC 3986 §3.2.2): an IP literal in brackets, or a name of unreserved,
/// percent-encoded and sub-delimiter characters (a comma, legal in a name
/// but the mark of two values folded into one line, refused too); never
/// userinfo; a port of at most five digits.
fn is_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &v[v.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let host_ok = match host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        // IPv6 or IPvFuture: hex digits, dots, colons; a zone after `%25`.
        Some(literal) => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~%:+!$&'()*;=".contains(&b))
        }
        None => !host.is_empty() && is_reg_name(host),
    };
    port_ok && host_ok
}

/// A registered name: unreserved characters, sub-delimiters but the
/// comma, and `%XX` escapes (RFC 3986 §3.2.2).
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Whether the client takes trailer fields in a response: HTTP/2 always
/// (RFC 9113 §8.1), HTTP/1.1 when it sent `TE: trailers` (RFC 9110 §10.1.4).
/// Read before the hop-by-hop fields are removed.
pub fn accepts_trailers(parts: &request::Parts) -> bool {
    parts.version == Version::HTTP_2 || list_has(&parts.headers, &header::TE, "trailers")
}

/// Rewrites a checked client request head into the backend's:
/// - the target in origin-form (RFC 9112 §3.2.1; `*` stays `*`), so that
///   origin servers which do not accept the absolute form get what they
///   expect; the version is HTTP/1.1;
/// - one `Host`: the target's authority when the request carried one
///   (absolute-form, RFC 9112 §3.2.2, or HTTP/2 `:authority`, RFC 9113
///   §8.3.1), else the client's `Host`, else (HTTP/1.0) `fallback_host`;
/// - hop-by-hop fields and those `Connection` names removed, `Host` never;
/// - several `Cookie` fields joined with `; ` (RFC 9113 §8.2.3);
/// - `X-Forwarded-For` lines joined in order and the peer appended,
///   `X-Forwarded-Proto` and `X-Forwarded-Host` set;
/// - `TE: trailers` when the client takes trailers, so the backend may
///   send them.
///
/// Returns whether `Host` is `fallback_host` (the request named no host).
pub fn upstream_request(
    parts: &mut request::Parts,
    fallback_host: &HeaderValue,
    peer: SocketAddr,
    scheme: &'static str,
    trailers: bool,
) -> bool {
    let headers = &mut parts.headers;
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    };
    strip_hop_by_hop(headers);
    let fallback = host.is_none();
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
            headers.insert(header::HOST, host);
        }
        None => {
            headers.insert(header::HOST, fallback_host.clone());
        }
    }
    join(headers, header::COOKIE, b"; ");
    append_forwarded_for(headers, peer);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    fallback
}

/// The request target as origin-form: path and query, `/` when empty,
/// `*` kept for `OPTIONS *`.
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .filter(|pq| !pq.as_str().is_empty())
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

/// Rewrites a backend's response head for the client: hop-by-hop fields
/// removed, and `Content-Length` dropped when the backend also sent
/// `Transfer-Encoding` (RFC 9112 §6.3: the transfer coding decides the
/// length, and an intermediary forwarding such a message removes
/// `Content-Length`); the version is the proxy's own (a backend's HTTP/1.0
/// status line does not make a keep-alive client close).
///
/// A transfer coding besides `chunked` (say `gzip, chunked`) is part of
/// the body's meaning: its `Transfer-Encoding` is kept, and the client's
/// side chunks the still-coded body again. Only an HTTP/1.1 client can
/// take that (see `has_other_codings`).
pub fn downstream_response(parts: &mut response::Parts) {
    let te = parts.headers.get(header::TRANSFER_ENCODING).cloned();
    if te.is_some() {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let codings = te.filter(|_| has_other_codings(&parts.headers));
    strip_hop_by_hop(&mut parts.headers);
    if let Some(te) = codings {
        parts.headers.insert(header::TRANSFER_ENCODING, te);
    }
    parts.version = Version::HTTP_11;
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection:
/// upgrade` plus `Upgrade`), read before the hop-by-hop fields go.
///
/// An upgrade to `h2c` is not one: it concerns only the next hop and is
/// deprecated (RFC 9113 §3.1); passed on, it would open a tunnel past
/// every rule here. Its `Upgrade` field is dropped like any hop-by-hop one.
pub fn upgrade_of(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !connection_has(headers, "upgrade") {
        return None;
    }
    let value = headers.get(header::UPGRADE)?;
    if !list_has(headers, &header::UPGRADE, "h2c") {
        return Some(value.clone());
    }
    // The other protocols offered beside h2c, if any (a copy only here).
    let others: Vec<&str> = value
        .to_str()
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    if others.is_empty() {
        return None;
    }
    HeaderValue::from_str(&others.join(", ")).ok()
}

/// `Connection: upgrade` and `Upgrade: protocol`, for the next hop.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Whether the `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    list_has(headers, &header::CONNECTION, token)
}

/// Whether the comma-separated list field `name` has `token`
/// (case-insensitive; parameters after `;` ignored).
fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // Bytes, not text: a list element is a token (ASCII), parameters
    // after `;` are ignored.
    headers.get_all(name).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|element| {
            let t = element.split(|&b| b == b';').next().unwrap_or(b"");
            t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())
        })
    })
}

/// The `timeout` parameter of a `Keep-Alive` response field (RFC 2068
/// §19.7.1, still sent by Apache and others): how long the backend keeps
/// an idle connection open.
pub fn keep_alive_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    let v = headers.get("keep-alive")?.to_str().ok()?;
    v.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let secs: u64 = n.trim().trim_matches('"').parse().ok()?;
        Some(std::time::Duration::from_secs(secs))
    })
}

/// Removes the hop-by-hop fields, and those the `Connection` field names
/// except `Host`, which `Connection` cannot take away.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    if let (Some(_), None) = (values.next(), values.next()) {
        // The usual single `Connection` value: taken out whole (no copy),
        // then each field it names removed by name, without allocating.
        if let Some(v) = headers.remove(header::CONNECTION) {
            for token in v.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if !token.is_empty() && !token.eq_ignore_ascii_case("host") {
                    headers.remove(token);
                }
            }
        }
    } else if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| *n != header::HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // One pass over the names (a handful) instead of a hashed look-up per
    // hop-by-hop name: most messages carry none of them.
    let mut present = [false; HOP_BY_HOP_LEN];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if any {
        for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
            headers.remove(name);
        }
    }
}

/// Joins several lines of field `name` into one, in order, with `sep`
/// between them; a single line is left as it is (no allocation).
fn join(headers: &mut HeaderMap, name: HeaderName, sep: &[u8]) {
    let mut lines = headers.get_all(&name).iter();
    if let (Some(_), None) = (lines.next(), lines.next()) {
        return;
    }
    if let Some(joined) = joined(headers, &name, sep, None) {
        headers.insert(name, joined);
    }
}

/// The lines of `name` joined with `sep`, then `tail` appended after one
/// more `sep`; `None` when there is nothing at all.
fn joined(
    headers: &HeaderMap,
    name: &HeaderName,
    sep: &[u8],
    tail: Option<&[u8]>,
) -> Option<HeaderValue> {
    let mut buf = BytesMut::new();
    let parts = headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .chain(tail)
        .filter(|p| !p.iter().all(u8::is_ascii_whitespace));
    for part in parts {
        if !buf.is_empty() {
            buf.put_slice(sep);
        }
        buf.put_slice(part);
    }
    if buf.is_empty() {
        return None;
    }
    // Made of valid field values and a separator: valid too.
    HeaderValue::from_maybe_shared(buf.freeze()).ok()
}

/// `X-Forwarded-For`: every line the client sent, in order, then the peer.
/// The client's address: the peer's, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` address that is not itself trusted
/// (all lines in order, as NGINX's `real_ip_recursive on` reads them). If
/// every address is trusted, the left-most; an entry that is not an
/// address ends the walk at the last good one.
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        // Empty list elements do not count (RFC 9110 §5.6.1).
        for entry in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some(ip) = forwarded_ip(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113
/// §6.5.2): each field's name and value plus 32 bytes, pseudo-header
/// fields included.
pub fn header_list_size(parts: &request::Parts) -> usize {
    let pseudo = parts.method.as_str().len()
        + parts.uri.scheme_str().map_or(0, str::len)
        + parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + 4 * 32
        + ":method:scheme:authority:path".len();
    parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// An `X-Forwarded-For` entry's address: `192.0.2.7`, `2001:db8::7`,
/// `[2001:db8::7]`, or any of them with a port.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical();
    let value = if headers.contains_key(&X_FORWARDED_FOR) {
        let peer = itoa_ip(ip);
        joined(headers, &X_FORWARDED_FOR, b", ", Some(&peer[..]))
    } else {
        HeaderValue::from_maybe_shared(itoa_ip(ip).freeze()).ok()
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// An IP address as text in one buffer; IPv4 by hand (the formatter
/// costs about a thousand instructions a request).
fn itoa_ip(ip: std::net::IpAddr) -> BytesMut {
    let mut buf = BytesMut::with_capacity(45);
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'.');
                }
                if octet >= 100 {
                    buf.put_u8(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.put_u8(b'0' + octet / 10 % 10);
                }
                buf.put_u8(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            // Writing to a BytesMut cannot fail.
            let _ = write!(buf, "{ip}");
        }
    }
    buf
}

#[cfg(test)]
mod ip_text_tests {
    use super::itoa_ip;

    #[test]
    fn ipv4_text_matches_the_formatter() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.255",
            "100.99.9.0",
            "255.255.255.255",
            "127.0.0.1",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(&itoa_ip(parsed)[..], ip.as_bytes());
        }
        let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(&itoa_ip(v6)[..], b"2001:db8::7");
    }
}
