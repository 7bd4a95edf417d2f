//! The admin listener: `/metrics`, `/healthz`, `/ring`, `/ring/lookup`.
//! Its own small hyper server, apart from the proxy's connections.

use crate::http::idle::{Activity, Deadlines, Expiry, Tracked};
use crate::observe::metrics::Metrics;
use crate::ring::degrees;
use crate::routing::snapshot::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub struct Admin {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// Set when a shutdown begins: `/healthz` answers 503 from then on, so
    /// a load balancer or Kubernetes Service stops sending traffic. An
    /// atomic: the signal handler sets it, admin requests read it.
    pub draining: AtomicBool,
}

impl Admin {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        Admin {
            router,
            metrics,
            draining: AtomicBool::new(false),
        }
    }
}

pub use crate::config::MAX_ADMIN_CONNECTIONS;

/// Serves the admin endpoints on `listener` until `shutdown` resolves. A
/// connection that sends no complete request head within
/// `timeouts.client_header_read` is closed, and so is one idle for
/// `timeouts.idle` after its requests.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    // A semaphore: a place per open connection, moved into its task.
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let counted = admin.metrics.listener("admin");
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let timeouts = admin.router.load().timeouts.clone();
        let deadlines = Deadlines {
            accepted: Instant::now(),
            header_read: timeouts.client_header_read,
            idle: timeouts.idle,
        };
        counted.total.inc();
        counted.open.inc();
        let open = counted.open.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            serve(admin, stream, peer, deadlines, permit).await;
            open.dec();
        });
    }
}

/// One admin connection, closed by its deadlines.
async fn serve(
    admin: Arc<Admin>,
    stream: TcpStream,
    peer: SocketAddr,
    deadlines: Deadlines,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: stream,
        watch: activity.clone(),
    };
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            // Answered at once: in progress only while it is made.
            let _busy = activity.request_arrived(req.version());
            let admin = admin.clone();
            let answer = admin.answer(&req);
            async move { Ok::<_, Infallible>(answer) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by `Deadlines`, from their first byte.
        .header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Set when the idle timeout closed the connection gracefully: the close
    // must be over by then (an HTTP/2 client may never answer).
    let mut closing_by = None;
    loop {
        let deadline = closing_by.unwrap_or_else(|| deadlines.next(&activity));
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, "admin connection: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing_by.is_some() {
                    return;
                }
                // Read again: a request may have come while the timer ran.
                match deadlines.expired(&activity) {
                    Some(Expiry::HeaderRead) => return,
                    Some(Expiry::Idle) => {
                        conn.as_mut().graceful_shutdown();
                        closing_by = Some(tokio::time::Instant::now() + deadlines.header_read);
                    }
                    None => {}
                }
            }
        }
    }
}

impl Admin {
    pub fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here\n".into(),
            );
            // RFC 9110 §15.5.6: a 405 names the methods that are allowed.
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => {
                for b in self.router.load().backends.iter() {
                    let (open, idle) = (b.pool.open_count(), b.pool.idle_count());
                    let active = open.saturating_sub(idle);
                    self.metrics.set_backend_connections(&b.name, idle, active);
                }
                let mut r = text(StatusCode::OK, self.metrics.encode());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" if self.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/ring" => json(&self.ring()),
            "/ring/lookup" => match req.uri().query().and_then(|q| query_value(q, "key")) {
                Some(key) => json(&self.lookup(&key)),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "usage: /ring/lookup?key=CLIENT_ID\n".into(),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /ring, /ring/lookup?key=K\n".into(),
            ),
        }
    }

    fn ring(&self) -> serde_json::Value {
        let snap = self.router.load();
        let shares = snap.ring.shares();
        let backends: Vec<_> = snap
            .backends
            .iter()
            .zip(shares)
            .map(|(b, share)| {
                serde_json::json!({
                    "name": &*b.name,
                    "address": &*b.address,
                    "weight": b.weight.get(),
                    "healthy": b.health.is_healthy(),
                    "share": share,
                })
            })
            .collect();
        serde_json::json!({
            "generation": snap.generation,
            "algorithm": snap.ring.algorithm().name(),
            "fingerprint": format!("{:016x}", snap.ring.fingerprint()),
            "backends": backends,
        })
    }

    /// Where `key` (bytes, as a header would carry them) routes now.
    fn lookup(&self, key: &[u8]) -> serde_json::Value {
        let snap = self.router.load();
        let hash = snap.ring.hash(key);
        let name = |i: usize| &*snap.backends[i].name;
        let owner = name(snap.ring.owner(hash));
        let preference: Vec<&str> = snap.ring.preference(hash).take(3).map(name).collect();
        serde_json::json!({
            // Bytes that are not UTF-8 are shown as U+FFFD.
            "key": String::from_utf8_lossy(key),
            // Who serves it now: the owner, or the failover pick while the
            // owner is down (null when every backend is down).
            "backend": snap.serving(hash).map(name),
            "owner": owner,
            "preference": preference,
            "position": hash,
            "degrees": degrees(hash),
        })
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A query parameter's value, percent-decoded to bytes (RFC 3986 §2.1: a
/// `+` stays a `+`, as it would in a header); a `%` not followed by two hex
/// digits stays.
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_encoding::percent_decode_str(v).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        let value = |q: &str| query_value(q, "key");
        assert_eq!(value("x=1&key=a%20b+c").as_deref(), Some(&b"a b+c"[..]));
        assert_eq!(value("key=a%2Bb").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(value("key=100%").as_deref(), Some(&b"100%"[..]));
        assert_eq!(value("key=%4").as_deref(), Some(&b"%4"[..]));
        assert_eq!(value("key=%e2%82%ac").as_deref(), Some("€".as_bytes()));
        // Not UTF-8: the bytes themselves, as a header would carry them.
        assert_eq!(value("key=%ff%00a").as_deref(), Some(&b"\xff\x00a"[..]));
        assert_eq!(value("other=1"), None);
    }
}
