//! The standard `process_*` metrics every Prometheus client exports (CPU
//! seconds, resident and virtual memory, open descriptors and their limit,
//! start time), read from `/proc/self` at each scrape. CPU time keeps its
//! fraction of a second (`utime + stime` in clock ticks, proc(5)).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

pub struct ProcessMetrics {
    cpu: Counter,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessMetrics {
    pub fn new() -> Self {
        let gauge =
            |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric");
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let mut descs = Vec::new();
        for c in [
            &cpu as &dyn Collector,
            &resident,
            &virtual_memory,
            &open_fds,
            &max_fds,
            &start_time,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        let me = ProcessMetrics {
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            descs,
        };
        if let Some(stat) = Stat::read() {
            if let Some(boot) = boot_time() {
                me.start_time
                    .set(boot + stat.start_ticks / ticks_per_second());
            }
        }
        me
    }

    fn update(&self) {
        if let Some(stat) = Stat::read() {
            let cpu = stat.cpu_ticks / ticks_per_second();
            let delta = cpu - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            if let Some(rss) = resident_bytes() {
                self.resident.set(rss);
            }
            self.virtual_memory.set(stat.vsize_bytes);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as f64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(soft as f64);
        }
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        let mut families = Vec::with_capacity(6);
        for c in [
            &self.cpu as &dyn Collector,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.start_time,
        ] {
            families.extend(c.collect());
        }
        families
    }
}

/// The fields of `/proc/self/stat` used here (proc(5)).
struct Stat {
    cpu_ticks: f64,
    start_ticks: f64,
    vsize_bytes: f64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may
        // hold spaces; the first of them is field 3 (state).
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        Some(Stat {
            cpu_ticks: field(14)? + field(15)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
        })
    }
}

/// Clock ticks a second in `/proc` times: `USER_HZ`, which Linux fixes
/// at 100 for user space on every architecture (time(7)).
fn ticks_per_second() -> f64 {
    100.0
}

/// Resident memory, from `VmRSS` in `/proc/self/status` (kB).
fn resident_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The system's boot time, Unix seconds (`btime` in `/proc/stat`).
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_keep_their_fraction() {
        let m = ProcessMetrics::new();
        // Burn a little CPU: the counter moves by less than a second.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        m.update();
        let cpu = m.cpu.get();
        let ticks = Stat::read().unwrap().cpu_ticks / ticks_per_second();
        // Tick precision (1/100 s), not whole seconds.
        assert!(cpu > 0.0 && (ticks - cpu).abs() < 0.05, "{cpu} vs {ticks}");
        assert!(m.resident.get() > 0.0 && m.open_fds.get() > 0.0);
        assert!(m.start_time.get() > 1.6e9, "{}", m.start_time.get());
    }
}
