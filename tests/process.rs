//! The real `stickylb run` process: signals (SIGHUP reload, SIGTERM drain)
//! and the access log on stdout.

mod common;

use common::*;
use http::StatusCode;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `stickylb` child; killed if the test ends early.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Log lines read while waiting for another.
    passed: Vec<String>,
    stdout: mpsc::Receiver<String>,
    /// With `Stdout::Unread`, the pipe nobody reads (kept open).
    _unread: Option<std::process::ChildStdout>,
}

/// Whether the test reads the child's stdout (the access log).
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    Read,
    /// Left unread: the pipe fills and stays full.
    Unread,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Our own child, by its handle.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    /// With `open_files`, the process runs under that open-files limit
    /// (soft and hard), set by `prlimit` before it starts.
    fn start_with_open_files(
        config: &std::path::Path,
        open_files: Option<u64>,
        out: Stdout,
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_stickylb");
        let mut cmd = match open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args([
                "--threads",
                "2",
                "--config",
                config.to_str().unwrap(),
                "run",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stickylb");
        let stderr = lines(child.stderr.take().unwrap());
        let (stdout, unread) = match out {
            Stdout::Read => (lines(child.stdout.take().unwrap()), None),
            Stdout::Unread => (mpsc::channel().1, child.stdout.take()),
        };
        let mut r = Running {
            child,
            stderr,
            passed: Vec::new(),
            stdout,
            _unread: unread,
        };
        r.wait_log("listening on");
        r
    }

    /// Reads stderr until a line contains `pattern` (10 s at most); lines
    /// passed over stay for later calls.
    fn wait_log(&mut self, pattern: &str) -> String {
        if let Some(i) = self.passed.iter().position(|l| l.contains(pattern)) {
            return self.passed.remove(i);
        }
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(pattern) => return line,
                Ok(line) => self.passed.push(line),
                Err(e) => panic!("no log line with {pattern:?}: {e}"),
            }
        }
    }

    /// Waits for the process to exit (off the async threads); its exit code.
    async fn exit_code(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || self.child.wait().expect("wait").code())
            .await
            .expect("wait task")
    }

    /// Every log line read so far or waiting now.
    fn log_so_far(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.try_recv() {
            self.passed.push(line);
        }
        self.passed.clone()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `stickylb run` process on free loopback ports in front of
/// `backends`, with `extra` config sections, under an open-files limit of
/// `open_files` if given; its config directory lives as long as it.
struct Launched {
    run: Running,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn launch(backends: &[&TestBackend], extra: &str, open_files: Option<u64>) -> Launched {
    launch_to(backends, extra, open_files, Stdout::Read)
}

fn launch_to(
    backends: &[&TestBackend],
    extra: &str,
    open_files: Option<u64>,
    out: Stdout,
) -> Launched {
    let named: Vec<(&str, std::net::SocketAddr)> =
        backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    launch_for(&named, extra, open_files, out)
}

fn launch_for(
    backends: &[(&str, std::net::SocketAddr)],
    extra: &str,
    open_files: Option<u64>,
    out: Stdout,
) -> Launched {
    let (port, admin_port) = (free_port(), free_port());
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n{extra}\n"
    );
    for (name, addr) in backends {
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    Launched {
        run: Running::start_with_open_files(&path, open_files, out),
        proxy: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_access_log_and_sigterm_drains() {
    let backends = spawn_backends(2).await;
    let refs: Vec<_> = backends.iter().collect();
    let Launched {
        mut run,
        proxy,
        admin,
        _dir,
    } = launch(
        &refs,
        "[log]\naccess = true\nformat = \"json\"\n[timeouts]\nshutdown_grace = \"5s\"",
        None,
    );
    let client = client();

    // Access log: one JSON line per request on stdout.
    let served = backend_for(&client, proxy, "alice").await;
    let line = run
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .expect("access log line");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("json access log");
    assert_eq!(entry["backend"], served.as_str());
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["key_source"], "header");
    assert_eq!(entry["client"], "127.0.0.1");

    // SIGHUP forces a reload of the unchanged file.
    run.signal("HUP");
    run.wait_log("SIGHUP received");
    run.wait_log("config reloaded, routing unchanged");
    let m = send(&client, get(admin, "/metrics", &[])).await.text();
    assert_eq!(metric(&m, "stickylb_ring_rebuilds_total"), Some(1.0));
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(1.0));

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            send(
                &client,
                get(proxy, "/slow?ms=1000", &[("x-client-id", "bob")]),
            )
            .await
        }
    });
    // The request is in flight once the backend counts it.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = send(&client, get(admin, "/metrics", &[])).await.text();
            let in_flight: f64 = backends
                .iter()
                .filter_map(|b| {
                    metric(
                        &m,
                        &format!("stickylb_backend_in_flight{{backend=\"{}\"}}", b.name),
                    )
                })
                .sum();
            if in_flight >= 1.0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("slow request in flight");
    run.signal("TERM");
    run.wait_log("SIGTERM received");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(run.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_is_local_and_no_backend_goes_down() {
    let backend = spawn_backend("b1").await;
    let Launched {
        mut run,
        proxy,
        admin,
        _dir,
    } = launch(
        &[&backend],
        "[health]\ninterval = \"200ms\"\nfall = 2\n[timeouts]\nconnect = \"5s\"",
        Some(300),
    );
    let line = run.wait_log("does not fit in the open files limit of 300");
    assert!(line.contains("at most 43 client connections"), "{line}");

    // 3 HTTP/2 connections × 200 streams to a slow endpoint: more backend
    // connections than the process has descriptors. (The connect timeout
    // leaves room for a SYN retransmit: the test's own backend may not
    // accept 600 connections at once on a busy machine.)
    let mut streams = Vec::new();
    for _ in 0..3 {
        let tx = h2_connect(proxy).await;
        for i in 0..200 {
            let mut tx = tx.clone();
            streams.push(tokio::spawn(async move {
                let req = http::Request::get(format!("http://{proxy}/slow?ms=300"))
                    .header("x-client-id", format!("k{i}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(20), async {
                    tx.ready().await?;
                    tx.send_request(req).await
                })
                .await
                .expect("stream answered within 20 s");
                resp.map(|r| r.status().as_u16()).unwrap_or(0)
            }));
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for s in streams {
        *statuses.entry(s.await.unwrap()).or_insert(0) += 1;
    }
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        statuses.keys().all(|s| [200, 503].contains(s)),
        "{statuses:?}\n{:#?}",
        run.log_so_far()
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
    );
    run.wait_log("this is the proxy's own limit");

    // After the flood: the backend is healthy and serves at once.
    let client = client();
    let m = send(&client, get(admin, "/metrics", &[])).await.text();
    assert_eq!(
        metric(&m, "stickylb_backend_healthy{backend=\"b1\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "stickylb_upstream_errors_total{backend=\"b1\",kind=\"connect\"}"
        ),
        Some(0.0)
    );
    let local = metric(
        &m,
        "stickylb_proxy_responses_total{cause=\"local_resources\"}",
    );
    assert_eq!(local, statuses.get(&503).map(|n| f64::from(*n)), "{m}");
    let r = send(&client, get(proxy, "/", &[("x-client-id", "after")])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_healthz_says_draining_while_the_proxy_serves_for_shutdown_delay() {
    let backend = spawn_backend("b1").await;
    let Launched {
        mut run,
        proxy,
        admin,
        _dir,
    } = launch(
        &[&backend],
        "[timeouts]\nshutdown_delay = \"1500ms\"\nshutdown_grace = \"5s\"",
        None,
    );
    let client = client();
    let r = send(&client, get(admin, "/healthz", &[])).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));

    run.signal("TERM");
    run.wait_log("draining: /healthz answers 503");
    // From the signal on: 503 draining, while requests are still served.
    let r = send(&client, get(admin, "/healthz", &[])).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    );
    let r = send(&client, get(proxy, "/", &[("x-client-id", "late")])).await;
    assert_eq!(r.status, StatusCode::OK, "served during shutdown_delay");
    assert_eq!(run.exit_code().await, Some(0));
}

/// Reads `n` access-log lines (JSON), 10 s at most for each.
fn access_lines(run: &Running, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let line = run
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("access-log line {i} of {n}: {e}"));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .collect()
}

/// A full outage, as an error-rate alert must see it: every backend down,
/// and every 503 counted in `responses_total` and by cause, with an
/// access-log line each; so are the proxy's other refusals (missing key,
/// a head over the limit, a malformed head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_is_counted_and_logged_for_every_response() {
    // Two addresses nothing listens on: health checks take both out.
    let dead: Vec<TestBackend> = {
        let mut v = Vec::new();
        for name in ["b1", "b2"] {
            let b = spawn_backend(name).await;
            v.push(b);
        }
        v
    };
    let refs: Vec<_> = dead.iter().collect();
    let Launched {
        run,
        proxy,
        admin,
        _dir,
    } = launch(
        &refs,
        "[log]\naccess = true\nformat = \"json\"\n[routing]\nmissing_key = \"reject\"\n\
         [health]\ninterval = \"100ms\"\nfall = 1\n[limits]\nmax_request_header_bytes = 16384",
        None,
    );
    drop(dead);
    let client = client();
    // Both are down once /ring says so (bounded: 10 s).
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ring = send(&client, get(admin, "/ring", &[])).await.text();
            if ring.matches("\"healthy\":false").count() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both backends marked down");

    const N: usize = 20;
    for i in 0..N {
        let id = format!("client-{i}");
        let r = send(&client, get(proxy, "/x", &[("x-client-id", &id)])).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let lines = access_lines(&run, N);
    for l in &lines {
        assert_eq!(l["status"], 503, "{l}");
        assert_eq!(l["cause"], "no_backend", "{l}");
        assert_eq!(l["backend"], "", "{l}");
        assert_eq!(l["key_source"], "header", "{l}");
        assert_eq!(l["path"], "/x", "{l}");
        assert!(l["key_hash"].is_u64(), "{l}");
    }

    // The proxy's other refusals, each with its line and cause.
    let no_key = send(&client, get(proxy, "/", &[])).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let too_large =
        common::recording::raw_exchange(proxy, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&too_large).starts_with("HTTP/1.1 431"));
    let malformed = common::recording::raw_exchange(
        proxy,
        b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(String::from_utf8_lossy(&malformed).starts_with("HTTP/1.1 400"));
    let causes: Vec<_> = access_lines(&run, 3)
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["cause"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        (400, "missing_key"),
        (431, "header_too_large"),
        (400, "bad_request"),
    ] {
        assert!(
            causes.contains(&(want.0, want.1.to_string())),
            "{want:?} not in {causes:?}"
        );
    }

    let m = send(&client, get(admin, "/metrics", &[])).await.text();
    let count = |series: &str| metric(&m, series).unwrap_or(-1.0);
    assert_eq!(
        count("stickylb_responses_total{code_class=\"5xx\"}"),
        N as f64,
        "{m}"
    );
    assert_eq!(
        count("stickylb_responses_total{code_class=\"4xx\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"no_backend\"}"),
        N as f64
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"missing_key\"}"),
        1.0
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"header_too_large\"}"),
        1.0
    );
    assert_eq!(
        count("stickylb_proxy_responses_total{cause=\"bad_request\"}"),
        1.0
    );
    assert_eq!(count("stickylb_access_log_dropped_total"), 0.0);
}

/// SPEC: writing the access log never blocks a request. With stdout a pipe
/// nobody reads, the pipe fills after a few hundred lines; thousands more
/// requests are still served, and the lines that could not be written are
/// counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stdout_never_stalls_requests() {
    let backend = spawn_backend("b1").await;
    let Launched {
        run: _run,
        proxy,
        admin,
        _dir,
    } = launch_to(&[&backend], "[log]\naccess = true", None, Stdout::Unread);
    let client = client();
    // A 64 KiB pipe and the writer's 64 KiB buffer hold about 600 lines of
    // about 220 bytes; the queue 16,384 more. 20,000 requests overflow all.
    const N: usize = 20_000;
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..N {
        let t = std::time::Instant::now();
        let r = send(&client, get(proxy, "/", &[("x-client-id", &i.to_string())])).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        slowest = slowest.max(t.elapsed());
    }
    let m = send(&client, get(admin, "/metrics", &[])).await.text();
    let dropped = metric(&m, "stickylb_access_log_dropped_total").unwrap_or(0.0);
    println!(
        "{N} requests in {:?} with stdout unread; slowest {slowest:?}; {dropped} lines dropped",
        started.elapsed()
    );
    assert!(dropped >= 1.0, "{m}");
}

/// An upgraded connection's access-log line is written when the tunnel
/// ends, with the bytes it carried each way (as NGINX and Envoy log it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_is_logged_at_its_end_with_its_bytes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let ws = spawn_ws_backend("w1").await;
    let Launched {
        run, proxy, _dir, ..
    } = launch_for(
        &[("w1", ws.addr)],
        "[log]\naccess = true\nformat = \"json\"",
        None,
        Stdout::Read,
    );
    let mut req = format!("ws://{proxy}/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-client-id", "alice".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut socket, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = socket.next().await.unwrap().unwrap();
    assert_eq!(greeting, Message::text("w1"));
    let payload = "x".repeat(5000);
    socket.send(Message::text(payload.clone())).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text(payload)
    );
    // Still open: no line yet.
    assert!(
        run.stdout.try_recv().is_err(),
        "logged before the tunnel ended"
    );
    socket.close(None).await.unwrap();
    drop(socket);
    let line = &access_lines(&run, 1)[0];
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["backend"], "w1", "{line}");
    // 5,000 bytes each way and the frames' headers, plus the greeting and
    // the close frames.
    let (bytes_in, bytes_out) = (
        line["bytes_in"].as_u64().unwrap(),
        line["bytes_out"].as_u64().unwrap(),
    );
    assert!((5000..5100).contains(&bytes_in), "{line}");
    assert!((5002..5100).contains(&bytes_out), "{line}");
}
