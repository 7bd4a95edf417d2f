//! Test fixtures: real backends (small hyper servers), a real proxy, and a
//! real HTTP client, all on 127.0.0.1 with ports from binding port 0. Every
//! server stops when its handle is dropped.
#![allow(dead_code)]

pub mod recording;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stickylb::config;
use stickylb::http::proxy::Proxy;
use stickylb::http::server::Transport;
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{Router, Snapshot};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend that answers with its name. Paths:
/// - `/headers`: the request headers, one `name: value` per line;
/// - `/upload`: consumes the body, answers `LEN CHECKSUM`;
/// - `/download?bytes=N`: streams N bytes of `pattern_byte(i)` in 64 KiB chunks;
/// - `/status/NNN`: that status, with `x-custom: kept` and hop-by-hop headers;
/// - `/slow?ms=N`: waits N ms before the headers;
/// - anything else: the name.
///
/// - `/healthz`: 200, or 500 while `set_sick(true)`.
///
/// Every response carries `x-backend: NAME`.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    task: Option<(JoinHandle<()>, tokio::sync::watch::Sender<bool>)>,
}

/// What a test backend has seen, and how it should behave.
#[derive(Default)]
pub struct BackendState {
    pub sick: std::sync::atomic::AtomicBool,
    /// Requests being answered now, and the most at once.
    pub active: std::sync::atomic::AtomicI64,
    pub peak: std::sync::atomic::AtomicI64,
    pub served: std::sync::atomic::AtomicU64,
    /// Killed: every response closes its connection.
    pub closing: std::sync::atomic::AtomicBool,
    /// Connections accepted.
    pub accepted: std::sync::atomic::AtomicU64,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some((task, _)) = self.task.take() {
            task.abort();
        }
    }
}

impl TestBackend {
    /// Stops listening; each open connection closes after its next
    /// response (`Connection: close`), as a backend draining on its way out.
    pub async fn kill(&mut self) {
        if let Some((task, stop)) = self.task.take() {
            self.state
                .closing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            stop.send_replace(true);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("backend stops")
                .expect("backend task");
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "restart a killed backend");
        self.state
            .closing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let listener = TcpListener::bind(self.addr).await.expect("rebind backend");
        self.task = Some(serve(
            listener,
            self.name.clone().into(),
            self.state.clone(),
        ));
    }

    pub fn set_sick(&self, sick: bool) {
        self.state
            .sick
            .store(sick, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

/// A checksum both sides can compute over a stream of bytes.
pub fn checksum(acc: u64, chunk: &[u8]) -> u64 {
    chunk.iter().fold(acc, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub const CHECKSUM_START: u64 = 0xcbf2_9ce4_8422_2325;

type TestBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

async fn backend_reply(
    name: Arc<str>,
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Response<TestBody> {
    use std::sync::atomic::Ordering::Relaxed;
    state.served.fetch_add(1, Relaxed);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| -> u64 {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut resp = if path == "/headers" {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    } else if path == "/upload" {
        let mut body = req.into_body();
        let (mut len, mut sum) = (0u64, CHECKSUM_START);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                len += data.len() as u64;
                sum = checksum(sum, data);
            }
        }
        Response::new(full(format!("{len} {sum}")))
    } else if path == "/download" {
        Response::new(
            PatternBody {
                sent: 0,
                total: param("bytes"),
            }
            .boxed(),
        )
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full("status\n"));
        *r.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        let h = r.headers_mut();
        h.insert("x-custom", HeaderValue::from_static("kept"));
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("dropped"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        r
    } else if path == "/slow" {
        let now = state.active.fetch_add(1, Relaxed) + 1;
        state.peak.fetch_max(now, Relaxed);
        tokio::time::sleep(Duration::from_millis(param("ms"))).await;
        state.active.fetch_sub(1, Relaxed);
        Response::new(full(name.to_string()))
    } else if path == "/healthz" {
        let mut r = Response::new(full("ok\n"));
        if state.sick.load(Relaxed) {
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        r
    } else {
        Response::new(full(name.to_string()))
    };
    resp.headers_mut().insert(
        "x-backend",
        HeaderValue::from_str(&name).expect("test names are ASCII"),
    );
    if state.closing.load(Relaxed) {
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
    }
    resp
}

/// A body of `total` bytes of `pattern_byte(i)`, produced 64 KiB at a time
/// as the reader asks for them.
struct PatternBody {
    sent: u64,
    total: u64,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.total {
            return std::task::Poll::Ready(None);
        }
        let end = (self.sent + 65536).min(self.total);
        let data: Vec<u8> = (self.sent..end).map(pattern_byte).collect();
        self.sent = end;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

pub async fn spawn_backend(name: &str) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let state = Arc::new(BackendState::default());
    TestBackend {
        name: name.to_string(),
        addr,
        task: Some(serve(listener, name.into(), state.clone())),
        state,
    }
}

/// The backend's accept loop; `true` on the watch stops it gracefully.
fn serve(
    listener: TcpListener,
    name: Arc<str>,
    state: Arc<BackendState>,
) -> (JoinHandle<()>, tokio::sync::watch::Sender<bool>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        let mut stopped = stopped;
        loop {
            let stream = tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => break,
                },
            };
            state
                .accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (name, state) = (name.clone(), state.clone());
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let (name, state) = (name.clone(), state.clone());
                    async move { Ok::<_, Infallible>(backend_reply(name, state, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        // Open connections finish on their own (each closes after its next
        // response); the test's runtime ends any left.
        drop(listener);
        conns.detach_all();
    });
    (task, stop)
}

pub async fn spawn_backends(n: usize) -> Vec<TestBackend> {
    let mut v = Vec::with_capacity(n);
    for i in 1..=n {
        v.push(spawn_backend(&format!("backend-{i}")).await);
    }
    v
}

/// A config file's text for `backends`, with `extra` appended (more sections).
pub fn config_text(backends: &[&TestBackend], routing: &str, extra: &str) -> String {
    let pool: Vec<(&str, SocketAddr)> = backends.iter().map(|b| (&*b.name, b.addr)).collect();
    config_for(&pool, routing, extra)
}

/// A config file's text for backends given as (name, address).
pub fn config_for(backends: &[(&str, SocketAddr)], routing: &str, extra: &str) -> String {
    let mut s = format!("[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routing]\n{routing}\n{extra}\n");
    for (name, addr) in backends {
        s.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    s
}

/// A proxy and its admin listener, each on its own port-0 listener, wired
/// as `stickylb run` wires them; stopped when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestProxy {
    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        send(&client(), get(self.admin, "/metrics", &[]))
            .await
            .text()
    }
}

pub async fn spawn_proxy(config_text: &str) -> TestProxy {
    let config = config::from_toml_str(config_text, "test.toml").expect("valid test config");
    let metrics = Arc::new(Metrics::new());
    let snap = Snapshot::build(&config, None, &metrics).expect("snapshot");
    start_proxy(Arc::new(Router::new(snap)), metrics).await
}

/// Serves an existing router (a reload test's) on fresh listeners.
pub async fn start_proxy(router: Arc<Router>, metrics: Arc<Metrics>) -> TestProxy {
    start_proxy_with(router, metrics, Transport::Plain).await
}

/// Serves an existing router with its listener speaking `transport`.
pub async fn start_proxy_with(
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    transport: Transport,
) -> TestProxy {
    let how = stickylb::http::server::Listening {
        transport,
        proxy_protocol: false,
        workers: 1,
        worker: 0,
    };
    start_proxy_listening(router, metrics, how).await
}

/// Serves an existing router with its listener taking connections `how`.
pub async fn start_proxy_listening(
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    how: stickylb::http::server::Listening,
) -> TestProxy {
    let proxy = Arc::new(Proxy::new(router.clone(), metrics.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = admin_listener.local_addr().expect("admin addr");
    let admin_state = Arc::new(stickylb::control::admin::Admin::new(
        router.clone(),
        metrics.clone(),
    ));
    let tasks = vec![
        tokio::spawn(async move {
            stickylb::http::server::run_listener(listener, proxy, how, std::future::pending())
                .await
                .expect("server runs");
        }),
        tokio::spawn(stickylb::control::admin::run(
            admin_listener,
            admin_state,
            std::future::pending(),
        )),
        tokio::spawn(stickylb::control::health::run(
            router.clone(),
            std::future::pending(),
        )),
        tokio::spawn(stickylb::control::slow_start::run(
            router.clone(),
            std::future::pending(),
        )),
    ];
    TestProxy {
        addr,
        admin,
        router,
        metrics,
        tasks,
    }
}

/// The value of a metric line `name{labels} value` in a `/metrics` text;
/// `series` is everything before the value.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A real HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A real HTTP/2 (prior knowledge, h2c) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One HTTP/2 connection to `addr` (h2c, prior knowledge), for requests
/// on streams of a connection the test controls.
pub async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// Sends a request and reads the whole reply, failing the test after 10 s.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let resp = client.request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("reply within 10 s")
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// GET `path` with `X-Client-Id: id` and return the serving backend's name.
pub async fn backend_for(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    id: &str,
) -> String {
    let r = send(client, get(addr, "/", &[("x-client-id", id)])).await;
    assert_eq!(r.status, StatusCode::OK, "id {id}: {}", r.text());
    r.backend()
}

/// Sum of `stickylb_ring_share` over `backends` in a `/metrics` text.
pub fn share_sum(metrics: &str, backends: &[&TestBackend]) -> f64 {
    backends
        .iter()
        .map(|b| {
            let series = format!("stickylb_ring_share{{backend=\"{}\"}}", b.name);
            metric(metrics, &series).unwrap_or_else(|| panic!("no {series}"))
        })
        .sum()
}

/// Client tasks sending continuously (bounded: 60 s and 200,000 requests
/// each) until stopped, counting what they sent and what did not get a 200.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    pub failed: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` tasks; `request(task, i)` builds the i-th request of a task.
    pub fn start(
        clients: usize,
        request: impl Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let request = Arc::new(request);
        let tasks = (0..clients)
            .map(|t| {
                let (stop, sent, failed, request) =
                    (stop.clone(), sent.clone(), failed.clone(), request.clone());
                tokio::spawn(async move {
                    let client = client();
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    let mut i = 0u64;
                    while !stop.load(Relaxed) && std::time::Instant::now() < deadline && i < 200_000
                    {
                        let r = send(&client, request(t, i)).await;
                        sent.fetch_add(1, Relaxed);
                        if r.status != StatusCode::OK {
                            failed.fetch_add(1, Relaxed);
                            eprintln!("failed: {} {}", r.status, r.text());
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Waits (yielding, at most 30 s) until `n` requests in all were sent.
    pub async fn wait_sent(&self, n: u64) {
        let sent = self.sent.clone();
        tokio::time::timeout(Duration::from_secs(30), async move {
            while sent.load(std::sync::atomic::Ordering::Relaxed) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("load flows");
    }

    /// Stops the clients; returns (sent, failed).
    pub async fn finish(self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        (self.sent.load(Relaxed), self.failed.load(Relaxed))
    }
}

// ---- TLS -----------------------------------------------------------------

/// A test certificate authority; leaves it signs are valid for `localhost`
/// and 127.0.0.1.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// A leaf certificate with its chain and key, as PEM text.
pub struct TestCert {
    /// Leaf, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
    pub leaf: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stickylb test CA");
        let key = rcgen::KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A new leaf (new key, so every call gives a different certificate).
    pub fn leaf(&self) -> TestCert {
        self.leaf_until(2040)
    }

    /// A leaf certificate valid until 1 January of `year`, 00:00 UTC.
    pub fn leaf_until(&self, year: i32) -> TestCert {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let ca_pem = pem_of(&self.der);
        TestCert {
            chain_pem: format!("{}{ca_pem}", cert.pem()),
            key_pem: key.serialize_pem(),
            leaf: cert.der().clone(),
        }
    }
}

fn pem_of(der: &[u8]) -> String {
    // Base64 by hand keeps the dependency list short.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl TestCert {
    /// Writes `cert.pem` and `key.pem` into `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("tls dir");
        std::fs::write(dir.join("cert.pem"), &self.chain_pem).expect("write cert");
        std::fs::write(dir.join("key.pem"), &self.key_pem).expect("write key");
    }
}

/// One HTTPS client connection, speaking what ALPN chose.
pub enum HttpsConn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` (as `localhost`) that trusts `ca`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> TlsStream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect proxy");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("TLS handshake")
}

/// A new HTTPS connection to `addr` that trusts `ca`, offering `alpn`; also
/// the certificate the server presented.
pub async fn https_connect(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> (HttpsConn, rustls::pki_types::CertificateDer<'static>) {
    let tls = tls_connect(addr, ca, alpn).await;
    let (_, session) = tls.get_ref();
    let presented = session.peer_certificates().expect("server certificate")[0].clone();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let conn = if h2 {
        let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        HttpsConn::H2(tx)
    } else {
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        HttpsConn::H1(tx)
    };
    (conn, presented)
}

impl HttpsConn {
    pub fn is_h2(&self) -> bool {
        matches!(self, HttpsConn::H2(_))
    }

    /// GET `path` with `headers` on this connection and read the reply.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = match self {
            HttpsConn::H1(_) => Request::get(path).header("host", "localhost"),
            HttpsConn::H2(_) => Request::get(format!("https://localhost{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).expect("request");
        tokio::time::timeout(Duration::from_secs(10), async {
            let resp = match self {
                HttpsConn::H1(tx) => {
                    tx.ready().await.expect("connection ready");
                    tx.send_request(req).await
                }
                HttpsConn::H2(tx) => tx.send_request(req).await,
            }
            .expect("response");
            let (parts, body) = resp.into_parts();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.expect("body").to_bytes(),
            }
        })
        .await
        .expect("reply within 10 s")
    }

    /// A handle for another concurrent stream (HTTP/2 only).
    pub fn stream(&self) -> HttpsConn {
        match self {
            HttpsConn::H2(tx) => HttpsConn::H2(tx.clone()),
            HttpsConn::H1(_) => panic!("HTTP/1.1 carries one request at a time"),
        }
    }
}

// ---- WebSocket -------------------------------------------------------------

/// A WebSocket backend: on each connection it first sends its name, then
/// echoes every message until the client closes.
pub struct WsBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn_ws_backend(name: &str) -> WsBackend {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let addr = listener.local_addr().expect("ws addr");
    let name_owned: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name_owned.clone();
            tokio::spawn(async move {
                // Health probes and other plain requests are not WebSocket
                // handshakes; those connections just end.
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if ws.send(Message::text(name.to_string())).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    WsBackend {
        name: name.to_string(),
        addr,
        task,
    }
}

/// A config file's text for WebSocket backends.
pub fn ws_config_text(backends: &[WsBackend], routing: &str, extra: &str) -> String {
    let mut s = format!("[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routing]\n{routing}\n{extra}\n");
    for b in backends {
        s.push_str(&format!(
            "[[backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}
