//! halo's integration test bench: the network-namespace [`lab`] that every
//! privileged test, `cargo xtask demo` and `cargo xtask bench` build their
//! farms in.

pub mod cluster;
pub mod frames;
pub mod lab;
