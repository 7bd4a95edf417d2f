//! The commands beside the proxy: `stickylb stdio` and the demo backends.

pub mod demo;
pub mod stdio;
