//! The proxy on the wire: accepting client connections (plain, TLS,
//! HTTP/1.1 and HTTP/2), the request path in phases, the pooled upstream
//! connections, the RFC rules of an intermediary, request bodies, and the
//! answers the proxy makes itself. Knows nothing of TOML or files.

pub mod body;
pub mod error;
pub mod idle;
pub mod proxy;
pub mod proxy_protocol;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wire;
