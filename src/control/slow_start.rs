//! Slow start (`routing.slow_start`): a backend that joins the pool or comes
//! back healthy takes its keys over in steps, its weight growing from 0 to
//! its configured weight across the window. Each step builds the ring anew
//! off the request path and swaps it in like a reload, without stepping the
//! generation (that counts config changes). The ring's own `Ring::ramped`
//! says what moves: only keys to the ramping backend, for ring and
//! rendezvous.

use crate::control::reload::publish_shares;
use crate::routing::backend::clock_ms;
use crate::routing::snapshot::{Router, RAMP_STEPS};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Follows the live snapshot until `shutdown`: whenever a backend's
/// fraction of its weight has moved on, swaps in the ring that routes with
/// it. Wakes at the next step of a running ramp, at each swap and at each
/// health change (a recovering backend starts a ramp).
pub async fn run(router: Arc<Router>, shutdown: impl Future<Output = ()>) {
    let mut swaps = router.subscribe_swaps();
    let mut health = router.subscribe_health();
    tokio::pin!(shutdown);
    loop {
        let next = step(&router);
        let wait = async {
            match next {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = wait => {}
            r = swaps.changed() => if r.is_err() { return },
            r = health.changed() => if r.is_err() { return },
        }
    }
}

/// Brings the live ring in line with the ramps now; returns how long until
/// the next step is due (`None`: no ramp is running).
fn step(router: &Router) -> Option<Duration> {
    let snap = router.load_full();
    let window = snap.slow_start?;
    let now = clock_ms();
    let wanted = snap.ramps(now);
    let live: Vec<f64> = (0..snap.backends.len())
        .map(|i| snap.ring.ramp(i))
        .collect();
    let target = wanted.clone().unwrap_or_else(|| vec![1.0; live.len()]);
    if target != live {
        match snap.ring.ramped(&target) {
            Ok(ring) => {
                let next = snap.with_ring(ring);
                if router.replace(&snap, next) {
                    publish_shares(&router.load());
                }
            }
            Err(e) => tracing::warn!("slow start: cannot build the ring: {e}"),
        }
    }
    // One step is window / RAMP_STEPS; at least 50 ms between two.
    wanted.map(|_| (window / RAMP_STEPS).max(Duration::from_millis(50)))
}
