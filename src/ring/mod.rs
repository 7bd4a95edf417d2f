//! Consistent hashing as pure values: which member owns a 64-bit key hash,
//! the key's preference order of distinct members, each member's exact share
//! of the keyspace, and the exact fraction of keyspace that changes owner
//! between two rings. Knows nothing of HTTP, TOML or tokio.

mod ketama;

pub use ketama::{Ketama, Walk};

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Upper bound on ring points (`vnodes × Σ weight`), so a typo in a weight
/// cannot make a reload allocate gigabytes.
pub const MAX_POINTS: u64 = 16 * 1024 * 1024;

/// One member of the pool as the ring sees it: an identity and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: Arc<str>,
    pub weight: NonZeroU32,
}

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the pool is empty")]
    Empty,
    #[error("member name {0:?} appears twice")]
    DuplicateName(Arc<str>),
    #[error("the ring would need {points} points (vnodes × total weight must be between 1 and {MAX_POINTS})")]
    TooManyPoints { points: u64 },
}

/// The hashing algorithm behind a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ketama-style ring with weighted virtual nodes.
    Ring { vnodes: u32 },
}

impl Algorithm {
    /// The name used in config files and the `ring_info` metric.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring { .. } => "ring",
        }
    }
}

/// A built, immutable ring over a list of members; members are referred to
/// by their index in that list.
#[derive(Debug, Clone)]
pub struct Ring {
    members: Box<[Member]>,
    seed: u64,
    algorithm: Algorithm,
    table: Table,
    fingerprint: u64,
}

#[derive(Debug, Clone)]
enum Table {
    Ketama(Ketama),
}

impl Ring {
    /// Builds a ring. Routing depends only on the members' names and weights,
    /// the algorithm and the seed, never on the order of `members`.
    pub fn build(members: Vec<Member>, algorithm: Algorithm, seed: u64) -> Result<Self, RingError> {
        let mut names: Vec<&str> = members.iter().map(|m| &*m.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(RingError::DuplicateName(w[0].into()));
        }
        let table = match algorithm {
            Algorithm::Ring { vnodes } => Table::Ketama(Ketama::build(&members, vnodes, seed)?),
        };
        let fingerprint = fingerprint(&members, algorithm, seed);
        Ok(Ring {
            members: members.into_boxed_slice(),
            seed,
            algorithm,
            table,
            fingerprint,
        })
    }

    /// Hashes a key onto the ring's keyspace.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        hash_key(key, self.seed)
    }

    /// The member index that owns `hash` when every member is available.
    #[inline]
    pub fn owner(&self, hash: u64) -> usize {
        match &self.table {
            Table::Ketama(k) => k.owner(hash) as usize,
        }
    }

    /// Distinct member indices in the key's preference order: the owner
    /// first, then the members failover and overload pass the key on to.
    pub fn preference(&self, hash: u64) -> Preference<'_> {
        match &self.table {
            Table::Ketama(k) => Preference {
                walk: k.walk(hash),
                seen: Seen::new(self.members.len()),
                left: self.members.len(),
            },
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Identity of the routing function: equal fingerprints route every key
    /// alike (names, weights, algorithm and seed are all that routing reads).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Bytes held by the lookup tables.
    pub fn memory_bytes(&self) -> usize {
        match &self.table {
            Table::Ketama(k) => k.memory_bytes(),
        }
    }

    /// Each member's exact fraction of the keyspace, by member index; sums to 1.
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.members.len()];
        for (len, owner) in self.segments() {
            owned[owner as usize] += len;
        }
        owned
            .into_iter()
            .map(|o| o as f64 / KEYSPACE as f64)
            .collect()
    }

    /// Exact fraction of the keyspace whose owner (compared by member name)
    /// differs between `self` and `other`.
    pub fn moved_fraction(&self, other: &Ring) -> f64 {
        self.remap(other).moved
    }

    /// Exactly which part of the keyspace changes owner from `self` to
    /// `other`, in total and per member (compared by name).
    pub fn remap(&self, other: &Ring) -> Remap {
        let Table::Ketama(a) = &self.table;
        let Table::Ketama(b) = &other.table;
        let same = self.index_in(other);
        let mut lost = vec![0u128; self.members.len()];
        let mut gained = vec![0u128; other.members.len()];
        // Every point of either ring bounds an interval (prev, point] on which
        // both rings have a constant owner; sum the intervals where they differ.
        let mut bounds: Vec<u64> = a.arcs().chain(b.arcs()).map(|(p, _)| p).collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut moved: u128 = 0;
        let mut prev = bounds[bounds.len() - 1];
        for &p in &bounds {
            let (from, to) = (a.owner(p), b.owner(p));
            if same[from as usize] != Some(to) {
                let len = arc_len(prev, p, bounds.len());
                moved += len;
                lost[from as usize] += len;
                gained[to as usize] += len;
            }
            prev = p;
        }
        let frac = |x: u128| x as f64 / KEYSPACE as f64;
        Remap {
            moved: frac(moved),
            lost: lost.into_iter().map(frac).collect(),
            gained: gained.into_iter().map(frac).collect(),
        }
    }

    /// For each of this ring's members, its index in `other` (by name).
    pub fn index_in(&self, other: &Ring) -> Vec<Option<u32>> {
        let by_name: HashMap<&str, u32> = other
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (&*m.name, i as u32))
            .collect();
        self.members
            .iter()
            .map(|m| by_name.get(&*m.name).copied())
            .collect()
    }

    /// `(length, owner)` of each arc of constant owner; lengths sum to 2^64.
    fn segments(&self) -> impl Iterator<Item = (u128, u32)> + '_ {
        let Table::Ketama(k) = &self.table;
        let n = k.len();
        let last = k.arcs().last().map_or(0, |(p, _)| p);
        k.arcs().scan(last, move |prev, (p, owner)| {
            let len = arc_len(*prev, p, n);
            *prev = p;
            Some((len, owner))
        })
    }
}

/// The keyspace that changes owner between two rings.
#[derive(Debug, Clone, PartialEq)]
pub struct Remap {
    /// Fraction of the keyspace whose owner differs.
    pub moved: f64,
    /// By member of the old ring: the fraction of keyspace it gave away.
    pub lost: Vec<f64>,
    /// By member of the new ring: the fraction of keyspace it took over.
    pub gained: Vec<f64>,
}

/// Size of the 64-bit keyspace.
const KEYSPACE: u128 = 1 << 64;

/// Length of the arc (prev, p]; with a single point it is the whole keyspace.
fn arc_len(prev: u64, p: u64, points: usize) -> u128 {
    if points == 1 {
        KEYSPACE
    } else {
        u128::from(p.wrapping_sub(prev))
    }
}

/// Hashes a key with the ring's seed (xxh3, 64 bits).
#[inline]
pub fn hash_key(key: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(key, seed)
}

/// A key's position on the ring in whole degrees, 0..359.
pub fn degrees(hash: u64) -> u16 {
    ((u128::from(hash) * 360) >> 64) as u16
}

fn fingerprint(members: &[Member], algorithm: Algorithm, seed: u64) -> u64 {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut buf = Vec::with_capacity(32 + members.len() * 16);
    match algorithm {
        Algorithm::Ring { vnodes } => {
            buf.extend_from_slice(b"ring\0");
            buf.extend_from_slice(&vnodes.to_le_bytes());
        }
    }
    buf.extend_from_slice(&seed.to_le_bytes());
    for m in sorted {
        buf.extend_from_slice(&(m.name.len() as u64).to_le_bytes());
        buf.extend_from_slice(m.name.as_bytes());
        buf.extend_from_slice(&m.weight.get().to_le_bytes());
    }
    xxh3_64_with_seed(&buf, 0)
}

/// Iterator over a key's distinct members in preference order.
pub struct Preference<'a> {
    walk: Walk<'a>,
    seen: Seen,
    left: usize,
}

impl Iterator for Preference<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        for m in self.walk.by_ref() {
            if self.seen.insert(m) {
                self.left -= 1;
                return Some(m as usize);
            }
        }
        None
    }
}

/// Members already yielded: a few inline slots (the usual case is one or
/// two lookups), a bitset past that.
struct Seen {
    inline: [u32; 4],
    len: usize,
    bits: Vec<u64>,
    members: usize,
}

impl Seen {
    fn new(members: usize) -> Self {
        Seen {
            inline: [0; 4],
            len: 0,
            bits: Vec::new(),
            members,
        }
    }

    /// Records `m`; false if it was already there.
    #[inline]
    fn insert(&mut self, m: u32) -> bool {
        if self.len < self.inline.len() {
            if self.inline[..self.len].contains(&m) {
                return false;
            }
            self.inline[self.len] = m;
            self.len += 1;
            return true;
        }
        if self.bits.is_empty() {
            self.bits = vec![0; self.members.div_ceil(64)];
            for &i in &self.inline {
                self.bits[i as usize / 64] |= 1 << (i % 64);
            }
        }
        let (w, b) = (m as usize / 64, m % 64);
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        fresh
    }
}

#[cfg(test)]
mod tests;
