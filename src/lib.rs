//! stickylb: a reverse-proxy HTTP load balancer with sticky consistent hashing.
//!
//! Layout, from the bottom up (dependencies point down):
//! - `ring`: consistent hashing as pure values (owner, preference order,
//!   shares, exact remap fraction) with three algorithms: ketama-style ring,
//!   Maglev, rendezvous. No HTTP, no TOML.
//! - `config`: TOML text -> validated `Config`, errors with line and column.
//!   Pure: no IO.
//! - `files`: reading operator files: regular files only, size-bounded.
//! - `observe::metrics`: the typed Prometheus metrics over an owned registry.
//! - `routing`: `snapshot` (`Snapshot { ring, backends, key spec, settings }`
//!   behind one `ArcSwap`, the `Router`), `key` (the client id of a
//!   request), `backend` (a backend's identity and live atomic state).
//! - `http`: `server` (accept loop, TLS accept, HTTP/1.1 + HTTP/2, timeouts,
//!   graceful drain), `proxy` (the request path: key -> pick -> rewrite ->
//!   forward -> finish), `upstream` (the backend connection pool), `wire`
//!   (the RFC rules of an intermediary), `body` (request bodies going
//!   upstream; the client's faults told apart), `error` (every answer the
//!   proxy makes itself), `tls` (PEM files -> rustls config), `idle`
//!   (streams that report the bytes they move).
//! - `control`: `reload` (watch the config's files + SIGHUP -> parse ->
//!   build -> swap -> metrics; `diff`), `health` (active probes with
//!   rise/fall), `admin` (`/metrics`, `/healthz`, `/ring`, `/ring/lookup`).
//! - `tools`: `stdio` (the JSON-lines routing protocol), `demo` (echo
//!   backends for `stickylb demo`).
//!
//! Data flow:
//! ```text
//! config.toml --(notify, debounce | SIGHUP)--> control::reload: read file
//!   -> config::from_toml_str -> routing::snapshot::Snapshot::build(&config, &old)
//!   -> ArcSwap::store -> metrics
//!      (any error: log + count; the old snapshot keeps serving)
//! request -> http::server -> http::proxy: key::extract -> Router::load -> ring owner
//!         -> wire rewrite -> upstream pool -> backend -> response streamed back
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod files;
pub mod http;
pub mod observe;
pub mod ring;
pub mod routing;
pub mod tools;
