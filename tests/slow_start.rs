//! Slow start for consistent hashing: a backend that joins (by reload) or
//! comes back healthy takes its keys over in steps. During the ramp every
//! key is on its old owner or on the new backend, the new backend's share
//! only grows, the generation does not step, and at the end routing is the
//! config's own.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stickylb::config;
use stickylb::routing::snapshot::{ring_of, Snapshot};

const KEYS: usize = 2000;

fn text(names: &[&str], algorithm: &str) -> String {
    let pairs: Vec<(&str, std::net::SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, format!("127.0.0.1:{}", 30_000 + i).parse().unwrap()))
        .collect();
    config_for(
        &pairs,
        &format!("algorithm = \"{algorithm}\"\nslow_start = \"2s\""),
        "",
    )
}

fn keys() -> Vec<u64> {
    (0..KEYS)
        .map(|i| stickylb::ring::hash_key(format!("user-{i}").as_bytes(), 0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_by_reload_takes_its_keys_over_in_steps() {
    for algorithm in ["ring", "rendezvous"] {
        let before = text(&["b0", "b1", "b2"], algorithm);
        let proxy = spawn_proxy(&before).await;
        let after =
            config::from_toml_str(&text(&["b0", "b1", "b2", "b3"], algorithm), "t").unwrap();
        let old = proxy.router.load_full();
        let generation = old.generation;
        let snap = Snapshot::build(&after, Some(&old), &proxy.metrics).unwrap();
        proxy.router.store(snap);
        let hashes = keys();
        let target = ring_of(&after).unwrap();
        let new = 3;
        let mut share = -1.0;
        let mut steps = 0;
        let started = Instant::now();
        loop {
            let snap = proxy.router.load_full();
            assert_eq!(
                snap.generation,
                generation + 1,
                "{algorithm}: ramp steps do not step the generation"
            );
            let s = snap.ring.shares()[new];
            assert!(
                s + 1e-12 >= share,
                "{algorithm}: the new backend's share fell from {share} to {s}"
            );
            if s > share {
                steps += 1;
            }
            share = s;
            for &h in &hashes {
                let o = snap.ring.owner(h);
                assert!(
                    o == new || o == old.ring.owner(h),
                    "{algorithm}: a key moved between two old backends"
                );
            }
            if snap.ring.ramp(new) >= 1.0 {
                // Done: routing is the config's own.
                assert_eq!(snap.ring.fingerprint(), target.fingerprint(), "{algorithm}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{algorithm}: the ramp never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            steps >= 10,
            "{algorithm}: only {steps} steps seen over the 2 s ramp"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "{algorithm}: ramp ended early"
        );
        let m = proxy.metrics_text().await;
        assert_eq!(
            metric(&m, "stickylb_backend_effective_weight{backend=\"b3\"}"),
            Some(1.0),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovering_backend_ramps_too() {
    let proxy = spawn_proxy(&text(&["b0", "b1", "b2"], "ring")).await;
    let full = proxy.router.load_full().ring.shares()[1];
    let snap = proxy.router.load_full();
    let b1 = snap.backends[1].clone();
    assert!(b1.health.failure(1).is_some());
    proxy.router.health_changed();
    assert!(b1.health.success(1).is_some(), "back up");
    proxy.router.health_changed();
    // Within the window it routes with part of its weight, then all of it.
    let started = Instant::now();
    let mut seen_partial = false;
    loop {
        let snap = proxy.router.load_full();
        let ramp = snap.ring.ramp(1);
        if ramp < 1.0 {
            seen_partial = true;
            assert!(snap.ring.shares()[1] < full + 1e-12);
        } else if seen_partial {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no ramp seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Arc::clone(&b1);
}

/// A whole pool recovering at once ramps alike: routing stays the
/// configured pool's (never all on one backend, never an empty pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_pool_recovering_together_routes_as_configured() {
    let proxy =
        spawn_proxy(&text(&["b0", "b1", "b2", "b3"], "ring").replace("\"2s\"", "\"1h\"")).await;
    let snap = proxy.router.load_full();
    for b in snap.backends.iter() {
        assert!(b.health.failure(1).is_some());
    }
    proxy.router.health_changed();
    for b in snap.backends.iter() {
        assert!(b.health.success(1).is_some());
    }
    proxy.router.health_changed();
    // Give the slow-start task its turn, then look.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = proxy.router.load_full();
    assert_eq!(
        live.ring.fingerprint(),
        live.full_fingerprint,
        "ramping alike is no ramp"
    );
    for s in live.ring.shares() {
        assert!(s > 0.15, "{:?}", live.ring.shares());
    }
}

/// A finished ramp stays finished when a reload lengthens the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_window_does_not_ramp_a_finished_backend_again() {
    let before = text(&["b0", "b1", "b2"], "ring").replace("\"2s\"", "\"1s\"");
    let proxy = spawn_proxy(&before).await;
    let after = config::from_toml_str(
        &text(&["b0", "b1", "b2", "b3"], "ring").replace("\"2s\"", "\"1s\""),
        "t",
    )
    .unwrap();
    let old = proxy.router.load_full();
    proxy
        .router
        .store(Snapshot::build(&after, Some(&old), &proxy.metrics).unwrap());
    let started = Instant::now();
    while proxy.router.load_full().ring.ramp(3) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the ramp never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let longer = config::from_toml_str(
        &text(&["b0", "b1", "b2", "b3"], "ring").replace("\"2s\"", "\"1h\""),
        "t",
    )
    .unwrap();
    let live = proxy.router.load_full();
    let snap = Snapshot::build(&longer, Some(&live), &proxy.metrics).unwrap();
    assert_eq!(snap.ring.ramp(3), 1.0, "finished; stays finished");
    assert_eq!(snap.ring.fingerprint(), snap.full_fingerprint);
}

/// A backend that comes back while the whole pool is still early in a long
/// ramp is behind the rest, and ramps from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_behind_a_pool_wide_ramp_stays_behind() {
    let proxy =
        spawn_proxy(&text(&["b0", "b1", "b2", "b3"], "ring").replace("\"2s\"", "\"1h\"")).await;
    let snap = proxy.router.load_full();
    for b in snap.backends.iter() {
        assert!(b.health.failure(1).is_some());
        assert!(b.health.success(1).is_some());
    }
    proxy.router.health_changed();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // b1 goes down and comes back: the others have 30 ms of ramp, it none.
    assert!(snap.backends[1].health.failure(1).is_some());
    assert!(snap.backends[1].health.success(1).is_some());
    proxy.router.health_changed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = proxy.router.load_full();
    assert!(
        live.ring.ramp(1) < 0.5,
        "b1 at {} with the rest",
        live.ring.ramp(1)
    );
    assert!(live.ring.shares()[1] < 0.1, "{:?}", live.ring.shares());
}

/// A reload that changes the window carries a running ramp on from where it
/// is, at the new pace: nothing jumps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_continues_a_running_ramp() {
    let proxy = spawn_proxy(&text(&["b0", "b1", "b2"], "ring")).await;
    let with = |window: &str| {
        config::from_toml_str(
            &text(&["b0", "b1", "b2", "b3"], "ring").replace("\"2s\"", window),
            "t",
        )
        .unwrap()
    };
    let old = proxy.router.load_full();
    proxy
        .router
        .store(Snapshot::build(&with("\"2s\""), Some(&old), &proxy.metrics).unwrap());
    let started = Instant::now();
    while proxy.router.load_full().ring.ramp(3) < 0.4 {
        assert!(started.elapsed() < Duration::from_secs(10), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = proxy.router.load_full();
    let reached = live.ring.ramp(3);
    let longer = Snapshot::build(&with("\"1h\""), Some(&live), &proxy.metrics).unwrap();
    let carried = longer.ring.ramp(3);
    assert!(
        (carried - reached).abs() <= 0.06,
        "{reached} became {carried}"
    );
}
