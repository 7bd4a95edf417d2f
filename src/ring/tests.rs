//! Tests of the ring: plain unit tests, golden vectors pinning the hash and
//! point scheme, sampling cross-checks of the exact `shares` and
//! `moved_fraction`, and property tests of the consistent-hashing guarantees.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashMap;

// ---------------------------------------------------------------- helpers

pub(super) fn member(name: &str, weight: u32) -> Member {
    Member {
        name: name.into(),
        weight: NonZeroU32::new(weight).expect("weight must be non-zero"),
    }
}

/// `n` members named `b0..b{n-1}`, weight 1.
pub(super) fn pool(n: usize) -> Vec<Member> {
    (0..n).map(|i| member(&format!("b{i}"), 1)).collect()
}

fn ring(members: Vec<Member>, vnodes: u32, seed: u64) -> Ring {
    Ring::build(members, Algorithm::Ring { vnodes }, seed).expect("ring builds")
}

pub(super) fn owner_name(ring: &Ring, hash: u64) -> &str {
    &ring.members()[ring.owner(hash)].name
}

pub(super) fn share_of(ring: &Ring, name: &str) -> f64 {
    let i = ring
        .members()
        .iter()
        .position(|m| &*m.name == name)
        .expect("member is in the ring");
    ring.shares()[i]
}

/// The last hash of each run of hashes with one owner, in order: a ring's
/// points (arc end points), a Maglev table's run ends; none for rendezvous.
pub(super) fn points(ring: &Ring) -> Vec<u64> {
    ring.run_ends()
}

/// `random` pseudo-random hashes from `seed`, the keyspace's edges, and every
/// point of `rings` together with its two neighbours, so that the exact arc
/// boundaries are probed as well as the arcs' interiors.
pub(super) fn probes(rings: &[&Ring], seed: u64, random: usize) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut hashes: Vec<u64> = (0..random).map(|_| rng.u64(..)).collect();
    hashes.extend([0, 1, 1 << 63, u64::MAX - 1, u64::MAX]);
    for r in rings {
        for p in points(r) {
            hashes.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
        }
    }
    hashes
}

pub(super) fn without(members: &[Member], name: &str) -> Vec<Member> {
    members
        .iter()
        .filter(|m| &*m.name != name)
        .cloned()
        .collect()
}

/// `new` is `old` plus `added`: every probed key that moved went to
/// `added`, and the exact moved fraction is `added`'s share.
pub(super) fn check_add(
    old: &Ring,
    new: &Ring,
    added: &str,
    hashes: &[u64],
) -> Result<(), TestCaseError> {
    for &h in hashes {
        let (before, after) = (owner_name(old, h), owner_name(new, h));
        if before != after {
            prop_assert_eq!(after, added, "hash {:#x} moved from {}", h, before);
        }
    }
    let (moved, share) = (old.moved_fraction(new), share_of(new, added));
    prop_assert!(
        (moved - share).abs() < 1e-9,
        "moved {} vs share {}",
        moved,
        share
    );
    Ok(())
}

/// `new` is `old` without `removed`: every probed key that moved was
/// `removed`'s, and the exact moved fraction is `removed`'s share.
pub(super) fn check_remove(
    old: &Ring,
    new: &Ring,
    removed: &str,
    hashes: &[u64],
) -> Result<(), TestCaseError> {
    for &h in hashes {
        let (before, after) = (owner_name(old, h), owner_name(new, h));
        if before != after {
            prop_assert_eq!(before, removed, "hash {:#x} moved to {}", h, after);
        }
    }
    let (moved, share) = (old.moved_fraction(new), share_of(old, removed));
    prop_assert!(
        (moved - share).abs() < 1e-9,
        "moved {} vs share {}",
        moved,
        share
    );
    Ok(())
}

// ------------------------------------------------------------ unit tests

#[test]
fn empty_pool_is_an_error() {
    let err = Ring::build(Vec::new(), Algorithm::Ring { vnodes: 160 }, 0).unwrap_err();
    assert_eq!(err, RingError::Empty);
}

#[test]
fn zero_vnodes_is_an_error() {
    let err = Ring::build(pool(3), Algorithm::Ring { vnodes: 0 }, 0).unwrap_err();
    assert_eq!(err, RingError::TooManyPoints { points: 0 });
}

#[test]
fn too_many_points_is_an_error_not_a_panic() {
    // u32::MAX × u32::MAX fits a u64, but three of them must saturate.
    let huge = vec![
        member("a", u32::MAX),
        member("b", u32::MAX),
        member("c", u32::MAX),
    ];
    let err = Ring::build(huge, Algorithm::Ring { vnodes: u32::MAX }, 0).unwrap_err();
    assert!(matches!(err, RingError::TooManyPoints { points } if points > MAX_POINTS));

    let err = Ring::build(
        vec![member("a", u32::MAX)],
        Algorithm::Ring { vnodes: 160 },
        0,
    )
    .unwrap_err();
    assert_eq!(
        err,
        RingError::TooManyPoints {
            points: 160 * u64::from(u32::MAX)
        }
    );

    // One point over the limit.
    let over = u32::try_from(MAX_POINTS + 1).unwrap();
    let err = Ring::build(vec![member("a", over)], Algorithm::Ring { vnodes: 1 }, 0).unwrap_err();
    assert_eq!(
        err,
        RingError::TooManyPoints {
            points: MAX_POINTS + 1
        }
    );
}

#[test]
fn single_member_owns_everything() {
    for vnodes in [1, 2, 160] {
        let r = ring(vec![member("only", 3)], vnodes, 42);
        assert_eq!(r.shares(), vec![1.0]);
        for h in probes(&[&r], 1, 1_000) {
            assert_eq!(r.owner(h), 0);
            assert_eq!(r.preference(h).collect::<Vec<_>>(), vec![0]);
        }
    }
}

#[test]
fn preference_yields_every_member_once_owner_first() {
    // 3 stays within the inline slots of `Seen`; 10 and 130 spill into its
    // bitset, 130 over more than two words.
    for (n, vnodes) in [(2, 160), (3, 160), (10, 160), (130, 4)] {
        let r = ring(pool(n), vnodes, 7);
        for h in probes(&[], 2, 2_000) {
            let pref: Vec<usize> = r.preference(h).collect();
            assert_eq!(pref[0], r.owner(h), "n={n} h={h:#x}");
            let mut sorted = pref.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n={n} h={h:#x}");
        }
    }
}

#[test]
fn member_order_does_not_change_routing_or_fingerprint() {
    let members = vec![
        member("alpha", 1),
        member("bravo", 2),
        member("charlie", 1),
        member("delta", 3),
        member("echo", 1),
        member("foxtrot", 1),
    ];
    let base = ring(members.clone(), 160, 9);
    let base_shares: HashMap<&str, f64> = base
        .members()
        .iter()
        .zip(base.shares())
        .map(|(m, s)| (&*m.name, s))
        .collect();
    let mut rng = fastrand::Rng::with_seed(3);
    for round in 0..5 {
        let mut shuffled = members.clone();
        rng.shuffle(&mut shuffled);
        if round == 0 {
            shuffled.reverse();
        }
        let other = ring(shuffled, 160, 9);
        assert_eq!(base.fingerprint(), other.fingerprint());
        assert_eq!(base.moved_fraction(&other), 0.0);
        for i in 0..10_000 {
            let key = format!("key-{i}");
            let h = base.hash(key.as_bytes());
            assert_eq!(h, other.hash(key.as_bytes()));
            assert_eq!(owner_name(&base, h), owner_name(&other, h), "key {key}");
            let a: Vec<&str> = base
                .preference(h)
                .map(|i| &*base.members()[i].name)
                .collect();
            let b: Vec<&str> = other
                .preference(h)
                .map(|i| &*other.members()[i].name)
                .collect();
            assert_eq!(a, b, "key {key}");
        }
        for (m, s) in other.members().iter().zip(other.shares()) {
            assert_eq!(base_shares[&*m.name], s, "{}", m.name);
        }
    }
}

#[test]
fn fingerprint_tracks_every_routing_input() {
    let members = || vec![member("a", 1), member("b", 2), member("c", 1)];
    let base = ring(members(), 160, 0).fingerprint();
    assert_eq!(base, ring(members(), 160, 0).fingerprint());

    assert_ne!(base, ring(members(), 160, 1).fingerprint(), "seed");
    assert_ne!(base, ring(members(), 161, 0).fingerprint(), "vnodes");
    let mut reweighted = members();
    reweighted[1].weight = NonZeroU32::new(3).unwrap();
    assert_ne!(base, ring(reweighted, 160, 0).fingerprint(), "weight");
    let mut renamed = members();
    renamed[2].name = "d".into();
    assert_ne!(base, ring(renamed, 160, 0).fingerprint(), "name");
    let mut fewer = members();
    fewer.pop();
    assert_ne!(base, ring(fewer, 160, 0).fingerprint(), "member removed");
}

#[test]
fn moved_fraction_is_zero_against_itself() {
    for (n, vnodes) in [(1, 1), (1, 160), (3, 160), (10, 40)] {
        let r = ring(pool(n), vnodes, 5);
        assert_eq!(r.moved_fraction(&r), 0.0, "n={n} vnodes={vnodes}");
        assert_eq!(r.moved_fraction(&r.clone()), 0.0);
    }
}

#[test]
fn moved_fraction_is_symmetric() {
    let five = ring(pool(5), 160, 0);
    let six = ring(pool(6), 160, 0);
    let reseeded = ring(pool(5), 160, 1);
    let other_vnodes = ring(pool(5), 100, 0);
    let disjoint = ring(vec![member("x", 1), member("y", 2)], 160, 0);
    let single = ring(vec![member("b0", 1)], 1, 0);
    let rings = [&five, &six, &reseeded, &other_vnodes, &disjoint, &single];
    for a in rings {
        for b in rings {
            let ab = a.moved_fraction(b);
            let ba = b.moved_fraction(a);
            assert!((0.0..=1.0).contains(&ab), "{ab}");
            assert!((ab - ba).abs() < 1e-12, "{ab} vs {ba}");
        }
    }
    // No member in common: every key moves.
    assert_eq!(five.moved_fraction(&disjoint), 1.0);
    // Same members, a different seed: most keys move, but not all.
    let f = five.moved_fraction(&reseeded);
    assert!(f > 0.5 && f < 1.0, "{f}");
}

#[test]
fn degrees_stay_in_range() {
    assert_eq!(degrees(0), 0);
    assert_eq!(degrees(u64::MAX), 359);
    assert_eq!(degrees(1 << 63), 180);
    assert_eq!(degrees(1 << 62), 90);
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..10_000 {
        assert!(degrees(rng.u64(..)) < 360);
    }
}

// ---------------------------------------------------------- golden vectors

/// Pins the hash and point scheme: if this fails, every deployed ring would
/// re-route its keys on upgrade. Change the expectations only on purpose.
#[test]
fn golden_owners() {
    let r = ring(
        vec![member("b1", 1), member("b2", 1), member("b3", 1)],
        160,
        0,
    );
    let got: Vec<(&str, &str)> = ["alice", "bob", "carol", "dave", "erin"]
        .into_iter()
        .map(|k| (k, owner_name(&r, r.hash(k.as_bytes()))))
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice", "b2"),
            ("bob", "b2"),
            ("carol", "b1"),
            ("dave", "b1"),
            ("erin", "b2"),
        ]
    );
    // The key hash itself (xxh3-64, seed 0).
    assert_eq!(hash_key(b"alice", 0), 0x4da1_0dd6_1a01_16b0);
}

/// An independent, obviously correct model of the ring: every `name#vnode`
/// point in a sorted list (ties to the smaller name), owner = first point at
/// or after the hash, wrapping.
struct Model {
    points: Vec<(u64, Arc<str>)>,
}

impl Model {
    fn new(members: &[Member], vnodes: u32, seed: u64) -> Self {
        let mut points: Vec<(u64, Arc<str>)> = Vec::new();
        for m in members {
            for v in 0..u64::from(vnodes) * u64::from(m.weight.get()) {
                let label = format!("{}#{v}", m.name);
                points.push((hash_key(label.as_bytes(), seed), m.name.clone()));
            }
        }
        points.sort();
        points.dedup_by_key(|p| p.0);
        Model { points }
    }

    fn owner(&self, hash: u64) -> &str {
        let i = self.points.partition_point(|p| p.0 < hash);
        &self.points[i % self.points.len()].1
    }
}

// ------------------------------------------------- sampling cross-checks

#[test]
fn shares_agree_with_sampling() {
    for n in [3, 10] {
        let r = ring(pool(n), 160, 0);
        let shares = r.shares();
        let mut counts = vec![0u32; n];
        let mut rng = fastrand::Rng::with_seed(n as u64);
        const SAMPLES: u32 = 200_000;
        for _ in 0..SAMPLES {
            counts[r.owner(rng.u64(..))] += 1;
        }
        for (i, (&c, &s)) in counts.iter().zip(&shares).enumerate() {
            let empirical = f64::from(c) / f64::from(SAMPLES);
            assert!(
                (empirical - s).abs() < 0.01,
                "n={n} member {i}: sampled {empirical} vs exact {s}"
            );
        }
    }
}

#[test]
fn moved_fraction_agrees_with_sampling() {
    let old = ring(pool(5), 160, 0);
    let new = ring(pool(6), 160, 0);
    let exact = old.moved_fraction(&new);
    let mut rng = fastrand::Rng::with_seed(99);
    const SAMPLES: u32 = 200_000;
    let moved = (0..SAMPLES)
        .map(|_| rng.u64(..))
        .filter(|&h| owner_name(&old, h) != owner_name(&new, h))
        .count();
    let sampled = moved as f64 / f64::from(SAMPLES);
    assert!(
        (sampled - exact).abs() < 0.01,
        "sampled {sampled} vs exact {exact}"
    );
    // About 1/6 of the keys go to the sixth member.
    assert!((exact - 1.0 / 6.0).abs() < 0.05, "{exact}");
}

// --------------------------------------------------------- property tests

/// 1..=`max` members with random distinct names (including `#`, the
/// separator of vnode labels) and weights 1..=4, in random order.
pub(super) fn members_strategy(min: usize, max: usize) -> impl Strategy<Value = Vec<Member>> {
    prop::collection::btree_map("[a-z0-9#.-]{1,8}", 1u32..=4, min..=max)
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, w)| member(&name, w))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn build_is_deterministic(
        members in members_strategy(1, 12),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let a = ring(members.clone(), vnodes, seed);
        let b = ring(members.clone(), vnodes, seed);
        let mut reversed = members;
        reversed.reverse();
        let c = ring(reversed, vnodes, seed);
        prop_assert_eq!(a.fingerprint(), b.fingerprint());
        prop_assert_eq!(a.fingerprint(), c.fingerprint());
        for h in probes(&[&a], probe_seed, 500) {
            prop_assert_eq!(a.owner(h), b.owner(h));
            prop_assert_eq!(owner_name(&a, h), owner_name(&c, h));
        }
    }

    #[test]
    fn shares_sum_to_one_and_are_positive(
        members in members_strategy(1, 12),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
    ) {
        let r = ring(members, vnodes, seed);
        let shares = r.shares();
        prop_assert_eq!(shares.len(), r.members().len());
        let sum: f64 = shares.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
        for (m, s) in r.members().iter().zip(&shares) {
            prop_assert!(*s > 0.0, "{} has share {}", m.name, s);
        }
    }

    #[test]
    fn shares_follow_weights(
        members in members_strategy(1, 8),
        seed in any::<u64>(),
    ) {
        let r = ring(members, 160, seed);
        let total: u32 = r.members().iter().map(|m| m.weight.get()).sum();
        for (m, s) in r.members().iter().zip(r.shares()) {
            let expected = f64::from(m.weight.get()) / f64::from(total);
            prop_assert!(
                s > expected / 2.0 && s < expected * 2.0,
                "{} (weight {}) has share {}, expected about {}",
                m.name, m.weight, s, expected
            );
        }
    }

    #[test]
    fn adding_a_member_only_moves_keys_to_it(
        all in members_strategy(2, 13),
        which in any::<Index>(),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let added = all[which.index(all.len())].name.clone();
        let old = ring(without(&all, &added), vnodes, seed);
        let new = ring(all, vnodes, seed);
        check_add(&old, &new, &added, &probes(&[&old, &new], probe_seed, 500))?;
        prop_assert!((new.moved_fraction(&old) - old.moved_fraction(&new)).abs() < 1e-9);
    }

    #[test]
    fn removing_a_member_only_moves_its_keys(
        all in members_strategy(2, 12),
        which in any::<Index>(),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let removed = all[which.index(all.len())].name.clone();
        let old = ring(all.clone(), vnodes, seed);
        let new = ring(without(&all, &removed), vnodes, seed);
        check_remove(&old, &new, &removed, &probes(&[&old, &new], probe_seed, 500))?;
    }

    #[test]
    fn preference_starts_at_owner_and_lists_each_member_once(
        members in members_strategy(1, 12),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let r = ring(members, vnodes, seed);
        let n = r.members().len();
        for h in probes(&[&r], probe_seed, 500) {
            prop_assert_eq!(r.preference(h).next(), Some(r.owner(h)));
            let mut pref: Vec<usize> = r.preference(h).collect();
            pref.sort_unstable();
            prop_assert_eq!(pref, (0..n).collect::<Vec<_>>(), "hash {:#x}", h);
        }
    }

    #[test]
    fn owner_matches_model(
        members in members_strategy(1, 12),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let model = Model::new(&members, vnodes, seed);
        let r = ring(members, vnodes, seed);
        prop_assert_eq!(points(&r), model.points.iter().map(|p| p.0).collect::<Vec<_>>());
        for h in probes(&[&r], probe_seed, 500) {
            prop_assert_eq!(owner_name(&r, h), model.owner(h), "hash {:#x}", h);
        }
    }

    /// Failover consistency: when a member leaves, each of its keys goes to
    /// the member the old ring would have failed over to.
    #[test]
    fn removal_follows_old_preference(
        all in members_strategy(2, 12),
        which in any::<Index>(),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let removed = all[which.index(all.len())].name.clone();
        let old = ring(all.clone(), vnodes, seed);
        let new = ring(without(&all, &removed), vnodes, seed);
        for h in probes(&[&old, &new], probe_seed, 500) {
            let fallback = old
                .preference(h)
                .map(|i| &*old.members()[i].name)
                .find(|&name| name != &*removed);
            prop_assert_eq!(Some(owner_name(&new, h)), fallback, "hash {:#x}", h);
        }
    }
}

// ---------------------------------------------------------------- slow start

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Slow start on the ring and on rendezvous: while a joining member's
    /// fraction of its weight grows, every key is on its owner in the pool
    /// without it or on the joining member (never moved between two
    /// others), the joining member's share only grows, and at 1 the ring is
    /// the full one.
    #[test]
    fn a_ramp_only_moves_keys_to_the_joining_member(
        members in members_strategy(2, 10),
        rendezvous in any::<bool>(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
        steps in proptest::collection::vec(0.0f64..1.0, 1..6),
    ) {
        let algorithm = if rendezvous { Algorithm::Rendezvous } else { Algorithm::Ring { vnodes: 40 } };
        let joining = members.len() - 1;
        let full = Ring::build(members.clone(), algorithm, seed).unwrap();
        let before = Ring::build(members[..joining].to_vec(), algorithm, seed).unwrap();
        let mut fractions = steps;
        fractions.sort_by(f64::total_cmp);
        fractions.push(1.0);
        let mut share = 0.0;
        let mut last_owner: Vec<Option<usize>> = Vec::new();
        let hashes = probes(&[&full, &before], probe_seed, 400);
        for f in fractions {
            let mut ramps = vec![1.0; members.len()];
            ramps[joining] = f;
            let ramped = full.ramped(&ramps).unwrap();
            let s = ramped.shares()[joining];
            prop_assert!(s + 1e-12 >= share, "share fell from {} to {} at {}", share, s, f);
            share = s;
            let owners: Vec<usize> = hashes.iter().map(|&h| ramped.owner(h)).collect();
            for (k, &h) in hashes.iter().enumerate() {
                let o = owners[k];
                prop_assert!(o == joining || o == before.owner(h), "key moved between two others at {}", f);
                // Once on the joining member, a key stays there.
                if let Some(Some(prev)) = last_owner.get(k) {
                    prop_assert!(*prev != joining || o == joining, "key left the joining member at {}", f);
                }
            }
            last_owner = owners.into_iter().map(Some).collect();
        }
        // At 1 the ring is the full one.
        let end = full.ramped(&vec![1.0; members.len()]).unwrap();
        prop_assert_eq!(end.fingerprint(), full.fingerprint());
    }
}

#[test]
fn a_member_at_zero_owns_nothing_and_maglev_ramps_too() {
    let members = pool(4);
    for algorithm in [
        Algorithm::Ring { vnodes: 160 },
        Algorithm::Rendezvous,
        Algorithm::Maglev { table_size: 65537 },
    ] {
        let full = Ring::build(members.clone(), algorithm, 0).unwrap();
        let zero = full.ramped(&[1.0, 1.0, 1.0, 0.0]).unwrap();
        assert_eq!(zero.shares()[3], 0.0, "{algorithm:?}");
        assert_ne!(zero.fingerprint(), full.fingerprint());
        let half = full.ramped(&[1.0, 1.0, 1.0, 0.5]).unwrap();
        let s = half.shares()[3];
        assert!(s > 0.05 && s < 0.2, "{algorithm:?}: {s}");
        assert_eq!(half.ramp(3), 0.5);
    }
}
