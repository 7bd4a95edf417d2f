//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
//! M, filled by letting the members claim slots in turn, each in the order of
//! its own permutation of the table. Every member ends up with almost the
//! same number of slots, and a lookup is one multiply and one table read.
//!
//! A key's slot is `(hash × M) >> 64` (multiply-shift), so slot `s` owns the
//! hashes in `[⌈s·2^64/M⌉, ⌈(s+1)·2^64/M⌉)`: that is the keyspace `shares`
//! and `remap` measure, exactly.
//!
//! Weights: a member of weight `w` takes `w` turns per round. The turns are
//! interleaved: a round is made of passes, and in pass `p` every member whose
//! weight exceeds `p` takes one turn, heaviest first, equal weights by name.
//! Equal weights (of any value) therefore fill the table exactly as weight 1
//! does, and their slot counts differ by at most one.

use super::{Member, RingError, Walk, MAX_POINTS};
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// The table size used when the config does not set one (a prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Marks a slot no member has claimed yet during the build.
const EMPTY: u32 = u32::MAX;

/// A built Maglev table. Immutable: a change of pool builds a new one.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// `table[s]` is the member index that owns slot `s`; the length is M.
    table: Box<[u32]>,
    /// Members owning at least one slot.
    distinct: usize,
}

impl Maglev {
    /// Builds the table over the members not marked in `excluded` (indexed
    /// like `members`; missing entries count as not excluded). The table
    /// depends only on the names, weights, `table_size` and `seed` of the
    /// members taking part, never on their order in `members`.
    pub fn build(
        members: &[Member],
        table_size: u32,
        seed: u64,
        excluded: &[bool],
    ) -> Result<Self, RingError> {
        Self::build_with_endgame(members, table_size, seed, excluded, table_size.isqrt() / 2)
    }

    /// `build`, switching from probing to the free-slot list once `endgame`
    /// slots are left (0: probe to the end). The table is the same either way.
    pub(super) fn build_with_endgame(
        members: &[Member],
        table_size: u32,
        seed: u64,
        excluded: &[bool],
        endgame: u32,
    ) -> Result<Self, RingError> {
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        check_table_size(table_size, members.len())?;
        let m = table_size;

        // The members taking part, in turn order: heaviest first, then by name.
        let mut order: Vec<(u32, usize)> = members
            .iter()
            .enumerate()
            .filter(|&(i, _)| !excluded.get(i).copied().unwrap_or(false))
            .map(|(i, member)| (member.weight.get(), i))
            .collect();
        if order.is_empty() {
            return Err(RingError::Empty);
        }
        order.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| members[a.1].name.cmp(&members[b.1].name))
        });
        let weights: Vec<u32> = order.iter().map(|o| o.0).collect();
        let owners: Vec<u32> = order.iter().map(|o| o.1 as u32).collect();
        // Each member's permutation of the table is `offset + j × skip (mod
        // M)`; `next` holds the position of its next candidate slot.
        let (mut next, skip): (Vec<u32>, Vec<u32>) = order
            .iter()
            .map(|&(_, i)| permutation(&members[i].name, seed, m))
            .unzip();

        // Which slots are taken, as bits: the probing below reads only this
        // (8 KiB for M = 65537, so it stays in L1), not the table itself.
        let mut taken = vec![0u64; (m as usize).div_ceil(64)];
        let is_taken = |taken: &[u64], p: u32| taken[p as usize / 64] & (1 << (p % 64)) != 0;
        let mut table = vec![EMPTY; m as usize].into_boxed_slice();
        let mut left = m;
        // With few free slots left, probing costs about M / left steps per
        // turn (most of the build's time goes into the last 1% of slots):
        // then each turn picks, among the free slots, the first one in the
        // member's permutation instead. Slots behind a member's `next` are
        // all taken, so that is the slot probing would have reached.
        let mut free: Option<Vec<u32>> = None;
        'fill: loop {
            let mut active = weights.len();
            for pass in 0..weights[0] {
                while weights[active - 1] <= pass {
                    active -= 1;
                }
                for k in 0..active {
                    let p = if left > endgame {
                        let mut p = next[k];
                        while is_taken(&taken, p) {
                            p = step(p, skip[k], m);
                        }
                        next[k] = step(p, skip[k], m);
                        p
                    } else {
                        let free = free.get_or_insert_with(|| {
                            (0..m).filter(|&s| !is_taken(&taken, s)).collect()
                        });
                        // A free slot f is `(f − next) × skip⁻¹ (mod M)` steps on.
                        let inv = u64::from(inverse(skip[k], m));
                        let steps = |f: u32| u64::from((f + m - next[k]) % m) * inv % u64::from(m);
                        let (i, _) = free
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, &f)| steps(f))
                            .expect("a slot is left");
                        free.swap_remove(i)
                    };
                    taken[p as usize / 64] |= 1 << (p % 64);
                    table[p as usize] = owners[k];
                    left -= 1;
                    if left == 0 {
                        break 'fill;
                    }
                }
            }
        }
        let mut owns = vec![false; members.len()];
        for &o in table.iter() {
            owns[o as usize] = true;
        }
        Ok(Maglev {
            table,
            distinct: owns.iter().filter(|&&o| o).count(),
        })
    }

    /// The slot a hash falls in: multiply-shift, the same everywhere.
    #[inline]
    pub fn slot(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.table.len() as u128) >> 64) as usize
    }

    /// The member that owns `hash`.
    #[inline]
    pub fn owner(&self, hash: u64) -> u32 {
        self.table[self.slot(hash)]
    }

    /// Owners met walking the table forward from the key's slot, wrapping
    /// once, with repeats; the caller keeps the first sighting of each.
    pub fn walk(&self, hash: u64) -> Walk<'_> {
        let (tail, head) = self.table.split_at(self.slot(hash));
        head.iter().chain(tail.iter()).copied()
    }

    /// The table size M.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table has no slots (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of members that own at least one slot.
    pub fn distinct(&self) -> usize {
        self.distinct
    }

    /// The owner of each slot, in slot order.
    pub fn slots(&self) -> &[u32] {
        &self.table
    }

    /// Bytes held by the table.
    pub fn memory_bytes(&self) -> usize {
        self.table.len() * std::mem::size_of::<u32>()
    }

    /// Each slot's keyspace as `(last hash of the slot, number of hashes)`,
    /// in slot order; the counts sum to 2^64.
    pub fn slot_spans(&self) -> SlotSpans {
        SlotSpans::new(self.table.len() as u64)
    }
}

/// The hash ranges of the slots of a table of size `m` under multiply-shift:
/// slot `s` starts at `⌈s·2^64/m⌉`. Writing `2^64 = q·m + r`, that start is
/// `s·q + ⌊s·r/m⌋ + [s·r mod m ≠ 0]`, kept up to date without a division.
#[derive(Debug, Clone)]
pub struct SlotSpans {
    m: u64,
    q: u128,
    r: u64,
    slot: u64,
    /// `⌊slot·r/m⌋` and `slot·r mod m`.
    floor: u128,
    rem: u64,
}

impl SlotSpans {
    fn new(m: u64) -> Self {
        let keyspace: u128 = 1 << 64;
        SlotSpans {
            m,
            q: keyspace / u128::from(m),
            r: (keyspace % u128::from(m)) as u64,
            slot: 0,
            floor: 0,
            rem: 0,
        }
    }

    fn start(&self) -> u128 {
        u128::from(self.slot) * self.q + self.floor + u128::from(self.rem != 0)
    }
}

impl Iterator for SlotSpans {
    type Item = (u64, u128);

    fn next(&mut self) -> Option<(u64, u128)> {
        if self.slot == self.m {
            return None;
        }
        let start = self.start();
        self.slot += 1;
        self.rem += self.r;
        if self.rem >= self.m {
            self.rem -= self.m;
            self.floor += 1;
        }
        let end = self.start();
        Some(((end - 1) as u64, end - start))
    }
}

/// A member's place to start and stride through a table of size `m`, from
/// one seeded 128-bit hash of its name. `skip` is in `1..m`, so with `m`
/// prime the walk visits every slot.
fn permutation(name: &str, seed: u64, m: u32) -> (u32, u32) {
    let h = xxh3_128_with_seed(name.as_bytes(), seed);
    let offset = (h as u64 % u64::from(m)) as u32;
    let skip = ((h >> 64) as u64 % u64::from(m - 1)) as u32 + 1;
    (offset, skip)
}

/// `a⁻¹ mod m` for `a` in `1..m`, `m` prime (extended Euclid).
fn inverse(a: u32, m: u32) -> u32 {
    let (mut t, mut new_t) = (0i64, 1i64);
    let (mut r, mut new_r) = (i64::from(m), i64::from(a));
    while new_r != 0 {
        let q = r / new_r;
        (t, new_t) = (new_t, t - q * new_t);
        (r, new_r) = (new_r, r - q * new_r);
    }
    t.rem_euclid(i64::from(m)) as u32
}

#[inline]
fn step(p: u32, skip: u32, m: u32) -> u32 {
    let p = p + skip;
    if p >= m {
        p - m
    } else {
        p
    }
}

/// What the Maglev rule says of a table size for a pool: the one place the
/// rule lives (the builder and the config checker both ask it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSizeVerdict {
    /// At least 100 slots per member: shares within about 1% of the mean.
    Good,
    /// Buildable but uneven (under 100 × members): the message says by how
    /// much and which prime balances better.
    Uneven(String),
    /// Buildable but under 10 × members, where shares differ by over 10%:
    /// the config refuses it, naming a prime that is large enough.
    TooSmall(String),
    /// Not a prime, fewer slots than members, or over `MAX_POINTS`: no
    /// table can be built.
    Unbuildable(String),
}

/// The Maglev table-size rule (Eisenbud et al. §3.4: M prime, M ≫ N) for
/// `size` slots over `members` members. Messages start with what is wrong,
/// e.g. "is not a prime; use a prime such as 65537".
pub fn table_size_verdict(size: u32, members: usize) -> TableSizeVerdict {
    let (m, n) = (u64::from(size), members as u64);
    let suggest = |from: u64| {
        let p = next_prime(from);
        if p <= MAX_POINTS {
            format!("use a prime such as {p}")
        } else {
            format!("no prime table size up to {MAX_POINTS} is large enough for this pool; use \"ring\" or \"rendezvous\"")
        }
    };
    if !is_prime(m) || m > MAX_POINTS {
        return TableSizeVerdict::Unbuildable(format!(
            "is not a prime; {}",
            suggest(m.max(10 * n))
        ));
    }
    if m < n {
        return TableSizeVerdict::Unbuildable(format!(
            "is smaller than the {n} backends; {}",
            suggest(10 * n)
        ));
    }
    if m < 10 * n {
        return TableSizeVerdict::TooSmall(format!(
            "is smaller than 10 × {n} backends; {}",
            suggest(10 * n)
        ));
    }
    if m < 100 * n {
        return TableSizeVerdict::Uneven(format!(
            "gives each of the {n} backends only about {} slots, so shares can differ by about {:.1}% of the mean; a prime of at least {} such as {} balances better",
            m / n,
            100.0 * n as f64 / m as f64,
            100 * n,
            next_prime(100 * n)
        ));
    }
    TableSizeVerdict::Good
}

/// A table size the builder accepts: a prime, at least the number of
/// members (so each gets a slot), at most `MAX_POINTS`.
fn check_table_size(size: u32, members: usize) -> Result<(), RingError> {
    match table_size_verdict(size, members) {
        TableSizeVerdict::Unbuildable(_) => Err(RingError::TableSize { size, members }),
        _ => Ok(()),
    }
}

/// Whether `n` is prime (trial division; table sizes are at most a few
/// million, so at most a few thousand divisions).
pub fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime at or above `n`.
pub fn next_prime(n: u64) -> u64 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}
