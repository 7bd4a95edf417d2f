//! stickylb: a reverse-proxy HTTP load balancer with sticky consistent hashing.
//!
//! Layout, from the bottom up:
//! - `ring`: consistent hashing as pure values (owner, preference order,
//!   shares, exact remap fraction) with three algorithms: ketama-style ring,
//!   Maglev, rendezvous. No HTTP, no TOML.
//! - `config`: TOML text -> validated `Config`, errors with line and column.
//! - `key`: the client id of a request (header, cookie, query, peer address).
//! - `backend`: a backend's identity and live atomic state.
//! - `metrics`: the typed Prometheus metrics over an owned registry.
//! - `router`: `Snapshot { ring, backends, key spec, timeouts }` behind one `ArcSwap`.
//! - `reload`: notify + SIGHUP -> parse -> build -> swap -> metrics; `diff`.
//! - `health`: active probes with rise/fall; writes backend health only.
//! - `wire`: the RFC rules of an intermediary: refused requests, the
//!   backend's request head (origin-form, one `Host`), the client's response head.
//! - `body`: request bodies going upstream; the client's faults told apart.
//! - `files`: reading operator files: regular files only, size-bounded.
//! - `error`: every failure the proxy answers itself -> status and body.
//! - `proxy`: the request path: key -> pick -> rewrite -> forward -> finish.
//! - `tls`: certificate and key PEM files -> rustls server config (ALPN h2, http/1.1).
//! - `server`: accept loop, TLS accept, HTTP/1.1 + HTTP/2 (h2c and ALPN h2),
//!   timeouts, graceful drain.
//! - `idle`: a stream wrapper that records activity, for idle timeouts.
//! - `admin`: `/metrics`, `/healthz`, `/ring`, `/ring/lookup`.
//! - `demo`: echo backends for `stickylb demo`.
//! - `stdio`: the JSON-lines routing protocol of `stickylb stdio` over the ring.
//!
//! Data flow:
//! ```text
//! config.toml --(notify, debounce | SIGHUP)--> reload: read file
//!   -> config::from_toml_str -> router::Snapshot::build(&config, &old) -> ArcSwap::store -> metrics
//!      (any error: log + count; the old snapshot keeps serving)
//! request -> server -> proxy: key::extract -> Router::load -> ring owner
//!         -> rewrite headers -> pooled client -> backend -> response streamed back
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod files;
pub mod health;
pub mod idle;
pub mod key;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod router;
pub mod server;
pub mod stdio;
pub mod tls;
pub mod upstream;
pub mod wire;
