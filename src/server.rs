//! The accept loop and client connections: HTTP/1.1 and h2c (detected per
//! connection), header-read and idle timeouts, and a bounded graceful drain.

use crate::config::MIN_HEADER_BYTES;
use crate::proxy::{ConnInfo, Proxy};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What connections are told to do; a `watch` because every connection
/// task must see the latest state, not a queue of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serve,
    /// Finish in-flight requests, take no new ones (HTTP/2: GOAWAY).
    Drain,
}

/// Runs the proxy on `listener` until `shutdown` resolves, then drains:
/// in-flight requests get `timeouts.shutdown_grace` to finish, after which
/// the remaining connections are closed.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    // Each connection task holds a sender; when all are dropped, the drain is done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    // An atomic: connection tasks on every worker thread update it.
    let open = Arc::new(AtomicUsize::new(0));
    // A semaphore: at `max_connections` the loop stops accepting (clients
    // wait in the kernel's accept queue) and existing connections go on.
    let max = proxy.router().load().limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);

    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("{max} connections open (limits.max_connections): new connections wait until one closes");
                tokio::select! {
                    () = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        proxy: proxy.clone(),
                        phase: phase_rx.clone(),
                        _done: done_tx.clone(),
                        _open: OpenGuard::new(&open),
                        _slot: permit,
                    };
                    tokio::spawn(conn.serve(stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // accept: the listener itself is fine; pause and go on.
                    tracing::warn!("accept failed: {e}; retrying in 100ms");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }

    drop(listener);
    let grace = proxy.router().load().timeouts.shutdown_grace;
    let draining = open.load(Ordering::Relaxed);
    tracing::info!(
        "shutting down: stopped accepting, draining {draining} connections for up to {grace:?}"
    );
    // Receivers live in the connection tasks; none left means nothing to tell.
    phase_tx.send_replace(Phase::Drain);
    drop(done_tx);
    if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
        tracing::warn!(
            "shutdown grace of {grace:?} over: closing {} connections still open",
            open.load(Ordering::Relaxed)
        );
    }
    // Dropping `phase_tx` here tells connections still open to close.
    Ok(())
}

struct Connection {
    proxy: Arc<Proxy>,
    phase: watch::Receiver<Phase>,
    _done: mpsc::Sender<()>,
    _open: OpenGuard,
    /// This connection's place under `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay: {e}");
        }
        let (timeouts, limits) = {
            let snap = self.proxy.router().load();
            (snap.timeouts.clone(), snap.limits)
        };
        let header_bytes = limits.max_request_header_bytes.max(MIN_HEADER_BYTES);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.client_header_read)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256));

        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let info = ConnInfo {
            peer,
            scheme: "http",
        };
        let proxy = self.proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, info).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);

        let idle = timeouts.idle;
        let mut draining = false;
        loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        // The server is gone: the grace period is over.
                        return;
                    }
                    if *self.phase.borrow_and_update() == Phase::Drain && !draining {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(deadline), if !draining => {
                    if activity.last() + idle <= Instant::now() {
                        tracing::debug!(%peer, "closing connection idle for {idle:?}");
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Counts a connection as open while alive.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection last moved a byte; an atomic because hyper's IO and
/// the idle timer share it.
struct Activity {
    start: Instant,
    millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// A stream that records its activity for the idle timeout.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
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
