//! C50K: many concurrent keep-alive connections through a proxy, each
//! sending a request every few seconds, with the proxy's memory per
//! connection and the latency of the requests made while all are open.
//!
//! Phases:
//!
//! 1. **open**: `--connections` connections are opened (at most
//!    `--connect-rate` a second), each from a loopback source address of its
//!    own share (127.0.0.2, .3, …, `--per-source` connections each: a source
//!    address has about 28,000 ephemeral ports), and each makes one request;
//! 2. **idle**: all stay open and silent for `--settle`; the proxy's
//!    resident memory (`--pid`) is read, against the reading before phase 1;
//! 3. **load**: every connection sends a request every `--interval` (each
//!    at its own offset) for `--duration`; every request must be answered
//!    `2xx` within `--timeout`. Latencies are kept in a log histogram (2.3 %
//!    buckets).
//!
//! The connections are spread over `--processes` processes of this same
//! program (each process has its own open-files limit). The report ends
//! with one line, `c50k: …`; the exit status is 1 if any connect or request
//! failed.
//!
//! ```text
//! cargo bench --bench c50k -- --target 127.0.0.1:8080 --connections 50000 --pid PID
//! ```
//!
//! `benches/c50k.sh` starts NGINX backends and stickylb and runs it.
//! Without `--target` (as under a plain `cargo bench`) it prints how to run
//! it and exits.

use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Debug, Clone)]
#[command(about = "C50K: many concurrent keep-alive connections through a proxy")]
struct Args {
    /// The proxy's address (`host:port`); without it, nothing runs.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Concurrent connections to hold open.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Time between two requests of one connection (at least 1ms).
    #[arg(long, default_value = "5s", value_parser = positive)]
    interval: Duration,
    /// How long the load phase lasts, all connections open (at least 1ms).
    #[arg(long, default_value = "60s", value_parser = positive)]
    duration: Duration,
    /// Connections opened per second at most (over all processes).
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..))]
    connect_rate: u32,
    /// Connections per loopback source address (127.0.0.2, .3, …).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=28_000))]
    per_source: u32,
    /// Processes to spread the connections over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    processes: u32,
    /// A connect or a request taking longer fails (at least 1ms).
    #[arg(long, default_value = "10s", value_parser = positive)]
    timeout: Duration,
    /// Idle time after the open phase, before the memory reading.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The proxy's PID, for its resident memory per connection.
    #[arg(long)]
    pid: Option<u32>,
    /// `k/n`: run as part k of n (set by the parent process).
    #[arg(long, hide = true)]
    part: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A duration of at least a millisecond (`humantime` syntax).
fn positive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// Latency buckets: 100 a decade from 1 µs, up to 100 s.
const BUCKETS: usize = 800;

fn bucket(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    ((us.log10() * 100.0) as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `b`.
fn bucket_value(b: usize) -> Duration {
    Duration::from_secs_f64(10f64.powf((b + 1) as f64 / 100.0) / 1e6)
}

/// What one part measured; one line of `key=value` words on its stdout.
#[derive(Default, Debug)]
struct Tally {
    opened: u64,
    connect_errors: u64,
    requests: u64,
    /// Requests that failed: no answer in time, a closed connection, a
    /// non-2xx status, a malformed response.
    request_errors: u64,
    /// The failures by kind, in `FAILURES` order.
    failures: [u64; FAILURES.len()],
    hist: Vec<u64>,
}

/// Kinds of failed requests.
const FAILURES: [&str; 4] = ["timeout", "closed", "status", "framing"];

impl Tally {
    fn to_line(&self) -> String {
        let hist: Vec<String> = self
            .hist
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(b, n)| format!("{b}:{n}"))
            .collect();
        let failures: Vec<String> = FAILURES
            .iter()
            .zip(self.failures)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "done opened={} connect_errors={} requests={} request_errors={} {} hist={}",
            self.opened,
            self.connect_errors,
            self.requests,
            self.request_errors,
            failures.join(" "),
            hist.join(",")
        )
    }

    fn add_line(&mut self, line: &str) {
        for word in line.split_whitespace().skip(1) {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            let n = || v.parse::<u64>().unwrap_or(0);
            match k {
                "opened" => self.opened += n(),
                "connect_errors" => self.connect_errors += n(),
                "requests" => self.requests += n(),
                "request_errors" => self.request_errors += n(),
                kind if FAILURES.contains(&kind) => {
                    if let Some(i) = FAILURES.iter().position(|f| *f == kind) {
                        self.failures[i] += n();
                    }
                }
                "hist" => {
                    for pair in v.split(',').filter(|p| !p.is_empty()) {
                        if let Some((b, c)) = pair.split_once(':') {
                            if let (Ok(b), Ok(c)) = (b.parse::<usize>(), c.parse::<u64>()) {
                                self.hist[b.min(BUCKETS - 1)] += c;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let total: u64 = self.hist.iter().sum();
        let want = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (b, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return bucket_value(b);
            }
        }
        Duration::ZERO
    }
}

fn main() {
    let args = Args::parse();
    let Some(target) = args.target else {
        println!("c50k: no --target; run: cargo bench --bench c50k -- --target HOST:PORT [--connections N] [--pid PROXY_PID] (or benches/c50k.sh)");
        return;
    };
    let code = match &args.part {
        Some(part) => run_part(&args, target, part),
        None => run_parent(&args),
    };
    std::process::exit(code);
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn run_parent(args: &Args) -> i32 {
    let n = args.processes as usize;
    let per_part = (args.connections as usize).div_ceil(n);
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(_, h)| h);
    if per_part as u64 + 64 > hard {
        eprintln!(
            "c50k: {per_part} connections per process do not fit in the open files limit ({hard}); use --processes {}",
            u64::from(args.connections).div_ceil(hard.saturating_sub(64).max(1))
        );
        return 2;
    }
    let base = args.pid.and_then(rss_kib);
    if let (Some(pid), None) = (args.pid, base) {
        eprintln!("c50k: cannot read /proc/{pid}/status: no memory figures");
    }
    let exe = std::env::current_exe().expect("own path");
    let mut children = Vec::new();
    let started = Instant::now();
    for k in 0..n {
        let child = Command::new(&exe)
            .args(std::env::args().skip(1))
            .arg("--part")
            .arg(format!("{k}/{n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("c50k: cannot start part {k}: {e}");
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return 2;
            }
        }
    }
    let mut outs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("piped")))
        .collect();
    // Phase 1: each part says when its connections are open.
    let mut opened = 0;
    let mut open_errors = 0;
    let mut open_failed = 0;
    for out in &mut outs {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let mut t = Tally {
            hist: vec![0; BUCKETS],
            ..Tally::default()
        };
        t.add_line(&line);
        opened += t.opened;
        open_errors += t.connect_errors;
        open_failed += t.request_errors;
    }
    let open_time = started.elapsed();
    println!(
        "open: {opened} connections in {:.1} s ({open_errors} could not connect, {open_failed} first requests failed), {n} process(es)",
        open_time.as_secs_f64()
    );
    // Phase 2: all open and silent.
    std::thread::sleep(args.settle);
    let idle = args.pid.and_then(rss_kib);
    if let (Some(b), Some(i)) = (base, idle) {
        println!(
            "proxy memory: {b} KiB before, {i} KiB with {opened} idle connections: {:.2} KiB a connection",
            (i.saturating_sub(b)) as f64 / opened.max(1) as f64
        );
    }
    // Phase 3: the load.
    for c in &mut children {
        if let Some(stdin) = c.stdin.as_mut() {
            let _ = writeln!(stdin, "go");
        }
    }
    std::thread::sleep(args.duration / 2);
    let busy = args.pid.and_then(rss_kib);
    let mut total = Tally {
        hist: vec![0; BUCKETS],
        ..Tally::default()
    };
    for out in &mut outs {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        total.add_line(&line);
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let secs = args.duration.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let (Some(b), Some(m)) = (base, busy) {
        println!(
            "proxy memory under load: {m} KiB: {:.2} KiB a connection",
            (m.saturating_sub(b)) as f64 / opened.max(1) as f64
        );
    }
    // The final tallies count the open phase too: the load phase alone is
    // the difference.
    let load_requests = total.requests.saturating_sub(opened + open_failed);
    let load_failed = total.request_errors.saturating_sub(open_failed);
    let latency = if total.hist.iter().any(|n| *n > 0) {
        format!(
            "latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms(total.percentile(0.5)),
            ms(total.percentile(0.99)),
            ms(total.percentile(0.999)),
            ms(total.percentile(1.0)),
        )
    } else {
        "no request answered".to_string()
    };
    println!(
        "load: {load_requests} requests in {secs:.0} s = {:.0} requests/s, {load_failed} failed, {} could not connect; {latency}",
        load_requests as f64 / secs,
        total.connect_errors.saturating_sub(open_errors),
    );
    if total.request_errors > 0 {
        let kinds: Vec<String> = FAILURES
            .iter()
            .zip(total.failures)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        println!("failed requests: {}", kinds.join(", "));
    }
    let errors = total.connect_errors + total.request_errors;
    println!(
        "c50k: connections={opened} errors={errors} requests_per_s={:.0} p99_ms={:.2}",
        load_requests as f64 / secs,
        ms(total.percentile(0.99))
    );
    i32::from(errors > 0)
}

/// Counters one part's connections share (a current-thread runtime: no
/// contention, atomics only to share them between tasks).
#[derive(Default)]
struct Shared {
    opened: AtomicU64,
    connect_errors: AtomicU64,
    requests: AtomicU64,
    request_errors: AtomicU64,
    failures: [AtomicU64; FAILURES.len()],
    hist: Mutex<Vec<u64>>,
}

fn run_part(args: &Args, target: SocketAddr, part: &str) -> i32 {
    let (k, n) = part
        .split_once('/')
        .and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .unwrap_or((0, 1));
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared = Arc::new(Shared {
        hist: Mutex::new(vec![0; BUCKETS]),
        ..Shared::default()
    });
    let ids: Vec<usize> = (k..args.connections as usize).step_by(n.max(1)).collect();
    let args = Arc::new(args.clone());
    rt.block_on(async {
        let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
        let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(ids.len().max(1));
        let rate = (args.connect_rate as usize / n.max(1)).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = rate.div_ceil(100).max(1);
        let mut tasks = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(per_tick) {
            tick.tick().await;
            for &id in chunk {
                let (args, shared, go, open) =
                    (args.clone(), shared.clone(), go_rx.clone(), open_tx.clone());
                tasks.push(tokio::spawn(async move {
                    connection(id, target, &args, &shared, go, open).await
                }));
            }
        }
        drop(open_tx);
        // Every connection reports once, opened or failed.
        while open_rx.recv().await.is_some() {}
        println!(
            "open opened={} connect_errors={} request_errors={}",
            shared.opened.load(Ordering::Relaxed),
            shared.connect_errors.load(Ordering::Relaxed),
            shared.request_errors.load(Ordering::Relaxed)
        );
        let _ = std::io::stdout().flush();
        // Wait for the parent's "go" (a blocking read, off the runtime).
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        let _ = go_tx.send(Some(Instant::now()));
        for t in tasks {
            let _ = t.await;
        }
    });
    let hist = shared.hist.lock().map(|h| h.clone()).unwrap_or_default();
    let tally = Tally {
        opened: shared.opened.load(Ordering::Relaxed),
        connect_errors: shared.connect_errors.load(Ordering::Relaxed),
        requests: shared.requests.load(Ordering::Relaxed),
        request_errors: shared.request_errors.load(Ordering::Relaxed),
        failures: std::array::from_fn(|i| shared.failures[i].load(Ordering::Relaxed)),
        hist,
    };
    println!("{}", tally.to_line());
    0
}

/// Loopback source address of connection `id`: 127.0.0.2 for the first
/// `per_source`, then .3, and so on.
fn source(id: usize, per_source: u32) -> SocketAddr {
    let i = 2 + id / (per_source as usize).max(1);
    let ip = Ipv4Addr::new(127, 0, (i / 256) as u8, (i % 256) as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 0))
}

async fn open(id: usize, target: SocketAddr, args: &Args) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // The port is picked at connect, unique per (source, destination): a
    // source port left in TIME_WAIT by an earlier run to another
    // destination stays usable.
    no_port_at_bind(&socket)?;
    socket.bind(source(id, args.per_source))?;
    let stream = tokio::time::timeout(args.timeout, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2): `bind` takes the address
/// only, and `connect` picks the port.
fn no_port_at_bind(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One client connection: open, one request, wait for "go", then a
/// request every interval until the load phase ends.
async fn connection(
    id: usize,
    target: SocketAddr,
    args: &Args,
    shared: &Shared,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
    opened: tokio::sync::mpsc::Sender<()>,
) {
    let request = format!("GET /c50k/{id} HTTP/1.1\r\nHost: c50k\r\nX-Client-Id: {id}\r\n\r\n");
    let mut buf = Vec::with_capacity(512);
    let mut stream = match open(id, target, args).await {
        Ok(s) => {
            shared.opened.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            shared.connect_failed(&e);
            None
        }
    };
    if let Some(s) = &mut stream {
        if !shared
            .request(s, request.as_bytes(), &mut buf, args.timeout)
            .await
        {
            stream = None;
        }
    }
    let _ = opened.send(()).await;
    drop(opened);
    let Ok(start) = go.wait_for(Option::is_some).await.map(|s| s.expect("set")) else {
        return;
    };
    // Each connection at its own offset in the interval.
    let offset = args.interval.mul_f64(fastrand::f64());
    let end = start + args.duration;
    let mut at = start + offset;
    while at < end {
        tokio::time::sleep_until(at.into()).await;
        at += args.interval;
        // A connection that failed is opened again for the next request.
        let s = match &mut stream {
            Some(s) => s,
            None => match open(id, target, args).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    shared.connect_failed(&e);
                    continue;
                }
            },
        };
        if !shared
            .request(s, request.as_bytes(), &mut buf, args.timeout)
            .await
        {
            stream = None;
        }
    }
}

impl Shared {
    /// Counts a failed connect; the first one's cause is printed.
    fn connect_failed(&self, e: &std::io::Error) {
        if self.connect_errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("c50k: first failed connect: {e}");
        }
    }

    /// One request on `s`, counted; whether the connection is still usable.
    async fn request(
        &self,
        s: &mut TcpStream,
        request: &[u8],
        buf: &mut Vec<u8>,
        limit: Duration,
    ) -> bool {
        let sent = Instant::now();
        let answer = exchange(s, request, buf, limit).await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let kind = match answer {
            Ok(Answer::Ok) => {
                if let Ok(mut h) = self.hist.lock() {
                    h[bucket(sent.elapsed())] += 1;
                }
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => 0,
            Err(_) | Ok(Answer::Closed) => 1,
            Ok(Answer::Status(code)) => {
                if self.failures[2].load(Ordering::Relaxed) == 0 {
                    eprintln!("c50k: first failed status: {code}");
                }
                2
            }
            Ok(Answer::Framing) => 3,
        };
        self.failures[kind].fetch_add(1, Ordering::Relaxed);
        self.request_errors.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// How a response ended.
enum Answer {
    /// `2xx`, and the connection stays open.
    Ok,
    /// The connection closed before or after the answer.
    Closed,
    /// Another status (the first line's code).
    Status(u16),
    /// No `Content-Length`, or an unreadable head.
    Framing,
}

/// Sends `request` and reads one response (framed by `Content-Length`).
async fn exchange(
    s: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<Answer> {
    tokio::time::timeout(limit, async {
        s.write_all(request).await?;
        buf.clear();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = head
                    .strip_prefix("http/1.1 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse::<u16>().ok());
                let Some(status) = status else {
                    return Ok(Answer::Framing);
                };
                let closes = head.contains("\r\nconnection: close");
                let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                else {
                    return Ok(Answer::Framing);
                };
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(Answer::Closed);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(if !(200..300).contains(&status) {
                    Answer::Status(status)
                } else if closes {
                    Answer::Closed
                } else {
                    Answer::Ok
                });
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Answer::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
