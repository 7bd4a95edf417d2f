//! What the proxy tells about itself: the typed Prometheus metrics and
//! the access log.

pub mod access_log;
pub mod metrics;
pub mod process;
