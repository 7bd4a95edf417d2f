//! TOML text -> validated `Config`. A pure function of the text: no IO, no
//! tokio. Every error names the line and column it comes from.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::ring::Algorithm;

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
    /// Every connection starts with a PROXY protocol v1 or v2 header
    /// (HAProxy's proxy-protocol.txt), on every listener.
    pub proxy_protocol: bool,
    /// The kernel's queue of connections not yet accepted, per listener.
    pub backlog: u32,
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
    pub algorithm: Algorithm,
    pub seed: u64,
    /// Bounded loads: no backend takes more than this × the mean in-flight load.
    pub balance_factor: Option<f64>,
    /// Give key-less clients a generated id, set as this cookie.
    pub sticky_cookie: Option<StickyCookie>,
    /// Peers whose `X-Forwarded-For` is believed: the client address is
    /// then the right-most address in it that is not itself trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Slow start: a backend that joins or comes back healthy takes its
    /// keys over gradually across this window.
    pub slow_start: Option<Duration>,
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
    /// After SIGTERM/SIGINT, how long the proxy keeps serving (with
    /// `/healthz` answering 503) before it stops accepting.
    pub shutdown_delay: Duration,
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
/// `listen.address` when not set.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// `admin.address` when not set.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

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

mod check;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::from_toml_str;
