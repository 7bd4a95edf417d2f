//! The `stickylb` binary's commands: `check` errors name file, line and
//! column; `route` agrees with a running proxy.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn stickylb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run stickylb")
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

const GOOD: &str = "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:9002\"\nweight = 2\n";

#[test]
fn check_accepts_a_good_file_and_prints_shares() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, GOOD);
    let out = stickylb(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok, 2 backends"), "{stdout}");
    let shares: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split("share").nth(1))
        .map(|s| s.trim().trim_end_matches('%').parse().unwrap())
        .collect();
    assert_eq!(shares.len(), 2, "{stdout}");
    assert!(
        (shares.iter().sum::<f64>() - 100.0).abs() < 0.05,
        "{shares:?}"
    );
    assert!(shares[1] > shares[0], "weight 2 owns more: {shares:?}");
}

#[test]
fn check_shipped_config() {
    let out = stickylb(&[
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_errors_name_the_line() {
    let b = "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n";
    let cases: Vec<(String, usize, &str)> = vec![
        (format!("{b}colour = \"red\"\n"), 4, "unknown field"),
        (format!("[routing]\nvnode = 160\n{b}"), 2, "unknown field"),
        (format!("{b}weight = 0\n"), 4, "weight"),
        (
            format!("{b}[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9002\"\n"),
            5,
            "duplicate backend name",
        ),
        (
            format!("{b}[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:9001\"\n"),
            6,
            "duplicate backend address",
        ),
        (
            "[listen]\naddress = \"127.0.0.1:8080\"\n".to_string(),
            3,
            "pool is empty",
        ),
        (
            format!("[timeouts]\nconnect = \"soon\"\n{b}"),
            2,
            "not a duration",
        ),
        (
            format!("[listen]\naddress = \"localhost\"\n{b}"),
            2,
            "not an IP:port",
        ),
        (
            "[[backend]]\nname = \"a\"\naddress = \"no-port\"\n".to_string(),
            3,
            "host:port",
        ),
        (
            format!("[routing]\nsticky_cookie = {{ name = \"my id\" }}\n{b}"),
            2,
            "not a valid cookie name",
        ),
        (
            format!("[health]\ninterval = \"0s\"\n{b}"),
            2,
            "greater than zero",
        ),
        (
            format!("[limits]\nmax_connections = -1\n{b}"),
            2,
            "limits.max_connections",
        ),
        (
            format!("[routing]\nalgorithm = \"maglev\"\ntable_size = 65536\n{b}"),
            3,
            "is not a prime; use a prime such as 65537",
        ),
        (
            format!("[routing]\nmissing_key = \"drop\"\n{b}"),
            2,
            "missing_key",
        ),
        (
            format!("[routing]\nkey = [\"header:x-id\", \"body:x\"]\n{b}"),
            2,
            "routing.key",
        ),
        (format!("{b}weight = \"heavy\"\n"), 4, "invalid type"),
        (
            format!("[listen]\ntls = {{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }}\n{b}"),
            2,
            "TLS certificate file: cannot read /nonexistent/c.pem",
        ),
        (
            format!("[timeouts]\nidle = \"300000000000years\"\n{b}"),
            2,
            "longer than the 1 year allowed",
        ),
        (
            format!("[timeouts]\nconnect = \"1s\"\nclient_header_read = \"366d\"\n{b}"),
            3,
            "timeouts.client_header_read",
        ),
        (
            format!("[timeouts]\nupgraded_idle = \"2y\"\n{b}"),
            2,
            "longer than the 1 year allowed",
        ),
        (
            format!("{b}[health]\ninterval = \"400d\"\n"),
            5,
            "health.interval",
        ),
        (
            format!("[routing]\nsticky_cookie = {{ name = \"id\", max_age = \"5y\" }}\n{b}"),
            2,
            "1 year",
        ),
        ("[[backend]\nname = \"a\"\n".to_string(), 1, ""),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (text, line, what) in cases {
        let path = write_config(&dir, &text);
        let out = stickylb(&["check", "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
        let prefix = format!("{path}:{line}:");
        assert!(
            stderr.contains(&prefix),
            "want {prefix} in {stderr:?} for\n{text}"
        );
        assert!(stderr.contains(what), "want {what:?} in {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr:?}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn untrusted_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let fifo = dir.path().join("fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let utf8 = dir.path().join("latin1.toml");
    std::fs::write(
        &utf8,
        b"[[backend]]\nname = \"caf\xe9\"\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    for (path, what) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (Path::new("/dev/urandom"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (dir.path(), "not a regular file"),
        (big.as_path(), "more than the 1048576 allowed"),
        (utf8.as_path(), ":2:12: the file is not UTF-8"),
    ] {
        let start = std::time::Instant::now();
        let out = stickylb(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path:?}: {stderr}");
        assert!(
            stderr.contains(what),
            "{path:?}: want {what:?} in {stderr:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr:?}");
        // Bounded: no read of an endless device, no wait on a FIFO writer.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{path:?}"
        );
    }
}

#[test]
fn missing_file_and_usage_errors() {
    let out = stickylb(&["check", "--config", "/nonexistent/stickylb.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/stickylb.toml"));
    assert_eq!(stickylb(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(stickylb(&["route"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_agrees_with_the_proxy() {
    let backends = spawn_backends(4).await;
    let refs: Vec<_> = backends.iter().collect();
    let text = config_text(&refs, "vnodes = 100\nseed = 7", "");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &text);
    let keys: Vec<String> = (0..1000).map(|i| format!("route-{i}")).collect();
    let mut args = vec!["route", "--config", path.as_str()];
    args.extend(keys.iter().map(String::as_str));
    let out = stickylb(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), keys.len());

    let proxy = spawn_proxy(&text).await;
    let client = client();
    for (key, line) in keys.iter().zip(lines) {
        let served = backend_for(&client, proxy.addr, key).await;
        assert_eq!(line, format!("{key} -> {served}"));
    }
}

#[test]
fn check_names_a_missing_or_invalid_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let listen = "[listen]\ntls = { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }\n";
    let path = write_config(&dir, &format!("{listen}{GOOD}"));
    let cert = dir.path().join("tls").join("cert.pem");

    let out = stickylb(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&*cert.to_string_lossy()), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr:?}");

    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("tls").join("key.pem"), key.serialize_pem()).unwrap();
    let out = stickylb(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&*cert.to_string_lossy()), "{stderr}");

    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, params.self_signed(&key).unwrap().pem()).unwrap();
    let out = stickylb(&["check", "--config", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    use std::io::Read;
    let keys: Vec<String> = (0..50_000).map(|i| format!("k{i}")).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args([
            "route",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .args(&keys)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run stickylb");
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader goes away, as `| head -1` does.
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
