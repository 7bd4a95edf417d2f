//! Keep-alive HTTP/1.1 connections to one backend. A connection is
//! acquired (pooled or newly connected) *before* the request is handed to
//! it, so a connect failure leaves the request untouched and it can be
//! retried elsewhere. A connection returns to the pool when its response
//! body has been read to the end.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per backend at most.
const MAX_IDLE: usize = 1024;

type Sender = http1::SendRequest<Incoming>;

/// Why no connection could be had; the request was not sent.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// Why a request failed once handed to a connection.
#[derive(Debug)]
pub enum SendError {
    /// The connection closed before the request was written: the request
    /// comes back and may be sent again.
    NotSent(Box<Request<Incoming>>),
    /// The request (or part of it) went out: it must not be retried.
    Failed(hyper::Error),
}

pub struct Pool {
    /// `host:port` to connect to.
    address: Box<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections, most recently used last. A mutex held for a push
    /// or a pop only; never across an await.
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// A connection checked out of the pool, on its way to carry one request.
pub struct Conn {
    tx: Sender,
}

impl Pool {
    pub fn new(address: &str, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Pool {
            address: address.into(),
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn pop_idle(&self) -> Option<(Sender, Instant)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// A ready connection: the most recently used idle one, else a new one.
    pub async fn acquire(&self) -> Result<Conn, ConnectError> {
        while let Some((mut tx, since)) = self.pop_idle() {
            if tx.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            // Usually ready at once; a connection whose response just ended
            // may need the dispatcher to catch up.
            if tx.ready().await.is_ok() {
                return Ok(Conn { tx });
            }
        }
        self.connect().await
    }

    /// A fresh connection (also used to retry a request that a pooled
    /// connection gave back unsent).
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.address))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Io)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(address = &*self.address, "set_nodelay: {e}");
        }
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(address = &*address, "upstream connection: {e}");
            }
        });
        Ok(Conn { tx })
    }

    fn release(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((tx, Instant::now()));
        }
    }
}

impl Conn {
    /// Sends the request; the response body, once read to its end, returns
    /// the connection to `pool`.
    pub async fn send(
        mut self,
        req: Request<Incoming>,
        pool: &Arc<Pool>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match self.tx.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let reusable = keeps_alive(&parts);
                // An empty body may never be polled: hand the connection back now.
                let release = if !reusable {
                    None
                } else if body.is_end_stream() {
                    pool.release(self.tx);
                    None
                } else {
                    Some((self.tx, pool.clone()))
                };
                let body = UpstreamBody {
                    inner: body,
                    release,
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed(e.into_error())),
            },
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
    let has = |token: &str| connection_has(&parts.headers, token);
    if parts.version == http::Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// Whether the `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A backend's response body, streamed; hands the connection back to its
/// pool at the end of the stream. Dropped early, the connection is dropped
/// with it (its response was not read to the end).
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<(Sender, Arc<Pool>)>,
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
            if let Some((tx, pool)) = self.release.take() {
                pool.release(tx);
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
