//! The accept loop and client connections: plain (HTTP/1.1 and h2c,
//! detected per connection) or TLS (HTTP/2 or HTTP/1.1 by ALPN), handshake,
//! header-read and idle timeouts, and a bounded graceful drain.

use crate::config::{Limits, MIN_HEADER_BYTES};
use crate::http::idle::{Activity, Deadlines, Expiry, Tracked};
use crate::http::proxy::{ConnInfo, ConnState, Proxy};
use crate::http::proxy_protocol;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 and h2c.
    Plain,
    /// TLS with the live snapshot's certificate, then HTTP/2 or HTTP/1.1 by ALPN.
    Tls,
}

/// How a listener takes its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub transport: Transport,
    /// Each connection starts with a PROXY protocol header (read before
    /// TLS or HTTP); one without a valid header is closed.
    pub proxy_protocol: bool,
    /// Workers sharing the listener's address (each with its own socket),
    /// and which of them this is: `max_connections` is split between them.
    pub workers: usize,
    pub worker: usize,
}

impl Listening {
    /// This worker's part of `max`: the parts add up to `max` exactly, and
    /// each is at least 1.
    pub fn share(&self, max: usize) -> usize {
        let n = self.workers.max(1);
        (max / n + usize::from(self.worker % n < max % n)).max(1)
    }
}

/// What connections are told to do; a `watch` because every connection
/// task must see the latest state, not a queue of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serve,
    /// Finish in-flight requests, take no new ones (HTTP/2: GOAWAY).
    Drain,
}

/// Runs the proxy on `listener` (plain HTTP) until `shutdown` resolves,
/// then drains: in-flight requests get `timeouts.shutdown_grace` to finish,
/// after which the remaining connections are closed.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(listener, proxy, Transport::Plain, shutdown).await
}

/// As `run`, for a listener speaking `transport`. With `Transport::Tls`,
/// each new connection handshakes with the certificate of the snapshot live
/// at that moment. Each listener has its own `max_connections`.
pub async fn run_with(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let how = Listening {
        transport,
        proxy_protocol: false,
        workers: 1,
        worker: 0,
    };
    run_listener(listener, proxy, how, shutdown).await
}

/// As `run_with`, with the listener's options.
pub async fn run_listener(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    how: Listening,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let transport = how.transport;
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    // Each connection task holds a sender; when all are dropped, the drain is done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    // An atomic: connection tasks on every worker thread update it.
    let open = Arc::new(AtomicUsize::new(0));
    let counted = proxy.metrics().listener(match transport {
        Transport::Plain => "http",
        Transport::Tls => "https",
    });
    // A semaphore: at `max_connections` the loop stops accepting (clients
    // wait in the kernel's accept queue) and existing connections go on.
    let max = how.share(proxy.router().load().limits.max_connections);
    let slots = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);

    // Log the limit once per episode of being at it, not per waiting client.
    let mut at_limit = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_limit = false;
                p
            }
            Err(_) => {
                if !at_limit {
                    tracing::warn!("{max} connections open (limits.max_connections): new connections wait until one closes");
                    at_limit = true;
                }
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
                    counted.total.inc();
                    let conn = Connection {
                        proxy: proxy.clone(),
                        phase: phase_rx.clone(),
                        _done: done_tx.clone(),
                        _open: OpenGuard::new(&open, &counted.open),
                        _slot: permit,
                    };
                    tokio::spawn(conn.serve(stream, peer, how));
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
    async fn serve(self, mut stream: TcpStream, mut peer: SocketAddr, how: Listening) {
        let accepted = Instant::now();
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay: {e}");
        }
        let (timeouts, limits, tls) = {
            let snap = self.proxy.router().load();
            (snap.timeouts.clone(), snap.limits, snap.tls.clone())
        };
        if how.proxy_protocol {
            let read = proxy_protocol::read_header(&mut stream);
            match tokio::time::timeout(timeouts.client_header_read, read).await {
                Ok(Ok(Some(source))) => peer = source,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return self.proxy.proxy_header_refused(peer, &e.to_string()),
                Err(_) => {
                    let why = format!(
                        "no PROXY protocol header within {:?}",
                        timeouts.client_header_read
                    );
                    return self.proxy.proxy_header_refused(peer, &why);
                }
            }
        }
        let transport = how.transport;
        let deadlines = Deadlines {
            accepted,
            header_read: timeouts.client_header_read,
            idle: timeouts.idle,
        };
        let activity = Arc::new(Activity::new());
        let tracked = Tracked {
            inner: stream,
            watch: activity.clone(),
        };
        match transport {
            Transport::Plain => {
                let io = TokioIo::new(tracked);
                self.serve_http(io, peer, "http", None, activity, deadlines, limits)
                    .await;
            }
            Transport::Tls => {
                let Some(tls) = tls else {
                    tracing::warn!(%peer, "TLS listener without a certificate: closing");
                    return;
                };
                // Boxed: the handshake's and TLS stream's state would make
                // every plain connection's future twice its size.
                Box::pin(self.serve_tls(tracked, tls, peer, activity, deadlines, limits)).await;
            }
        }
    }

    /// The TLS handshake, within `client_header_read` (given up at once in
    /// a drain), then HTTP on the stream with the protocol ALPN chose.
    async fn serve_tls(
        mut self,
        tracked: Tracked<TcpStream>,
        tls: Arc<rustls::ServerConfig>,
        peer: SocketAddr,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        limits: Limits,
    ) {
        let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tracked);
        let stream = tokio::select! {
            res = tokio::time::timeout(deadlines.header_read, handshake) => match res {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = self.phase.wait_for(|p| *p == Phase::Drain) => return,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        self.serve_http(io, peer, "https", Some(h2), activity, deadlines, limits)
            .await;
    }

    /// Serves HTTP on an established stream; `alpn_h2` is what ALPN chose
    /// on a TLS stream (`None`: plain, detect HTTP/2 by its preface).
    #[allow(clippy::too_many_arguments)]
    async fn serve_http<S>(
        mut self,
        io: TokioIo<S>,
        peer: SocketAddr,
        scheme: &'static str,
        alpn_h2: Option<bool>,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        limits: Limits,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let header_bytes = limits.max_request_header_bytes.max(MIN_HEADER_BYTES);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder = match alpn_h2 {
            None => builder,
            Some(true) => builder.http2_only(),
            Some(false) => builder.http1_only(),
        };
        builder
            .http1()
            .timer(TokioTimer::new())
            // Heads are timed by `Deadlines`, from their first byte: hyper's
            // timer would also time the wait between requests.
            .header_read_timeout(None)
            .max_buf_size(header_bytes)
            // A client may shut its write side after a complete request and
            // still wait for the response (RFC 9112 §9.6).
            .half_close(true)
            .keep_alive(true);
        // HTTP/2 limits: concurrent streams and header list size bounded;
        // streams reset by the client before being served (rapid reset) and
        // local error resets are capped, past which the connection is closed.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            // Twice the limit: a request over the limit still arrives, and
            // gets the proxy's own counted 431 (the protocol layer would
            // refuse the stream unseen); past twice it is refused.
            .max_header_list_size(u32::try_from(header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256));

        let info = ConnInfo { peer, scheme };
        // Shared by the connection's requests: one generated sticky id.
        let state = Arc::new(ConnState::new(activity.clone()));
        let proxy = self.proxy.clone();
        let service = {
            let state = state.clone();
            let activity = activity.clone();
            service_fn(move |req| {
                let busy = activity.request_arrived(req.version());
                proxy.handle(req, info, &state, busy)
            })
        };
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);

        let mut draining = false;
        // Set when a timeout closed the connection gracefully: the close
        // must be over by then (an HTTP/2 client may never answer).
        let mut closing_by = None;
        loop {
            let deadline = closing_by.unwrap_or_else(|| deadlines.next(&activity));
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, "connection ended: {e}");
                        if let Some(e) = e.downcast_ref::<hyper::Error>() {
                            self.proxy.parser_rejected(e, peer);
                        }
                    }
                    // An upgraded connection stays open (its place under
                    // max_connections, the drain) until its tunnel ends.
                    for tunnel in state.take_tunnels() {
                        let _ = tunnel.await;
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
                () = tokio::time::sleep_until(deadline) => {
                    if closing_by.is_some() {
                        tracing::debug!(%peer, "closing connection: its graceful close took longer than {:?}", deadlines.header_read);
                        return;
                    }
                    match deadlines.expired(&activity) {
                        Some(Expiry::HeaderRead) => {
                            tracing::debug!(%peer, "closing connection: no complete request head within {:?}", deadlines.header_read);
                            return;
                        }
                        Some(Expiry::Idle) => {
                            tracing::debug!(%peer, "closing connection idle for {:?}", deadlines.idle);
                            if !draining {
                                draining = true;
                                conn.as_mut().graceful_shutdown();
                            }
                            closing_by = Some(tokio::time::Instant::now() + deadlines.header_read);
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// The file descriptors the proxy may need at once, against the open
/// files limit: every client connection of every listener, every backend
/// connection up to the caps, and a reserve for listeners, the admin
/// listener's connections, health checks, config and certificate files.
/// HAProxy derives its `maxconn` from the limit the same way.
#[derive(Debug, Clone, Copy)]
pub struct FdBudget {
    /// `RLIMIT_NOFILE` in force.
    pub open_files: u64,
    /// Client listeners (plain, TLS), each with its own `max_connections`.
    pub listeners: usize,
    /// `limits.max_backend_connections` × backends.
    pub backend_caps: usize,
}

impl FdBudget {
    /// Descriptors kept for everything but client and backend connections.
    pub const RESERVED: usize = crate::config::MAX_ADMIN_CONNECTIONS + 64;

    /// The `max_connections` per listener that fits: `wanted` if it does;
    /// else what is left beside the backend caps, but never less than a
    /// quarter of the budget (then a flood of backend connections meets
    /// `EMFILE` first, which is answered 503 `local_resources`), nor 1.
    pub fn fit(&self, wanted: usize) -> usize {
        let usable = usize::try_from(self.open_files)
            .unwrap_or(usize::MAX)
            .saturating_sub(Self::RESERVED);
        let listeners = self.listeners.max(1);
        let left = usable.saturating_sub(self.backend_caps) / listeners;
        let floor = usable / 4 / listeners;
        wanted.min(left.max(floor)).max(1)
    }
}

/// Counts a connection as open while alive (for the drain, and in
/// `connections_open`).
struct OpenGuard(Arc<AtomicUsize>, prometheus::IntGauge);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>, gauge: &prometheus::IntGauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        OpenGuard(open.clone(), gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::{FdBudget, Listening, Transport};

    #[test]
    fn workers_share_max_connections_exactly() {
        let parts = |max: usize, workers: usize| -> Vec<usize> {
            (0..workers)
                .map(|worker| {
                    let how = Listening {
                        transport: Transport::Plain,
                        proxy_protocol: false,
                        workers,
                        worker,
                    };
                    how.share(max)
                })
                .collect()
        };
        assert_eq!(parts(4, 3), [2, 1, 1]);
        assert_eq!(parts(20_000, 2), [10_000, 10_000]);
        assert_eq!(parts(7, 1), [7]);
        // Never 0, even with more workers than connections.
        assert_eq!(parts(1, 2), [1, 1]);
    }

    #[test]
    fn max_connections_fit_the_open_files_limit() {
        let budget = |open_files, listeners, backend_caps| FdBudget {
            open_files,
            listeners,
            backend_caps,
        };
        // Plenty: kept.
        assert_eq!(budget(1 << 20, 1, 3 * 1024).fit(20_000), 20_000);
        // 65536 - 128 reserved - 3072 backend = 62336, over two listeners.
        assert_eq!(budget(65_536, 2, 3 * 1024).fit(40_000), 31_168);
        // Backend caps alone exceed the limit: a quarter of it is kept.
        assert_eq!(budget(600, 1, 1024).fit(20_000), 118);
        // Never zero.
        assert_eq!(budget(10, 1, 0).fit(20_000), 1);
    }
}
