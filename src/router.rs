//! The live routing state: one `Snapshot` (ring, backends, key spec,
//! timeouts, generation, the previous ring) behind one `ArcSwap`, so a
//! request sees either the old pool or the new one, never half of each.

use crate::backend::{Backend, UpstreamOptions};
use crate::config::{Config, Log, Timeouts};
use crate::key::KeySpec;
use crate::metrics::Metrics;
use crate::ring::{Member, Ring};
use arc_swap::{ArcSwap, Guard};
use std::sync::Arc;

/// Everything a request needs to be routed, built together from one config.
#[derive(Debug)]
pub struct Snapshot {
    /// Steps each time routing (the ring's fingerprint) changes.
    pub generation: u64,
    pub ring: Arc<Ring>,
    /// Indexed like the ring's members.
    pub backends: Box<[Arc<Backend>]>,
    pub keys: KeySpec,
    pub timeouts: Timeouts,
    pub log: Log,
    /// The ring of the generation before this one, to tell which requests'
    /// keys changed owner.
    previous: Option<Previous>,
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
            pool_idle: config.timeouts.idle,
        };
        let mut backends = Vec::with_capacity(config.backends.len());
        let mut members = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
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
                )?),
            };
            members.push(Member {
                name: backend.name.clone(),
                weight: b.weight,
            });
            backends.push(backend);
        }
        let ring = Arc::new(build_ring(config, members)?);
        let keys = KeySpec::new(&config.routing.key, config.routing.missing_key)?;

        let (generation, previous_ring) = match previous {
            None => (1, None),
            Some(p) if p.ring.fingerprint() == ring.fingerprint() => {
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
            backends: backends.into_boxed_slice(),
            keys,
            timeouts: config.timeouts.clone(),
            log: config.log,
            previous,
        })
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
    let algorithm = config.routing.algorithm.algorithm();
    Ring::build(members, algorithm, config.routing.seed).map_err(|e| e.to_string())
}

/// The one place the live snapshot is kept.
#[derive(Debug)]
pub struct Router {
    /// ArcSwap: the request path loads it without a lock; a reload stores a
    /// new snapshot atomically while requests flow.
    live: ArcSwap<Snapshot>,
}

impl Router {
    pub fn new(snapshot: Snapshot) -> Self {
        Router {
            live: ArcSwap::from_pointee(snapshot),
        }
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

    /// Swaps in a new snapshot; returns the one it replaced.
    pub fn store(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.live.swap(Arc::new(snapshot))
    }
}
