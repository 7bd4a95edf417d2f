//! Local limits stay local: silent connections are closed by the proxy's
//! own clocks (proxy and admin listeners alike), and the admin listener
//! answers what it does not serve with the methods it does.

mod common;

use common::recording::{ok, read_for, read_response, RecordingBackend};
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn proxy_with(extra: &str) -> (RecordingBackend, TestProxy) {
    let backend = RecordingBackend::spawn(Arc::new(ok)).await;
    let proxy = spawn_proxy(&config_for(&[("rec", backend.addr)], "", extra)).await;
    (backend, proxy)
}

/// Opens a connection that sends `bytes` (maybe none) and then nothing;
/// returns how long until the peer closed it (at most 10 s).
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let got = read_for(&mut s, Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "still open after 10 s");
    // HTTP/1.1: closed with nothing said; HTTP/2: after the server's preface.
    assert!(
        got.is_empty() || !bytes.starts_with(b"GET"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    took
}

#[tokio::test]
async fn silent_connections_close_after_client_header_read() {
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"300ms\"\nidle = \"60s\"").await;
    for (addr, bytes) in [
        (proxy.addr, &b""[..]),
        (proxy.addr, &b"GET / HTTP/1.1\r\nHost: a\r\n"[..]),
        (proxy.admin, &b""[..]),
        (proxy.admin, &b"GET /metrics HTTP/1.1\r\n"[..]),
    ] {
        let took = closed_after(addr, bytes).await;
        assert!(
            took >= Duration::from_millis(250),
            "{addr}: closed after {took:?}"
        );
    }
    // An HTTP/2 connection that opens and then asks for nothing, too.
    let took = closed_after(proxy.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(took >= Duration::from_millis(250), "h2: {took:?}");
}

#[tokio::test]
async fn keep_alive_connections_wait_idle_not_client_header_read_between_requests() {
    // `client_header_read` times a request head; between requests a
    // keep-alive connection may wait `idle` (RFC 9112 §9.3: the server
    // chooses, and says so in the config).
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"300ms\"\nidle = \"60s\"").await;
    for addr in [proxy.addr, proxy.admin] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        for i in 0..2 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n")
                .await
                .expect("write");
            let r = read_response(&mut s, &mut buf, false).await;
            assert!(
                r.status_line().starts_with("HTTP/1.1 200"),
                "{addr} request {i}: {r:?}"
            );
            // Idle for three times the head allowance (the time itself is
            // what is tested).
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    }
}

/// One request on `s`, answered 200.
async fn request_ok(s: &mut TcpStream, buf: &mut Vec<u8>, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let r = read_response(s, buf, false).await;
    assert!(r.status_line().starts_with("HTTP/1.1 200"), "{path}: {r:?}");
    assert!(!r.has_header("connection", "close"), "{path}: {r:?}");
}

#[tokio::test]
async fn a_later_head_must_be_complete_within_client_header_read_of_its_first_byte() {
    // NGINX's client_header_timeout: the allowance runs from the head's
    // first byte, on a kept-alive connection as on a new one.
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"400ms\"\nidle = \"60s\"").await;
    for addr in [proxy.addr, proxy.admin] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        request_ok(&mut s, &mut buf, "/healthz").await;
        // Past the first head's deadline, so that only the second head's
        // own allowance can close the connection (the wait is the test).
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        let start = Instant::now();
        let rest = read_for(&mut s, Duration::from_secs(10)).await;
        let took = start.elapsed();
        assert!(
            rest.is_empty(),
            "{addr}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{addr}: a stalled head closed after {took:?}"
        );
    }
}

#[tokio::test]
async fn a_head_begun_late_in_the_idle_wait_gets_its_whole_allowance() {
    // Idle 600 ms between requests; a head begun at 400 ms may take its
    // 1 s, past the idle deadline.
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"1s\"\nidle = \"600ms\"").await;
    for addr in [proxy.addr, proxy.admin] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        request_ok(&mut s, &mut buf, "/healthz").await;
        // The waits are what is tested.
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"Host: a\r\nX-Client-Id: k\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s, &mut buf, false).await;
        assert!(r.status_line().starts_with("HTTP/1.1 200"), "{addr}: {r:?}");
    }
}

#[tokio::test]
async fn a_request_slower_than_idle_keeps_its_connection() {
    // `idle` counts between requests only: a backend that takes three
    // times as long still answers on a connection that stays open, for
    // HTTP/1.1 and HTTP/2 alike.
    let backend = spawn_backend("slow").await;
    let proxy = spawn_proxy(&config_text(
        &[&backend],
        "key = [\"header:x-client-id\"]",
        "[timeouts]\nidle = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for i in 0..2 {
        request_ok(&mut s, &mut buf, &format!("/slow?ms=900&i={i}")).await;
    }
    let h2 = h2_client();
    let r = send(
        &h2,
        get(proxy.addr, "/slow?ms=900", &[("x-client-id", "k")]),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(&h2, get(proxy.addr, "/slow?ms=10", &[("x-client-id", "k")])).await;
    assert_eq!(r.status, 200);
}

/// Opens an HTTP/2 connection (raw frames, prior knowledge) to `addr`, asks
/// for `/` and never answers the server's frames. With `ping_after`, the
/// client sends a PING and a WINDOW_UPDATE once the response is in, as
/// clients do. Returns whether a GOAWAY came, and how long after the
/// response the connection was closed.
async fn h2_until_closed(addr: SocketAddr, ping_after: bool) -> (bool, Duration) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS, empty.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://a/ with
    // x-client-id: k (HPACK: static indexes, literals without Huffman).
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'a', 0x00, 0x0b];
    block.extend_from_slice(b"x-client-id");
    block.extend_from_slice(&[0x01, b'k']);
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.expect("write");
    let mut answered = None;
    let mut goaway = false;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return Instant::now();
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Instant::now();
            }
            match head[3] {
                // DATA with END_STREAM: the response is complete.
                0x0 if head[4] & 0x1 != 0 => {
                    answered = Some(Instant::now());
                    if ping_after {
                        let mut frames = vec![0, 0, 8, 0x6, 0, 0, 0, 0, 0];
                        frames.extend_from_slice(b"12345678");
                        frames.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
                        if s.write_all(&frames).await.is_err() {
                            return Instant::now();
                        }
                    }
                }
                0x7 => goaway = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the connection is closed");
    (goaway, closed - answered.expect("the request was answered"))
}

#[tokio::test]
async fn an_idle_http2_connection_closes_even_if_the_client_never_answers_rfc9113_6_8() {
    // After `idle`, GOAWAY (RFC 9113 §6.8) and a PING; a client that answers
    // neither is closed `client_header_read` later, not kept forever.
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"500ms\"\nidle = \"300ms\"").await;
    for addr in [proxy.addr, proxy.admin] {
        let (goaway, took) = h2_until_closed(addr, false).await;
        assert!(goaway, "{addr}: GOAWAY before the close");
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{addr}: closed {took:?} after the response"
        );
    }
}

#[tokio::test]
async fn http2_frames_between_requests_are_not_a_request_head() {
    // A PING or WINDOW_UPDATE after a response is no head on its way:
    // the connection waits `idle`, then gets its GOAWAY.
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"300ms\"\nidle = \"1s\"").await;
    for addr in [proxy.addr, proxy.admin] {
        let (goaway, took) = h2_until_closed(addr, true).await;
        assert!(goaway, "{addr}: closed after {took:?} without GOAWAY");
        assert!(
            took >= Duration::from_millis(900),
            "{addr}: closed {took:?} after the response"
        );
    }
}

#[tokio::test]
async fn admin_connections_idle_after_a_request_close_after_idle() {
    let (_backend, proxy) =
        proxy_with("[timeouts]\nclient_header_read = \"5s\"\nidle = \"300ms\"").await;
    let mut s = TcpStream::connect(proxy.admin).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    let start = Instant::now();
    let rest = read_for(&mut s, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn admin_405_names_the_allowed_methods_rfc9110_15_5_6() {
    let (_backend, proxy) = proxy_with("").await;
    let mut s = TcpStream::connect(proxy.admin).await.expect("connect");
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 405 Method Not Allowed");
    assert!(r.has_header("allow", "GET, HEAD"), "{}", r.head);
}

/// `n` concurrent GETs of `path` with one key; their statuses and bodies.
async fn concurrent(addr: SocketAddr, path: &str, n: usize) -> Vec<(u16, String)> {
    let client = client();
    let sends = (0..n).map(|_| {
        let client = client.clone();
        let path = path.to_string();
        async move {
            let r = send(&client, get(addr, &path, &[("x-client-id", "hot")])).await;
            (r.status.as_u16(), r.text())
        }
    });
    futures_util::future::join_all(sends).await
}

#[tokio::test]
async fn backend_connection_cap_holds_and_waiters_are_served() {
    let backend = spawn_backend("capped").await;
    let proxy = spawn_proxy(&config_text(
        &[&backend],
        "",
        "[limits]\nmax_backend_connections = 3\n[timeouts]\nconnect = \"10s\"",
    ))
    .await;
    // 30 requests of 50 ms each for one key: at most 3 connections, and
    // every request is served once one comes back.
    let replies = concurrent(proxy.addr, "/slow?ms=50", 30).await;
    assert!(replies.iter().all(|(s, _)| *s == 200), "{replies:?}");
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        backend.state.peak.load(Relaxed) <= 3,
        "peak {}",
        backend.state.peak.load(Relaxed)
    );
    assert!(backend.state.accepted.load(Relaxed) <= 3);
}

#[tokio::test]
async fn at_the_backend_connection_cap_a_request_waits_then_gets_503_backend_busy() {
    let backend = spawn_backend("capped").await;
    let proxy = spawn_proxy(&config_text(
        &[&backend],
        "",
        "[limits]\nmax_backend_connections = 2\n[timeouts]\nconnect = \"200ms\"\n[health]\ninterval = \"1h\"\nfall = 1",
    ))
    .await;
    let replies = concurrent(proxy.addr, "/slow?ms=1500", 6).await;
    let ok = replies.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = replies.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((ok, busy.len()), (2, 4), "{replies:?}");
    assert!(busy
        .iter()
        .all(|(_, b)| b.contains("every connection to the backend is in use")));
    use std::sync::atomic::Ordering::Relaxed;
    assert!(backend.state.peak.load(Relaxed) <= 2);
    // The proxy's own limit: no upstream error, no health failure.
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "stickylb_upstream_errors_total{backend=\"capped\",kind=\"connect\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "stickylb_backend_healthy{backend=\"capped\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "stickylb_requests_total{backend=\"capped\",code_class=\"5xx\"}"
        ),
        Some(0.0),
        "the proxy's own 503s are not the backend's"
    );
    assert_eq!(
        metric(&m, "stickylb_proxy_responses_total{cause=\"backend_busy\"}"),
        Some(4.0)
    );
}

#[tokio::test]
async fn metrics_include_build_info_and_the_process() {
    let (_backend, proxy) = proxy_with("").await;
    let m = proxy.metrics_text().await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric(&m, &format!("stickylb_build_info{{version=\"{version}\"}}")),
        Some(1.0)
    );
    assert!(metric(&m, "process_cpu_seconds_total").is_some(), "{m}");
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric(&m, name).is_some_and(|v| v > 0.0), "{name}:\n{m}");
    }
}

#[tokio::test]
async fn every_response_is_counted_parser_rejections_and_connections_included() {
    let (_backend, proxy) = proxy_with("").await;
    let client = client();
    for path in ["/a", "/b"] {
        assert_eq!(send(&client, get(proxy.addr, path, &[])).await.status, 200);
    }
    // Refused by the proxy (no Host), by hyper's parser (garbage, and a
    // head over the limit).
    let refused = common::recording::raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(String::from_utf8_lossy(&refused.await).starts_with("HTTP/1.1 400"));
    let garbage =
        common::recording::raw_exchange(proxy.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&garbage.await).starts_with("HTTP/1.1 400"));
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40_000)
    );
    let too_large =
        common::recording::raw_exchange(proxy.addr, huge.as_bytes(), Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&too_large.await).starts_with("HTTP/1.1 431"));
    drop(client);
    let m = proxy.metrics_text().await;
    let count = |series: &str| metric(&m, series).unwrap_or(-1.0);
    assert_eq!(
        count("stickylb_responses_total{code_class=\"2xx\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        count("stickylb_responses_total{code_class=\"4xx\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"bad_request\"}"),
        2.0
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"header_too_large\"}"),
        1.0
    );
    assert!(
        count("stickylb_connections_total{listener=\"http\"}") >= 4.0,
        "{m}"
    );
    assert!(
        count("stickylb_connections_total{listener=\"admin\"}") >= 1.0,
        "{m}"
    );
}

/// An HTTP/2 request over `limits.max_request_header_bytes` gets the
/// proxy's own 431 (RFC 9113 §6.5.2 sizes), counted with its cause as an
/// HTTP/1 request's is, never a refused stream a client would retry.
#[tokio::test]
async fn an_http2_header_list_over_the_limit_is_431_and_counted() {
    let (backend, proxy) = proxy_with("").await;
    let tx = h2_connect(proxy.addr).await;
    let big = "x".repeat(20_000);
    let req = |value: &str| {
        http::Request::get(format!("http://{}/", proxy.addr))
            .header("x-big", value)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let mut t = tx.clone();
    let resp = t
        .send_request(req(&big))
        .await
        .expect("an answer, not a refused stream");
    assert_eq!(
        resp.status(),
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // The connection goes on.
    let mut t = tx.clone();
    assert_eq!(t.send_request(req("small")).await.unwrap().status(), 200);
    assert_eq!(
        backend.requests().len(),
        1,
        "the big one never reached the backend"
    );
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "stickylb_proxy_responses_total{cause=\"header_too_large\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "stickylb_responses_total{code_class=\"4xx\"}"),
        Some(1.0)
    );
}
