//! halo's integration test bench: the network-namespace [`lab`] that every
//! privileged test, `cargo xtask demo`, `cargo xtask bench` and
//! `cargo xtask chaos` build their farms in.

pub mod cluster;
pub mod frames;
pub mod lab;
pub mod program;
pub mod random_frames;
pub mod xdp_model;
