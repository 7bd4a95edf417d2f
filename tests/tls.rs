//! TLS termination end to end: certificates made here, a real proxy on a
//! TLS listener, real HTTPS clients (HTTP/1.1 and HTTP/2 by ALPN), and
//! certificate swaps through the reload pipeline.

mod common;

use common::*;
use http::StatusCode;
use std::sync::Arc;
use stickylb::control::reload::{self, Outcome, Reloader};
use stickylb::http::server::Transport;
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::Router;

struct Tls {
    proxy: TestProxy,
    reloader: Arc<Reloader>,
    ca: TestCa,
    dir: tempfile::TempDir,
    _backends: Vec<TestBackend>,
}

/// Three backends behind a TLS proxy whose config names its certificate
/// files relative to the config file's directory.
async fn start_tls(routing: &str) -> Tls {
    let backends = spawn_backends(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    ca.leaf().write(&dir.path().join("tls"));
    let text = config_text(&backends.iter().collect::<Vec<_>>(), routing, "").replace(
        "[listen]\n",
        "[listen]\ntls = { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }\n",
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let metrics = Arc::new(Metrics::new());
    let (config, snap) = reload::load_initial(&path, &metrics).expect("initial config");
    let router = Arc::new(Router::new(snap));
    let reloader = Arc::new(Reloader::new(
        &path,
        &config,
        router.clone(),
        metrics.clone(),
    ));
    let proxy = start_proxy_with(router, metrics, Transport::Tls).await;
    Tls {
        proxy,
        reloader,
        ca,
        dir,
        _backends: backends,
    }
}

impl Tls {
    fn owner(&self, id: &str) -> String {
        self.proxy
            .router
            .load()
            .owner(id.as_bytes())
            .name
            .to_string()
    }

    /// A forced reload (what SIGHUP does), off the async threads.
    async fn reload(&self) -> Outcome {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || r.reload(true))
            .await
            .expect("reload task")
    }

    fn tls_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("tls")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clients_get_sticky_routing() {
    let t = start_tls("").await;
    let ids: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    let mut seen = std::collections::HashSet::new();
    // HTTP/1.1 by ALPN, and a client that offers no ALPN at all.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        for round in 0..5 {
            let (mut conn, _) = https_connect(t.proxy.addr, &t.ca.der, alpn).await;
            assert!(!conn.is_h2());
            for id in &ids {
                let r = conn.get("/", &[("x-client-id", id)]).await;
                assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.text());
                assert_eq!(r.backend(), t.owner(id), "{id} in round {round}");
                seen.insert(r.backend());
            }
        }
    }
    assert!(seen.len() >= 2, "ids spread over backends: {seen:?}");
    let (mut conn, _) = https_connect(t.proxy.addr, &t.ca.der, &[b"http/1.1"]).await;
    let headers = conn.get("/headers", &[("x-client-id", "a")]).await.text();
    assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_multiplexes_streams_routed_individually() {
    let t = start_tls("").await;
    let (conn, _) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2", b"http/1.1"]).await;
    assert!(conn.is_h2(), "ALPN chose h2");
    let mut streams = Vec::new();
    for i in 0..40 {
        let mut stream = conn.stream();
        let id = format!("h2-user-{i}");
        streams.push(tokio::spawn(async move {
            let r = stream.get("/slow?ms=20", &[("x-client-id", &id)]).await;
            (id, r.status, r.backend())
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for s in streams {
        let (id, status, backend) = s.await.expect("stream task");
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(backend, t.owner(&id), "{id} routed by its own key");
        seen.insert(backend);
    }
    assert_eq!(
        seen.len(),
        3,
        "40 ids on one connection reach every backend"
    );
    let mut conn = conn;
    let headers = conn.get("/headers", &[("x-client-id", "a")]).await.text();
    assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swap_serves_new_connections_and_a_bad_one_keeps_the_old() {
    let t = start_tls("").await;
    let (mut old_conn, first) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;

    let expiry = |m: &str| metric(m, "stickylb_tls_certificate_expiry_timestamp_seconds");
    let scrape = || async {
        send(&client(), get(t.proxy.admin, "/metrics", &[]))
            .await
            .text()
    };
    // 2040-01-01T00:00:00Z, the first certificate's notAfter.
    assert_eq!(expiry(&scrape().await), Some(2_208_988_800.0));

    // A renewal overwrites the files; the reload (SIGHUP) picks it up.
    let renewed = t.ca.leaf_until(2041);
    renewed.write(&t.tls_dir());
    assert!(matches!(t.reload().await, Outcome::Applied { .. }));
    let (mut conn, presented) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;
    assert_eq!(
        presented, renewed.leaf,
        "the next connection gets the new certificate"
    );
    assert_ne!(presented, first);
    // 2041-01-01T00:00:00Z.
    assert_eq!(expiry(&scrape().await), Some(2_240_611_200.0));
    assert_eq!(
        conn.get("/", &[("x-client-id", "a")]).await.status,
        StatusCode::OK
    );
    // The connection made before the swap goes on.
    assert_eq!(
        old_conn.get("/", &[("x-client-id", "a")]).await.status,
        StatusCode::OK
    );

    // A broken replacement: the reload fails, is counted, and the renewed
    // certificate keeps serving.
    let tls = t.tls_dir();
    std::fs::write(
        tls.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    match t.reload().await {
        Outcome::Failed(e) => assert!(e.contains("cert.pem"), "names the file: {e}"),
        other => panic!("a broken certificate must fail the reload: {other:?}"),
    }
    // A key that does not belong to the certificate fails too.
    renewed.write(&tls);
    std::fs::write(tls.join("key.pem"), t.ca.leaf().key_pem).unwrap();
    assert!(matches!(t.reload().await, Outcome::Failed(_)));
    let metrics = send(&client(), get(t.proxy.admin, "/metrics", &[]))
        .await
        .text();
    assert_eq!(
        metric(&metrics, "stickylb_config_reload_failures_total"),
        Some(2.0),
        "{metrics}"
    );
    let (mut conn, presented) = https_connect(t.proxy.addr, &t.ca.der, &[b"http/1.1"]).await;
    assert_eq!(
        presented, renewed.leaf,
        "the last good certificate still serves"
    );
    assert_eq!(
        conn.get("/", &[("x-client-id", "a")]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_over_tls_is_secure() {
    let t = start_tls("sticky_cookie = { name = \"lb_id\" }").await;
    let (mut conn, _) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;
    let r = conn.get("/", &[]).await;
    let cookie = r
        .headers
        .get("set-cookie")
        .expect("a cookie")
        .to_str()
        .unwrap();
    assert!(
        cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000; Secure"),
        "{cookie}"
    );
    let id = &cookie["lb_id=".len()..cookie.find(';').unwrap()];
    assert_eq!(r.backend(), t.owner(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_does_not_take_the_proxy_down() {
    let t = start_tls("").await;
    let mut flooders = Vec::new();
    for _ in 0..2 {
        let (conn, _) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;
        let HttpsConn::H2(tx) = conn else {
            panic!("ALPN h2")
        };
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u32;
            for i in 0..1500 {
                let mut tx = tx.clone();
                if tx.ready().await.is_err() {
                    break; // the proxy closed the connection: allowed
                }
                let req = http::Request::get("https://localhost/slow?ms=200")
                    .header("x-client-id", format!("flood-{i}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                // Polled once, then dropped: the stream is reset at once.
                let _ = tokio::time::timeout(std::time::Duration::ZERO, tx.send_request(req)).await;
                sent += 1;
            }
            sent
        }));
    }
    for f in flooders {
        f.await.expect("flood task");
    }
    // The proxy still serves new connections, over h2 and HTTP/1.1.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (mut conn, _) = https_connect(t.proxy.addr, &t.ca.der, &[alpn]).await;
        let r = conn.get("/", &[("x-client-id", "after")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), t.owner("after"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_in_its_own_directory_is_picked_up_without_sighup() {
    let t = start_tls("").await;
    let mut status = t.reloader.subscribe();
    t.reloader.clone().start(std::future::pending());
    let (_, first) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;
    let renewed = t.ca.leaf();
    renewed.write(&t.tls_dir());
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        status.wait_for(|s| matches!(s.last, Outcome::Applied { .. })),
    )
    .await
    .expect("the renewal is applied within 10 s")
    .expect("reloader alive");
    let (_, presented) = https_connect(t.proxy.addr, &t.ca.der, &[b"h2"]).await;
    assert_ne!(presented, first);
    assert_eq!(
        presented, renewed.leaf,
        "new connections get the renewed certificate"
    );
}
