//! TOML text -> validated `Config`. A pure function of the text: no IO, no
//! tokio. Every error names the line and column it comes from.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub admin: Admin,
    pub routing: Routing,
    pub timeouts: Timeouts,
    /// Active health checks; none without a `[health]` section.
    pub health: Option<HealthConfig>,
    pub limits: Limits,
    pub log: Log,
    pub backends: Vec<BackendConfig>,
    /// Things that are valid but probably not what was meant, each as
    /// `origin:line:column: message`; whoever loads the file shows them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_request_header_bytes: usize,
    /// Connections to each backend, pooled and in use, at most.
    pub max_backend_connections: usize,
}

/// The smallest header limit the HTTP/1 parser can work with.
pub const MIN_HEADER_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;

/// `[log]`: the optional access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Log {
    /// One line per request on stdout; off by default.
    pub access: bool,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub address: SocketAddr,
    /// The certificate files; TLS is served on `tls_address` if set, else
    /// on `address`.
    pub tls: Option<TlsFiles>,
    /// A second listener for TLS beside the plain one on `address`.
    pub tls_address: Option<SocketAddr>,
    /// Where `listen.tls`'s `cert` and `key` are written (line, column),
    /// so an error in those files points at the setting that names them.
    pub tls_at: Option<[(usize, usize); 2]>,
}

/// `listen.tls`: PEM files, as written (a relative path is relative to the
/// config file's directory; the reader of the file resolves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

impl Listen {
    /// The address served over TLS, if any.
    pub fn tls_listener(&self) -> Option<SocketAddr> {
        self.tls.as_ref()?;
        Some(self.tls_address.unwrap_or(self.address))
    }

    /// The address served as plain HTTP, if any.
    pub fn plain_listener(&self) -> Option<SocketAddr> {
        (self.tls.is_none() || self.tls_address.is_some()).then_some(self.address)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Key sources, tried in order.
    pub key: Vec<KeySource>,
    pub missing_key: MissingKey,
    pub algorithm: AlgorithmConfig,
    pub seed: u64,
    /// Bounded loads: no backend takes more than this × the mean in-flight load.
    pub balance_factor: Option<f64>,
    /// Give key-less clients a generated id, set as this cookie.
    pub sticky_cookie: Option<StickyCookie>,
}

/// `routing.sticky_cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// A cookie name (an RFC 9110 token).
    pub name: String,
    pub max_age: Duration,
}

pub const DEFAULT_COOKIE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where a request's client id may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (name lower-cased).
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
}

/// What to do with a request that carries none of the key sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    ClientIp,
    Random,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmConfig {
    Ring { vnodes: u32 },
    Maglev { table_size: u32 },
    Rendezvous,
}

impl AlgorithmConfig {
    /// The ring algorithm this describes.
    pub fn algorithm(self) -> crate::ring::Algorithm {
        use crate::ring::Algorithm;
        match self {
            AlgorithmConfig::Ring { vnodes } => Algorithm::Ring { vnodes },
            AlgorithmConfig::Maglev { table_size } => Algorithm::Maglev { table_size },
            AlgorithmConfig::Rendezvous => Algorithm::Rendezvous,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response_headers: Duration,
    pub client_header_read: Duration,
    /// The longest pause between two pieces of a client's request body;
    /// past it the client gets 408.
    pub client_body_read: Duration,
    /// Client connections with nothing in flight this long are closed.
    pub idle: Duration,
    /// Idle pooled backend connections are closed after this long.
    pub upstream_idle: Duration,
    pub shutdown_grace: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way this
    /// long is closed.
    pub upgraded_idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// The backend's identity on the ring.
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub weight: NonZeroU32,
}

/// A config error with its position in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

pub const DEFAULT_VNODES: u32 = 160;
/// The Maglev table size when `routing.table_size` is not set (a prime).
pub const DEFAULT_TABLE_SIZE: u32 = crate::ring::DEFAULT_TABLE_SIZE;
/// vnodes × total weight may not exceed this (mirrors the ring's own bound).
pub const MAX_RING_POINTS: u64 = crate::ring::MAX_POINTS;

// ---- the file as written ----------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<RawListen>,
    admin: Option<RawAdmin>,
    routing: Option<RawRouting>,
    timeouts: Option<RawTimeouts>,
    health: Option<RawHealth>,
    limits: Option<RawLimits>,
    log: Option<RawLog>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    tls_address: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStickyCookie {
    name: Spanned<String>,
    max_age: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    key: Option<Vec<Spanned<String>>>,
    missing_key: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    vnodes: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
    table_size: Option<Spanned<i64>>,
    balance_factor: Option<Spanned<f64>>,
    sticky_cookie: Option<Spanned<RawStickyCookie>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Spanned<String>>,
    response_headers: Option<Spanned<String>>,
    client_header_read: Option<Spanned<String>>,
    client_body_read: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    upstream_idle: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    upgraded_idle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    fall: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<i64>>,
    max_request_header_bytes: Option<Spanned<i64>>,
    max_backend_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<bool>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

// ---- parsing ------------------------------------------------------------

/// Parses and validates a config file's text. `origin` names the file in
/// error messages.
pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let at = |span: Range<usize>, message: String| locate(text, origin, span.start, message);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let start = e.span().map_or(0, |s| s.start);
        at(start..start, e.message().trim_end().to_string())
    })?;

    let listen = match raw.listen {
        Some(l) => {
            let address = socket_addr(&at, l.address.as_ref(), "127.0.0.1:8080")?;
            let tls_at = l.tls.as_ref().map(|t| {
                let t = t.get_ref();
                let pos = |v: &Spanned<String>| {
                    let e = at(v.span(), String::new());
                    (e.line, e.column)
                };
                [pos(&t.cert), pos(&t.key)]
            });
            let tls = l.tls.map(|t| tls_files(&at, t)).transpose()?;
            let tls_address = match &l.tls_address {
                None => None,
                Some(a) if tls.is_none() => {
                    return Err(at(
                        a.span(),
                        "listen.tls_address needs listen.tls = { cert, key }".into(),
                    ))
                }
                Some(a) => {
                    let addr = socket_addr(&at, Some(a), "")?;
                    if addr == address {
                        return Err(at(
                            a.span(),
                            format!("listen.tls_address and listen.address are both {addr}"),
                        ));
                    }
                    Some(addr)
                }
            };
            Listen {
                address,
                tls,
                tls_address,
                tls_at,
            }
        }
        None => Listen {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            tls_address: None,
            tls_at: None,
        },
    };
    let admin = Admin {
        address: socket_addr(
            &at,
            raw.admin.as_ref().and_then(|a| a.address.as_ref()),
            "127.0.0.1:9090",
        )?,
    };
    if admin.address == listen.address || Some(admin.address) == listen.tls_address {
        return Err(at(
            0..0,
            format!(
                "admin.address and a listen address are both {}",
                admin.address
            ),
        ));
    }

    let (routing, spans) = routing(&at, raw.routing)?;
    let timeouts = timeouts(&at, raw.timeouts)?;
    let backends = backends(&at, text, raw.backend)?;
    let health = raw.health.map(|h| health(&at, h)).transpose()?;
    let limits = limits(&at, raw.limits)?;
    let log = match raw.log {
        None => Log::default(),
        Some(l) => Log {
            access: l.access.unwrap_or(false),
            format: match l.format {
                None => LogFormat::Text,
                Some(f) => match f.get_ref().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(at(
                            f.span(),
                            format!("log.format must be \"text\" or \"json\", not {other:?}"),
                        ))
                    }
                },
            },
        },
    };

    let mut warnings = Vec::new();
    match routing.algorithm {
        AlgorithmConfig::Ring { vnodes } => {
            let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight.get())).sum();
            if u64::from(vnodes).saturating_mul(total_weight) > MAX_RING_POINTS {
                return Err(at(0..0, format!(
                    "routing.vnodes ({vnodes}) × total weight ({total_weight}) exceeds {MAX_RING_POINTS} ring points"
                )));
            }
        }
        AlgorithmConfig::Maglev { table_size } => {
            let span = spans.table_size.clone().or(spans.algorithm.clone());
            let span = span.unwrap_or(0..0);
            let given = spans.table_size.is_some();
            if let Some(w) = check_table_size(&at, span, given, table_size, backends.len())? {
                warnings.push(w.to_string());
            }
        }
        AlgorithmConfig::Rendezvous => {}
    }
    if let (Some(span), AlgorithmConfig::Maglev { .. } | AlgorithmConfig::Rendezvous) =
        (spans.vnodes, routing.algorithm)
    {
        warnings.push(
            at(
                span,
                format!(
                    "routing.vnodes only applies to algorithm = \"ring\"; {} ignores it",
                    routing.algorithm.algorithm().name()
                ),
            )
            .to_string(),
        );
    }

    Ok(Config {
        listen,
        admin,
        routing,
        timeouts,
        health,
        limits,
        log,
        backends,
        warnings,
    })
}

fn health(at: &At<'_>, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
    let path = match raw.path {
        None => "/healthz".to_string(),
        Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace) => {
            p.into_inner()
        }
        Some(p) => {
            return Err(at(
                p.span(),
                format!(
                    "health.path must be an absolute path like \"/healthz\", not {:?}",
                    p.get_ref()
                ),
            ))
        }
    };
    let count = |v: Option<Spanned<i64>>, name: &str, default: u32| match v {
        None => Ok(default),
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|&n| (1..=1000).contains(&n))
            .ok_or_else(|| {
                at(
                    n.span(),
                    format!("health.{name} must be from 1 to 1000, not {}", n.get_ref()),
                )
            }),
    };
    let interval = duration(
        at,
        &raw.interval,
        "health.interval",
        Duration::from_secs(2),
        false,
    )?;
    // A probe per backend this often at most: shorter would only pin a core.
    if interval < MIN_HEALTH_INTERVAL {
        let span = raw.interval.as_ref().map_or(0..0, Spanned::span);
        return Err(at(
            span,
            format!("health.interval must be at least {MIN_HEALTH_INTERVAL:?}"),
        ));
    }
    Ok(HealthConfig {
        path,
        interval,
        timeout: duration(
            at,
            &raw.timeout,
            "health.timeout",
            Duration::from_millis(500),
            false,
        )?,
        fall: count(raw.fall, "fall", 3)?,
        rise: count(raw.rise, "rise", 2)?,
    })
}

fn limits(at: &At<'_>, raw: Option<RawLimits>) -> Result<Limits, ConfigError> {
    let raw = raw.unwrap_or(RawLimits {
        max_connections: None,
        max_request_header_bytes: None,
        max_backend_connections: None,
    });
    let num = |v: Option<Spanned<i64>>,
               name: &str,
               default: usize,
               range: std::ops::RangeInclusive<usize>| match v {
        None => Ok(default),
        Some(n) => usize::try_from(*n.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                at(
                    n.span(),
                    format!(
                        "limits.{name} must be from {} to {}, not {}",
                        range.start(),
                        range.end(),
                        n.get_ref()
                    ),
                )
            }),
    };
    Ok(Limits {
        max_connections: num(
            raw.max_connections,
            "max_connections",
            20_000,
            1..=10_000_000,
        )?,
        max_request_header_bytes: num(
            raw.max_request_header_bytes,
            "max_request_header_bytes",
            16_384,
            MIN_HEADER_BYTES..=MAX_HEADER_BYTES,
        )?,
        max_backend_connections: num(
            raw.max_backend_connections,
            "max_backend_connections",
            1024,
            1..=1_000_000,
        )?,
    })
}

/// Where some `[routing]` keys were written, for errors and warnings that
/// can only be told once the pool is known.
#[derive(Default)]
struct RoutingSpans {
    algorithm: Option<Range<usize>>,
    vnodes: Option<Range<usize>>,
    table_size: Option<Range<usize>>,
}

/// Checks a Maglev table size against the pool: a prime of at least 10 ×
/// the backends (an error that names the next good prime otherwise), and a
/// warning under 100 × the backends, where shares start to differ by more
/// than about 1%. `given` says whether the file set it or it is the default.
fn check_table_size(
    at: &At<'_>,
    span: Range<usize>,
    given: bool,
    size: u32,
    backends: usize,
) -> Result<Option<ConfigError>, ConfigError> {
    let n = backends as u64;
    let what = if given {
        format!("routing.table_size {size}")
    } else {
        format!("routing.table_size (default {size})")
    };
    let max = crate::ring::MAX_POINTS;
    let suggest = |from: u64| {
        let p = crate::ring::next_prime(from);
        if p <= max {
            format!("use a prime such as {p}")
        } else {
            format!("no prime table size up to {max} is large enough for this pool; use \"ring\" or \"rendezvous\"")
        }
    };
    let m = u64::from(size);
    if !crate::ring::is_prime(m) {
        return Err(at(
            span,
            format!("{what} is not a prime; {}", suggest(m.max(10 * n))),
        ));
    }
    if m < 10 * n {
        return Err(at(
            span,
            format!(
                "{what} is smaller than 10 × {n} backends; {}",
                suggest(10 * n)
            ),
        ));
    }
    Ok((m < 100 * n).then(|| {
        at(
            span,
            format!(
                "{what} gives each of the {n} backends only about {} slots, so shares can differ by about {:.1}% of the mean; a prime of at least {} such as {} balances better",
                m / n,
                100.0 * n as f64 / m as f64,
                100 * n,
                crate::ring::next_prime(100 * n)
            ),
        )
    }))
}

type At<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

fn routing(at: &At<'_>, raw: Option<RawRouting>) -> Result<(Routing, RoutingSpans), ConfigError> {
    let Some(raw) = raw else {
        return Ok((
            Routing {
                key: default_keys(),
                missing_key: MissingKey::ClientIp,
                algorithm: AlgorithmConfig::Ring {
                    vnodes: DEFAULT_VNODES,
                },
                seed: 0,
                balance_factor: None,
                sticky_cookie: None,
            },
            RoutingSpans::default(),
        ));
    };
    let spans = RoutingSpans {
        algorithm: raw.algorithm.as_ref().map(|a| a.span()),
        vnodes: raw.vnodes.as_ref().map(|v| v.span()),
        table_size: raw.table_size.as_ref().map(|t| t.span()),
    };
    let sticky_cookie = raw
        .sticky_cookie
        .map(|c| sticky_cookie(at, c))
        .transpose()?;
    let key = match raw.key {
        None => default_keys(),
        Some(list) => list
            .iter()
            .map(|s| key_source(s.get_ref()).map_err(|m| at(s.span(), m)))
            .collect::<Result<_, _>>()?,
    };
    let missing_key = match raw.missing_key {
        None => MissingKey::ClientIp,
        Some(s) => match s.get_ref().as_str() {
            "client-ip" => MissingKey::ClientIp,
            "random" => MissingKey::Random,
            "reject" => MissingKey::Reject,
            other => {
                return Err(at(s.span(), format!(
                    "routing.missing_key must be \"client-ip\", \"random\" or \"reject\", not {other:?}"
                )))
            }
        },
    };
    let vnodes = match raw.vnodes {
        None => DEFAULT_VNODES,
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|&n| n >= 1 && u64::from(n) <= MAX_RING_POINTS)
            .ok_or_else(|| {
                at(
                    v.span(),
                    format!(
                        "routing.vnodes must be between 1 and {MAX_RING_POINTS}, not {}",
                        v.get_ref()
                    ),
                )
            })?,
    };
    let table_size = match &raw.table_size {
        None => DEFAULT_TABLE_SIZE,
        Some(t) => u32::try_from(*t.get_ref())
            .ok()
            .filter(|&m| m >= 2 && u64::from(m) <= MAX_RING_POINTS)
            .ok_or_else(|| {
                at(
                    t.span(),
                    format!(
                        "routing.table_size must be a prime between 2 and {MAX_RING_POINTS}, not {}",
                        t.get_ref()
                    ),
                )
            })?,
    };
    let algorithm = match raw
        .algorithm
        .as_ref()
        .map(|a| (a.get_ref().as_str(), a.span()))
    {
        None | Some(("ring", _)) => AlgorithmConfig::Ring { vnodes },
        Some(("maglev", _)) => AlgorithmConfig::Maglev { table_size },
        Some(("rendezvous", _)) => AlgorithmConfig::Rendezvous,
        Some((other, span)) => {
            return Err(at(
                span,
                format!(
                "routing.algorithm must be \"ring\", \"maglev\" or \"rendezvous\", not {other:?}"
            ),
            ))
        }
    };
    if let (Some(t), AlgorithmConfig::Ring { .. } | AlgorithmConfig::Rendezvous) =
        (&raw.table_size, algorithm)
    {
        return Err(at(
            t.span(),
            format!(
                "routing.table_size only applies to algorithm = \"maglev\", not {:?}",
                algorithm.algorithm().name()
            ),
        ));
    }
    let seed = match raw.seed {
        None => 0,
        Some(s) => u64::try_from(*s.get_ref()).map_err(|_| {
            at(
                s.span(),
                format!(
                    "routing.seed must be a non-negative integer, not {}",
                    s.get_ref()
                ),
            )
        })?,
    };
    let balance_factor = match raw.balance_factor {
        None => None,
        Some(f) if f.get_ref().is_finite() && *f.get_ref() >= 1.0 && *f.get_ref() <= 100.0 => {
            Some(*f.get_ref())
        }
        Some(f) => {
            return Err(at(f.span(), format!(
                "routing.balance_factor must be a number from 1.0 to 100.0 (1.25 = no backend above 125% of the mean load), not {}",
                f.get_ref()
            )))
        }
    };
    Ok((
        Routing {
            key,
            missing_key,
            algorithm,
            seed,
            balance_factor,
            sticky_cookie,
        },
        spans,
    ))
}

fn sticky_cookie(at: &At<'_>, raw: Spanned<RawStickyCookie>) -> Result<StickyCookie, ConfigError> {
    let raw = raw.into_inner();
    let name = raw.name.get_ref();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(at(
            raw.name.span(),
            format!("routing.sticky_cookie.name {name:?} is not a valid cookie name"),
        ));
    }
    let max_age = duration(
        at,
        &raw.max_age,
        "routing.sticky_cookie.max_age",
        DEFAULT_COOKIE_MAX_AGE,
        false,
    )?;
    Ok(StickyCookie {
        name: name.clone(),
        max_age,
    })
}

fn tls_files(at: &At<'_>, raw: Spanned<RawTls>) -> Result<TlsFiles, ConfigError> {
    let raw = raw.into_inner();
    let path = |v: &Spanned<String>, name: &str| {
        if v.get_ref().trim().is_empty() {
            Err(at(
                v.span(),
                format!("listen.tls.{name} must be a file path"),
            ))
        } else {
            Ok(PathBuf::from(v.get_ref()))
        }
    };
    Ok(TlsFiles {
        cert: path(&raw.cert, "cert")?,
        key: path(&raw.key, "key")?,
    })
}

fn default_keys() -> Vec<KeySource> {
    vec![
        KeySource::Header("x-client-id".into()),
        KeySource::Cookie("session_id".into()),
    ]
}

/// Parses `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`.
fn key_source(s: &str) -> Result<KeySource, String> {
    if s == "client-ip" {
        return Ok(KeySource::ClientIp);
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err(format!(
            "routing.key entry {s:?} must be \"header:NAME\", \"cookie:NAME\", \"query:NAME\" or \"client-ip\""
        ));
    };
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "routing.key entry {s:?}: {name:?} is not a valid {kind} name"
        ));
    }
    match kind {
        "header" => Ok(KeySource::Header(name.to_ascii_lowercase())),
        "cookie" => Ok(KeySource::Cookie(name.to_string())),
        "query" => Ok(KeySource::Query(name.to_string())),
        _ => Err(format!(
            "routing.key entry {s:?}: unknown source {kind:?} (use header, cookie, query or client-ip)"
        )),
    }
}

/// RFC 9110 token characters: what header and cookie names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn timeouts(at: &At<'_>, raw: Option<RawTimeouts>) -> Result<Timeouts, ConfigError> {
    let raw = raw.unwrap_or(RawTimeouts {
        connect: None,
        response_headers: None,
        client_header_read: None,
        client_body_read: None,
        idle: None,
        upstream_idle: None,
        shutdown_grace: None,
        upgraded_idle: None,
    });
    let d = |v: &Option<Spanned<String>>, name: &str, default: u64, zero_ok: bool| {
        let name = format!("timeouts.{name}");
        duration(at, v, &name, Duration::from_secs(default), zero_ok)
    };
    Ok(Timeouts {
        connect: d(&raw.connect, "connect", 1, false)?,
        response_headers: d(&raw.response_headers, "response_headers", 30, false)?,
        client_header_read: d(&raw.client_header_read, "client_header_read", 10, false)?,
        client_body_read: d(&raw.client_body_read, "client_body_read", 60, false)?,
        idle: d(&raw.idle, "idle", 60, false)?,
        upstream_idle: d(&raw.upstream_idle, "upstream_idle", 60, false)?,
        shutdown_grace: d(&raw.shutdown_grace, "shutdown_grace", 30, true)?,
        upgraded_idle: d(&raw.upgraded_idle, "upgraded_idle", 3600, false)?,
    })
}

/// Admin connections open at once at most; past it, new ones wait in the
/// kernel's accept queue, so no flood of idle admin clients can use up the
/// proxy's file descriptors.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// The shortest `health.interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// The longest duration any setting takes: one year (365.25 days, as
/// "1y" reads). Bounded so that no instant plus a configured duration can
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// A duration like "500ms", "2s" or "1m", at most `MAX_DURATION`; zero
/// only where `zero_ok`.
fn duration(
    at: &At<'_>,
    v: &Option<Spanned<String>>,
    name: &str,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                Err(at(s.span(), format!("{name} must be greater than zero")))
            }
            Ok(d) if d > MAX_DURATION => Err(at(
                s.span(),
                format!(
                    "{name}: {:?} is longer than the 1 year allowed",
                    s.get_ref()
                ),
            )),
            Ok(d) => Ok(d),
            Err(e) => Err(at(
                s.span(),
                format!(
                    "{name}: {:?} is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1m\"",
                    s.get_ref()
                ),
            )),
        },
    }
}

fn backends(
    at: &At<'_>,
    text: &str,
    raw: Vec<Spanned<RawBackend>>,
) -> Result<Vec<BackendConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(at(
            text.len()..text.len(),
            "the pool is empty: add at least one [[backend]] with a name and an address".into(),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::with_capacity(raw.len());
    // Where each name and address was first seen: one hash look-up per
    // backend, so a pool of 100,000 is checked in linear time.
    let mut names: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    let mut addresses: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    let first_line = |offset: usize| locate(text, "", offset, String::new()).line;
    for b in raw {
        let b = b.into_inner();
        let name = b.name.get_ref().trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(at(
                b.name.span(),
                format!(
                    "backend name {:?} must be non-empty printable text",
                    b.name.get_ref()
                ),
            ));
        }
        let address = b.address.get_ref().trim();
        validate_host_port(address).map_err(|m| at(b.address.span(), m))?;
        let weight = match &b.weight {
            None => NonZeroU32::MIN,
            Some(w) => u32::try_from(*w.get_ref())
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    at(
                        w.span(),
                        format!(
                            "backend {name:?}: weight must be a whole number of at least 1, not {}",
                            w.get_ref()
                        ),
                    )
                })?,
        };
        if let Some(&first) = names.get(name) {
            let line = first_line(first);
            return Err(at(
                b.name.span(),
                format!("duplicate backend name {name:?} (first used on line {line})"),
            ));
        }
        if let Some(&first) = addresses.get(address) {
            let line = first_line(first);
            return Err(at(
                b.address.span(),
                format!("duplicate backend address {address:?} (first used on line {line})"),
            ));
        }
        names.insert(name.to_string(), b.name.span().start);
        addresses.insert(address.to_string(), b.address.span().start);
        out.push(BackendConfig {
            name: name.to_string(),
            address: address.to_string(),
            weight,
        });
    }
    Ok(out)
}

fn socket_addr(
    at: &At<'_>,
    value: Option<&Spanned<String>>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let Some(v) = value else {
        return default
            .parse()
            .map_err(|_| at(0..0, format!("bad built-in default address {default}")));
    };
    v.get_ref().parse().map_err(|_| {
        at(
            v.span(),
            format!(
                "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                v.get_ref()
            ),
        )
    })
}

/// A backend address: `IP:port`, `[IPv6]:port` or `hostname:port`.
fn validate_host_port(s: &str) -> Result<(), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("backend address {s:?} has port 0"))
        } else {
            Ok(())
        };
    }
    let bad = || {
        format!("backend address {s:?} must be host:port (e.g. \"10.0.0.5:8080\", \"[::1]:8080\", \"app-1.internal:8080\")")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// Turns a byte offset into a 1-based line and column.
fn locate(text: &str, origin: &str, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        from_toml_str(text, "t.toml").expect_err("should be rejected")
    }

    const ONE: &str = "[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = from_toml_str(ONE, "t.toml").unwrap();
        assert_eq!(c.listen.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.routing.key, default_keys());
        assert_eq!(c.routing.algorithm, AlgorithmConfig::Ring { vnodes: 160 });
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.backends[0].weight.get(), 1);
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../config.toml");
        let c = from_toml_str(text, "config.toml").unwrap();
        assert!(c.backends.len() >= 3);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = err(&format!("{ONE}weight = 0\n"));
        assert_eq!((e.line, e.column), (4, 10), "{e}");
        assert!(e.message.contains("weight"), "{e}");
        let e = err("[routing]\nbogus = 1\n");
        assert_eq!(e.line, 2, "{e}");
        let e = err(&format!(
            "{ONE}[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9002\"\n"
        ));
        assert_eq!((e.line, e.column), (5, 8), "{e}");
        assert!(e.message.contains("duplicate backend name"), "{e}");
        let e = err(&format!("[timeouts]\nconnect = \"fast\"\n{ONE}"));
        assert_eq!(e.line, 2, "{e}");
        let e = err("[[backend]]\nname = \"a\"\naddress = \"nowhere\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(err("").message.contains("pool is empty"));
        let e = err(&format!(
            "[routing]\nsticky_cookie = {{ name = \"a b\" }}\n{ONE}"
        ));
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("not a valid cookie name"), "{e}");
        let e = err(&format!(
            "[routing]\nsticky_cookie = {{ name = \"sid\", max_age = \"soon\" }}\n{ONE}"
        ));
        assert!(e.message.contains("max_age"), "{e}");
        let e = err(&format!(
            "[listen]\ntls_address = \"127.0.0.1:8443\"\n{ONE}"
        ));
        assert_eq!((e.line, e.column), (2, 15), "{e}");
        let e = err(&format!("[listen]\ntls = {{ cert = \"c.pem\" }}\n{ONE}"));
        assert_eq!(e.line, 2, "{e}");
        let e = err(&format!("[health]\nfall = 0\n{ONE}"));
        assert_eq!((e.line, e.column), (2, 8), "{e}");
        let e = err(&format!("[limits]\nmax_request_header_bytes = 100\n{ONE}"));
        assert_eq!(e.line, 2, "{e}");
        let e = err(&format!("[routing]\nbalance_factor = 0.5\n{ONE}"));
        assert_eq!(e.line, 2, "{e}");
        assert_eq!(
            e.to_string(),
            format!("t.toml:{}:{}: {}", e.line, e.column, e.message)
        );
    }

    /// `n` backends named b0.. on ports 9000..
    fn pool(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{}\"\n",
                    9000 + i
                )
            })
            .collect()
    }

    #[test]
    fn algorithms_parse() {
        let parse =
            |routing: &str| from_toml_str(&format!("[routing]\n{routing}\n{ONE}"), "t.toml");
        let c = parse("algorithm = \"maglev\"").unwrap();
        assert_eq!(
            c.routing.algorithm,
            AlgorithmConfig::Maglev { table_size: 65537 }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse("algorithm = \"maglev\"\ntable_size = 1009").unwrap();
        assert_eq!(
            c.routing.algorithm,
            AlgorithmConfig::Maglev { table_size: 1009 }
        );
        let c = parse("algorithm = \"rendezvous\"").unwrap();
        assert_eq!(c.routing.algorithm, AlgorithmConfig::Rendezvous);
        let c = parse("algorithm = \"ring\"\nvnodes = 40").unwrap();
        assert_eq!(c.routing.algorithm, AlgorithmConfig::Ring { vnodes: 40 });
        let e = parse("algorithm = \"jump\"").unwrap_err();
        assert_eq!((e.line, e.column), (2, 13), "{e}");
    }

    #[test]
    fn table_size_errors_suggest_a_prime() {
        let e = err(&format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = 65536\n{ONE}"
        ));
        assert_eq!((e.line, e.column), (3, 14), "{e}");
        assert!(e.message.contains("not a prime"), "{e}");
        assert!(e.message.contains("65537"), "{e}");

        // 200 backends need at least 2000 slots: the next prime is 2003.
        let e = err(&format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = 1009\n{}",
            pool(200)
        ));
        assert_eq!((e.line, e.column), (3, 14), "{e}");
        assert!(e.message.contains("smaller than 10 × 200 backends"), "{e}");
        assert!(e.message.contains("2003"), "{e}");
        // Not a prime and too small: the suggestion covers both.
        let e = err(&format!(
            "[routing]\nalgorithm = \"maglev\"\ntable_size = 1000\n{}",
            pool(200)
        ));
        assert!(e.message.contains("2003"), "{e}");

        // The default is checked against the pool too, at the algorithm.
        let e = err(&format!(
            "[routing]\nalgorithm = \"maglev\"\n{}",
            pool(6554)
        ));
        assert_eq!((e.line, e.column), (2, 13), "{e}");
        assert!(e.message.contains("default 65537"), "{e}");
        assert!(e.message.contains("65543"), "{e}");

        for bad in ["0", "-7", "1", "99999999999"] {
            let e = err(&format!(
                "[routing]\nalgorithm = \"maglev\"\ntable_size = {bad}\n{ONE}"
            ));
            assert_eq!(e.line, 3, "{e}");
        }
        let e = err(&format!("[routing]\ntable_size = 65537\n{ONE}"));
        assert!(
            e.message.contains("only applies to algorithm = \"maglev\""),
            "{e}"
        );
        assert_eq!(e.line, 2, "{e}");
        let e = err(&format!(
            "[routing]\nalgorithm = \"rendezvous\"\ntable_size = 65537\n{ONE}"
        ));
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn small_tables_and_stray_vnodes_warn() {
        let c = from_toml_str(
            &format!(
                "[routing]\nalgorithm = \"maglev\"\ntable_size = 2003\n{}",
                pool(200)
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(w.starts_with("t.toml:3:14: "), "{w}");
        assert!(w.contains("20011"), "{w}");
        // 100 × N or more: no warning.
        let c = from_toml_str(
            &format!(
                "[routing]\nalgorithm = \"maglev\"\ntable_size = 20011\n{}",
                pool(200)
            ),
            "t.toml",
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let c = from_toml_str(
            &format!("[routing]\nalgorithm = \"rendezvous\"\nvnodes = 160\n{ONE}"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("t.toml:3:"), "{:?}", c.warnings);
        assert!(c.warnings[0].contains("vnodes"), "{:?}", c.warnings);
    }

    #[test]
    fn tls_and_sticky_cookie_parse() {
        let c = from_toml_str(
            &format!(
                "[listen]\naddress = \"127.0.0.1:80\"\ntls = {{ cert = \"tls/c.pem\", key = \"/k.pem\" }}\n\
                 [routing]\nsticky_cookie = {{ name = \"lb\" }}\n[timeouts]\nupgraded_idle = \"5m\"\n{ONE}"
            ),
            "t.toml",
        )
        .unwrap();
        let tls = c.listen.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("tls/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        assert_eq!(c.listen.tls_listener(), Some(c.listen.address));
        assert_eq!(c.listen.plain_listener(), None);
        let cookie = c.routing.sticky_cookie.unwrap();
        assert_eq!(
            (cookie.name.as_str(), cookie.max_age),
            ("lb", DEFAULT_COOKIE_MAX_AGE)
        );
        assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(300));
        let c = from_toml_str(ONE, "t.toml").unwrap();
        assert_eq!(c.timeouts.upgraded_idle, Duration::from_secs(3600));
        assert_eq!(c.listen.plain_listener(), Some(c.listen.address));
        let both = from_toml_str(
            &format!("[listen]\ntls = {{ cert = \"c\", key = \"k\" }}\ntls_address = \"127.0.0.1:8443\"\n{ONE}"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(both.listen.plain_listener(), Some(both.listen.address));
        assert_eq!(
            both.listen.tls_listener(),
            Some("127.0.0.1:8443".parse().unwrap())
        );
    }

    #[test]
    fn key_sources_parse() {
        assert_eq!(
            key_source("header:X-Id"),
            Ok(KeySource::Header("x-id".into()))
        );
        assert_eq!(key_source("client-ip"), Ok(KeySource::ClientIp));
        assert!(key_source("header:").is_err());
        assert!(key_source("body:x").is_err());
        assert!(key_source("cookie:a b").is_err());
    }

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:8080",
            "app-1.internal:9000",
            "localhost:1",
        ] {
            assert!(validate_host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", "host:0", ":80", "a..b:80", "x:99999", "a b:80"] {
            assert!(validate_host_port(bad).is_err(), "{bad}");
        }
    }
}
