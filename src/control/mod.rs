//! What runs beside the request path: live reload (watch, debounce, swap),
//! active health checks, slow start, and the admin listener.

pub mod admin;
pub mod health;
pub mod reload;
pub mod slow_start;
