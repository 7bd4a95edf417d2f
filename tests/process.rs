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
    stdout: mpsc::Receiver<String>,
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
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stickylb"))
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
        let stdout = lines(child.stdout.take().unwrap());
        let mut r = Running {
            child,
            stderr,
            stdout,
        };
        r.wait_log("listening on");
        r
    }

    /// Reads stderr until a line contains `pattern` (10 s at most).
    fn wait_log(&mut self, pattern: &str) -> String {
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(pattern) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {pattern:?}: {e}"),
            }
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_access_log_and_sigterm_drains() {
    let backends = spawn_backends(2).await;
    let (port, admin_port) = (free_port(), free_port());
    let mut text = String::new();
    text.push_str(&format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n"
    ));
    text.push_str("[log]\naccess = true\nformat = \"json\"\n");
    text.push_str("[timeouts]\nshutdown_grace = \"5s\"\n");
    for b in &backends {
        text.push_str(&format!(
            "[[backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let mut run = Running::start(&path);
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
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
    let status = tokio::task::spawn_blocking(move || {
        let status = run.child.wait().expect("wait");
        drop(run);
        status
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}
