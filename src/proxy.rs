//! The request path, in named phases run in a fixed order:
//! key -> pick -> rewrite -> forward -> finish. Bodies stream through in both
//! directions; nothing here knows about TOML or files.

use crate::backend::{Backend, InFlight};
use crate::error::ProxyError;
use crate::key::Rejected;
use crate::router::Router;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the proxy answers with: the backend's streamed body, or a short
/// body of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Pooled keep-alive HTTP/1.1 client to the backends.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

/// Settings of the upstream client that are fixed for the process.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    /// How long an idle pooled backend connection is kept.
    pub pool_idle: Duration,
}

pub struct Proxy {
    router: Arc<Router>,
    client: UpstreamClient,
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
    pub fn new(router: Arc<Router>, options: UpstreamOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle)
            .build(connector);
        Proxy { router, client }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Serves one client request.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let (backend, response_timeout) = match self.pick(&req, conn) {
            Ok(picked) => picked,
            Err(e) => return finish_error(e, None, &req),
        };
        let in_flight = backend.start();
        // Cheap copies (no allocation) for the log line should the backend fail.
        let method = req.method().clone();
        let path = req.uri().path_and_query().cloned();
        let req = rewrite(req, &backend, conn);
        match forward(&self.client, req, response_timeout).await {
            Ok(resp) => finish(resp, in_flight),
            Err(e) => {
                let path = path.as_ref().map_or("/", |p| p.path());
                log_error(e, Some(&backend), &method, path);
                error_response(e)
            }
        }
    }

    /// Phases key + pick: the request's key, hashed, looked up in the live
    /// snapshot. The snapshot guard is released before returning.
    fn pick(
        &self,
        req: &Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<(Arc<Backend>, Duration), ProxyError> {
        let snap = self.router.load();
        let (_kind, key) = snap
            .keys
            .extract(req.headers(), req.uri(), conn.peer.ip())
            .map_err(|Rejected| ProxyError::MissingKey)?;
        let hash = snap.ring.hash(key.as_bytes());
        let owner = snap.ring.owner(hash);
        let backend = snap.backends.get(owner).ok_or(ProxyError::NoBackend)?;
        Ok((backend.clone(), snap.timeouts.response_headers))
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

/// Phase forward: send upstream and wait for the response headers.
async fn forward(
    client: &UpstreamClient,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(ProxyError::Timeout),
        Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect),
        Ok(Err(_)) => Err(ProxyError::Protocol),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// Phase finish for a backend's answer: drop its hop-by-hop headers and
/// stream its body to the client.
fn finish(resp: Response<Incoming>, in_flight: InFlight) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    drop(in_flight);
    Response::from_parts(parts, Either::Left(body))
}

/// Phase finish for a request the proxy answers itself.
fn finish_error(
    e: ProxyError,
    backend: Option<&Backend>,
    req: &Request<Incoming>,
) -> Response<ProxyBody> {
    log_error(e, backend, req.method(), req.uri().path());
    error_response(e)
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
