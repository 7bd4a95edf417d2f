//! Keep-alive HTTP/1.1 connections to one backend. A connection is
//! acquired (pooled or newly connected) *before* the request is handed to
//! it, so a connect failure leaves the request untouched and it can be
//! retried elsewhere. A connection returns to the pool when its response
//! body has been read to the end; an idle one is closed after
//! `timeouts.upstream_idle`, or sooner when the backend's `Keep-Alive:
//! timeout` says it will close it itself.
//!
//! A reused connection may have been closed by the backend just as the
//! request went out (the keep-alive race, RFC 9112 §9.3.1). Each
//! connection counts the bytes it reads, so a failure can be told to have
//! come before any byte of the response: such a request was never
//! answered, and the caller may send it again on a fresh connection.

use crate::http::body::RequestBody;
use crate::http::idle::{Tracked, Watch};
use crate::http::wire;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Idle connections kept per backend at most.
const MAX_IDLE: usize = 1024;

type Sender = http1::SendRequest<RequestBody>;

/// Why no connection could be had; the request was not sent.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Handshake(hyper::Error),
    /// The backend's connection cap was reached and none came free within
    /// the connect timeout: the proxy's limit, not the backend's fault.
    Busy,
    /// The proxy's own resources ran out (file descriptors, ports, buffer
    /// memory): not the backend's fault.
    Local(std::io::Error),
}

impl ConnectError {
    /// Whether the failure says something about the backend (it refused,
    /// did not answer, broke the handshake), as opposed to the proxy's own
    /// limits.
    pub fn is_backends(&self) -> bool {
        matches!(
            self,
            ConnectError::Timeout | ConnectError::Io(_) | ConnectError::Handshake(_)
        )
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
            ConnectError::Busy => write!(
                f,
                "all connections to the backend are in use (limits.max_backend_connections)"
            ),
            ConnectError::Local(e) => write!(f, "out of local resources: {e}"),
        }
    }
}

/// Whether a connect error is the proxy's own shortage (RFC-free: the OS
/// said so): out of file descriptors, of local ports, of buffer memory.
pub(crate) fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Why a request failed once handed to a connection.
#[derive(Debug)]
pub enum SendError {
    /// The connection closed before the request was written: the request
    /// comes back and may be sent again.
    NotSent(Box<Request<RequestBody>>),
    /// The request (or part of it) went out and the exchange failed.
    Failed {
        error: hyper::Error,
        /// On a reused connection, before any byte of the response: the
        /// keep-alive race, where the backend had closed the connection.
        unanswered_reuse: bool,
    },
}

/// Settings of a backend's upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle: Duration,
    /// Connections to the backend, pooled, in use or upgraded, at most.
    pub max_connections: usize,
}

/// Worker threads (set once at start) and this thread's index among them.
static WORKERS: AtomicUsize = AtomicUsize::new(1);
thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sets how many worker threads serve requests; call before any backend
/// is made.
pub fn set_workers(n: usize) {
    WORKERS.store(n.max(1), Ordering::Relaxed);
}

/// Marks the calling thread as worker `i`.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// A backend's connections: one pool per worker thread, all under the
/// backend's one cap (`limits.max_backend_connections`). A connection is
/// driven by the runtime of the worker that opened it, so a request only
/// takes connections its own worker drives: reusing one never wakes
/// another thread.
pub struct Pools {
    pools: Box<[Arc<Pool>]>,
}

impl Pools {
    pub fn new(address: &str, options: UpstreamOptions) -> Self {
        let slots = Arc::new(Semaphore::new(options.max_connections));
        let n = WORKERS.load(Ordering::Relaxed).max(1);
        Pools {
            pools: (0..n)
                .map(|_| Pool::with_slots(address, options, slots.clone()))
                .collect(),
        }
    }

    /// The calling worker's pool.
    #[inline]
    pub fn local(&self) -> &Arc<Pool> {
        let i = WORKER.with(std::cell::Cell::get);
        &self.pools[i % self.pools.len()]
    }

    /// Connections open now to the backend, pooled and in use, over all
    /// workers (they share one cap).
    pub fn open_count(&self) -> usize {
        self.pools[0].open_count()
    }

    /// Idle connections in the pools now.
    pub fn idle_count(&self) -> usize {
        self.pools.iter().map(|p| p.idle_count()).sum()
    }
}

pub struct Pool {
    /// `host:port` to connect to.
    address: Box<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections, most recently used last. A mutex held for a push
    /// or a pop only; never across an await.
    idle: Mutex<IdleList>,
    /// One permit per connection, pooled, in use or upgraded
    /// (`limits.max_backend_connections`); a semaphore so that a request
    /// at the cap waits without spinning. A connection's permit lives in
    /// its socket wrapper and comes back when the socket closes.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Requests waiting at the cap, told when a connection comes back idle.
    waiters: AtomicUsize,
    returned: Notify,
}

#[derive(Default)]
struct IdleList {
    conns: Vec<Idle>,
    /// Whether a task is sweeping expired connections out of `conns`.
    sweeping: bool,
}

struct Idle {
    tx: Sender,
    bytes_read: Arc<AtomicU64>,
    /// Closed at this instant if not used before.
    expires: Instant,
}

/// A connection checked out of the pool, on its way to carry one request.
pub struct Conn {
    tx: Sender,
    /// Bytes read on this connection so far (counted by its `BytesRead`).
    bytes_read: Arc<AtomicU64>,
    /// Whether it carried a request before.
    reused: bool,
}

impl Pool {
    pub fn new(address: &str, options: UpstreamOptions) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(options.max_connections));
        Self::with_slots(address, options, slots)
    }

    /// A pool whose connections count under `slots` (shared with other
    /// pools to the same backend).
    fn with_slots(address: &str, options: UpstreamOptions, slots: Arc<Semaphore>) -> Arc<Self> {
        Arc::new(Pool {
            address: address.into(),
            connect_timeout: options.connect_timeout,
            idle_timeout: options.pool_idle,
            idle: Mutex::new(IdleList::default()),
            slots,
            max_connections: options.max_connections,
            waiters: AtomicUsize::new(0),
            returned: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections in the pool now.
    pub fn idle_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections open now, pooled and in use.
    pub fn open_count(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// A ready connection: the most recently used idle one that is still
    /// open and within its idle time, else a new one. At the connection
    /// cap, waits up to the connect timeout for one to come back or close.
    pub async fn acquire(&self) -> Result<Conn, ConnectError> {
        self.get(true).await
    }

    /// A new connection, never a pooled one (to send again a request that a
    /// pooled connection failed to carry); waits at the cap like `acquire`.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        self.get(false).await
    }

    async fn get(&self, pooled: bool) -> Result<Conn, ConnectError> {
        let mut deadline = None;
        loop {
            if pooled {
                if let Some(conn) = self.take_idle().await {
                    return Ok(conn);
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return self.open(permit).await;
            }
            // At the cap: wait for a connection to come back idle, or for
            // one to close and free its place, until the connect timeout.
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.connect_timeout);
            let notified = self.returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let waited = async {
                if pooled && !self.lock().conns.is_empty() {
                    // Came back between the look above and the registration.
                    return Ok(None);
                }
                tokio::select! {
                    () = &mut notified => Ok(None),
                    permit = self.slots.clone().acquire_owned() => Ok(permit.ok()),
                    () = tokio::time::sleep_until(deadline) => Err(ConnectError::Busy),
                }
            }
            .await;
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            if let Some(permit) = waited? {
                return self.open(permit).await;
            }
        }
    }

    /// The most recently used idle connection that is still usable.
    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let Idle {
                mut tx,
                bytes_read,
                expires,
            } = self.lock().conns.pop()?;
            // Closed by the backend (its connection task saw the end) or
            // past its time: dropped here, which closes it.
            if tx.is_closed() || expires <= Instant::now() {
                continue;
            }
            // Usually ready at once; a connection whose response just ended
            // may need the dispatcher to catch up.
            if tx.ready().await.is_ok() {
                return Some(Conn {
                    tx,
                    bytes_read,
                    reused: true,
                });
            }
        }
    }

    /// Opens a new connection holding `permit` for as long as it lives.
    async fn open(&self, permit: OwnedSemaphorePermit) -> Result<Conn, ConnectError> {
        let local = |e: std::io::Error| {
            if is_local(&e) {
                ConnectError::Local(e)
            } else {
                ConnectError::Io(e)
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.address))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(local)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(address = &*self.address, "set_nodelay: {e}");
        }
        let bytes_read = Arc::new(AtomicU64::new(0));
        let io = Tracked {
            inner: stream,
            watch: BytesRead {
                count: bytes_read.clone(),
                _slot: permit,
            },
        };
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(address = &*address, "upstream connection: {e}");
            }
        });
        Ok(Conn {
            tx,
            bytes_read,
            reused: false,
        })
    }

    /// Puts a connection back, to be closed after `idle_for` unless used.
    fn release(self: &Arc<Self>, tx: Sender, bytes_read: Arc<AtomicU64>, idle_for: Duration) {
        if tx.is_closed() || idle_for.is_zero() {
            return;
        }
        let expires = Instant::now() + idle_for;
        let mut idle = self.lock();
        if idle.conns.len() >= MAX_IDLE {
            return;
        }
        idle.conns.push(Idle {
            tx,
            bytes_read,
            expires,
        });
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), expires));
        }
    }

    /// Drops the idle connections past their time; the earliest time left,
    /// or `None` (and no longer sweeping) when none is idle.
    fn sweep_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.conns.retain(|c| c.expires > now && !c.tx.is_closed());
        let next = idle.conns.iter().map(|c| c.expires).min();
        if next.is_none() {
            idle.sweeping = false;
        }
        next
    }
}

/// Closes a pool's idle connections as they expire, until none is idle or
/// the pool is gone. One such task per pool at most.
async fn sweep(pool: Weak<Pool>, first: Instant) {
    let mut at = first;
    loop {
        tokio::time::sleep_until(at).await;
        let Some(pool) = pool.upgrade() else { return };
        match pool.sweep_expired() {
            Some(next) => at = next,
            None => return,
        }
    }
}

impl Conn {
    /// Whether this connection carried a request before.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Sends the request; the response body, once read to its end, returns
    /// the connection to `pool`.
    pub async fn send(
        mut self,
        req: Request<RequestBody>,
        pool: &Arc<Pool>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let read_before = self.bytes_read.load(Ordering::Relaxed);
        match self.tx.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let idle_for = if keeps_alive(&parts) {
                    pool.idle_for(&parts.headers)
                } else {
                    Duration::ZERO
                };
                // An empty body may never be polled: hand the connection back now.
                let release = if idle_for.is_zero() {
                    None
                } else if body.is_end_stream() {
                    pool.release(self.tx, self.bytes_read, idle_for);
                    None
                } else {
                    Some(Release {
                        tx: self.tx,
                        bytes_read: self.bytes_read,
                        pool: pool.clone(),
                        idle_for,
                    })
                };
                let body = UpstreamBody {
                    inner: body,
                    release,
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed {
                    error: e.into_error(),
                    unanswered_reuse: self.reused
                        && self.bytes_read.load(Ordering::Relaxed) == read_before,
                }),
            },
        }
    }
}

impl Pool {
    /// How long a connection may stay idle after a response with
    /// `headers`: `upstream_idle`, or less when the backend announced its
    /// own keep-alive timeout (closed a second early, or at half of a
    /// timeout under two seconds, so the backend never closes it first).
    fn idle_for(&self, headers: &http::HeaderMap) -> Duration {
        match wire::keep_alive_timeout(headers) {
            Some(t) => {
                let early = t.saturating_sub(Duration::from_secs(1)).max(t / 2);
                early.min(self.idle_timeout)
            }
            None => self.idle_timeout,
        }
    }
}

/// Whether the backend lets the connection carry another request: not
/// after `Connection: close`, nor from an HTTP/1.0 server without
/// `keep-alive`, nor after a protocol switch (`101`).
fn keeps_alive(parts: &http::response::Parts) -> bool {
    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let has = |token: &str| wire::connection_has(&parts.headers, token);
    if parts.version == http::Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// What an unfinished response body needs to hand its connection back.
struct Release {
    tx: Sender,
    bytes_read: Arc<AtomicU64>,
    pool: Arc<Pool>,
    idle_for: Duration,
}

/// A backend's response body, streamed; hands the connection back to its
/// pool at the end of the stream. Dropped early, the connection is dropped
/// with it (its response was not read to the end).
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        // Readers stop at the last frame of a sized body without asking for
        // the end: release as soon as the body is known to be complete.
        let done = match &res {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some(r) = self.release.take() {
                r.pool.release(r.tx, r.bytes_read, r.idle_for);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the bytes read from a backend connection (one relaxed atomic
/// add per read), so a failure can be placed before or after the first
/// byte of a response.
///
/// It also holds the connection's place under the backend's cap, so the
/// place is free exactly when the socket is closed: after the last
/// response, or after the tunnel of an upgraded (WebSocket) connection.
struct BytesRead {
    count: Arc<AtomicU64>,
    _slot: OwnedSemaphorePermit,
}

impl Watch for BytesRead {
    fn read(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn written(&self, _: usize) {}
}
