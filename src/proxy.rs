//! The request path, in named phases run in a fixed order:
//! key -> pick -> rewrite -> forward -> finish. Bodies stream through in both
//! directions; an upgrade (WebSocket) that the backend accepts with 101
//! becomes a byte tunnel. Nothing here knows about TOML or files.

use crate::backend::{Backend, InFlight};
use crate::config::StickyCookie;
use crate::config::{Log, LogFormat};
use crate::error::ProxyError;
use crate::idle::{self, Activity, Tracked};
use crate::key::{GeneratedId, Key, KeyKind, NoKey};
use crate::metrics::Metrics;
use crate::router::{Reason, Router};
use crate::upstream::{connection_has, ConnectError, SendError, UpstreamBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What the proxy answers with: the backend's streamed body, or a short
/// body of its own.
pub type ProxyBody = Either<Streamed, Full<Bytes>>;

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

/// State shared by the requests of one client connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// The sticky id generated for this connection's key-less requests; a
    /// `OnceLock` so parallel HTTP/2 streams agree on one, made only when
    /// the first key-less request needs it.
    sticky_id: OnceLock<GeneratedId>,
}

impl ConnState {
    fn sticky_id(&self) -> &GeneratedId {
        self.sticky_id.get_or_init(GeneratedId::new)
    }
}

pub struct Proxy {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// Requests in flight over all backends (bounded loads); an atomic
    /// shared by every request's in-flight guard.
    total_in_flight: Arc<AtomicI64>,
    /// `key_source_total` children, indexed by `KeyKind as usize`.
    key_sources: [IntCounter; KeyKind::ALL.len()],
    key_rejected: IntCounter,
    ring_change: IntCounter,
    failover: IntCounter,
    overload: IntCounter,
}

/// What the pick phase decided, carried to the later phases.
struct Picked {
    /// The chosen backend, with the request counted in flight there.
    in_flight: InFlight,
    hash: u64,
    source: KeyKind,
    response_timeout: Duration,
    /// `health.fall` when health checks run: connect failures count too.
    fall: Option<u32>,
    log: Log,
    /// Set when the key was generated: the cookie to set on the response.
    set_cookie: Option<(Arc<StickyCookie>, GeneratedId)>,
    upgraded_idle: Duration,
}

/// A backend's response body streamed to the client; the backend counts
/// the request as in flight until the body ends or is dropped.
pub struct Streamed {
    body: UpstreamBody,
    _in_flight: InFlight,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
        Proxy {
            key_rejected: metrics.key_source("rejected"),
            ring_change: metrics.remapped("ring_change"),
            failover: metrics.remapped("failover"),
            overload: metrics.remapped("overload"),
            key_sources,
            router,
            metrics,
            total_in_flight: Arc::new(AtomicI64::new(0)),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one client request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        state: &ConnState,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let picked = match self.pick(&req, conn, state) {
            Ok(picked) => picked,
            Err(e) => {
                log_error(e, None, req.method(), req.uri().path());
                return error_response(e);
            }
        };
        // Cheap copies (no allocation) for the log lines after the request is sent.
        let method = req.method().clone();
        let path = req.uri().path_and_query().cloned();
        // An upgrade keeps its `Upgrade` value; the client side's upgraded
        // stream is taken before the request moves on.
        let upgrade = upgrade_of(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let mut req = rewrite(req, picked.in_flight.backend(), conn);
        if let Some((protocol, _)) = &upgrade {
            set_upgrade(req.headers_mut(), protocol.clone());
        }
        let (hash, fall, timeout) = (picked.hash, picked.fall, picked.response_timeout);
        let (source, log) = (picked.source, picked.log);
        let result = self
            .forward(req, picked.in_flight, hash, fall, timeout)
            .await;
        let path = path.as_ref().map_or("/", |p| p.path());
        let (mut resp, backend) = match result {
            Ok((mut resp, backend, in_flight)) => {
                let switched = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let tunnel = match upgrade {
                    Some((_, client)) if switched => {
                        let upstream = hyper::upgrade::on(&mut resp);
                        let protocol = resp.headers().get(header::UPGRADE).cloned();
                        Some((client, upstream, protocol))
                    }
                    _ => None,
                };
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Some((client, upstream, protocol)) = tunnel {
                    if let Some(protocol) = protocol {
                        set_upgrade(&mut parts.headers, protocol);
                    }
                    tokio::spawn(tunnel_bytes(
                        client,
                        upstream,
                        picked.upgraded_idle,
                        backend.name.clone(),
                    ));
                }
                let body = Streamed {
                    body,
                    _in_flight: in_flight,
                };
                (Response::from_parts(parts, Either::Left(body)), backend)
            }
            Err((e, backend)) => {
                log_error(e, Some(&backend), &method, path);
                (error_response(e), backend)
            }
        };
        if let Some((cookie, id)) = &picked.set_cookie {
            set_cookie(resp.headers_mut(), cookie, id, conn.scheme == "https");
        }
        let status = resp.status().as_u16();
        backend.metrics.request(status);
        backend
            .metrics
            .duration
            .observe(start.elapsed().as_secs_f64());
        if log.access {
            let entry = Access {
                client: conn.peer,
                method: &method,
                path,
                status,
                backend: &backend.name,
                source,
                took: start.elapsed(),
            };
            entry.write(log.format);
        }
        resp
    }

    /// Phases key + pick: the request's key, hashed, looked up in the live
    /// snapshot. The snapshot guard is released before returning.
    fn pick(
        &self,
        req: &Request<Incoming>,
        conn: ConnInfo,
        state: &ConnState,
    ) -> Result<Picked, ProxyError> {
        let snap = self.router.load();
        let mut set_cookie = None;
        let (source, key) = match snap.keys.extract(req.headers(), req.uri(), conn.peer.ip()) {
            Ok(found) => found,
            Err(NoKey::Generate) => {
                let id = state.sticky_id();
                if let Some(cookie) = &snap.sticky_cookie {
                    set_cookie = Some((cookie.clone(), *id));
                }
                (KeyKind::Generated, Key::Borrowed(id.as_bytes()))
            }
            Err(NoKey::Rejected) => {
                self.key_rejected.inc();
                return Err(ProxyError::MissingKey);
            }
        };
        self.key_sources[source as usize].inc();
        let hash = snap.ring.hash(key.as_bytes());
        let (choice, in_flight) = snap
            .choose(hash, &self.total_in_flight, None)
            .ok_or(ProxyError::NoBackend)?;
        if snap.owner_changed(hash, choice.owner) {
            self.ring_change.inc();
        }
        self.count(choice.reason);
        Ok(Picked {
            in_flight,
            hash,
            source,
            response_timeout: snap.timeouts.response_headers,
            fall: snap.health.as_ref().map(|h| h.fall),
            log: snap.log,
            set_cookie,
            upgraded_idle: snap.timeouts.upgraded_idle,
        })
    }

    fn count(&self, reason: Option<Reason>) {
        match reason {
            Some(Reason::Failover) => self.failover.inc(),
            Some(Reason::Overload) => self.overload.inc(),
            None => {}
        }
    }

    /// Phase forward: a connection first, then the request, then the
    /// response headers within the timeout. A connect failure (nothing was
    /// sent) is retried once on the next backend in the key's preference
    /// order; a pooled connection that closed before taking the request is
    /// replaced by a fresh one. Nothing is retried once bytes went out.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        mut in_flight: InFlight,
        hash: u64,
        fall: Option<u32>,
        response_timeout: Duration,
    ) -> Result<(Response<UpstreamBody>, Arc<Backend>, InFlight), (ProxyError, Arc<Backend>)> {
        let mut backend = in_flight.backend().clone();
        let mut moved_on = false;
        let mut fresh = false;
        loop {
            let conn = if fresh {
                backend.pool.connect().await
            } else {
                backend.pool.acquire().await
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    self.connect_failed(&backend, fall, &e);
                    let next = if moved_on {
                        None
                    } else {
                        self.next_backend(hash, &backend)
                    };
                    match next {
                        Some(next) => {
                            moved_on = true;
                            self.failover.inc();
                            backend = next.backend().clone();
                            retarget(&mut req, &backend);
                            in_flight = next;
                            continue;
                        }
                        None => return Err((ProxyError::Connect, backend)),
                    }
                }
            };
            match tokio::time::timeout(response_timeout, conn.send(req, &backend.pool)).await {
                Ok(Ok(resp)) => return Ok((resp, backend, in_flight)),
                Ok(Err(SendError::NotSent(unsent))) if !fresh => {
                    req = *unsent;
                    fresh = true;
                }
                Ok(Err(e)) => {
                    tracing::debug!(backend = &*backend.name, "upstream request failed: {e:?}");
                    backend.metrics.upstream_error(UPSTREAM_PROTOCOL);
                    return Err((ProxyError::Protocol, backend));
                }
                Err(_) => {
                    backend.metrics.upstream_error(UPSTREAM_TIMEOUT);
                    return Err((ProxyError::Timeout, backend));
                }
            }
        }
    }

    /// Counts a connect failure, and with health checks on, a passive
    /// health failure.
    fn connect_failed(&self, backend: &Backend, fall: Option<u32>, e: &ConnectError) {
        backend.metrics.upstream_error(UPSTREAM_CONNECT);
        tracing::debug!(backend = &*backend.name, "{e}");
        if let Some(fall) = fall {
            let why = format!("{} requests in a row could not connect ({e})", fall);
            if backend.report(backend.health.failure(fall), &why).is_some() {
                self.router.health_changed();
            }
        }
    }

    /// The next healthy backend after `failed` in the key's preference
    /// order, with the request counted in flight there.
    fn next_backend(&self, hash: u64, failed: &Arc<Backend>) -> Option<InFlight> {
        let snap = self.router.load();
        let skip = snap.backends.iter().position(|b| Arc::ptr_eq(b, failed));
        let (_, in_flight) = snap.choose(hash, &self.total_in_flight, skip)?;
        Some(in_flight)
    }
}

/// `upstream_errors_total` kinds, as indices into `UPSTREAM_ERROR_KINDS`.
const UPSTREAM_CONNECT: usize = 0;
const UPSTREAM_TIMEOUT: usize = 1;
const UPSTREAM_PROTOCOL: usize = 2;

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

    parts.version = Version::HTTP_11;
    let mut req = Request::from_parts(parts, body);
    retarget(&mut req, backend);
    req
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection:
/// upgrade` plus `Upgrade`), before the hop-by-hop headers go.
fn upgrade_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = connection_has(req.headers(), "upgrade");
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// `Connection: upgrade` and `Upgrade: protocol`, for the next hop.
fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// `Set-Cookie` for a generated sticky id.
fn set_cookie(headers: &mut HeaderMap, cookie: &StickyCookie, id: &GeneratedId, secure: bool) {
    let value = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        cookie.name,
        id.as_str(),
        cookie.max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    // The name is a validated token and the id base64url: always a valid value.
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Copies bytes both ways between the upgraded client and backend
/// connections until either side closes or nothing moves for `idle`.
async fn tunnel_bytes(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    backend: Arc<str>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(backend = &*backend, "upgrade failed: {e}");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let mut client = Tracked {
        inner: hyper_util::rt::TokioIo::new(client),
        activity: activity.clone(),
    };
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match res {
            Ok((up, down)) => tracing::debug!(backend = &*backend, up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(backend = &*backend, "upgraded connection ended: {e}"),
        },
        () = idle::until_idle(&activity, idle) => {
            tracing::debug!(backend = &*backend, "closing upgraded connection idle for {idle:?}");
        }
    }
}

/// Points the request at `backend`, keeping its path and query.
fn retarget(req: &mut Request<Incoming>, backend: &Backend) {
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // The parts are complete (scheme, authority, path), so this cannot fail.
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
}

/// Removes the hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    if let (Some(_), None) = (values.next(), values.next()) {
        // The usual single `Connection` value: taken out whole (no copy),
        // then each header it names removed by name, without allocating.
        if let Some(v) = headers.remove(header::CONNECTION) {
            for token in v.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if !token.is_empty() {
                    headers.remove(token);
                }
            }
        }
    } else if headers.contains_key(header::CONNECTION) {
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
    // The string's buffer becomes the header value: one allocation, no copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// One access-log line on stdout, when `[log] access = true`.
/// One request as the access log tells it.
struct Access<'a> {
    client: SocketAddr,
    method: &'a http::Method,
    path: &'a str,
    status: u16,
    backend: &'a str,
    source: KeyKind,
    took: Duration,
}

impl Access<'_> {
    /// One line on stdout, when `[log] access = true`.
    fn write(&self, format: LogFormat) {
        use std::io::Write;
        let Access {
            method,
            path,
            status,
            backend,
            ..
        } = *self;
        let client = self.client.ip().to_canonical();
        let source = self.source.as_str();
        let ms = self.took.as_secs_f64() * 1000.0;
        let line = match format {
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
