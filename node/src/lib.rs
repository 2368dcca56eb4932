//! halo's node: the daemon, its pure state machines, and the control of its kernel programs.

pub mod cluster;
pub mod ebpf;
