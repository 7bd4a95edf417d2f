//! The live routing state: one `Snapshot` (ring, backends, key spec,
//! timeouts, generation) behind one `ArcSwap`, so a request sees either the
//! old pool or the new one, never half of each.

use crate::backend::Backend;
use crate::config::{AlgorithmConfig, Config, Timeouts};
use crate::key::KeySpec;
use crate::ring::{Algorithm, Member, Ring};
use arc_swap::{ArcSwap, Guard};
use std::sync::Arc;

/// Everything a request needs to be routed, built together from one config.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub ring: Ring,
    /// Indexed like the ring's members.
    pub backends: Box<[Arc<Backend>]>,
    pub keys: KeySpec,
    pub timeouts: Timeouts,
}

impl Snapshot {
    /// Builds a snapshot from a validated config. Backends that keep their
    /// name and address in `previous` keep their live state.
    pub fn build(
        config: &Config,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Self, String> {
        let mut backends = Vec::with_capacity(config.backends.len());
        let mut members = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            let kept = previous.and_then(|p| {
                p.backends.iter().find(|o| {
                    *o.name == *b.name && *o.address == *b.address && o.weight == b.weight
                })
            });
            let backend = match kept {
                Some(o) => o.clone(),
                None => Arc::new(Backend::new(&b.name, &b.address, b.weight)?),
            };
            members.push(Member {
                name: backend.name.clone(),
                weight: b.weight,
            });
            backends.push(backend);
        }
        let algorithm = match config.routing.algorithm {
            AlgorithmConfig::Ring { vnodes } => Algorithm::Ring { vnodes },
        };
        let ring =
            Ring::build(members, algorithm, config.routing.seed).map_err(|e| e.to_string())?;
        let keys = KeySpec::new(&config.routing.key, config.routing.missing_key)?;
        Ok(Snapshot {
            generation,
            ring,
            backends: backends.into_boxed_slice(),
            keys,
            timeouts: config.timeouts.clone(),
        })
    }

    /// The backend that owns `key` when all backends are available.
    pub fn owner(&self, key: &[u8]) -> &Arc<Backend> {
        &self.backends[self.ring.owner(self.ring.hash(key))]
    }
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
