//! halo's privileged integration tests. They build network-namespace labs,
//! so they need root; run them one at a time (`--test-threads=1`), as
//! `cargo xtask test` does.

mod daemon;
mod ebpf;
mod farm;
mod lab;
mod mirror;
