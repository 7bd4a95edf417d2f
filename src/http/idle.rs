//! A stream wrapper that records when bytes last moved, for idle timeouts
//! (client connections and upgraded tunnels).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte; an atomic because hyper's IO and
/// the idle timer share it.
pub struct Activity {
    start: Instant,
    millis: AtomicU64,
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
        }
    }

    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
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
        self.touch();
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

/// When a client connection is due to close: one that has not sent a
/// complete request head within `header_read` of being accepted, or that
/// moved no byte for `idle` after its first request.
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
    /// Idle after its requests: close gracefully.
    Idle,
}

impl Deadlines {
    /// The next instant to look again; `seen_request`: whether a request
    /// head has arrived on the connection.
    pub fn next(&self, activity: &Activity, seen_request: bool) -> Instant {
        if seen_request {
            return activity.last() + self.idle;
        }
        // A request may arrive while the timer waits for the header
        // deadline; when `idle` is the shorter, look again at its first
        // possible expiry too.
        let header = self.accepted + self.header_read;
        let idle = activity.last() + self.idle;
        if idle < header && idle > Instant::now() {
            idle
        } else {
            header
        }
    }

    /// The head timeout to give hyper's HTTP/1 server. Its timer restarts
    /// at the end of each response, so it also times the wait for the next
    /// request: set to `header_read` alone it would cut keep-alive
    /// connections idle longer than that. The first head's `header_read`
    /// is timed here from the accept; every later head, the idle wait
    /// before it included, gets `idle`, or `header_read` if that is longer.
    pub fn hyper_header_read(&self) -> Duration {
        self.header_read.max(self.idle)
    }

    /// Whether the connection's time is up now, and why.
    pub fn expired(&self, activity: &Activity, seen_request: bool) -> Option<Expiry> {
        let now = Instant::now();
        if !seen_request {
            (self.accepted + self.header_read <= now).then_some(Expiry::HeaderRead)
        } else {
            (activity.last() + self.idle <= now).then_some(Expiry::Idle)
        }
    }
}
