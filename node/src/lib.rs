//! halo's node: the daemon, its pure state machines, and the control of its kernel programs.

pub mod api;
pub mod cluster;
pub mod daemon;
pub mod ebpf;
