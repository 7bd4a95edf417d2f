//! The live routing state: one `Snapshot` (ring, backends, key spec,
//! timeouts, generation, the previous ring) behind one `ArcSwap`, so a
//! request sees either the old pool or the new one, never half of each.

use crate::config::{Config, HealthConfig, Limits, Log, StickyCookie, Timeouts};
use crate::http::upstream::UpstreamOptions;
use crate::observe::metrics::Metrics;
use crate::ring::{Algorithm, Member, Ring};
use crate::routing::backend::{Backend, InFlight};
use crate::routing::key::KeySpec;
use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Everything a request needs to be routed, built together from one config.
#[derive(Debug)]
pub struct Snapshot {
    /// Steps each time the configured routing (the full ring's
    /// fingerprint) changes; slow-start steps do not step it.
    pub generation: u64,
    /// The ring requests route by: the configured one, or during a slow
    /// start the same with the ramping backends at part of their weight.
    pub ring: Arc<Ring>,
    /// The configured ring (every backend at full weight): where a slow
    /// start ends, and what a config change is measured by.
    pub full_ring: Arc<Ring>,
    /// Its fingerprint.
    pub full_fingerprint: u64,
    /// `routing.slow_start`.
    pub slow_start: Option<std::time::Duration>,
    /// Indexed like the ring's members.
    pub backends: Box<[Arc<Backend>]>,
    pub keys: KeySpec,
    pub timeouts: Timeouts,
    pub health: Option<HealthConfig>,
    pub limits: Limits,
    pub balance_factor: Option<f64>,
    pub log: Log,
    /// `routing.sticky_cookie`, if configured.
    pub sticky_cookie: Option<Arc<StickyCookie>>,
    /// `routing.trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Box<[ipnet::IpNet]>,
    /// The TLS config new connections on a TLS listener handshake with;
    /// here so a reload swaps certificates with everything else.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The ring of the generation before this one, to tell which requests'
    /// keys changed owner.
    previous: Option<Previous>,
    /// Healthy backends, for bounded loads' capacity: recomputed once per
    /// health change (`refresh_health`), read by every request.
    healthy: AtomicUsize,
    /// Maglev failover: the table rebuilt without the backends that are
    /// down (none while all are up); rebuilt once per health change.
    failover: ArcSwapOption<Failover>,
}

/// A ring that routes around the backends marked in `down`.
#[derive(Debug)]
struct Failover {
    down: Box<[bool]>,
    ring: Ring,
}

/// Why a request went to a backend other than its key's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The owner is unhealthy (or just failed to connect).
    Failover,
    /// The owner is at its bounded-load capacity.
    Overload,
}

/// The backend chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    /// The key's owner when all backends are available.
    pub owner: usize,
    pub reason: Option<Reason>,
}

#[derive(Debug)]
struct Previous {
    ring: Arc<Ring>,
    /// Previous member index -> current member index, by name.
    to_current: Box<[Option<u32>]>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config. Backends that keep their
    /// name, address, weight and upstream settings keep their live state and
    /// connection pool. The generation steps only if routing changed.
    pub fn build(
        config: &Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let upstream = UpstreamOptions {
            connect_timeout: config.timeouts.connect,
            pool_idle: config.timeouts.upstream_idle,
            max_connections: config.limits.max_backend_connections,
        };
        let mut backends = Vec::with_capacity(config.backends.len());
        let mut members = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            let same_place = previous.and_then(|p| {
                p.backends
                    .iter()
                    .find(|o| *o.name == *b.name && *o.address == *b.address)
            });
            let kept = previous.and_then(|p| {
                p.backends.iter().find(|o| {
                    *o.name == *b.name
                        && *o.address == *b.address
                        && o.weight == b.weight
                        && o.upstream == upstream
                })
            });
            let backend = match kept {
                Some(o) => o.clone(),
                None => Arc::new(Backend::new(
                    &b.name,
                    &b.address,
                    b.weight,
                    metrics.backend(&b.name),
                    upstream,
                    same_place.map_or_else(Arc::default, |o| o.health.clone()),
                )?),
            };
            members.push(Member {
                name: backend.name.clone(),
                weight: b.weight,
            });
            backends.push(backend);
        }
        let full = build_ring(config, members)?;
        let full_fingerprint = full.fingerprint();
        let slow_start = config.routing.slow_start;
        if let Some(p) = previous {
            let now = crate::routing::backend::clock_ms();
            for b in &backends {
                if p.backends.iter().any(|o| Arc::ptr_eq(&o.health, &b.health)) {
                    b.health.rescale_ramp(now, p.slow_start, slow_start);
                } else if slow_start.is_some() {
                    // A backend new to the pool starts cold.
                    b.health.start_ramp();
                }
            }
        }
        let full = Arc::new(full);
        let ring = match ramps(slow_start, &backends, crate::routing::backend::clock_ms()) {
            Some(r) => Arc::new(full.ramped(&r).map_err(|e| e.to_string())?),
            None => full.clone(),
        };
        let keys = KeySpec::new(
            &config.routing.key,
            config.routing.missing_key,
            config
                .routing
                .sticky_cookie
                .as_ref()
                .map(|c| c.name.as_str()),
        )?;

        let (generation, previous_ring) = match previous {
            None => (1, None),
            Some(p) if p.full_fingerprint == full_fingerprint => {
                (p.generation, p.previous.as_ref().map(|q| q.ring.clone()))
            }
            Some(p) => (p.generation + 1, Some(p.ring.clone())),
        };
        let previous = previous_ring.map(|old| Previous {
            to_current: old.index_in(&ring).into_boxed_slice(),
            ring: old,
        });
        Ok(Snapshot {
            generation,
            ring,
            full_ring: full,
            full_fingerprint,
            slow_start,
            backends: backends.into_boxed_slice(),
            keys,
            timeouts: config.timeouts.clone(),
            health: config.health.clone(),
            limits: config.limits,
            balance_factor: config.routing.balance_factor,
            log: config.log,
            sticky_cookie: config.routing.sticky_cookie.clone().map(Arc::new),
            trusted_proxies: config.routing.trusted_proxies.clone().into(),
            tls: None,
            previous,
            healthy: AtomicUsize::new(0),
            failover: ArcSwapOption::empty(),
        }
        .with_health_refreshed())
    }

    /// The fractions of their weight the backends route with at `now`
    /// (`clock_ms`) under slow start; `None` when none is ramping.
    pub fn ramps(&self, now: u64) -> Option<Vec<f64>> {
        ramps(self.slow_start, &self.backends, now)
    }

    /// This snapshot with `ring` (a slow-start step of the same generation)
    /// in place of its ring; everything else shared.
    pub fn with_ring(&self, ring: Ring) -> Snapshot {
        Snapshot {
            generation: self.generation,
            ring: Arc::new(ring),
            full_ring: self.full_ring.clone(),
            full_fingerprint: self.full_fingerprint,
            slow_start: self.slow_start,
            backends: self.backends.clone(),
            keys: self.keys.clone(),
            timeouts: self.timeouts.clone(),
            health: self.health.clone(),
            limits: self.limits,
            balance_factor: self.balance_factor,
            log: self.log,
            sticky_cookie: self.sticky_cookie.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            tls: self.tls.clone(),
            previous: self.previous.as_ref().map(|p| Previous {
                ring: p.ring.clone(),
                to_current: p.to_current.clone(),
            }),
            healthy: AtomicUsize::new(0),
            failover: ArcSwapOption::empty(),
        }
        .with_health_refreshed()
    }

    fn with_health_refreshed(self) -> Self {
        self.refresh_health();
        self
    }

    /// Recomputes the state that follows from the backends' health: the
    /// healthy count and, for Maglev, the failover table. Called once per
    /// health change (through `Router`), never per request.
    fn refresh_health(&self) {
        let down: Box<[bool]> = self
            .backends
            .iter()
            .map(|b| !b.health.is_healthy())
            .collect();
        let healthy = down.iter().filter(|d| !**d).count();
        self.healthy.store(healthy, Ordering::Relaxed);
        if !matches!(self.ring.algorithm(), Algorithm::Maglev { .. }) {
            return;
        }
        if healthy == down.len() {
            self.failover.store(None);
        } else if self.failover.load().as_ref().is_none_or(|f| f.down != down) {
            let failover = self
                .ring
                .excluding(&down)
                .map(|ring| Failover { down, ring });
            self.failover.store(failover.map(Arc::new));
        }
    }

    /// The snapshot with the TLS config (read from the certificate files)
    /// that new TLS connections use.
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// Picks the backend for a key hash and counts the request in flight
    /// there: its owner if healthy and (with bounded loads) under capacity,
    /// else the first backend in the key's preference order that is.
    /// `skip` excludes a backend that just failed. `None`: no healthy backend.
    #[inline]
    pub fn choose(
        &self,
        hash: u64,
        total: &Arc<AtomicI64>,
        skip: Option<usize>,
    ) -> Option<(Choice, InFlight)> {
        let owner = self.ring.owner(hash);
        let healthy = |i: usize| Some(i) != skip && self.backends[i].health.is_healthy();
        let capacity = self
            .balance_factor
            .map(|c| self.capacity(c, total.load(Ordering::Relaxed)));
        if healthy(owner) {
            if let Some(g) = self.backends[owner].try_start(capacity, total) {
                return Some((
                    Choice {
                        index: owner,
                        owner,
                        reason: None,
                    },
                    g,
                ));
            }
        }
        let reason = if healthy(owner) {
            Reason::Overload
        } else {
            Reason::Failover
        };
        if reason == Reason::Failover && skip.is_none() {
            // Just after a transition the table may still be the previous
            // one: its pick must be healthy now too.
            if let Some(i) = self.failover_owner(hash).filter(|&i| healthy(i)) {
                if let Some(g) = self.backends[i].try_start(capacity, total) {
                    let choice = Choice {
                        index: i,
                        owner,
                        reason: Some(reason),
                    };
                    return Some((choice, g));
                }
            }
        }
        let mut first_healthy = None;
        for i in self.ring.preference(hash) {
            if !healthy(i) {
                continue;
            }
            if let Some(g) = self.backends[i].try_start(capacity, total) {
                return Some((
                    Choice {
                        index: i,
                        owner,
                        reason: Some(reason),
                    },
                    g,
                ));
            }
            first_healthy.get_or_insert(i);
        }
        // Every healthy backend at capacity (only while loads shift): the
        // first healthy one in preference order still serves.
        first_healthy.map(|i| {
            let choice = Choice {
                index: i,
                owner,
                reason: (i != owner).then_some(reason),
            };
            (choice, self.backends[i].start(total))
        })
    }

    /// The backend that serves `hash` now, by health alone (no load is
    /// counted): the owner while healthy, else the one failover picks;
    /// `None` when every backend is down.
    pub fn serving(&self, hash: u64) -> Option<usize> {
        let owner = self.ring.owner(hash);
        if self.backends[owner].health.is_healthy() {
            return Some(owner);
        }
        let failover = self.failover_owner(hash);
        let healthy = |i: &usize| self.backends[*i].health.is_healthy();
        failover
            .filter(healthy)
            .or_else(|| self.ring.preference(hash).find(healthy))
    }

    /// Maglev's failover owner: the key's owner in the table built without
    /// the backends that are down. `None` for the other algorithms, whose
    /// preference order already is that, and while all backends are up.
    #[inline]
    fn failover_owner(&self, hash: u64) -> Option<usize> {
        self.failover.load().as_ref().map(|f| f.ring.owner(hash))
    }

    /// Bounded loads: `ceil(c × (in flight + 1) / healthy backends)`.
    fn capacity(&self, c: f64, total_in_flight: i64) -> i64 {
        let healthy = self.healthy.load(Ordering::Relaxed).max(1);
        (c * (total_in_flight.max(0) + 1) as f64 / healthy as f64).ceil() as i64
    }

    /// The backend that owns `key` when all backends are available.
    pub fn owner(&self, key: &[u8]) -> &Arc<Backend> {
        &self.backends[self.ring.owner(self.ring.hash(key))]
    }

    /// Whether the key at `hash`, owned now by member `owner`, had another
    /// owner in the previous generation. One extra lookup, no allocation.
    #[inline]
    pub fn owner_changed(&self, hash: u64, owner: usize) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| p.to_current[p.ring.owner(hash)] != Some(owner as u32))
    }

    /// The previous generation's ring, if there was one.
    pub fn previous_ring(&self) -> Option<&Arc<Ring>> {
        self.previous.as_ref().map(|p| &p.ring)
    }
}

/// Steps of a slow start: the fraction of weight grows by 1/100 at a time.
pub const RAMP_STEPS: u32 = 100;

/// Each backend's fraction of its weight at `now` under `slow_start`;
/// `None` when none is below 1.
fn ramps(
    slow_start: Option<std::time::Duration>,
    backends: &[Arc<Backend>],
    now: u64,
) -> Option<Vec<f64>> {
    let window = slow_start?;
    let mut r: Vec<f64> = backends
        .iter()
        .map(|b| b.health.ramp(now, window))
        .collect();
    // Relative first (a backend behind the rest stays behind however early
    // the others are), then in steps of 1/RAMP_STEPS.
    crate::ring::normalize_ramps(&mut r);
    let steps = f64::from(RAMP_STEPS);
    for f in &mut r {
        *f = (*f * steps).floor() / steps;
    }
    r.iter().any(|&f| f < 1.0).then_some(r)
}

/// The ring a config describes (what `route`, `check` and `diff` read).
pub fn ring_of(config: &Config) -> Result<Ring, String> {
    let members = config
        .backends
        .iter()
        .map(|b| Member {
            name: b.name.as_str().into(),
            weight: b.weight,
        })
        .collect();
    build_ring(config, members)
}

fn build_ring(config: &Config, members: Vec<Member>) -> Result<Ring, String> {
    let algorithm = config.routing.algorithm;
    Ring::build(members, algorithm, config.routing.seed).map_err(|e| e.to_string())
}

/// The one place the live snapshot is kept.
#[derive(Debug)]
pub struct Router {
    /// ArcSwap: the request path loads it without a lock; a reload stores a
    /// new snapshot atomically while requests flow.
    live: ArcSwap<Snapshot>,
    /// Counts swaps; a watch so the health checker sees the latest pool.
    swaps: watch::Sender<u64>,
    /// Counts health transitions, for whoever waits on them.
    health: watch::Sender<u64>,
    /// Serialises recomputing the health-derived state, so the last
    /// computation stored is the latest health.
    refreshing: Mutex<()>,
}

impl Router {
    pub fn new(snapshot: Snapshot) -> Self {
        Router {
            live: ArcSwap::from_pointee(snapshot),
            swaps: watch::channel(0).0,
            health: watch::channel(0).0,
            refreshing: Mutex::new(()),
        }
    }

    /// Follows snapshot swaps.
    pub fn subscribe_swaps(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Follows health transitions.
    pub fn subscribe_health(&self) -> watch::Receiver<u64> {
        self.health.subscribe()
    }

    /// Records that a backend went up or down: the live snapshot's
    /// health-derived state is recomputed, once.
    pub fn health_changed(&self) {
        self.refresh();
        self.health.send_modify(|n| *n += 1);
    }

    fn refresh(&self) {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        self.live.load().refresh_health();
    }

    /// The live snapshot. Drop the guard before awaiting.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.live.load()
    }

    /// The live snapshot as an owned `Arc`, for holding across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Swaps in `new` only if the live snapshot is still `expected` (a
    /// slow-start step never overwrites a reload that came in between).
    pub fn replace(&self, expected: &Arc<Snapshot>, new: Snapshot) -> bool {
        let prev = self.live.compare_and_swap(expected, Arc::new(new));
        let swapped = Arc::ptr_eq(&prev, expected);
        if swapped {
            self.refresh();
            self.swaps.send_modify(|n| *n += 1);
        }
        swapped
    }

    /// Swaps in a new snapshot; returns the one it replaced.
    pub fn store(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let old = self.live.swap(Arc::new(snapshot));
        // Health may have changed since the snapshot was built.
        self.refresh();
        self.swaps.send_modify(|n| *n += 1);
        old
    }
}
