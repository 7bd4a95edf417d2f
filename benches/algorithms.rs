//! The three algorithms side by side with pingora-ketama, in one run: one
//! group per algorithm, each measuring for N = 3, 10, 100, 1000 backends
//!
//! - `lookup/N`: owner of 1024 precomputed key hashes (throughput per key);
//! - `lookup_key/N`: the same from 1024 key strings, hashing included;
//! - `build/N`: building the table from the member list;
//! - `preference/N`: the first 3 distinct members of the preference order.
//!
//! pingora-ketama (`Continuum`, 160 points per weight, crc32) takes bytes,
//! not a hash, so its `lookup` hashes the 8 bytes of each precomputed hash
//! with crc32 before the binary search; `lookup_key` compares both ends on
//! equal terms. `ring_vnodes_640/lookup/100` is the ring at the vnode count
//! that brings its balance under 1.10 at N = 100 (see `examples/quality.rs`).
//!
//! `cargo bench --bench algorithms` (about 5 minutes).

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use pingora_ketama::{Bucket, Continuum};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use stickylb::ring::{Algorithm, Member, Ring};

const SIZES: [usize; 4] = [3, 10, 100, 1000];
const KEYS: usize = 1024;
/// The vnode count that brings the ring's max/mean under 1.10 at N = 100.
const BALANCED_VNODES: u32 = 640;

fn members(n: usize) -> Vec<Member> {
    Member::numbered(n)
}

fn build(n: usize, algorithm: Algorithm) -> Ring {
    Ring::build(members(n), algorithm, 0).expect("ring builds")
}

fn buckets(n: usize) -> Vec<Bucket> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8);
            Bucket::new(SocketAddr::from((ip, 8080)), 1)
        })
        .collect()
}

/// Fixed pseudo-random hashes, so every run looks up the same keys.
fn hashes() -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    (0..KEYS).map(|_| rng.u64(..)).collect()
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("client-{i}")).collect()
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group
}

/// lookup, lookup_key, build and preference of one of our algorithms.
fn ours(c: &mut Criterion, group: &str, algorithm: Algorithm) {
    let (hashes, keys) = (hashes(), keys());
    let mut g = configure(c, group);
    for n in SIZES {
        let ring = build(n, algorithm);
        g.throughput(Throughput::Elements(KEYS as u64));
        g.bench_function(format!("lookup/{n}"), |b| {
            b.iter(|| {
                for &h in &hashes {
                    black_box(ring.owner(black_box(h)));
                }
            })
        });
        g.bench_function(format!("lookup_key/{n}"), |b| {
            b.iter(|| {
                for key in &keys {
                    black_box(ring.owner(ring.hash(black_box(key.as_bytes()))));
                }
            })
        });
        g.bench_function(format!("preference/{n}"), |b| {
            b.iter(|| {
                for &h in &hashes {
                    for m in ring.preference(black_box(h)).take(3) {
                        black_box(m);
                    }
                }
            })
        });
        g.throughput(Throughput::Elements(1));
        if n >= 100 {
            g.sample_size(20);
        }
        g.bench_function(format!("build/{n}"), |b| {
            b.iter_batched(
                || members(n),
                |m| Ring::build(m, algorithm, 0).expect("ring builds"),
                BatchSize::SmallInput,
            )
        });
        g.sample_size(100);
    }
    g.finish();
}

fn ring(c: &mut Criterion) {
    ours(c, "ring", Algorithm::Ring { vnodes: 160 });
}

fn maglev(c: &mut Criterion) {
    ours(c, "maglev", Algorithm::Maglev { table_size: 65537 });
}

fn rendezvous(c: &mut Criterion) {
    ours(c, "rendezvous", Algorithm::Rendezvous);
}

fn ring_balanced(c: &mut Criterion) {
    let hashes = hashes();
    let ring = build(
        100,
        Algorithm::Ring {
            vnodes: BALANCED_VNODES,
        },
    );
    let mut g = configure(c, &format!("ring_vnodes_{BALANCED_VNODES}"));
    g.throughput(Throughput::Elements(KEYS as u64));
    g.bench_function("lookup/100", |b| {
        b.iter(|| {
            for &h in &hashes {
                black_box(ring.owner(black_box(h)));
            }
        })
    });
    g.finish();
}

fn pingora(c: &mut Criterion) {
    let hashes: Vec<[u8; 8]> = hashes().iter().map(|h| h.to_le_bytes()).collect();
    let keys = keys();
    let mut g = configure(c, "pingora_ketama");
    for n in SIZES {
        let buckets = buckets(n);
        let continuum = Continuum::new(&buckets);
        let lookup = |key: &[u8]| {
            let mut idx = continuum.node_idx(key);
            continuum.get_addr(&mut idx).copied()
        };
        g.throughput(Throughput::Elements(KEYS as u64));
        g.bench_function(format!("lookup/{n}"), |b| {
            b.iter(|| {
                for h in &hashes {
                    black_box(lookup(black_box(h)));
                }
            })
        });
        g.bench_function(format!("lookup_key/{n}"), |b| {
            b.iter(|| {
                for key in &keys {
                    black_box(lookup(black_box(key.as_bytes())));
                }
            })
        });
        g.bench_function(format!("preference/{n}"), |b| {
            b.iter(|| {
                for h in &hashes {
                    let mut seen: [Option<&SocketAddr>; 3] = [None; 3];
                    let mut found = 0;
                    for addr in continuum.node_iter(black_box(h)).take(continuum_len(n)) {
                        if !seen[..found].contains(&Some(addr)) {
                            seen[found] = Some(addr);
                            found += 1;
                            if found == 3.min(n) {
                                break;
                            }
                        }
                    }
                    black_box(seen);
                }
            })
        });
        g.throughput(Throughput::Elements(1));
        if n >= 100 {
            g.sample_size(20);
        }
        g.bench_function(format!("build/{n}"), |b| {
            b.iter(|| Continuum::new(black_box(&buckets)))
        });
        g.sample_size(100);
    }
    g.finish();
}

/// Points on a pingora ring of `n` weight-1 buckets: the walk's bound.
fn continuum_len(n: usize) -> usize {
    n * pingora_ketama::DEFAULT_POINT_MULTIPLE as usize
}

criterion_group!(benches, ring, maglev, rendezvous, pingora, ring_balanced);
criterion_main!(benches);
