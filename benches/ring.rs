//! Ring benchmarks: lookup (per key), hash + lookup, build, preference walk
//! and the exact moved-fraction computation.
//!
//! `cargo bench --bench ring` (add `-- --quick` for a fast smoke run).

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use std::hint::black_box;
use std::time::Duration;
use stickylb::ring::{Algorithm, Member, Ring};

const SIZES: [usize; 4] = [3, 10, 100, 1000];
const KEYS: usize = 1024;
const VNODES: u32 = 160;

fn members(n: usize) -> Vec<Member> {
    Member::numbered(n)
}

fn build(n: usize) -> Ring {
    Ring::build(members(n), Algorithm::Ring { vnodes: VNODES }, 0).expect("ring builds")
}

/// Fixed pseudo-random hashes, so every run looks up the same keys.
fn hashes() -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    (0..KEYS).map(|_| rng.u64(..)).collect()
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group
}

fn lookup(c: &mut Criterion) {
    let hashes = hashes();
    let mut group = configure(c, "ring_lookup");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in SIZES {
        let ring = build(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            b.iter(|| {
                for &h in &hashes {
                    black_box(ring.owner(black_box(h)));
                }
            })
        });
    }
    group.finish();
}

fn lookup_key(c: &mut Criterion) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("client-{i}")).collect();
    let mut group = configure(c, "ring_lookup_key");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in SIZES {
        let ring = build(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            b.iter(|| {
                for key in &keys {
                    let h = ring.hash(black_box(key.as_bytes()));
                    black_box(ring.owner(h));
                }
            })
        });
    }
    group.finish();
}

fn build_time(c: &mut Criterion) {
    let mut group = configure(c, "ring_build");
    for n in SIZES {
        if n >= 1000 {
            group.sample_size(20);
        }
        group.throughput(Throughput::Elements(n as u64 * u64::from(VNODES)));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || members(n),
                |m| Ring::build(m, Algorithm::Ring { vnodes: VNODES }, 0).expect("ring builds"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn preference(c: &mut Criterion) {
    let hashes = hashes();
    let mut group = configure(c, "ring_preference");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in SIZES {
        let ring = build(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            b.iter(|| {
                for &h in &hashes {
                    for m in ring.preference(black_box(h)).take(3) {
                        black_box(m);
                    }
                }
            })
        });
    }
    group.finish();
}

fn moved_fraction(c: &mut Criterion) {
    let old = build(100);
    let new = build(101);
    let mut group = configure(c, "ring_moved_fraction");
    group.bench_function("100_to_101", |b| {
        b.iter(|| black_box(black_box(&old).moved_fraction(black_box(&new))))
    });
    group.finish();
}

criterion_group!(
    benches,
    lookup,
    lookup_key,
    build_time,
    preference,
    moved_fraction
);
criterion_main!(benches);
