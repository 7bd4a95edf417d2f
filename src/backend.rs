//! A backend's identity (name, address, weight) and its live state. The
//! state is atomics, so the request path updates it without locks.

use http::uri::Authority;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Backend {
    /// Identity on the ring.
    pub name: Arc<str>,
    /// `host:port` as configured.
    pub address: Box<str>,
    /// The address as a URI authority, built once for request rewriting.
    pub authority: Authority,
    pub weight: NonZeroU32,
    /// Requests in progress; an atomic because every connection task
    /// updates it concurrently.
    in_flight: AtomicU64,
}

impl Backend {
    pub fn new(name: &str, address: &str, weight: NonZeroU32) -> Result<Self, String> {
        let authority = address
            .parse::<Authority>()
            .map_err(|e| format!("backend {name:?}: address {address:?}: {e}"))?;
        Ok(Backend {
            name: name.into(),
            address: address.into(),
            authority,
            weight,
            in_flight: AtomicU64::new(0),
        })
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Keeps its backend's in-flight count raised while alive.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
