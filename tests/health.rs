//! Backends failing: health checks, failover that keeps every other key in
//! place, retries on connect failure, bounded loads, and the proxy's own
//! limits against slow or hostile clients.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FAST_CHECKS: &str =
    "[health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n";

/// Waits (on health transition events) until `pred` holds for the live pool.
async fn wait_health(proxy: &TestProxy, within: Duration, pred: impl Fn(&[bool]) -> bool) {
    let mut events = proxy.router.subscribe_health();
    tokio::time::timeout(within, async {
        loop {
            events.borrow_and_update();
            let states: Vec<bool> = proxy
                .router
                .load()
                .backends
                .iter()
                .map(|b| b.health.is_healthy())
                .collect();
            if pred(&states) {
                return;
            }
            events.changed().await.expect("router alive");
        }
    })
    .await
    .expect("health state reached in time");
}

async fn owners(proxy: &TestProxy, keys: &[String]) -> Vec<String> {
    let client = client();
    let mut v = Vec::with_capacity(keys.len());
    for k in keys {
        v.push(backend_for(&client, proxy.addr, k).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_keys_fail_over_and_come_back() {
    let mut pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "", FAST_CHECKS)).await;
    let keys: Vec<String> = (0..2000).map(|i| format!("fo-{i}")).collect();
    let before = owners(&proxy, &keys).await;
    let snap = proxy.router.load_full();
    let dead = pool[1].name.clone();

    // Kill backend-2: within interval × fall + slack it is out.
    pool[1].kill().await;
    let t = Instant::now();
    wait_health(&proxy, Duration::from_secs(3), |h| !h[1]).await;
    let detected = t.elapsed();
    let after = owners(&proxy, &keys).await;
    let mut moved = 0;
    for (i, k) in keys.iter().enumerate() {
        if before[i] == dead {
            // The next distinct backend of the key's preference order.
            let next = snap
                .ring
                .preference(snap.ring.hash(k.as_bytes()))
                .map(|m| snap.backends[m].name.to_string())
                .find(|n| *n != dead)
                .unwrap();
            assert_eq!(after[i], next, "key {k}");
            moved += 1;
        } else {
            assert_eq!(after[i], before[i], "key {k} of a healthy backend moved");
        }
    }
    assert!(moved > 300, "backend-2 owned {moved} of 2000 keys");
    let m = proxy.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            &format!("stickylb_backend_healthy{{backend=\"{dead}\"}}")
        ),
        Some(0.0)
    );
    assert!(
        metric(&m, "stickylb_remapped_requests_total{reason=\"failover\"}").unwrap()
            >= moved as f64
    );
    eprintln!("down detected after {detected:?}");

    // Bring it back: its keys return.
    pool[1].restart().await;
    wait_health(&proxy, Duration::from_secs(3), |h| h.iter().all(|&x| x)).await;
    assert_eq!(owners(&proxy, &keys).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_endpoint_takes_out_and_all_down_is_503() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "", FAST_CHECKS)).await;
    let client = client();

    pool[0].set_sick(true);
    wait_health(&proxy, Duration::from_secs(3), |h| !h[0] && h[1] && h[2]).await;
    for i in 0..200 {
        let b = backend_for(&client, proxy.addr, &format!("s-{i}")).await;
        assert_ne!(b, pool[0].name, "a sick backend serves nothing");
    }

    pool[1].set_sick(true);
    pool[2].set_sick(true);
    wait_health(&proxy, Duration::from_secs(3), |h| h.iter().all(|&x| !x)).await;
    let r = send(&client, get(proxy.addr, "/", &[("x-client-id", "x")])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("no healthy backend"), "{}", r.text());

    pool[2].set_sick(false);
    wait_health(&proxy, Duration::from_secs(3), |h| h[2]).await;
    assert_eq!(backend_for(&client, proxy.addr, "x").await, pool[2].name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_loses_nothing() {
    let mut pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    // Active checks too slow to notice: only connect failures and retries help.
    let slow_checks = "[health]\ninterval = \"60s\"\nfall = 3\nrise = 2\n";
    let proxy = spawn_proxy(&config_text(&refs, "", slow_checks)).await;
    let addr = proxy.addr;
    let load = Load::start(4, move |t, i| {
        let id = format!("k-{t}-{}", i % 300);
        if i.is_multiple_of(2) {
            get(addr, "/", &[("x-client-id", &id)])
        } else {
            Request::post(format!("http://{addr}/upload"))
                .header("x-client-id", &id)
                .body(Full::new(Bytes::from(vec![7u8; 2048])))
                .unwrap()
        }
    });
    load.wait_sent(500).await;
    pool[0].kill().await;
    let at_kill = load.sent.load(Ordering::Relaxed);
    load.wait_sent(at_kill + 1500).await;
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    let m = proxy.metrics_text().await;
    let dead = &pool[0].name;
    assert!(
        metric(
            &m,
            &format!("stickylb_upstream_errors_total{{backend=\"{dead}\",kind=\"connect\"}}")
        )
        .unwrap()
            >= 1.0,
        "connect failures were seen and retried: {}",
        m.lines()
            .filter(|l| l.contains(dead.as_str()) && !l.contains("bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        metric(
            &m,
            &format!("stickylb_backend_healthy{{backend=\"{dead}\"}}")
        ),
        Some(0.0),
        "passive failures took it out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_loads_spread_one_hot_key() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let proxy = spawn_proxy(&config_text(&refs, "balance_factor = 1.25", "")).await;
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let client = client.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            send(
                &client,
                get(addr, "/slow?ms=600", &[("x-client-id", "hot")]),
            )
            .await
        }));
    }
    let mut by_backend: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        *by_backend.entry(r.backend()).or_default() += 1;
    }
    let capacity = (1.25f64 * 60.0 / 3.0).ceil() as i64;
    for b in &pool {
        let peak = b.state.peak.load(Ordering::Relaxed);
        assert!(
            peak <= capacity,
            "{} held {peak} at once, capacity {capacity}: {by_backend:?}",
            b.name
        );
    }
    assert_eq!(by_backend.len(), 3, "{by_backend:?}");
    let owner = proxy.router.load().owner(b"hot").name.to_string();
    assert!(
        by_backend[&owner] >= 20,
        "the owner keeps most: {by_backend:?}"
    );
    let m = proxy.metrics_text().await;
    let overload = metric(&m, "stickylb_remapped_requests_total{reason=\"overload\"}").unwrap();
    assert_eq!(overload as usize, 60 - by_backend[&owner]);
}

/// Sends raw bytes and returns what the proxy answers before closing (at most 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before all bytes are written.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_hurt_others() {
    let backend = spawn_backend("b").await;
    let proxy = spawn_proxy(&config_text(
        &[&backend],
        "",
        "[timeouts]\nclient_header_read = \"2s\"",
    ))
    .await;
    let client = client();

    // 200 slowloris connections: half a request each, then silence.
    let mut lorises = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Client-Id: slow\r\n")
            .await
            .unwrap();
        lorises.push(s);
    }
    let t = Instant::now();
    assert_eq!(backend_for(&client, proxy.addr, "normal").await, "b");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // The header timeout closes them.
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), lorises[0].read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "slowloris connection closed after client_header_read"
    );
    drop(lorises);

    // 64 KiB of headers: 431, and the proxy goes on.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Client-Id: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw(proxy.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(backend_for(&client, proxy.addr, "after-431").await, "b");

    // Garbage: 400 or a closed connection, and the proxy goes on.
    let answer = raw(proxy.addr, b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    assert_eq!(backend_for(&client, proxy.addr, "after-garbage").await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_fails_over_to_the_rebuilt_table_and_others_stay() {
    let pool = spawn_backends(4).await;
    let refs: Vec<_> = pool.iter().collect();
    let proxy = spawn_proxy(&config_text(
        &refs,
        "algorithm = \"maglev\"\ntable_size = 4099",
        FAST_CHECKS,
    ))
    .await;
    let keys: Vec<String> = (0..2000).map(|i| format!("mg-{i}")).collect();
    let before = owners(&proxy, &keys).await;
    let snap = proxy.router.load_full();

    pool[2].set_sick(true);
    wait_health(&proxy, Duration::from_secs(3), |h| !h[2]).await;
    let rebuilt = snap.ring.excluding(&[false, false, true, false]).unwrap();
    let after = owners(&proxy, &keys).await;
    for (i, k) in keys.iter().enumerate() {
        if before[i] == pool[2].name {
            let want = &snap.backends[rebuilt.owner(rebuilt.hash(k.as_bytes()))].name;
            assert_eq!(
                after[i], **want,
                "key {k} goes to its owner in the rebuilt table"
            );
        } else {
            assert_eq!(after[i], before[i], "key {k} of a healthy backend moved");
        }
    }
    pool[2].set_sick(false);
    wait_health(&proxy, Duration::from_secs(3), |h| h.iter().all(|&x| x)).await;
    assert_eq!(owners(&proxy, &keys).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_makes_new_clients_wait_not_fail() {
    let backend = spawn_backend("b").await;
    let proxy = spawn_proxy(&config_text(
        &[&backend],
        "",
        "[limits]\nmax_connections = 2",
    ))
    .await;
    // Two open connections take both places.
    let mut held = vec![
        TcpStream::connect(proxy.addr).await.unwrap(),
        TcpStream::connect(proxy.addr).await.unwrap(),
    ];
    let client = client();
    let mut waiting = tokio::spawn({
        let client = client.clone();
        let addr = proxy.addr;
        async move { send(&client, get(addr, "/", &[("x-client-id", "w")])).await }
    });
    // While both places are taken, the third client is not served...
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(
        early.is_err(),
        "a third connection was served past max_connections = 2"
    );
    // ...and once one closes, it is, without an error.
    drop(held.pop());
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a place frees")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn ring_lookup_names_who_serves_a_key_while_its_owner_is_down() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    for algorithm in ["ring", "maglev", "rendezvous"] {
        let proxy = spawn_proxy(&config_text(
            &refs,
            &format!("algorithm = \"{algorithm}\""),
            "",
        ))
        .await;
        let client = client();
        let lookup = |key: &str| {
            let client = client.clone();
            let url = format!("/ring/lookup?key={key}");
            let admin = proxy.admin;
            async move {
                let text = send(&client, get(admin, &url, &[])).await.text();
                serde_json::from_str::<serde_json::Value>(&text).expect("json")
            }
        };
        let before = lookup("alice").await;
        let owner = before["owner"].as_str().expect("owner").to_string();
        assert_eq!(before["backend"], owner.as_str(), "{algorithm}");
        assert_eq!(before["preference"][0], owner.as_str(), "{algorithm}");
        assert_eq!(before["preference"].as_array().map(Vec::len), Some(3));
        // The owner goes down (one failed check is enough with fall = 1).
        let snap = proxy.router.load();
        let down = snap
            .backends
            .iter()
            .find(|b| *b.name == owner)
            .expect("owner");
        assert!(down.health.failure(1).is_some());
        proxy.router.health_changed();
        let during = lookup("alice").await;
        let served = backend_for(&client, proxy.addr, "alice").await;
        assert_eq!(during["owner"], owner.as_str(), "{algorithm}");
        assert_eq!(
            during["backend"],
            served.as_str(),
            "{algorithm}: lookup agrees with the proxy"
        );
        assert_ne!(served, owner, "{algorithm}");
    }
}

/// SPEC: `/ring/lookup`'s key is percent-decoded to bytes, and a key that
/// is not UTF-8 routes as those bytes would in a header (obs-text, RFC 9110
/// §5.5).
#[tokio::test]
async fn ring_lookup_of_a_non_utf8_key_agrees_with_header_routing() {
    let pool = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_text(&pool.iter().collect::<Vec<_>>(), "", "")).await;
    let client = client();
    let mut owners = std::collections::HashSet::new();
    for i in 0..40u8 {
        let key = [0xff, b'k', i / 10 + b'0', i % 10 + b'0', 0xc3, 0x28];
        assert!(std::str::from_utf8(&key).is_err());
        let encoded: String = key.iter().map(|b| format!("%{b:02X}")).collect();
        let url = format!("/ring/lookup?key={encoded}");
        let text = send(&client, get(proxy.admin, &url, &[])).await.text();
        let lookup: serde_json::Value = serde_json::from_str(&text).expect("json");
        let req = Request::get(format!("http://{}/", proxy.addr))
            .header("x-client-id", http::HeaderValue::from_bytes(&key).unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let served = send(&client, req).await;
        assert_eq!(served.status, StatusCode::OK);
        assert_eq!(lookup["backend"], served.backend().as_str(), "key {key:?}");
        owners.insert(served.backend());
    }
    assert!(owners.len() > 1, "40 keys all on one backend: {owners:?}");
}
