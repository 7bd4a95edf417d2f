//! What the proxy tells about itself: the typed Prometheus metrics.

pub mod metrics;
