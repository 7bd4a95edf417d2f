//! Several instances, no shared store: three `stickylb` processes on the
//! same pool route every one of 10,000 keys to the same backend and show
//! the same `ring_info` fingerprint, and agree again once the same config
//! change (a ConfigMap-style symlink swap) has reached each of them.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KEYS: usize = 10_000;

struct Instance {
    child: Child,
    admin: std::net::SocketAddr,
    dir: tempfile::TempDir,
    versions: u32,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The same pool and routing for every instance; only the ports differ,
/// as pods differ by address.
fn config(listen: u16, admin: u16, pool: &[&str]) -> String {
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:{listen}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
         [routing]\nalgorithm = \"ring\"\nseed = 7\n"
    );
    for name in pool {
        // Address and weight follow the name, as a pod's do.
        let n: u32 = name.trim_start_matches("app-").parse().unwrap();
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"10.0.0.{}:8080\"\nweight = {}\n",
            n + 1,
            1 + n % 2
        ));
    }
    text
}

impl Instance {
    fn start(pool: &[&str]) -> Self {
        let (listen, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let mut me = Instance {
            child: Command::new("true").spawn().unwrap(),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            dir,
            versions: 0,
        };
        me.swap(&config(listen, admin, pool));
        let link = me.dir.path().join("config.toml");
        std::os::unix::fs::symlink("..data/config.toml", &link).unwrap();
        let _ = me.child.wait();
        me.child = Command::new(env!("CARGO_BIN_EXE_stickylb"))
            .args(["run", "--threads", "1", "--config", link.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stickylb");
        me
    }

    /// Writes `text` as a new version and swaps `..data` to it, as the
    /// kubelet updates a mounted ConfigMap.
    fn swap(&mut self, text: &str) {
        self.versions += 1;
        let d = self.dir.path();
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(d.join(&version)).unwrap();
        std::fs::write(d.join(&version).join("config.toml"), text).unwrap();
        let tmp = d.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, d.join("..data")).unwrap();
    }

    fn ports(&self) -> (u16, u16) {
        let text = std::fs::read_to_string(self.dir.path().join("config.toml")).unwrap();
        let port = |section: &str| {
            let at = text.find(section).unwrap();
            let line = text[at..].lines().nth(1).unwrap();
            line.rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('"')
                .parse()
                .unwrap()
        };
        (port("[listen]"), port("[admin]"))
    }
}

/// `/ring` of an instance, once it answers (10 s at most).
async fn ring(admin: std::net::SocketAddr) -> serde_json::Value {
    let c = client();
    for _ in 0..200 {
        let req = get(admin, "/ring", &[]);
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(1), c.request(req)).await {
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            return serde_json::from_slice(&body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("instance at {admin} never answered /ring");
}

/// Where each of the keys routes on the instance at `admin`, by
/// `/ring/lookup` (the request path's own choice), 16 at a time.
async fn routes(admin: std::net::SocketAddr) -> Vec<String> {
    use futures_util::StreamExt;
    let c = client();
    futures_util::stream::iter(0..KEYS)
        .map(|i| {
            let c = c.clone();
            async move {
                let r = send(&c, get(admin, &format!("/ring/lookup?key=user-{i}"), &[])).await;
                let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
                v["backend"].as_str().unwrap().to_string()
            }
        })
        .buffered(16)
        .collect()
        .await
}

async fn agree(instances: &[Instance]) -> (String, Vec<String>) {
    let mut seen: Option<(String, Vec<String>)> = None;
    for inst in instances {
        let r = ring(inst.admin).await;
        let fingerprint = r["fingerprint"].as_str().unwrap().to_string();
        let routed = routes(inst.admin).await;
        match &seen {
            None => seen = Some((fingerprint, routed)),
            Some((f, first)) => {
                assert_eq!(&fingerprint, f, "ring_info fingerprints differ: {r}");
                let differ = first.iter().zip(&routed).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{differ} of {KEYS} keys route differently");
            }
        }
    }
    seen.unwrap()
}

async fn wait_generation(admin: std::net::SocketAddr, generation: u64) {
    for _ in 0..400 {
        if ring(admin).await["generation"].as_u64() == Some(generation) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("instance at {admin} never reached generation {generation}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_route_alike_before_and_after_the_same_change() {
    let before = ["app-0", "app-1", "app-2", "app-3"];
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::start(&before)).collect();
    let (fingerprint, routed) = agree(&instances).await;
    // The keys spread over the whole pool.
    for name in before {
        assert!(routed.iter().any(|b| b == name), "no key on {name}");
    }

    // The same change reaches every instance: app-1 leaves, app-4 joins.
    let after = ["app-0", "app-2", "app-3", "app-4"];
    let generation = ring(instances[0].admin).await["generation"]
        .as_u64()
        .unwrap();
    for inst in &mut instances {
        let (listen, admin) = inst.ports();
        inst.swap(&config(listen, admin, &after));
    }
    for inst in &instances {
        wait_generation(inst.admin, generation + 1).await;
    }
    let (fingerprint_after, routed_after) = agree(&instances).await;
    assert_ne!(fingerprint, fingerprint_after);
    assert!(routed_after.iter().all(|b| b != "app-1"));
    // Only keys that had to move did: those of app-1, and those app-4 took.
    for (old, new) in routed.iter().zip(&routed_after) {
        assert!(
            old == new || old == "app-1" || new == "app-4",
            "{old} -> {new}"
        );
    }
}
