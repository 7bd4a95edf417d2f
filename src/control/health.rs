//! Active health checks: one probe task per backend, `GET path` every
//! `interval` on a fresh connection; `fall` failures in a row take a
//! backend out, `rise` successes bring it back. Writes backend health
//! state only; never rebuilds the ring.

use crate::routing::backend::{report, Backend, Health};
use crate::routing::snapshot::Router;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Keeps one probe running per backend of the live snapshot (while
/// `[health]` is configured) until `shutdown` resolves.
pub async fn run(router: Arc<Router>, shutdown: impl Future<Output = ()>) {
    let mut swaps = router.subscribe_swaps();
    let mut probes: HashMap<(Arc<str>, Arc<str>), ProbeTask> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        swaps.borrow_and_update();
        let snap = router.load_full();
        let wanted: Vec<&Arc<Backend>> = if snap.health.is_some() {
            snap.backends.iter().collect()
        } else {
            Vec::new()
        };
        // A dropped ProbeTask stops its probe.
        probes.retain(|(name, address), _| {
            wanted
                .iter()
                .any(|b| b.name == *name && b.address == *address)
        });
        for b in wanted {
            let key = (b.name.clone(), b.address.clone());
            probes.entry(key).or_insert_with(|| {
                let probe = Probe {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    health: b.health.clone(),
                    gauge: b.metrics.healthy.clone(),
                };
                ProbeTask(tokio::spawn(probe.run(router.clone())))
            });
        }
        drop(snap);
        tokio::select! {
            () = &mut shutdown => break,
            changed = swaps.changed() => if changed.is_err() { break },
        }
    }
}

/// A running probe; stopped when dropped (its backend left the pool, or
/// the checker stopped).
struct ProbeTask(JoinHandle<()>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Probe {
    name: Arc<str>,
    address: Arc<str>,
    health: Arc<Health>,
    gauge: IntGauge,
}

impl Probe {
    async fn run(self, router: Arc<Router>) {
        loop {
            // Settings are read afresh each round, so a reload applies them.
            let Some(settings) = router.load().health.clone() else {
                return;
            };
            let result = tokio::time::timeout(settings.timeout, self.check(&settings.path))
                .await
                .unwrap_or_else(|_| {
                    Err(Failed::Backend(format!(
                        "no answer within {:?}",
                        settings.timeout
                    )))
                });
            let transition = match &result {
                Ok(()) => self.health.success(settings.rise),
                Err(Failed::Backend(_)) => self.health.failure(settings.fall),
                // The proxy's own shortage says nothing of the backend.
                Err(Failed::Local(e)) => {
                    tracing::debug!(backend = &*self.name, "health check skipped: {e}");
                    None
                }
            };
            let why = match &result {
                Ok(()) => format!("{} checks in a row passed", settings.rise),
                Err(Failed::Backend(e) | Failed::Local(e)) => {
                    format!("{} checks in a row failed, last: {e}", settings.fall)
                }
            };
            if report(&self.name, &self.gauge, transition, &why).is_some() {
                router.health_changed();
            }
            tokio::time::sleep(settings.interval).await;
        }
    }

    /// One check: a new connection, `GET path`, a 2xx or 3xx answer.
    async fn check(&self, path: &str) -> Result<(), Failed> {
        let stream = TcpStream::connect(&*self.address).await.map_err(|e| {
            if crate::http::upstream::is_local(&e) {
                Failed::Local(format!("connect: {e}"))
            } else {
                Failed::Backend(format!("connect: {e}"))
            }
        })?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failed::Backend(format!("handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, &*self.address)
            .header(header::USER_AGENT, "stickylb-health")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failed::Backend(format!("bad health path: {e}")))?;
        let result = tx.send_request(req).await;
        drop(tx);
        conn.abort();
        let status = result
            .map_err(|e| Failed::Backend(format!("request: {e}")))?
            .status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(Failed::Backend(format!("status {status}")))
        }
    }
}

/// Why a check did not pass.
enum Failed {
    /// The backend refused, did not answer, or answered badly.
    Backend(String),
    /// The proxy could not even try (out of descriptors or ports): the
    /// check counts neither way.
    Local(String),
}
