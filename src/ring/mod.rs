//! Consistent hashing as pure values: which member owns a 64-bit key hash,
//! the key's preference order of distinct members, each member's exact share
//! of the keyspace, and the exact fraction of keyspace that changes owner
//! between two rings. Three algorithms behind one `Ring`: a ketama-style
//! ring (`ketama.rs`), Maglev (`maglev.rs`) and weighted rendezvous
//! (`rendezvous.rs`). Knows nothing of HTTP, TOML or tokio.

mod ketama;
mod maglev;
mod rendezvous;

pub use ketama::{Ketama, Walk};
pub use maglev::{
    is_prime, next_prime, table_size_verdict, Maglev, TableSizeVerdict, DEFAULT_TABLE_SIZE,
};
pub use rendezvous::{Ranked, Rendezvous};

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

impl Member {
    /// `backend-0` .. `backend-{n-1}`, weight 1: the pool that benchmarks
    /// and reports measure.
    pub fn numbered(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("backend-{i}").into(),
                weight: NonZeroU32::MIN,
            })
            .collect()
    }
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
    #[error("the maglev table size {size} must be a prime, at least the number of members ({members}) and at most {MAX_POINTS}")]
    TableSize { size: u32, members: usize },
}

/// The hashing algorithm behind a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ketama-style ring with weighted virtual nodes.
    Ring { vnodes: u32 },
    /// Maglev lookup table of a fixed prime size.
    Maglev { table_size: u32 },
    /// Weighted rendezvous (highest random weight).
    Rendezvous,
}

impl Algorithm {
    /// The name used in config files and the `ring_info` metric.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring { .. } => "ring",
            Algorithm::Maglev { .. } => "maglev",
            Algorithm::Rendezvous => "rendezvous",
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
    /// Members routed around as if removed (see `excluding`); empty when
    /// every member takes part.
    excluded: Box<[bool]>,
    /// Members at a fraction of their weight (see `ramped`), by index;
    /// empty when every member has its full weight.
    ramps: Box<[f64]>,
}

#[derive(Debug, Clone)]
enum Table {
    Ketama(Ketama),
    Maglev(Maglev),
    Rendezvous(Rendezvous),
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
            Algorithm::Maglev { table_size } => {
                Table::Maglev(Maglev::build(&members, table_size, seed, &[])?)
            }
            Algorithm::Rendezvous => {
                Table::Rendezvous(Rendezvous::build(&members, seed, &[]).ok_or(RingError::Empty)?)
            }
        };
        let fingerprint = fingerprint(&members, algorithm, seed, &[]);
        Ok(Ring {
            members: members.into_boxed_slice(),
            seed,
            algorithm,
            table,
            fingerprint,
            excluded: Box::new([]),
            ramps: Box::new([]),
        })
    }

    /// The ring with member `i` at the fraction `ramps[i]` (0 to 1; missing
    /// entries 1) of its weight, for slow start; the same members and
    /// indices. Ring: the member holds the first points of its fixed order,
    /// so as its fraction grows keys only move to it. Rendezvous: its
    /// weight scales its scores, with the same property. Maglev: the table
    /// is rebuilt with the weights scaled (×100), which also moves keys
    /// between the other members while the ramp lasts. At 1 everywhere the
    /// ring is this one.
    ///
    /// Fractions are relative: they are scaled so the largest is 1 (see
    /// `normalize_ramps`), so members ramping together route as the pool
    /// does, and the ring is never empty.
    pub fn ramped(&self, ramps: &[f64]) -> Result<Ring, RingError> {
        let mut ramps: Box<[f64]> = (0..self.members.len())
            .map(|i| ramps.get(i).copied().unwrap_or(1.0))
            .collect();
        normalize_ramps(&mut ramps);
        if ramps.iter().all(|&f| f >= 1.0) {
            return Ring::build(self.members.to_vec(), self.algorithm, self.seed);
        }
        let table = ramped_table(&self.members, self.algorithm, self.seed, &[], &ramps)?;
        Ok(Ring {
            members: self.members.clone(),
            seed: self.seed,
            algorithm: self.algorithm,
            table,
            fingerprint: fingerprint_ramped(&self.members, self.algorithm, self.seed, &[], &ramps),
            excluded: Box::new([]),
            ramps,
        })
    }

    /// The fraction of its weight member `i` routes with (1 unless ramping).
    pub fn ramp(&self, i: usize) -> f64 {
        self.ramps.get(i).copied().unwrap_or(1.0)
    }

    /// The ring that routes exactly as if the members marked in `excluded`
    /// (by index; missing entries count as not excluded) were removed from
    /// the pool, on top of any this ring already excludes. It keeps the same
    /// member list and indices; excluded members own nothing and appear in
    /// no preference order. `None` if no member would be left.
    ///
    /// Ring and rendezvous: every key goes to the first member of its
    /// `preference` order that is not excluded. Maglev: the table rebuilt
    /// over the remaining members, which also moves some keys between
    /// members that stayed. Build it once per change of the excluded set.
    pub fn excluding(&self, excluded: &[bool]) -> Option<Ring> {
        let n = self.members.len();
        let mask: Box<[bool]> = (0..n)
            .map(|i| self.is_excluded(i) || excluded.get(i).copied().unwrap_or(false))
            .collect();
        if mask.iter().all(|&e| e) {
            return None;
        }
        let table = match &self.table {
            Table::Ketama(k) => Table::Ketama(k.filtered(|m| !mask[m as usize])?),
            Table::Maglev(_) | Table::Rendezvous(_) => {
                ramped_table(&self.members, self.algorithm, self.seed, &mask, &self.ramps).ok()?
            }
        };
        let mask = if mask.iter().any(|&e| e) {
            mask
        } else {
            Box::new([])
        };
        Some(Ring {
            members: self.members.clone(),
            seed: self.seed,
            algorithm: self.algorithm,
            table,
            fingerprint: fingerprint_ramped(
                &self.members,
                self.algorithm,
                self.seed,
                &mask,
                &self.ramps,
            ),
            excluded: mask,
            ramps: self.ramps.clone(),
        })
    }

    /// Whether member `i` is routed around (see `excluding`).
    pub fn is_excluded(&self, i: usize) -> bool {
        self.excluded.get(i).copied().unwrap_or(false)
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
            Table::Maglev(m) => m.owner(hash) as usize,
            Table::Rendezvous(r) => r.owner(hash) as usize,
        }
    }

    /// Distinct member indices in the key's preference order: the owner
    /// first, then the members failover and overload pass the key on to.
    /// Ring: clockwise from the key. Rendezvous: descending score. Maglev:
    /// the members met walking the table forward from the key's slot.
    pub fn preference(&self, hash: u64) -> Preference<'_> {
        let walk = |walk, left| Order::Walk {
            walk,
            seen: Seen::new(self.members.len()),
            left,
        };
        Preference {
            order: match &self.table {
                Table::Ketama(k) => walk(k.walk(hash), k.distinct()),
                Table::Maglev(m) => walk(m.walk(hash), m.distinct()),
                Table::Rendezvous(r) => Order::Ranked(r.ranked(hash)),
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
            Table::Maglev(m) => m.memory_bytes(),
            Table::Rendezvous(r) => r.memory_bytes(),
        }
    }

    /// Each member's exact fraction of the keyspace, by member index; sums
    /// to 1. Ring: the arcs' lengths. Maglev: the hashes each slot receives.
    /// Rendezvous (no table): `weight / Σ weight`, the exact probability of
    /// winning under uniform draws.
    pub fn shares(&self) -> Vec<f64> {
        let n = self.members.len();
        let owned = match &self.table {
            Table::Rendezvous(r) => {
                let w = r.weights(n);
                let total: f64 = w.iter().sum();
                return w.into_iter().map(|x| x / total).collect();
            }
            Table::Ketama(k) => {
                let mut owned = vec![0u128; n];
                for (len, owner) in segments(k) {
                    owned[owner as usize] += len;
                }
                owned
            }
            Table::Maglev(m) => {
                let mut owned = vec![0u128; n];
                for ((_, len), &owner) in m.slot_spans().zip(m.slots()) {
                    owned[owner as usize] += len;
                }
                owned
            }
        };
        owned.into_iter().map(frac).collect()
    }

    /// Exact fraction of the keyspace whose owner (compared by member name)
    /// differs between `self` and `other`.
    pub fn moved_fraction(&self, other: &Ring) -> f64 {
        self.remap(other).moved
    }

    /// Exactly which part of the keyspace changes owner from `self` to
    /// `other`, in total and per member (compared by name).
    ///
    /// Rings and Maglev tables own runs of consecutive hashes, so any two of
    /// them compare exactly, run by run. Rendezvous is measured under its
    /// model (see `shares`): against another rendezvous pool with a closed
    /// form, against a table as draws independent of the key's position.
    pub fn remap(&self, other: &Ring) -> Remap {
        let same = self.index_in(other);
        let (n, o) = (self.members.len(), other.members.len());
        match (&self.table, &other.table) {
            (Table::Rendezvous(a), Table::Rendezvous(b)) => {
                let (wa, wb) = (a.weights(n), b.weights(o));
                if same_pool(&wa, &wb, &same) && self.seed == other.seed {
                    return Remap::none(n, o);
                }
                let stay = rendezvous::stay(&wa, &wb, &same, self.seed == other.seed);
                Remap::from_stay(&self.shares(), &other.shares(), &same, &stay)
            }
            (Table::Rendezvous(_), _) | (_, Table::Rendezvous(_)) => {
                let (sa, sb) = (self.shares(), other.shares());
                let stay: Vec<f64> = same
                    .iter()
                    .enumerate()
                    .map(|(i, j)| j.map_or(0.0, |j| sa[i] * sb[j as usize]))
                    .collect();
                Remap::from_stay(&sa, &sb, &same, &stay)
            }
            (Table::Maglev(a), Table::Maglev(b)) if a.len() == b.len() => {
                let mut lost = vec![0u128; n];
                let mut gained = vec![0u128; o];
                let mut moved: u128 = 0;
                let slots = a.slots().iter().zip(b.slots());
                for ((_, len), (&from, &to)) in a.slot_spans().zip(slots) {
                    if same[from as usize] != Some(to) {
                        moved += len;
                        lost[from as usize] += len;
                        gained[to as usize] += len;
                    }
                }
                Remap::from_counts(moved, lost, gained)
            }
            _ => self.remap_runs(other, &same),
        }
    }

    /// `remap` between two tables that own runs of consecutive hashes: every
    /// run end of either bounds an interval (prev, end] on which both have a
    /// constant owner; sum the intervals where they differ.
    fn remap_runs(&self, other: &Ring, same: &[Option<u32>]) -> Remap {
        let mut lost = vec![0u128; self.members.len()];
        let mut gained = vec![0u128; other.members.len()];
        let mut bounds = self.run_ends();
        bounds.extend(other.run_ends());
        bounds.sort_unstable();
        bounds.dedup();
        let mut moved: u128 = 0;
        let mut prev = bounds[bounds.len() - 1];
        for &p in &bounds {
            let (from, to) = (self.owner(p), other.owner(p));
            if same[from] != Some(to as u32) {
                let len = arc_len(prev, p, bounds.len());
                moved += len;
                lost[from] += len;
                gained[to] += len;
            }
            prev = p;
        }
        Remap::from_counts(moved, lost, gained)
    }

    /// The last hash of each run of hashes with one owner (rings and Maglev).
    fn run_ends(&self) -> Vec<u64> {
        match &self.table {
            Table::Ketama(k) => k.arcs().map(|(p, _)| p).collect(),
            Table::Maglev(m) => {
                let slots = m.slots();
                m.slot_spans()
                    .enumerate()
                    .filter(|&(s, _)| s + 1 == slots.len() || slots[s] != slots[s + 1])
                    .map(|(_, (end, _))| end)
                    .collect()
            }
            Table::Rendezvous(_) => Vec::new(),
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
}

/// `(length, owner)` of each arc of constant owner; lengths sum to 2^64.
fn segments(k: &Ketama) -> impl Iterator<Item = (u128, u32)> + '_ {
    let n = k.len();
    let last = k.arcs().last().map_or(0, |(p, _)| p);
    k.arcs().scan(last, move |prev, (p, owner)| {
        let len = arc_len(*prev, p, n);
        *prev = p;
        Some((len, owner))
    })
}

/// Whether two weight lists (by member, 0 = takes no part) describe the
/// same pool, members matched by name through `same`.
fn same_pool(wa: &[f64], wb: &[f64], same: &[Option<u32>]) -> bool {
    let matched = same
        .iter()
        .enumerate()
        .filter(|&(i, j)| wa[i] > 0.0 && j.is_some_and(|j| wb[j as usize] == wa[i]))
        .count();
    matched == wa.iter().filter(|&&w| w > 0.0).count()
        && matched == wb.iter().filter(|&&w| w > 0.0).count()
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

impl Remap {
    /// Nothing moves.
    fn none(old: usize, new: usize) -> Self {
        Remap {
            moved: 0.0,
            lost: vec![0.0; old],
            gained: vec![0.0; new],
        }
    }

    /// From counts of hashes out of 2^64.
    fn from_counts(moved: u128, lost: Vec<u128>, gained: Vec<u128>) -> Self {
        Remap {
            moved: frac(moved),
            lost: lost.into_iter().map(frac).collect(),
            gained: gained.into_iter().map(frac).collect(),
        }
    }

    /// From the shares before (`sa`) and after (`sb`) and, by member of the
    /// old ring, the keyspace it keeps (`stay`).
    fn from_stay(sa: &[f64], sb: &[f64], same: &[Option<u32>], stay: &[f64]) -> Self {
        let lost: Vec<f64> = sa.iter().zip(stay).map(|(s, k)| (s - k).max(0.0)).collect();
        let mut gained = sb.to_vec();
        for (i, j) in same.iter().enumerate() {
            if let Some(j) = j {
                gained[*j as usize] = (gained[*j as usize] - stay[i]).max(0.0);
            }
        }
        let kept: f64 = stay.iter().sum();
        Remap {
            moved: (1.0 - kept).clamp(0.0, 1.0),
            lost,
            gained,
        }
    }
}

/// Size of the 64-bit keyspace.
const KEYSPACE: u128 = 1 << 64;

/// A count of hashes as a fraction of the keyspace.
fn frac(x: u128) -> f64 {
    x as f64 / KEYSPACE as f64
}

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

/// Hashes everything routing reads: the algorithm and its parameter, the
/// seed, every member's name and weight (in name order), and which members
/// are excluded. A pool without exclusions hashes as it always has.
/// Scales slow-start fractions so the largest is 1 (each clamped to 0..1
/// first): only their ratios route, so members ramping alike (a whole pool
/// recovering at once) route as the configured pool, and one member always
/// has its full weight. All at 0 counts as all at 1.
pub fn normalize_ramps(ramps: &mut [f64]) {
    for f in ramps.iter_mut() {
        *f = if f.is_nan() { 1.0 } else { f.clamp(0.0, 1.0) };
    }
    let max = ramps.iter().copied().fold(0.0, f64::max);
    for f in ramps.iter_mut() {
        *f = if max > 0.0 { (*f / max).min(1.0) } else { 1.0 };
    }
}

/// The table of `algorithm` over `members` with the `excluded` routed
/// around and the `ramps` applied (see `Ring::ramped`).
fn ramped_table(
    members: &[Member],
    algorithm: Algorithm,
    seed: u64,
    excluded: &[bool],
    ramps: &[f64],
) -> Result<Table, RingError> {
    let ramp = |i: usize| ramps.get(i).copied().unwrap_or(1.0);
    Ok(match algorithm {
        Algorithm::Ring { vnodes } => {
            let k = Ketama::build_ramped(members, vnodes, seed, ramps)?;
            let mask = |m: u32| !excluded.get(m as usize).copied().unwrap_or(false);
            Table::Ketama(k.filtered(mask).ok_or(RingError::Empty)?)
        }
        Algorithm::Rendezvous => Table::Rendezvous(
            Rendezvous::build_ramped(members, seed, excluded, ramps).ok_or(RingError::Empty)?,
        ),
        Algorithm::Maglev { table_size } => {
            if ramps.iter().all(|&f| f >= 1.0) {
                return Ok(Table::Maglev(Maglev::build(
                    members, table_size, seed, excluded,
                )?));
            }
            // Weights in hundredths: a member at fraction f of weight w
            // takes round(100 × w × f) turns a round; 0 takes no part.
            let mut mask: Vec<bool> = Vec::with_capacity(members.len());
            let scaled: Vec<Member> = members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let turns = (f64::from(m.weight.get()) * 100.0 * ramp(i)).round();
                    let turns = turns.min(f64::from(u32::MAX)) as u32;
                    mask.push(turns == 0 || excluded.get(i).copied().unwrap_or(false));
                    Member {
                        name: m.name.clone(),
                        weight: std::num::NonZeroU32::new(turns)
                            .unwrap_or(std::num::NonZeroU32::MIN),
                    }
                })
                .collect();
            Table::Maglev(Maglev::build(&scaled, table_size, seed, &mask)?)
        }
    })
}

/// `fingerprint`, with the members at a fraction of their weight told apart.
fn fingerprint_ramped(
    members: &[Member],
    algorithm: Algorithm,
    seed: u64,
    excluded: &[bool],
    ramps: &[f64],
) -> u64 {
    let base = fingerprint(members, algorithm, seed, excluded);
    if ramps.iter().all(|&f| f >= 1.0) {
        return base;
    }
    let mut buf = base.to_le_bytes().to_vec();
    buf.extend_from_slice(b"ramped\0");
    let mut named: Vec<(&str, f64)> = members
        .iter()
        .enumerate()
        .filter(|&(i, _)| ramps.get(i).copied().unwrap_or(1.0) < 1.0)
        .map(|(i, m)| (&*m.name, ramps[i]))
        .collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    for (name, f) in named {
        buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&f.to_bits().to_le_bytes());
    }
    xxh3_64_with_seed(&buf, 0)
}

fn fingerprint(members: &[Member], algorithm: Algorithm, seed: u64, excluded: &[bool]) -> u64 {
    let mut sorted: Vec<(&Member, bool)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m, excluded.get(i).copied().unwrap_or(false)))
        .collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut buf = Vec::with_capacity(32 + members.len() * 16);
    match algorithm {
        Algorithm::Ring { vnodes } => {
            buf.extend_from_slice(b"ring\0");
            buf.extend_from_slice(&vnodes.to_le_bytes());
        }
        Algorithm::Maglev { table_size } => {
            buf.extend_from_slice(b"maglev\0");
            buf.extend_from_slice(&table_size.to_le_bytes());
        }
        Algorithm::Rendezvous => buf.extend_from_slice(b"rendezvous\0"),
    }
    buf.extend_from_slice(&seed.to_le_bytes());
    for &(m, _) in &sorted {
        buf.extend_from_slice(&(m.name.len() as u64).to_le_bytes());
        buf.extend_from_slice(m.name.as_bytes());
        buf.extend_from_slice(&m.weight.get().to_le_bytes());
    }
    if excluded.iter().any(|&e| e) {
        buf.extend_from_slice(b"excluded\0");
        for (m, _) in sorted.iter().filter(|(_, e)| *e) {
            buf.extend_from_slice(&(m.name.len() as u64).to_le_bytes());
            buf.extend_from_slice(m.name.as_bytes());
        }
    }
    xxh3_64_with_seed(&buf, 0)
}

/// Iterator over a key's distinct members in preference order.
pub struct Preference<'a> {
    order: Order<'a>,
}

enum Order<'a> {
    /// Rings and Maglev: a walk with repeats, kept to first sightings;
    /// `left` counts the distinct members still to meet.
    Walk {
        walk: Walk<'a>,
        seen: Seen,
        left: usize,
    },
    /// Rendezvous: already distinct, by descending score.
    Ranked(Ranked<'a>),
}

impl Iterator for Preference<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        match &mut self.order {
            Order::Walk { walk, seen, left } => {
                if *left == 0 {
                    return None;
                }
                for m in walk.by_ref() {
                    if seen.insert(m) {
                        *left -= 1;
                        return Some(m as usize);
                    }
                }
                None
            }
            Order::Ranked(r) => r.next().map(|m| m as usize),
        }
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
mod algorithm_tests;
#[cfg(test)]
mod tests;
