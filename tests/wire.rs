//! The proxy as an HTTP intermediary, one test per rule of SPEC's "On the
//! wire" list, each asserting the exact bytes the backend received or the
//! client got. Backends and clients here are raw sockets (a recording
//! backend, hand-written requests), so nothing lenient sits in between.

mod common;

use common::recording::{
    fixed, ok, race_on_reuse, raw_exchange, read_response, Answer, RawResponse, Recorded,
    RecordingBackend,
};
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A recording backend answering with `answer`, and a proxy in front of it
/// (`extra`: more config sections).
async fn behind_proxy(answer: Answer, extra: &str) -> (RecordingBackend, TestProxy) {
    let backend = RecordingBackend::spawn(answer).await;
    let proxy = proxy_for("rec", backend.addr, extra).await;
    (backend, proxy)
}

/// A proxy in front of one backend, `name` at `addr`, keyed by
/// `X-Client-Id` (`extra`: more config sections).
async fn proxy_for(name: &str, addr: SocketAddr, extra: &str) -> TestProxy {
    let config = config_for(&[(name, addr)], "key = [\"header:x-client-id\"]", extra);
    spawn_proxy(&config).await
}

/// Sends `request` on a new connection to `addr` and reads one response.
async fn exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    read_response(&mut s, &mut Vec::new(), false).await
}

/// Sends `request` through a proxy to a backend that answers 200 and
/// returns the request as the backend received it, and the backend.
async fn forwarded(request: &str) -> (Recorded, RecordingBackend) {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let r = exchange(proxy.addr, request).await;
    assert!(r.status_line().ends_with("200 OK"), "{r:?}");
    let seen = backend.wait_requests(1).await.remove(0);
    (seen, backend)
}

/// A plain GET as a client sends it.
const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n";

/// A proxy in front of a backend that answers every request with the bytes
/// `answer` (keeping the connection), and the response a plain GET gets.
async fn answered(answer: &'static str) -> (RecordingBackend, TestProxy, RawResponse) {
    let (backend, proxy) = behind_proxy(fixed(answer, false), "").await;
    let r = exchange(proxy.addr, GET).await;
    (backend, proxy, r)
}

fn upstream_errors(metrics: &str, kind: &str) -> f64 {
    metric(
        metrics,
        &format!("stickylb_upstream_errors_total{{backend=\"rec\",kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn origin_form_target_and_exact_head_rfc9112_3_2_1() {
    let (seen, _) = forwarded("GET /a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: app.example\r\nX-Client-Id: k\r\nAccept: */*\r\n\r\n").await;
    assert_eq!(seen.line, "GET /a/b%20c?x=1&y=%2F HTTP/1.1");
    assert_eq!(
        seen.headers,
        [
            "host: app.example",
            "x-client-id: k",
            "accept: */*",
            "x-forwarded-host: app.example",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
        ]
    );
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn absolute_form_target_becomes_origin_form_and_names_host_rfc9112_3_2_2() {
    let (seen, _) = forwarded(
        "GET http://app.example/x?q=1 HTTP/1.1\r\nHost: other.example\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(seen.line, "GET /x?q=1 HTTP/1.1");
    assert_eq!(seen.header("host"), ["app.example"]);
}

#[tokio::test]
async fn options_asterisk_stays_asterisk_rfc9112_3_2_4() {
    let (seen, _) =
        forwarded("OPTIONS * HTTP/1.1\r\nHost: app.example\r\nX-Client-Id: k\r\n\r\n").await;
    assert_eq!(seen.line, "OPTIONS * HTTP/1.1");
}

#[tokio::test]
async fn connect_is_405_and_never_forwarded() {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let r = exchange(
        proxy.addr,
        "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 405 Method Not Allowed");
    assert!(String::from_utf8_lossy(&r.body).contains("CONNECT"));
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn host_missing_or_repeated_is_400_rfc9112_3_2() {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let none = exchange(proxy.addr, "GET / HTTP/1.1\r\nX-Client-Id: k\r\n\r\n").await;
    assert_eq!(none.status_line(), "HTTP/1.1 400 Bad Request");
    assert!(String::from_utf8_lossy(&none.body).contains("Host"));
    let two = exchange(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(two.status_line(), "HTTP/1.1 400 Bad Request");
    assert!(String::from_utf8_lossy(&two.body).contains("more than one Host"));
    assert_eq!(
        backend.accepted(),
        0,
        "a refused request reached the backend"
    );
}

#[tokio::test]
async fn invalid_host_or_target_form_is_400_rfc9112_3_2() {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    for (request, why) in [
        (
            "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
            "Host",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "Host"),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "Host"),
        (
            "GET http://user:pw@app.example/ HTTP/1.1\r\nHost: app.example\r\n\r\n",
            "Host",
        ),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "form"),
        (
            "GET app.example:80 HTTP/1.1\r\nHost: app.example\r\n\r\n",
            "form",
        ),
    ] {
        let r = exchange(proxy.addr, request).await;
        assert_eq!(r.status_line(), "HTTP/1.1 400 Bad Request", "{request:?}");
        assert!(
            String::from_utf8_lossy(&r.body).contains(why),
            "{request:?}: {r:?}"
        );
    }
    assert_eq!(
        backend.accepted(),
        0,
        "a refused request reached the backend"
    );
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_rfc9112_6_1() {
    // A request coded with something the proxy would have to understand: 501.
    let (backend, proxy) = behind_proxy(
        fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n",
            false,
        ),
        "",
    )
    .await;
    let r = exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 501 Not Implemented");
    assert_eq!(backend.accepted(), 0);
    // A response's coding is part of its meaning: kept for the client.
    let r = exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert!(
        r.has_header("transfer-encoding", "gzip, chunked"),
        "{}",
        r.head
    );
    assert_eq!(r.body, b"GZIP");
}

#[tokio::test]
async fn h2c_upgrade_is_not_passed_on_rfc9113_3_1() {
    let (backend, proxy) = behind_proxy(
        fixed(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            false,
        ),
        "",
    )
    .await;
    let r = exchange(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    // No tunnel: the backend's 101 to a request that (as forwarded) asked
    // for no upgrade is a 502.
    assert_eq!(r.status_line(), "HTTP/1.1 502 Bad Gateway");
    let seen = backend.wait_requests(1).await.remove(0);
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(seen.header(gone).is_empty(), "{gone}: {seen:?}");
    }
}

#[tokio::test]
async fn http10_without_host_is_forwarded_with_the_backends_address_rfc9112_3_2() {
    let (seen, backend) = forwarded("GET /old HTTP/1.0\r\nX-Client-Id: k\r\n\r\n").await;
    assert_eq!(seen.line, "GET /old HTTP/1.1");
    assert_eq!(seen.header("host"), [backend.addr.to_string()]);
    assert!(seen.header("x-forwarded-host").is_empty());
}

#[tokio::test]
async fn connection_cannot_remove_host_rfc9110_7_6_1() {
    let (seen, _) = forwarded("GET / HTTP/1.1\r\nHost: app.example\r\nConnection: host, x-gone\r\nX-Gone: 1\r\nX-Client-Id: k\r\n\r\n").await;
    assert_eq!(seen.header("host"), ["app.example"]);
    assert!(seen.header("x-gone").is_empty());
    assert!(seen.header("connection").is_empty());
}

#[tokio::test]
async fn forwarded_for_lines_are_joined_in_order_then_the_peer() {
    let (seen, _) = forwarded(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.1\r\nX-Client-Id: k\r\nX-Forwarded-For: 198.51.100.2, 192.0.2.3\r\n\r\n",
    )
    .await;
    assert_eq!(
        seen.header("x-forwarded-for"),
        ["203.0.113.1, 198.51.100.2, 192.0.2.3, 127.0.0.1"]
    );
}

#[tokio::test]
async fn http2_authority_becomes_host_and_cookies_are_joined_rfc9113_8_3_1_and_8_2_3() {
    use http_body_util::BodyExt;
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let mut h2 = h2_connect(proxy.addr).await;
    let req = http::Request::get("http://app.example/h2?x=1")
        .header("host", "other.example")
        .header("x-client-id", "k")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    let seen = backend.wait_requests(1).await;
    assert_eq!(seen[0].line, "GET /h2?x=1 HTTP/1.1");
    assert_eq!(seen[0].header("host"), ["app.example"]);
    assert_eq!(seen[0].header("cookie"), ["a=1; b=2"]);
    // An HTTP/2 client takes trailers: the backend may send them.
    assert_eq!(seen[0].header("te"), ["trailers"]);
}

/// Answers 200 and closes the connection without saying so: a backend
/// with a very short keep-alive timeout.
fn close_silently(req: &common::recording::Recorded) -> (Vec<u8>, bool) {
    let (bytes, _) = ok(req);
    (bytes, true)
}

#[tokio::test]
async fn keep_alive_race_resends_idempotent_requests_once_rfc9112_9_3_1() {
    let (backend, proxy) = behind_proxy(Arc::new(close_silently), "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for i in 0..300 {
        let req = format!("GET /seq/{i} HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "request {i}: {r:?}");
        assert_eq!(r.body, format!("seen GET /seq/{i} HTTP/1.1").as_bytes());
    }
    let seen = backend.wait_requests(300).await;
    let lines: Vec<&str> = seen.iter().map(|r| r.line.as_str()).collect();
    let expected: Vec<String> = (0..300).map(|i| format!("GET /seq/{i} HTTP/1.1")).collect();
    assert_eq!(lines, expected, "each request reached the backend once");
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "protocol"), 0.0);
}

#[tokio::test]
async fn keep_alive_race_on_every_reuse_is_answered_on_a_fresh_connection() {
    // The backend drops each reused connection as the request arrives.
    let (backend, proxy) = behind_proxy(Arc::new(race_on_reuse), "").await;
    let client = client();
    for i in 0..50 {
        let path = format!("/again/{i}");
        let r = send(&client, get(proxy.addr, &path, &[("x-client-id", "k")])).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("seen GET {path} HTTP/1.1"));
    }
    let seen = backend.requests();
    let answered: Vec<&str> = seen
        .iter()
        .filter(|r| r.index == 0)
        .map(|r| r.line.as_str())
        .collect();
    let expected: Vec<String> = (0..50)
        .map(|i| format!("GET /again/{i} HTTP/1.1"))
        .collect();
    assert_eq!(answered, expected, "each request answered once, in order");
    assert!(seen.iter().any(|r| r.index > 0), "no connection was reused");
}

#[tokio::test]
async fn keep_alive_race_never_resends_a_non_idempotent_request_rfc9110_9_2_2() {
    // A bodiless POST may still be an action: the race cannot be told
    // apart from a backend that took it and died, so it is not resent.
    let (backend, proxy) = behind_proxy(Arc::new(race_on_reuse), "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_response(&mut s, &mut buf, false).await.status_line(),
        "HTTP/1.1 200 OK"
    );
    s.write_all(b"POST /charge HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 502 Bad Gateway");
    let charges = backend
        .requests()
        .iter()
        .filter(|r| r.line == "POST /charge HTTP/1.1")
        .count();
    assert_eq!(charges, 1, "the POST reached the backend once");
}

#[tokio::test]
async fn keep_alive_race_never_sends_a_post_with_a_body_twice() {
    for answer in [
        Arc::new(close_silently) as Answer,
        Arc::new(race_on_reuse) as Answer,
    ] {
        posts_reach_the_backend_at_most_once(answer).await;
    }
}

async fn posts_reach_the_backend_at_most_once(answer: Answer) {
    let (backend, proxy) = behind_proxy(answer, "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    let (mut answered, mut failed) = (0, 0);
    for i in 0..100 {
        let body = format!("order={i}");
        let req = format!(
            "POST /orders HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            s = TcpStream::connect(proxy.addr).await.expect("reconnect");
            buf.clear();
            s.write_all(req.as_bytes()).await.expect("write");
        }
        let r = read_response(&mut s, &mut buf, false).await;
        match r.status_line() {
            "HTTP/1.1 200 OK" => answered += 1,
            "HTTP/1.1 502 Bad Gateway" => failed += 1,
            other => panic!("request {i}: {other}"),
        }
    }
    let seen = backend.requests();
    let mut bodies: Vec<Vec<u8>> = seen.iter().map(|r| r.body.clone()).collect();
    let n = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), n, "a POST reached the backend twice");
    assert_eq!(answered + failed, 100);
    assert_eq!(
        seen.iter().filter(|r| r.index == 0).count(),
        answered,
        "every 200 is one answered POST"
    );
}

#[tokio::test]
async fn a_close_the_backend_sent_while_idle_is_read_before_reuse_rfc9112_9_3_1() {
    // The backend closes each connection after its response, unannounced.
    // Once its close has arrived, the pooled connection must be seen as
    // closed when taken: a POST with a body (never resent) then goes on a
    // fresh connection and is answered, every time.
    let (backend, proxy) = behind_proxy(Arc::new(close_silently), "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for i in 0..50 {
        let body = format!("order={i}");
        let req = format!(
            "POST /orders HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "request {i}: {r:?}");
        backend.wait_open_at_most(0, Duration::from_secs(5)).await;
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 50, "each POST reached the backend once");
    assert!(
        seen.iter().all(|r| r.index == 0),
        "a closed connection was reused"
    );
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "protocol"), 0.0);
}

/// A backend that answers as soon as it has a request head, before
/// reading the body: `200 ok` to a request without one, `413` to one with a
/// `Content-Length` body, which it then reads and drops, keeping the
/// connection for the next request (RFC 9112 §9.3 lets a server answer
/// early; the connection stays usable once the body is through).
async fn early_answer_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let answer: &[u8] = if length == 0 {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                    } else {
                        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    buf.drain(..end);
                    while buf.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_early_answer_frees_the_connection_once_the_body_is_through_rfc9112_9_3() {
    // One connection allowed to the backend: if an upload the backend
    // answered early kept it, the next request would find none (503).
    let (addr, task) = early_answer_backend().await;
    let proxy = proxy_for(
        "early",
        addr,
        "[limits]\nmax_backend_connections = 1\n[timeouts]\nconnect = \"2s\"",
    )
    .await;
    let body = vec![b'x'; 200_000];
    for i in 0..5 {
        let r = exchange(
            proxy.addr,
            "GET /a HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n",
        )
        .await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "GET {i}: {r:?}");
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body[..1000]).await.expect("write body");
        // The answer comes while the body is still on its way.
        let r = read_response(&mut s, &mut Vec::new(), false).await;
        assert_eq!(
            r.status_line(),
            "HTTP/1.1 413 Content Too Large",
            "POST {i}: {r:?}"
        );
        s.write_all(&body[1000..]).await.expect("write body");
    }
    let r = exchange(
        proxy.addr,
        "GET /b HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "{r:?}");
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(&m, "stickylb_proxy_responses_total{cause=\"backend_busy\"}").unwrap_or(0.0),
        0.0
    );
    task.abort();
}

#[tokio::test]
async fn a_body_still_arriving_after_an_early_answer_is_a_request_in_progress() {
    // The backend answered before the body was through; the client goes on
    // sending it, slower than client_header_read. The connection is not
    // waiting for a head meanwhile, and serves the next request after.
    let (addr, task) = early_answer_backend().await;
    let proxy = proxy_for("early", addr, "[timeouts]\nclient_header_read = \"300ms\"").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: 40\r\n\r\n0123456789")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 413 Content Too Large", "{r:?}");
    for _ in 0..3 {
        // The pauses are what is tested: 600 ms in all, twice the allowance.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"0123456789")
            .await
            .expect("the upload goes on");
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "{r:?}");
    task.abort();
}

#[tokio::test]
async fn idle_pooled_connections_close_after_upstream_idle() {
    let (backend, proxy) =
        behind_proxy(Arc::new(ok), "[timeouts]\nupstream_idle = \"300ms\"").await;
    let client = client();
    let sends = (0..5).map(|i| {
        let client = client.clone();
        let addr = proxy.addr;
        async move {
            send(
                &client,
                get(addr, &format!("/slow/{i}"), &[("x-client-id", "k")]),
            )
            .await
        }
    });
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.status, 200);
    }
    assert!(backend.accepted() >= 1);
    let took = backend.wait_open_at_most(0, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn pooled_connection_closes_before_the_backends_keep_alive_timeout() {
    let (backend, _proxy, r) =
        answered("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert!(!r.head.to_ascii_lowercase().contains("keep-alive"));
    // The backend never closes; the proxy must, before the 2 s it announced.
    let took = backend.wait_open_at_most(0, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
}

const TRAILERS: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n";

#[tokio::test]
async fn trailers_reach_http11_clients_that_accept_them_rfc9110_6_5() {
    let (backend, proxy) = behind_proxy(fixed(TRAILERS, false), "").await;
    let r = exchange(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.trailers, ["x-checksum: abc123"]);
    assert!(r.has_header("trailer", "x-checksum"));
    assert_eq!(backend.wait_requests(1).await[0].header("te"), ["trailers"]);

    // Without `TE: trailers` the body arrives whole, the trailers do not.
    let r = exchange(proxy.addr, GET).await;
    assert_eq!(r.body, b"hello world");
    assert!(r.trailers.is_empty());
    assert!(backend.wait_requests(2).await[1].header("te").is_empty());
}

#[tokio::test]
async fn trailers_reach_http2_clients_rfc9113_8_1() {
    use http_body_util::BodyExt;
    let (_backend, proxy) = behind_proxy(fixed(TRAILERS, false), "").await;
    let mut h2 = h2_connect(proxy.addr).await;
    let req = http::Request::get("http://a/")
        .header("x-client-id", "k")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("response");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("x-checksum").expect("x-checksum"), "abc123");
    assert_eq!(collected.to_bytes(), "hello world");
}

#[tokio::test]
async fn http10_backend_response_reaches_the_client_as_http11_and_keeps_it_alive() {
    let (_backend, proxy) = behind_proxy(
        fixed("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!", true),
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(GET.as_bytes())
            .await
            .expect("write on the same connection");
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
        assert!(!r.head.to_ascii_lowercase().contains("connection: close"));
        assert_eq!(r.body, b"old!");
    }
}

#[tokio::test]
async fn unasked_101_is_502() {
    let (_backend, _proxy, r) =
        answered("HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n")
            .await;
    assert_eq!(r.status_line(), "HTTP/1.1 502 Bad Gateway");
    assert!(String::from_utf8_lossy(&r.body).contains("switched protocols"));
}

#[tokio::test]
async fn content_length_with_chunked_reaches_the_client_whole_rfc9112_6_3() {
    let (_backend, _proxy, r) = answered("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n").await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"0123456789");
    assert!(!r.head.to_ascii_lowercase().contains("content-length: 3"));
}

#[tokio::test]
async fn malformed_request_body_is_400_and_not_the_backends_fault() {
    let (_backend, proxy) =
        behind_proxy(Arc::new(ok), "[health]\ninterval = \"1h\"\nfall = 1").await;
    let r = exchange(
        proxy.addr,
        "POST /up HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 400 Bad Request");
    assert!(String::from_utf8_lossy(&r.body).contains("request body"));
    assert!(r.has_header("connection", "close"), "{}", r.head);
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "protocol"), 0.0, "{m}");
    assert_eq!(
        metric(&m, "stickylb_backend_healthy{backend=\"rec\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn slow_request_body_is_408_and_not_the_backends_fault() {
    let (_backend, proxy) = behind_proxy(
        Arc::new(ok),
        "[timeouts]\nclient_body_read = \"300ms\"\nresponse_headers = \"200ms\"",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: 100\r\n\r\nonly ten..",
    )
    .await
    .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 408 Request Timeout");
    assert!(r.has_header("connection", "close"), "{}", r.head);
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "timeout"), 0.0, "{m}");
    assert_eq!(upstream_errors(&m, "protocol"), 0.0, "{m}");
}

#[tokio::test]
async fn half_closed_client_gets_its_response_rfc9112_9_6() {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /half HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\n\r\n")
        .await
        .expect("write");
    s.shutdown().await.expect("half-close");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"seen GET /half HTTP/1.1");
    assert_eq!(backend.wait_requests(1).await.len(), 1);
}

#[tokio::test]
async fn raw_exchange_reads_until_close() {
    // The proxy closes a connection whose request it refused as malformed.
    let (_backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let out = raw_exchange(proxy.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
}

#[tokio::test]
async fn a_get_body_reaches_the_backend_rfc9110_9_3_1() {
    let (seen, _) = forwarded(
        "GET /q HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(seen.body, b"abcd");
    assert_eq!(seen.header("transfer-encoding"), ["chunked"]);
}

#[tokio::test]
async fn upgrade_lists_lose_only_h2c() {
    let (seen, _) = forwarded(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\nX-Client-Id: k\r\n\r\n",
    )
    .await;
    assert_eq!(seen.header("upgrade"), ["websocket"]);
    assert_eq!(seen.header("connection"), ["upgrade"]);
}

#[tokio::test]
async fn empty_transfer_coding_elements_are_ignored_rfc9110_5_6_1() {
    let (seen, _) = forwarded(
        "POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(seen.body, b"ok");
}

#[tokio::test]
async fn host_structure_is_checked_and_real_hosts_pass_rfc3986_3_2_2() {
    let (backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    for host in [
        "a:b:c", "[::1", "a:0x50", ":80", "a:123456", "a%zz", "[]", "a@b",
    ] {
        let r = exchange(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status_line(), "HTTP/1.1 400 Bad Request", "{host}");
    }
    assert_eq!(backend.accepted(), 0);
    for host in [
        "[::1]:8080",
        "[2001:db8::1]",
        "127.0.0.1:80",
        "EXAMPLE.com",
        "xn--bcher-kva.example",
        "example.com.",
        "a_b.example",
        "example.com:",
        "%E4%BE%8B.test",
    ] {
        let r = exchange(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "{host}");
    }
}

#[tokio::test]
async fn a_refusal_that_leaves_a_body_unread_says_close_rfc9112_9_6() {
    let (_backend, proxy) = behind_proxy(Arc::new(ok), "").await;
    let r = exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: a,b\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status_line(), "HTTP/1.1 400 Bad Request");
    assert!(r.has_header("connection", "close"), "{}", r.head);
}

#[tokio::test]
async fn codings_beyond_chunked_reach_only_http11_clients() {
    let (_backend, proxy) = behind_proxy(
        fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n",
            false,
        ),
        "",
    )
    .await;
    let r = exchange(proxy.addr, "GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status_line(), "HTTP/1.0 502 Bad Gateway");
    let mut h2 = h2_connect(proxy.addr).await;
    let req = http::Request::get("http://a/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(h2.send_request(req).await.expect("response").status(), 502);
}

/// Reads from `r` into `buf` until `buf` holds a blank line (the end of a
/// head); panics if the stream ends first.
async fn read_to_blank_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::io::AsyncReadExt::read(r, &mut chunk)
            .await
            .expect("read");
        assert!(n > 0, "closed before the end of a head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A proxy (response_headers 300ms, client_body_read 30s) in front of
/// `addr`, and a client uploading 256 MiB to it through a task that blocks
/// once the buffers on the way are full; the client's read half.
async fn big_upload_to(
    addr: SocketAddr,
) -> (
    TestProxy,
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<()>,
) {
    let proxy = proxy_for(
        "rec",
        addr,
        "[timeouts]\nresponse_headers = \"300ms\"\nclient_body_read = \"30s\"",
    )
    .await;
    let s = TcpStream::connect(proxy.addr).await.expect("connect");
    let (rd, mut wr) = s.into_split();
    const TOTAL: usize = 256 << 20;
    let upload = tokio::spawn(async move {
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: {TOTAL}\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..TOTAL / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    (proxy, rd, upload)
}

/// A backend on a raw socket that reads one request head and then does
/// what `then` says with the socket; its address.
async fn raw_backend<F, Fut>(then: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream, Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        read_to_blank_line(&mut s, &mut buf).await;
        then(s, buf).await;
    });
    (addr, task)
}

#[tokio::test]
async fn after_a_slow_upload_the_backend_gets_its_whole_response_time() {
    // response_headers = 400ms: the client takes 300 ms over its body, the
    // backend answers 300 ms after the body is in. Timed from the head,
    // the backend would have had 100 ms.
    let (addr, backend) = raw_backend(|mut s, mut buf| async move {
        let mut chunk = [0u8; 64];
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        while buf.len() < end + 2 {
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut chunk)
                .await
                .expect("read");
            assert!(n > 0, "closed before the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .expect("answer");
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await;
    })
    .await;
    let proxy = proxy_for(
        "rec",
        addr,
        "[timeouts]\nresponse_headers = \"400ms\"\nclient_body_read = \"5s\"",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nContent-Length: 2\r\n\r\na")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"b").await.expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"ok");
    backend.abort();
}

#[tokio::test]
async fn a_backend_that_stops_reading_an_upload_is_504_within_its_response_time() {
    // The backend reads the head, then neither reads the body nor answers:
    // the upload stalls on the backend's side, so its clock runs (as
    // NGINX's proxy_send_timeout), whatever the client's body timeout.
    let (addr, backend) = raw_backend(|s, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let (proxy, mut rd, upload) = big_upload_to(addr).await;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(10), async {
        read_to_blank_line(&mut rd, &mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("an answer within 10 s");
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "timeout"), 1.0, "{m}");
    upload.abort();
    backend.abort();
}

#[tokio::test]
async fn a_response_body_that_breaks_off_is_the_backends_protocol_error() {
    // The status went out with the head: the client sees the body cut
    // short, and the backend is charged.
    let (_backend, proxy) = behind_proxy(
        fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
            true,
        ),
        "",
    )
    .await;
    let out = raw_exchange(proxy.addr, GET.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("0\r\n\r\n"),
        "ended as whole"
    );
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "protocol"), 1.0, "{m}");
}

#[tokio::test]
async fn an_early_answer_does_not_hold_the_client_when_the_backend_stops_reading() {
    // The backend answers 413 at once (keep-alive) and then neither reads
    // the rest of the upload nor closes. The rest may not move for
    // response_headers: then the backend connection is closed, and so is
    // the client's, whose body can go nowhere.
    let (addr, backend) = raw_backend(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
            .await
            .expect("answer");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let (proxy, mut rd, upload) = big_upload_to(addr).await;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        read_to_blank_line(&mut rd, &mut buf).await;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut rd, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the client's connection stayed open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.ends_with("big"), "{text}");
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "stickylb_backend_connections{backend=\"rec\",state=\"active\"}"
        ),
        Some(0.0),
        "{m}"
    );
    upload.abort();
    backend.abort();
}

#[tokio::test]
async fn chunk_framing_counts_as_the_client_sending_its_body() {
    // client_body_read = 400ms; for 750 ms the client sends only a chunk's
    // size line, in pieces (size, extension, CRLF), and no data: it is
    // sending, not stalled (NGINX times the body between two reads).
    let (backend, proxy) = behind_proxy(
        Arc::new(ok),
        "[timeouts]\nclient_body_read = \"400ms\"\nresponse_headers = \"5s\"",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nX-Client-Id: k\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        .await
        .expect("write");
    for piece in [&b"5"[..], b";x=1", b"\r\n", b"hello\r\n0\r\n\r\n"] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(piece).await.expect("write");
    }
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "{r:?}");
    assert_eq!(backend.wait_requests(1).await[0].body, b"ahello");
}

#[tokio::test]
async fn a_body_broken_in_the_same_read_as_its_head_is_502() {
    // Nothing of the response can reach the client (its head would go out
    // with the first body bytes): the backend's 502, counted as such, not
    // a 200 the client never saw.
    let (_backend, proxy) = behind_proxy(
        fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            true,
        ),
        "",
    )
    .await;
    let r = exchange(proxy.addr, GET).await;
    assert_eq!(r.status_line(), "HTTP/1.1 502 Bad Gateway", "{r:?}");
    let m = proxy.metrics_text().await;
    assert_eq!(upstream_errors(&m, "protocol"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "stickylb_responses_total{code_class=\"2xx\"}").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "stickylb_responses_total{code_class=\"5xx\"}"),
        Some(1.0),
        "{m}"
    );
}
