//! The file as written: private serde structures with spans, read into
//! the validated types of `config`, each error placed by line and column.

use super::check::check_table_size;
use super::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::ops::Range;
use toml::Spanned;

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
    shutdown_delay: Option<Spanned<String>>,
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

pub(super) type At<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

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

pub(super) fn default_keys() -> Vec<KeySource> {
    vec![
        KeySource::Header("x-client-id".into()),
        KeySource::Cookie("session_id".into()),
    ]
}

/// Parses `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`.
pub(super) fn key_source(s: &str) -> Result<KeySource, String> {
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
        shutdown_delay: None,
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
        shutdown_delay: d(&raw.shutdown_delay, "shutdown_delay", 0, true)?,
        upgraded_idle: d(&raw.upgraded_idle, "upgraded_idle", 3600, false)?,
    })
}

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
pub(super) fn validate_host_port(s: &str) -> Result<(), String> {
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
