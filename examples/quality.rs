//! Routing quality of the three algorithms, side by side, over 1M keys:
//! balance (keys per backend against the mean) and disruption (keys moved
//! when one backend joins or leaves, against the ideal, and keys moved
//! between two backends that both stayed). Then the ring's vnode count that
//! brings its balance under 1.10 at N = 100, and what that costs in memory.
//!
//! `cargo run --release --example quality` (about a minute; rendezvous at
//! N = 1000 scores a billion draws per pass).

use stickylb::ring::{Algorithm, Member, Ring};

const KEYS: usize = 1_000_000;
const SIZES: [usize; 4] = [3, 10, 100, 1000];
const SEED: u64 = 0;

fn members(n: usize) -> Vec<Member> {
    Member::numbered(n)
}

fn build(n: usize, algorithm: Algorithm) -> Ring {
    Ring::build(members(n), algorithm, SEED).expect("ring builds")
}

/// The owner of every key, by member index.
fn owners(ring: &Ring, hashes: &[u64]) -> Vec<u32> {
    hashes.iter().map(|&h| ring.owner(h) as u32).collect()
}

/// Keys per backend against the mean: max, min, standard deviation (as a
/// fraction of the mean).
struct Balance {
    max: f64,
    min: f64,
    stdev: f64,
}

fn balance(owners: &[u32], n: usize) -> Balance {
    let mut counts = vec![0u64; n];
    for &o in owners {
        counts[o as usize] += 1;
    }
    let mean = owners.len() as f64 / n as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    Balance {
        max: *counts.iter().max().expect("n > 0") as f64 / mean,
        min: *counts.iter().min().expect("n > 0") as f64 / mean,
        stdev: var.sqrt() / mean,
    }
}

/// The same from exact keyspace shares.
fn exact_max(ring: &Ring) -> f64 {
    let shares = ring.shares();
    let mean = 1.0 / shares.len() as f64;
    shares.iter().cloned().fold(0.0, f64::max) / mean
}

/// Keys whose owner changed between `before` and `after` (member indices
/// agree for every member in both, since the change is at the end of the
/// list), how many of them involve `changed` (the member that joined or
/// left), and how many keys `changed` holds (after joining, before leaving).
struct Moves {
    moved: usize,
    collateral: usize,
    changed_keys: usize,
}

fn moves(before: &[u32], after: &[u32], changed: u32, joined: bool) -> Moves {
    let mut m = Moves {
        moved: 0,
        collateral: 0,
        changed_keys: 0,
    };
    for (&b, &a) in before.iter().zip(after) {
        let holder = if joined { a } else { b };
        if holder == changed {
            m.changed_keys += 1;
        }
        if a != b {
            m.moved += 1;
            if holder != changed {
                m.collateral += 1;
            }
        }
    }
    m
}

fn pct(x: usize) -> f64 {
    100.0 * x as f64 / KEYS as f64
}

fn main() {
    let hashes: Vec<u64> = (0..KEYS)
        .map(|i| stickylb::ring::hash_key(format!("key-{i}").as_bytes(), SEED))
        .collect();
    let algorithms = [
        ("ring (160 vnodes)", Algorithm::Ring { vnodes: 160 }),
        ("ring (640 vnodes)", Algorithm::Ring { vnodes: 640 }),
        (
            "maglev (M = 65537)",
            Algorithm::Maglev { table_size: 65537 },
        ),
        (
            "maglev (M = 100003)",
            Algorithm::Maglev { table_size: 100003 },
        ),
        ("rendezvous", Algorithm::Rendezvous),
    ];

    println!("Balance and disruption over {KEYS} keys (key-0 .. key-999999, seed {SEED}); backends backend-0 .. backend-(N-1), weight 1.");
    println!("Add: backend-N joins. Remove: backend-(N-1) leaves. Collateral: keys moved between two backends that both stayed.");
    println!("moved/changed: keys moved ÷ keys the joining (leaving) backend owns after (before); 1.000 is minimal disruption.");
    println!();
    println!("| algorithm | N | max/mean | min/mean | stdev % of mean | exact max/mean | add: moved % (ideal 1/(N+1)) | add ÷ ideal | remove: moved % (ideal 1/N) | remove ÷ ideal | moved/changed add, remove | collateral % add, remove |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, algorithm) in algorithms {
        for n in SIZES {
            let base = build(n, algorithm);
            let before = owners(&base, &hashes);
            let b = balance(&before, n);
            let exact = match algorithm {
                Algorithm::Rendezvous => "1.000 (model)".to_string(),
                _ => format!("{:.3}", exact_max(&base)),
            };

            let added = owners(&build(n + 1, algorithm), &hashes);
            let add = moves(&before, &added, n as u32, true);
            let removed = owners(&build(n - 1, algorithm), &hashes);
            let remove = moves(&before, &removed, n as u32 - 1, false);
            let (ideal_add, ideal_remove) = (1.0 / (n + 1) as f64, 1.0 / n as f64);
            println!(
                "| {label} | {n} | {:.3} | {:.3} | {:.2} | {exact} | {:.3} ({:.3}) | {:.3} | {:.3} ({:.3}) | {:.3} | {:.3}, {:.3} | {:.4}, {:.4} |",
                b.max,
                b.min,
                100.0 * b.stdev,
                pct(add.moved),
                100.0 * ideal_add,
                add.moved as f64 / KEYS as f64 / ideal_add,
                pct(remove.moved),
                100.0 * ideal_remove,
                remove.moved as f64 / KEYS as f64 / ideal_remove,
                add.moved as f64 / add.changed_keys.max(1) as f64,
                remove.moved as f64 / remove.changed_keys.max(1) as f64,
                pct(add.collateral),
                pct(remove.collateral),
            );
        }
    }

    println!();
    println!("Ring at N = 100: vnodes per backend against balance over {KEYS} keys.");
    println!();
    println!("| vnodes | max/mean | exact max/mean | memory |");
    println!("|---:|---:|---:|---:|");
    let mut vnodes = 160;
    loop {
        let ring = build(100, Algorithm::Ring { vnodes });
        let b = balance(&owners(&ring, &hashes), 100);
        println!(
            "| {vnodes} | {:.3} | {:.3} | {} KiB |",
            b.max,
            exact_max(&ring),
            ring.memory_bytes() / 1024
        );
        if b.max < 1.10 || vnodes >= 40_960 {
            println!();
            println!(
                "{vnodes} vnodes bring the ring under 1.10 at N = 100: {} bytes of tables ({} points); its lookup cost is `ring_vnodes_{vnodes}/lookup/100` in `cargo bench --bench algorithms`.",
                ring.memory_bytes(),
                100 * vnodes
            );
            break;
        }
        vnodes *= 2;
    }
    let maglev = build(100, Algorithm::Maglev { table_size: 65537 });
    println!(
        "For comparison at N = 100: ring with 160 vnodes {} bytes, maglev (M = 65537) {} bytes, rendezvous {} bytes.",
        build(100, Algorithm::Ring { vnodes: 160 }).memory_bytes(),
        maglev.memory_bytes(),
        build(100, Algorithm::Rendezvous).memory_bytes()
    );
}
