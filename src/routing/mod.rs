//! Routing state: the live snapshot behind one `ArcSwap` (ring, backends,
//! key spec, settings), the client id of a request, and each backend's
//! identity and live state. No sockets here.

pub mod backend;
pub mod key;
pub mod snapshot;
