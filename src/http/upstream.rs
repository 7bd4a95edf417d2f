//! Keep-alive HTTP/1.1 connections to one backend. A connection is
//! acquired (pooled or newly connected) *before* the request is handed to
//! it, so a connect failure leaves the request untouched and it can be
//! retried elsewhere. A connection returns to the pool when its response
//! body has been read to the end; an idle one is closed after
//! `timeouts.upstream_idle`, or sooner when the backend's `Keep-Alive:
//! timeout` says it will close it itself.
//!
//! A connection has no task of its own: its I/O (hyper's client-side
//! dispatcher) is polled by the task that is using it, the client
//! connection's, alongside the response it waits for and then the body it
//! streams. A request thus costs no wake-up of another task and no
//! channel hop back. An idle connection is not watched: a close the
//! backend sent meanwhile is read by the first poll of its I/O after it is
//! taken from the pool, before the request is written, and the request
//! comes back unsent.
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
use std::future::Future;
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
/// A connection's I/O: hyper's client-side dispatcher with upgrades (a type
/// hyper does not name), boxed once per connection.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

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
/// backend's one cap (`limits.max_backend_connections`). A socket's
/// readiness is reported by the runtime of the worker that opened it, so a
/// request only takes connections its own worker opened: reusing one never
/// wakes another thread.
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
    address: Arc<str>,
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
    link: Link,
    /// Closed at this instant if not used before.
    expires: Instant,
}

/// One connection to a backend: the handle requests go in by and the
/// future that does its I/O, polled by whichever task uses the connection.
struct Link {
    tx: Sender,
    /// `None` once the connection has ended (closed, failed or upgraded);
    /// dropping it closes the socket and fails a request still waiting.
    driver: Option<Driver>,
    /// Bytes read and written on this connection so far (counted by its
    /// `Counted` watch).
    bytes: Arc<ByteCounts>,
    address: Arc<str>,
}

impl Link {
    /// Polls the connection's I/O (writes what is queued, reads what has
    /// arrived); whether the connection has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return true;
        };
        match driver.as_mut().poll(cx) {
            Poll::Pending => false,
            Poll::Ready(res) => {
                if let Err(e) = res {
                    tracing::debug!(address = &*self.address, "upstream connection: {e}");
                }
                self.driver = None;
                true
            }
        }
    }

    /// Drives the connection until it is ready for a request: `false` if
    /// it ended instead.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if self.poll_io(cx) {
                return Poll::Ready(false);
            }
            self.tx.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Drives the connection to its end, in a task of its own: for an
    /// upgrade, whose tunnel takes the socket over once the `101` has been
    /// read (the dispatcher then ends).
    fn spawn_to_end(mut self) {
        if self.driver.is_none() {
            return;
        }
        tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                if self.poll_io(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        });
    }
}

/// A connection checked out of the pool, on its way to carry one request.
pub struct Conn {
    link: Link,
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

    /// The most recently used idle connection if it is ready for a request
    /// now, without waiting: the common case, taken with no future. `None`
    /// leaves the slower cases (none idle, one to drop or to wait for) to
    /// `acquire`.
    pub fn take_ready(&self) -> Option<Conn> {
        let mut idle = self.lock();
        let top = idle.conns.last()?;
        if !top.link.tx.is_ready() || top.expires <= Instant::now() {
            return None;
        }
        let Idle { link, .. } = idle.conns.pop()?;
        Some(Conn { link, reused: true })
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
            let Idle { mut link, expires } = self.lock().conns.pop()?;
            // Past its time: dropped here, which closes it.
            if link.tx.is_closed() || expires <= Instant::now() {
                continue;
            }
            // Usually ready at once: it went back to the pool only once
            // ready. A close the backend sent while it sat idle is read by
            // the first poll of its I/O, before the request is written, and
            // the request comes back unsent.
            if link.tx.is_ready() || link.ready().await {
                return Some(Conn { link, reused: true });
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
        let bytes = Arc::new(ByteCounts::default());
        let io = Tracked {
            inner: stream,
            watch: Counted {
                count: bytes.clone(),
                _slot: permit,
            },
        };
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(Conn {
            link: Link {
                tx,
                driver: Some(Box::pin(conn.with_upgrades())),
                bytes,
                address: self.address.clone(),
            },
            reused: false,
        })
    }

    /// Puts a connection whose response has ended back, to be closed after
    /// `idle_for` unless used. One still sending its request body (the
    /// backend answered before reading it all) finishes sending it in a
    /// task of its own, and comes back once ready for another request; it
    /// is closed instead if `stall` passes without a byte written to the
    /// backend (a backend that stopped reading would hold the client and
    /// the connection for ever).
    fn release(self: &Arc<Self>, mut link: Link, idle_for: Duration, stall: Duration) {
        if link.driver.is_none() || link.tx.is_closed() || idle_for.is_zero() {
            return;
        }
        if !link.tx.is_ready() {
            let pool = self.clone();
            tokio::spawn(async move {
                let mut written = link.bytes.written.load(Ordering::Relaxed);
                loop {
                    match tokio::time::timeout(stall, link.ready()).await {
                        Ok(true) => return pool.release(link, idle_for, stall),
                        Ok(false) => return,
                        Err(_) => {
                            let now = link.bytes.written.load(Ordering::Relaxed);
                            if now == written {
                                tracing::debug!(
                                    address = &*link.address,
                                    "the rest of a request body did not move for {stall:?} after the response: closing the connection"
                                );
                                return;
                            }
                            written = now;
                        }
                    }
                }
            });
            return;
        }
        let expires = Instant::now() + idle_for;
        let mut idle = self.lock();
        if idle.conns.len() >= MAX_IDLE {
            return;
        }
        idle.conns.push(Idle { link, expires });
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
        idle.conns
            .retain(|c| c.expires > now && !c.link.tx.is_closed());
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

    /// Hands the request to the connection at once (no await: the request
    /// is not kept in the caller's future) and returns the future of the
    /// response head, which drives the connection's I/O in the calling
    /// task. The response body, once read to its end, returns the
    /// connection to `pool`; the rest of a request body the backend
    /// answered early may then go `stall` at most without a byte written.
    pub fn send(
        self,
        req: Request<RequestBody>,
        pool: &Arc<Pool>,
        stall: Duration,
    ) -> Sending<'_, impl Future<Output = Answered>> {
        let Conn { mut link, reused } = self;
        let read_before = link.bytes.read.load(Ordering::Relaxed);
        let response = link.tx.try_send_request(req);
        Sending {
            link: Some(link),
            response,
            pool,
            reused,
            read_before,
            stall,
        }
    }
}

/// What hyper's dispatcher answers for one request.
type Answered = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>;

pin_project_lite::pin_project! {
    /// A request handed to a backend connection, until its response head
    /// is in (`Conn::send`). Polling it polls the connection's I/O first,
    /// which writes the request and reads the answer, so the response is
    /// found without another wake-up.
    pub struct Sending<'a, F> {
        link: Option<Link>,
        #[pin]
        response: F,
        pool: &'a Arc<Pool>,
        reused: bool,
        read_before: u64,
        stall: Duration,
    }
}

impl<F: Future<Output = Answered>> Future for Sending<'_, F> {
    type Output = Result<Response<UpstreamBody>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(link) = this.link else {
            // Polled again after its answer: nothing left to give.
            return Poll::Pending;
        };
        link.poll_io(cx);
        let res = std::task::ready!(this.response.poll(cx));
        let Some(link) = this.link.take() else {
            return Poll::Pending;
        };
        Poll::Ready(answered(
            cx,
            res,
            link,
            this.pool,
            *this.reused,
            *this.read_before,
            *this.stall,
        ))
    }
}

/// A response body's first frame, kept small: data inline (the usual
/// case), anything else (trailers of an empty body) boxed, since every
/// response carries this field.
enum First {
    Data(Bytes),
    Other(Box<Frame<Bytes>>),
}

/// The first frame of `body` if it is in already, reading what the
/// connection has received (without waiting); its error if the body broke
/// off there.
fn first_frame(
    cx: &mut Context<'_>,
    body: &mut Incoming,
    link: &mut Link,
) -> Result<Option<First>, hyper::Error> {
    let mut polled = Pin::new(&mut *body).poll_frame(cx);
    if polled.is_pending() {
        // The dispatcher decodes body bytes only once they are asked for.
        link.poll_io(cx);
        polled = Pin::new(&mut *body).poll_frame(cx);
    }
    match polled {
        Poll::Ready(Some(Ok(frame))) => Ok(Some(match frame.into_data() {
            Ok(data) => First::Data(data),
            Err(frame) => First::Other(Box::new(frame)),
        })),
        Poll::Ready(Some(Err(e))) => Err(e),
        Poll::Ready(None) | Poll::Pending => Ok(None),
    }
}

/// The response head (its body carrying the connection), or why there is
/// none.
fn answered(
    cx: &mut Context<'_>,
    res: Answered,
    mut link: Link,
    pool: &Arc<Pool>,
    reused: bool,
    read_before: u64,
    stall: Duration,
) -> Result<Response<UpstreamBody>, SendError> {
    match res {
        Ok(resp) => {
            let (parts, mut body) = resp.into_parts();
            if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // The tunnel takes the socket over once the dispatcher
                // has read the `101` to its end.
                link.spawn_to_end();
                let body = UpstreamBody {
                    inner: body,
                    first: None,
                    link: None,
                };
                return Ok(Response::from_parts(parts, body));
            }
            let idle_for = if keeps_alive(&parts) {
                pool.idle_for(&parts.headers)
            } else {
                Duration::ZERO
            };
            if body.is_end_stream() && !idle_for.is_zero() {
                // An empty body may never be polled: hand the
                // connection back now.
                pool.release(link, idle_for, stall);
                let body = UpstreamBody {
                    inner: body,
                    first: None,
                    link: None,
                };
                return Ok(Response::from_parts(parts, body));
            }
            // The body's first bytes, if they came with the head: a body
            // that breaks off there would otherwise reach the client as
            // nothing at all (the head goes out with the first bytes), its
            // status counted as sent. It is the backend's 502 instead.
            let first = match first_frame(cx, &mut body, &mut link) {
                Ok(first) => first,
                Err(error) => {
                    return Err(SendError::Failed {
                        error,
                        unanswered_reuse: false,
                    })
                }
            };
            let body = UpstreamBody {
                inner: body,
                first,
                link: Some(Streaming {
                    link,
                    pool: pool.clone(),
                    idle_for,
                    stall,
                }),
            };
            Ok(Response::from_parts(parts, body))
        }
        Err(mut e) => match e.take_message() {
            Some(req) => Err(SendError::NotSent(Box::new(req))),
            None => Err(SendError::Failed {
                error: e.into_error(),
                unanswered_reuse: reused && link.bytes.read.load(Ordering::Relaxed) == read_before,
            }),
        },
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

/// The connection under a response body being streamed, and what it
/// takes to hand it back at the body's end.
struct Streaming {
    link: Link,
    pool: Arc<Pool>,
    /// Zero when the connection is not to be reused.
    idle_for: Duration,
    /// How long the rest of a request body may go without a byte written,
    /// once the response is in (see `Pool::release`).
    stall: Duration,
}

/// A backend's response body, streamed. Polling it also drives its
/// connection's I/O; at the end of the stream the connection goes back to
/// its pool. Dropped early, the connection is closed with it (its response
/// was not read to the end).
pub struct UpstreamBody {
    inner: Incoming,
    /// The first frame, read before the head was handed on.
    first: Option<First>,
    /// `None` when the connection went back before the body (an empty
    /// one) or was handed to a tunnel.
    link: Option<Streaming>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // What has been read already is taken without a poll of the I/O.
        let mut res = match self.first.take() {
            Some(First::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(First::Other(frame)) => Poll::Ready(Some(Ok(*frame))),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        };
        if res.is_pending() {
            if let Some(s) = &mut self.link {
                s.link.poll_io(cx);
                res = Pin::new(&mut self.inner).poll_frame(cx);
            }
        }
        // Readers stop at the last frame of a sized body without asking for
        // the end: release as soon as the body is known to be complete.
        let done = match &res {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some(mut s) = self.link.take() {
                if !s.link.tx.is_ready() {
                    // Lets the dispatcher see the end too and turn ready.
                    s.link.poll_io(cx);
                }
                s.pool.release(s.link, s.idle_for, s.stall);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(First::Data(data)) = &self.first {
            // The first frame's bytes are still to come.
            let n = data.len() as u64;
            // Upper first: a lower bound above the upper one panics.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

/// Bytes read from and written to a backend connection.
#[derive(Default)]
struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
}

/// Counts the bytes read from and written to a backend connection (one
/// relaxed atomic add per read or write), so a failure can be placed before
/// or after the first byte of a response, and a request body still being
/// sent can be told to move.
///
/// It also holds the connection's place under the backend's cap, so the
/// place is free exactly when the socket is closed: after the last
/// response, or after the tunnel of an upgraded (WebSocket) connection.
struct Counted {
    count: Arc<ByteCounts>,
    _slot: OwnedSemaphorePermit,
}

impl Watch for Counted {
    fn read(&self, n: usize) {
        self.count.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn written(&self, n: usize) {
        self.count.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}
