//! Kills a backend in the middle of load and reports what clients saw:
//! requests lost, how soon the dead backend's keys were served elsewhere,
//! and how soon the proxy took it out. Real proxy, real backends, loopback.
//!
//! cargo run --release --example backend_kill -- [drain|crash]
//!
//! `drain`: the backend stops listening and closes each connection after its
//! next response (a process shutting down). `crash`: listener and every
//! connection vanish at once, requests in flight on it included.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stickylb::config;
use stickylb::http::proxy::Proxy;
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{Router, Snapshot};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An echo backend whose connections all live in one `JoinSet`.
/// `drain` stops the accept loop and leaves open connections to finish;
/// aborting the task drops every connection at once.
async fn backend(
    listener: TcpListener,
    name: &'static str,
    closing: Arc<AtomicBool>,
    drain: Arc<tokio::sync::Notify>,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = drain.notified() => {
                conns.detach_all();
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let closing = closing.clone();
        conns.spawn(async move {
            let svc = service_fn(move |_req| {
                let closing = closing.clone();
                async move {
                    let mut r = http::Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    if closing.load(Ordering::Relaxed) {
                        r.headers_mut()
                            .insert("connection", http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(r)
                }
            });
            // A connection ending (a crash included) is what this measures.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crash = std::env::args().nth(1).as_deref() == Some("crash");
    let names = ["backend-1", "backend-2", "backend-3"];
    let closing = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(tokio::sync::Notify::new());
    let mut text =
        String::from("[health]\ninterval = \"2s\"\ntimeout = \"500ms\"\nfall = 3\nrise = 2\n");
    let mut tasks = Vec::new();
    for name in names {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"{}\"\n",
            l.local_addr()?
        ));
        let (c, d) = if name == "backend-1" {
            (closing.clone(), drain.clone())
        } else {
            (Arc::default(), Arc::default())
        };
        tasks.push(tokio::spawn(backend(l, name, c, d)));
    }
    let cfg = config::from_toml_str(&text, "kill.toml")?;
    let metrics = Arc::new(Metrics::new());
    let router = Arc::new(Router::new(Snapshot::build(&cfg, None, &metrics)?));
    tokio::spawn(stickylb::control::health::run(
        router.clone(),
        std::future::pending(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let snap = router.load_full();
    let proxy = Arc::new(Proxy::new(router.clone(), metrics.clone()));
    tokio::spawn(stickylb::http::server::run(
        listener,
        proxy,
        std::future::pending(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // (time, key owner, served by) of every answered request.
    let seen: Arc<Mutex<Vec<(Instant, String, String)>>> = Arc::default();
    let mut clients = Vec::new();
    for t in 0..4 {
        let (stop, sent, lost, seen, snap) = (
            stop.clone(),
            sent.clone(),
            lost.clone(),
            seen.clone(),
            snap.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let id = format!("c{t}-{}", i % 300);
                i += 1;
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("x-client-id", &id)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                sent.fetch_add(1, Ordering::Relaxed);
                let served = match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        r.into_body().collect().await.map(|b| b.to_bytes()).ok()
                    }
                    Ok(r) => {
                        eprintln!("lost: status {}", r.status());
                        None
                    }
                    Err(e) => {
                        eprintln!("lost: {e:?}");
                        None
                    }
                };
                let owner = snap.owner(id.as_bytes()).name.to_string();
                match served {
                    Some(b) => seen.lock().expect("lock").push((
                        Instant::now(),
                        owner,
                        String::from_utf8_lossy(&b).into(),
                    )),
                    None => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sent.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    if crash {
        tasks[0].abort();
    } else {
        // Connections already open drain on their own: each closes after its next response.
        closing.store(true, Ordering::Relaxed);
        drain.notify_one();
    }
    let mut health = router.subscribe_health();
    let down = tokio::time::timeout(Duration::from_secs(10), health.changed()).await;
    let down_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let seen = seen.lock().expect("lock");
    let elsewhere = seen
        .iter()
        .filter(|(t, owner, by)| *t > killed_at && owner == "backend-1" && by != "backend-1")
        .map(|(t, _, _)| t.duration_since(killed_at))
        .min();
    println!(
        "{} kill of backend-1 under load (4 clients, 300 keys each): {} requests before, {} after, {} lost",
        if crash { "crash" } else { "drain" },
        before,
        sent.load(Ordering::Relaxed) - before,
        lost.load(Ordering::Relaxed)
    );
    println!(
        "first request of a backend-1 key served by another backend: {:?} after the kill",
        elsewhere
    );
    match down {
        Ok(_) => println!(
            "backend-1 taken out (passive failures, fall = 3) {down_after:?} after the kill"
        ),
        Err(_) => println!("backend-1 not taken out within 10 s"),
    }
    Ok(())
}
