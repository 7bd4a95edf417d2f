//! The proxy end to end: real backends, a real proxy, a real client, all on
//! loopback.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_same_backend_and_spread() {
    let backends = spawn_backends(3).await;
    let refs: Vec<_> = backends.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "", "")).await;
    let client = client();

    let mut first: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for i in 0..1000 {
            let id = format!("user-{i}");
            let got = backend_for(&client, proxy.addr, &id).await;
            match first.get(&id) {
                None => {
                    assert_eq!(round, 0);
                    first.insert(id, got);
                }
                Some(want) => assert_eq!(&got, want, "id {id} moved in round {round}"),
            }
        }
    }

    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..3000 {
        let got = backend_for(&client, proxy.addr, &format!("spread-{i}")).await;
        *counts.entry(got).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (b, n) in &counts {
        assert!(*n <= 3000 * 45 / 100, "{b} got {n} of 3000: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_beats_cookie_and_cookie_is_read() {
    let backends = spawn_backends(3).await;
    let refs: Vec<_> = backends.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "", "")).await;
    let snap = proxy.router.load_full();
    let client = client();
    // Find a header id and a cookie id with different owners.
    let header_id = "alice";
    let header_owner = snap.owner(header_id.as_bytes()).name.to_string();
    let cookie_id = (0..100)
        .map(|i| format!("c{i}"))
        .find(|c| *snap.owner(c.as_bytes()).name != *header_owner)
        .expect("some id lands elsewhere");
    let cookie_owner = snap.owner(cookie_id.as_bytes()).name.to_string();
    let cookie = format!("theme=dark; session_id={cookie_id}");

    let both = send(
        &client,
        get(
            proxy.addr,
            "/",
            &[("x-client-id", header_id), ("cookie", &cookie)],
        ),
    )
    .await;
    assert_eq!(both.backend(), header_owner);
    let only_cookie = send(&client, get(proxy.addr, "/", &[("cookie", &cookie)])).await;
    assert_eq!(only_cookie.backend(), cookie_owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_policies() {
    let backends = spawn_backends(3).await;
    let refs: Vec<_> = backends.iter().collect();
    let client = client();

    let reject = spawn_proxy(&config_text(&refs, "missing_key = \"reject\"", "")).await;
    let r = send(&client, get(reject.addr, "/", &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("missing client id"), "{}", r.text());
    assert_eq!(
        send(&client, get(reject.addr, "/", &[("x-client-id", "a")]))
            .await
            .status,
        StatusCode::OK
    );

    let by_ip = spawn_proxy(&config_text(&refs, "missing_key = \"client-ip\"", "")).await;
    let want = by_ip
        .router
        .load_full()
        .owner(b"127.0.0.1")
        .name
        .to_string();
    for _ in 0..20 {
        assert_eq!(
            send(&client, get(by_ip.addr, "/", &[])).await.backend(),
            want
        );
    }

    let random = spawn_proxy(&config_text(&refs, "missing_key = \"random\"", "")).await;
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let r = send(&client, get(random.addr, "/", &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        seen.insert(r.backend());
    }
    assert_eq!(seen.len(), 3, "random keys reach every backend: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_client_ip_sources() {
    let backends = spawn_backends(3).await;
    let refs: Vec<_> = backends.iter().collect();
    let proxy = spawn_proxy(&config_text(
        &refs,
        "key = [\"query:user\", \"client-ip\"]",
        "",
    ))
    .await;
    let snap = proxy.router.load_full();
    let client = client();
    for i in 0..50 {
        let id = format!("q{i}");
        let r = send(&client, get(proxy.addr, &format!("/p?x=1&user={id}"), &[])).await;
        assert_eq!(r.backend(), *snap.owner(id.as_bytes()).name);
    }
    let r = send(
        &client,
        get(proxy.addr, "/p", &[("x-client-id", "ignored")]),
    )
    .await;
    assert_eq!(r.backend(), *snap.owner(b"127.0.0.1").name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let backend = spawn_backend("b").await;
    let proxy = spawn_proxy(&config_text(&[&backend], "", "")).await;
    let client = client();

    let upload: Vec<u8> = (0..1024 * 1024u64).map(pattern_byte).collect();
    let want = format!("{} {}", upload.len(), checksum(CHECKSUM_START, &upload));
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .header("x-client-id", "u")
        .body(Full::new(Bytes::from(upload)))
        .unwrap();
    let r = send(&client, req).await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, want));

    let total = 10 * 1024 * 1024u64;
    let resp = client
        .request(get(
            proxy.addr,
            &format!("/download?bytes={total}"),
            &[("x-client-id", "d")],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut got, mut frames, mut bad) = (0u64, 0u32, None);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(data) = frame.data_ref() {
                for (i, &b) in data.iter().enumerate() {
                    if b != pattern_byte(got + i as u64) && bad.is_none() {
                        bad = Some(got + i as u64);
                    }
                }
                got += data.len() as u64;
                frames += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("download finishes");
    assert_eq!(got, total);
    assert_eq!(bad, None, "first corrupt byte");
    assert!(frames > 1, "the response arrived as a stream of frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_headers_pass_hop_by_hop_dropped() {
    let backend = spawn_backend("b").await;
    let proxy = spawn_proxy(&config_text(&[&backend], "", "")).await;
    let client = client();

    for code in [201u16, 404, 418, 500, 503] {
        let r = send(
            &client,
            get(
                proxy.addr,
                &format!("/status/{code}"),
                &[("x-client-id", "s")],
            ),
        )
        .await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.headers.get("x-custom").unwrap(), "kept");
        assert!(
            r.headers.get("x-hop").is_none(),
            "header named by Connection is dropped"
        );
        assert!(r.headers.get("keep-alive").is_none());
    }

    let r = send(
        &client,
        get(
            proxy.addr,
            "/headers",
            &[
                ("x-client-id", "h"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic eA=="),
                ("te", "gzip"),
                ("x-kept", "yes"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        ),
    )
    .await;
    let seen = r.text();
    for gone in ["x-secret:", "keep-alive:", "proxy-authorization:", "te:"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(gone)),
            "{gone} reached the backend:\n{seen}"
        );
    }
    let host = format!("host: {}", proxy.addr);
    for kept in [
        "x-kept: yes",
        "x-client-id: h",
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-forwarded-proto: http",
        &format!("x-forwarded-host: {}", proxy.addr),
        &host,
    ] {
        assert!(seen.lines().any(|l| l == kept), "missing {kept:?}:\n{seen}");
    }

    let r = send(
        &client,
        get(proxy.addr, "/headers", &[("x-client-id", "h")]),
    )
    .await;
    assert!(
        r.text().lines().any(|l| l == "x-forwarded-for: 127.0.0.1"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_routed_per_request() {
    let backends = spawn_backends(3).await;
    let refs: Vec<_> = backends.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "", "")).await;
    let snap = proxy.router.load_full();
    let client = h2_client();
    for i in 0..100 {
        let id = format!("h2-{i}");
        let r = send(&client, get(proxy.addr, "/", &[("x-client-id", &id)])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), *snap.owner(id.as_bytes()).name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_502_fast_and_slow_backend_504() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = format!(
        "[timeouts]\nconnect = \"500ms\"\n[[backend]]\nname = \"dead\"\naddress = \"{dead}\"\n[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n"
    );
    let proxy = spawn_proxy(&text).await;
    let client = client();
    let t = Instant::now();
    let r = send(&client, get(proxy.addr, "/", &[("x-client-id", "x")])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("could not connect"), "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );

    let slow = spawn_backend("slow").await;
    let proxy = spawn_proxy(&config_text(
        &[&slow],
        "",
        "[timeouts]\nresponse_headers = \"200ms\"",
    ))
    .await;
    let t = Instant::now();
    let r = send(
        &client,
        get(proxy.addr, "/slow?ms=3000", &[("x-client-id", "x")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("did not answer in time"), "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let r = send(
        &client,
        get(proxy.addr, "/slow?ms=10", &[("x-client-id", "x")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_route_identically() {
    let backends = spawn_backends(5).await;
    let refs: Vec<_> = backends.iter().collect();
    let text = config_text(&refs, "seed = 42", "");
    let (a, b) = (spawn_proxy(&text).await, spawn_proxy(&text).await);
    let client = client();
    for i in 0..1000 {
        let id = format!("twin-{i}");
        assert_eq!(
            backend_for(&client, a.addr, &id).await,
            backend_for(&client, b.addr, &id).await,
            "id {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let backend = spawn_backend("b").await;
    let proxy = spawn_proxy(&config_text(&[&backend], "", "")).await;
    let client = client();
    for i in 0..200 {
        let path = ["/", "/download?bytes=70000", "/status/204", "/headers"][i % 4];
        let r = send(&client, get(proxy.addr, path, &[("x-client-id", "r")])).await;
        assert!(r.status.is_success(), "{}", r.status);
    }
    let accepted = backend
        .state
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        accepted <= 2,
        "200 sequential requests took {accepted} backend connections"
    );
}
