//! Measures live-reload latency: from the `rename` of a new config file to
//! the first request routed by the new ring, over 50 reloads, with the real
//! watcher, proxy and echo backends on loopback.
//!
//! cargo run --release --example reload_latency

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stickylb::config;
use stickylb::control::reload::{self, Reloader};
use stickylb::http::proxy::Proxy;
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{ring_of, Router};
use tokio::net::TcpListener;

const RELOADS: usize = 50;

fn config_text(proxy_port: u16, backends: &[(String, std::net::SocketAddr)]) -> String {
    let mut s = format!(
        "[listen]\naddress = \"127.0.0.1:{proxy_port}\"\n[admin]\naddress = \"127.0.0.1:1\"\n"
    );
    for (name, addr) in backends {
        s.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    s
}

fn owner(text: &str, key: &str) -> String {
    let ring = ring_of(&config::from_toml_str(text, "t").expect("valid")).expect("ring");
    ring.members()[ring.owner(ring.hash(key.as_bytes()))]
        .name
        .to_string()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut pool = Vec::new();
    for i in 1..=6 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let name = format!("backend-{i}");
        pool.push((name.clone(), l.local_addr()?));
        tokio::spawn(stickylb::tools::demo::serve_echo(l, name.into()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let texts: Vec<String> = (0..=RELOADS)
        .map(|i| config_text(addr.port(), &pool[..[3, 4, 5, 6, 5, 4][i % 6]]))
        .collect();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &texts[0])?;
    let metrics = Arc::new(Metrics::new());
    let (cfg, snap) = reload::load_initial(&path, &metrics)?;
    let router = Arc::new(Router::new(snap));
    let reloader = Arc::new(Reloader::new(&path, &cfg, router.clone(), metrics.clone()));
    reloader.start(std::future::pending());
    let proxy = Arc::new(Proxy::new(router, metrics));
    tokio::spawn(stickylb::http::server::run(
        listener,
        proxy,
        std::future::pending(),
    ));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut latencies = Vec::with_capacity(RELOADS);
    for i in 1..=RELOADS {
        let (old, new) = (&texts[i - 1], &texts[i]);
        let key = (0..10_000)
            .map(|k| format!("probe-{k}"))
            .find(|k| owner(old, k) != owner(new, k))
            .ok_or("no key moves")?;
        let want = owner(new, &key);
        let tmp = dir.path().join(".config.toml.tmp");
        std::fs::write(&tmp, new)?;
        std::fs::rename(&tmp, &path)?;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        loop {
            let req = http::Request::get(format!("http://{addr}/"))
                .header("x-client-id", &key)
                .body(Empty::new())?;
            let body = client
                .request(req)
                .await?
                .into_body()
                .collect()
                .await?
                .to_bytes();
            if body.trim_ascii() == want.as_bytes() {
                latencies.push(start.elapsed());
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("reload {i} not seen within 5 s").into());
            }
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{RELOADS} reloads, rename -> first request on the new ring: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(latencies[0]),
        ms(latencies[RELOADS / 2]),
        ms(latencies[RELOADS * 9 / 10]),
        ms(latencies[RELOADS - 1])
    );
    Ok(())
}
