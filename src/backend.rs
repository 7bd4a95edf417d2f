//! A backend's identity (name, address, weight) and its live state: its
//! metric children (the in-flight count among them) and its own pool of
//! keep-alive upstream connections. A backend removed from the pool keeps
//! serving its in-flight requests; its pool closes when the last one ends.

use crate::metrics::BackendMetrics;
use http::uri::Authority;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Pooled keep-alive HTTP/1.1 client to one backend.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// Settings of a backend's upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle: Duration,
}

pub struct Backend {
    /// Identity on the ring.
    pub name: Arc<str>,
    /// `host:port` as configured.
    pub address: Box<str>,
    /// The address as a URI authority, built once for request rewriting.
    pub authority: Authority,
    pub weight: NonZeroU32,
    pub metrics: BackendMetrics,
    pub upstream: UpstreamOptions,
    /// This backend's connection pool; dropped with the backend.
    pub client: UpstreamClient,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl Backend {
    pub fn new(
        name: &str,
        address: &str,
        weight: NonZeroU32,
        metrics: BackendMetrics,
        upstream: UpstreamOptions,
    ) -> Result<Self, String> {
        let authority = address
            .parse::<Authority>()
            .map_err(|e| format!("backend {name:?}: address {address:?}: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(upstream.pool_idle)
            .build(connector);
        Ok(Backend {
            name: name.into(),
            address: address.into(),
            authority,
            weight,
            metrics,
            upstream,
            client,
        })
    }

    pub fn in_flight(&self) -> u64 {
        self.metrics.in_flight.get().max(0) as u64
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.metrics.in_flight.inc();
        InFlight(self.clone())
    }
}

/// Keeps its backend's in-flight count raised, and the backend (with its
/// connection pool) alive, while the request runs.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}
