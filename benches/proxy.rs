//! Request-path benchmarks.
//!
//! - `metrics_per_request`: the metric updates one proxied request makes,
//!   in isolation, and the extra ring lookup that
//!   `remapped_requests_total{reason="ring_change"}` needs after a change.
//! - `https_vs_http`: requests per second through a real proxy on loopback,
//!   plain HTTP/1.1 against HTTPS (TLS 1.3, HTTP/1.1 by ALPN), one
//!   keep-alive connection each, handshakes outside the measurement.
//!
//! `cargo bench --bench proxy` (add `-- --quick` for a fast smoke run).

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stickylb::config::{self, TlsFiles};
use stickylb::http::proxy::Proxy;
use stickylb::http::server::Transport;
use stickylb::observe::metrics::Metrics;
use stickylb::ring::{Algorithm, Member, Ring};
use stickylb::routing::snapshot::{Router, Snapshot};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

const VNODES: u32 = 160;
/// Upper bound on one timed batch of requests; a stall fails the run.
const BATCH_LIMIT: Duration = Duration::from_secs(60);

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group
}

// ---- metrics_per_request ------------------------------------------------------

fn ring(n: usize) -> Ring {
    let members = (1..=n)
        .map(|i| Member {
            name: format!("backend-{i}").into(),
            weight: NonZeroU32::MIN,
        })
        .collect();
    Ring::build(members, Algorithm::Ring { vnodes: VNODES }, 0).expect("ring builds")
}

fn metrics_per_request(c: &mut Criterion) {
    let metrics = Metrics::new();
    let b = metrics.backend("backend-1");
    let ks = metrics.key_source("header");
    // Resolved as the proxy resolves it; incremented only when a key did
    // change owner, which the lookup below decides.
    let _ring_change = metrics.remapped("ring_change");

    let mut group = configure(c, "metrics_per_request");
    group.bench_function("request_metrics", |bench| {
        bench.iter(|| {
            ks.inc();
            b.in_flight.inc();
            b.request(black_box(200));
            b.duration.observe(black_box(0.00042));
            b.in_flight.dec();
        })
    });

    // After a ring change (3 -> 4 backends), each request also asks the
    // previous generation's ring who owned its key.
    let previous = ring(3);
    let current = ring(4);
    let hash = current.hash(b"user-42");
    group.bench_function("ring_change_lookup", |bench| {
        bench.iter(|| black_box(previous.owner(black_box(hash))))
    });
    group.finish();
}

// ---- https_vs_http ------------------------------------------------------------

/// A backend that answers every request with `ok`.
async fn spawn_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A CA and a leaf for `localhost` written as PEM files in `dir`; returns
/// the CA certificate to trust and the files.
fn write_certificate(
    dir: &std::path::Path,
) -> (rustls::pki_types::CertificateDer<'static>, TlsFiles) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stickylb bench CA");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let ca_der = ca_cert.der().clone();
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, format!("{}{ca_pem}", leaf.pem())).expect("write cert");
    std::fs::write(&files.key, leaf_key.serialize_pem()).expect("write key");
    (ca_der, files)
}

/// One proxy in front of one backend, with a plain and a TLS listener.
/// Returns the two listener addresses and the CA to trust.
async fn spawn_proxy(
    dir: &std::path::Path,
) -> (
    SocketAddr,
    SocketAddr,
    rustls::pki_types::CertificateDer<'static>,
) {
    let backend = spawn_backend().await;
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n\
         [[backend]]\nname = \"backend-1\"\naddress = \"{backend}\"\n"
    );
    let config = config::from_toml_str(&text, "bench.toml").expect("valid config");
    let metrics = Arc::new(Metrics::new());
    let (ca, files) = write_certificate(dir);
    let tls = stickylb::http::tls::load(&files).expect("TLS config");
    let snap = Snapshot::build(&config, None, &metrics)
        .expect("snapshot")
        .with_tls(Some(tls.server));
    let router = Arc::new(Router::new(snap));
    let proxy = Arc::new(Proxy::new(router, metrics));
    let mut addrs = Vec::new();
    for transport in [Transport::Plain, Transport::Tls] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        addrs.push(listener.local_addr().expect("proxy addr"));
        let proxy = proxy.clone();
        tokio::spawn(async move {
            stickylb::http::server::run_with(listener, proxy, transport, std::future::pending())
                .await
                .expect("server runs");
        });
    }
    (addrs[0], addrs[1], ca)
}

/// An HTTP/1.1 keep-alive connection over `io`; the connection task runs
/// on the runtime.
async fn http1<T>(io: T) -> SendRequest<Empty<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    tx
}

async fn plain_connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect proxy");
    tcp.set_nodelay(true).expect("nodelay");
    http1(tcp).await
}

/// TLS 1.3 with ALPN `http/1.1` only, trusting `ca`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> SendRequest<Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect proxy");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    http1(tls).await
}

/// One GET with `X-Client-Id`, reading the whole body.
async fn get(tx: &mut SendRequest<Empty<Bytes>>) {
    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-client-id", "user-42")
        .body(Empty::new())
        .expect("request");
    tx.ready().await.expect("connection ready");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// `iters` requests in a row on `tx`; the time they took.
async fn batch(tx: &mut SendRequest<Empty<Bytes>>, iters: u64) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(BATCH_LIMIT, async {
        for _ in 0..iters {
            get(tx).await;
        }
    })
    .await
    .expect("batch within the limit");
    start.elapsed()
}

fn https_vs_http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut plain, mut tls) = rt.block_on(async {
        let (plain_addr, tls_addr, ca) = spawn_proxy(dir.path()).await;
        let mut plain = plain_connect(plain_addr).await;
        let mut tls = tls_connect(tls_addr, &ca).await;
        // The proxy's pooled connection to the backend is made here too.
        get(&mut plain).await;
        get(&mut tls).await;
        (plain, tls)
    });

    let mut group = configure(c, "https_vs_http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("http", |b| {
        b.iter_custom(|iters| rt.block_on(batch(&mut plain, iters)))
    });
    group.bench_function("https", |b| {
        b.iter_custom(|iters| rt.block_on(batch(&mut tls, iters)))
    });
    group.finish();
    drop((plain, tls));
    drop(rt);
}

criterion_group!(benches, metrics_per_request, https_vs_http);
criterion_main!(benches);
