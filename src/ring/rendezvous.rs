//! Weighted rendezvous (highest-random-weight) hashing: for each key every
//! member draws `h` uniform in (0, 1) from the key's hash and its own name
//! hash, scores `−weight / ln(h)`, and the highest score owns the key. No
//! table: a lookup costs one hash per member, and a member joining or
//! leaving moves exactly the keys it wins or held.
//!
//! There is no table to measure, so the keyspace is measured under the
//! scores' own model (draws independent and uniform): a member's share is
//! `weight / Σ weight`, and the keyspace two pools agree on has a closed
//! form (see `stay`). Sampling tests check the hashes live up to it.

use super::Member;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A built rendezvous pool. Immutable: a change of pool builds a new one.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// The members taking part, sorted by name; equal scores go to the
    /// earlier entry, so the order of the input never changes routing.
    entries: Box<[Entry]>,
    /// Every member of the pool has the same weight: the score is then an
    /// increasing function of the draw alone, and the draws are compared as
    /// integers, without a logarithm.
    uniform: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The member's name hashed with the seed, computed once at build.
    name_hash: u64,
    weight: f64,
    /// The member's index in the ring's member list.
    index: u32,
}

impl Rendezvous {
    /// Builds the pool over the members not marked in `excluded` (indexed
    /// like `members`; missing entries count as not excluded). `None` when
    /// no member takes part.
    pub fn build(members: &[Member], seed: u64, excluded: &[bool]) -> Option<Self> {
        Self::build_ramped(members, seed, excluded, &[])
    }

    /// `build`, with member `i`'s weight scaled by `ramps[i]` (missing: 1;
    /// 0 takes no part). Raising one member's weight only raises its
    /// scores, so keys only ever move to it (slow start).
    pub fn build_ramped(
        members: &[Member],
        seed: u64,
        excluded: &[bool],
        ramps: &[f64],
    ) -> Option<Self> {
        let ramp = |i: usize| ramps.get(i).copied().unwrap_or(1.0).clamp(0.0, 1.0);
        let weight = |i: usize| f64::from(members[i].weight.get()) * ramp(i);
        let uniform = (1..members.len()).all(|i| weight(i) == weight(0));
        let mut order: Vec<usize> = (0..members.len())
            .filter(|&i| !excluded.get(i).copied().unwrap_or(false) && ramp(i) > 0.0)
            .collect();
        if order.is_empty() {
            return None;
        }
        order.sort_unstable_by(|&a, &b| members[a].name.cmp(&members[b].name));
        let entries = order
            .into_iter()
            .map(|i| Entry {
                name_hash: xxh3_64_with_seed(members[i].name.as_bytes(), seed),
                weight: weight(i),
                index: i as u32,
            })
            .collect();
        Some(Rendezvous { entries, uniform })
    }

    /// The rank of `e`'s score for `hash`: a larger rank is a higher score.
    /// Scores are positive, so their bit patterns order like the scores.
    #[inline]
    fn rank(&self, e: &Entry, hash: u64) -> u64 {
        let d = draw(hash, e.name_hash);
        if self.uniform {
            d
        } else {
            score(d, e.weight).to_bits()
        }
    }

    /// The member with the highest score for `hash`. No allocation.
    #[inline]
    pub fn owner(&self, hash: u64) -> u32 {
        let mut best = 0u64;
        let mut owner = self.entries[0].index;
        for e in self.entries.iter() {
            let r = self.rank(e, hash);
            if r > best {
                best = r;
                owner = e.index;
            }
        }
        owner
    }

    /// The members in descending score order for `hash`.
    pub fn ranked(&self, hash: u64) -> Ranked<'_> {
        let heap = self
            .entries
            .iter()
            .enumerate()
            .map(|(pos, e)| (self.rank(e, hash), Reverse(pos as u32)))
            .collect();
        Ranked {
            heap,
            entries: &self.entries,
        }
    }

    /// Number of members taking part.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no member takes part (never true for a built pool).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each member's weight as seen by the scores (0 for members that take
    /// no part), by member index.
    pub fn weights(&self, members: usize) -> Vec<f64> {
        let mut w = vec![0.0; members];
        for e in self.entries.iter() {
            w[e.index as usize] = e.weight;
        }
        w
    }

    /// Bytes held per member (name hash, weight, index).
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
    }
}

/// Members in descending score order; ties go to the smaller name.
pub struct Ranked<'a> {
    heap: BinaryHeap<(u64, Reverse<u32>)>,
    entries: &'a [Entry],
}

impl Iterator for Ranked<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        let (_, Reverse(pos)) = self.heap.pop()?;
        Some(self.entries[pos as usize].index)
    }
}

/// A member's draw for a key: the top 52 bits of xxh3 over the key hash and
/// the member's name hash.
#[inline]
fn draw(hash: u64, name_hash: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&hash.to_le_bytes());
    buf[8..].copy_from_slice(&name_hash.to_le_bytes());
    xxh3_64(&buf) >> 12
}

/// `−weight / ln(h)` with `h = (draw + ½) / 2^52`, exactly representable
/// and strictly inside (0, 1), so the score is finite and positive.
#[inline]
fn score(draw: u64, weight: f64) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
    let h = (draw as f64 + 0.5) * SCALE;
    -weight / h.ln()
}

/// The keyspace that stays with each member between two pools `a` and `b`
/// (weights by member of `a`, and by member of `b`; 0 = takes no part).
/// `same[i]` is `a`'s member `i` in `b` by name; `same_seed` says whether
/// both pools draw from the same hashes.
///
/// With the same seed, member `c`'s draw is the same in both pools. Write its
/// score as the exponential race `E = X / w` (X ~ Exp(1)): `c` keeps a key
/// when it beats everyone in `a` and in `b`. Given `X = x`, a member only in
/// `a` (total weight α) loses with probability `exp(−x α / wa_c)`, one only in
/// `b` (β) with `exp(−x β / wb_c)`, and a common member `j` with
/// `exp(−x max(wa_j / wa_c, wb_j / wb_c))`. Integrating over `x`:
///
/// `stay_c = 1 / (1 + α/wa_c + β/wb_c + Σ_j max(wa_j/wa_c, wb_j/wb_c))`
///
/// which is `w_c / (total weight of the union)` when no weight changed.
/// With different seeds the two pools draw independently: `stay_c` is the
/// product of `c`'s shares.
pub fn stay(wa: &[f64], wb: &[f64], same: &[Option<u32>], same_seed: bool) -> Vec<f64> {
    let (ta, tb): (f64, f64) = (wa.iter().sum(), wb.iter().sum());
    let common: Vec<(usize, usize)> = same
        .iter()
        .enumerate()
        .filter_map(|(i, j)| j.map(|j| (i, j as usize)))
        .filter(|&(i, j)| wa[i] > 0.0 && wb[j] > 0.0)
        .collect();
    let mut out = vec![0.0; wa.len()];
    if !same_seed {
        for &(i, j) in &common {
            out[i] = wa[i] / ta * (wb[j] / tb);
        }
        return out;
    }
    let (ca, cb): (f64, f64) = common
        .iter()
        .map(|&(i, j)| (wa[i], wb[j]))
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a, y + b));
    let (alpha, beta) = (ta - ca, tb - cb);
    let unchanged = common.iter().all(|&(i, j)| wa[i] == wb[j]);
    for &(i, j) in &common {
        out[i] = if unchanged {
            wa[i] / (ca + alpha + beta)
        } else {
            let others: f64 = common
                .iter()
                .filter(|&&(k, _)| k != i)
                .map(|&(k, l)| (wa[k] / wa[i]).max(wb[l] / wb[j]))
                .sum();
            1.0 / (1.0 + alpha / wa[i] + beta / wb[j] + others)
        };
    }
    out
}
