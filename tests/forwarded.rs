//! Behind another balancer: the client address from a PROXY protocol
//! header (HAProxy's proxy-protocol.txt, v1 and v2) or, from a trusted
//! peer only, from `X-Forwarded-For`; spoofing from anyone else changes
//! nothing.

mod common;

use common::recording::{ok, raw_exchange, RecordingBackend};
use common::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use stickylb::http::server::{Listening, Transport};
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{Router, Snapshot};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A proxy routing by `client-ip` to a recording backend, with `extra`
/// config and the PROXY protocol on or off.
async fn proxy(proxy_protocol: bool, routing: &str) -> (RecordingBackend, TestProxy) {
    let backend = RecordingBackend::spawn(Arc::new(ok)).await;
    let text = config_for(
        &[("rec", backend.addr)],
        &format!("key = [\"client-ip\"]\n{routing}"),
        "",
    );
    let config = stickylb::config::from_toml_str(&text, "t.toml").expect("config");
    let metrics = Arc::new(Metrics::new());
    let snap = Snapshot::build(&config, None, &metrics).expect("snapshot");
    let how = Listening {
        transport: Transport::Plain,
        proxy_protocol,
        workers: 1,
        worker: 0,
    };
    let proxy = start_proxy_listening(Arc::new(Router::new(snap)), metrics, how).await;
    (backend, proxy)
}

const GET: &[u8] = b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

fn v2_ipv4(src: [u8; 4], sport: u16, command: u8, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, 0x11]);
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[198, 51, 100, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// Sends `header` and a GET; the backend's view of `X-Forwarded-For`.
async fn forwarded_for(proxy: &TestProxy, backend: &RecordingBackend, header: &[u8]) -> String {
    let before = backend.requests().len();
    let bytes = [header, GET].concat();
    let reply = raw_exchange(proxy.addr, &bytes, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let reqs = backend.wait_requests(before + 1).await;
    reqs[before].header("x-forwarded-for").join(",")
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let (backend, proxy) = proxy(true, "").await;
    // v1, TCP4 and TCP6: the source address is the client's.
    let xff = forwarded_for(
        &proxy,
        &backend,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n",
    )
    .await;
    assert_eq!(xff, "192.0.2.7");
    let xff = forwarded_for(
        &proxy,
        &backend,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n",
    )
    .await;
    assert_eq!(xff, "2001:db8::7");
    // v2 PROXY with a TLV (ignored), and v2 LOCAL (the balancer's own
    // check): the connection's own address.
    let xff = forwarded_for(
        &proxy,
        &backend,
        &v2_ipv4([203, 0, 113, 9], 4000, 1, &[4, 0, 1, 42]),
    )
    .await;
    assert_eq!(xff, "203.0.113.9");
    let xff = forwarded_for(&proxy, &backend, &v2_ipv4([203, 0, 113, 9], 4000, 0, &[])).await;
    assert_eq!(xff, "127.0.0.1");
    // v1 UNKNOWN: the connection's own address too.
    let xff = forwarded_for(&proxy, &backend, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(xff, "127.0.0.1");
    // The client-ip key is the header's address: the access log and
    // routing agree with what the backend was told.
    assert_eq!(backend.requests().len(), 5);
}

#[tokio::test]
async fn a_header_split_across_writes_is_read_whole() {
    let (backend, proxy) = proxy(true, "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"7 198.51.100.1 51234 443\r\n").await.unwrap();
    s.write_all(GET).await.unwrap();
    let reply = common::recording::read_for(&mut s, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    let reqs = backend.wait_requests(1).await;
    assert_eq!(reqs[0].header("x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(reqs[0].line, "GET /p HTTP/1.1");
}

/// A connection without a valid header is closed with nothing forwarded,
/// and counted.
#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_unforwarded() {
    let (backend, proxy) = proxy(true, "").await;
    let bad: [&[u8]; 5] = [
        GET,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n",
        b"PROXY TCP4 999.0.2.7 198.51.100.1 51234 443\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443 and then far too long a line for version one of the protocol\r\n",
    ];
    for header in bad {
        let bytes = [header, GET].concat();
        let reply = raw_exchange(proxy.addr, &bytes, Duration::from_secs(5)).await;
        assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    }
    // A client that sends nothing is closed at client_header_read too (not
    // waited for here: the default is 10 s).
    assert_eq!(backend.accepted(), 0, "nothing reached the backend");
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(&m, "stickylb_proxy_protocol_refused_total"),
        Some(bad.len() as f64)
    );
}

/// Which backend owns `ip` as a `client-ip` key.
fn owner_of(proxy: &TestProxy, ip: &str) -> String {
    proxy.router.load().owner(ip.as_bytes()).name.to_string()
}

#[tokio::test]
async fn trusted_proxies_name_the_client_and_nobody_else_can() {
    let pool = spawn_backends(4).await;
    let refs: Vec<_> = pool.iter().collect();
    let client = client();
    let served = |proxy: &TestProxy, xff: &str| {
        let client = client.clone();
        let req = get(proxy.addr, "/", &[("x-forwarded-for", xff)]);
        async move { send(&client, req).await.backend() }
    };
    // Clients whose addresses land on different backends than 127.0.0.1.
    let trusted = spawn_proxy(&config_text(
        &refs,
        "key = [\"client-ip\"]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let clients: Vec<String> = (1..=200)
        .map(|i| format!("203.0.113.{i}"))
        .filter(|ip| owner_of(&trusted, ip) != owner_of(&trusted, "127.0.0.1"))
        .take(10)
        .collect();
    assert_eq!(clients.len(), 10);
    for ip in &clients {
        // The right-most address that is not trusted is the client's,
        // however many trusted hops follow it (real_ip_recursive).
        let xff = format!("198.51.100.99, {ip}, 10.1.2.3");
        assert_eq!(
            served(&trusted, &xff).await,
            owner_of(&trusted, ip),
            "{xff}"
        );
    }
    // All trusted: the left-most.
    let xff = format!("{}, 10.0.0.1", clients[0]);
    assert_eq!(
        served(&trusted, &xff).await,
        owner_of(&trusted, &clients[0])
    );

    // The peer (127.0.0.1) is not trusted: X-Forwarded-For is ignored.
    let untrusted = spawn_proxy(&config_text(
        &refs,
        "key = [\"client-ip\"]\ntrusted_proxies = [\"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let none = spawn_proxy(&config_text(&refs, "key = [\"client-ip\"]", "")).await;
    for proxy in [&untrusted, &none] {
        for ip in &clients {
            assert_eq!(
                served(proxy, ip).await,
                owner_of(proxy, "127.0.0.1"),
                "spoofed {ip}"
            );
        }
    }
}

#[test]
fn forwarded_for_walk_follows_real_ip_recursive() {
    use http::{HeaderMap, HeaderValue};
    use stickylb::http::wire::client_address;
    let trusted: Vec<ipnet::IpNet> =
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let peer: IpAddr = "10.0.0.2".parse().unwrap();
    let walk = |lines: &[&str], peer: IpAddr| {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        client_address(&h, peer, &trusted).to_string()
    };
    assert_eq!(walk(&["1.1.1.1, 2.2.2.2"], peer), "2.2.2.2");
    assert_eq!(walk(&["1.1.1.1", "2.2.2.2, 10.9.9.9"], peer), "2.2.2.2");
    assert_eq!(walk(&["[2001:db8::5]:443, ::1"], peer), "2001:db8::5");
    assert_eq!(walk(&["2.2.2.2:8080"], peer), "2.2.2.2");
    // Empty list elements are ignored (RFC 9110 §5.6.1).
    assert_eq!(walk(&["9.9.9.9,"], peer), "9.9.9.9");
    assert_eq!(walk(&["9.9.9.9, ,, "], peer), "9.9.9.9");
    assert_eq!(walk(&["10.1.1.1, 10.2.2.2"], peer), "10.1.1.1");
    // Garbage ends the walk at the last address believed.
    assert_eq!(walk(&["2.2.2.2, unknown, 10.3.3.3"], peer), "10.3.3.3");
    assert_eq!(walk(&[], peer), "10.0.0.2");
    // An untrusted peer: whatever it says, its own address.
    assert_eq!(
        walk(&["1.1.1.1"], "192.0.2.1".parse().unwrap()),
        "192.0.2.1"
    );
    // An IPv4-mapped peer counts as its IPv4 address.
    assert_eq!(
        walk(&["1.1.1.1"], "::ffff:10.0.0.2".parse().unwrap()),
        "1.1.1.1"
    );
}
