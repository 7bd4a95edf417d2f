//! Real origin servers that nobody here wrote, behind the proxy:
//! `python3 -m http.server` (on every machine that runs these tests) and,
//! where it is installed, NGINX with two virtual hosts. A lenient test
//! backend once hid an absolute-form request target that real servers
//! reject; these would not.

mod common;

use common::recording::read_response;
use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A child process killed (by its own PID) and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port: bound to port 0, then released for the server.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}

/// `python3 -m http.server` serving `dir` on 127.0.0.1; returns once it
/// says it is serving.
fn python_http_server(dir: &Path) -> (Server, SocketAddr) {
    let port = free_port();
    let mut child = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("python3 http.server prints its address");
    assert!(line.starts_with("Serving HTTP"), "http.server: {line}");
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn proxy_for(origin: SocketAddr) -> TestProxy {
    spawn_proxy(&config_for(
        &[("origin", origin)],
        "key = [\"header:x-client-id\"]",
        "",
    ))
    .await
}

#[tokio::test]
async fn python_http_server_serves_files_through_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("hello.txt"), &hello).expect("write");
    std::fs::write(dir.path().join("a b.txt"), b"spaced\n").expect("write");
    let (_server, origin) = python_http_server(dir.path());
    let proxy = proxy_for(origin).await;
    let client = client();

    for path in ["/hello.txt", "/hello.txt?v=1&x=%2F"] {
        let r = send(&client, get(proxy.addr, path, &[("x-client-id", "k")])).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.body, hello, "{path}");
    }
    let r = send(&client, get(proxy.addr, "/a%20b.txt", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "spaced\n");
    let r = send(&client, get(proxy.addr, "/missing.txt", &[])).await;
    assert_eq!(r.status, 404);

    // HEAD: the file's length, no body (read raw, so nothing is assumed).
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"HEAD /hello.txt HTTP/1.1\r\nHost: files.example\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), true).await;
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert!(r.has_header("content-length", "5000"), "{}", r.head);
}

/// NGINX with two virtual hosts on one port, run in the foreground from
/// its own prefix directory as one process (no master, so killing its PID
/// leaves no worker behind); `None` when nginx is not installed.
fn nginx_vhosts(dir: &Path) -> Option<(Server, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let conf = format!(
        "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
         server {{ listen 127.0.0.1:{port} default_server; server_name _; return 200 \"default\\n\"; }}\n\
         server {{ listen 127.0.0.1:{port}; server_name one.example; return 200 \"one\\n\"; }}\n\
         server {{ listen 127.0.0.1:{port}; server_name two.example; return 200 \"two\\n\"; }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // NGINX says nothing when ready: try to connect, at most 10 s.
    let ready = (0..200).any(|_| {
        std::net::TcpStream::connect(addr).is_ok() || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(
        ready,
        "nginx did not start: {:?}",
        std::fs::read_to_string(dir.join("error.log"))
    );
    Some((server, addr))
}

#[tokio::test]
async fn nginx_virtual_host_is_chosen_by_the_clients_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_server, origin)) = nginx_vhosts(dir.path()) else {
        eprintln!("skipped: nginx is not installed");
        return;
    };
    let proxy = proxy_for(origin).await;
    for (host, expect) in [
        ("one.example", "one\n"),
        ("two.example", "two\n"),
        ("else.example", "default\n"),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Client-Id: k\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let r = read_response(&mut s, &mut Vec::new(), false).await;
        assert_eq!(r.status_line(), "HTTP/1.1 200 OK", "{host}");
        assert_eq!(r.body, expect.as_bytes(), "{host}");
    }
    // HTTP/1.0 without Host: NGINX needs none from a 1.0 client, but the
    // proxy speaks 1.1 upstream and must name one (NGINX would answer 400).
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nX-Client-Id: k\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status_line(), "HTTP/1.0 200 OK");
    assert_eq!(r.body, b"default\n");
}
