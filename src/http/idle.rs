//! A stream wrapper that records when bytes last moved, for idle timeouts
//! (client connections and upgraded tunnels).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte, how many requests it is serving,
/// and when the head of the next one began to arrive; atomics because
/// hyper's IO, the requests and the connection's timer share it.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    millis: AtomicU64,
    /// Requests in progress: from a complete head to the end of the
    /// response body (several at once on HTTP/2).
    busy: AtomicU32,
    /// When the first byte after the last response arrived (ms since
    /// `start`, plus one): the next head is on its way. 0: none yet.
    head_millis: AtomicU64,
    /// HTTP/2: bytes between requests are frames (PING, WINDOW_UPDATE),
    /// not a head on its way; only `idle` applies between requests.
    multiplexed: AtomicBool,
    /// Whether a complete request head has arrived on the connection.
    seen_request: AtomicBool,
    /// When bytes were last read (ms since `start`).
    read_millis: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            millis: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            head_millis: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            seen_request: AtomicBool::new(false),
            read_millis: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }

    /// Bytes arrived: activity, and while no request is being served, the
    /// start of the next request head.
    fn bytes_read(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
        self.read_millis.store(ms, Ordering::Relaxed);
        if self.busy.load(Ordering::Relaxed) == 0
            && self.head_millis.load(Ordering::Relaxed) == 0
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            self.head_millis.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// A complete request head of `version` arrived: the request counts as
    /// in progress until the returned guard is dropped (at the end of its
    /// response).
    pub fn request_arrived(self: &Arc<Self>, version: http::Version) -> Busy {
        if !self.seen_request.load(Ordering::Relaxed) {
            self.seen_request.store(true, Ordering::Relaxed);
        }
        if version == http::Version::HTTP_2 && !self.multiplexed.load(Ordering::Relaxed) {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.request_started()
    }

    /// Whether a complete request head has arrived on the connection.
    pub fn seen_request(&self) -> bool {
        self.seen_request.load(Ordering::Relaxed)
    }

    /// More of a request in progress (its body, which may still be arriving
    /// after the response), until the returned guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_millis.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether a request is in progress.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// When the next request head began to arrive, if it has.
    pub fn head_started(&self) -> Option<Instant> {
        match self.head_millis.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.start + Duration::from_millis(ms - 1)),
        }
    }
}

/// A request in progress on a connection (see `Activity::request_started`);
/// dropped at the end of its response (and of its body, which a backend
/// may answer before it is all sent), when the connection's idle time
/// starts again.
pub struct Busy(Arc<Activity>);

impl Busy {
    /// When the HTTP/1 connection last read a byte: a request body's
    /// framing (chunk sizes, extensions, trailers) arrives as bytes without
    /// data. `None` on HTTP/2, where other streams' frames are read too.
    pub fn last_read(&self) -> Option<Instant> {
        if self.0.multiplexed.load(Ordering::Relaxed) {
            return None;
        }
        let ms = self.0.read_millis.load(Ordering::Relaxed);
        Some(self.0.start + Duration::from_millis(ms))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a `Tracked` stream reports as bytes move through it.
pub trait Watch {
    /// `n` (> 0) bytes were read.
    fn read(&self, n: usize);
    /// `n` (> 0) bytes were written.
    fn written(&self, n: usize);
}

/// Any byte either way is activity, for idle timeouts.
impl Watch for Arc<Activity> {
    fn read(&self, _: usize) {
        self.bytes_read();
    }

    fn written(&self, _: usize) {
        self.touch();
    }
}

/// A stream that reports the bytes it moves to `watch` (its activity, for
/// the idle timeout, unless another `Watch` is given).
pub struct Tracked<S, W = Arc<Activity>> {
    pub inner: S,
    pub watch: W,
}

impl<S: AsyncRead + Unpin, W: Watch + Unpin> AsyncRead for Tracked<S, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.watch.read(n);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin, W: Watch + Unpin> AsyncWrite for Tracked<S, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.watch.written(n);
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.watch.written(n);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once `activity` saw nothing for `idle`.
pub async fn until_idle(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        tokio::time::sleep_until(deadline).await;
        if activity.last() + idle <= Instant::now() {
            return;
        }
    }
}

/// When a client connection is due to close, as NGINX times it
/// (`client_header_timeout`, `keepalive_timeout`):
///
/// - the first request head must be complete within `header_read` of the
///   accept;
/// - a later head within `header_read` of its first byte;
/// - between requests, the connection may wait `idle` for that first byte;
/// - while a request is in progress the connection has no deadline here
///   (the request's own timeouts apply).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub accepted: Instant,
    pub header_read: Duration,
    pub idle: Duration,
}

/// Why a connection's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No complete request head in time: close at once.
    HeaderRead,
    /// Idle between requests: close gracefully.
    Idle,
}

impl Deadlines {
    /// When the connection's time is up, and why, if nothing changes;
    /// `None` while a request is in progress.
    fn due(&self, activity: &Activity) -> Option<(Instant, Expiry)> {
        if !activity.seen_request() {
            return Some((self.accepted + self.header_read, Expiry::HeaderRead));
        }
        if activity.busy() {
            return None;
        }
        match activity.head_started() {
            Some(head) => Some((head + self.header_read, Expiry::HeaderRead)),
            None => Some((activity.last() + self.idle, Expiry::Idle)),
        }
    }

    /// The next instant to look again: the deadline, or while a request is
    /// in progress, `idle` from now (its end is not signalled here); while
    /// waiting for a request, at most `header_read` from now.
    pub fn next(&self, activity: &Activity) -> Instant {
        let now = Instant::now();
        let seen_request = activity.seen_request();
        match self.due(activity) {
            // The first request may come and go while the timer waits for
            // the head deadline; when `idle` is the shorter, look again at
            // its first possible expiry too.
            Some((at, _)) if !seen_request => {
                let idle = activity.last() + self.idle;
                if idle < at && idle > now {
                    idle
                } else {
                    at
                }
            }
            // Waiting for the next request: a head that begins meanwhile
            // is not signalled here, so look again within `header_read`.
            Some((at, Expiry::Idle)) => at.min(now + self.header_read),
            Some((at, _)) => at,
            None => now + self.idle,
        }
    }

    /// Whether the connection's time is up now, and why.
    pub fn expired(&self, activity: &Activity) -> Option<Expiry> {
        self.due(activity)
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, why)| why)
    }
}
