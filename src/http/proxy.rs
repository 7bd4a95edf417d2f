//! The request path, in named phases run in a fixed order:
//! key -> pick -> rewrite -> forward -> finish. Bodies stream through in both
//! directions; an upgrade (WebSocket) that the backend accepts with 101
//! becomes a byte tunnel. Nothing here knows about TOML or files.

use crate::config::StickyCookie;
use crate::config::{Log, LogFormat};
use crate::http::body::{BodyProgress, ClientBody, RequestBody};
use crate::http::error::{ProxyError, UpstreamErrorKind};
use crate::http::idle::{self, Activity, Busy, Tracked};
use crate::http::upstream::{ConnectError, SendError, UpstreamBody};
use crate::http::wire;
use crate::observe::access_log::{AccessLog, Entry};
use crate::observe::metrics::{Metrics, PROXY_RESPONSE_CAUSES};
use crate::routing::backend::{Backend, InFlight};
use crate::routing::key::{GeneratedId, Key, KeyKind, NoKey};
use crate::routing::snapshot::{Reason, Router};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
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
    /// The connection's activity, to count a request body still arriving
    /// as a request in progress (none in tests that have no connection).
    activity: Option<Arc<Activity>>,
    /// The sticky id generated for this connection's key-less requests; a
    /// `OnceLock` so parallel HTTP/2 streams agree on one, made only when
    /// the first key-less request needs it.
    sticky_id: OnceLock<GeneratedId>,
    /// Upgraded (WebSocket) tunnels running on the connection's socket: the
    /// connection counts as open, and drains, until they end. A mutex taken
    /// once per upgrade.
    tunnels: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ConnState {
    pub fn new(activity: Arc<Activity>) -> Self {
        ConnState {
            activity: Some(activity),
            ..ConnState::default()
        }
    }

    /// The tunnels started on the connection, to wait for.
    pub fn take_tunnels(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|p| p.into_inner()))
    }

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
    /// `proxy_responses_total` children, in `PROXY_RESPONSE_CAUSES` order.
    proxy_responses: [IntCounter; PROXY_RESPONSE_CAUSES.len()],
    /// `responses_total` children, by status class (1xx..5xx).
    responses: [IntCounter; 5],
    /// The access log's writer, started by the first line to write.
    access_log: OnceLock<Option<Arc<AccessLog>>>,
}

/// What the pick phase decided, carried to the later phases.
struct Picked {
    /// The chosen backend, with the request counted in flight there.
    in_flight: InFlight,
    hash: u64,
    response_timeout: Duration,
    client_body_read: Duration,
    /// `health.fall` when health checks run: connect failures count too.
    fall: Option<u32>,
    log: Log,
    /// Set when the key was generated: the cookie to set on the response.
    set_cookie: Option<(Arc<StickyCookie>, GeneratedId)>,
    upgraded_idle: Duration,
}

/// A backend's response body streamed to the client; the backend counts
/// the request as in flight until the body ends or is dropped, and its
/// access-log line (if any) is written then, with the bytes sent.
pub struct Streamed {
    body: UpstreamBody,
    /// The backend's request in flight; its backend is charged a
    /// `protocol` upstream error if the body breaks off.
    in_flight: InFlight,
    log: Option<Box<Pending>>,
    /// The client connection's request in progress, ended with the body.
    busy: Option<Busy>,
}

impl Streamed {
    /// Keeps `busy` until the body has been sent or dropped.
    pub fn hold(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }
}

/// An access-log line waiting for the end of the response body.
struct Pending {
    entry: Entry,
    format: LogFormat,
    start: Instant,
    to: Arc<AccessLog>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // The body's bytes were counted into the entry as they went.
        write_pending(self.log.take(), 0, 0);
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            // The status is gone already: the client sees the body cut
            // short (the connection closes), and the backend is charged.
            let backend = self.in_flight.backend();
            backend
                .metrics
                .upstream_error(UpstreamErrorKind::Protocol as usize);
            static LAST: AtomicU64 = AtomicU64::new(0);
            if first_this_second(&LAST) {
                tracing::warn!(
                    backend = &*backend.name,
                    "the backend's response body broke off after its status was sent: {e}"
                );
            }
        }
        if let (Some(p), std::task::Poll::Ready(Some(Ok(frame)))) = (&mut self.log, &polled) {
            if let Some(data) = frame.data_ref() {
                p.entry.bytes_out += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Proxy {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        let key_sources = KeyKind::ALL.map(|k| metrics.key_source(k.as_str()));
        let proxy_responses = PROXY_RESPONSE_CAUSES.map(|c| metrics.proxy_response(c));
        Proxy {
            proxy_responses,
            responses: metrics.responses(),
            key_rejected: metrics.key_source("rejected"),
            ring_change: metrics.remapped("ring_change"),
            failover: metrics.remapped("failover"),
            overload: metrics.remapped("overload"),
            key_sources,
            router,
            metrics,
            total_in_flight: Arc::new(AtomicI64::new(0)),
            access_log: OnceLock::new(),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one client request. Phases key, pick and rewrite run now;
    /// forward and finish in the returned future, unless the proxy answers
    /// at once. `busy` (the client connection's request in progress) is
    /// held until the response body has been sent.
    pub fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        state: &Arc<ConnState>,
        busy: Busy,
    ) -> Reply {
        let mut job = match self.prepare(req, conn, state) {
            Ok(job) => job,
            Err(resp) => return Reply::Now(Some(resp)),
        };
        let proxy = self.clone();
        let state = state.clone();
        // The request lives in `job`, once: the futures below it borrow it.
        Reply::Forwarding(Box::pin(async move {
            let forwarded = proxy.forward(&mut job).await;
            let mut resp = proxy.answer(job, forwarded, &state);
            if let Either::Left(streamed) = resp.body_mut() {
                streamed.hold(busy);
            }
            resp
        }))
    }

    /// Phases key, pick and rewrite: the upstream request and its backend,
    /// or the proxy's own answer (counted and logged by finish).
    // The answer is as large as the job: no reason to box either.
    #[allow(clippy::result_large_err)]
    fn prepare(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        state: &ConnState,
    ) -> Result<Job, Response<ProxyBody>> {
        let start = Instant::now();
        // An upgrade keeps its `Upgrade` value; the client side's upgraded
        // stream is taken before the request moves on.
        let upgrade = wire::upgrade_of(req.version(), req.headers())
            .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let (mut parts, body) = req.into_parts();
        // Cheap copies (no allocation) for the finish phase.
        let mut done = Done {
            start,
            client: conn.peer.ip(),
            method: parts.method.clone(),
            path: parts.uri.path_and_query().cloned(),
            version: parts.version,
            key: None,
            backend: None,
            backend_counts: false,
            error: None,
            log: None,
            body: None,
        };
        let picked = match wire::check_request(&parts)
            .map_err(ProxyError::from)
            .and_then(|()| self.pick(&parts, state, &mut done))
        {
            Ok(picked) => picked,
            Err(e) => {
                let path = parts.uri.path();
                log_error(e, None, &parts.method, path);
                let mut resp = error_response(e);
                if !body.is_end_stream() && parts.version < http::Version::HTTP_2 {
                    // The body is not read: the connection cannot go on.
                    close_connection(&mut resp);
                }
                done.error = Some(e);
                done.log = Some(self.router.load().log);
                return Err(self.finish(resp, done));
            }
        };
        done.log = Some(picked.log);
        let client_version = parts.version;
        let trailers = wire::accepts_trailers(&parts);
        let backend_host = &picked.in_flight.backend().host;
        let fallback_host =
            wire::upstream_request(&mut parts, backend_host, conn.peer, conn.scheme, trailers);
        if let Some((protocol, _)) = &upgrade {
            wire::set_upgrade(&mut parts.headers, protocol.clone());
        }
        let (body, progress) = if body.is_end_stream() {
            (RequestBody::Empty, None)
        } else {
            if body.size_hint().exact().is_none() {
                // Framed by chunks upstream whatever the method (left to
                // itself, the client side would send a GET's body as none).
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let (mut body, progress) = ClientBody::new(body, picked.client_body_read);
            // In progress until the body is all read, even when the backend
            // answered first.
            if let Some(activity) = &state.activity {
                body.hold(activity.request_started());
            }
            (RequestBody::Client(body), Some(progress))
        };
        Ok(Job {
            req: Some(Request::from_parts(parts, body)),
            picked,
            done,
            upgrade,
            progress,
            client_version,
            fallback_host,
            scheme: conn.scheme,
        })
    }

    /// Phases response rewrite and finish: the backend's response (or the
    /// proxy's answer for why there is none) as the client gets it; an
    /// accepted upgrade starts its tunnel.
    fn answer(&self, job: Job, forwarded: Forwarded, state: &ConnState) -> Response<ProxyBody> {
        let Job {
            picked,
            mut done,
            upgrade,
            progress,
            client_version,
            scheme,
            ..
        } = job;
        done.body = progress;
        let path = done.path.as_ref().map_or("/", |p| p.path());
        let mut tunnel = None;
        let (mut resp, backend) = match forwarded {
            Ok((resp, backend))
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() =>
            {
                let e = ProxyError::UnaskedUpgrade;
                self.upstream_failed(&backend, e);
                log_error(e, Some(&backend), &done.method, path);
                done.error = Some(e);
                (error_response(e), backend)
            }
            Ok((resp, backend))
                if client_version != http::Version::HTTP_11
                    && wire::has_other_codings(resp.headers()) =>
            {
                let e = ProxyError::Coding;
                log_error(e, Some(&backend), &done.method, path);
                done.error = Some(e);
                (error_response(e), backend)
            }
            Ok((mut resp, backend)) => {
                let mut protocol = None;
                if let Some((_, client)) = upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let upstream = hyper::upgrade::on(&mut resp);
                        protocol = resp.headers().get(header::UPGRADE).cloned();
                        tunnel = Some(Tunnel {
                            client,
                            upstream,
                            idle: picked.upgraded_idle,
                            backend: backend.name.clone(),
                            log: None,
                        });
                    }
                }
                let (mut parts, body) = resp.into_parts();
                wire::downstream_response(&mut parts);
                if let Some(protocol) = protocol {
                    wire::set_upgrade(&mut parts.headers, protocol);
                }
                let body = Streamed {
                    body,
                    in_flight: picked.in_flight,
                    log: None,
                    busy: None,
                };
                done.backend_counts = true;
                (Response::from_parts(parts, Either::Left(body)), backend)
            }
            Err((e, backend)) => {
                log_error(e, Some(&backend), &done.method, path);
                let mut resp = error_response(e);
                if e.ends_connection() && client_version < http::Version::HTTP_2 {
                    close_connection(&mut resp);
                }
                // The client's fault or the proxy's own limit: the
                // backend's request count and latency stay its own.
                done.backend_counts = e.counts_for_backend();
                done.error = Some(e);
                (resp, backend)
            }
        };
        if let Some((cookie, id)) = &picked.set_cookie {
            set_cookie(resp.headers_mut(), cookie, id, scheme == "https");
        }
        done.backend = Some(backend);
        let mut resp = self.finish(resp, done);
        if let Some(mut tunnel) = tunnel {
            // The tunnel's access-log line waits for its end, with the
            // bytes it carried.
            if let Either::Left(streamed) = resp.body_mut() {
                tunnel.log = streamed.log.take();
            }
            let running = tokio::spawn(tunnel.run());
            state
                .tunnels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(running);
        }
        resp
    }

    /// Phase finish: every response to a client passes here exactly once,
    /// the backend's and the proxy's own alike. It is counted in
    /// `responses_total`, by cause in `proxy_responses_total` if the proxy
    /// made it, in the chosen backend's `requests_total` and latency if the
    /// backend answered, and (with `[log] access`) given its access-log
    /// line, written when its body ends.
    fn finish(&self, mut resp: Response<ProxyBody>, done: Done) -> Response<ProxyBody> {
        let status = resp.status().as_u16();
        self.sent(status);
        if let Some(e) = done.error {
            self.proxy_response(e.cause());
        }
        if let (true, Some(b)) = (done.backend_counts, &done.backend) {
            b.metrics.request(status);
            b.metrics
                .duration
                .observe(done.start.elapsed().as_secs_f64());
        }
        let Some(log) = done.log.filter(|l| l.access) else {
            return resp;
        };
        let Some(to) = self.access_log() else {
            return resp;
        };
        let start = done.start;
        let mut entry = done.entry(status);
        match resp.body_mut() {
            Either::Left(streamed) => {
                streamed.log = Some(Box::new(Pending {
                    entry,
                    format: log.format,
                    start,
                    to,
                }));
            }
            Either::Right(full) => {
                entry.bytes_out = full.size_hint().exact().unwrap_or(0);
                entry.duration = start.elapsed();
                to.write(entry, log.format);
            }
        }
        resp
    }

    /// The access log's writer, started on first use; `None` (every line
    /// dropped and counted) if its thread cannot be started.
    fn access_log(&self) -> Option<Arc<AccessLog>> {
        let log = self.access_log.get_or_init(|| {
            let dropped = self.metrics.access_log_dropped.clone();
            match AccessLog::stdout(dropped) {
                Ok(log) => Some(Arc::new(log)),
                Err(e) => {
                    tracing::error!("access log: cannot start its writer thread: {e}");
                    None
                }
            }
        });
        if log.is_none() {
            self.metrics.access_log_dropped.inc();
        }
        log.clone()
    }

    /// Counts a response the proxy made itself, by cause.
    fn proxy_response(&self, cause: &str) {
        if let Some(i) = PROXY_RESPONSE_CAUSES.iter().position(|c| *c == cause) {
            self.proxy_responses[i].inc();
        }
    }

    /// Counts a response sent to a client in `responses_total`.
    fn sent(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }

    /// Accounts for a connection closed because its PROXY protocol header
    /// was missing or malformed (nothing was forwarded, nothing answered):
    /// counted, and logged at most once a second.
    pub fn proxy_header_refused(&self, peer: SocketAddr, why: &str) {
        self.metrics.proxy_protocol_refused.inc();
        static LAST: AtomicU64 = AtomicU64::new(0);
        if first_this_second(&LAST) {
            tracing::warn!(%peer, "closing connection: {why} (listen.proxy_protocol is on)");
        }
    }

    /// Accounts for an answer hyper's HTTP/1 parser made itself when it
    /// refused a request head from `client`: 431 for one too large, 400 for
    /// any other fault. Counted as the finish phase counts, with an
    /// access-log line that has no method or path.
    pub fn parser_rejected(&self, e: &hyper::Error, client: SocketAddr) {
        let (status, cause) = if e.is_parse_too_large() {
            (431, "header_too_large")
        } else if e.is_parse() {
            (400, "bad_request")
        } else {
            return;
        };
        self.proxy_response(cause);
        self.sent(status);
        let log = self.router.load().log;
        if !log.access {
            return;
        }
        if let Some(to) = self.access_log() {
            let entry = Entry {
                time: std::time::SystemTime::now(),
                client: client.ip(),
                method: None,
                path: None,
                protocol: http::Version::HTTP_11,
                status,
                backend: None,
                upstream: None,
                key_source: None,
                key_hash: None,
                bytes_in: 0,
                bytes_out: 0,
                duration: Duration::ZERO,
                cause: Some(cause),
            };
            to.write(entry, log.format);
        }
    }

    /// Phases key + pick: the request's key, hashed, looked up in the live
    /// snapshot. The snapshot guard is released before returning. `done`
    /// gets the client's address, the key's source and its hash as soon as
    /// they are known.
    fn pick(
        &self,
        req: &http::request::Parts,
        state: &ConnState,
        done: &mut Done,
    ) -> Result<Picked, ProxyError> {
        let snap = self.router.load();
        if req.version == http::Version::HTTP_2
            && wire::header_list_size(req) > snap.limits.max_request_header_bytes
        {
            return Err(ProxyError::HeaderTooLarge);
        }
        if !snap.trusted_proxies.is_empty() {
            done.client = wire::client_address(&req.headers, done.client, &snap.trusted_proxies);
        }
        let mut set_cookie = None;
        let (source, key) = match snap.keys.extract(&req.headers, &req.uri, done.client) {
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
        done.key = Some((source, hash));
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
            response_timeout: snap.timeouts.response_headers,
            client_body_read: snap.timeouts.client_body_read,
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
    /// order. A request a reused connection failed to carry, because the
    /// backend had closed it (given back unsent, or an idempotent request
    /// without a body answered with no byte), goes once more on a fresh
    /// connection. Nothing else is sent twice.
    ///
    /// The request stays in `job` (its future holds no copy of it): taken
    /// when handed to a connection, given back if unsent, or replaced by
    /// the copy to send again after the keep-alive race.
    async fn forward(&self, job: &mut Job) -> Forwarded {
        let mut backend = job.picked.in_flight.backend().clone();
        let mut moved_on = false;
        let mut fresh = false;
        loop {
            let ready = if fresh {
                None
            } else {
                backend.pool.local().take_ready()
            };
            // The slower ways to a connection (connect, wait at the cap)
            // are boxed futures of their own, so that this one stays small.
            let conn = match ready {
                Some(conn) => Ok(conn),
                None if fresh => Box::pin(backend.pool.local().connect()).await,
                None => Box::pin(backend.pool.local().acquire()).await,
            };
            let conn = match conn {
                Ok(c) => c,
                Err(ConnectError::Busy) => return Err((ProxyError::BackendBusy, backend)),
                Err(ConnectError::Local(e)) => {
                    local_shortage(&backend, &e);
                    return Err((ProxyError::LocalResources, backend));
                }
                Err(e) => {
                    self.connect_failed(&backend, job.picked.fall, &e);
                    let next = if moved_on {
                        None
                    } else {
                        self.next_backend(job.picked.hash, &backend)
                    };
                    match next {
                        Some(next) => {
                            moved_on = true;
                            self.failover.inc();
                            backend = next.backend().clone();
                            if let (true, Some(req)) = (job.fallback_host, &mut job.req) {
                                req.headers_mut().insert(header::HOST, backend.host.clone());
                            }
                            job.picked.in_flight = next;
                            continue;
                        }
                        None => return Err((ProxyError::Connect, backend)),
                    }
                }
            };
            // In a block: the request and the connection are gone into
            // the future before it is awaited, and take no room in this one.
            let sending = {
                let conn = conn;
                let Some(req) = job.req.take() else {
                    // Not reached: the request is back in `job` whenever the
                    // loop goes round.
                    return Err((ProxyError::Protocol, backend));
                };
                // The keep-alive race can only take a request on a reused
                // connection; keep what it takes to send such a request
                // again.
                if conn.reused() && !fresh {
                    job.req = replayable(&req);
                }
                Timed {
                    sending: conn.send(req, backend.pool.local(), job.picked.response_timeout),
                    deadline: tokio::time::sleep(job.picked.response_timeout),
                    period: job.picked.response_timeout,
                    body: job.progress.as_deref(),
                }
            };
            let sent = sending.await;
            let failed = match sent {
                Ok(resp) => return Ok((resp, backend)),
                Err(failed) => failed,
            };
            match failed {
                Sent::Error(SendError::NotSent(unsent)) if !fresh => {
                    job.req = Some(*unsent);
                }
                Sent::Error(SendError::Failed {
                    unanswered_reuse: true,
                    ..
                }) if job.req.is_some() => {
                    tracing::debug!(
                        backend = &*backend.name,
                        "the backend closed a reused connection under a request: sending it again on a new connection"
                    );
                }
                failed => {
                    let progress = job.progress.as_deref();
                    let e = match (progress.and_then(BodyProgress::fault), failed) {
                        (Some(fault), _) => ProxyError::from(fault),
                        (None, Sent::TimedOut) => ProxyError::Timeout,
                        (None, Sent::Error(e)) => {
                            tracing::debug!(
                                backend = &*backend.name,
                                "upstream request failed: {e:?}"
                            );
                            ProxyError::Protocol
                        }
                    };
                    self.upstream_failed(&backend, e);
                    return Err((e, backend));
                }
            }
            fresh = true;
        }
    }

    /// Counts a failure in `upstream_errors_total` if it was the backend's.
    fn upstream_failed(&self, backend: &Backend, e: ProxyError) {
        if let Some(kind) = e.upstream_kind() {
            backend.metrics.upstream_error(kind as usize);
        }
    }

    /// Counts a connect failure, and with health checks on, a passive
    /// health failure.
    fn connect_failed(&self, backend: &Backend, fall: Option<u32>, e: &ConnectError) {
        backend
            .metrics
            .upstream_error(UpstreamErrorKind::Connect as usize);
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

/// Logs that the proxy itself ran out of something while connecting to
/// `backend`: a warning at most once a second, however many requests hit
/// it, since under such a shortage every request would.
fn local_shortage(backend: &Backend, e: &std::io::Error) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if first_this_second(&LAST) {
        tracing::warn!(
            backend = &*backend.name,
            "cannot open a backend connection: {e}; this is the proxy's own limit (raise the open files limit or lower limits.max_connections), not the backend's fault"
        );
    }
}

/// A request on its way to a backend: what phases key, pick and rewrite
/// made of it, carried through forward and finish.
struct Job {
    /// The upstream request; `None` while a connection has it (unless a
    /// copy to send again after the keep-alive race was kept).
    req: Option<Request<RequestBody>>,
    picked: Picked,
    done: Done,
    /// The protocol asked for (`Upgrade`) and the client side's upgraded
    /// stream, once the `101` is sent.
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The client body's progress, if it has one.
    progress: Option<Arc<BodyProgress>>,
    client_version: http::Version,
    /// Whether `Host` is the backend's own address (set again on failover).
    fallback_host: bool,
    /// `http` or `https`: the client connection's.
    scheme: &'static str,
}

/// The backend's response head and the backend that sent it, or why there
/// is none and the backend last tried.
type Forwarded = Result<(Response<UpstreamBody>, Arc<Backend>), (ProxyError, Arc<Backend>)>;

/// The answer to one request, as hyper's service future: at once when the
/// proxy answers itself (nothing allocated), else the forwarding future,
/// boxed (hyper keeps a slot the size of its service future in every
/// connection, idle or not).
// The proxy's own answer inline (272 bytes per connection) so that it
// needs no allocation.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Now(Option<Response<ProxyBody>>),
    Forwarding(std::pin::Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

impl Future for Reply {
    type Output = Result<Response<ProxyBody>, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Now(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                // Polled again after its answer: nothing left to give.
                None => Poll::Pending,
            },
            Reply::Forwarding(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

/// How one attempt to send a request ended without a response.
enum Sent {
    Error(SendError),
    TimedOut,
}

pin_project_lite::pin_project! {
    /// A request sent, until its response head is in. The backend has
    /// `period` (`timeouts.response_headers`) to answer. A request body
    /// moves the clock: the backend has `period` from the body's last move
    /// toward it (a frame it took, or the body's end), and none runs while
    /// the body waits for the client, whose own read timeout applies.
    struct Timed<'a, F> {
        #[pin]
        sending: F,
        #[pin]
        deadline: tokio::time::Sleep,
        period: Duration,
        body: Option<&'a BodyProgress>,
    }
}

impl<F> Future for Timed<'_, F>
where
    F: Future<Output = Result<Response<UpstreamBody>, SendError>>,
{
    type Output = Result<Response<UpstreamBody>, Sent>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(res) = this.sending.poll(cx) {
            return Poll::Ready(res.map_err(Sent::Error));
        }
        loop {
            std::task::ready!(this.deadline.as_mut().poll(cx));
            let Some(body) = this.body else {
                return Poll::Ready(Err(Sent::TimedOut));
            };
            let now = tokio::time::Instant::now();
            let due = body.backend_due(*this.period).unwrap_or(now + *this.period);
            if due <= now {
                return Poll::Ready(Err(Sent::TimedOut));
            }
            this.deadline.as_mut().reset(due);
        }
    }
}

/// A copy of a request that can be sent again as it is after the
/// keep-alive race: no body (so none went out) and an idempotent method,
/// since a proxy must not retry any other (RFC 9110 §9.2.2): the race
/// cannot be told apart from a backend that took the request and died.
fn replayable(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !matches!(req.body(), RequestBody::Empty) || !wire::is_idempotent(req.method()) {
        return None;
    }
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
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

/// An upgraded connection (WebSocket) to run once the `101` is sent.
struct Tunnel {
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    backend: Arc<str>,
    /// The access-log line, written at the tunnel's end.
    log: Option<Box<Pending>>,
}

impl Tunnel {
    /// Copies bytes both ways between the upgraded client and backend
    /// connections until either side closes or nothing moves for `idle`.
    async fn run(self) {
        let Tunnel {
            client,
            upstream,
            idle,
            backend,
            log,
        } = self;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(backend = &*backend, "upgrade failed: {e}");
                write_pending(log, 0, 0);
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let client = Tracked {
            inner: hyper_util::rt::TokioIo::new(client),
            watch: activity.clone(),
        };
        let upstream = hyper_util::rt::TokioIo::new(upstream);
        let (client_in, mut client_out) = tokio::io::split(client);
        let (upstream_in, mut upstream_out) = tokio::io::split(upstream);
        let mut client_in = Counted::new(client_in);
        let mut upstream_in = Counted::new(upstream_in);
        // The tunnel ends when either side has said all it will (its end of
        // stream, copied on and flushed), or on an error, or when idle: both
        // connections then close, so a backend that hung up never keeps its
        // place under the connection cap for a client that lingers.
        tokio::select! {
            res = tokio::io::copy(&mut client_in, &mut upstream_out) => {
                tracing::debug!(backend = &*backend, "upgraded connection: the client ended it ({res:?} bytes)");
            }
            res = tokio::io::copy(&mut upstream_in, &mut client_out) => {
                tracing::debug!(backend = &*backend, "upgraded connection: the backend ended it ({res:?} bytes)");
            }
            () = idle::until_idle(&activity, idle) => {
                tracing::debug!(backend = &*backend, "closing upgraded connection idle for {idle:?}");
            }
        }
        write_pending(log, client_in.bytes, upstream_in.bytes);
    }
}

/// Writes a waiting access-log line with the bytes a tunnel carried.
fn write_pending(log: Option<Box<Pending>>, bytes_in: u64, bytes_out: u64) {
    if let Some(p) = log {
        let Pending {
            mut entry,
            format,
            start,
            to,
        } = *p;
        entry.bytes_in += bytes_in;
        entry.bytes_out += bytes_out;
        entry.duration = start.elapsed();
        to.write(entry, format);
    }
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Counted { inner, bytes: 0 }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.bytes += (buf.filled().len() - before) as u64;
        polled
    }
}

/// What the finish phase needs to know of a request, gathered on the way.
struct Done {
    start: Instant,
    /// The client's address: the peer's (or the PROXY header's), or the
    /// one `X-Forwarded-For` names when the peer is a trusted proxy.
    client: std::net::IpAddr,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    version: http::Version,
    /// Where the key came from and its hash, once picked.
    key: Option<(KeyKind, u64)>,
    /// The backend chosen (the last one tried).
    backend: Option<Arc<Backend>>,
    /// Whether the response counts as the backend's (its answer or its fault).
    backend_counts: bool,
    /// The proxy's own answer: why.
    error: Option<ProxyError>,
    /// The snapshot's `[log]`, once read.
    log: Option<Log>,
    /// The client body's progress (bytes read), if it had one.
    body: Option<Arc<BodyProgress>>,
}

impl Done {
    /// The access-log entry, less what only the body's end can tell.
    fn entry(self, status: u16) -> Entry {
        let elapsed = self.start.elapsed();
        Entry {
            time: std::time::SystemTime::now() - elapsed,
            client: self.client,
            method: Some(self.method),
            path: self.path,
            protocol: self.version,
            status,
            upstream: self.backend.as_ref().map(|b| b.address.clone()),
            backend: self.backend.map(|b| b.name.clone()),
            key_source: self.key.map(|(k, _)| k.as_str()),
            key_hash: self.key.map(|(_, h)| h),
            bytes_in: self.body.as_ref().map_or(0, |b| b.bytes()),
            bytes_out: 0,
            duration: elapsed,
            cause: self.error.map(ProxyError::cause),
        }
    }
}

fn log_error(e: ProxyError, backend: Option<&Backend>, method: &http::Method, path: &str) {
    let backend = backend.map_or("-", |b| &*b.name);
    let status = e.status().as_u16();
    let cause = e.body().trim_end();
    if e.log_level() == tracing::Level::DEBUG {
        tracing::debug!(backend, %method, path, status, "{cause}");
    } else if once_a_second(e) {
        tracing::warn!(backend, %method, path, status, "{cause}");
    }
}

/// Whether a warning for `e` may be logged now: at most one a second per
/// kind of failure, so that an outage or a flood (every request failing
/// alike) does not flood the log; `proxy_responses_total` counts them all.
fn once_a_second(e: ProxyError) -> bool {
    const KINDS: usize = 8;
    static LAST: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
    let slot = match e.status().as_u16() {
        502 => 0,
        503 => 1,
        504 => 2,
        _ => 3,
    } + if e.upstream_kind().is_some() { 4 } else { 0 };
    first_this_second(&LAST[slot % KINDS])
}

/// Whether a second or more has passed since the last call that returned
/// `true` for `last` (which holds its time, in ms since the Unix epoch):
/// the one rate limit every repeated warning here goes through.
fn first_this_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let before = last.load(Ordering::Relaxed);
    // A full second since the last one (not a new calendar second: two
    // lines 50 ms apart across a second's boundary are one too many).
    if before != 0 && now.saturating_sub(before) < 1000 {
        return false;
    }
    last.compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Says `Connection: close` on an HTTP/1 answer after which the
/// connection cannot carry another request (RFC 9112 §9.6): said, not only
/// done, so the client sends nothing more on it.
fn close_connection(resp: &mut Response<ProxyBody>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_a_full_second_apart() {
        let last = AtomicU64::new(0);
        assert!(first_this_second(&last));
        assert!(!first_this_second(&last), "twice at once");
        // 900 ms ago is not a second ago, whatever the calendar second.
        last.fetch_sub(900, Ordering::Relaxed);
        assert!(!first_this_second(&last));
        last.fetch_sub(200, Ordering::Relaxed);
        assert!(first_this_second(&last));
    }
}
