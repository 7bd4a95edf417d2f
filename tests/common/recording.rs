//! A raw-socket recording backend: it keeps the exact request line, header
//! lines and body of every request it receives, and answers with whatever
//! bytes a test gives it (a well-behaved response, or an odd one: close
//! silently, speak HTTP/1.0, send trailers, an unasked 101, ...). No HTTP
//! library sits between the test and the wire.
//!
//! Also a raw-socket client, for requests no HTTP library would send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request as it arrived on the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which accepted connection carried it (0 = the first).
    pub conn: usize,
    /// Its place among the requests of its connection (0 = the first).
    pub index: usize,
    /// The request line, without CRLF.
    pub line: String,
    /// The header lines as sent, without CRLF.
    pub headers: Vec<String>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<String>,
}

impl Recorded {
    /// The values of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .collect()
    }
}

/// How the backend answers a request: the response bytes, and whether to
/// close the connection after writing them.
pub type Answer = Arc<dyn Fn(&Recorded) -> (Vec<u8>, bool) + Send + Sync>;

/// A plain `200 OK` naming the request's path, keep-alive.
pub fn ok(req: &Recorded) -> (Vec<u8>, bool) {
    let body = format!("seen {}", req.line);
    (
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        false,
    )
}

/// Answers the first request of each connection (`ok`), then closes the
/// connection, unanswered, as soon as the next request arrives: the
/// keep-alive race, every time a connection is reused.
pub fn race_on_reuse(req: &Recorded) -> (Vec<u8>, bool) {
    if req.index == 0 {
        ok(req)
    } else {
        (Vec::new(), true)
    }
}

/// A fixed response, then keep the connection (`close = false`) or close it.
pub fn fixed(bytes: &'static str, close: bool) -> Answer {
    Arc::new(move |_| (bytes.as_bytes().to_vec(), close))
}

pub struct RecordingBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    /// Requests recorded so far.
    count: watch::Receiver<usize>,
    /// Connections open now, and accepted in all.
    open: watch::Receiver<usize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingBackend {
    pub async fn spawn(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let (open_tx, open) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let open_tx = Arc::new(open_tx);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let (seen, accepted) = (seen.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let n = accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    open_tx.send_modify(|o| *o += 1);
                    let (seen, answer, count_tx, open_tx) = (
                        seen.clone(),
                        answer.clone(),
                        count_tx.clone(),
                        open_tx.clone(),
                    );
                    conns.spawn(async move {
                        serve_conn(stream, n, &seen, &answer, &count_tx).await;
                        open_tx.send_modify(|o| *o -= 1);
                    });
                }
            })
        };
        RecordingBackend {
            addr,
            seen,
            count,
            open,
            accepted,
            task,
        }
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until `n` requests were recorded.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        let mut count = self.count.clone();
        tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests within 10 s; saw {:?}", self.requests()))
            .expect("backend runs");
        self.requests()
    }

    /// Waits (at most `limit`) until at most `n` connections are open;
    /// returns how long that took.
    pub async fn wait_open_at_most(&self, n: usize, limit: Duration) -> Duration {
        let start = std::time::Instant::now();
        let mut open = self.open.clone();
        tokio::time::timeout(limit, open.wait_for(|o| *o <= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still {} connections open after {limit:?}",
                    *self.open.borrow()
                )
            })
            .expect("backend runs");
        start.elapsed()
    }

    pub fn open_now(&self) -> usize {
        *self.open.borrow()
    }
}

/// Reads requests off one connection, records each, answers each.
async fn serve_conn(
    mut stream: TcpStream,
    conn: usize,
    seen: &Mutex<Vec<Recorded>>,
    answer: &Answer,
    count: &watch::Sender<usize>,
) {
    let mut buf = Vec::new();
    for index in 0.. {
        let Some(mut req) = read_request(&mut stream, &mut buf, conn).await else {
            return;
        };
        req.index = index;
        let (bytes, close) = answer(&req);
        {
            let mut seen = seen.lock().expect("lock");
            seen.push(req);
            count.send_replace(seen.len());
        }
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Reads until `buf` holds `needle`; returns its end offset.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i + needle.len());
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_exact_into(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        let mut chunk = [0u8; 8192];
        let got = stream.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Some(buf.drain(..n).collect())
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Recorded> {
    let end = read_until(stream, buf, b"\r\n\r\n").await?;
    let head: Vec<u8> = buf.drain(..end).collect();
    let text = String::from_utf8_lossy(&head[..end - 4]).into_owned();
    let mut lines = text.split("\r\n").map(str::to_string);
    let line = lines.next()?;
    let headers: Vec<String> = lines.collect();
    let mut req = Recorded {
        conn,
        index: 0,
        line,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let chunked = req
        .header("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, trailers) = read_chunked(stream, buf).await?;
        req.body = body;
        req.trailers = trailers;
    } else if let Some(len) = req.header("content-length").first() {
        let len: usize = len.parse().ok()?;
        req.body = read_exact_into(stream, buf, len).await?;
    }
    Some(req)
}

/// Reads a chunked body (RFC 9112 §7.1): the data, and the trailer lines.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<String>)> {
    let (mut body, mut trailers) = (Vec::new(), Vec::new());
    loop {
        let end = read_until(stream, buf, b"\r\n").await?;
        let size_line: Vec<u8> = buf.drain(..end).collect();
        let size_text = String::from_utf8_lossy(&size_line[..end - 2]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            loop {
                let end = read_until(stream, buf, b"\r\n").await?;
                let l: Vec<u8> = buf.drain(..end).collect();
                if end == 2 {
                    return Some((body, trailers));
                }
                trailers.push(String::from_utf8_lossy(&l[..end - 2]).into_owned());
            }
        }
        let data = read_exact_into(stream, buf, size + 2).await?;
        body.extend_from_slice(&data[..size]);
    }
}

/// Writes `bytes` to `addr` on a new connection, then reads until the
/// peer closes or `limit` passes; returns what was read.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_for(&mut s, limit).await
}

/// Reads from `s` until the peer closes or `limit` passes.
pub async fn read_for(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    out
}

/// A response as read off the wire by `read_response`.
#[derive(Debug)]
pub struct RawResponse {
    /// The status line and header lines, without the final empty line.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<String>,
}

impl RawResponse {
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Whether a header line `name: value` is present (name case-insensitive).
    pub fn has_header(&self, name: &str, value: &str) -> bool {
        self.head.lines().skip(1).any(|l| {
            l.split_once(':')
                .is_some_and(|(k, v)| k.eq_ignore_ascii_case(name) && v.trim() == value)
        })
    }
}

/// Reads one response off `s` (at most 10 s): the head, then a
/// `content-length` body, a chunked body with its trailers, or (neither)
/// until the peer closes; `no_body` for the answer to a HEAD.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, no_body: bool) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), async {
        let end = read_until(s, buf, b"\r\n\r\n")
            .await
            .expect("response head");
        let head_bytes: Vec<u8> = buf.drain(..end).collect();
        let head = String::from_utf8_lossy(&head_bytes[..end - 4]).into_owned();
        let mut resp = RawResponse {
            head,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        let probe = Recorded {
            conn: 0,
            index: 0,
            line: String::new(),
            headers: resp.head.lines().skip(1).map(str::to_string).collect(),
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if no_body {
            return resp;
        }
        if probe
            .header("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let (body, trailers) = read_chunked(s, buf).await.expect("chunked body");
            resp.body = body;
            resp.trailers = trailers;
        } else if let Some(len) = probe.header("content-length").first() {
            let len: usize = len.parse().expect("content-length");
            resp.body = read_exact_into(s, buf, len).await.expect("body");
        } else {
            resp.body = std::mem::take(buf);
            let _ = s.read_to_end(&mut resp.body).await;
        }
        resp
    })
    .await
    .expect("a response within 10 s")
}
