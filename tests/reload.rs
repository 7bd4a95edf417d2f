//! Live reload end to end: a real config file in a temp directory, the real
//! notify watcher, a real proxy under load, and the metrics it exports.

mod common;

use common::*;
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use stickylb::config;
use stickylb::control::reload::{self, Reloader, Status};
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{ring_of, Router};
use tokio::sync::watch;

/// How a test replaces the config file, as editors and orchestrators do.
#[derive(Debug, Clone, Copy)]
enum Method {
    /// Truncate and write the file itself.
    InPlace,
    /// Write a temp file, rename it over the config (vim, `sed -i`).
    Rename,
    /// Remove the file, then create it again.
    DeleteCreate,
    /// Make `config.toml` a symlink to `..data/config.toml`, `..data` a
    /// symlink to a fresh directory (the Kubernetes ConfigMap layout).
    SymlinkConvert,
    /// Swap `..data` to a fresh directory; `config.toml` stays a symlink.
    SymlinkSwap,
}

struct ConfigDir {
    dir: tempfile::TempDir,
    versions: u32,
}

impl ConfigDir {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.toml"), text).expect("write");
        ConfigDir { dir, versions: 0 }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn write(&mut self, text: &str, how: Method) {
        let d = self.dir.path();
        let path = self.path();
        match how {
            Method::InPlace => std::fs::write(&path, text).expect("write in place"),
            Method::Rename => {
                let tmp = d.join(".config.toml.swp");
                std::fs::write(&tmp, text).expect("write temp");
                std::fs::rename(&tmp, &path).expect("rename");
            }
            Method::DeleteCreate => {
                std::fs::remove_file(&path).expect("delete");
                std::fs::write(&path, text).expect("create");
            }
            Method::SymlinkConvert | Method::SymlinkSwap => {
                self.versions += 1;
                let version = format!("..v{}", self.versions);
                std::fs::create_dir(d.join(&version)).expect("version dir");
                std::fs::write(d.join(&version).join("config.toml"), text).expect("write version");
                let tmp = d.join("..data_tmp");
                std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
                std::fs::rename(&tmp, d.join("..data")).expect("swap ..data");
                if matches!(how, Method::SymlinkConvert) {
                    let link = d.join(".config.toml.link");
                    std::os::unix::fs::symlink("..data/config.toml", &link).expect("symlink");
                    std::fs::rename(&link, &path).expect("link config.toml");
                }
            }
        }
    }
}

struct Live {
    proxy: TestProxy,
    reloader: Arc<Reloader>,
    status: watch::Receiver<Status>,
}

async fn start_live(path: &Path) -> Live {
    let metrics = Arc::new(Metrics::new());
    let (config, snap) = reload::load_initial(path, &metrics).expect("initial config");
    let router = Arc::new(Router::new(snap));
    let reloader = Arc::new(Reloader::new(
        path,
        &config,
        router.clone(),
        metrics.clone(),
    ));
    let status = reloader.subscribe();
    reloader.clone().start(std::future::pending());
    let proxy = start_proxy(router, metrics).await;
    Live {
        proxy,
        reloader,
        status,
    }
}

impl Live {
    /// Waits (on reload events, not a timer) until the live ring has `fingerprint`.
    async fn wait_for_ring(&mut self, fingerprint: u64) {
        let router = self.proxy.router.clone();
        let status = &mut self.status;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                status.borrow_and_update();
                if router.load().ring.fingerprint() == fingerprint {
                    return;
                }
                status.changed().await.expect("reloader alive");
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "ring {fingerprint:016x} not live after 10 s: {:?}",
                self.status.borrow()
            )
        });
    }

    /// Waits until the reloader has finished `attempts` attempts.
    async fn wait_for_attempts(&mut self, attempts: u64) -> Status {
        let status = &mut self.status;
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.attempts >= attempts),
        )
        .await
        .expect("reload attempt within 10 s")
        .expect("reloader alive")
        .clone()
    }

    async fn metrics_text(&self) -> String {
        self.proxy.metrics_text().await
    }
}

fn fingerprint(text: &str) -> u64 {
    let c = config::from_toml_str(text, "t.toml").expect("valid");
    ring_of(&c).expect("ring").fingerprint()
}

fn stickylb(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run stickylb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let pool = spawn_backends(6).await;
    let subset = |i: usize| -> Vec<&TestBackend> {
        // 3 to 6 backends; each step adds or removes at least one.
        let n = [3, 4, 5, 6, 5, 4][i % 6];
        let start = (i / 6) % 6;
        (0..n).map(|k| &pool[(start + k) % 6]).collect()
    };
    let texts: Vec<String> = (0..=50).map(|i| config_text(&subset(i), "", "")).collect();
    for w in texts.windows(2) {
        assert_ne!(
            fingerprint(&w[0]),
            fingerprint(&w[1]),
            "every step changes routing"
        );
    }
    let mut dir = ConfigDir::new(&texts[0]);
    let path = dir.path();
    let mut live = start_live(&path).await;
    let addr = live.proxy.addr;

    let load = Load::start(4, move |t, i| {
        get(
            addr,
            "/",
            &[("x-client-id", &format!("load-{t}-{}", i % 500))],
        )
    });

    let methods = [
        Method::SymlinkConvert,
        Method::SymlinkSwap,
        Method::Rename,
        Method::InPlace,
        Method::DeleteCreate,
    ];
    let keys: Vec<String> = (0..40).map(|i| format!("check-{i}")).collect();
    let client = client();
    for (step, text) in texts.iter().enumerate().skip(1) {
        let how = methods[(step - 1) % methods.len()];
        dir.write(text, how);
        live.wait_for_ring(fingerprint(text)).await;
        // Routing now matches `stickylb route` on the file just written.
        let mut args = vec!["route", "--config", path.to_str().unwrap()];
        args.extend(keys.iter().map(String::as_str));
        let routed = stickylb(&args);
        for (key, line) in keys.iter().zip(routed.lines()) {
            let served = backend_for(&client, addr, key).await;
            assert_eq!(line, format!("{key} -> {served}"), "step {step} ({how:?})");
        }
    }
    let (sent, failed) = load.finish().await;
    assert!(sent > 200, "the clients kept sending: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during 50 reloads"
    );
    let m = live.metrics_text().await;
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(51.0));
    assert_eq!(
        metric(&m, "stickylb_config_reload_failures_total").map(|f| f <= 10.0),
        Some(true),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_keeps_routing_and_is_counted() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let good = config_text(&refs, "", "");
    let mut dir = ConfigDir::new(&good);
    let mut live = start_live(&dir.path()).await;
    let client = client();
    let before: Vec<String> = futures_all(&client, live.proxy.addr, 100).await;

    dir.write(
        &format!("{good}\n[[backend]]\nname = \"x\"\nweight = 0\n"),
        Method::Rename,
    );
    let status = live.wait_for_attempts(1).await;
    match &status.last {
        reload::Outcome::Failed(e) => assert!(e.contains(":"), "error names a position: {e}"),
        other => panic!("expected a rejected file, got {other:?}"),
    }
    assert_eq!(futures_all(&client, live.proxy.addr, 100).await, before);
    let m = live.metrics_text().await;
    assert_eq!(
        metric(&m, "stickylb_config_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(1.0));
    assert_eq!(metric(&m, "stickylb_ring_rebuilds_total"), Some(0.0));

    // A fixed file (same routing, other bytes) applies without a new
    // generation; so does a forced reload of the same bytes.
    dir.write(&format!("# fixed\n{good}"), Method::InPlace);
    let status = live.wait_for_attempts(2).await;
    assert!(
        matches!(status.last, reload::Outcome::Applied { generation: 1, .. }),
        "{status:?}"
    );
    assert!(matches!(
        live.reloader.reload(true),
        reload::Outcome::Applied { generation: 1, .. }
    ));
    let m = live.metrics_text().await;
    assert_eq!(metric(&m, "stickylb_ring_rebuilds_total"), Some(2.0));
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(1.0));
}

async fn futures_all(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(backend_for(client, addr, &format!("inv-{i}")).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let pool = spawn_backends(4).await;
    let three: Vec<_> = pool.iter().take(3).collect();
    let four: Vec<_> = pool.iter().collect();
    let (old, new) = (config_text(&three, "", ""), config_text(&four, "", ""));
    let mut dir = ConfigDir::new(&old);
    let old_path = dir.dir.path().join("old.toml");
    let new_path = dir.dir.path().join("new.toml");
    std::fs::write(&old_path, &old).unwrap();
    std::fs::write(&new_path, &new).unwrap();
    let mut live = start_live(&dir.path()).await;
    let client = client();
    let keys: Vec<String> = (0..300).map(|i| format!("m-{i}")).collect();

    // requests_total per backend equals what was sent.
    let mut sent: std::collections::HashMap<String, f64> = Default::default();
    for k in &keys {
        *sent
            .entry(backend_for(&client, live.proxy.addr, k).await)
            .or_default() += 1.0;
    }
    let m = live.metrics_text().await;
    for (b, n) in &sent {
        let series = format!("stickylb_requests_total{{backend=\"{b}\",code_class=\"2xx\"}}");
        assert_eq!(metric(&m, &series), Some(*n), "{series}");
    }
    assert_eq!(
        metric(&m, "stickylb_key_source_total{source=\"header\"}"),
        Some(300.0)
    );
    let shares = share_sum(&m, &three);
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");

    // Add a backend: generation and rebuilds step by one, the remap
    // fraction equals `diff`'s, and each request whose key moved is counted.
    dir.write(&new, Method::Rename);
    live.wait_for_ring(fingerprint(&new)).await;
    let m = live.metrics_text().await;
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(2.0));
    assert_eq!(metric(&m, "stickylb_ring_rebuilds_total"), Some(1.0));
    let diff: serde_json::Value = serde_json::from_str(&stickylb(&[
        "diff",
        old_path.to_str().unwrap(),
        new_path.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let remap = metric(&m, "stickylb_ring_last_remap_fraction").unwrap();
    assert_eq!(remap, diff["moved_fraction"].as_f64().unwrap());
    assert!(remap > 0.1 && remap < 0.4, "{remap}");
    let shares = share_sum(&m, &four);
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");

    let old_ring = ring_of(&config::from_toml_str(&old, "o").unwrap()).unwrap();
    let new_ring = ring_of(&config::from_toml_str(&new, "n").unwrap()).unwrap();
    let name = |r: &stickylb::ring::Ring, k: &str| {
        r.members()[r.owner(r.hash(k.as_bytes()))].name.to_string()
    };
    let moved = keys
        .iter()
        .filter(|k| name(&old_ring, k) != name(&new_ring, k))
        .count() as f64;
    assert!(moved > 0.0);
    for round in 1..=2 {
        for k in &keys {
            assert_eq!(
                backend_for(&client, live.proxy.addr, k).await,
                name(&new_ring, k)
            );
        }
        let m = live.metrics_text().await;
        assert_eq!(
            metric(
                &m,
                "stickylb_remapped_requests_total{reason=\"ring_change\"}"
            ),
            Some(moved * f64::from(round)),
            "every request of a moved key counts until the next change"
        );
    }

    // /ring and /ring/lookup agree with the proxy.
    let ring: serde_json::Value = serde_json::from_str(
        &send(&client, get(live.proxy.admin, "/ring", &[]))
            .await
            .text(),
    )
    .unwrap();
    assert_eq!(ring["generation"], 2);
    assert_eq!(ring["backends"].as_array().unwrap().len(), 4);
    for k in keys.iter().take(50) {
        let l: serde_json::Value = serde_json::from_str(
            &send(
                &client,
                get(live.proxy.admin, &format!("/ring/lookup?key={k}"), &[]),
            )
            .await
            .text(),
        )
        .unwrap();
        let served = backend_for(&client, live.proxy.addr, k).await;
        assert_eq!(l["backend"], served.as_str());
        assert_eq!(l["owner"], served.as_str());
        assert_eq!(l["position"].as_u64(), Some(new_ring.hash(k.as_bytes())));
    }
    assert_eq!(
        send(&client, get(live.proxy.admin, "/nope", &[]))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&client, get(live.proxy.admin, "/healthz", &[]))
            .await
            .text(),
        "ok\n"
    );

    // Removing the backend drops its series.
    dir.write(&old, Method::InPlace);
    live.wait_for_ring(fingerprint(&old)).await;
    let m = live.metrics_text().await;
    assert!(!m.contains(&format!("backend=\"{}\"", pool[3].name)), "{m}");
    assert_eq!(metric(&m, "stickylb_ring_generation"), Some(3.0));
}

#[tokio::test]
async fn a_huge_duration_is_rejected_live_and_the_proxy_keeps_serving() {
    let pool = spawn_backends(2).await;
    let refs: Vec<_> = pool.iter().collect();
    let good = config_text(&refs, "", "");
    let mut dir = ConfigDir::new(&good);
    let live = start_live(&dir.path()).await;
    let client = client();
    let before: Vec<String> = futures_all(&client, live.proxy.addr, 20).await;
    for setting in [
        "idle",
        "client_header_read",
        "upgraded_idle",
        "upstream_idle",
    ] {
        dir.write(
            &format!("[timeouts]\n{setting} = \"300000000000years\"\n{good}"),
            Method::Rename,
        );
        let status = live.reloader.reload(true);
        match status {
            reload::Outcome::Failed(e) => {
                assert!(e.contains(":2:"), "{e}");
                assert!(e.contains("longer than the 1 year allowed"), "{e}");
            }
            other => panic!("{setting}: expected a rejected file, got {other:?}"),
        }
        // Connections still open and serve as before (no panic on a deadline).
        assert_eq!(futures_all(&client, live.proxy.addr, 20).await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_in_the_directory_trigger_nothing_and_a_rejection_is_told_once() {
    let pool = spawn_backends(2).await;
    let refs: Vec<_> = pool.iter().collect();
    let good = config_text(&refs, "", "");
    let mut dir = ConfigDir::new(&good);
    let mut live = start_live(&dir.path()).await;
    dir.write(
        &format!("{good}\n[[backend]]\nname = \"x\"\nweight = 0\n"),
        Method::InPlace,
    );
    let status = live.wait_for_attempts(1).await;
    assert!(
        matches!(status.last, reload::Outcome::Failed(_)),
        "{status:?}"
    );
    // A log file next to the config, written 30 times (as the proxy's own
    // log would be on every error line), and other files touched.
    let log = dir.dir.path().join("stickylb.log");
    for i in 0..30 {
        std::fs::write(&log, format!("line {i}\n")).expect("log");
        std::fs::write(dir.dir.path().join(format!("other-{i}")), "x").expect("other");
    }
    // The fix is the next attempt: nothing in between was one.
    dir.write(&format!("# fixed\n{good}"), Method::Rename);
    let status = live.wait_for_attempts(2).await;
    assert!(
        matches!(status.last, reload::Outcome::Applied { .. }),
        "{status:?}"
    );
    assert_eq!(status.attempts, 2);
    let m = live.metrics_text().await;
    assert_eq!(
        metric(&m, "stickylb_config_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "stickylb_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(
        metric(&m, "stickylb_config_last_reload_success_timestamp_seconds").unwrap_or(0.0) > 1.7e9
    );
}

/// Writes `full` to `path` as a writer that keeps the file open and pauses
/// 150 ms after the valid first part `first`, asserting all along that the
/// ring of `first` never goes live.
async fn write_with_a_pause(live: &Live, path: &Path, first: &str, full: &str) {
    use std::io::Write;
    let half = fingerprint(first);
    let mut f = std::fs::File::create(path).expect("open for writing");
    f.write_all(first.as_bytes()).expect("first part");
    f.flush().expect("flush");
    let pause = std::time::Instant::now() + Duration::from_millis(150);
    while std::time::Instant::now() < pause {
        assert_ne!(
            live.proxy.router.load().ring.fingerprint(),
            half,
            "half a file applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.write_all(&full.as_bytes()[first.len()..])
        .expect("the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_never_applied() {
    let pool = spawn_backends(4).await;
    let refs: Vec<_> = pool.iter().collect();
    let first = config_text(&refs[..1], "", "");
    let full = config_text(&refs, "", "");
    let dir = ConfigDir::new(&config_text(&refs[..2], "", ""));
    let mut live = start_live(&dir.path()).await;
    write_with_a_pause(&live, &dir.path(), &first, &full).await;
    live.wait_for_ring(fingerprint(&full)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reached_through_a_symlink_into_another_directory_reloads() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let target_dir = tempfile::tempdir().expect("tempdir");
    let target = target_dir.path().join("lb.toml");
    std::fs::write(&target, config_text(&refs[..1], "", "")).expect("write");
    let link_dir = tempfile::tempdir().expect("tempdir");
    let link = link_dir.path().join("config.toml");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let mut live = start_live(&link).await;
    // Edited in place...
    let two = config_text(&refs[..2], "", "");
    std::fs::write(&target, &two).expect("edit in place");
    live.wait_for_ring(fingerprint(&two)).await;
    // ...and by rename, as editors save.
    let three = config_text(&refs, "", "");
    let tmp = target_dir.path().join(".lb.toml.swp");
    std::fs::write(&tmp, &three).expect("write temp");
    std::fs::rename(&tmp, &target).expect("rename");
    live.wait_for_ring(fingerprint(&three)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_resumes_when_the_directory_is_removed_and_made_again() {
    let pool = spawn_backends(3).await;
    let refs: Vec<_> = pool.iter().collect();
    let root = tempfile::tempdir().expect("tempdir");
    let conf = root.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    let path = conf.join("config.toml");
    std::fs::write(&path, config_text(&refs[..1], "", "")).expect("write");
    let mut live = start_live(&path).await;
    std::fs::remove_dir_all(&conf).expect("remove the directory");
    std::fs::create_dir(&conf).expect("make it again");
    let two = config_text(&refs[..2], "", "");
    std::fs::write(&path, &two).expect("write");
    live.wait_for_ring(fingerprint(&two)).await;
    // And later edits in the new directory are seen too.
    let three = config_text(&refs, "", "");
    std::fs::write(&path, &three).expect("write");
    live.wait_for_ring(fingerprint(&three)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_told_once_and_the_same_bytes_back_serve_again() {
    let pool = spawn_backends(2).await;
    let refs: Vec<_> = pool.iter().collect();
    let good = config_text(&refs, "", "");
    let dir = ConfigDir::new(&good);
    let mut live = start_live(&dir.path()).await;
    std::fs::remove_file(dir.path()).expect("remove");
    let status = live.wait_for_attempts(1).await;
    assert!(
        matches!(status.last, reload::Outcome::Failed(_)),
        "{status:?}"
    );
    // The same bytes back: applied (routing unchanged), the failure told once.
    std::fs::write(dir.path(), &good).expect("restore");
    let status = live.wait_for_attempts(2).await;
    assert!(
        matches!(status.last, reload::Outcome::Applied { generation: 1, .. }),
        "{status:?}"
    );
    let m = live.metrics_text().await;
    assert_eq!(
        metric(&m, "stickylb_config_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "stickylb_config_last_reload_successful"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_right_after_a_save_is_waited_for() {
    let pool = spawn_backends(5).await;
    let refs: Vec<_> = pool.iter().collect();
    let dir = ConfigDir::new(&config_text(&refs[..3], "", ""));
    let mut live = start_live(&dir.path()).await;
    let four = config_text(&refs[..4], "", "");
    let first = config_text(&refs[..2], "", "");
    let full = config_text(&refs, "", "");
    // A complete save, then at once a writer that pauses after a valid part.
    std::fs::write(dir.path(), &four).expect("save");
    write_with_a_pause(&live, &dir.path(), &first, &full).await;
    live.wait_for_ring(fingerprint(&full)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_resumes_when_several_directory_levels_come_back() {
    let pool = spawn_backends(2).await;
    let refs: Vec<_> = pool.iter().collect();
    let root = tempfile::tempdir().expect("tempdir");
    let conf = root.path().join("x").join("y").join("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    let path = conf.join("config.toml");
    std::fs::write(&path, config_text(&refs[..1], "", "")).expect("write");
    let mut live = start_live(&path).await;
    std::fs::remove_dir_all(root.path().join("x")).expect("remove two levels up");
    let status = live.wait_for_attempts(1).await;
    assert!(
        matches!(status.last, reload::Outcome::Failed(_)),
        "{status:?}"
    );
    // Made again one level at a time, then the config written.
    for level in [root.path().join("x"), root.path().join("x/y"), conf.clone()] {
        std::fs::create_dir(&level).expect("mkdir");
    }
    let two = config_text(&refs, "", "");
    std::fs::write(&path, &two).expect("write");
    live.wait_for_ring(fingerprint(&two)).await;
}
