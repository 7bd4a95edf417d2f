//! A backend's identity (name, address, weight) and its live state: health
//! (atomics, kept across reloads), its metric children (the in-flight count
//! among them) and its own pool of keep-alive upstream connections. A
//! backend removed from the pool keeps serving its in-flight requests; its
//! pool closes when the last one ends.

use crate::http::upstream::{Pools, UpstreamOptions};
use crate::observe::metrics::BackendMetrics;
use http::uri::Authority;
use http::HeaderValue;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Backend {
    /// Identity on the ring.
    pub name: Arc<str>,
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The address as a `Host` value, built once: the `Host` of an HTTP/1.0
    /// request that carried none (RFC 9112 §3.2).
    pub host: HeaderValue,
    pub weight: NonZeroU32,
    pub metrics: BackendMetrics,
    pub upstream: UpstreamOptions,
    /// Shared with the previous snapshot's backend of the same name and
    /// address, so a reload keeps what the checks learned.
    pub health: Arc<Health>,
    /// This backend's connections; dropped with the backend.
    pub pool: Pools,
    /// Requests in progress: an atomic so bounded loads can reserve a place
    /// with one compare-and-swap (the gauge mirrors it).
    in_flight: AtomicI64,
}

/// Health as seen by active checks and passive failures. Atomics: probes,
/// requests on every worker and the admin listener read and write it.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    /// Consecutive failures (while healthy) or successes (while not).
    streak: AtomicU32,
    /// When the backend last joined the pool or came back healthy, in
    /// `clock_ms` milliseconds (0: never): where its slow start begins.
    ramp_start: AtomicU64,
}

/// Monotonic milliseconds, never 0: the time since the process's first
/// call plus 2^40 ms (about 35 years), so any instant up to the longest
/// duration a setting takes (1 year) before now is still a positive value.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + (1 << 40)
}

/// A health transition to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            ramp_start: AtomicU64::new(0),
        }
    }
}

impl Health {
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a failed check or request; `fall` in a row take a healthy
    /// backend out.
    pub fn failure(&self, fall: u32) -> Option<Transition> {
        if !self.is_healthy() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= fall && self.healthy.swap(false, Ordering::Relaxed)).then(|| {
            self.streak.store(0, Ordering::Relaxed);
            Transition::Down
        })
    }

    /// Records a successful check; `rise` in a row bring a backend back.
    pub fn success(&self, rise: u32) -> Option<Transition> {
        if self.is_healthy() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= rise && !self.healthy.swap(true, Ordering::Relaxed)).then(|| {
            self.streak.store(0, Ordering::Relaxed);
            // Back with a cold cache: its slow start begins now.
            self.start_ramp();
            Transition::Up
        })
    }

    /// Starts the slow start: the backend joined, or came back.
    pub fn start_ramp(&self) {
        self.ramp_start.store(clock_ms(), Ordering::Relaxed);
    }

    /// The fraction of its weight the backend's slow start has reached at
    /// `now` (`clock_ms`) under a window of `window`: 0 to 1; 1 when no ramp
    /// runs. A finished ramp is cleared.
    pub fn ramp(&self, now: u64, window: std::time::Duration) -> f64 {
        let start = self.ramp_start.load(Ordering::Relaxed);
        let window = window.as_millis() as u64;
        if start == 0 || window == 0 {
            return 1.0;
        }
        if now >= start.saturating_add(window) {
            // Done: a longer window set later never ramps it again.
            let _ =
                self.ramp_start
                    .compare_exchange(start, 0, Ordering::Relaxed, Ordering::Relaxed);
            return 1.0;
        }
        now.saturating_sub(start) as f64 / window as f64
    }

    /// Carries a running ramp over a change of window (a reload): it goes
    /// on from the fraction it has reached, at the new window's pace. With
    /// slow start newly on, nothing was ramping; with it off, ramps end.
    pub fn rescale_ramp(
        &self,
        now: u64,
        old: Option<std::time::Duration>,
        new: Option<std::time::Duration>,
    ) {
        match (old, new) {
            (Some(old), Some(new)) if old != new => {
                let f = self.ramp(now, old);
                if f < 1.0 {
                    let back = (f * new.as_millis() as f64) as u64;
                    let start = now.saturating_sub(back).max(1);
                    self.ramp_start.store(start, Ordering::Relaxed);
                }
            }
            (None, Some(_)) | (Some(_), None) => self.ramp_start.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("weight", &self.weight)
            .field("healthy", &self.health.is_healthy())
            .finish_non_exhaustive()
    }
}

impl Backend {
    pub fn new(
        name: &str,
        address: &str,
        weight: NonZeroU32,
        metrics: BackendMetrics,
        upstream: UpstreamOptions,
        health: Arc<Health>,
    ) -> Result<Self, String> {
        let authority = address
            .parse::<Authority>()
            .map_err(|e| format!("backend {name:?}: address {address:?}: {e}"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("backend {name:?}: address {address:?}: {e}"))?;
        metrics.healthy.set(i64::from(health.is_healthy()));
        Ok(Backend {
            name: name.into(),
            address: address.into(),
            host,
            weight,
            metrics,
            upstream,
            health,
            pool: Pools::new(address, upstream),
            in_flight: AtomicI64::new(0),
        })
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight (here and in `total`) until the
    /// returned guard drops; with a `capacity`, only if fewer than that are
    /// in flight already (checked and counted in one atomic step).
    pub fn try_start(
        self: &Arc<Self>,
        capacity: Option<i64>,
        total: &Arc<AtomicI64>,
    ) -> Option<InFlight> {
        match capacity {
            None => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
            }
            Some(cap) => {
                self.in_flight
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < cap).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        self.metrics.in_flight.inc();
        total.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            backend: self.clone(),
            total: total.clone(),
        })
    }

    /// Counts a request as in flight, whatever the load.
    pub fn start(self: &Arc<Self>, total: &Arc<AtomicI64>) -> InFlight {
        match self.try_start(None, total) {
            Some(g) => g,
            None => unreachable!("no capacity given"),
        }
    }

    /// Applies a health transition to the gauge and the log.
    pub fn report(&self, t: Option<Transition>, why: &str) -> Option<Transition> {
        report(&self.name, &self.metrics.healthy, t, why)
    }
}

/// Applies a health transition of backend `name` to its gauge and the log.
pub fn report(
    name: &str,
    gauge: &prometheus::IntGauge,
    t: Option<Transition>,
    why: &str,
) -> Option<Transition> {
    match t {
        Some(Transition::Down) => {
            gauge.set(0);
            tracing::warn!(backend = name, "backend {name} is DOWN: {why}");
        }
        Some(Transition::Up) => {
            gauge.set(1);
            tracing::info!(backend = name, "backend {name} is UP again: {why}");
        }
        None => {}
    }
    t
}

/// Keeps its backend's in-flight count raised, and the backend (with its
/// connection pool) alive, while the request runs.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    total: Arc<AtomicI64>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.backend.metrics.in_flight.dec();
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}
