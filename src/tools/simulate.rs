//! `stickylb simulate`: what stickiness buys, measured as the cache hit
//! rate of the backends. A key workload (synthetic Zipf, or replayed from a
//! file or the proxy's JSON access log) is routed with each algorithm over
//! the config's pool, each backend keeping an LRU cache of `cache` keys;
//! round robin is the baseline. With a second pool, the pool changes
//! halfway exactly as a reload changes it (the same ring code, backends
//! matched by name, a backend that stays keeps its cache).
//!
//! Bounded loads need an in-flight load to bound. The model is a closed
//! system: `IN_FLIGHT` requests are in progress at any time, and each
//! request completes when `IN_FLIGHT` more have arrived after it (equal
//! service times, arrivals at a constant rate). A backend's load is how
//! many of the last `IN_FLIGHT` requests it took.

use crate::ring::{Algorithm, Member, Ring};
use crate::routing::snapshot::RAMP_STEPS;
use lru::LruCache;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::num::NonZeroUsize;

/// The most requests a synthetic workload holds (4 bytes each).
pub const MAX_REQUESTS: u64 = 500_000_000;
/// The most distinct keys of a synthetic workload (8 bytes each).
pub const MAX_KEYS: u64 = 100_000_000;
/// The most simulated seconds (`--requests` / `--rate`).
pub const MAX_SECONDS: u64 = 10_000_000;
/// The longest line of a replay file.
pub const MAX_LINE: usize = 64 * 1024;

/// Requests in progress at once in the bounded-loads model.
pub const IN_FLIGHT: usize = 64;
/// How close to the hit rate before the change a second's hit rate must
/// come to count as recovered: one percentage point (a second's rate
/// wanders about that much at 10,000 requests a second).
pub const RECOVERED_WITHIN: f64 = 0.01;
/// Points of the hit-rate series (one per this fraction of the requests).
pub const SERIES_POINTS: usize = 200;

/// A pool as the simulator needs it: the members, and the ring settings.
#[derive(Debug, Clone)]
pub struct Pool {
    pub members: Vec<Member>,
    pub algorithm: Algorithm,
    pub seed: u64,
    pub balance_factor: Option<f64>,
}

/// The requests to replay: indices into `hashes`, the keys' hash points.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub hashes: Vec<u64>,
    pub requests: Vec<u32>,
    /// Lines of a replayed file that carried no key (not replayed).
    pub skipped: usize,
}

impl Workload {
    /// `requests` keys drawn from `keys` keys by a Zipf law of exponent
    /// `s` (rank 1 the most requested), deterministic for `seed`. Key `i`
    /// is the text `key-i`, hashed with the pool's seed.
    pub fn zipf(
        keys: u64,
        s: f64,
        requests: u64,
        seed: u64,
        hash_seed: u64,
    ) -> Result<Self, String> {
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!("--zipf must be a number of at least 0, not {s}"));
        }
        if keys == 0 || keys > MAX_KEYS {
            return Err(format!("--keys must be from 1 to {MAX_KEYS}"));
        }
        let zipf = rand_distr::Zipf::new(keys as f64, s).map_err(|e| format!("--zipf {s}: {e}"))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let hashes = (1..=keys)
            .map(|i| key_hash(format!("key-{i}").as_bytes(), hash_seed))
            .collect();
        let requests = (0..requests)
            .map(|_| (rng.sample(zipf) as u64).clamp(1, keys) as u32 - 1)
            .collect();
        Ok(Workload {
            hashes,
            requests,
            skipped: 0,
        })
    }

    /// One request per line of `input`: the line is the key, or, for a
    /// line of the proxy's JSON access log, its `key_hash`.
    pub fn replay(mut input: impl BufRead, hash_seed: u64) -> Result<Self, String> {
        let mut index: HashMap<u64, u32> = HashMap::new();
        let mut w = Workload::default();
        let mut buf = Vec::new();
        for n in 0.. {
            buf.clear();
            let mut line_reader = <&mut _ as std::io::Read>::take(&mut input, MAX_LINE as u64 + 1);
            let read = line_reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            if read == 0 {
                break;
            }
            if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
                return Err(format!("line {}: longer than {MAX_LINE} bytes", n + 1));
            }
            if w.requests.len() as u64 >= MAX_REQUESTS {
                return Err(format!("more than {MAX_REQUESTS} lines"));
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']);
            let hash = if line.trim_start().starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
                match v["key_hash"].as_u64() {
                    Some(h) => h,
                    None => {
                        w.skipped += 1;
                        continue;
                    }
                }
            } else if line.is_empty() {
                w.skipped += 1;
                continue;
            } else {
                key_hash(line.as_bytes(), hash_seed)
            };
            let next = w.hashes.len() as u32;
            let i = *index.entry(hash).or_insert(next);
            if i == next {
                w.hashes.push(hash);
            }
            w.requests.push(i);
        }
        if w.requests.is_empty() {
            return Err("the replay file has no keys".into());
        }
        Ok(w)
    }
}

/// The hash point of a key, as the proxy computes it.
fn key_hash(key: &[u8], seed: u64) -> u64 {
    crate::ring::hash_key(key, seed)
}

/// One algorithm's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub name: String,
    pub hit_rate: f64,
    /// With a pool change (halfway): the steady hit rate just before it
    /// (the last 10% of the requests before the change) and at the end
    /// (the last 10% of all requests).
    pub hit_rate_before: Option<f64>,
    pub hit_rate_after: Option<f64>,
    /// With a pool change: the hit rate of the first 10% of the requests
    /// after it, while the caches of the moved keys warm up.
    pub dip: Option<f64>,
    /// The keyspace that changed owner (as `stickylb diff` says); none for
    /// round robin.
    pub moved_fraction: Option<f64>,
    /// With a pool change: the most misses in one second after it (the
    /// burst the origin sees), at `Ramp::rate` requests a second.
    pub peak_misses_per_second: Option<u64>,
    /// With a pool change: seconds until a whole second's hit rate is back
    /// within `RECOVERED_WITHIN` of `hit_rate_before` (none if never).
    pub recovery_seconds: Option<u64>,
    /// The hit rate of each `1 / SERIES_POINTS` of the requests.
    #[serde(skip)]
    pub series: Vec<f64>,
}

/// Time in the simulation: requests arrive at `rate` a second; with
/// `slow_start`, backends that join at the pool change ramp up over it
/// exactly as `routing.slow_start` ramps them (`RAMP_STEPS` steps).
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    pub rate: f64,
    pub slow_start: Option<std::time::Duration>,
}

/// How requests choose a backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    Hash(Algorithm),
    /// The hash algorithm with bounded loads (`balance_factor`).
    Bounded(Algorithm, f64),
    RoundRobin,
}

impl Policy {
    pub fn name(self) -> String {
        match self {
            Policy::Hash(a) => a.name().to_string(),
            Policy::Bounded(a, c) => format!("{} + bounded loads {c}", a.name()),
            Policy::RoundRobin => "round-robin".to_string(),
        }
    }
}

/// The policies `simulate` compares for `pool`: the three algorithms, the
/// configured one with bounded loads if `balance_factor` is set, and
/// round robin.
pub fn policies(pool: &Pool) -> Vec<Policy> {
    let mut v = vec![
        Policy::Hash(Algorithm::Ring {
            vnodes: vnodes(pool.algorithm),
        }),
        Policy::Hash(Algorithm::Maglev {
            table_size: table_size(pool.algorithm, pool.members.len()),
        }),
        Policy::Hash(Algorithm::Rendezvous),
    ];
    if let Some(c) = pool.balance_factor {
        v.push(Policy::Bounded(pool.algorithm, c));
    }
    v.push(Policy::RoundRobin);
    v
}

fn vnodes(a: Algorithm) -> u32 {
    match a {
        Algorithm::Ring { vnodes } => vnodes,
        _ => crate::config::DEFAULT_VNODES,
    }
}

fn table_size(a: Algorithm, members: usize) -> u32 {
    match a {
        Algorithm::Maglev { table_size } => table_size,
        _ => {
            let default = crate::ring::DEFAULT_TABLE_SIZE;
            let wanted = (100 * members as u64).max(u64::from(default));
            crate::ring::next_prime(wanted).min(crate::ring::MAX_POINTS) as u32
        }
    }
}

/// The algorithm a policy routes with, on `pool`'s members.
fn ring_for(policy: Policy, pool: &Pool) -> Result<Option<Ring>, String> {
    let algorithm = match policy {
        Policy::Hash(a) | Policy::Bounded(a, _) => a,
        Policy::RoundRobin => return Ok(None),
    };
    let algorithm = match algorithm {
        // The table size that suits the pool it routes now.
        Algorithm::Maglev { .. } if !matches!(pool.algorithm, Algorithm::Maglev { .. }) => {
            Algorithm::Maglev {
                table_size: table_size(pool.algorithm, pool.members.len()),
            }
        }
        a => a,
    };
    Ring::build(pool.members.clone(), algorithm, pool.seed)
        .map(Some)
        .map_err(|e| format!("{}: {e}", policy.name()))
}

/// One pool's routing state during a run.
struct Routing {
    ring: Option<Ring>,
    /// The owner of each key (member index), looked up once.
    owners: Vec<u32>,
    /// Member index -> cache index.
    cache_of: Vec<usize>,
}

/// Runs `workload` with `policy` over `before`, changing to `after` (if
/// any) halfway through; each backend caches `cache` keys.
pub fn run(
    policy: Policy,
    workload: &Workload,
    cache: usize,
    before: &Pool,
    after: Option<&Pool>,
    time: Ramp,
) -> Result<Outcome, String> {
    let cache = NonZeroUsize::new(cache).ok_or("--cache must be at least 1")?;
    let mut caches: Vec<LruCache<u32, ()>> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routing =
        |pool: &Pool, caches: &mut Vec<LruCache<u32, ()>>| -> Result<Routing, String> {
            let ring = ring_for(policy, pool)?;
            let owners = match &ring {
                Some(r) => workload.hashes.iter().map(|&h| r.owner(h) as u32).collect(),
                None => Vec::new(),
            };
            // A backend keeps its cache across the change by name.
            let cache_of = pool
                .members
                .iter()
                .map(|m| {
                    *names.entry(m.name.to_string()).or_insert_with(|| {
                        caches.push(LruCache::new(cache));
                        caches.len() - 1
                    })
                })
                .collect();
            Ok(Routing {
                ring,
                owners,
                cache_of,
            })
        };
    let mut now = routing(before, &mut caches)?;
    let next = after.map(|p| routing(p, &mut caches)).transpose()?;
    let moved_fraction = match (&now.ring, next.as_ref().and_then(|n| n.ring.as_ref())) {
        (Some(a), Some(b)) => Some(a.moved_fraction(b)),
        _ => None,
    };
    let mut next = next;
    // The backends that join at the change (slow start ramps them).
    let joining: Vec<usize> = after.map_or_else(Vec::new, |a| {
        a.members
            .iter()
            .enumerate()
            .filter(|(_, m)| !before.members.iter().any(|b| b.name == m.name))
            .map(|(i, _)| i)
            .collect()
    });
    let mut ramp_step: Option<u32> = None;
    let mut ramped: Option<Ring> = None;
    let mut misses_per_second: Vec<u64> = Vec::new();
    let mut hits_per_second: Vec<u64> = Vec::new();

    let total = workload.requests.len();
    let change_at = if after.is_some() {
        total / 2
    } else {
        usize::MAX
    };
    let tenth = (total / 10).max(1);
    let dip_end = change_at.saturating_add(tenth);
    let before_start = change_at.saturating_sub(tenth);
    let after_start = total.saturating_sub(tenth);
    let (mut hits_steady_before, mut hits_end) = (0u64, 0u64);
    let bucket = total.div_ceil(SERIES_POINTS).max(1);
    let mut series = Vec::with_capacity(SERIES_POINTS);
    let (mut hits, mut bucket_hits) = (0u64, 0u64);
    let mut hits_dip = 0u64;
    // The bounded-loads model: the backends of the last IN_FLIGHT requests.
    let mut recent: VecDeque<usize> = VecDeque::with_capacity(IN_FLIGHT + 1);
    let mut load: Vec<usize> = vec![0; caches.len().max(1)];
    for (i, &key) in workload.requests.iter().enumerate() {
        if i == change_at {
            if let Some(n) = next.take() {
                // A removed backend's cache is gone with it.
                let kept: Vec<usize> = n.cache_of.clone();
                for (c, cache) in caches.iter_mut().enumerate() {
                    if !kept.contains(&c) {
                        cache.clear();
                    }
                }
                now = n;
                if time.slow_start.is_some() && !joining.is_empty() && now.ring.is_some() {
                    ramp_step = Some(0);
                }
            }
        }
        // Slow start: the ring of this step, in the router's own steps.
        if let (Some(step), Some(window)) = (ramp_step, time.slow_start) {
            let t = (i - change_at) as f64 / time.rate;
            let steps = f64::from(RAMP_STEPS);
            let wanted = ((t / window.as_secs_f64()) * steps).floor().min(steps) as u32;
            if wanted >= RAMP_STEPS {
                ramp_step = None;
                ramped = None;
            } else if ramped.is_none() || wanted != step {
                let full = now.ring.as_ref().ok_or("slow start needs a ring")?;
                let mut ramps = vec![1.0; full.members().len()];
                for &j in &joining {
                    ramps[j] = f64::from(wanted) / f64::from(RAMP_STEPS);
                }
                ramped = Some(full.ramped(&ramps).map_err(|e| e.to_string())?);
                ramp_step = Some(wanted);
            }
        }
        let members = now.cache_of.len();
        let member = match policy {
            Policy::RoundRobin => i % members,
            Policy::Hash(_) => match &ramped {
                Some(r) => r.owner(workload.hashes[key as usize]),
                None => now.owners[key as usize] as usize,
            },
            Policy::Bounded(_, c) => {
                let owner = match &ramped {
                    Some(r) => r.owner(workload.hashes[key as usize]),
                    None => now.owners[key as usize] as usize,
                };
                let capacity = (c * (recent.len() + 1) as f64 / members as f64).ceil() as usize;
                let under = |m: usize| load[now.cache_of[m]] < capacity;
                if under(owner) {
                    owner
                } else {
                    let ring = ramped
                        .as_ref()
                        .or(now.ring.as_ref())
                        .ok_or("bounded loads need a ring")?;
                    let hash = workload.hashes[key as usize];
                    ring.preference(hash).find(|&m| under(m)).unwrap_or(owner)
                }
            }
        };
        let c = now.cache_of[member];
        if matches!(policy, Policy::Bounded(..)) {
            recent.push_back(c);
            load[c] += 1;
            if recent.len() > IN_FLIGHT {
                if let Some(done) = recent.pop_front() {
                    load[done] -= 1;
                }
            }
        }
        let hit = caches[c].get(&key).is_some();
        if i >= change_at {
            let second = ((i - change_at) as f64 / time.rate) as usize;
            if misses_per_second.len() <= second {
                misses_per_second.resize(second + 1, 0);
                hits_per_second.resize(second + 1, 0);
            }
            if hit {
                hits_per_second[second] += 1;
            } else {
                misses_per_second[second] += 1;
            }
        }
        if hit {
            hits += 1;
            bucket_hits += 1;
            if i >= change_at && i < dip_end {
                hits_dip += 1;
            }
            if i >= before_start && i < change_at {
                hits_steady_before += 1;
            }
            if i >= after_start {
                hits_end += 1;
            }
        } else {
            caches[c].put(key, ());
        }
        if (i + 1) % bucket == 0 || i + 1 == total {
            let n = (i % bucket) + 1;
            series.push(bucket_hits as f64 / n as f64);
            bucket_hits = 0;
        }
    }
    let rate = |h: u64, n: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
    let changed = after.is_some();
    let steady = rate(hits_steady_before, change_at.saturating_sub(before_start));
    // Whole seconds only: the last one may be cut short.
    let whole = misses_per_second.len().saturating_sub(1);
    let recovery_seconds = (0..whole)
        .find(|&s| {
            let n = hits_per_second[s] + misses_per_second[s];
            rate(hits_per_second[s], n as usize) >= steady - RECOVERED_WITHIN
        })
        .map(|s| s as u64 + 1);
    Ok(Outcome {
        name: policy.name(),
        hit_rate: rate(hits, total),
        hit_rate_before: changed.then(|| rate(hits_steady_before, change_at - before_start)),
        hit_rate_after: changed.then(|| rate(hits_end, total - after_start)),
        dip: changed.then(|| rate(hits_dip, dip_end.min(total) - change_at)),
        peak_misses_per_second: changed
            .then(|| misses_per_second.iter().copied().max().unwrap_or(0)),
        recovery_seconds: if changed { recovery_seconds } else { None },
        moved_fraction,
        series,
    })
}

/// The text table `simulate` prints.
pub fn table(outcomes: &[Outcome], requests: usize, changed: bool) -> String {
    use std::fmt::Write;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let mut s = format!("{requests} requests\n");
    if changed {
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>10}",
            "algorithm", "hit rate", "before", "after", "dip", "moved", "peak miss/s", "recovered"
        );
    } else {
        let _ = writeln!(s, "{:<28} {:>9}", "algorithm", "hit rate");
    }
    for o in outcomes {
        if changed {
            let _ = writeln!(
                s,
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>10}",
                o.name,
                pct(Some(o.hit_rate)),
                pct(o.hit_rate_before),
                pct(o.hit_rate_after),
                pct(o.dip),
                pct(o.moved_fraction),
                o.peak_misses_per_second
                    .map_or("-".into(), |m| m.to_string()),
                o.recovery_seconds
                    .map_or("never".into(), |s| format!("{s} s"))
            );
        } else {
            let _ = writeln!(s, "{:<28} {:>9}", o.name, pct(Some(o.hit_rate)));
        }
    }
    s
}

/// The font the plots' text is drawn with (DejaVu Sans, printable ASCII;
/// see `assets/fonts/LICENSE-DejaVu`): no system font is needed.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Plot size in pixels.
const PLOT_SIZE: (u32, u32) = (900, 520);

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font cannot be read".to_string())
    })
    .clone()
}

/// Draws the hit rate over the requests for every algorithm as SVG, the
/// pool change (if any) marked.
pub fn plot_svg(outcomes: &[Outcome], changed: bool) -> Result<String, String> {
    use plotters::prelude::*;
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(&root, outcomes, changed)?;
    }
    Ok(svg)
}

/// The same plot as a PNG file at `path`.
pub fn plot_png(outcomes: &[Outcome], changed: bool, path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    draw(&root, outcomes, changed)
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    root: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    outcomes: &[Outcome],
    changed: bool,
) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let points = outcomes.iter().map(|o| o.series.len()).max().unwrap_or(1);
    let mut chart = ChartBuilder::on(root)
        .caption("Cache hit rate over the requests", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..100f64, 0f64..100f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("requests (%)")
        .y_desc("hit rate (%)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA, &BLACK, &CYAN];
    for (o, color) in outcomes.iter().zip(palette.iter().cycle()) {
        let color = **color;
        let line = o
            .series
            .iter()
            .enumerate()
            .map(|(i, &h)| ((i as f64 + 0.5) * 100.0 / points as f64, h * 100.0));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(o.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if changed {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(50.0, 0.0), (50.0, 100.0)],
                BLACK.mix(0.5).stroke_width(1),
            )))
            .map_err(|e| err(&e))?
            .label("pool change");
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool {
            members: Member::numbered(n),
            algorithm: Algorithm::Ring { vnodes: 160 },
            seed: 0,
            balance_factor: None,
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = Workload::zipf(1000, 1.0, 5000, 7, 0).unwrap();
        let b = Workload::zipf(1000, 1.0, 5000, 7, 0).unwrap();
        let c = Workload::zipf(1000, 1.0, 5000, 8, 0).unwrap();
        assert_eq!(a.requests, b.requests);
        assert_ne!(a.requests, c.requests);
    }

    #[test]
    fn one_backend_with_room_for_every_key_misses_each_key_once() {
        let w = Workload::zipf(100, 1.0, 10_000, 1, 0).unwrap();
        let distinct = {
            let mut v = w.requests.clone();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        let time = Ramp {
            rate: 1000.0,
            slow_start: None,
        };
        let o = run(
            Policy::Hash(Algorithm::Rendezvous),
            &w,
            100,
            &pool(1),
            None,
            time,
        )
        .unwrap();
        let expected = 1.0 - distinct as f64 / 10_000.0;
        assert!(
            (o.hit_rate - expected).abs() < 1e-12,
            "{} vs {expected}",
            o.hit_rate
        );
    }

    #[test]
    fn replay_reads_keys_and_access_log_lines() {
        let text = "alice\nbob\nalice\n{\"key_hash\":42}\n{\"key_hash\":null}\n{\"key_hash\":42}\n";
        let w = Workload::replay(text.as_bytes(), 0).unwrap();
        assert_eq!(w.requests, [0, 1, 0, 2, 2]);
        assert_eq!(w.hashes[2], 42);
        assert_eq!(w.skipped, 1);
    }
}
