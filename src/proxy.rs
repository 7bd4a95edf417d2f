//! The request path, in named phases run in a fixed order:
//! key -> pick -> rewrite -> forward -> finish. Bodies stream through in both
//! directions; nothing here knows about TOML or files.

use crate::backend::Backend;
use crate::config::{Log, LogFormat};
use crate::error::ProxyError;
use crate::key::{KeyKind, Rejected};
use crate::metrics::Metrics;
use crate::router::Router;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy answers with: the backend's streamed body, or a short
/// body of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

pub struct Proxy {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// `key_source_total` children, indexed by `KeyKind as usize`.
    key_sources: [IntCounter; KeyKind::ALL.len()],
    key_rejected: IntCounter,
    ring_change: IntCounter,
}

/// What the pick phase decided, carried to the finish phase.
struct Picked {
    backend: Arc<Backend>,
    source: KeyKind,
    response_timeout: Duration,
    log: Log,
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1,
/// plus the de-facto `Proxy-Connection` and the proxy authentication pair).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Proxy {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        let key_sources = KeyKind::ALL.map(|k| metrics.key_source(k.as_str()));
        let key_rejected = metrics.key_source("rejected");
        let ring_change = metrics.remapped("ring_change");
        Proxy {
            router,
            metrics,
            key_sources,
            key_rejected,
            ring_change,
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one client request.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let picked = match self.pick(&req, conn) {
            Ok(picked) => picked,
            Err(e) => {
                log_error(e, None, req.method(), req.uri().path());
                return error_response(e);
            }
        };
        let in_flight = picked.backend.start();
        // Cheap copies (no allocation) for the log lines after the request is sent.
        let method = req.method().clone();
        let path = req.uri().path_and_query().cloned();
        let req = rewrite(req, &picked.backend, conn);
        let result = forward(&picked.backend, req, picked.response_timeout).await;
        let path = path.as_ref().map_or("/", |p| p.path());
        let resp = match result {
            Ok(resp) => strip_response(resp),
            Err(e) => {
                if let Some(kind) = e.upstream_kind() {
                    picked.backend.metrics.upstream_error(kind);
                }
                log_error(e, Some(&picked.backend), &method, path);
                error_response(e)
            }
        };
        let status = resp.status().as_u16();
        let m = &picked.backend.metrics;
        m.request(status);
        m.duration.observe(start.elapsed().as_secs_f64());
        drop(in_flight);
        if picked.log.access {
            access_log(&picked, conn, &method, path, status, start.elapsed());
        }
        resp
    }

    /// Phases key + pick: the request's key, hashed, looked up in the live
    /// snapshot. The snapshot guard is released before returning.
    fn pick(&self, req: &Request<Incoming>, conn: ConnInfo) -> Result<Picked, ProxyError> {
        let snap = self.router.load();
        let (source, key) = match snap.keys.extract(req.headers(), req.uri(), conn.peer.ip()) {
            Ok(found) => found,
            Err(Rejected) => {
                self.key_rejected.inc();
                return Err(ProxyError::MissingKey);
            }
        };
        self.key_sources[source as usize].inc();
        let hash = snap.ring.hash(key.as_bytes());
        let owner = snap.ring.owner(hash);
        if snap.owner_changed(hash, owner) {
            self.ring_change.inc();
        }
        let backend = snap.backends.get(owner).ok_or(ProxyError::NoBackend)?;
        Ok(Picked {
            backend: backend.clone(),
            source,
            response_timeout: snap.timeouts.response_headers,
            log: snap.log,
        })
    }
}

/// Phase rewrite: target the backend, drop hop-by-hop headers, add the
/// forwarding headers, speak HTTP/1.1 upstream.
fn rewrite(req: Request<Incoming>, backend: &Backend, conn: ConnInfo) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);

    let forwarded_host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = forwarded_host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST, host);
    }
    append_forwarded_for(headers, conn.peer);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));

    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // The parts are complete (scheme, authority, path), so this cannot fail.
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// Removes the hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For`: what the client sent, then the peer.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Phase forward: send upstream on the backend's pool and wait for the
/// response headers.
async fn forward(
    backend: &Backend,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(timeout, backend.client.request(req)).await {
        Err(_) => Err(ProxyError::Timeout),
        Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect),
        Ok(Err(_)) => Err(ProxyError::Protocol),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// Phase finish for a backend's answer: drop its hop-by-hop headers; its
/// body streams on to the client.
fn strip_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// One access-log line on stdout, when `[log] access = true`.
fn access_log(
    picked: &Picked,
    conn: ConnInfo,
    method: &http::Method,
    path: &str,
    status: u16,
    took: Duration,
) {
    use std::io::Write;
    let client = conn.peer.ip().to_canonical();
    let backend = &*picked.backend.name;
    let source = picked.source.as_str();
    let ms = took.as_secs_f64() * 1000.0;
    let line = match picked.log.format {
        LogFormat::Text => format!(
            "{client} {method} {path} {status} backend={backend} key_source={source} duration_ms={ms:.3}\n"
        ),
        LogFormat::Json => {
            let mut s = serde_json::json!({
                "client": client.to_string(), "method": method.as_str(), "path": path,
                "status": status, "backend": backend, "key_source": source, "duration_ms": ms,
            })
            .to_string();
            s.push('\n');
            s
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(line.as_bytes()) {
        tracing::debug!("access log write failed: {e}");
    }
}

fn log_error(e: ProxyError, backend: Option<&Backend>, method: &http::Method, path: &str) {
    let backend = backend.map_or("-", |b| &*b.name);
    let status = e.status().as_u16();
    let cause = e.body().trim_end();
    if e.log_level() == tracing::Level::DEBUG {
        tracing::debug!(backend, %method, path, status, "{cause}");
    } else {
        tracing::warn!(backend, %method, path, status, "{cause}");
    }
}

/// The proxy's own short plain-text answer for `e`.
pub fn error_response(e: ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        e.body().as_bytes(),
    ))));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
