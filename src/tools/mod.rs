//! The commands beside the proxy: `stickylb stdio`, `stickylb simulate`
//! and the demo backends.

pub mod demo;
pub mod simulate;
pub mod stdio;
