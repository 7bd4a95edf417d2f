//! Ketama-style consistent hash ring: `vnodes × weight` points per backend,
//! hashed from the backend's name and the seed, sorted, with a bucket index so
//! a lookup is one table read plus a short scan instead of a full binary search.

use super::{Member, RingError, MAX_POINTS};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bits of the hash used to pick a bucket of the index; the index has about
/// one bucket per point, capped so it never outgrows the points themselves.
const MAX_INDEX_BITS: u32 = 20;

/// Owners met walking clockwise from a point, wrapping once.
pub type Walk<'a> =
    std::iter::Copied<std::iter::Chain<std::slice::Iter<'a, u32>, std::slice::Iter<'a, u32>>>;

/// A built ring. Immutable: a change of pool builds a new one.
#[derive(Debug, Clone)]
pub struct Ketama {
    /// Sorted, distinct hash points.
    points: Box<[u64]>,
    /// `owners[i]` is the member index that owns `points[i]`.
    owners: Box<[u32]>,
    /// `index[b]` is the first point index whose point's top bits are >= b;
    /// one extra entry at the end equals `points.len()`.
    index: Box<[u32]>,
    /// Right shift that turns a hash into a bucket number.
    shift: u32,
    /// Members owning at least one point.
    distinct: usize,
}

impl Ketama {
    /// Builds the ring. Points come from `name`, the vnode number and `seed`;
    /// a tie between two members' points goes to the smaller name, so the
    /// order of members in the input never changes routing.
    pub fn build(members: &[Member], vnodes: u32, seed: u64) -> Result<Self, RingError> {
        Self::build_ramped(members, vnodes, seed, &[])
    }

    /// `build`, with member `i` at the fraction `ramps[i]` of its weight
    /// (missing entries: 1): it gets the first `⌈vnodes × weight × ramp⌉`
    /// of its points, in their fixed order, so as the ramp grows the member
    /// only gains points and a key only ever moves to it (slow start).
    pub fn build_ramped(
        members: &[Member],
        vnodes: u32,
        seed: u64,
        ramps: &[f64],
    ) -> Result<Self, RingError> {
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        let mut total: u64 = 0;
        for m in members {
            total = total.saturating_add(u64::from(vnodes) * u64::from(m.weight.get()));
        }
        if vnodes == 0 || total > MAX_POINTS {
            return Err(RingError::TooManyPoints { points: total });
        }
        let mut all: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        let mut buf = Vec::with_capacity(64);
        for (idx, m) in members.iter().enumerate() {
            let full = u64::from(vnodes) * u64::from(m.weight.get());
            let count = match ramps.get(idx) {
                Some(&f) if f < 1.0 => (full as f64 * f.max(0.0)).ceil() as u64,
                _ => full,
            };
            for v in 0..count {
                buf.clear();
                buf.extend_from_slice(m.name.as_bytes());
                buf.push(b'#');
                push_decimal(&mut buf, v);
                all.push((xxh3_64_with_seed(&buf, seed), idx as u32));
            }
        }
        all.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| members[a.1 as usize].name.cmp(&members[b.1 as usize].name))
        });
        all.dedup_by_key(|p| p.0);
        if all.is_empty() {
            return Err(RingError::Empty);
        }
        let points: Box<[u64]> = all.iter().map(|p| p.0).collect();
        let owners: Box<[u32]> = all.iter().map(|p| p.1).collect();
        Ok(Self::indexed(points, owners, members.len()))
    }

    /// The ring made of this ring's points whose owner passes `keep`: every
    /// hash goes to the first kept point at or clockwise after it, i.e. to
    /// the first kept member of its walk. `None` if no point is kept.
    pub fn filtered(&self, keep: impl Fn(u32) -> bool) -> Option<Self> {
        let (points, owners): (Vec<u64>, Vec<u32>) =
            self.arcs().filter(|&(_, owner)| keep(owner)).unzip();
        if points.is_empty() {
            return None;
        }
        let members = owners.iter().max().map_or(0, |&m| m as usize + 1);
        Some(Self::indexed(points.into(), owners.into(), members))
    }

    /// Adds the bucket index to sorted, distinct points and their owners
    /// (member indices below `members`).
    fn indexed(points: Box<[u64]>, owners: Box<[u32]>, members: usize) -> Self {
        let mut owns = vec![false; members];
        for &o in owners.iter() {
            owns[o as usize] = true;
        }
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, MAX_INDEX_BITS);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut i = 0usize;
        for b in 0..buckets {
            let start = (b as u64) << shift;
            while i < points.len() && points[i] < start {
                i += 1;
            }
            index.push(i as u32);
        }
        index.push(points.len() as u32);
        Ketama {
            points,
            owners,
            index: index.into_boxed_slice(),
            shift,
            distinct: owns.iter().filter(|&&o| o).count(),
        }
    }

    /// Index of the first point at or clockwise after `hash` (wrapping).
    #[inline]
    fn slot(&self, hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let lo = self.index[b] as usize;
        let hi = self.index[b + 1] as usize;
        let pos = lo + self.points[lo..hi].partition_point(|&p| p < hash);
        if pos == self.points.len() {
            0
        } else {
            pos
        }
    }

    /// The member that owns `hash`.
    #[inline]
    pub fn owner(&self, hash: u64) -> u32 {
        self.owners[self.slot(hash)]
    }

    /// Members in the order met walking clockwise from `hash`, with repeats;
    /// the caller keeps the first sighting of each.
    pub fn walk(&self, hash: u64) -> Walk<'_> {
        let start = self.slot(hash);
        let (tail, head) = self.owners.split_at(start);
        head.iter().chain(tail.iter()).copied()
    }

    /// Number of members owning at least one point.
    pub fn distinct(&self) -> usize {
        self.distinct
    }

    /// Number of points on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points (never true for a built ring).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The owned arcs as `(end point, owner)`: the arc ending at `points[i]`
    /// starts just after `points[i - 1]` (the first wraps from the last).
    pub fn arcs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.points.iter().copied().zip(self.owners.iter().copied())
    }

    /// Bytes held by the ring's tables.
    pub fn memory_bytes(&self) -> usize {
        self.points.len() * 8 + self.owners.len() * 4 + self.index.len() * 4
    }
}

/// Appends `n` in decimal: the vnode label, without a formatter per point.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}
