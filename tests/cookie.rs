//! Sticky cookies: a key-less client gets a generated id as a cookie and,
//! replaying it, stays on one backend; all key-less requests of one
//! connection (parallel HTTP/2 streams too) share one id.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashSet;

const ROUTING: &str = "sticky_cookie = { name = \"lb_id\", max_age = \"1h\" }";

/// The id of a `Set-Cookie: lb_id=ID; ...` header, checking its attributes.
fn cookie_id(r: &Reply) -> String {
    let v = r
        .headers
        .get("set-cookie")
        .unwrap_or_else(|| panic!("a Set-Cookie header: {:?}", r.headers))
        .to_str()
        .expect("ASCII");
    let rest = v.strip_prefix("lb_id=").expect("named lb_id");
    let (id, attrs) = rest.split_once(';').expect("attributes");
    assert_eq!(
        attrs, " Path=/; HttpOnly; SameSite=Lax; Max-Age=3600",
        "{v}"
    );
    assert_eq!(id.len(), 22, "128 bits, base64url: {id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe: {id}"
    );
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_client_gets_a_cookie_and_stays_with_it() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_text(
        &backends.iter().collect::<Vec<_>>(),
        ROUTING,
        "",
    ))
    .await;
    let first = send(&client(), get(proxy.addr, "/", &[])).await;
    assert_eq!(first.status, StatusCode::OK);
    let id = cookie_id(&first);
    let owner = proxy.router.load().owner(id.as_bytes()).name.to_string();
    assert_eq!(first.backend(), owner, "routed by its new id");

    let cookie = format!("other=1; lb_id={id}");
    for i in 0..50 {
        // A fresh client every 10 requests: new connections, same cookie.
        let c = client();
        let r = send(&c, get(proxy.addr, "/", &[("cookie", &cookie)])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), owner, "request {i}");
        assert!(r.headers.get("set-cookie").is_none(), "no new cookie");
    }
    // Another key-less client gets another id.
    let other = cookie_id(&send(&client(), get(proxy.addr, "/", &[])).await);
    assert_ne!(other, id);

    let text = proxy.metrics_text().await;
    assert_eq!(
        metric(&text, "stickylb_key_source_total{source=\"generated\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "stickylb_key_source_total{source=\"cookie\"}"),
        Some(50.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_first_streams_of_one_h2_connection_share_one_id() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_text(
        &backends.iter().collect::<Vec<_>>(),
        ROUTING,
        "",
    ))
    .await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        let mut streams = Vec::new();
        for _ in 0..10 {
            let mut tx = tx.clone();
            let uri = format!("http://{}/slow?ms=10", proxy.addr);
            streams.push(tokio::spawn(async move {
                let req = Request::get(uri)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let resp = tx.send_request(req).await.expect("response");
                let (parts, body) = resp.into_parts();
                Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body: body.collect().await.expect("body").to_bytes(),
                }
            }));
        }
        let mut conn_ids = HashSet::new();
        let mut conn_backends = HashSet::new();
        for s in streams {
            let r = s.await.expect("stream");
            assert_eq!(r.status, StatusCode::OK);
            conn_ids.insert(cookie_id(&r));
            conn_backends.insert(r.text());
        }
        assert_eq!(conn_ids.len(), 1, "one id per connection: {conn_ids:?}");
        assert_eq!(conn_backends.len(), 1, "one backend: {conn_backends:?}");
        let id = conn_ids.into_iter().next().expect("one id");
        let owner = proxy.router.load().owner(id.as_bytes()).name.to_string();
        assert!(conn_backends.contains(&owner));
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "each connection its own id");
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric(&text, "stickylb_key_source_total{source=\"generated\"}"),
        Some(30.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keys_come_first_and_no_cookie_is_set() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_text(
        &backends.iter().collect::<Vec<_>>(),
        ROUTING,
        "",
    ))
    .await;
    let r = send(&client(), get(proxy.addr, "/", &[("x-client-id", "alice")])).await;
    assert!(r.headers.get("set-cookie").is_none());
    assert_eq!(
        r.backend(),
        proxy.router.load().owner(b"alice").name.to_string()
    );
}
