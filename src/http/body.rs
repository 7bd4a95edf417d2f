//! Request bodies on their way to a backend: none at all (a request that
//! can be sent again), or the client's body streamed through, watched so
//! that its faults are told apart from the backend's. A client whose body
//! is malformed or cut short, or who pauses longer than
//! `timeouts.client_body_read` between two pieces of it, is at fault: the
//! proxy answers 400 or 408 and the backend's record stays clean.

use crate::http::idle::Busy;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The body of a request sent upstream.
pub enum RequestBody {
    /// No body: the request head alone can be sent again as it is.
    Empty,
    /// The client's body, streamed.
    Client(ClientBody),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => write!(f, "Empty"),
            RequestBody::Client(_) => write!(f, "Client"),
        }
    }
}

/// What became of a client's body, as its sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The body broke: malformed framing, or the client went away mid-body.
    Broken,
    /// The client sent nothing for `timeouts.client_body_read`.
    Stalled,
}

/// Progress of a client body, shared between the body (read by the
/// upstream connection's I/O) and the request that waits for the
/// response; atomics, since a body the backend answered early finishes in
/// a task of its own.
#[derive(Debug)]
pub struct BodyProgress {
    state: AtomicU8,
    /// Data bytes read from the client so far.
    bytes: AtomicU64,
    /// Whether the body is waiting for the client (its last read found
    /// nothing), rather than for the backend to take what it has.
    waiting: AtomicBool,
    /// When the body last moved toward the backend (a frame handed over,
    /// or its end), in nanoseconds after `base`.
    moved: AtomicU64,
    base: Instant,
}

const SENDING: u8 = 0;
const DONE: u8 = 1;
const BROKEN: u8 = 2;
const STALLED: u8 = 3;

impl BodyProgress {
    fn new() -> Self {
        BodyProgress {
            state: AtomicU8::new(SENDING),
            bytes: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Whether the body is still being sent (neither complete nor failed).
    pub fn sending(&self) -> bool {
        self.state.load(Ordering::Acquire) == SENDING
    }

    /// When the backend's `period` to answer runs out: `period` after the
    /// body last moved toward it (a frame handed over, or the body's end),
    /// as NGINX times `proxy_send_timeout` between two writes and then
    /// the response. `None` while the body waits for the client: the
    /// client's own read timeout applies then, not the backend's.
    pub fn backend_due(&self, period: Duration) -> Option<Instant> {
        if self.sending() && self.waiting.load(Ordering::Acquire) {
            return None;
        }
        let moved = Duration::from_nanos(self.moved.load(Ordering::Acquire));
        Some(self.base + moved + period)
    }

    /// The body moved toward the backend now.
    fn moved(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.moved.store(nanos, Ordering::Release);
        self.waiting.store(false, Ordering::Release);
    }

    /// Data bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<BodyFault> {
        match self.state.load(Ordering::Acquire) {
            BROKEN => Some(BodyFault::Broken),
            STALLED => Some(BodyFault::Stalled),
            _ => None,
        }
    }

    fn set(&self, state: u8) {
        // Only the first outcome counts.
        let _ = self
            .state
            .compare_exchange(SENDING, state, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The client's request body, passed through frame by frame. Records its
/// outcome in a shared `BodyProgress`, and fails with `Stalled` when the
/// client pauses longer than `read_timeout` between frames.
pub struct ClientBody {
    inner: Incoming,
    progress: Arc<BodyProgress>,
    read_timeout: Duration,
    /// Armed while waiting for the client; created on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether a frame arrived since the timer was last armed.
    moved: bool,
    /// The client connection's request in progress, ended with the body.
    busy: Option<Busy>,
}

/// A client body that stopped short; the cause is in `BodyProgress`.
#[derive(Debug)]
pub struct ClientBodyError(BodyFault);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            BodyFault::Broken => write!(f, "the client's request body broke off"),
            BodyFault::Stalled => write!(f, "the client stopped sending its request body"),
        }
    }
}

impl std::error::Error for ClientBodyError {}

impl ClientBody {
    pub fn new(inner: Incoming, read_timeout: Duration) -> (Self, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::new());
        let body = ClientBody {
            inner,
            progress: progress.clone(),
            read_timeout,
            timer: None,
            moved: true,
            busy: None,
        };
        (body, progress)
    }

    /// Keeps `busy` until the body has been read or dropped.
    pub fn hold(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }

    fn fail(&self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.progress.set(match fault {
            BodyFault::Broken => BROKEN,
            BodyFault::Stalled => STALLED,
        });
        Poll::Ready(Some(Err(ClientBodyError(fault))))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.moved = true;
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.progress.bytes.fetch_add(n, Ordering::Relaxed);
                }
                self.progress.moved();
                if self.inner.is_end_stream() {
                    self.progress.set(DONE);
                    self.busy = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!("client request body: {e}");
                let fault = if e.is_timeout() {
                    BodyFault::Stalled
                } else {
                    BodyFault::Broken
                };
                self.fail(fault)
            }
            Poll::Ready(None) => {
                self.progress.moved();
                self.progress.set(DONE);
                self.busy = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.progress.waiting.store(true, Ordering::Release);
                let deadline = Instant::now() + self.read_timeout;
                let this = &mut *self;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if std::mem::take(&mut this.moved) {
                    timer.as_mut().reset(deadline);
                }
                loop {
                    ready!(timer.as_mut().poll(cx));
                    // Bytes of the body's framing count as the client
                    // sending (NGINX times client_body_timeout between two
                    // reads): only a period with no byte read is a stall.
                    let read = this.busy.as_ref().and_then(Busy::last_read);
                    match read.map(|at| at + this.read_timeout) {
                        Some(due) if due > Instant::now() => timer.as_mut().reset(due),
                        _ => break,
                    }
                }
                self.fail(BodyFault::Stalled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Client(b) => b.size_hint(),
        }
    }
}
