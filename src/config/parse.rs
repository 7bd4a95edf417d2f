//! The file as written: private serde structures whose newtypes check each
//! value as `toml` reads it, so every such error carries the value's span
//! and key path; `check` then applies the rules that look across fields.

use super::*;
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

const MAX_POINTS: i64 = crate::ring::MAX_POINTS as i64;

// ---- the file as written ----------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table", default)]
pub(super) struct RawFile {
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub routing: RawRouting,
    timeouts: RawTimeouts,
    health: Option<RawHealth>,
    limits: RawLimits,
    log: RawLog,
    pub backend: Vec<RawBackend>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [listen]", default)]
pub(super) struct RawListen {
    pub address: Option<Spanned<Addr>>,
    pub tls: Option<RawTls>,
    pub tls_address: Option<Spanned<Addr>>,
    proxy_protocol: bool,
    backlog: Int<1, 65_535, 1024>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an inline table { cert, key }")]
pub(super) struct RawTls {
    cert: Spanned<FilePath>,
    key: Spanned<FilePath>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [admin]", default)]
pub(super) struct RawAdmin {
    pub address: Option<Spanned<Addr>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [routing]", default)]
pub(super) struct RawRouting {
    pub key: Option<Vec<Spanned<String>>>,
    missing_key: RawMissingKey,
    pub algorithm: Option<Spanned<RawAlgorithm>>,
    pub vnodes: Option<Spanned<Int<1, MAX_POINTS, { DEFAULT_VNODES as i64 }>>>,
    pub table_size: Option<Spanned<Int<2, MAX_POINTS, { DEFAULT_TABLE_SIZE as i64 }>>>,
    seed: Int<0, { i64::MAX }, 0>,
    balance_factor: Option<Factor>,
    sticky_cookie: Option<RawStickyCookie>,
    trusted_proxies: Vec<Cidr>,
    slow_start: Option<Dur<0, 1_000_000_000>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum RawMissingKey {
    #[default]
    ClientIp,
    Random,
    Reject,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawAlgorithm {
    Ring,
    Maglev,
    Rendezvous,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an inline table { name, max_age }")]
struct RawStickyCookie {
    name: Token,
    #[serde(default)]
    max_age: Dur<{ DEFAULT_COOKIE_MAX_AGE.as_millis() as u64 }>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [timeouts]", default)]
struct RawTimeouts {
    connect: Dur<1_000>,
    response_headers: Dur<30_000>,
    client_header_read: Dur<10_000>,
    client_body_read: Dur<60_000>,
    idle: Dur<60_000>,
    upstream_idle: Dur<60_000>,
    shutdown_grace: Dur<30_000, 0>,
    shutdown_delay: Dur<0, 0>,
    upgraded_idle: Dur<3_600_000>,
}

/// Probes at most every 100 ms: shorter would only pin a core.
const MIN_INTERVAL_NS: u64 = MIN_HEALTH_INTERVAL.as_nanos() as u64;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [health]", default)]
struct RawHealth {
    path: Option<AbsolutePath>,
    interval: Dur<2_000, MIN_INTERVAL_NS>,
    timeout: Dur<500>,
    fall: Int<1, 1000, 3>,
    rise: Int<1, 1000, 2>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [limits]", default)]
struct RawLimits {
    max_connections: Int<1, 10_000_000, 20_000>,
    max_request_header_bytes: Int<{ MIN_HEADER_BYTES as i64 }, { MAX_HEADER_BYTES as i64 }, 16_384>,
    max_backend_connections: Int<1, 1_000_000, 1024>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table [log]", default)]
struct RawLog {
    access: bool,
    format: RawFormat,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum RawFormat {
    #[default]
    Text,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table [[backend]]")]
pub(super) struct RawBackend {
    pub name: Spanned<Name>,
    pub address: Spanned<HostPort>,
    pub weight: Option<Spanned<Int<1, { u32::MAX as i64 }, 1>>>,
}

// ---- values checked as they are read ------------------------------------
//
// Each newtype's error message is appended to the key path `toml` reports
// ("health.fall" + " must be from 1 to 1000, not 0"): messages start with a
// space or a colon accordingly.

/// An integer in `MIN..=MAX`, `DEFAULT` when absent.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "i64")]
pub(super) struct Int<const MIN: i64, const MAX: i64, const DEFAULT: i64>(pub i64);

impl<const MIN: i64, const MAX: i64, const DEFAULT: i64> Default for Int<MIN, MAX, DEFAULT> {
    fn default() -> Self {
        Int(DEFAULT)
    }
}

impl<const MIN: i64, const MAX: i64, const DEFAULT: i64> TryFrom<i64> for Int<MIN, MAX, DEFAULT> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&v) {
            Ok(Int(v))
        } else {
            Err(format!(" must be from {MIN} to {MAX}, not {v}"))
        }
    }
}

impl<const MIN: i64, const MAX: i64, const D: i64> Int<MIN, MAX, D> {
    fn get<T: TryFrom<i64>>(self) -> T {
        // In range by construction, and every range fits its target type.
        T::try_from(self.0).unwrap_or_else(|_| unreachable!("{} fits", self.0))
    }
}

/// A duration like "500ms", "2s" or "1m": at least `MIN_NS` nanoseconds
/// (1: nonzero; 0: zero allowed), at most `MAX_DURATION`; `DEFAULT_MS`
/// milliseconds when absent.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "String")]
struct Dur<const DEFAULT_MS: u64, const MIN_NS: u64 = 1>(Duration);

impl<const DEFAULT_MS: u64, const MIN_NS: u64> Default for Dur<DEFAULT_MS, MIN_NS> {
    fn default() -> Self {
        Dur(Duration::from_millis(DEFAULT_MS))
    }
}

impl<const DEFAULT_MS: u64, const MIN_NS: u64> TryFrom<String> for Dur<DEFAULT_MS, MIN_NS> {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let min = Duration::from_nanos(MIN_NS);
        match humantime::parse_duration(&s) {
            Ok(d) if d.is_zero() && MIN_NS > 0 => Err(" must be greater than zero".into()),
            Ok(d) if d < min => Err(format!(" must be at least {min:?}")),
            Ok(d) if d > MAX_DURATION => Err(format!(": {s:?} is longer than the 1 year allowed")),
            Ok(d) => Ok(Dur(d)),
            Err(e) => Err(format!(
                ": {s:?} is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1m\""
            )),
        }
    }
}

/// `routing.balance_factor`: from 1.0 to 100.0.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "f64")]
struct Factor(f64);

impl TryFrom<f64> for Factor {
    type Error = String;
    fn try_from(f: f64) -> Result<Self, String> {
        if (1.0..=100.0).contains(&f) {
            Ok(Factor(f))
        } else {
            Err(format!(" must be a number from 1.0 to 100.0 (1.25 = no backend above 125% of the mean load), not {f}"))
        }
    }
}

/// A CIDR block ("10.0.0.0/8", "fd00::/8") or one address ("10.0.0.1").
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Cidr(ipnet::IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let net = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        net.map(|n| Cidr(n.trunc())).map_err(|_| {
            format!(": {s:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\", \"192.168.1.10\", \"fd00::/8\")")
        })
    }
}

/// An `IP:port` socket address.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "String")]
pub(super) struct Addr(pub SocketAddr);

impl TryFrom<String> for Addr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(Addr).map_err(|_| {
            format!(": {s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")")
        })
    }
}

/// A backend address: `IP:port`, `[IPv6]:port` or `hostname:port`.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(super) struct HostPort(pub String);

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        validate_host_port(s).map_err(|m| format!(": {m}"))?;
        Ok(HostPort(s.to_string()))
    }
}

/// A backend name: non-empty printable text, trimmed.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(super) struct Name(pub String);

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let name = s.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(format!(" {s:?} must be non-empty printable text"));
        }
        Ok(Name(name.to_string()))
    }
}

/// An RFC 9110 token, as cookie names are.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Token(String);

impl TryFrom<String> for Token {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || !s.bytes().all(is_token_byte) {
            return Err(format!(" {s:?} is not a valid cookie name"));
        }
        Ok(Token(s))
    }
}

/// `health.path`: an absolute path without whitespace.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct AbsolutePath(String);

impl TryFrom<String> for AbsolutePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.starts_with('/') && !s.contains(char::is_whitespace) {
            Ok(AbsolutePath(s))
        } else {
            Err(format!(
                " must be an absolute path like \"/healthz\", not {s:?}"
            ))
        }
    }
}

/// `listen.tls.cert` and `.key`: a non-blank path.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct FilePath(PathBuf);

impl TryFrom<String> for FilePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err(" must be a file path".into());
        }
        Ok(FilePath(s.into()))
    }
}

// ---- reading ------------------------------------------------------------

/// Parses and validates a config file's text. `origin` names the file in
/// error messages.
pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let at = |span: Range<usize>, message: String| locate(text, origin, span.start, message);
    let raw: RawFile = toml::from_str(text).map_err(|mut e| {
        let span = e.span().unwrap_or(0..0);
        let mut message = with_key_path(&mut e);
        if message.ends_with("duplicate key") {
            let key = text.get(span.clone()).unwrap_or("").trim();
            if !key.is_empty() && !key.contains('\n') {
                message = format!("{message} `{key}`");
            }
        }
        at(span.start..span.start, message)
    })?;
    let warnings = super::check::across_fields(&raw, text, &at)?;
    Ok(raw.into_config(text, origin, warnings))
}

/// The error's message after the key path it is about ("health.fall must
/// be …"); `toml` shows the path only in its `Display` without input.
fn with_key_path(e: &mut toml::de::Error) -> String {
    let message = e.message().trim_end().to_string();
    e.set_input(None);
    let shown = e.to_string();
    let path = shown
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `")?.strip_suffix('`'));
    match path {
        Some(p) if message.starts_with([' ', ':']) => format!("{p}{message}"),
        Some(p) => format!("{p}: {message}"),
        None => message,
    }
}

impl RawFile {
    fn into_config(self, text: &str, origin: &str, warnings: Vec<String>) -> Config {
        let r = self.routing;
        let algorithm = match r.algorithm.map(Spanned::into_inner) {
            None | Some(RawAlgorithm::Ring) => Algorithm::Ring {
                vnodes: r.vnodes.map_or(DEFAULT_VNODES, |v| v.into_inner().get()),
            },
            Some(RawAlgorithm::Maglev) => Algorithm::Maglev {
                table_size: r
                    .table_size
                    .map_or(DEFAULT_TABLE_SIZE, |t| t.into_inner().get()),
            },
            Some(RawAlgorithm::Rendezvous) => Algorithm::Rendezvous,
        };
        let position = |v: &Spanned<FilePath>| {
            let e = locate(text, origin, v.span().start, String::new());
            (e.line, e.column)
        };
        let t = self.timeouts;
        Config {
            listen: Listen {
                address: self
                    .listen
                    .address
                    .map_or(DEFAULT_LISTEN, |a| a.get_ref().0),
                tls_at: self
                    .listen
                    .tls
                    .as_ref()
                    .map(|t| [position(&t.cert), position(&t.key)]),
                tls: self.listen.tls.map(|t| TlsFiles {
                    cert: t.cert.into_inner().0,
                    key: t.key.into_inner().0,
                }),
                tls_address: self.listen.tls_address.map(|a| a.into_inner().0),
                proxy_protocol: self.listen.proxy_protocol,
                backlog: self.listen.backlog.get(),
            },
            admin: Admin {
                address: self.admin.address.map_or(DEFAULT_ADMIN, |a| a.get_ref().0),
            },
            routing: Routing {
                // Each entry was checked (with its position) by `check`.
                key: r.key.map_or_else(default_keys, |k| {
                    k.iter()
                        .filter_map(|s| key_source(s.get_ref()).ok())
                        .collect()
                }),
                missing_key: match r.missing_key {
                    RawMissingKey::ClientIp => MissingKey::ClientIp,
                    RawMissingKey::Random => MissingKey::Random,
                    RawMissingKey::Reject => MissingKey::Reject,
                },
                algorithm,
                seed: r.seed.get(),
                balance_factor: r.balance_factor.map(|f| f.0),
                sticky_cookie: r.sticky_cookie.map(|c| StickyCookie {
                    name: c.name.0,
                    max_age: c.max_age.0,
                }),
                trusted_proxies: r.trusted_proxies.into_iter().map(|c| c.0).collect(),
                slow_start: r.slow_start.map(|d| d.0),
            },
            timeouts: Timeouts {
                connect: t.connect.0,
                response_headers: t.response_headers.0,
                client_header_read: t.client_header_read.0,
                client_body_read: t.client_body_read.0,
                idle: t.idle.0,
                upstream_idle: t.upstream_idle.0,
                shutdown_grace: t.shutdown_grace.0,
                shutdown_delay: t.shutdown_delay.0,
                upgraded_idle: t.upgraded_idle.0,
            },
            health: self.health.map(|h| HealthConfig {
                path: h.path.map_or_else(|| "/healthz".into(), |p| p.0),
                interval: h.interval.0,
                timeout: h.timeout.0,
                fall: h.fall.get(),
                rise: h.rise.get(),
            }),
            limits: Limits {
                max_connections: self.limits.max_connections.get(),
                max_request_header_bytes: self.limits.max_request_header_bytes.get(),
                max_backend_connections: self.limits.max_backend_connections.get(),
            },
            log: Log {
                access: self.log.access,
                format: match self.log.format {
                    RawFormat::Text => LogFormat::Text,
                    RawFormat::Json => LogFormat::Json,
                },
            },
            backends: self
                .backend
                .into_iter()
                .map(|b| BackendConfig {
                    name: b.name.into_inner().0,
                    address: b.address.into_inner().0,
                    weight: b
                        .weight
                        .and_then(|w| NonZeroU32::new(w.into_inner().get()))
                        .unwrap_or(NonZeroU32::MIN),
                })
                .collect(),
            warnings,
        }
    }
}

pub(super) fn default_keys() -> Vec<KeySource> {
    vec![
        KeySource::Header("x-client-id".into()),
        KeySource::Cookie("session_id".into()),
    ]
}

/// Parses `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`; the
/// error says what is wrong with the entry.
pub(super) fn key_source(s: &str) -> Result<KeySource, String> {
    if s == "client-ip" {
        return Ok(KeySource::ClientIp);
    }
    if let Some(("client-ip", _)) = s.split_once(':') {
        return Err(": client-ip takes no name".into());
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err(
            " must be \"header:NAME\", \"cookie:NAME\", \"query:NAME\" or \"client-ip\"".into(),
        );
    };
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(": {name:?} is not a valid {kind} name"));
    }
    match kind {
        "header" => Ok(KeySource::Header(name.to_ascii_lowercase())),
        "cookie" => Ok(KeySource::Cookie(name.to_string())),
        "query" => Ok(KeySource::Query(name.to_string())),
        _ => Err(format!(
            ": unknown source {kind:?} (use header, cookie, query or client-ip)"
        )),
    }
}

/// RFC 9110 §5.6.2 token characters: what header and cookie names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a backend address: `IP:port`, `[IPv6]:port` or `hostname:port`
/// (RFC 1123 labels).
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

/// Turns a byte offset into a 1-based line and column (in characters).
pub(super) fn locate(text: &str, origin: &str, offset: usize, message: String) -> ConfigError {
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
