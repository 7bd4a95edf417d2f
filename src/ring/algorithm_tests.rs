//! Tests of Maglev and rendezvous, and of what the three algorithms share:
//! golden vectors, exact shares and remaps against sampling, `excluding`,
//! and property tests of each algorithm's guarantees.

use super::tests::{
    check_add, check_remove, member, members_strategy, owner_name, points, pool, probes, without,
};
use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------- helpers

fn maglev(members: Vec<Member>, table_size: u32, seed: u64) -> Ring {
    Ring::build(members, Algorithm::Maglev { table_size }, seed).expect("maglev builds")
}

fn rendezvous(members: Vec<Member>, seed: u64) -> Ring {
    Ring::build(members, Algorithm::Rendezvous, seed).expect("rendezvous builds")
}

fn any_ring(members: Vec<Member>, algorithm: Algorithm, seed: u64) -> Ring {
    Ring::build(members, algorithm, seed).expect("ring builds")
}

/// Slots per member of a Maglev ring, by member index.
fn slot_counts(ring: &Ring) -> Vec<usize> {
    let Table::Maglev(m) = &ring.table else {
        panic!("not a maglev ring")
    };
    let mut counts = vec![0; ring.members().len()];
    for &o in m.slots() {
        counts[o as usize] += 1;
    }
    counts
}

/// Fraction of `samples` random hashes whose owner (by name) differs.
fn sampled_moved(a: &Ring, b: &Ring, seed: u64, samples: u32) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let moved = (0..samples)
        .map(|_| rng.u64(..))
        .filter(|&h| owner_name(a, h) != owner_name(b, h))
        .count();
    moved as f64 / f64::from(samples)
}

fn names(ring: &Ring, order: impl Iterator<Item = usize>) -> Vec<&str> {
    order.map(|i| &*ring.members()[i].name).collect()
}

/// Small primes, so that debug-mode property tests stay fast.
const PRIMES: [u32; 4] = [257, 1009, 2053, 4099];

fn algorithms() -> [Algorithm; 3] {
    [
        Algorithm::Ring { vnodes: 160 },
        Algorithm::Maglev {
            table_size: DEFAULT_TABLE_SIZE,
        },
        Algorithm::Rendezvous,
    ]
}

// ------------------------------------------------------------ unit tests

#[test]
fn algorithm_names() {
    let names: Vec<&str> = algorithms().iter().map(|a| a.name()).collect();
    assert_eq!(names, ["ring", "maglev", "rendezvous"]);
}

#[test]
fn primes() {
    let small: Vec<u64> = (0..40).filter(|&n| is_prime(n)).collect();
    assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
    assert!(is_prime(65537));
    assert!(!is_prime(65535));
    assert!(!is_prime(65539 * 3));
    assert_eq!(next_prime(65536), 65537);
    assert_eq!(next_prime(1000), 1009);
    assert_eq!(next_prime(0), 2);
    assert_eq!(next_prime(MAX_POINTS - 10), 16_777_213);
}

#[test]
fn bad_table_sizes_are_errors() {
    for size in [0, 1, 4, 65536, 1000] {
        let err = Ring::build(pool(3), Algorithm::Maglev { table_size: size }, 0).unwrap_err();
        assert_eq!(err, RingError::TableSize { size, members: 3 });
    }
    // A prime, but fewer slots than members.
    let err = Ring::build(pool(12), Algorithm::Maglev { table_size: 11 }, 0).unwrap_err();
    assert_eq!(
        err,
        RingError::TableSize {
            size: 11,
            members: 12
        }
    );
    let over = u32::try_from(next_prime(MAX_POINTS + 1)).unwrap();
    assert!(Ring::build(pool(3), Algorithm::Maglev { table_size: over }, 0).is_err());
    assert_eq!(
        Ring::build(Vec::new(), Algorithm::Maglev { table_size: 11 }, 0).unwrap_err(),
        RingError::Empty
    );
    assert_eq!(
        Ring::build(Vec::new(), Algorithm::Rendezvous, 0).unwrap_err(),
        RingError::Empty
    );
}

#[test]
fn duplicate_names_are_errors_for_every_algorithm() {
    for a in algorithms() {
        let err = Ring::build(vec![member("x", 1), member("x", 2)], a, 0).unwrap_err();
        assert_eq!(err, RingError::DuplicateName("x".into()), "{}", a.name());
    }
}

#[test]
fn single_member_owns_everything_with_every_algorithm() {
    for a in algorithms() {
        let r = any_ring(vec![member("only", 3)], a, 42);
        assert_eq!(r.shares(), vec![1.0], "{}", a.name());
        for h in probes(&[&r], 1, 1_000) {
            assert_eq!(r.owner(h), 0);
            assert_eq!(r.preference(h).collect::<Vec<_>>(), vec![0]);
        }
    }
}

#[test]
fn fingerprint_names_the_algorithm_and_its_parameter() {
    let members = || vec![member("a", 1), member("b", 2), member("c", 1)];
    let fps = [
        ring_fp(members(), Algorithm::Ring { vnodes: 160 }),
        ring_fp(members(), Algorithm::Maglev { table_size: 65537 }),
        ring_fp(members(), Algorithm::Maglev { table_size: 1009 }),
        ring_fp(members(), Algorithm::Rendezvous),
    ];
    for (i, a) in fps.iter().enumerate() {
        for b in &fps[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Seed and weights count for the new algorithms too.
    let base = ring_fp(members(), Algorithm::Rendezvous);
    assert_ne!(
        base,
        rendezvous(members(), 1).fingerprint(),
        "seed changes rendezvous"
    );
    let mut reweighted = members();
    reweighted[0].weight = NonZeroU32::new(5).unwrap();
    assert_ne!(base, ring_fp(reweighted, Algorithm::Rendezvous));
}

fn ring_fp(members: Vec<Member>, a: Algorithm) -> u64 {
    any_ring(members, a, 0).fingerprint()
}

#[test]
fn member_order_does_not_change_maglev_or_rendezvous() {
    let members = vec![
        member("alpha", 1),
        member("bravo", 2),
        member("charlie", 1),
        member("delta", 3),
        member("echo", 1),
    ];
    for a in [
        Algorithm::Maglev { table_size: 1009 },
        Algorithm::Rendezvous,
    ] {
        let base = any_ring(members.clone(), a, 9);
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let other = any_ring(shuffled, a, 9);
        assert_eq!(base.fingerprint(), other.fingerprint());
        assert_eq!(base.moved_fraction(&other), 0.0, "{}", a.name());
        for i in 0..5_000 {
            let h = base.hash(format!("key-{i}").as_bytes());
            assert_eq!(
                names(&base, base.preference(h)),
                names(&other, other.preference(h)),
                "{} key-{i}",
                a.name()
            );
        }
    }
}

#[test]
fn moved_fraction_is_zero_against_itself_for_every_algorithm() {
    for a in algorithms() {
        let r = any_ring(pool(7), a, 5);
        assert_eq!(r.moved_fraction(&r), 0.0, "{}", a.name());
        assert_eq!(r.remap(&r).lost, vec![0.0; 7]);
    }
}

// ---------------------------------------------------------- golden vectors

/// Pins Maglev's permutation and fill order and rendezvous' scores: if this
/// fails, every deployed pool would re-route its keys on upgrade.
#[test]
fn golden_owners_maglev_and_rendezvous() {
    let three = || vec![member("b1", 1), member("b2", 1), member("b3", 1)];
    let keys = ["alice", "bob", "carol", "dave", "erin"];
    let owners = |r: &Ring| -> Vec<String> {
        keys.iter()
            .map(|k| owner_name(r, r.hash(k.as_bytes())).to_string())
            .collect()
    };
    let m = maglev(three(), DEFAULT_TABLE_SIZE, 0);
    assert_eq!(owners(&m), ["b2", "b3", "b1", "b1", "b1"]);
    assert_eq!(&slot_counts(&m), &[21846, 21846, 21845]);
    let r = rendezvous(three(), 0);
    assert_eq!(owners(&r), ["b1", "b2", "b3", "b1", "b3"]);
    // The weighted scoring path (unequal weights) is pinned too.
    let w = rendezvous(vec![member("b1", 1), member("b2", 2), member("b3", 3)], 0);
    assert_eq!(owners(&w), ["b3", "b2", "b3", "b1", "b3"]);
}

// ------------------------------------------------- sampling cross-checks

#[test]
fn exact_shares_agree_with_sampling() {
    let weighted = vec![
        member("w1", 1),
        member("w2", 2),
        member("w3", 1),
        member("w4", 4),
    ];
    for a in [
        Algorithm::Maglev { table_size: 65537 },
        Algorithm::Maglev { table_size: 1009 },
        Algorithm::Rendezvous,
    ] {
        for members in [pool(3), pool(10), weighted.clone()] {
            let r = any_ring(members, a, 3);
            let shares = r.shares();
            let n = shares.len();
            assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            let mut counts = vec![0u32; n];
            let mut rng = fastrand::Rng::with_seed(n as u64);
            const SAMPLES: u32 = 200_000;
            for _ in 0..SAMPLES {
                counts[r.owner(rng.u64(..))] += 1;
            }
            for (i, (&c, &s)) in counts.iter().zip(&shares).enumerate() {
                let empirical = f64::from(c) / f64::from(SAMPLES);
                assert!(
                    (empirical - s).abs() < 0.006,
                    "{} n={n} member {i}: sampled {empirical} vs exact {s}",
                    a.name()
                );
            }
        }
    }
}

#[test]
fn maglev_shares_follow_weights_closely() {
    let members = vec![
        member("a", 1),
        member("b", 2),
        member("c", 3),
        member("d", 10),
    ];
    let r = maglev(members, 65537, 0);
    let total = 16.0;
    for (m, s) in r.members().iter().zip(r.shares()) {
        let ideal = f64::from(m.weight.get()) / total;
        assert!(
            (s / ideal - 1.0).abs() < 0.001,
            "{}: {s} vs {ideal}",
            m.name
        );
    }
}

/// The exact remap is cross-checked by sampling for every pair of
/// algorithms, including changes of weight, seed and table size.
#[test]
fn remap_agrees_with_sampling_across_algorithms() {
    let a = vec![
        member("a", 1),
        member("b", 2),
        member("c", 3),
        member("d", 1),
    ];
    let b = vec![
        member("a", 3),
        member("b", 2),
        member("e", 1),
        member("d", 1),
    ];
    let configs = [
        Algorithm::Ring { vnodes: 160 },
        Algorithm::Maglev { table_size: 1009 },
        Algorithm::Maglev { table_size: 65537 },
        Algorithm::Rendezvous,
    ];
    let mut case = 0;
    for x in configs {
        for y in configs {
            for (ma, mb, sb) in [(&a, &b, 0), (&a, &a, 1), (&a, &pool(5), 0)] {
                case += 1;
                let old = any_ring(ma.clone(), x, 0);
                let new = any_ring(mb.clone(), y, sb);
                let remap = old.remap(&new);
                let sampled = sampled_moved(&old, &new, case, 100_000);
                assert!(
                    (remap.moved - sampled).abs() < 0.01,
                    "{} -> {} case {case}: exact {} vs sampled {sampled}",
                    x.name(),
                    y.name(),
                    remap.moved
                );
                let lost: f64 = remap.lost.iter().sum();
                let gained: f64 = remap.gained.iter().sum();
                assert!((lost - remap.moved).abs() < 1e-9, "case {case}");
                assert!((gained - remap.moved).abs() < 1e-9, "case {case}");
                let back = new.moved_fraction(&old);
                assert!(
                    (back - remap.moved).abs() < 1e-9,
                    "case {case}: not symmetric"
                );
            }
        }
    }
}

/// The closed form of rendezvous' remap when weights change, member by
/// member, against sampling.
#[test]
fn rendezvous_remap_per_member_agrees_with_sampling() {
    let old = rendezvous(
        vec![
            member("a", 1),
            member("b", 2),
            member("c", 3),
            member("d", 1),
        ],
        0,
    );
    let new = rendezvous(
        vec![
            member("a", 3),
            member("b", 2),
            member("e", 2),
            member("d", 1),
        ],
        0,
    );
    let remap = old.remap(&new);
    let mut lost = [0u32; 4];
    let mut gained = [0u32; 4];
    let mut rng = fastrand::Rng::with_seed(77);
    const SAMPLES: u32 = 300_000;
    for _ in 0..SAMPLES {
        let h = rng.u64(..);
        let (from, to) = (old.owner(h), new.owner(h));
        if old.members()[from].name != new.members()[to].name {
            lost[from] += 1;
            gained[to] += 1;
        }
    }
    let f = |c: u32| f64::from(c) / f64::from(SAMPLES);
    for i in 0..4 {
        assert!((f(lost[i]) - remap.lost[i]).abs() < 0.005, "lost {i}");
        assert!((f(gained[i]) - remap.gained[i]).abs() < 0.005, "gained {i}");
    }
}

// ---------------------------------------------------------------- excluding

#[test]
fn excluding_everyone_is_none_and_nobody_changes_nothing() {
    for a in algorithms() {
        let r = any_ring(pool(4), a, 0);
        assert!(r.excluding(&[true; 4]).is_none(), "{}", a.name());
        let same = r.excluding(&[false; 4]).expect("someone is left");
        assert_eq!(same.fingerprint(), r.fingerprint());
        assert_eq!(same.moved_fraction(&r), 0.0);
        // Short masks leave the rest in; long ones are harmless.
        let one = r.excluding(&[true]).expect("three are left");
        assert!(one.is_excluded(0) && !one.is_excluded(1));
        assert!(r.excluding(&[false; 9]).is_some());
        // Exclusions add up.
        assert!(one.excluding(&[false, true, true, true]).is_none());
    }
}

#[test]
fn excluded_members_own_nothing_and_keep_their_index() {
    for a in algorithms() {
        let r = any_ring(pool(5), a, 1);
        let ex = r.excluding(&[false, true, false, true, false]).unwrap();
        assert_eq!(ex.members(), r.members());
        assert_ne!(ex.fingerprint(), r.fingerprint());
        let shares = ex.shares();
        assert_eq!((shares[1], shares[3]), (0.0, 0.0), "{}", a.name());
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for h in probes(&[], 3, 2_000) {
            let pref: Vec<usize> = ex.preference(h).collect();
            assert_eq!(pref.len(), 3, "{}", a.name());
            assert_eq!(pref[0], ex.owner(h));
            assert!(!pref.contains(&1) && !pref.contains(&3));
        }
        // The same routing as a pool without them, by name.
        let fewer = any_ring(without(&without(&pool(5), "b1"), "b3"), a, 1);
        assert_eq!(ex.moved_fraction(&fewer), 0.0, "{}", a.name());
        for h in probes(&[], 4, 2_000) {
            assert_eq!(owner_name(&ex, h), owner_name(&fewer, h), "{}", a.name());
        }
    }
}

/// Maglev rebuilds the table without the excluded members: their keys go to
/// members that stayed, and some keys also move between members that
/// stayed. Measured with M = 65537 and one member excluded: of 10 members,
/// 10.00% of the keyspace leaves the excluded one and 0.25% moves between
/// members that stayed; of 100, 1.00% and 0.52%.
#[test]
fn maglev_excluding_moves_excluded_keys_to_the_others() {
    let r = maglev(pool(10), 65537, 0);
    let ex = r.excluding(&[false, false, true]).unwrap();
    let remap = r.remap(&ex);
    let share = r.shares()[2];
    assert!(
        (remap.lost[2] - share).abs() < 1e-12,
        "every key of b2 moves"
    );
    let collateral = remap.moved - share;
    assert!(
        collateral > 0.0 && collateral < 0.03,
        "collateral {collateral}"
    );
    for h in probes(&[&r], 5, 20_000) {
        assert_ne!(ex.owner(h), 2);
    }
}

// --------------------------------------------------------- property tests

fn table_size_strategy() -> impl Strategy<Value = u32> {
    prop::sample::select(PRIMES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn maglev_and_rendezvous_are_deterministic(
        members in members_strategy(1, 12),
        table_size in table_size_strategy(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        for a in [Algorithm::Maglev { table_size }, Algorithm::Rendezvous] {
            let x = any_ring(members.clone(), a, seed);
            let y = any_ring(members.clone(), a, seed);
            let mut reversed = members.clone();
            reversed.reverse();
            let z = any_ring(reversed, a, seed);
            prop_assert_eq!(x.fingerprint(), y.fingerprint());
            prop_assert_eq!(x.fingerprint(), z.fingerprint());
            for h in probes(&[&x], probe_seed, 300) {
                prop_assert_eq!(x.owner(h), y.owner(h));
                prop_assert_eq!(owner_name(&x, h), owner_name(&z, h));
            }
        }
    }

    #[test]
    fn maglev_and_rendezvous_shares_sum_to_one_and_follow_weights(
        members in members_strategy(1, 10),
        table_size in table_size_strategy(),
        seed in any::<u64>(),
    ) {
        let total: u32 = members.iter().map(|m| m.weight.get()).sum();
        for a in [Algorithm::Maglev { table_size }, Algorithm::Rendezvous] {
            let r = any_ring(members.clone(), a, seed);
            let shares = r.shares();
            let sum: f64 = shares.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "{} sum {}", a.name(), sum);
            for (m, s) in r.members().iter().zip(&shares) {
                let ideal = f64::from(m.weight.get()) / f64::from(total);
                // Maglev: within one round of turns (the member's weight in
                // slots) of the ideal, plus the slots' unequal hash spans.
                let slack = match a {
                    Algorithm::Maglev { table_size } => {
                        f64::from(m.weight.get() + 1) / f64::from(table_size)
                    }
                    _ => 1e-12,
                };
                prop_assert!(
                    (s - ideal).abs() <= slack,
                    "{}: {} (weight {}) has {} vs ideal {}", a.name(), m.name, m.weight, s, ideal
                );
            }
        }
    }

    /// Slots per unit of weight differ by at most one between members; with
    /// equal weights, slot counts differ by at most one.
    #[test]
    fn maglev_slot_counts_differ_by_at_most_one(
        members in members_strategy(1, 12),
        n in 1usize..=40,
        weight in 1u32..=5,
        table_size in table_size_strategy(),
        seed in any::<u64>(),
    ) {
        let equal: Vec<Member> = (0..n).map(|i| member(&format!("m{i}"), weight)).collect();
        let counts = slot_counts(&maglev(equal, table_size, seed));
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "equal weights {}: {:?}", weight, counts);

        let r = maglev(members, table_size, seed);
        let per_weight: Vec<f64> = slot_counts(&r)
            .iter()
            .zip(r.members())
            .map(|(&c, m)| c as f64 / f64::from(m.weight.get()))
            .collect();
        let lo = per_weight.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = per_weight.iter().cloned().fold(0.0, f64::max);
        prop_assert!(hi - lo <= 1.0 + 1e-12, "{:?}", per_weight);
    }

    #[test]
    fn rendezvous_adding_a_member_only_moves_keys_to_it(
        all in members_strategy(2, 13),
        which in any::<Index>(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let added = all[which.index(all.len())].name.clone();
        let old = rendezvous(without(&all, &added), seed);
        let new = rendezvous(all, seed);
        check_add(&old, &new, &added, &probes(&[], probe_seed, 1_000))?;
    }

    /// Also checks failover consistency: a removed member's keys go where
    /// the old preference order said they would.
    #[test]
    fn rendezvous_removing_a_member_only_moves_its_keys(
        all in members_strategy(2, 12),
        which in any::<Index>(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let removed = all[which.index(all.len())].name.clone();
        let old = rendezvous(all.clone(), seed);
        let new = rendezvous(without(&all, &removed), seed);
        let hashes = probes(&[], probe_seed, 1_000);
        check_remove(&old, &new, &removed, &hashes)?;
        for &h in &hashes {
            let fallback = old
                .preference(h)
                .map(|i| &*old.members()[i].name)
                .find(|&name| name != &*removed);
            prop_assert_eq!(Some(owner_name(&new, h)), fallback, "hash {:#x}", h);
        }
    }

    #[test]
    fn maglev_and_rendezvous_preference_lists_each_member_once_owner_first(
        members in members_strategy(1, 12),
        table_size in table_size_strategy(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        for a in [Algorithm::Maglev { table_size }, Algorithm::Rendezvous] {
            let r = any_ring(members.clone(), a, seed);
            let n = r.members().len();
            for h in probes(&[], probe_seed, 300) {
                prop_assert_eq!(r.preference(h).next(), Some(r.owner(h)));
                let mut pref: Vec<usize> = r.preference(h).collect();
                pref.sort_unstable();
                prop_assert_eq!(pref, (0..n).collect::<Vec<_>>(), "{} hash {:#x}", a.name(), h);
            }
        }
    }

    /// Ring and rendezvous: excluding members routes every key to the first
    /// member of its preference order that is not excluded, and the
    /// excluded ring's preference order is the full one without them.
    #[test]
    fn excluding_follows_the_preference_order(
        members in members_strategy(2, 12),
        mask in prop::collection::vec(any::<bool>(), 12),
        vnodes in 1u32..=64,
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let mask = &mask[..members.len()];
        prop_assume!(mask.iter().any(|&e| !e));
        for a in [Algorithm::Ring { vnodes }, Algorithm::Rendezvous] {
            let r = any_ring(members.clone(), a, seed);
            let ex = r.excluding(mask).expect("someone is left");
            for h in probes(&[&r], probe_seed, 300) {
                let kept: Vec<usize> = r.preference(h).filter(|&i| !mask[i]).collect();
                prop_assert_eq!(ex.owner(h), kept[0], "{} hash {:#x}", a.name(), h);
                prop_assert_eq!(ex.preference(h).collect::<Vec<_>>(), kept);
            }
        }
    }

    /// Maglev: excluding members sends each of their keys to a member that
    /// stayed (other keys may move too: see the unit test above).
    #[test]
    fn maglev_excluding_routes_around_the_excluded(
        members in members_strategy(2, 12),
        mask in prop::collection::vec(any::<bool>(), 12),
        table_size in table_size_strategy(),
        seed in any::<u64>(),
        probe_seed in any::<u64>(),
    ) {
        let mask = &mask[..members.len()];
        prop_assume!(mask.iter().any(|&e| !e));
        let r = maglev(members, table_size, seed);
        let ex = r.excluding(mask).expect("someone is left");
        for h in probes(&[], probe_seed, 1_000) {
            prop_assert!(!mask[ex.owner(h)], "hash {:#x} still goes to an excluded member", h);
        }
        let remap = r.remap(&ex);
        for (i, &e) in mask.iter().enumerate() {
            if e {
                prop_assert!((remap.lost[i] - r.shares()[i]).abs() < 1e-12);
            }
        }
    }
}

/// The build's shortcut for the last free slots fills the table exactly as
/// probing to the end does.
#[test]
fn maglev_endgame_matches_plain_probing() {
    let weighted = vec![member("a", 1), member("b", 3), member("c", 2)];
    for (members, m) in [
        (pool(3), 65537),
        (pool(100), 65537),
        (pool(1000), 65537),
        (weighted.clone(), 1009),
        (pool(40), 401),
        (pool(7), 7),
    ] {
        let excluded = [false, true];
        for excluded in [&[][..], &excluded[..]] {
            let plain = Maglev::build_with_endgame(&members, m, 3, excluded, 0).unwrap();
            // Whole-table endgames only for small tables: that path is
            // quadratic in what is left.
            let endgames = if m < 5000 {
                vec![1, m.isqrt() / 2, m / 3, m]
            } else {
                vec![1, m.isqrt() / 2, 2000]
            };
            for endgame in endgames {
                let fast = Maglev::build_with_endgame(&members, m, 3, excluded, endgame).unwrap();
                assert_eq!(plain.slots(), fast.slots(), "m={m} endgame={endgame}");
            }
        }
    }
}

/// Points of a Maglev ring are its slots' run ends; checks that helper the
/// probes rely on.
#[test]
fn maglev_run_ends_bound_constant_owners() {
    let r = maglev(pool(3), 1009, 0);
    let ends = points(&r);
    assert_eq!(*ends.last().unwrap(), u64::MAX);
    let mut prev = ends[ends.len() - 1];
    for &e in &ends {
        let start = prev.wrapping_add(1);
        assert_eq!(r.owner(start), r.owner(e), "run ending at {e:#x}");
        prev = e;
    }
    for w in ends.windows(2) {
        assert_ne!(r.owner(w[0]), r.owner(w[1]));
    }
}
