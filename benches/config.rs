//! Config benchmarks: parsing and validating a large pool (what `stickylb
//! check` and every reload do before building the ring), and the ring
//! built from it.
//!
//! `cargo bench --bench config` (add `-- --quick` for a fast smoke run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use stickylb::config::from_toml_str;
use stickylb::routing::snapshot::ring_of;

/// A config text with `n` backends, each at its own address.
fn pool_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 48);
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        s.push_str(&format!(
            "[[backend]]\nname=\"b{i}\"\naddress=\"10.{a}.{b}.1:80\"\n"
        ));
    }
    s
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_check");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10);
    for n in [10_000usize, 100_000] {
        let text = pool_text(n);
        group.bench_with_input(BenchmarkId::new("parse_validate", n), &text, |b, text| {
            b.iter(|| from_toml_str(black_box(text), "bench.toml").expect("valid"))
        });
        let config = from_toml_str(&text, "bench.toml").expect("valid");
        group.bench_with_input(BenchmarkId::new("ring_build", n), &config, |b, config| {
            b.iter(|| ring_of(black_box(config)).expect("ring"))
        });
    }
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
