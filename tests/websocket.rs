//! WebSocket pass-through: real WebSocket clients through a real proxy to
//! real WebSocket echo backends, plain and over TLS; stickiness by client
//! id, the 1xx count, and the idle timeout of upgraded connections.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

async fn ws_backends() -> Vec<WsBackend> {
    let mut v = Vec::new();
    for i in 1..=3 {
        v.push(spawn_ws_backend(&format!("ws-{i}")).await);
    }
    v
}

/// A WebSocket handshake over `stream` with `X-Client-Id: id`; returns the
/// socket and the name of the backend that answered.
async fn ws_open<S>(stream: S, host: &str, id: &str) -> (WebSocketStream<S>, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!("ws://{host}/chat")
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("x-client-id", id.parse().expect("header value"));
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("handshake within 10 s")
    .expect("WebSocket handshake");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let first = next_text(&mut ws).await;
    (ws, first)
}

async fn ws_connect(
    addr: SocketAddr,
    id: &str,
) -> (WebSocketStream<tokio::net::TcpStream>, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ws_open(tcp, &addr.to_string(), id).await
}

async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, n: usize) {
    for i in 0..n {
        let msg = format!("message {i}");
        ws.send(Message::text(msg.clone())).await.expect("send");
        assert_eq!(next_text(ws).await, msg, "echo {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exchanges_100_messages_and_counts_1xx() {
    let backends = ws_backends().await;
    let proxy = spawn_proxy(&ws_config_text(&backends, "", "")).await;
    let owner = proxy.router.load().owner(b"alice").name.to_string();
    let (mut ws, backend) = ws_connect(proxy.addr, "alice").await;
    assert_eq!(backend, owner);
    exchange(&mut ws, 100).await;
    ws.close(None).await.expect("close");

    let text = proxy.metrics_text().await;
    let series = format!("stickylb_requests_total{{backend=\"{owner}\",code_class=\"1xx\"}}");
    assert_eq!(metric(&text, &series), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_websockets_with_one_id_reach_one_backend() {
    let backends = ws_backends().await;
    let proxy = spawn_proxy(&ws_config_text(&backends, "", "")).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let (mut ws, backend) = ws_connect(addr, "room-42").await;
            exchange(&mut ws, 2).await;
            if i % 2 == 0 {
                ws.close(None).await.expect("close");
            }
            backend
        }));
    }
    let owner = proxy.router.load().owner(b"room-42").name.to_string();
    for t in tasks {
        assert_eq!(t.await.expect("client task"), owner);
    }
    // Other ids still go to their own owners.
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let id = format!("user-{i}");
        let (_, backend) = ws_connect(proxy.addr, &id).await;
        assert_eq!(
            backend,
            proxy.router.load().owner(id.as_bytes()).name.to_string()
        );
        seen.insert(backend);
    }
    assert!(seen.len() >= 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let backends = ws_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    ca.leaf().write(dir.path());
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let text = ws_config_text(&backends, "", "").replace("[listen]\n", &format!("[listen]\n{tls}"));
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let metrics = std::sync::Arc::new(stickylb::observe::metrics::Metrics::new());
    let (_, snap) = stickylb::control::reload::load_initial(&path, &metrics).expect("config");
    let router = std::sync::Arc::new(stickylb::routing::snapshot::Router::new(snap));
    let proxy = start_proxy_with(router, metrics, stickylb::http::server::Transport::Tls).await;
    let owner = proxy.router.load().owner(b"bob").name.to_string();
    for _ in 0..3 {
        let stream = tls_connect(proxy.addr, &ca.der, &[b"http/1.1"]).await;
        let (mut ws, backend) = ws_open(stream, "localhost", "bob").await;
        assert_eq!(backend, owner);
        exchange(&mut ws, 10).await;
        ws.close(None).await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upgraded_connection_is_closed() {
    let backends = ws_backends().await;
    let proxy = spawn_proxy(&ws_config_text(
        &backends,
        "",
        "[timeouts]\nupgraded_idle = \"300ms\"\nidle = \"100ms\"",
    ))
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "carol").await;
    // Traffic keeps it open past the (shorter) connection idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        exchange(&mut ws, 1).await;
    }
    // Silence closes it.
    let start = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed within 10 s");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no message, only the end: {end:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_hold_their_place_under_the_backend_cap() {
    let backend = spawn_ws_backend("ws-1").await;
    let proxy = spawn_proxy(&ws_config_text(
        std::slice::from_ref(&backend),
        "",
        "[limits]\nmax_backend_connections = 2\n[timeouts]\nconnect = \"200ms\"",
    ))
    .await;
    let (mut a, _) = ws_connect(proxy.addr, "a").await;
    let (mut b, _) = ws_connect(proxy.addr, "b").await;
    // Two tunnels open: no third connection to the backend.
    let client = client();
    let r = send(&client, get(proxy.addr, "/", &[("x-client-id", "c")])).await;
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text()
    );
    assert!(r
        .text()
        .contains("every connection to the backend is in use"));
    exchange(&mut a, 1).await;
    // A tunnel closes: its place is free again.
    b.close(None).await.expect("close");
    while let Some(Ok(_)) = b.next().await {}
    drop(b);
    let (mut c, _) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let tcp = tokio::net::TcpStream::connect(proxy.addr)
                .await
                .expect("connect");
            let mut req = format!("ws://{}/chat", proxy.addr)
                .into_client_request()
                .expect("ws request");
            req.headers_mut()
                .insert("x-client-id", "c".parse().expect("value"));
            if let Ok((mut ws, resp)) = tokio_tungstenite::client_async(req, tcp).await {
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    let first = next_text(&mut ws).await;
                    return (ws, first);
                }
            }
        }
    })
    .await
    .expect("a place frees once a tunnel closes");
    exchange(&mut c, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_counts_as_open_until_its_tunnel_ends() {
    // Its socket is still the client's: it keeps its place under
    // limits.max_connections (and in a drain) while the tunnel runs.
    let backends = ws_backends().await;
    let proxy = spawn_proxy(&ws_config_text(&backends, "", "")).await;
    let open = "stickylb_connections_open{listener=\"http\"}";
    let (mut ws, _) = ws_connect(proxy.addr, "alice").await;
    exchange(&mut ws, 3).await;
    assert_eq!(metric(&proxy.metrics_text().await, open), Some(1.0));
    ws.close(None).await.expect("close");
    // The tunnel ends when the close has gone both ways; bounded wait.
    let mut now_open = None;
    for _ in 0..100 {
        now_open = metric(&proxy.metrics_text().await, open);
        if now_open == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now_open, Some(0.0), "the connection closed with its tunnel");
}
