//! The metrics of SPEC.md as a typed struct over an owned prometheus
//! `Registry`. Per-backend children are resolved once per rebuild, so the
//! request path only touches atomics. No HTTP here.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Time-to-headers buckets, in seconds: sub-millisecond loopback up to the
/// default 30 s response timeout.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `code_class` label values, indexed by `status / 100 - 1`.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `kind` label values of `upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "protocol"];
/// `source` label values of `key_source_total`.
pub const KEY_SOURCES: [&str; 7] = [
    "header",
    "cookie",
    "query",
    "client_ip",
    "random",
    "generated",
    "rejected",
];
/// `cause` label values of `proxy_responses_total`: the answers the proxy
/// makes itself (SPEC's closed list, and `not_implemented` for a request
/// transfer coding it cannot forward).
pub const PROXY_RESPONSE_CAUSES: [&str; 12] = [
    "missing_key",
    "bad_request",
    "header_too_large",
    "client_timeout",
    "method",
    "not_implemented",
    "no_backend",
    "backend_busy",
    "local_resources",
    "connect",
    "protocol",
    "timeout",
];
/// `reason` label values of `remapped_requests_total`.
pub const REMAP_REASONS: [&str; 3] = ["ring_change", "failover", "overload"];

pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics (CPU, memory, open descriptors and
    /// their limit, start time), unprefixed as every exporter names them.
    process: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    healthy: IntGaugeVec,
    in_flight: IntGaugeVec,
    share: GaugeVec,
    generation: IntGauge,
    info: IntGaugeVec,
    pub rebuilds: IntCounter,
    pub reload_failures: IntCounter,
    /// 1 while the file on disk is the one serving, 0 while a rejected one is.
    pub last_reload_successful: IntGauge,
    /// Unix time of the last successful (re)load, in seconds.
    pub last_reload_success_time: Gauge,
    pub last_remap_fraction: Gauge,
    /// `notAfter` of the serving certificate, in Unix seconds; exported
    /// only once a certificate is loaded (a 0 would read as expired).
    tls_certificate_expiry: Gauge,
    tls_registered: std::sync::Once,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_protocol_refused: IntCounter,
    remapped: IntCounterVec,
    key_source: IntCounterVec,
    proxy_responses: IntCounterVec,
    responses: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_total: IntCounterVec,
    backend_connections: IntGaugeVec,
    effective_weight: GaugeVec,
}

/// One listener's connection metrics (`http`, `https`, `admin`).
#[derive(Clone)]
pub struct ListenerMetrics {
    pub open: IntGauge,
    pub total: IntCounter,
}

/// One backend's metric children, resolved at rebuild.
#[derive(Clone)]
pub struct BackendMetrics {
    requests: [IntCounter; 5],
    pub duration: Histogram,
    upstream_errors: [IntCounter; 3],
    pub healthy: IntGauge,
    /// Requests in progress; also the backend's live in-flight count.
    pub in_flight: IntGauge,
    pub share: Gauge,
    /// The weight routing uses now (below the configured one during a
    /// slow start).
    pub effective_weight: Gauge,
}

impl BackendMetrics {
    /// Counts a proxied request by its status code.
    #[inline]
    pub fn request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
    }

    /// Counts an upstream failure; `kind` is an index into `UPSTREAM_ERROR_KINDS`.
    pub fn upstream_error(&self, kind: usize) {
        self.upstream_errors[kind].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("stickylb".into()), None)
            .expect("a constant prefix is valid");
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = process.register(Box::new(super::process::ProcessMetrics::new())) {
            tracing::warn!("process metrics unavailable: {e}");
        }
        let build_info = IntGaugeVec::new(
            opts("build_info", "1, labelled with the running version."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let requests = IntCounterVec::new(
            opts(
                "requests_total",
                "Proxied requests by backend and status class.",
            ),
            &["backend", "code_class"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from receiving a request to the backend's response headers.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            opts(
                "upstream_errors_total",
                "Backend failures: connect, timeout, protocol.",
            ),
            &["backend", "kind"],
        )
        .expect("valid metric");
        let healthy = IntGaugeVec::new(
            opts(
                "backend_healthy",
                "1 if the backend is healthy, 0 if taken out by health checks.",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            opts("backend_in_flight", "Requests in progress per backend."),
            &["backend"],
        )
        .expect("valid metric");
        let share = GaugeVec::new(
            opts(
                "ring_share",
                "Fraction of the keyspace the backend owns (sums to 1).",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let generation = IntGauge::with_opts(opts(
            "ring_generation",
            "Increments at each rebuild that changed routing.",
        ))
        .expect("valid metric");
        let info = IntGaugeVec::new(
            opts(
                "ring_info",
                "The live ring's identity: instances with equal fingerprints route alike.",
            ),
            &["algorithm", "fingerprint"],
        )
        .expect("valid metric");
        let rebuilds =
            IntCounter::with_opts(opts("ring_rebuilds_total", "Successful config reloads."))
                .expect("valid metric");
        let reload_failures = IntCounter::with_opts(opts(
            "config_reload_failures_total",
            "Rejected config files (the old config kept serving).",
        ))
        .expect("valid metric");
        let last_reload_successful = IntGauge::with_opts(opts(
            "config_last_reload_successful",
            "1 when the config file on disk is the one serving, 0 while a rejected file is on disk.",
        ))
        .expect("valid metric");
        let last_reload_success_time = Gauge::with_opts(opts(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config (re)load.",
        ))
        .expect("valid metric");
        let last_remap_fraction = Gauge::with_opts(opts(
            "ring_last_remap_fraction",
            "Exact fraction of the keyspace whose owner changed at the last routing change.",
        ))
        .expect("valid metric");
        let tls_certificate_expiry = Gauge::with_opts(opts(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving TLS certificate, in Unix seconds.",
        ))
        .expect("valid metric");
        let access_log_dropped = IntCounter::with_opts(opts(
            "access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        ))
        .expect("valid metric");
        let proxy_protocol_refused = IntCounter::with_opts(opts(
            "proxy_protocol_refused_total",
            "Connections closed because their PROXY protocol header was missing or malformed.",
        ))
        .expect("valid metric");
        let remapped = IntCounterVec::new(
            opts(
                "remapped_requests_total",
                "Requests served by another backend than before: ring_change = the key's owner differs from the previous generation's; failover = the owner is unhealthy or failed to connect; overload = passed on by bounded loads.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let key_source = IntCounterVec::new(
            opts(
                "key_source_total",
                "Where each request's routing key came from.",
            ),
            &["source"],
        )
        .expect("valid metric");

        let proxy_responses = IntCounterVec::new(
            opts(
                "proxy_responses_total",
                "Responses the proxy made itself, by cause.",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let responses = IntCounterVec::new(
            opts(
                "responses_total",
                "Every response sent to a client, whoever made it (backend or proxy, parser rejections included).",
            ),
            &["code_class"],
        )
        .expect("valid metric");
        let connections_open = IntGaugeVec::new(
            opts("connections_open", "Open client connections, by listener."),
            &["listener"],
        )
        .expect("valid metric");
        let connections_total = IntCounterVec::new(
            opts(
                "connections_total",
                "Accepted client connections, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let backend_connections = IntGaugeVec::new(
            opts(
                "backend_connections",
                "Upstream connections per backend: idle in the pool, or active (carrying a request or upgraded).",
            ),
            &["backend", "state"],
        )
        .expect("valid metric");
        let effective_weight = GaugeVec::new(
            opts(
                "backend_effective_weight",
                "The weight routing uses now: below the configured weight during a slow start.",
            ),
            &["backend"],
        )
        .expect("valid metric");
        for c in [
            Box::new(effective_weight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(backend_connections.clone()),
            Box::new(proxy_responses.clone()),
            Box::new(responses.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_total.clone()),
            Box::new(build_info),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(healthy.clone()),
            Box::new(in_flight.clone()),
            Box::new(share.clone()),
            Box::new(generation.clone()),
            Box::new(info.clone()),
            Box::new(rebuilds.clone()),
            Box::new(reload_failures.clone()),
            Box::new(last_reload_successful.clone()),
            Box::new(last_reload_success_time.clone()),
            Box::new(last_remap_fraction.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(proxy_protocol_refused.clone()),
            Box::new(remapped.clone()),
            Box::new(key_source.clone()),
        ] {
            registry.register(c).expect("metric names are distinct");
        }
        for s in KEY_SOURCES {
            key_source.with_label_values(&[s]);
        }
        for r in REMAP_REASONS {
            remapped.with_label_values(&[r]);
        }
        for c in PROXY_RESPONSE_CAUSES {
            proxy_responses.with_label_values(&[c]);
        }
        for c in CODE_CLASSES {
            responses.with_label_values(&[c]);
        }
        Metrics {
            registry,
            process,
            requests,
            duration,
            upstream_errors,
            healthy,
            in_flight,
            share,
            generation,
            info,
            rebuilds,
            reload_failures,
            last_reload_successful,
            last_reload_success_time,
            last_remap_fraction,
            tls_certificate_expiry,
            tls_registered: std::sync::Once::new(),
            access_log_dropped,
            proxy_protocol_refused,
            remapped,
            key_source,
            proxy_responses,
            responses,
            connections_open,
            connections_total,
            backend_connections,
            effective_weight,
        }
    }

    /// Resolves (creating if new) a backend's children.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let healthy = self.healthy.with_label_values(&[name]);
        healthy.set(1);
        BackendMetrics {
            requests: CODE_CLASSES.map(|c| self.requests.with_label_values(&[name, c])),
            duration: self.duration.with_label_values(&[name]),
            upstream_errors: UPSTREAM_ERROR_KINDS
                .map(|k| self.upstream_errors.with_label_values(&[name, k])),
            healthy,
            in_flight: self.in_flight.with_label_values(&[name]),
            share: self.share.with_label_values(&[name]),
            effective_weight: self.effective_weight.with_label_values(&[name]),
        }
    }

    /// Drops a removed backend's series so `/metrics` lists the live pool.
    pub fn forget_backend(&self, name: &str) {
        for c in CODE_CLASSES {
            let _ = self.requests.remove_label_values(&[name, c]);
        }
        for k in UPSTREAM_ERROR_KINDS {
            let _ = self.upstream_errors.remove_label_values(&[name, k]);
        }
        // A series that was never created has nothing to remove.
        let _ = self.duration.remove_label_values(&[name]);
        let _ = self.healthy.remove_label_values(&[name]);
        let _ = self.in_flight.remove_label_values(&[name]);
        let _ = self.share.remove_label_values(&[name]);
        let _ = self.effective_weight.remove_label_values(&[name]);
        for state in ["idle", "active"] {
            let _ = self.backend_connections.remove_label_values(&[name, state]);
        }
    }

    /// Publishes a backend's upstream connections (read at scrape time).
    pub fn set_backend_connections(&self, name: &str, idle: usize, active: usize) {
        let set = |state: &str, n: usize| {
            let g = self.backend_connections.with_label_values(&[name, state]);
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("idle", idle);
        set("active", active);
    }

    /// The `key_source_total` child for a label of `KEY_SOURCES`.
    pub fn key_source(&self, source: &str) -> IntCounter {
        self.key_source.with_label_values(&[source])
    }

    /// The `responses_total` children, indexed like `CODE_CLASSES`.
    pub fn responses(&self) -> [IntCounter; 5] {
        CODE_CLASSES.map(|c| self.responses.with_label_values(&[c]))
    }

    /// The connection metrics of listener `name` (`http`, `https`, `admin`).
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections_open.with_label_values(&[name]),
            total: self.connections_total.with_label_values(&[name]),
        }
    }

    /// The `proxy_responses_total` child for a label of `PROXY_RESPONSE_CAUSES`.
    pub fn proxy_response(&self, cause: &str) -> IntCounter {
        self.proxy_responses.with_label_values(&[cause])
    }

    /// The `remapped_requests_total` child for a label of `REMAP_REASONS`.
    pub fn remapped(&self, reason: &str) -> IntCounter {
        self.remapped.with_label_values(&[reason])
    }

    /// Publishes the serving certificate's `notAfter` (Unix seconds).
    pub fn set_certificate_expiry(&self, not_after: i64) {
        self.tls_registered.call_once(|| {
            let g = Box::new(self.tls_certificate_expiry.clone());
            self.registry.register(g).expect("registered once");
        });
        self.tls_certificate_expiry.set(not_after as f64);
    }

    /// Publishes the live ring's identity.
    pub fn set_ring(&self, generation: u64, algorithm: &str, fingerprint: u64) {
        self.generation.set(generation as i64);
        self.info.reset();
        self.info
            .with_label_values(&[algorithm, &format!("{fingerprint:016x}")])
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
